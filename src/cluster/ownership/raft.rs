//! openraft's types for the ownership table, and the raft log.
//!
//! The log lives in memory in this slice: a node that restarts comes back
//! with no log and no vote. Raft's safety rests on a voter remembering
//! both, so until the log is on disk a restarted node must rejoin as a
//! new member (a new raft id), never under its old one. Putting the log
//! and vote on disk (the store's redb, fsynced before `append` reports
//! the entries flushed and before `save_vote` returns) is the next step
//! before this runs in a broker.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    BasicNode, Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, TokioRuntime,
    Vote,
};

use super::table::{Answer, Command, NodeId, OwnershipTable};

openraft::declare_raft_types!(
    /// The ownership raft's types. `Node` names a member for the
    /// transport: its `addr` carries the member's cluster node name
    /// (`cluster.node_id`), which the cluster runtime already maps to a
    /// link. A snapshot is the table itself: whoever ships it encodes it.
    pub TypeConfig:
        D = Command,
        R = Answer,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = OwnershipTable,
        AsyncRuntime = TokioRuntime,
);

/// The raft log and vote, in memory (see the module docs for what that
/// costs). Clones share one log: openraft reads it through a clone
/// ([`RaftLogStorage::LogReader`]) while it writes through the original.
#[derive(Debug, Clone, Default)]
pub struct LogStore {
    log: Arc<Mutex<Log>>,
}

#[derive(Debug, Default)]
struct Log {
    vote: Option<Vote<NodeId>>,
    /// Raft may ask us to keep it so a restart re-applies less; kept only
    /// because openraft hands it over.
    committed: Option<LogId<NodeId>>,
    /// The last entry dropped because a snapshot covers it: the log's
    /// position even when no entry is left.
    last_purged: Option<LogId<NodeId>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
}

impl LogStore {
    /// The lock is held for map operations only, never across an await,
    /// and nothing inside can panic halfway through an update: a poisoned
    /// lock still holds a consistent log.
    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        // `BTreeMap::range` panics on an inverted range; openraft should
        // never ask for one, and an empty answer is what it would mean.
        if !is_ordered(&range) {
            return Ok(Vec::new());
        }
        let log = self.lock();
        Ok(log
            .entries
            .range(range)
            .map(|(_, entry)| entry.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let log = self.lock();
        let last = log
            .entries
            .last_key_value()
            .map(|(_, entry)| entry.log_id)
            .or(log.last_purged);
        Ok(LogState {
            last_purged_log_id: log.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut log = self.lock();
            for entry in entries {
                log.entries.insert(entry.log_id.index, entry);
            }
        }
        // "Flushed" means no more than "readable" here: the log is in
        // memory (module docs).
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // Entries from `log_id` on were never committed (a new leader's log
        // disagrees with them): drop them.
        self.lock().entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut log = self.lock();
        let kept = log.entries.split_off(&log_id.index.saturating_add(1));
        log.entries = kept;
        if log.last_purged < Some(log_id) {
            log.last_purged = Some(log_id);
        }
        Ok(())
    }
}

/// Whether `range` is one `BTreeMap::range` accepts.
fn is_ordered(range: &impl RangeBounds<u64>) -> bool {
    match (range.start_bound(), range.end_bound()) {
        (Bound::Excluded(start), Bound::Excluded(end)) => start < end,
        (
            Bound::Included(start) | Bound::Excluded(start),
            Bound::Included(end) | Bound::Excluded(end),
        ) => start <= end,
        _ => true,
    }
}
