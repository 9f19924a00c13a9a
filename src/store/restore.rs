//! Reading a partition back at start-up: its sessions, with their
//! messages in order and clocks turned into this run's `Instant`s, and its
//! retained messages.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use bytestring::ByteString;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use rkyv::util::AlignedVec;
use rustc_hash::FxHashMap;

use super::dir::{Partition, RECORDS, StoreError, skip_or_fail};
use super::log::{self, Unapplied};
use super::record::{
    self, ArchivedStoredMessage, EntryRecord, FlightRecord, SessionRecord, WillRecord,
};
use crate::cluster::frame::{WireMessage, wire_to_message};
use crate::message::Message;
use crate::protocol::{LastWill, ProtocolVersion, QoS, SubscriptionOptions, WillProperties};
use crate::session::{RestoredMessage, RestoredSession};

/// What one partition held.
#[derive(Default)]
pub struct RestoredShard {
    pub sessions: Vec<(RestoredSession, Vec<RestoredSubscription>)>,
    pub retained: Vec<Arc<Message>>,
    /// Stored messages still referenced, by id, with how many entries
    /// refer to each: the shard's table of what it has written.
    pub messages: Vec<(u64, Arc<Message>, u32)>,
    /// Keys of records nothing refers to any more (messages whose entries
    /// are gone, entries of sessions that are gone), to delete.
    pub garbage: Vec<Vec<u8>>,
    /// The log a crash left, read through here, for the writer's
    /// checkpoint thread to apply to redb before anything else.
    pub unapplied: Unapplied,
}

#[derive(Debug, Clone)]
pub struct RestoredSubscription {
    pub filter: ByteString,
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
}

/// Per client, what the scan found, before it is put together. Keys are
/// not kept: the few that turn out to be garbage are built again from
/// the client id and sequence number.
#[derive(Default)]
struct Parts {
    session: Option<SessionRecord>,
    entries: Vec<(u64, EntryRecord)>,
    flights: FxHashMap<u64, FlightRecord>,
    incoming_qos2: Vec<u16>,
}

/// The clients the scan has met, in the order first met. Records of one
/// client are next to each other within each kind (keys are kind, client
/// id, then sequence), so the last client looked up is remembered and
/// most records need no hash lookup.
#[derive(Default)]
struct Clients {
    index: FxHashMap<String, usize>,
    parts: Vec<(String, Parts)>,
    last: usize,
}

impl Clients {
    fn get(&mut self, client_id: &str) -> &mut Parts {
        let hit = self
            .parts
            .get(self.last)
            .is_some_and(|(id, _)| id == client_id);
        if !hit {
            self.last = match self.index.get(client_id) {
                Some(&at) => at,
                None => {
                    self.index.insert(client_id.to_owned(), self.parts.len());
                    self.parts.push((client_id.to_owned(), Parts::default()));
                    self.parts.len() - 1
                }
            };
        }
        &mut self.parts[self.last].1
    }
}

/// The stored messages of a partition, by id, as the scan meets them:
/// in ascending id order (their keys are the id, big-endian), so they are
/// appended, not hashed; with a hash table, inserting and then looking up
/// a million of them took a fifth of a restart (perf). Ids are looked up
/// through a dense index when they are dense (ids are given out one after
/// another, so those still stored mostly are), else by binary search.
#[derive(Default)]
struct Messages {
    ids: Vec<u64>,
    entries: Vec<(Arc<Message>, u32)>,
    /// Position in `entries` by `id - ids[0]`, `u32::MAX` for none; built
    /// at the first lookup.
    dense: Option<Vec<u32>>,
}

impl Messages {
    fn reserve(&mut self, additional: usize) {
        self.ids.reserve(additional);
        self.entries.reserve(additional);
    }

