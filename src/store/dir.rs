//! The data dir as a database: its format version, its lock, and the set
//! of partitions, one per shard.
//!
//! `CURRENT` names the partition set in use (`set-G-N`: generation G, N
//! partitions). When the broker starts with another number of shards, the
//! records are rehomed into a new set (sessions by client id, retained
//! messages by topic, as the shards place them), the new set is synced,
//! and only then does `CURRENT` switch to it, by an atomic rename; a crash
//! in between leaves the old set in use and the half-written new one is
//! removed on the next start. `cluster.redb` beside the sets holds what
//! the cluster owes its peers ([`super::outbox`]), `ownership.redb` the
//! ownership raft's vote, log and snapshot
//! ([`crate::cluster::ownership::store`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition};
use rustc_hash::FxHashMap;
use tracing::{error, info};

use super::log;
use super::record::{self, EntryRecord};
use super::writer::WriterThread;
use super::{Durability, StoreSettings};
use crate::shard::{group_owner, home_shard};

/// The layout this build writes and reads. Raised whenever a record's
/// archived form or the key scheme changes incompatibly, `ownership.redb`'s
/// included.
pub const FORMAT_VERSION: u32 = 2;
const FORMAT_NAME: &str = "ringmq-data";
/// Every record of a partition, in one ordered table (see [`record`]).
pub const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// redb's page cache per partition; its default (1 GiB) is meant for one
/// database per process, and a shard's working set is its recent writes.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data dir {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "data dir {} is in use by another broker (its LOCK file is held); stop that broker or choose another --data-dir",
        path.display()
    )]
    Locked { path: PathBuf },
    #[error(
        "data dir {} has format {found:?}, this ringmq reads `{FORMAT_NAME} {FORMAT_VERSION}`; start the ringmq version that wrote it, or choose another --data-dir",
        path.display()
    )]
    Format { path: PathBuf, found: String },
    #[error("data dir partition {}: {detail}", path.display())]
    Engine { path: PathBuf, detail: String },
    #[error(
        "damaged record in {} at key {key}: {problem}; start with --repair to skip damaged records (each is logged), or restore the dir from a backup",
        path.display()
    )]
    Damaged {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

/// One shard's partition: a redb database of its own, in one file.
#[derive(Clone)]
pub struct Partition {
    pub path: PathBuf,
    pub db: Arc<Database>,
    /// The same file, for the writer's own syncs (`durability = batch`).
    pub file: Arc<PartitionFile>,
    /// Its writer thread once started, for [`DataDir`] to close.
    pub writer: Arc<Mutex<Option<WriterThread>>>,
}

/// The partition's file as redb's storage. redb syncs at every durable
/// commit; the sync goes through only if `sync_each_commit`: always for a
/// shard's partition (written at checkpoints only), and for the cluster's
/// outboxes with `durability = always`, so that there `batch` and `none`
/// still write every commit into the OS's buffers (a killed broker loses
/// nothing) and sync on their own schedule.
#[derive(Debug)]
pub struct PartitionFile {
    file: File,
    sync_each_commit: bool,
}

#[derive(Debug)]
struct Backend(Arc<PartitionFile>);

impl PartitionFile {
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl StorageBackend for Backend {
    fn len(&self) -> Result<u64, redb::BackendError> {
        Ok(self.0.file.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), redb::BackendError> {
        Ok(self.0.file.read_exact_at(out, offset)?)
    }

    fn set_len(&self, len: u64) -> Result<(), redb::BackendError> {
        Ok(self.0.file.set_len(len)?)
    }

    fn sync_data(&self) -> Result<(), redb::BackendError> {
        if self.0.sync_each_commit {
            self.0.file.sync_data()?;
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), redb::BackendError> {
        Ok(self.0.file.write_all_at(data, offset)?)
    }
}

/// The open data dir: held locked until dropped. Dropped after the shards
/// have stopped, it closes their writers first (each commits what its
/// shard sent last, and syncs), then the databases, so that the next
/// start finds them closed cleanly and need not check them whole as after
/// a crash.
pub struct DataDir {
    pub partitions: Vec<Partition>,
    /// The cluster's outboxes (`cluster.redb`), outside the partition
    /// sets: the shard count does not change whom it holds.
    pub cluster: Partition,
    _lock: File,
}

impl DataDir {
    /// Opens (or creates) the data dir for `shards` shards, rehoming the
    /// records first if they were written by a broker with another number.
    pub fn open(settings: &StoreSettings, shards: usize) -> Result<DataDir, StoreError> {
        let dir = &settings.dir;
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let lock = lock(dir)?;
        check_format(dir)?;
        let current = read_current(dir)?;
        let set = match current {
            Some((generation, count)) if count == shards => set_name(generation, count),
            Some((generation, count)) => {
                let old = open_set(
                    dir,
                    &set_name(generation, count),
                    count,
                    Some(settings.repair),
                )?;
                let name = set_name(generation + 1, shards);
                rehome(dir, &old, &name, shards, settings.repair)?;
                drop(old);
                switch_current(dir, &name)?;
                let stale = dir.join(set_name(generation, count));
                fs::remove_dir_all(&stale).map_err(io_at(&stale))?;
                info!(
                    from = count,
                    to = shards,
                    "data dir rehomed to the new shard count"
                );
                name
            }
            None => {
                let name = set_name(1, shards);
                // A set left by a start that crashed before naming it.
                let partial = dir.join(&name);
                if partial.exists() {
                    fs::remove_dir_all(&partial).map_err(io_at(&partial))?;
                }
                open_set(dir, &name, shards, None)?;
                switch_current(dir, &name)?;
                name
            }
        };
        remove_other_sets(dir, &set)?;
        let partitions = open_set(dir, &set, shards, None)?;
        let cluster = open_partition(&dir.join("cluster.redb"), settings.durability)?;
        Ok(DataDir {
            partitions,
            cluster,
            _lock: lock,
        })
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        for partition in &self.partitions {
            let writer = partition
                .writer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            if let Some(writer) = writer {
                writer.close();
            }
        }
    }
}

fn set_name(generation: u64, count: usize) -> String {
    format!("set-{generation}-{count}")
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

pub fn engine(path: &Path, error: impl Into<redb::Error>) -> StoreError {
    StoreError::Engine {
        path: path.to_owned(),
        detail: error.into().to_string(),
    }
}

/// `flock` rather than the file's existence: a lock held by a process that
/// died with `kill -9` is released by the kernel, so no stale lock ever
/// has to be removed by hand.
fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("LOCK");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_at(&path))?;
    if !try_lock(&file) {
        return Err(StoreError::Locked {
            path: dir.to_owned(),
        });
    }
    // For the operator looking at who holds it; the lock is what counts.
    let _ = file.set_len(0);
    let _ = writeln!(file, "{}", std::process::id());
    Ok(file)
}

/// Takes `flock`'s exclusive lock on `file` without waiting; false if
/// another open of the file holds it, in this process or another. Held
/// until `file` is closed.
pub fn try_lock(file: &File) -> bool {
    // SAFETY: flock on a descriptor `file` keeps open; no memory involved.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

fn check_format(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join("FORMAT");
    let expected = format!("{FORMAT_NAME} {FORMAT_VERSION}");
    match fs::read_to_string(&path) {
        Ok(text) if text.trim() == expected => Ok(()),
        Ok(text) => Err(StoreError::Format {
            path: dir.to_owned(),
            found: text.trim().to_owned(),
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let has_data = fs::read_dir(dir)
                .map_err(io_at(dir))?
                .flatten()
                .any(|entry| entry.file_name() != "LOCK");
            if has_data {
                return Err(StoreError::Format {
                    path: dir.to_owned(),
                    found: "no FORMAT file, but other files".into(),
                });
            }
            write_synced(dir, "FORMAT", &expected)
        }
        Err(error) => Err(StoreError::Io {
            path,
            source: error,
        }),
    }
}

/// Generation and partition count of the set `CURRENT` names, if any.
fn read_current(dir: &Path) -> Result<Option<(u64, usize)>, StoreError> {
    let path = dir.join("CURRENT");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::Io { path, source }),
    };
    let name = text.trim();
    let parsed = name.strip_prefix("set-").and_then(|rest| {
        let (generation, count) = rest.split_once('-')?;
        Some((generation.parse().ok()?, count.parse().ok()?))
    });
    match parsed {
        Some((generation, count)) if count > 0 => Ok(Some((generation, count))),
        _ => Err(StoreError::Format {
            path: dir.to_owned(),
            found: format!("CURRENT names {name:?}"),
        }),
    }
}

fn switch_current(dir: &Path, name: &str) -> Result<(), StoreError> {
    write_synced(dir, "CURRENT", name)
}

/// Writes `name` through a temporary file, syncs it, renames it into place
/// and syncs the directory: the file is either the old one or the new one.
fn write_synced(dir: &Path, name: &str, text: &str) -> Result<(), StoreError> {
    let temp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    let mut file = File::create(&temp).map_err(io_at(&temp))?;
    writeln!(file, "{text}").map_err(io_at(&temp))?;
    file.sync_all().map_err(io_at(&temp))?;
    fs::rename(&temp, &target).map_err(io_at(&target))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

fn remove_other_sets(dir: &Path, keep: &str) -> Result<(), StoreError> {
    for entry in fs::read_dir(dir).map_err(io_at(dir))?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("set-") && name != keep {
            let path = entry.path();
            info!(set = %name, "removing a partition set no longer in use");
            fs::remove_dir_all(&path).map_err(io_at(&path))?;
        }
    }
    Ok(())
}

/// Opens the partitions of set `name`, with `replay_with_repair`, each
/// with the log a crash left replayed into it first (else the restore
/// reads through the log). Their commits (checkpoints, see
/// [`super::log`]) are always synced: the log they cover is deleted after
/// them.
fn open_set(
    dir: &Path,
    name: &str,
    count: usize,
    replay_with_repair: Option<bool>,
) -> Result<Vec<Partition>, StoreError> {
    let set = dir.join(name);
    fs::create_dir_all(&set).map_err(io_at(&set))?;
    // In parallel: the partitions have nothing in common.
    std::thread::scope(|scope| {
        let openers: Vec<_> = (0..count)
            .map(|shard| {
                let path = set.join(format!("shard-{shard}.redb"));
                scope.spawn(move || {
                    let partition = open_partition(&path, Durability::Always)?;
                    if let Some(repair) = replay_with_repair {
                        log::replay(&partition, &log::unapplied(&path, repair)?)?;
                    }
                    Ok(partition)
                })
            })
            .collect();
        openers
            .into_iter()
            .map(|opener| {
                opener
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// Opens (or creates) one redb file as a partition. Nothing stops a
/// second open of the same file: the data dir's lock keeps other brokers
/// out, and each file has one opener in this one.
pub fn open_partition(path: &Path, durability: Durability) -> Result<Partition, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_at(path))?;
    let file = Arc::new(PartitionFile {
        file,
        sync_each_commit: durability == Durability::Always,
    });
    let at = path.to_owned();
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        // redb reports each step of its recovery after a crash; 0.3 only
        // when the last commit failed its page checksums, just before it
        // falls back to the commit before that (redb 5, `do_repair`).
        // After a kill -9 a commit is never torn, so this is damage (or a
        // power cut), and acknowledged messages may be gone with it: the
        // operator must hear of it.
        .set_repair_callback(move |session| {
            if (0.2..0.4).contains(&session.progress()) {
                error!(
                    partition = %at.display(),
                    "the last commit failed its checksums (damaged, or torn by a power cut): rolled back to the commit before it, losing what it held"
                );
            }
        })
        .create_with_backend(Backend(file.clone()))
        .map_err(|e| engine(path, e))?;
    let partition = Partition {
        path: path.to_owned(),
        db: Arc::new(db),
        file,
        writer: Arc::default(),
    };
    // The table exists from the start, so readers never meet its absence.
    partition.commit(|_| Ok(())).map_err(|e| engine(path, e))?;
    Ok(partition)
}

impl Partition {
    /// Runs `write` on the partition's table in one transaction and
    /// commits it (synced if the partition syncs commits, see
    /// [`PartitionFile`]). Every commit records redb's allocator state: the
    /// last commit before a crash decides whether the next open walks the
    /// whole file (1.3 s for 2 million records) or not.
    pub fn commit(
        &self,
        write: impl FnOnce(&mut redb::Table<&[u8], &[u8]>) -> Result<(), redb::Error>,
    ) -> Result<(), redb::Error> {
        self.commit_as(redb::Durability::Immediate, write)
    }

    /// [`Partition::commit`] at `durability`: with `None`, the commit is
    /// readable at once but reaches the disk only with the next
    /// `Immediate` one; a crash before that loses it.
    pub fn commit_as(
        &self,
        durability: redb::Durability,
        write: impl FnOnce(&mut redb::Table<&[u8], &[u8]>) -> Result<(), redb::Error>,
    ) -> Result<(), redb::Error> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(durability)?;
        tx.set_quick_repair(true);
        {
            let mut table = tx.open_table(RECORDS)?;
            write(&mut table)?;
        }
        Ok(tx.commit()?)
    }
}

/// A stored key and its value.
pub type Record = (Vec<u8>, Vec<u8>);

/// Every key and value of a partition, in key order.
pub fn scan(partition: &Partition) -> Result<Vec<Record>, StoreError> {
    let at = |e: redb::Error| engine(&partition.path, e);
    let tx = partition.db.begin_read().map_err(|e| at(e.into()))?;
    let table = tx.open_table(RECORDS).map_err(|e| at(e.into()))?;
    let mut records = Vec::new();
    for item in table.iter().map_err(|e| at(e.into()))? {
        let (key, value) = item.map_err(|e| at(e.into()))?;
        records.push((key.value().to_vec(), value.value().to_vec()));
    }
    Ok(records)
}

/// Copies every record of `old` into a new set of `shards` partitions,
/// each to the partition its shard now owns, message ids renumbered per
/// partition.
fn rehome(
    dir: &Path,
    old: &[Partition],
    name: &str,
    shards: usize,
    repair: bool,
) -> Result<(), StoreError> {
    let target = dir.join(name);
    if target.exists() {
        fs::remove_dir_all(&target).map_err(io_at(&target))?;
    }
    let new = open_set(dir, name, shards, None)?;
    let mut next_id = vec![0u64; shards];
    for partition in old {
        // Message ids are per partition: the same id means different
        // messages in two old partitions, so each is renumbered as the
        // first entry referring to it lands in a new one.
        let mut renumbered: FxHashMap<(u64, usize), u64> = FxHashMap::default();
        let mut messages: FxHashMap<u64, Vec<u8>> = FxHashMap::default();
        let mut batches: Vec<Vec<Record>> = vec![Vec::new(); shards];
        for (key, value) in scan(partition)? {
            let home = match key.first() {
                Some(&record::MESSAGE) => {
                    if let Some(id) = key.get(1..).and_then(record::be_u64) {
                        messages.insert(id, value);
                    }
                    continue;
                }
                Some(&record::RETAINED) => {
                    let topic = String::from_utf8_lossy(&key[1..]);
                    group_owner(&topic, shards)
                }
                _ => match record::split_client_key(&key) {
                    Some((client_id, _)) => home_shard(client_id, shards),
                    None => {
                        skip_or_fail(partition, &key, "unknown key", repair)?;
                        continue;
                    }
                },
            };
            let value = if key.first() == Some(&record::ENTRY) {
                let entry = match record::unframe(&key, &value)
                    .and_then(|archive| record::decode::<EntryRecord>(&archive))
                {
                    Ok(entry) => entry,
                    Err(problem) => {
                        skip_or_fail(partition, &key, &problem.to_string(), repair)?;
                        continue;
                    }
                };
                let Some(message) = messages.get(&entry.message) else {
                    skip_or_fail(partition, &key, "refers to a missing message", repair)?;
                    continue;
                };
                let id = *renumbered.entry((entry.message, home)).or_insert_with(|| {
                    next_id[home] += 1;
                    let id = next_id[home];
                    let message_key = record::message_key(id);
                    // Re-framed: the checksum covers the key, which changed.
                    let archive = record::unframe(&record::message_key(entry.message), message)
                        .map(|a| a.to_vec())
                        .unwrap_or_default();
                    let value = record::frame(&message_key, &archive);
                    batches[home].push((message_key, value));
                    id
                });
                record::encode(
                    &key,
                    &EntryRecord {
                        message: id,
                        ..entry
                    },
                )
            } else {
                value
            };
            batches[home].push((key, value));
        }
        for (records, partition) in batches.into_iter().zip(&new) {
            // Synced: the partition opened with `Always`.
            partition
                .commit(|table| {
                    records.iter().try_for_each(|(key, value)| {
                        table.insert(key.as_slice(), value.as_slice())?;
                        Ok(())
                    })
                })
                .map_err(|e| engine(&partition.path, e))?;
        }
    }
    Ok(())
}

/// A damaged record: an error, or with `--repair` a log line and a skip.
pub fn skip_or_fail(
    partition: &Partition,
    key: &[u8],
    problem: &str,
    repair: bool,
) -> Result<(), StoreError> {
    let key = record::describe_key(key);
    if repair {
        tracing::error!(partition = %partition.path.display(), %key, problem, "damaged record skipped (--repair)");
        Ok(())
    } else {
        Err(StoreError::Damaged {
            path: partition.path.clone(),
            key,
            problem: problem.to_owned(),
        })
    }
}
