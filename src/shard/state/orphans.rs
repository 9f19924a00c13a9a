//! Messages owed to a node that died, for a session taken over from its
//! copy here (`crate::cluster::node::orphans`), delivered once.
//!
//! A publisher's node sends such a message on to the node that took the
//! session over, and may also forward it there the ordinary way once that
//! node announces the session's subscriptions; a message the dead node
//! had queued and replicated but never acknowledged is in the copy
//! already; and a node that was only cut off sends on, after the heal,
//! what its stale copy of the session got meanwhile, which may include
//! what the others had sent as orphans ([`Way`]). Nothing numbers a
//! message across nodes, so a session taken over keeps, for
//! [`ORPHAN_GUARD`], the fingerprints (publisher, topic, payload) of what
//! came each way, and gives a message only if it is not a copy of one
//! that came another way (or was owed on arrival). Messages that arrive
//! one way only, identical or not, are all given.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use rustc_hash::{FxBuildHasher, FxHashMap};
use tracing::info;

use super::{SessionKey, ShardState};
use crate::message::Message;
use crate::shard::mesh::Way;

/// How long a session taken over watches for orphans: the longest a
/// publisher's node keeps sending them is `cluster.peer_hold` (300 s by
/// default), after which it forgets the dead node.
const ORPHAN_GUARD: Duration = Duration::from_secs(15 * 60);
/// Arrivals remembered per session taken over; the oldest go first. A
/// message may come three ways, so this covers some 20,000 messages
/// (a 30 s partition of a session getting 230 messages a second took
/// 8,192 past its end: 665 copies given again). About 50 bytes each,
/// so at most some 3 MiB for a session that busy, for [`ORPHAN_GUARD`].
const GUARD_SIZE: usize = 65_536;

/// How many messages with each fingerprint one session taken over was
/// given each way. A message arrives at most once each way, so a copy is
/// one that does not take its way's count past every other way's: two
/// identical messages (same publisher, topic and payload) are both given,
/// however each travels.
pub(super) struct Seen {
    until: Instant,
    /// Oldest first: fingerprint, and which way it came.
    order: VecDeque<(u64, Way)>,
    counts: FxHashMap<u64, [u32; 3]>,
}

impl Seen {
    fn new(until: Instant) -> Seen {
        Seen {
            until,
            order: VecDeque::new(),
            counts: FxHashMap::default(),
        }
    }

    /// A message with `fingerprint` came `way`: false if it is a copy of
    /// one that came another way (not given again).
    fn take(&mut self, fingerprint: u64, way: Way) -> bool {
        let counts = self.counts.entry(fingerprint).or_default();
        counts[way as usize] += 1;
        let mine = counts[way as usize];
        let fresh = (counts.iter().enumerate())
            .all(|(other, &count)| other == way as usize || count < mine);
        self.order.push_back((fingerprint, way));
        if self.order.len() > GUARD_SIZE
            && let Some((oldest, way)) = self.order.pop_front()
            && let Some(counts) = self.counts.get_mut(&oldest)
        {
            counts[way as usize] = counts[way as usize].saturating_sub(1);
            if counts.iter().all(|&count| count == 0) {
                self.counts.remove(&oldest);
            }
        }
        fresh
    }
}

fn fingerprint(message: &Message) -> u64 {
    let mut hasher = FxBuildHasher.build_hasher();
    message.publisher.hash(&mut hasher);
    message.topic.hash(&mut hasher);
    message.payload.hash(&mut hasher);
    hasher.finish()
}

impl ShardState {
    /// Session `key` was taken over from another node: it watches for
    /// orphans from now on, knowing what it owes already.
    pub(super) fn guard_against_orphans(&mut self, key: SessionKey, now: Instant) {
        let Some(slot) = self.sessions.get(key) else {
            return;
        };
        let mut seen = Seen::new(now + ORPHAN_GUARD);
        for message in slot.session.owed_messages() {
            seen.take(fingerprint(message), Way::Ordinary);
        }
        self.orphan_guards.insert(key, seen);
    }