    fn push(&mut self, id: u64, message: Arc<Message>) {
        self.dense = None;
        if self.ids.last().is_none_or(|&last| last < id) {
            self.ids.push(id);
            self.entries.push((message, 0));
            return;
        }
        // Out of key order (not from a scan): kept findable all the same.
        let at = self.ids.partition_point(|&other| other < id);
        if self.ids.get(at) == Some(&id) {
            self.entries[at] = (message, 0);
        } else {
            self.ids.insert(at, id);
            self.entries.insert(at, (message, 0));
        }
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut (Arc<Message>, u32)> {
        let (&first, &last) = (self.ids.first()?, self.ids.last()?);
        let span = last - first + 1;
        let position = if span <= 4 * self.ids.len() as u64 {
            let ids = &self.ids;
            let dense = self.dense.get_or_insert_with(|| {
                let mut dense = vec![u32::MAX; span as usize];
                for (position, id) in ids.iter().enumerate() {
                    dense[(id - first) as usize] = position as u32;
                }
                dense
            });
            let slot = *dense.get(usize::try_from(id.checked_sub(first)?).ok()?)?;
            if slot == u32::MAX {
                return None;
            }
            slot as usize
        } else {
            self.ids.binary_search(&id).ok()?
        };
        self.entries.get_mut(position)
    }
}

/// Bytes of message archives packed into one buffer ([`Packed`]).
const PACK_BYTES: usize = 64 * 1024;

/// The archives of stored messages, copied out of redb's pages into
/// shared buffers of [`PACK_BYTES`] instead of one buffer each: a
/// restored message's payload and strings are slices of its pack. One
/// allocation per 400-odd messages instead of two per message (the
/// archive and its `Bytes` owner); with a million of them, allocating
/// and growing the heap page by page was the largest part of a restart
/// after redb's own reads (perf, PERF.md "Restore, allocating less").
/// The price: a pack is freed with the last of its messages, so memory
/// read at a restart may be held until the sessions that sat offline
/// longest have taken theirs; never more than the restart read.
struct Packed {
    buffer: AlignedVec<16>,
    /// Message id, and where its archive is in `buffer`.
    pending: Vec<(u64, std::ops::Range<usize>)>,
}

impl Packed {
    fn new(capacity: usize) -> Packed {
        Packed {
            buffer: AlignedVec::with_capacity(capacity),
            pending: Vec::new(),
        }
    }

    /// Whether `len` more bytes fit without growing the buffer.
    fn fits(&self, len: usize) -> bool {
        self.buffer.len().next_multiple_of(16) + len <= self.buffer.capacity()
    }

    /// Copies `archive` in, at an offset aligned as rkyv reads it.
    fn push(&mut self, id: u64, archive: &[u8]) {
        let start = self.buffer.len().next_multiple_of(16);
        self.buffer.resize(start, 0);
        self.buffer.extend_from_slice(archive);
        self.pending.push((id, start..self.buffer.len()));
    }
}

/// The records of one partition as the scan meets them, in key order.
struct Reader<'a> {
    partition: &'a Partition,
    repair: bool,
    now: Instant,
    wall: SystemTime,
    shard: RestoredShard,
    messages: Messages,
    clients: Clients,
    packed: Packed,
    /// Where the archive of a record decoded into owned values (all but
    /// messages) is copied to be aligned: one buffer, reused.
    scratch: AlignedVec<16>,
}

