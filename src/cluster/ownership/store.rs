//! The ownership raft's durable state: one redb file in the data dir,
//! `ownership.redb`, holding the vote, the log, the committed log id and
//! the state machine's last snapshot.
//!
//! # What waits for the disk, and why
//!
//! Raft is safe only if a voter never forgets what it told the others:
//! the vote it granted in a term (else it could vote twice, and two
//! leaders be elected in one term) and the entries it acknowledged (else
//! an entry a majority committed could vanish from that majority). So
//! saving the vote, appending entries, truncating and purging the log
//! and saving a snapshot commit with redb's `Durability::Immediate`:
//! synced before they return, and raft hears of them only then. A
//! snapshot is synced before raft purges the log it covers.
//!
//! The committed log id is the exception. It only lets a restarted node
//! re-apply its log at once instead of after the leader's first message,
//! and an older one is always safe (raft recomputes it from the
//! majority), so it is committed without a sync and reaches the disk with
//! the next synced commit: a claim then waits for one sync on each node,
//! not two on the leader.
//!
//! Every commit records redb's allocator state (quick repair, as the
//! store's partitions do: [`Partition::commit`]), so the open after a
//! kill -9 does not walk the whole file.
//!
//! # Layout
//!
//! One table; keys start with a byte naming the kind, as in the store
//! ([`record`]):
//!
//! | key | value |
//! |---|---|
//! | `v` | the vote |
//! | `c` | the committed log id |
//! | `p` | the last log id purged: the log's position when it is empty |
//! | `s` | the last snapshot: its meta and the [`OwnershipTable`] |
//! | `l` index | a log entry; the index big-endian, so keys sort as the log |
//!
//! Each value is framed as the store frames its records, behind a CRC-32
//! of key and bytes ([`record::frame`]): a damaged vote is found, never
//! read as another vote. A damaged record stops the node with an error
//! naming the file and the key; unlike the store's records, it cannot be
//! skipped, since a voter that skips part of what it promised is no
//! longer safe to count in a majority.
//!
//! # Why postcard, not rkyv as the store's records
//!
//! openraft's types (entries, votes, log ids, memberships) come with
//! serde derives (its `serde` feature) and without rkyv's; writing them
//! with rkyv would mean mirror types kept in step with openraft's by
//! hand. postcard encodes serde types compactly, is already built (foca's
//! codec), and will carry the raft RPCs between nodes, so one encoding
//! serves both. It reads everything back into owned values, which costs
//! nothing that matters here: the log is read on replication and at
//! start, not per message. postcard does not describe its own layout: a
//! change to a [`Command`](super::Command) or the table changes this
//! file's layout, which is what the data dir's `FORMAT_VERSION` guards.
//!
//! # Off the runtime's thread
//!
//! A synced commit takes from a fraction of a millisecond to tens of
//! them. The cluster runs on one thread (a current-thread tokio runtime)
//! that also carries gossip and forwarded messages, so every operation
//! runs on tokio's blocking pool ([`RaftStore::run`]) while the runtime
//! goes on.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{BasicNode, Entry, LogId, LogState, SnapshotMeta, Vote};
use redb::{Durability as RedbDurability, ReadableDatabase, ReadableTable};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::raft::TypeConfig;
use super::table::{NodeId, OwnershipTable};
use crate::store::dir::{self, Partition, RECORDS};
use crate::store::{Durability, StoreError, record};

/// The file's name in the data dir.
pub const FILE_NAME: &str = "ownership.redb";

const VOTE: &[u8] = b"v";
const COMMITTED: &[u8] = b"c";
const PURGED: &[u8] = b"p";
const SNAPSHOT: &[u8] = b"s";
const ENTRY: u8 = b'l';

/// A snapshot as stored: what it covers, and the table.
pub type StoredSnapshot = (SnapshotMeta<NodeId, BasicNode>, OwnershipTable);

#[derive(Debug, thiserror::Error)]
pub enum RaftStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Opened already, by another raft of this process. The data dir's
    /// lock keeps other processes out; this keeps a second raft (or a
    /// restart whose predecessor has not let go yet) from writing the
    /// same file.
    #[error("{} is open already: one ownership raft per data dir", path.display())]
    InUse { path: PathBuf },
    #[error(
        "damaged ownership raft record in {} at key {key}: {problem}; a voter cannot skip what it promised: restore the file from a backup, or remove it and add this node back to the ownership raft under a new raft id",
        path.display()
    )]
    Damaged {
        path: PathBuf,
        key: String,
        problem: String,
    },
    #[error("{}: the runtime stopped before the operation ran", path.display())]
    Stopped { path: PathBuf },
}

