//! Dropping, from one group commit, the records born and gone within it.
//!
//! An online subscriber acknowledges most messages within milliseconds:
//! its queue entry is put, its flight put, then both removed, and the
//! message record with them, often before the writer gets to the commit
//! that holds the puts (while one commit syncs, the next turns' changes
//! gather). Such a record never needs to reach the disk: nothing that
//! reads the store (a restart) can tell it existed. Cancelling it turns
//! the store's cost per message into a cost per message still owed when
//! a commit starts, which is what durability is about.
//!
//! A record is cancelled only if its birth (the entry's or message's put)
//! is in the same group as its end: one born earlier is on disk and must
//! be removed there.

use bytestring::ByteString;
use rustc_hash::FxHashMap;

use super::writer::Op;

/// Removes from `ops` every op on a record that is born and removed
/// within `ops`, the birth and the removal included.
pub fn cancel_transient(ops: &mut Vec<Op>) {
    let mut window = Window::default();
    for op in ops.drain(..) {
        window.push(op);
    }
    window.mark_logged();
    ops.extend(window.take());
}

/// Slots gone beyond twice the live ones before the window is compacted.
/// Each compaction moves every live change: with a threshold of 4,096,
/// compacting took 12% of the writer thread's CPU in a profile of the
/// saturated QoS 1 pairs flow. 65,536 slots of 112 bytes are 7 MiB per
/// shard.
const COMPACT_AFTER: usize = 1 << 16;

/// One change as the window holds it.
enum Slot {
    /// Still to reach redb.
    Live(Op),
    /// To be logged, but not applied to redb: the removal of a record
    /// whose birth is in the log but cancelled before reaching redb.
    LogOnly(Op),
    Gone,
}

/// The changes since the last checkpoint, in order, with the records born
/// and removed among them cancelled as each change arrives, at a cost per
/// change rather than per window: the log gets every change not cancelled
/// before it was appended, redb only those still live at the checkpoint.
#[derive(Default)]
pub struct Window {
    slots: Vec<Slot>,
    /// Slots before this one are in the log.
    logged: usize,
    live: usize,
    /// The slots of each queue entry born in the window, by client and
    /// sequence number: its put, its flight's puts, the removal of a
    /// released entry (which keeps its flight until PUBCOMP).
    entries: FxHashMap<ByteString, FxHashMap<u64, Vec<usize>>>,
    /// The slot of each message record born in the window.
    messages: FxHashMap<u64, usize>,
}

impl Window {
    pub fn push(&mut self, op: Op) {
        let index = self.slots.len();
        // The slots of the record this op ends, if born in the window.
        let mut ended: Option<Vec<usize>> = None;
        match &op {
            Op::Entry { client_id, seq, .. } => {
                self.entries
                    .entry(client_id.clone())
                    .or_default()
                    .insert(*seq, vec![index]);
            }
            Op::Flight { client_id, seq, .. }
            | Op::RemoveEntry {
                client_id,
                seq,
                flight: false,
            } => {
                if let Some(born) = self.born(client_id, *seq) {
                    born.push(index);
                }
            }
            Op::RemoveEntry {
                client_id,
                seq,
                flight: true,
            }
            | Op::RemoveFlight { client_id, seq } => {
                ended = self
                    .entries
                    .get_mut(client_id)
                    .and_then(|client| client.remove(seq));
            }
            Op::RemoveSession(client_id) => {
                // Whatever was born here is removed with the session; the
                // removal itself stays, for what is in redb.
                if let Some(client) = self.entries.remove(client_id) {
                    for born in client.into_values() {
                        self.cancel(&born);
                    }
                }
            }
            Op::Message { id, .. } => {
                self.messages.insert(*id, index);
            }
            Op::RemoveMessage(id) => ended = self.messages.remove(id).map(|born| vec![born]),
            _ => {}
        }
        let slot = match ended {
            Some(born) => {
                let in_log = born.iter().any(|&slot| slot < self.logged);
                self.cancel(&born);
                if in_log {
                    Slot::LogOnly(op)
                } else {
                    Slot::Gone
                }
            }
            None => {
                self.live += 1;
                Slot::Live(op)
            }
        };
        self.slots.push(slot);
    }

    fn born(&mut self, client_id: &ByteString, seq: u64) -> Option<&mut Vec<usize>> {
        self.entries.get_mut(client_id)?.get_mut(&seq)
    }

    fn cancel(&mut self, slots: &[usize]) {
        for &index in slots {
            if let Slot::Live(_) = self.slots[index] {
                self.live -= 1;
            }
            self.slots[index] = Slot::Gone;
        }
    }

    /// The changes not yet in the log, in order.
    pub fn unlogged(&self) -> impl Iterator<Item = &Op> {
        self.slots[self.logged..]
            .iter()
            .filter_map(|slot| match slot {
                Slot::Live(op) | Slot::LogOnly(op) => Some(op),
                Slot::Gone => None,
            })
    }

    pub fn all_logged(&self) -> bool {
        self.logged == self.slots.len()
    }

