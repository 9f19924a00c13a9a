//! Output commit, for QoS 2 exactly once across a crash or a take-over: a
//! stored session's QoS 2 PUBLISH, and the PUBREL that follows its PUBREC,
//! leave for the client only once the record of that step is as safe as
//! an acknowledgement is (written, or synced with `durability = always`,
//! and held by the replicas with replicated sessions).
//!
//! Why: a client tells a QoS 2 message sent again from a new one by its
//! packet id alone. A node that sent a PUBLISH and then died, or was cut
//! off while a copy of the session took over elsewhere, left behind a
//! record that had the message queued, not in flight: the copy sent it
//! under a new id, and the client gave it twice (once per run of the
//! partition test, `tests/session_faults.rs`). Held until its flight is
//! recorded, a PUBLISH either never reached the client or is known to
//! every copy under its id, and goes again with DUP, which the client
//! answers without giving it twice. The PUBREL waits for the PUBREC's
//! record in the same way, so no copy sends the PUBLISH again after the
//! client has released its id.
//!
//! Whatever the session sends after a held packet waits behind it, so
//! the client sees its packets in the order they were made. The cost is
//! one store round trip (and one replication round trip) per QoS 2
//! message to a stored session; QoS 0 and 1 alone are never held.

use std::collections::VecDeque;

use bytes::BytesMut;
use rustc_hash::FxHashMap;

use super::{SessionKey, ShardState};
use crate::protocol::{Packet, QoS};
use crate::shard::connection::ConnHandle;

/// The epoch of packets held in this call of `pump`, until it has pushed
/// their records.
const UNSEALED: u64 = u64::MAX;

/// A session's packets held until the store settles their epochs.
pub(super) struct Held {
    /// The connection they were encoded for: a later one gets the
    /// session's flights again on its own.
    conn: u64,
    /// Encoded packets, with the epoch each waits for, oldest first.
    segments: VecDeque<(u64, BytesMut)>,
    bytes: usize,
}

/// Whether `packet` must not reach the client before its step is recorded.
fn needs_commit(packet: &Packet) -> bool {
    match packet {
        Packet::Publish(publish) => publish.qos == QoS::ExactlyOnce,
        Packet::PubRel(_) => true,
        _ => false,
    }
}

/// Bytes of session `key`'s output held back.
pub(super) fn held_bytes(held: &FxHashMap<SessionKey, Held>, key: SessionKey) -> usize {
    held.get(&key).map_or(0, |held| held.bytes)
}

impl ShardState {
    /// Whether session `key`'s QoS 2 output waits for the store: it is
    /// stored, and acknowledgements wait.
    pub(super) fn commits_output(&mut self, key: SessionKey, conn: u64) -> bool {
        if self.held.get(&key).is_some_and(|held| held.conn != conn) {
            self.held.remove(&key);
        }
        let stored = self
            .sessions
            .get(key)
            .is_some_and(|slot| slot.session.is_stored());
        stored && (self.store.as_ref()).is_some_and(|store| store.turn_epoch().is_some())
    }

    /// Sends `packet` on `conn`, or, if the session `commits` its output,
    /// holds it when it needs that or something before it is held (until
    /// [`ShardState::seal_held`]). False if it takes more than `limit` bytes
    /// (nothing is sent).
    pub(super) fn send_or_hold(
        held: &mut FxHashMap<SessionKey, Held>,
        key: SessionKey,
        conn: &ConnHandle,
        commits: bool,
        packet: &Packet,
        limit: usize,
    ) -> bool {
        if !commits || !(needs_commit(packet) || held.contains_key(&key)) {
            return conn.send_within(packet, limit);
        }
        let epoch = UNSEALED;
        let held = held.entry(key).or_insert_with(|| Held {
            conn: conn.id,
            segments: VecDeque::new(),
            bytes: 0,
        });
        if held.segments.back().is_none_or(|(last, _)| *last != epoch) {
            held.segments.push_back((epoch, BytesMut::new()));
        }
        let Some((_, segment)) = held.segments.back_mut() else {
            return true;
        };
        let before = segment.len();
        let fits = conn.encode_within(packet, limit, segment);
        held.bytes += segment.len() - before;
        fits
    }

    /// Session `key`'s changes are pushed to the store: what was held
    /// since waits for the epoch that will hold them, and goes out now if
    /// that is settled already (a packet sent again, whose record was
    /// written before, adds no change).
    pub(super) fn seal_held(&mut self, key: SessionKey) {
        let (Some(held), Some(store)) = (self.held.get_mut(&key), &self.store) else {
            return;
        };
        let epoch = store.pending_epoch();
        for (waits_for, _) in held.segments.iter_mut().rev() {
            if *waits_for != UNSEALED {
                break;
            }
            *waits_for = epoch;
        }
        let settled = store.settled();
        if (held.segments.front()).is_some_and(|(waits_for, _)| *waits_for <= settled) {
            self.release_held(settled);
        }
    }

    /// The store settled every epoch up to `through`: what was held for
    /// them goes out, in order, to connections still there. Not while no
    /// replica is left: a flight started then would be in no copy, and
    /// the node that takes the session over could send the message again
    /// under another id (such a node is about to be fenced, which closes
    /// the connections, or gets a replica back).
    pub(super) fn release_held(&mut self, through: u64) {
        if self.held.is_empty() || self.unreplicated {
            return;
        }
        let sessions = &self.sessions;
        self.held.retain(|&key, held| {
            let conn = sessions.get(key).and_then(|slot| slot.conn.as_ref());
            let Some(conn) = conn.filter(|conn| conn.id == held.conn) else {
                return false;
            };
            while let Some((epoch, _)) = held.segments.front()
                && *epoch <= through
            {
                if let Some((_, segment)) = held.segments.pop_front() {
                    held.bytes -= segment.len();
                    conn.send_encoded(&segment);
                }
            }
            !held.segments.is_empty()
        });
    }
}
