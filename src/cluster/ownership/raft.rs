//! openraft's types for the ownership table, and the raft log and vote
//! as openraft reads and writes them.
//!
//! Both are durable ([`super::store`]): a vote is on disk before
//! [`RaftLogStorage::save_vote`] returns, and entries are before
//! [`RaftLogStorage::append`] reports them flushed, which is when raft
//! counts this node towards a majority. A voter that restarts, even after
//! a kill -9, comes back under its own raft id with the vote it granted
//! and every entry it acknowledged, as raft's safety requires.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    BasicNode, Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError,
    TokioRuntime, Vote,
};

use sha2::{Digest, Sha256};

use super::store::RaftStore;
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

/// The raft id of the node named `node_name` (`cluster.node_id`): the
/// first 8 bytes of the name's SHA-256. Stable across restarts, so a node
/// that keeps its raft's file (a data dir) comes back as the member it
/// was; node names are unique in a live cluster, and 64 bits of a hash
/// make two names sharing an id a 1 in 10^19 chance per pair.
pub fn raft_id(node_name: &str) -> NodeId {
    first_8_bytes(&Sha256::digest(node_name.as_bytes()))
}

/// The raft id of a node without a data dir, in the process life
/// `incarnation`: its raft forgets everything when the process ends, so
/// each life must join as a new member. Reusing the old id would let a
/// voter that forgot its vote and its log count towards a majority, which
/// raft's safety does not survive.
pub fn ephemeral_raft_id(node_name: &str, incarnation: u64) -> NodeId {
    let mut hash = Sha256::new();
    hash.update(node_name.as_bytes());
    hash.update(b"\0");
    hash.update(incarnation.to_be_bytes());
    first_8_bytes(&hash.finalize())
}

/// Whether `id` may be the raft id of the node `node_name` in its life
/// `incarnation`: one of the two above.
pub fn is_raft_id_of(id: NodeId, node_name: &str, incarnation: u64) -> bool {
    id == raft_id(node_name) || id == ephemeral_raft_id(node_name, incarnation)
}

fn first_8_bytes(digest: &[u8]) -> NodeId {
    let mut first = [0; 8];
    first.copy_from_slice(&digest[..8]);
    NodeId::from_be_bytes(first)
}

/// The raft log and vote in the ownership raft's file. Clones share the
/// file: openraft reads the log through a clone
/// ([`RaftLogStorage::LogReader`]) while it writes through the original.
#[derive(Clone)]
pub struct LogStore {
    store: RaftStore,
}

impl LogStore {
    pub fn new(store: RaftStore) -> LogStore {
        LogStore { store }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let Some((first, last)) = inclusive(&range) else {
            return Ok(Vec::new());
        };
        let entries = self.store.run(move |store| store.entries(first, last));
        Ok(entries.await.map_err(|e| StorageIOError::read_logs(&e))?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let state = self.store.run(|store| store.log_state());
        Ok(state.await.map_err(|e| StorageIOError::read_logs(&e))?)
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        let saved = self.store.run(move |store| store.save_vote(&vote));
        Ok(saved.await.map_err(|e| StorageIOError::write_vote(&e))?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        let vote = self.store.run(|store| store.vote());
        Ok(vote.await.map_err(|e| StorageIOError::read_vote(&e))?)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let saved = self.store.run(move |store| store.save_committed(committed));
        Ok(saved.await.map_err(|e| StorageIOError::write(&e))?)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let committed = self.store.run(|store| store.committed());
        Ok(committed.await.map_err(|e| StorageIOError::read(&e))?)
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
        let entries: Vec<_> = entries.into_iter().collect();
        // Synced before the callback: raft counts this node's copy of the
        // entries from then on.
        match self.store.run(move |store| store.append(&entries)).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.log_io_completed(Err(io::Error::other(error.to_string())));
                Err(StorageIOError::write_logs(&error).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // Entries from `log_id` on were never committed (a new leader's log
        // disagrees with them): drop them.
        let truncated = self.store.run(move |store| store.truncate(log_id.index));
        Ok(truncated
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let purged = self.store.run(move |store| store.purge(log_id));
        Ok(purged.await.map_err(|e| StorageIOError::write_logs(&e))?)
    }
}

/// `range`'s first and last index, if it holds any.
fn inclusive(range: &impl RangeBounds<u64>) -> Option<(u64, u64)> {
    let first = match range.start_bound() {
        Bound::Included(&first) => first,
        Bound::Excluded(&before) => before.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let last = match range.end_bound() {
        Bound::Included(&last) => last,
        Bound::Excluded(&after) => after.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (first <= last).then_some((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_ids_are_stable_and_apart() {
        // The first 8 bytes of SHA-256("n1"), fixed: a change here would
        // make every node with a data dir a stranger to its own raft.
        assert_eq!(raft_id("n1"), 0x676b_8bb8_4ce7_267d);
        assert_ne!(raft_id("n1"), raft_id("n2"));
        assert_ne!(ephemeral_raft_id("n1", 5), raft_id("n1"));
        assert_ne!(ephemeral_raft_id("n1", 5), ephemeral_raft_id("n1", 6));
        assert!(is_raft_id_of(raft_id("n1"), "n1", 5));
        assert!(is_raft_id_of(ephemeral_raft_id("n1", 5), "n1", 5));
        assert!(!is_raft_id_of(ephemeral_raft_id("n1", 6), "n1", 5));
        assert!(!is_raft_id_of(raft_id("n2"), "n1", 5));
    }
}
