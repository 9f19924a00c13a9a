//! The raft state machine: committed commands applied to the
//! [`OwnershipTable`], and snapshots of it for a node too far behind the
//! log (or one that joins late).
//!
//! The applied table is shared with [`super::Ownership`], which reads it
//! for `check` without going through raft. It sits behind a mutex: the
//! writer is raft's apply task, the readers are connects and takeovers,
//! both rare and both quick (one hash lookup, or one insert), and neither
//! is on the publish path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StoredMembership,
};

use super::raft::TypeConfig;
use super::table::{Answer, NodeId, OwnershipTable};

/// What this node has applied. Nothing here is durable in this slice:
/// the table is rebuilt from the (in-memory) log or a leader's snapshot.
#[derive(Debug, Default)]
pub struct Applied {
    pub table: OwnershipTable,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
}

/// The applied state, shared between the state machine and its readers.
#[derive(Debug, Clone, Default)]
pub struct SharedApplied(Arc<Mutex<Applied>>);

impl SharedApplied {
    /// Nothing under the lock can panic halfway through an update (the
    /// table's operations are a map insert or remove and a counter), so a
    /// poisoned lock still holds a consistent table.
    pub fn lock(&self) -> MutexGuard<'_, Applied> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Clones share the applied state and the current snapshot: openraft takes
/// one clone as the snapshot builder while the other goes on applying.
#[derive(Debug, Clone, Default)]
pub struct StateMachine {
    applied: SharedApplied,
    current: Arc<Mutex<Option<Snapshot<TypeConfig>>>>,
    /// Makes each snapshot id unique even when two are built at the same
    /// log position.
    built: Arc<AtomicU64>,
}

impl StateMachine {
    pub fn new(applied: SharedApplied) -> StateMachine {
        StateMachine {
            applied,
            ..StateMachine::default()
        }
    }

    fn current(&self) -> MutexGuard<'_, Option<Snapshot<TypeConfig>>> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (table, last_log_id, last_membership) = {
            let applied = self.applied.lock();
            (
                applied.table.clone(),
                applied.last_applied,
                applied.membership.clone(),
            )
        };
        let built = self.built.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match last_log_id {
            Some(id) => format!("{id}-{built}"),
            None => format!("none-{built}"),
        };
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                last_log_id,
                last_membership,
                snapshot_id,
            },
            snapshot: Box::new(table),
        };
        *self.current() = Some(snapshot.clone());
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let applied = self.applied.lock();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Answer>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.applied.lock();
        let mut answers = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let answer = match entry.payload {
                EntryPayload::Blank => Answer::Nothing,
                EntryPayload::Normal(command) => applied.table.apply(command),
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Answer::Nothing
                }
            };
            answers.push(answer);
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<OwnershipTable>, StorageError<NodeId>> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<OwnershipTable>,
    ) -> Result<(), StorageError<NodeId>> {
        {
            let mut applied = self.applied.lock();
            applied.table = (*snapshot).clone();
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
        }
        *self.current() = Some(Snapshot {
            meta: meta.clone(),
            snapshot,
        });
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.current().clone())
    }
}
