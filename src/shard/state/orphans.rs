//! Messages owed to a node that died, for a session taken over from its
//! copy here (`crate::cluster::node::orphans`), delivered once.
//!
//! A publisher's node sends such a message on to the node that took the
//! session over, and may also forward it there the ordinary way once that
//! node announces the session's subscriptions; and a message the dead node
//! had queued and replicated but never acknowledged is in the copy
//! already. Nothing numbers a message across nodes, so a session taken
//! over keeps, for [`ORPHAN_GUARD`], the fingerprints (publisher, topic,
//! payload) of what came each way, and pairs them: an orphan like a
//! message the session got the ordinary way (or owed on arrival) is not
//! given again, and the other way round; each copy cancels one. Messages
//! that arrive one way only, identical or not, are all given.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use rustc_hash::{FxBuildHasher, FxHashMap};

use super::{SessionKey, ShardState};
use crate::message::Message;

/// How long a session taken over watches for orphans: the longest a
/// publisher's node keeps sending them is `cluster.peer_hold` (300 s by
/// default), after which it forgets the dead node.
const ORPHAN_GUARD: Duration = Duration::from_secs(15 * 60);
/// Unpaired fingerprints kept per session; the oldest go first.
const GUARD_SIZE: usize = 8192;

/// The fingerprints of what one session taken over was given each way,
/// not yet paired with a copy from the other way.
pub(super) struct Seen {
    until: Instant,
    /// Oldest first: fingerprint, and whether it came as an orphan.
    order: VecDeque<(u64, bool)>,
    ordinary: FxHashMap<u64, u32>,
    orphans: FxHashMap<u64, u32>,
}

impl Seen {
    fn new(until: Instant) -> Seen {
        Seen {
            until,
            order: VecDeque::new(),
            ordinary: FxHashMap::default(),
            orphans: FxHashMap::default(),
        }
    }

    /// A message with `fingerprint` came as an orphan (`orphan`) or the
    /// ordinary way: false if it pairs with one that came the other way
    /// (it is a copy, not given again).
    fn take(&mut self, fingerprint: u64, orphan: bool) -> bool {
        let (other, own) = if orphan {
            (&mut self.ordinary, &mut self.orphans)
        } else {
            (&mut self.orphans, &mut self.ordinary)
        };
        if let Some(count) = other.get_mut(&fingerprint) {
            *count -= 1;
            if *count == 0 {
                other.remove(&fingerprint);
            }
            return false;
        }
        *own.entry(fingerprint).or_default() += 1;
        self.order.push_back((fingerprint, orphan));
        if self.order.len() > GUARD_SIZE
            && let Some((oldest, was_orphan)) = self.order.pop_front()
        {
            let counts = if was_orphan {
                &mut self.orphans
            } else {
                &mut self.ordinary
            };
            if let Some(count) = counts.get_mut(&oldest) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&oldest);
                }
            }
        }
        true
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
            seen.take(fingerprint(message), false);
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
        seen.take(fingerprint(message), false)
    }

    /// An orphan for `client_id`, if it is a session here and the orphan
    /// is not a copy of what it was given the ordinary way.
    pub(super) fn deliver_orphan(
        &mut self,
        client_id: &ByteString,
        message: &Arc<Message>,
        now: Instant,
    ) {
        let Some(&key) = self.by_client_id.get(client_id) else {
            return;
        };
        // Out of the table while it is delivered, so the ordinary check
        // does not count it twice.
        let guard = self.orphan_guards.remove(&key);
        if let Some(mut seen) = guard {
            let fresh = seen.take(fingerprint(message), true);
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