impl Reader<'_> {
    fn visit(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let (now, wall) = (self.now, self.wall);
        let shard = &mut self.shard;
        // With --repair, a damaged record is skipped and then deleted:
        // left in place, it would stop the next start without --repair.
        let (partition, repair) = (self.partition, self.repair);
        let damaged =
            |problem: &str| skip_or_fail(partition, key, problem, repair).map(|()| key.to_vec());
        let archive = match record::verify(key, value) {
            Ok(archive) => archive,
            Err(problem) => {
                shard.garbage.push(damaged(&problem.to_string())?);
                return Ok(());
            }
        };
        if key.first() == Some(&record::MESSAGE) {
            let Some(id) = key.get(1..).and_then(record::be_u64) else {
                shard.garbage.push(damaged("bad message key")?);
                return Ok(());
            };
            if !self.packed.fits(archive.len()) {
                self.unpack(archive.len().max(PACK_BYTES))?;
            }
            self.packed.push(id, archive);
            return Ok(());
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(archive);
        let archive = &self.scratch;
        match key.first().copied() {
            Some(record::RETAINED) => {
                let frame = Bytes::from_owner(archive.clone());
                match stored(frame, now, wall) {
                    Ok(Some(message)) => shard.retained.push(Arc::new(message)),
                    Ok(None) => shard.garbage.push(key.to_vec()),
                    Err(problem) => shard.garbage.push(damaged(&problem)?),
                }
            }
            Some(
                kind @ (record::SESSION | record::ENTRY | record::FLIGHT | record::INCOMING_QOS2),
            ) => {
                let Some((client_id, rest)) = record::split_client_key(key) else {
                    shard.garbage.push(damaged("bad client key")?);
                    return Ok(());
                };
                let parts = self.clients.get(client_id);
                let ok = match kind {
                    record::SESSION => record::decode::<SessionRecord>(archive)
                        .map(|session| parts.session = Some(session)),
                    record::ENTRY => match record::be_u64(rest) {
                        Some(seq) => record::decode::<EntryRecord>(archive)
                            .map(|entry| parts.entries.push((seq, entry))),
                        None => Err(record::RecordError::Invalid("bad sequence".into())),
                    },
                    record::FLIGHT => match record::be_u64(rest) {
                        Some(seq) => record::decode::<FlightRecord>(archive).map(|flight| {
                            parts.flights.insert(seq, flight);
                        }),
                        None => Err(record::RecordError::Invalid("bad sequence".into())),
                    },
                    _ => match record::be_u16(rest) {
                        Some(packet_id) => {
                            parts.incoming_qos2.push(packet_id);
                            Ok(())
                        }
                        None => Err(record::RecordError::Invalid("bad packet id".into())),
                    },
                };
                if let Err(problem) = ok {
                    shard.garbage.push(damaged(&problem.to_string())?);
                }
            }
            _ => shard.garbage.push(damaged("unknown kind of record")?),
        }
        Ok(())
    }

    /// Decodes the messages packed so far, each a slice of their shared
    /// buffer, and starts a new buffer of `capacity` bytes.
    fn unpack(&mut self, capacity: usize) -> Result<(), StoreError> {
        let Packed { buffer, pending } = std::mem::replace(&mut self.packed, Packed::new(capacity));
        if pending.is_empty() {
            return Ok(());
        }
        let buffer = Bytes::from_owner(buffer);
        for (id, range) in pending {
            match stored(buffer.slice(range), self.now, self.wall) {
                Ok(Some(message)) => self.messages.push(id, Arc::new(message)),
                // Expired while the broker was down: entries referring to it
                // are dropped below, like an expired message in a queue.
                Ok(None) => self.shard.garbage.push(record::message_key(id)),
                Err(problem) => {
                    let key = record::message_key(id);
                    skip_or_fail(self.partition, &key, &problem, self.repair)?;
                    self.shard.garbage.push(key);
                }
            }
        }
        Ok(())
    }
}

/// Reads `partition` whole. `now` and `wall` are the same moment on the
/// monotonic and the wall clock.
///
/// Records are decoded as redb hands them out, not copied out first: at
/// 100,000 sessions with 10 messages each (2.1 million records) copying
/// every key and value, and keeping every queue entry's key, cost about
/// half of the restart (PERF.md, "Durable sessions").
pub fn restore(
    partition: &Partition,
    repair: bool,
    now: Instant,
    wall: SystemTime,
) -> Result<RestoredShard, StoreError> {
    let unapplied = log::unapplied(&partition.path, repair)?;
    let mut reader = Reader {
        partition,
        repair,
        now,
        wall,
        shard: RestoredShard::default(),
        messages: Messages::default(),
        clients: Clients::default(),
        packed: Packed::new(PACK_BYTES),
        scratch: AlignedVec::new(),
    };
    let engine = |e: redb::Error| StoreError::Engine {
        path: partition.path.clone(),
        detail: e.to_string(),
    };
    let tx = partition.db.begin_read().map_err(|e| engine(e.into()))?;
    let table = tx.open_table(RECORDS).map_err(|e| engine(e.into()))?;
    // Every message still referred to has an entry record of its own, so
    // at most half the records are messages: sized once, their table is
    // not grown and copied (twenty times for a million messages).
    let records =
        table.len().map_err(|e| engine(e.into()))? as usize + unapplied.net.keys_touched();
    reader.messages.reserve(records / 2);
    // redb's records and the log's, merged in key order: the log's value
    // (or removal) replaces redb's.
    let mut logged = unapplied.net.keys().peekable();
    for item in table.iter().map_err(|e| engine(e.into()))? {
        let (key, value) = item.map_err(|e| engine(e.into()))?;
        let key = key.value();
        let mut replaced = false;
        while let Some((logged_key, logged_value)) = logged.next_if(|(k, _)| *k <= key) {
            if let Some(logged_value) = logged_value {
                reader.visit(logged_key, logged_value)?;
            }
            replaced |= logged_key == key;
        }
        if replaced || unapplied.net.removes_by_prefix(key) {
            continue;
        }
        reader.visit(key, value.value())?;
    }
    for (key, value) in logged {
        if let Some(value) = value {
            reader.visit(key, value)?;
        }
    }
    reader.unpack(0)?;
    drop(table);
    drop(tx);
    let Reader {
        mut shard,
        mut messages,
        clients,
        ..
    } = reader;
    shard.unapplied = unapplied;

    let entry_key = |id: &str, seq| record::entry_key(record::ENTRY, id, seq);
    let flight_key = |id: &str, seq| record::entry_key(record::FLIGHT, id, seq);
    shard.sessions.reserve(clients.parts.len());
    for (client_id, parts) in clients.parts {
        let Some(session) = parts.session else {
            // Records of a session whose own record is gone (it ended, and
            // the removal of the rest was cut short).
            let id = client_id.as_str();
            shard.garbage.extend(
                (parts.entries.iter().map(|(seq, _)| entry_key(id, *seq)))
                    .chain(parts.flights.keys().map(|seq| flight_key(id, *seq)))
                    .chain(
                        (parts.incoming_qos2.iter())
                            .map(|packet_id| record::incoming_qos2_key(id, *packet_id)),
                    ),
            );
            continue;
        };
        let (owed, dropped) = owed_from(parts.entries, parts.flights, |id| {
            let (message, refs) = messages.get_mut(id)?;
            *refs += 1;
            Some(message.clone())
        });
        shard
            .garbage
            .extend((dropped.iter()).map(|&(kind, seq)| record::entry_key(kind, &client_id, seq)));
        shard.sessions.push(session_from(
            client_id,
            session,
            owed,
            parts.incoming_qos2,
            now,
            wall,
        ));
    }
    shard.messages.reserve(messages.entries.len());
    for (id, (message, refs)) in messages.ids.into_iter().zip(messages.entries) {
        if refs == 0 {
            shard.garbage.push(record::message_key(id));
        } else {
            shard.messages.push((id, message, refs));
        }
    }
    Ok(shard)
}

