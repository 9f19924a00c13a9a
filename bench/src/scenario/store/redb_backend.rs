//! redb: a copy-on-write B-tree in one file. A commit writes the changed
//! pages and flips the commit slot; a durable one fsyncs the file. Pages a
//! commit frees are reused only once no reader, and (for pages a durable
//! commit wrote) no later non-durable commit's possible rollback, needs them.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Backend, Op};
use crate::cli::Durability;

const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");

/// One shard's partition: a database file of its own with one table.
pub struct RedbStore {
    db: Database,
    durability: Durability,
}

impl RedbStore {
    /// The file the store keeps in `dir`.
    pub fn file(dir: &Path) -> PathBuf {
        dir.join("sessions.redb")
    }

    pub fn open(dir: &Path, durability: Durability) -> Result<Self, String> {
        let path = Self::file(dir);
        let db = Database::create(&path)
            .map_err(|e| format!("redb: cannot open {}: {e}", path.display()))?;
        // Create the table once, so that a scan of an empty store finds it.
        let tx = db.begin_write().map_err(fail("begin"))?;
        tx.open_table(SESSIONS).map_err(fail("open table"))?;
        tx.commit().map_err(fail("commit"))?;
        Ok(RedbStore { db, durability })
    }
}

impl Backend for RedbStore {
    fn commit(&mut self, ops: &[Op], sync: bool) -> Result<(), String> {
        let mut tx = self.db.begin_write().map_err(fail("begin"))?;
        let durability = if sync || self.durability == Durability::Always {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        tx.set_durability(durability)
            .map_err(fail("set durability"))?;
        {
            let mut table = tx.open_table(SESSIONS).map_err(fail("open table"))?;
            for op in ops {
                match op {
                    Op::Put(key, value) => {
                        table
                            .insert(key.as_slice(), value.as_slice())
                            .map_err(fail("insert"))?;
                    }
                    Op::Delete(key) => {
                        table.remove(key.as_slice()).map_err(fail("remove"))?;
                    }
                }
            }
        }
        tx.commit().map_err(fail("commit"))
    }

    fn scan(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), String> {
        let tx = self.db.begin_read().map_err(fail("begin read"))?;
        let table = tx.open_table(SESSIONS).map_err(fail("open table"))?;
        for entry in table.iter().map_err(fail("scan"))? {
            let (key, value) = entry.map_err(fail("scan"))?;
            visit(key.value(), value.value());
        }
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<(), String> {
        // Makes a pending non-durable commit durable and records the
        // allocator state, so that the next open needs no repair.
        self.db.close().map_err(fail("close"))
    }
}

/// Maps one of redb's per-call error types to the scenario's error.
fn fail<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> String {
    move |e| format!("redb: {what}: {e}")
}
