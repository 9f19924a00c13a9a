//! fjall: an LSM tree. A commit appends the batch to the journal (a
//! preallocated file, so `fdatasync` has no file size to record) and
//! inserts it into the memtable; background threads flush memtables to
//! sorted segments and compact them.

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::{Backend, Op};
use crate::cli::{Durability, FjallSync};

/// One shard's partition: a database of its own with one keyspace.
pub struct FjallStore {
    db: Database,
    keyspace: Keyspace,
    durability: Durability,
    /// What a durable commit asks of the journal.
    sync: PersistMode,
}

impl FjallStore {
    pub fn open(path: &Path, durability: Durability, sync: FjallSync) -> Result<Self, String> {
        let fail = |e: fjall::Error| format!("fjall: cannot open {}: {e}", path.display());
        // Every batch says for itself how far it persists (see `commit`).
        let db = Database::builder(path)
            .manual_journal_persist(true)
            .open()
            .map_err(fail)?;
        let keyspace = db
            .keyspace("sessions", KeyspaceCreateOptions::default)
            .map_err(fail)?;
        let sync = match sync {
            FjallSync::All => PersistMode::SyncAll,
            FjallSync::Data => PersistMode::SyncData,
        };
        Ok(FjallStore {
            db,
            keyspace,
            durability,
            sync,
        })
    }
}

impl Backend for FjallStore {
    fn commit(&mut self, ops: &[Op], sync: bool) -> Result<(), String> {
        let persist = match (sync, self.durability) {
            (true, _) => Some(self.sync),
            // Between the fsyncs, hand the journal to the kernel each
            // batch, so that a crash of the process alone loses nothing.
            (false, Durability::Batch) => Some(PersistMode::Buffer),
            // The journal stays in fjall's buffer until it fills.
            (false, _) => None,
        };
        let mut batch = self.db.batch().durability(persist);
        for op in ops {
            match op {
                Op::Put(key, value) => {
                    batch.insert(&self.keyspace, key.as_slice(), value.as_slice())
                }
                Op::Delete(key) => batch.remove(&self.keyspace, key.as_slice()),
            }
        }
        batch.commit().map_err(|e| format!("fjall: commit: {e}"))
    }

    fn scan(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), String> {
        for guard in self.keyspace.iter() {
            let (key, value) = guard
                .into_inner()
                .map_err(|e| format!("fjall: scan: {e}"))?;
            visit(&key, &value);
        }
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<(), String> {
        // Dropping the database persists the journal with SyncAll and
        // stops the background threads.
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(|e| format!("fjall: close: {e}"))
    }
}