    /// [`Window::unlogged`] is in the log now. Under a steady load most
    /// changes cancel out: once the slots are twice what is live (and
    /// [`COMPACT_AFTER`] more), the gone ones are dropped, at a cost
    /// linear in what is left.
    pub fn mark_logged(&mut self) {
        for slot in &mut self.slots[self.logged..] {
            if let Slot::LogOnly(_) = slot {
                *slot = Slot::Gone;
            }
        }
        self.logged = self.slots.len();
        if self.slots.len() >= 2 * self.live + COMPACT_AFTER {
            for op in self.take() {
                self.push(op);
            }
            self.logged = self.slots.len();
        }
    }

    /// The changes still live, for a checkpoint; the window starts over.
    /// Only once [`Window::all_logged`].
    pub fn take(&mut self) -> Vec<Op> {
        self.entries.clear();
        self.messages.clear();
        self.logged = 0;
        self.live = 0;
        self.slots
            .drain(..)
            .filter_map(|slot| match slot {
                Slot::Live(op) => Some(op),
                Slot::LogOnly(_) | Slot::Gone => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::message::Message;
    use crate::protocol::QoS;
    use crate::store::record::{EntryRecord, FlightRecord};

    fn entry(client: &str, seq: u64) -> Op {
        Op::Entry {
            client_id: client.into(),
            seq,
            entry: EntryRecord {
                message: seq,
                qos: 1,
                retain: false,
                subscription_ids: Vec::new(),
                shared: None,
            },
        }
    }

    fn flight(client: &str, seq: u64, released: bool) -> Op {
        Op::Flight {
            client_id: client.into(),
            seq,
            flight: FlightRecord {
                packet_id: seq as u16,
                released,
            },
        }
    }

    fn message(id: u64) -> Op {
        Op::Message {
            id,
            message: Arc::new(Message {
                topic: "t".into(),
                payload: Default::default(),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Default::default(),
                publisher: "p".into(),
                expires_at: None,
                received_at: Instant::now(),
            }),
        }
    }

    fn remove_entry(client: &str, seq: u64, flight: bool) -> Op {
        Op::RemoveEntry {
            client_id: client.into(),
            seq,
            flight,
        }
    }

    /// The indices of the ops left.
    fn kept(ops: Vec<Op>) -> Vec<usize> {
        let tagged: Vec<String> = ops.iter().map(|op| format!("{op:?}")).collect();
        let mut left = ops;
        cancel_transient(&mut left);
        let mut kept = Vec::new();
        let mut from = 0;
        for op in &left {
            let text = format!("{op:?}");
            let at = from + tagged[from..].iter().position(|t| *t == text).unwrap();
            kept.push(at);
            from = at + 1;
        }
        kept
    }

    #[test]
    fn a_message_queued_sent_and_acknowledged_within_one_group_leaves_nothing() {
        let ops = vec![
            message(1),
            entry("c", 1),
            flight("c", 1, false),
            remove_entry("c", 1, true),
            Op::RemoveMessage(1),
        ];
        assert_eq!(kept(ops), Vec::<usize>::new());
    }

    #[test]
    fn what_was_born_in_an_earlier_group_is_still_removed() {
        let ops = vec![
            flight("c", 1, false),
            remove_entry("c", 1, true),
            Op::RemoveMessage(1),
        ];
        assert_eq!(kept(ops), vec![0, 1, 2]);
    }

    #[test]
    fn a_message_still_owed_at_the_end_of_the_group_is_kept() {
        let ops = vec![
            message(1),
            entry("a", 1),
            entry("b", 1),
            flight("a", 1, false),
            remove_entry("a", 1, true),
        ];
        // a's entry is gone; b still owes the message.
        assert_eq!(kept(ops), vec![0, 2]);
    }

    #[test]
    fn a_released_qos2_flow_is_kept_until_its_pubcomp() {
        let released = vec![
            message(1),
            entry("c", 1),
            flight("c", 1, false),
            remove_entry("c", 1, false),
            flight("c", 1, true),
            Op::RemoveMessage(1),
        ];
        // The message went; the flow, awaiting PUBCOMP, must reach the disk.
        assert_eq!(kept(released), vec![1, 2, 3, 4]);
        let completed = vec![
            entry("c", 1),
            flight("c", 1, false),
            remove_entry("c", 1, false),
            flight("c", 1, true),
            Op::RemoveFlight {
                client_id: "c".into(),
                seq: 1,
            },
        ];
        assert_eq!(kept(completed), Vec::<usize>::new());
    }

    #[test]
    fn a_removal_whose_birth_is_already_logged_is_logged_but_not_applied() {
        let mut window = Window::default();
        window.push(message(1));
        window.push(entry("c", 1));
        window.mark_logged();
        window.push(remove_entry("c", 1, true));
        window.push(Op::RemoveMessage(1));
        // The log must hear of the removals, which undo its puts.
        assert_eq!(window.unlogged().count(), 2);
        window.mark_logged();
        // redb never saw the puts: nothing for the checkpoint.
        assert!(window.take().is_empty());
    }

    #[test]
    fn a_removal_of_what_redb_holds_reaches_both() {
        let mut window = Window::default();
        window.push(remove_entry("c", 1, true));
        assert_eq!(window.unlogged().count(), 1);
        window.mark_logged();
        assert_eq!(window.take().len(), 1);
    }

    #[test]
    fn a_session_removed_takes_what_was_born_with_it_and_a_new_one_starts_over() {
        let ops = vec![entry("c", 1), Op::RemoveSession("c".into()), entry("c", 1)];
        assert_eq!(kept(ops), vec![1, 2]);
    }
}
