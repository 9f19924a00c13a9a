//! The copies this node keeps of other nodes' sessions: for each origin
//! node and shard, the records its partition holds for its stored
//! sessions, kept up to date by the ops it replicates
//! ([`Frame::Replicate`](super::Frame::Replicate)). A copy is only read
//! when its owner cannot be asked: a node that takes the client id over
//! then gets the session from here ([`Mirrors::take`]), archived as a
//! hand-over archives it, and nothing acknowledged to the owner's
//! publishers is lost with the owner.
//!
//! The copy lives in memory: the owner's own disk holds the same records,
//! so losing the copy and the owner at once loses what the owner's
//! `durability` lets a crash lose there, no more.

use std::collections::{BTreeMap, BTreeSet};

use bytestring::ByteString;
use rustc_hash::FxHashMap;
use tracing::debug;

use crate::cluster::frame::ReplicaOp;
use crate::store::record::{EntryRecord, FlightRecord, SessionRecord, StoredMessage};
use crate::store::transfer::{SeqEntry, SeqFlight, SessionArchive, archive_bytes};

/// Copies of other nodes' sessions, by origin node and shard.
#[derive(Default)]
pub(super) struct Mirrors {
    shards: FxHashMap<(ByteString, u32), ShardCopy>,
}

/// One origin shard's partition, as far as sessions go.
#[derive(Default)]
struct ShardCopy {
    sessions: FxHashMap<String, SessionCopy>,
    messages: FxHashMap<u64, StoredMessage>,
}

#[derive(Default)]
struct SessionCopy {
    /// `None` until the session's record arrives (its entries may come
    /// first within a turn).
    record: Option<SessionRecord>,
    entries: BTreeMap<u64, EntryRecord>,
    flights: BTreeMap<u64, FlightRecord>,
    incoming_qos2: BTreeSet<u16>,
}

impl Mirrors {
    /// Applies what `origin`'s shard `shard` replicated; `reset` first
    /// drops what was held for that shard.
    pub(super) fn apply(
        &mut self,
        origin: &ByteString,
        shard: u32,
        reset: bool,
        ops: Vec<ReplicaOp>,
    ) {
        let key = (origin.clone(), shard);
        if reset {
            self.shards.remove(&key);
        }
        if ops.is_empty() {
            return;
        }
        let copy = self.shards.entry(key).or_default();
        for op in ops {
            copy.apply(op);
        }
    }

    /// Drops every copy of `origin`'s sessions: it restarted, and sends
    /// them again if this node is still to keep them.
    pub(super) fn forget_origin(&mut self, origin: &str) {
        self.shards.retain(|(node, _), _| node != origin);
    }

    /// The copy of `client_id`'s session, archived for the node that now
    /// owns it, and no longer kept here, with the node it was copied from. Looked for under every origin: a
    /// client id has one owner, so at most one copy is current.
    pub(super) fn take(&mut self, client_id: &str) -> Option<(ByteString, Vec<u8>)> {
        let mut found = None;
        for ((origin, _), copy) in &mut self.shards {
            if let Some(session) = copy.sessions.remove(client_id)
                && let Some(archive) = copy.archive(session)
            {
                found = Some((origin.clone(), archive));
            }
        }
        found.map(|(origin, archive)| (origin, archive_bytes(&archive)))
    }

    /// The client ids of the complete copies kept for `origin`.
    pub(super) fn client_ids_of(&self, origin: &str) -> Vec<ByteString> {
        (self.shards.iter())
            .filter(|((node, _), _)| node == origin)
            .flat_map(|(_, copy)| copy.sessions.iter())
            .filter(|(_, session)| session.record.is_some())
            .map(|(client_id, _)| ByteString::from(client_id.as_str()))
            .collect()
    }

    /// How many sessions this node keeps copies of.
    pub(super) fn sessions(&self) -> usize {
        let complete = |session: &&SessionCopy| session.record.is_some();
        (self.shards.values())
            .map(|copy| copy.sessions.values().filter(complete).count())
            .sum()
    }
}

impl ShardCopy {
    fn session(&mut self, client_id: &str) -> &mut SessionCopy {
        self.sessions.entry(client_id.to_owned()).or_default()
    }

    fn apply(&mut self, op: ReplicaOp) {
        match op {
            ReplicaOp::Session(record) => {
                let client_id = record.client_id.clone();
                self.session(&client_id).record = Some(record);
            }
            ReplicaOp::RemoveSession(client_id) => {
                self.sessions.remove(&client_id);
            }
            ReplicaOp::Message { id, message } => {
                self.messages.insert(id, message);
            }
            ReplicaOp::RemoveMessage(id) => {
                self.messages.remove(&id);
            }
            ReplicaOp::Entry {
                client_id,
                seq,
                entry,
            } => {
                self.session(&client_id).entries.insert(seq, entry);
            }
            ReplicaOp::Flight {
                client_id,
                seq,
                flight,
            } => {
                self.session(&client_id).flights.insert(seq, flight);
            }
            ReplicaOp::RemoveEntry {
                client_id,
                seq,
                flight,
            } => {
                if let Some(session) = self.sessions.get_mut(&client_id) {
                    session.entries.remove(&seq);
                    if flight {
                        session.flights.remove(&seq);
                    }
                }
            }
            ReplicaOp::RemoveFlight { client_id, seq } => {
                if let Some(session) = self.sessions.get_mut(&client_id) {
                    session.flights.remove(&seq);
                }
            }
            ReplicaOp::IncomingQos2 {
                client_id,
                packet_id,
            } => {
                self.session(&client_id).incoming_qos2.insert(packet_id);
            }
            ReplicaOp::RemoveIncomingQos2 {
                client_id,
                packet_id,
            } => {
                if let Some(session) = self.sessions.get_mut(&client_id) {
                    session.incoming_qos2.remove(&packet_id);
                }
            }
        }
    }

    /// `session` as a hand-over archives it: entries refer to messages
    /// by their position in the archive. An entry whose message is not
    /// here (it never should be) is left out rather than invented.
    fn archive(&self, session: SessionCopy) -> Option<SessionArchive> {
        let record = session.record?;
        let mut messages = Vec::new();
        let mut positions = FxHashMap::default();
        let mut entries = Vec::new();
        for (seq, mut entry) in session.entries {
            let Some(message) = self.messages.get(&entry.message) else {
                debug!(client = %record.client_id, seq, "replicated entry without its message");
                continue;
            };
            entry.message = *positions.entry(entry.message).or_insert_with(|| {
                messages.push(message.clone());
                messages.len() as u64 - 1
            });
            entries.push(SeqEntry { seq, entry });
        }
        let flights = (session.flights.into_iter())
            .map(|(seq, flight)| SeqFlight { seq, flight })
            .collect();
        Some(SessionArchive {
            session: record,
            messages,
            entries,
            flights,
            incoming_qos2: session.incoming_qos2.into_iter().collect(),
        })
    }
}
