//! The cluster's per-peer outboxes on disk (`cluster.redb` in the data
//! dir): messages this node accepted and owes to a peer that has not
//! acknowledged them yet. A publisher is answered without waiting for a
//! peer whose link is down, so what is owed to it must outlive this
//! node's crash: after a restart, the node owes it all again, numbered
//! afresh on its new incarnation's streams.
//!
//! Written by the cluster's thread, once per turn of its loop and before
//! the answers of that turn reach the shards (see the cluster runtime's
//! `pump`); the thread is no shard, so a commit there stalls no client.
//! QoS 0 messages are not stored.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use bytestring::ByteString;
use redb::ReadableTable;

use super::Durability;
use super::dir::{Partition, StoreError, scan, skip_or_fail};
use super::record::{self, ArchivedOutboxRecord, OutboxRecord};
use super::restore::message_in;
use super::writer::{BatchSync, remove_prefix, stored_record, transaction};
use crate::message::Message;

/// One change to what is owed to peers, from the cluster's node.
#[derive(Debug)]
pub enum OutboxOp {
    Put {
        peer: ByteString,
        stream: u32,
        seq: u64,
        share: Option<ByteString>,
        message: Arc<Message>,
    },
    /// The peer has everything on `stream` up to `through`.
    Ack {
        peer: ByteString,
        stream: u32,
        through: u64,
    },
    /// Dropped to bound the outbox.
    Remove {
        peer: ByteString,
        stream: u32,
        seq: u64,
    },
    /// The peer is forgotten (left, or unreachable past the hold).
    Forget { peer: ByteString },
    /// Everything: the restored entries are numbered again.
    Clear,
}

/// A message owed to a peer as read back at start-up, in the order it
/// was owed on its stream.
#[derive(Debug, Clone)]
pub struct RestoredOutbox {
    pub peer: ByteString,
    pub stream: u32,
    pub share: Option<ByteString>,
    pub message: Arc<Message>,
}

pub struct ClusterStore {
    partition: Partition,
    sync: BatchSync,
}

impl ClusterStore {
    pub fn new(partition: Partition, durability: Durability, interval: Duration) -> ClusterStore {
        ClusterStore {
            partition,
            sync: BatchSync::new(durability, interval),
        }
    }

    /// Everything owed to peers when the last run stopped.
    pub fn restore(&self, repair: bool) -> Result<Vec<RestoredOutbox>, StoreError> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut owed = Vec::new();
        for (key, value) in scan(&self.partition)? {
            let damaged = |problem: &str| skip_or_fail(&self.partition, &key, problem, repair);
            let parsed = record::split_client_key(&key).and_then(|(peer, rest)| {
                let stream = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
                Some((peer.to_owned(), stream))
            });
            let Some((peer, stream)) = parsed.filter(|_| key.first() == Some(&record::OUTBOX))
            else {
                damaged("not an outbox entry")?;
                continue;
            };
            let entry = record::unframe(&key, &value)
                .map_err(|e| e.to_string())
                .and_then(|archive| {
                    let frame = Bytes::from_owner(archive);
                    let archived =
                        rkyv::access::<ArchivedOutboxRecord, rkyv::rancor::Error>(&frame)
                            .map_err(|e| format!("does not validate: {e}"))?;
                    let share = archived
                        .share
                        .as_ref()
                        .map(|s| ByteString::from(s.as_str()));
                    Ok((share, message_in(&frame, &archived.message, now, wall)?))
                });
            match entry {
                Ok((share, Some(message))) => owed.push(RestoredOutbox {
                    peer: peer.into(),
                    stream,
                    share,
                    message: Arc::new(message),
                }),
                // Expired while the node was down: owed to no one.
                Ok((_, None)) => {}
                Err(problem) => damaged(&problem)?,
            }
        }
        Ok(owed)
    }

    /// Writes one turn's changes as one transaction, synced as the
    /// durability asks.
    pub fn commit(&mut self, ops: Vec<OutboxOp>) -> Result<(), String> {
        if ops.is_empty() {
            return Ok(());
        }
        transaction(&self.partition, |table, now, wall| {
            ops.into_iter()
                .try_for_each(|op| apply(table, op, now, wall))
        })?;
        self.sync.wrote();
        self.sync_if_due();
        Ok(())
    }

    /// With `durability = batch`, syncs once the interval has passed;
    /// called every turn.
    pub fn sync_if_due(&mut self) {
        let file = &self.partition.file;
        self.sync.sync_if_due(&self.partition.path, || file.sync());
    }
}

fn apply(
    table: &mut redb::Table<&[u8], &[u8]>,
    op: OutboxOp,
    now: Instant,
    wall: SystemTime,
) -> Result<(), redb::Error> {
    match op {
        OutboxOp::Put {
            peer,
            stream,
            seq,
            share,
            message,
        } => {
            let key = record::outbox_key(&peer, stream, seq);
            let entry = OutboxRecord {
                message: stored_record(&message, now, wall),
                share: share.map(|s| s.to_string()),
            };
            table.insert(key.as_slice(), record::encode(&key, &entry).as_slice())?;
        }
        OutboxOp::Ack {
            peer,
            stream,
            through,
        } => {
            let from = record::outbox_key(&peer, stream, 0);
            let to = record::outbox_key(&peer, stream, through);
            remove_range(table, &from, &to)?;
        }
        OutboxOp::Remove { peer, stream, seq } => {
            table.remove(record::outbox_key(&peer, stream, seq).as_slice())?;
        }
        OutboxOp::Forget { peer } => {
            let prefix = record::client_key(record::OUTBOX, &peer);
            remove_prefix(table, &prefix)?;
        }
        OutboxOp::Clear => remove_prefix(table, &[record::OUTBOX])?,
    }
    Ok(())
}

/// Removes the keys from `from` up to and including `to`.
fn remove_range(
    table: &mut redb::Table<&[u8], &[u8]>,
    from: &[u8],
    to: &[u8],
) -> Result<(), redb::Error> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for item in table.range(from..=to)? {
        let (key, _) = item?;
        keys.push(key.value().to_vec());
    }
    for key in keys {
        table.remove(key.as_slice())?;
    }
    Ok(())
}