/// What a session owes, from its entry and flight records, in `seq`
/// order: each entry whose message `message_of` finds, sent if it has a
/// flight, and each released flight (only its PUBREL owed). Also returns
/// the records found to be garbage, by kind and `seq`: entries whose
/// message is gone (expired) with their flights, and unreleased flights
/// without an entry.
pub(super) fn owed_from(
    entries: Vec<(u64, EntryRecord)>,
    mut flights: FxHashMap<u64, FlightRecord>,
    mut message_of: impl FnMut(u64) -> Option<Arc<Message>>,
) -> (Vec<RestoredMessage>, Vec<(u8, u64)>) {
    let mut owed = Vec::with_capacity(entries.len());
    let mut garbage = Vec::new();
    for (seq, entry) in entries {
        let flight = flights.remove(&seq);
        let Some(message) = message_of(entry.message) else {
            garbage.push((record::ENTRY, seq));
            if flight.is_some() {
                garbage.push((record::FLIGHT, seq));
            }
            continue;
        };
        owed.push(RestoredMessage {
            seq,
            message: Some(message),
            qos: QoS::from_u8(entry.qos).unwrap_or(QoS::AtLeastOnce),
            retain: entry.retain,
            subscription_ids: entry.subscription_ids,
            shared: entry.shared.map(ByteString::from),
            packet_id: flight.filter(|f| !f.released).map(|f| f.packet_id),
        });
    }
    for (seq, flight) in flights {
        if flight.released {
            owed.push(RestoredMessage::release_owed(seq, flight.packet_id));
        } else {
            garbage.push((record::FLIGHT, seq));
        }
    }
    owed.sort_unstable_by_key(|m| m.seq);
    (owed, garbage)
}

pub(super) fn session_from(
    client_id: String,
    record: SessionRecord,
    messages: Vec<RestoredMessage>,
    incoming_qos2: Vec<u16>,
    now: Instant,
    wall: SystemTime,
) -> (RestoredSession, Vec<RestoredSubscription>) {
    let protocol = match record.protocol {
        3 => ProtocolVersion::V3_1,
        4 => ProtocolVersion::V3_1_1,
        _ => ProtocolVersion::V5,
    };
    let subscriptions = record
        .subscriptions
        .into_iter()
        .filter_map(|s| {
            let options = SubscriptionOptions::from_byte(s.options, ProtocolVersion::V5).ok()?;
            Some(RestoredSubscription {
                filter: s.filter.into(),
                options,
                id: s.id,
            })
        })
        .collect();
    let will = record.will.map(|will| will_from(will, now, wall));
    let restored = RestoredSession {
        client_id: client_id.into(),
        username: record.username.map(ByteString::from),
        protocol,
        session_expiry: record.session_expiry,
        connected: record.connected,
        expires_at: record.expires_at_ms.map(|ms| instant_at(ms, now, wall)),
        will,
        messages,
        incoming_qos2,
    };
    (restored, subscriptions)
}

