//! The shard's side of replicated sessions: every turn's changes to its
//! stored sessions go to the cluster, which sends them to the nodes that
//! keep copies (`crate::cluster::node`, "Replicated sessions"), and
//! acknowledgements wait for the copies as they wait for the disk
//! ([`StoreHandle::barrier`](crate::store::StoreHandle::barrier)).
//!
//! The stream is the store's own: the ops this shard's writer commits as
//! epoch *n* travel as epoch *n*, so "the replicas hold epoch *n*" means
//! what "the disk holds epoch *n*" does. When the replicas change, or one
//! may have missed part of the stream (its link broke), the cluster asks
//! for a reset: the next flush sends every stored session whole instead of
//! the turn's changes.

use std::time::{Instant, SystemTime};

use rustc_hash::FxHashSet;

use super::ShardState;
use super::persist::added_record;
use crate::shard::mesh::ShardMsg;
use crate::store::Op;

impl ShardState {
    /// Acknowledgements wait for the replicas from now on.
    pub fn replicate_sessions(&mut self) {
        if let Some(store) = &mut self.store {
            store.replicate();
        }
    }

    /// Hands the cluster what this turn's flush is about to commit, or
    /// every stored session if a reset was asked for.
    pub(super) fn replicate_turn(&mut self) {
        let (Some(store), Some(place)) = (&self.store, self.mesh.cluster_place()) else {
            return;
        };
        if !store.replicates() {
            return;
        }
        let epoch = store.pending_epoch();
        let msg = if std::mem::take(&mut self.replica_reset) {
            ShardMsg::Replicate {
                epoch,
                reset: true,
                ops: self.stored_sessions_whole(),
            }
        } else if store.has_changes() {
            ShardMsg::Replicate {
                epoch,
                reset: false,
                ops: store.session_ops(),
            }
        } else {
            return;
        };
        self.mesh.push(place, msg);
    }

    /// Every stored session as the ops that would write it into an empty
    /// partition: its record, its messages (each once), entries, flights
    /// and awaited QoS 2 ids, under the ids and sequence numbers the
    /// store uses, so the changes that follow apply on top.
    fn stored_sessions_whole(&self) -> Vec<Op> {
        let Some(store) = &self.store else {
            return Vec::new();
        };
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut ops = Vec::new();
        let mut messages_sent = FxHashSet::default();
        for (key, slot) in &self.sessions {
            if !slot.session.is_stored() {
                continue;
            }
            let client_id = slot.session.client_id().clone();
            ops.push(Op::Session(Box::new(self.session_record(key, now, wall))));
            for change in slot.session.owed_as_changes() {
                let op = added_record(&client_id, change, |message| {
                    let id = store.message_id(message)?;
                    if messages_sent.insert(id) {
                        ops.push(Op::Message {
                            id,
                            message: message.clone(),
                        });
                    }
                    Some(id)
                });
                if let Ok(Some(op)) = op {
                    ops.push(op);
                }
            }
        }
        ops
    }
}
