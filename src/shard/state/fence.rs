//! A node cut off from the ownership raft's majority lets its stored
//! sessions go (`ShardMsg::Fence`), when they have copies elsewhere.
//!
//! Before that, as soon as no replica is left to copy to
//! (`ShardMsg::Unreplicated`), stored sessions' clients get nothing more:
//! a QoS 2 message sent then would be in no copy, and the node that takes
//! the session over would send it again under another packet id.
//!
//! The majority promotes the copies of a node it declares down
//! (`crate::cluster::node::replication`): if the node is only cut off,
//! its clients would otherwise be served on both sides, each side with
//! its own messages, and the will sent by the majority while the client
//! is still connected here. So, soon after this node loses the majority
//! and before the majority can declare it down, each shard closes the
//! connections of its stored sessions (v5: Use another server, 0x9C),
//! and their clients, behind a load balancer or with a list of nodes,
//! resume on the majority's side from the copies. A CONNECT here is
//! refused meanwhile (its claim finds no majority). Clean sessions have
//! nothing to keep consistent and stay: that side of the partition is
//! available for them, with messages to and from the other side held in
//! the outboxes (`cluster.peer_hold`).
//!
//! The sessions stay on the shard, offline, their wills and expiries
//! held, until the raft can say again who owns them: those it gave to
//! another node meanwhile are dropped without their wills (the new owner
//! sends them), the others take their course as if their connection had
//! just ended, as after a restart (`ShardState::settle_restored`).

use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use super::{SessionKey, ShardState};
use crate::message::Message;
use crate::protocol::ReasonCode;
use crate::shard::mesh::ShardMsg;

impl ShardState {
    /// See the module documentation.
    pub(super) fn fence(&mut self, now: Instant) {
        let Some(place) = self.mesh.cluster_place() else {
            return;
        };
        let stored: Vec<SessionKey> = (self.sessions.iter())
            .filter(|(_, slot)| slot.session.is_stored())
            .map(|(key, _)| key)
            .collect();
        if stored.is_empty() {
            return;
        }
        let mut closed = 0;
        let mut client_ids = Vec::with_capacity(stored.len());
        for key in stored {
            let slot = &mut self.sessions[key];
            // Held under no epoch until the raft confirms one: a claim
            // elsewhere meanwhile wins over this copy.
            slot.epoch = 0;
            client_ids.push(slot.session.client_id().clone());
            self.fenced_sessions.insert(key);
            if let Some(conn) = slot.conn.take() {
                conn.disconnect(ReasonCode::UseAnotherServer);
                slot.session.connection_fenced();
                self.cut_by_restart.push(key);
                self.set_online(key, false, now);
                self.reroute_unacked(key, now);
                self.session_changed(key);
                closed += 1;
            }
        }
        warn!(
            shard = self.id(),
            sessions = client_ids.len(),
            closed,
            "cut off from the cluster's majority: stored sessions let go until it says who owns them"
        );
        self.mesh.push(place, ShardMsg::CheckOwners { client_ids });
        self.flush();
    }

    /// A replica is back after `ShardMsg::Unreplicated`: what stored
    /// sessions' clients were owed meanwhile goes out.
    pub(super) fn replicas_back(&mut self, now: Instant) {
        if !std::mem::take(&mut self.unreplicated) {
            return;
        }
        // Held while there was no replica: the new ones get every stored
        // session whole with this turn's reset, and a wait for it (its
        // epoch may be one already reported) is not worth the rarity of a
        // node losing every replica without being fenced.
        self.release_held(u64::MAX);
        let connected: Vec<SessionKey> = (self.sessions.iter())
            .filter(|(_, slot)| slot.conn.is_some() && slot.session.is_stored())
            .map(|(key, _)| key)
            .collect();
        for key in connected {
            self.pump(key, now);
        }
    }

    /// Session `key`, fenced here, was given to another node meanwhile
    /// and is about to be dropped: what it owes goes to its new owner.
    /// Some of it came after its copies could no longer be reached (from
    /// publishers on this side, whose acknowledgements wait until a
    /// replica is back, `cluster::node::replication`); the rest the new
    /// owner has from the copy, and its guard against orphans
    /// (`state::orphans`) pairs those away.
    pub(super) fn send_on_stale(&mut self, key: SessionKey) {
        if !self.fenced_sessions.remove(&key) {
            return;
        }
        let Some(place) = self.mesh.cluster_place() else {
            return;
        };
        let session = &self.sessions[key].session;
        let messages: Vec<Arc<Message>> = session.owed_messages().into_iter().cloned().collect();
        if !messages.is_empty() {
            let client_id = session.client_id().clone();
            info!(client = %client_id, messages = messages.len(), "messages for a session another node took over during a partition sent on");
            self.mesh.push(
                place,
                ShardMsg::Stale {
                    client_id,
                    messages,
                },
            );
        }
    }

    /// The raft answered for the sessions fenced here: their wills and
    /// expiries, held meanwhile, are due again.
    pub(super) fn unfence(&mut self) {
        if self.fenced_sessions.is_empty() {
            return;
        }
        self.fenced_sessions.clear();
        let keys: Vec<SessionKey> = self.sessions.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.schedule(key);
        }
    }
}
