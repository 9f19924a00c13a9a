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
    let cancelled = transient(ops);
    let mut index = 0;
    ops.retain(|_| {
        index += 1;
        !cancelled[index - 1]
    });
}

/// Which of `ops` [`cancel_transient`] removes.
fn transient(ops: &[Op]) -> Vec<bool> {
    // Ops touching each queue entry born here: (client, seq) -> indices.
    let mut entries: FxHashMap<(ByteString, u64), Vec<usize>> = FxHashMap::default();
    let mut messages: FxHashMap<u64, usize> = FxHashMap::default();
    let mut cancel = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        match op {
            Op::Entry { client_id, seq, .. } => {
                entries.insert((client_id.clone(), *seq), vec![index]);
            }
            Op::Flight { client_id, seq, .. } => {
                if let Some(born) = entries.get_mut(&(client_id.clone(), *seq)) {
                    born.push(index);
                }
            }
            Op::RemoveEntry {
                client_id,
                seq,
                flight,
            } => {
                let key = (client_id.clone(), *seq);
                if *flight {
                    // The flow is over: nothing of it is left.
                    if let Some(born) = entries.remove(&key) {
                        cancel.extend(born);
                        cancel.push(index);
                    }
                } else if let Some(born) = entries.get_mut(&key) {
                    // Released: the entry goes, the flight stays until
                    // PUBCOMP.
                    born.push(index);
                }
            }
            Op::RemoveFlight { client_id, seq } => {
                if let Some(born) = entries.remove(&(client_id.clone(), *seq)) {
                    cancel.extend(born);
                    cancel.push(index);
                }
            }
            Op::RemoveSession(client_id) => {
                // Whatever was born here is removed with the session; the
                // removal itself stays, for what is on disk.
                let gone: Vec<_> = entries
                    .keys()
                    .filter(|(client, _)| client == client_id)
                    .cloned()
                    .collect();
                for key in gone {
                    if let Some(born) = entries.remove(&key) {
                        cancel.extend(born);
                    }
                }
            }
            Op::Message { id, .. } => {
                messages.insert(*id, index);
            }
            Op::RemoveMessage(id) => {
                if let Some(born) = messages.remove(id) {
                    cancel.push(born);
                    cancel.push(index);
                }
            }
            _ => {}
        }
    }
    let mut cancelled = vec![false; ops.len()];
    for index in cancel {
        cancelled[index] = true;
    }
    cancelled
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
        let cancelled = transient(&ops);
        let mut left = ops;
        cancel_transient(&mut left);
        let kept: Vec<usize> = (0..cancelled.len()).filter(|&i| !cancelled[i]).collect();
        assert_eq!(left.len(), kept.len());
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
    fn a_session_removed_takes_what_was_born_with_it_and_a_new_one_starts_over() {
        let ops = vec![entry("c", 1), Op::RemoveSession("c".into()), entry("c", 1)];
        assert_eq!(kept(ops), vec![1, 2]);
    }
}
