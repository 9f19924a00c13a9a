//! A session handed over to another node keeps its routes here for a
//! little while ([`MOVE_HOLD`]), as a stub that sends on what still comes
//! its way.
//!
//! The hand-over removes the session's subscriptions here and the new
//! owner announces them there, and a publisher's node learns of each
//! change on its own: between the removal reaching it and the
//! announcement reaching it, a message matched neither, and was
//! acknowledged to its publisher and lost (26 and 4 of some 800 in six
//! moves, `tests/takeover.rs`). So the session's subscriptions stay routed
//! here while the announcement spreads, and what reaches the stub goes on
//! to the new owner (`ShardMsg::Stale`), whose guard against copies
//! (`state::orphans`) gives it once however many ways it came.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;

use super::{SessionKey, ShardState};
use crate::message::Message;
use crate::shard::mesh::ShardMsg;

/// How long a handed-over session's routes stay here: a route change
/// spreads in a round trip or two on a live cluster.
pub(super) const MOVE_HOLD: Duration = Duration::from_secs(5);

/// What a stub holds: until when, and what came for it this turn.
pub(super) struct Moved {
    until: Instant,
    client_id: ByteString,
    messages: Vec<Arc<Message>>,
}

impl ShardState {
    /// Session `key` was just handed over (archived, its records gone from
    /// the store): it stays as a stub, routed but found by no client id.
    pub(super) fn keep_moved(&mut self, key: SessionKey, now: Instant) {
        let client_id = self.sessions[key].session.client_id().clone();
        self.by_client_id.remove(&self.sessions, key);
        let pending = self.end_stubs_of(&client_id, now);
        self.orphan_guards.remove(&key);
        let until = now + MOVE_HOLD;
        self.moving.insert(
            key,
            Moved {
                until,
                client_id,
                messages: pending,
            },
        );
        self.timers.push(std::cmp::Reverse((until, key)));
    }

    /// A message for `client_id` alone (come from another node) finds no
    /// session here but a stub: it follows the session on. False if there
    /// is no stub for it either.
    pub(super) fn send_on_to_stub_of(
        &mut self,
        client_id: &ByteString,
        message: &Arc<Message>,
    ) -> bool {
        let Some(moved) = (self.moving.values_mut()).find(|moved| moved.client_id == *client_id)
        else {
            return false;
        };
        moved.messages.push(message.clone());
        true
    }

    /// `message` is for the stub `key`: it goes on at the end of the turn.
    /// False if `key` is no stub.
    pub(super) fn send_on_moved(&mut self, key: SessionKey, message: &Arc<Message>) -> bool {
        let Some(moved) = self.moving.get_mut(&key) else {
            return false;
        };
        moved.messages.push(message.clone());
        true
    }

    /// Sends the turn's messages for stubs to their new owners.
    pub(super) fn flush_moved(&mut self) {
        let Some(place) = self.mesh.cluster_place() else {
            return;
        };
        for moved in self.moving.values_mut() {
            if moved.messages.is_empty() {
                continue;
            }
            let messages = std::mem::take(&mut moved.messages);
            let client_id = moved.client_id.clone();
            self.mesh.push(
                place,
                ShardMsg::Stale {
                    client_id,
                    messages,
                },
            );
        }
    }

    /// Ends, at once, the stubs left here by earlier moves of `client_id`'s
    /// session: it is back here, or moves again, and one stub is enough
    /// (each would send on its own copy of every message). Returns what
    /// they had not sent on yet, for the session wherever it is now.
    pub(super) fn end_stubs_of(
        &mut self,
        client_id: &ByteString,
        now: Instant,
    ) -> Vec<Arc<Message>> {
        let stubs: Vec<SessionKey> = (self.moving.iter())
            .filter(|(_, moved)| moved.client_id == *client_id)
            .map(|(&key, _)| key)
            .collect();
        let mut pending = Vec::new();
        for key in stubs {
            if let Some(moved) = self.moving.get_mut(&key) {
                pending.append(&mut moved.messages);
            }
            self.end_stub(key, now);
        }
        pending
    }

    /// The stub `key`'s hold is over, if it is one: its routes go.
    /// True if it was a stub (its timer is spent).
    pub(super) fn end_moved(&mut self, key: SessionKey, now: Instant) -> bool {
        let Some(moved) = self.moving.get(&key) else {
            return false;
        };
        if moved.until <= now {
            self.end_stub(key, now);
        }
        true
    }

    fn end_stub(&mut self, key: SessionKey, now: Instant) {
        self.flush_moved();
        self.moving.remove(&key);
        let filters = self.sessions[key].session.take_subscriptions();
        for filter in &filters {
            self.unsubscribe(key, filter, now);
        }
        self.sessions.remove(key);
    }
}