fn will_from(will: WillRecord, now: Instant, wall: SystemTime) -> (LastWill, Option<Instant>) {
    let WireMessage {
        topic,
        payload,
        qos,
        retain,
        expiry_ms,
        payload_format_indicator,
        content_type,
        response_topic,
        correlation_data,
        user_properties,
        ..
    } = will.message;
    let last = LastWill {
        topic: topic.into(),
        payload: payload.into(),
        qos: QoS::from_u8(qos).unwrap_or(QoS::AtMostOnce),
        retain,
        properties: WillProperties {
            will_delay_interval: will.delay_secs,
            payload_format_indicator,
            message_expiry_interval: expiry_ms
                .map(|ms| u32::try_from(ms / 1000).unwrap_or(u32::MAX)),
            content_type: content_type.map(Into::into),
            response_topic: response_topic.map(Into::into),
            correlation_data: correlation_data.map(Into::into),
            user_properties: user_properties
                .into_iter()
                .map(|p| (p.key.into(), p.value.into()))
                .collect(),
        },
    };
    (last, will.due_ms.map(|ms| instant_at(ms, now, wall)))
}

/// The `Instant` of a wall-clock time in Unix milliseconds: one already
/// past is `now`, so whatever was due happens at once.
fn instant_at(unix_ms: u64, now: Instant, wall: SystemTime) -> Instant {
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms);
    match at.duration_since(wall) {
        Ok(ahead) => now
            .checked_add(ahead)
            .unwrap_or(now + Duration::from_secs(u32::MAX.into())),
        Err(_) => now,
    }
}

/// Unix milliseconds of an `Instant` of this run.
pub fn unix_ms(at: Instant, now: Instant, wall: SystemTime) -> u64 {
    let wall_at = match at.checked_duration_since(now) {
        Some(ahead) => wall + ahead,
        None => wall - now.saturating_duration_since(at),
    };
    wall_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The message in a verified archive (aligned for rkyv), or `None` if it
/// has expired.
fn stored(frame: Bytes, now: Instant, wall: SystemTime) -> Result<Option<Message>, String> {
    let archived = rkyv::access::<ArchivedStoredMessage, rkyv::rancor::Error>(&frame)
        .map_err(|e| format!("does not validate: {e}"))?;
    message_in(&frame, archived, now, wall)
}

/// The message `archived` holds, its payload and strings slices of
/// `frame`; `None` if it has expired.
pub(super) fn message_in(
    frame: &Bytes,
    archived: &ArchivedStoredMessage,
    now: Instant,
    wall: SystemTime,
) -> Result<Option<Message>, String> {
    let expires_at = archived
        .expires_at_ms
        .as_ref()
        .map(|ms| instant_at(ms.to_native(), now, wall));
    if expires_at.is_some_and(|at| at <= now) {
        return Ok(None);
    }
    let mut message = wire_to_message(frame, &archived.message, now).map_err(|e| e.to_string())?;
    message.expires_at = expires_at;
    Ok(Some(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;

    fn message(n: u64) -> Arc<Message> {
        crate::session::testing::message(&format!("t/{n}"), QoS::AtLeastOnce)
    }

    fn found(messages: &mut Messages, id: u64) -> Option<String> {
        messages.get_mut(id).map(|(m, _)| m.topic.to_string())
    }

    #[test]
    fn messages_are_found_by_id_dense_or_sparse_and_in_any_order() {
        // Dense, with gaps: the index.
        let mut dense = Messages::default();
        for id in [3, 4, 6, 7] {
            dense.push(id, message(id));
        }
        assert_eq!(found(&mut dense, 6), Some("t/6".into()));
        assert_eq!(found(&mut dense, 5), None);
        assert_eq!(found(&mut dense, 2), None);
        assert_eq!(found(&mut dense, 8), None);
        // Counting through the index reaches the entry itself.
        dense.get_mut(4).unwrap().1 += 2;
        assert_eq!(dense.entries[1].1, 2);

        // Sparse: binary search; pushed out of order, still found.
        let mut sparse = Messages::default();
        for id in [1_000_000, 5, 70_000] {
            sparse.push(id, message(id));
        }
        assert_eq!(sparse.ids, vec![5, 70_000, 1_000_000]);
        assert_eq!(found(&mut sparse, 70_000), Some("t/70000".into()));
        assert_eq!(found(&mut sparse, 70_001), None);
        // A push after a lookup drops the index built for the old ids.
        dense.push(5, message(5));
        assert_eq!(found(&mut dense, 5), Some("t/5".into()));
    }
}