/// The open file. Clones share it: the log store, its readers and the
/// state machine each hold one, and the file stays locked until the last
/// is dropped.
#[derive(Clone)]
pub struct RaftStore {
    partition: Partition,
    /// The `flock` on the file ([`dir::try_lock`]), on a descriptor of
    /// its own.
    _lock: Arc<File>,
}

impl RaftStore {
    /// Opens (or creates) `ownership.redb` in `data_dir` and reads every
    /// record once, so a damaged one stops the node here rather than when
    /// raft first reads it. Synchronous, like the store's own open: it
    /// runs at start-up, after [`crate::store::DataDir::open`] has locked
    /// the data dir and checked its format.
    pub fn open(data_dir: &Path) -> Result<RaftStore, RaftStoreError> {
        let path = data_dir.join(FILE_NAME);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
        if !dir::try_lock(&lock) {
            return Err(RaftStoreError::InUse { path });
        }
        let store = RaftStore {
            partition: dir::open_partition(&path, Durability::Always)?,
            _lock: Arc::new(lock),
        };
        store.check()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.partition.path
    }

    /// Runs `operation` on tokio's blocking pool (see the module docs).
    pub async fn run<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&RaftStore) -> Result<T, RaftStoreError> + Send + 'static,
    ) -> Result<T, RaftStoreError> {
        let store = self.clone();
        match tokio::task::spawn_blocking(move || operation(&store)).await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(RaftStoreError::Stopped {
                path: self.path().to_owned(),
            }),
        }
    }

    pub fn vote(&self) -> Result<Option<Vote<NodeId>>, RaftStoreError> {
        self.get(VOTE)
    }

    pub fn save_vote(&self, vote: &Vote<NodeId>) -> Result<(), RaftStoreError> {
        self.put(VOTE, vote, RedbDurability::Immediate)
    }

    pub fn committed(&self) -> Result<Option<LogId<NodeId>>, RaftStoreError> {
        Ok(self.get(COMMITTED)?.flatten())
    }

    /// Unsynced: see the module docs.
    pub fn save_committed(&self, committed: Option<LogId<NodeId>>) -> Result<(), RaftStoreError> {
        self.put(COMMITTED, &committed, RedbDurability::None)
    }

    pub fn log_state(&self) -> Result<LogState<TypeConfig>, RaftStoreError> {
        let last_purged_log_id = self.get(PURGED)?;
        let last = self.read(|table| {
            let (first, last) = (entry_key(0), entry_key(u64::MAX));
            let mut entries = table.range(first.as_slice()..=last.as_slice())?;
            Ok(entries
                .next_back()
                .transpose()?
                .map(|(key, value)| (key.value().to_vec(), value.value().to_vec())))
        })?;
        let last_log_id = match last {
            Some((key, value)) => Some(self.decode::<Entry<TypeConfig>>(&key, &value)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    /// The entries from index `first` to `last`, both included, that the
    /// log holds.
    pub fn entries(&self, first: u64, last: u64) -> Result<Vec<Entry<TypeConfig>>, RaftStoreError> {
        let records: Vec<(Vec<u8>, Vec<u8>)> = self.read(|table| {
            let (first, last) = (entry_key(first), entry_key(last));
            table
                .range(first.as_slice()..=last.as_slice())?
                .map(|item| {
                    let (key, value) = item?;
                    Ok((key.value().to_vec(), value.value().to_vec()))
                })
                .collect()
        })?;
        records
            .iter()
            .map(|(key, value)| self.decode(key, value))
            .collect()
    }

    pub fn append(&self, entries: &[Entry<TypeConfig>]) -> Result<(), RaftStoreError> {
        let records = entries
            .iter()
            .map(|entry| {
                let key = entry_key(entry.log_id.index);
                let value = self.encode(&key, entry)?;
                Ok((key, value))
            })
            .collect::<Result<Vec<_>, RaftStoreError>>()?;
        self.commit(RedbDurability::Immediate, |table| {
            for (key, value) in &records {
                table.insert(key.as_slice(), value.as_slice())?;
            }
            Ok(())
        })
    }

    /// Drops the entries from index `first` on.
    pub fn truncate(&self, first: u64) -> Result<(), RaftStoreError> {
        self.remove_entries(first, u64::MAX, None)
    }

    /// Drops the entries up to `last` (included) and remembers it as the
    /// log's position, unless the log was purged further already.
    pub fn purge(&self, last: LogId<NodeId>) -> Result<(), RaftStoreError> {
        let purged: Option<LogId<NodeId>> = self.get(PURGED)?;
        let mark = match purged {
            Some(purged) if purged >= last => None,
            _ => Some(self.encode(PURGED, &last)?),
        };
        self.remove_entries(0, last.index, mark)
    }

    pub fn snapshot(&self) -> Result<Option<StoredSnapshot>, RaftStoreError> {
        self.get(SNAPSHOT)
    }

    pub fn save_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        table: &OwnershipTable,
    ) -> Result<(), RaftStoreError> {
        self.put(SNAPSHOT, &(meta, table), RedbDurability::Immediate)
    }

    /// Removes the entries from `first` to `last` (included) and writes
    /// the purge mark if given, in one synced commit.
    fn remove_entries(
        &self,
        first: u64,
        last: u64,
        purged: Option<Vec<u8>>,
    ) -> Result<(), RaftStoreError> {
        let (first, last) = (entry_key(first), entry_key(last));
        self.commit(RedbDurability::Immediate, |table| {
            table.retain_in(first.as_slice()..=last.as_slice(), |_, _| false)?;
            if let Some(purged) = &purged {
                table.insert(PURGED, purged.as_slice())?;
            }
            Ok(())
        })
    }

    /// Decodes every record, by its kind.
    fn check(&self) -> Result<(), RaftStoreError> {
        for (key, value) in dir::scan(&self.partition)? {
            match key.as_slice() {
                VOTE => self.decode::<Vote<NodeId>>(&key, &value).map(drop)?,
                COMMITTED => self
                    .decode::<Option<LogId<NodeId>>>(&key, &value)
                    .map(drop)?,
                PURGED => self.decode::<LogId<NodeId>>(&key, &value).map(drop)?,
                SNAPSHOT => self.decode::<StoredSnapshot>(&key, &value).map(drop)?,
                [ENTRY, index @ ..] if index.len() == 8 => {
                    let entry: Entry<TypeConfig> = self.decode(&key, &value)?;
                    if Some(entry.log_id.index) != record::be_u64(index) {
                        return Err(self.damaged(&key, "holds another index's entry"));
                    }
                }
                _ => return Err(self.damaged(&key, "unknown key")),
            }
        }
        Ok(())
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, RaftStoreError> {
        let value = self.read(|table| Ok(table.get(key)?.map(|value| value.value().to_vec())))?;
        value.map(|value| self.decode(key, &value)).transpose()
    }

    fn put<T: Serialize + ?Sized>(
        &self,
        key: &[u8],
        value: &T,
        durability: RedbDurability,
    ) -> Result<(), RaftStoreError> {
        let value = self.encode(key, value)?;
        self.commit(durability, |table| {
            table.insert(key, value.as_slice())?;
            Ok(())
        })
    }

    fn read<T>(
        &self,
        read: impl FnOnce(&redb::ReadOnlyTable<&[u8], &[u8]>) -> Result<T, redb::Error>,
    ) -> Result<T, RaftStoreError> {
        let path = self.path();
        let tx = self
            .partition
            .db
            .begin_read()
            .map_err(|e| dir::engine(path, e))?;
        let table = tx.open_table(RECORDS).map_err(|e| dir::engine(path, e))?;
        Ok(read(&table).map_err(|e| dir::engine(path, e))?)
    }

    fn commit(
        &self,
        durability: RedbDurability,
        write: impl FnOnce(&mut redb::Table<&[u8], &[u8]>) -> Result<(), redb::Error>,
    ) -> Result<(), RaftStoreError> {
        self.partition
            .commit_as(durability, write)
            .map_err(|e| dir::engine(self.path(), e).into())
    }

    fn encode<T: Serialize + ?Sized>(
        &self,
        key: &[u8],
        value: &T,
    ) -> Result<Vec<u8>, RaftStoreError> {
        // Only a type serde cannot express fails here, and ours all can;
        // an error is still an error, not a panic.
        let bytes = postcard::to_allocvec(value).map_err(|e| StoreError::Engine {
            path: self.path().to_owned(),
            detail: format!("cannot encode {}: {e}", record::describe_key(key)),
        })?;
        Ok(record::frame(key, &bytes))
    }

    fn decode<T: DeserializeOwned>(&self, key: &[u8], value: &[u8]) -> Result<T, RaftStoreError> {
        let bytes = record::verify(key, value).map_err(|e| self.damaged(key, &e.to_string()))?;
        match postcard::take_from_bytes(bytes) {
            Ok((decoded, [])) => Ok(decoded),
            Ok((_, rest)) => Err(self.damaged(key, &format!("{} bytes too many", rest.len()))),
            Err(e) => Err(self.damaged(key, &format!("does not decode: {e}"))),
        }
    }

    fn damaged(&self, key: &[u8], problem: &str) -> RaftStoreError {
        RaftStoreError::Damaged {
            path: self.path().to_owned(),
            key: record::describe_key(key),
            problem: problem.to_owned(),
        }
    }
}

fn entry_key(index: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(ENTRY);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::cluster::ownership::Command;
    use crate::testing::TempDir;

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(1, index),
            payload: EntryPayload::Normal(Command::Claim {
                client_id: format!("c{index}").into(),
                node: 1,
            }),
        }
    }

    fn open(dir: &TempDir) -> Result<RaftStore, RaftStoreError> {
        std::fs::create_dir_all(&dir.0).expect("temp dir is writable");
        RaftStore::open(&dir.0)
    }

    /// A kill -9 leaves the file as the last commits wrote it, never
    /// closed: what a copy taken while the store is open holds.
    #[test]
    fn what_a_kill_leaves_comes_back() {
        let dir = TempDir::new("ownership-kill");
        let store = open(&dir).expect("opens");
        let vote = Vote::new_committed(2, 1);
        store.save_vote(&vote).unwrap();
        store
            .append(&(1..=6).map(entry).collect::<Vec<_>>())
            .unwrap();
        // Unsynced, then carried to disk by the synced commits after it.
        store.save_committed(Some(log_id(1, 3))).unwrap();
        let mut table = OwnershipTable::new();
        table.claim("c1".into(), 1);
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(1, 2)),
            last_membership: Default::default(),
            snapshot_id: "1-2-1".into(),
        };
        store.save_snapshot(&meta, &table).unwrap();
        store.purge(log_id(1, 2)).unwrap();
        store.truncate(6).unwrap();
        // Unsynced, with nothing after it: may be lost.
        store.save_committed(Some(log_id(1, 5))).unwrap();

        let copy = TempDir::new("ownership-kill-copy");
        std::fs::create_dir_all(&copy.0).unwrap();
        std::fs::copy(dir.0.join(FILE_NAME), copy.0.join(FILE_NAME)).unwrap();
        let restarted = RaftStore::open(&copy.0).expect("opens after a kill");
        assert_eq!(restarted.vote().unwrap(), Some(vote));
        let state = restarted.log_state().unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
        assert_eq!(state.last_log_id, Some(log_id(1, 5)));
        assert_eq!(
            restarted.entries(0, u64::MAX).unwrap(),
            (3..=5).map(entry).collect::<Vec<_>>()
        );
        assert_eq!(restarted.snapshot().unwrap(), Some((meta, table)));
        let committed = restarted.committed().unwrap();
        assert!(
            (Some(log_id(1, 3))..=Some(log_id(1, 5))).contains(&committed),
            "{committed:?}"
        );
    }

    #[test]
    fn a_damaged_record_stops_the_open_naming_file_key_and_problem() {
        let vote = Vote::new_committed(2, 1);
        let good = record::frame(VOTE, &postcard::to_allocvec(&vote).unwrap());
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 0x40;
        let misplaced = record::frame(&entry_key(7), &postcard::to_allocvec(&entry(8)).unwrap());
        let cases: [(&[u8], Vec<u8>, &str, &str); 4] = [
            (VOTE, flipped, "v", "checksum mismatch"),
            (
                VOTE,
                record::frame(VOTE, &[0xff; 3]),
                "v",
                "does not decode",
            ),
            (
                &entry_key(7),
                misplaced,
                "l\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x07",
                "another index",
            ),
            (b"x", good, "x", "unknown key"),
        ];
        for (key, value, shown, problem) in cases {
            let dir = TempDir::new("ownership-damage");
            let store = open(&dir).expect("opens");
            store
                .partition
                .commit(|table| {
                    table.insert(key, value.as_slice())?;
                    Ok(())
                })
                .unwrap();
            drop(store);
            let error = open(&dir).err().expect("refused");
            assert!(matches!(error, RaftStoreError::Damaged { .. }), "{error:?}");
            let text = error.to_string();
            assert!(text.contains(FILE_NAME), "{text}");
            assert!(text.contains(&format!("at key {shown}:")), "{text}");
            assert!(text.contains(problem), "{text}");
        }
    }

    #[test]
    fn a_file_that_is_no_database_is_refused_by_name() {
        let dir = TempDir::new("ownership-garbage");
        std::fs::create_dir_all(&dir.0).unwrap();
        std::fs::write(dir.0.join(FILE_NAME), b"not a redb file\n".repeat(512)).unwrap();
        let error = RaftStore::open(&dir.0).err().expect("refused");
        assert!(error.to_string().contains(FILE_NAME), "{error}");
    }

    #[test]
    fn the_file_opens_once_until_every_clone_is_dropped() {
        let dir = TempDir::new("ownership-in-use");
        let store = open(&dir).expect("opens");
        let clone = store.clone();
        drop(store);
        let error = open(&dir).err().expect("in use");
        assert!(matches!(error, RaftStoreError::InUse { .. }), "{error:?}");
        drop(clone);
        open(&dir).expect("opens once let go");
    }
}