    /// `message` is for session `key` the ordinary way: false if it is a
    /// copy of an orphan the session was given.
    pub(super) fn ordinary_delivery(
        &mut self,
        key: SessionKey,
        message: &Message,
        now: Instant,
    ) -> bool {
        let Some(seen) = self.orphan_guards.get_mut(&key) else {
            return true;
        };
        if seen.until <= now {
            self.orphan_guards.remove(&key);
            return true;
        }
        seen.take(fingerprint(message), Way::Ordinary)
    }

    /// A message for `client_id` alone, come `way` (not
    /// [`Way::Ordinary`]), if it is a session here and the message is not
    /// a copy of one it was given another way.
    pub(super) fn deliver_orphan(
        &mut self,
        client_id: &ByteString,
        message: &Arc<Message>,
        way: Way,
        now: Instant,
    ) {
        let Some(key) = self.by_client_id.get(&self.sessions, client_id) else {
            if self.claiming(client_id) {
                self.hold_early(client_id, message, way);
                return;
            }
            // Moved on from here meanwhile: it follows the session.
            self.send_on_to_stub_of(client_id, message);
            return;
        };
        // Out of the table while it is delivered, so the ordinary check
        // does not count it twice.
        let guard = self.orphan_guards.remove(&key);
        if let Some(mut seen) = guard {
            let fresh = seen.take(fingerprint(message), way);
            if fresh {
                self.metrics.orphans_delivered += 1;
                self.deliver_matching(message, Some(key), now);
            }
            if self.sessions.contains(key) {
                self.orphan_guards.insert(key, seen);
            }
            return;
        }
        self.metrics.orphans_delivered += 1;
        self.deliver_matching(message, Some(key), now);
    }
}

impl ShardState {
    /// `message` came for `client_id`, which a CONNECT here is claiming,
    /// before its session: it waits for the session. The previous owner
    /// sends its hand-over on the control lane and what its stub got
    /// meanwhile (`moving`) on a message lane, so the two race over the
    /// link, and the messages may win: dropped here, they were lost
    /// (1 acknowledged message in about 1 run in 5 of six moves under
    /// load, `tests/takeover.rs`).
    fn hold_early(&mut self, client_id: &ByteString, message: &Arc<Message>, way: Way) {
        (self.early_orphans.entry(client_id.clone()).or_default()).push((message.clone(), way));
    }

    /// The claim of `client_id` here is settled, or its session is here:
    /// what came early is delivered as it would have been on time (to the
    /// session, once, or on to where it moved, or dropped when nothing
    /// here is it any more).
    pub(super) fn give_early_orphans(&mut self, client_id: &ByteString, now: Instant) {
        // Called on every CONNECT: nothing held is the common case, and
        // costs no lookup of the session or the claims.
        if !self.early_orphans.contains_key(client_id)
            || (self.by_client_id.get(&self.sessions, client_id).is_none()
                && self.claiming(client_id))
        {
            return;
        }
        let Some(early) = self.early_orphans.remove(client_id) else {
            return;
        };
        info!(client = %client_id, messages = early.len(), "messages sent on before their session arrived, delivered now");
        for (message, way) in early {
            self.deliver_orphan(client_id, &message, way, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::Seen;
    use crate::shard::mesh::Way;

    #[test]
    fn a_message_is_given_once_whichever_ways_it_comes() {
        let orders = [
            [Way::Ordinary, Way::Orphan, Way::Stale],
            [Way::Stale, Way::Ordinary, Way::Orphan],
            [Way::Orphan, Way::Stale, Way::Ordinary],
        ];
        for order in orders {
            let mut seen = Seen::new(Instant::now());
            let given: Vec<bool> = order.iter().map(|&way| seen.take(7, way)).collect();
            assert_eq!(given, [true, false, false], "{order:?}");
        }
    }

    #[test]
    fn two_identical_messages_are_both_given_however_each_travels() {
        let mut seen = Seen::new(Instant::now());
        // The first came the ordinary way, the second only as an orphan;
        // then copies of both come back stale.
        assert!(seen.take(7, Way::Ordinary));
        assert!(!seen.take(7, Way::Orphan));
        assert!(seen.take(7, Way::Orphan));
        assert!(!seen.take(7, Way::Stale));
        assert!(!seen.take(7, Way::Stale));
        // One way only, twice: both given.
        assert!(seen.take(9, Way::Stale));
        assert!(seen.take(9, Way::Stale));
    }
}
