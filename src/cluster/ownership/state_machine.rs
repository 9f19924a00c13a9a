//! The raft state machine: committed commands applied to the
//! [`OwnershipTable`], and snapshots of it for a node too far behind the
//! log (or one that joins late).
//!
//! The applied table is shared with [`super::Ownership`], which reads it
//! for `check` without going through raft. It sits behind a mutex: the
//! writer is raft's apply task, the readers are connects and takeovers,
//! both rare and both quick (one hash lookup, or one insert), and neither
//! is on the publish path.
//!
//! The table itself is not written as it is applied: it is the log's
//! sum, and the log is on disk. What is written is each snapshot, built
//! or installed ([`super::store`]), synced before raft may purge the log
//! it covers. A restart ([`StateMachine::open`]) starts from that
//! snapshot and reports it as applied; openraft then re-applies the
//! committed log after it, so the table is back before the node hears
//! from the leader.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};

use super::raft::TypeConfig;
use super::store::{RaftStore, RaftStoreError};
use super::table::{Answer, Command, NodeId, OwnershipTable};

/// What this node has applied.
#[derive(Debug, Default)]
pub struct Applied {
    pub table: OwnershipTable,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
}

impl Applied {
    /// The state `meta`'s snapshot holds.
    fn reset(&mut self, meta: &SnapshotMeta<NodeId, BasicNode>, table: OwnershipTable) {
        self.table = table;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
    }
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

/// Clones share the applied state, the current snapshot and the file:
/// openraft takes one clone as the snapshot builder while the other goes
/// on applying.
#[derive(Clone)]
pub struct StateMachine {
    applied: SharedApplied,
    /// Locked while a snapshot is written, so that the one on disk and
    /// this one are the same.
    current: Arc<tokio::sync::Mutex<Option<Snapshot<TypeConfig>>>>,
    /// Makes each snapshot id unique even when two are built at the same
    /// log position.
    built: Arc<AtomicU64>,
    store: RaftStore,
}

impl StateMachine {
    /// The state machine as `store` left it: the last snapshot's table,
    /// applied up to what the snapshot covers (an empty table before the
    /// first snapshot). `applied` is filled in accordingly.
    pub async fn open(
        store: RaftStore,
        applied: SharedApplied,
    ) -> Result<StateMachine, RaftStoreError> {
        let stored = store.run(|store| store.snapshot()).await?;
        let current = stored.map(|(meta, table)| {
            applied.lock().reset(&meta, table.clone());
            Snapshot {
                meta,
                snapshot: Box::new(table),
            }
        });
        Ok(StateMachine {
            applied,
            current: Arc::new(tokio::sync::Mutex::new(current)),
            built: Arc::default(),
            store,
        })
    }

    /// Writes `snapshot`, synced, and makes it the current one, unless
    /// the current one is newer: openraft builds snapshots in a task of
    /// their own, so a build begun before an installed snapshot can end
    /// after it, and the installed one is what the purged log left.
    async fn save(
        &self,
        snapshot: Snapshot<TypeConfig>,
    ) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let mut current = self.current.lock().await;
        let last_log_id = snapshot.meta.last_log_id;
        if current
            .as_ref()
            .is_some_and(|current| current.meta.last_log_id > last_log_id)
        {
            return Ok(snapshot);
        }
        let signature = snapshot.meta.signature();
        let saved = self.store.run(move |store| {
            store.save_snapshot(&snapshot.meta, &snapshot.snapshot)?;
            Ok(snapshot)
        });
        let snapshot = saved
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(signature), &e))?;
        *current = Some(snapshot.clone());
        Ok(snapshot)
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
        self.save(snapshot).await
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
                EntryPayload::Normal(Command::Barrier { .. }) => Answer::Barrier {
                    index: entry.log_id.index,
                },
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
        // On disk before it counts as applied: raft then purges the log it
        // replaces.
        let snapshot = Snapshot {
            meta: meta.clone(),
            snapshot,
        };
        let saved = self.save(snapshot).await?;
        self.applied.lock().reset(meta, *saved.snapshot);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.current.lock().await.clone())
    }
}
