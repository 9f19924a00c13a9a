//! A shard's side of its partition ([`StoreHandle`]: the changes of the
//! current turn, the messages it has written) and the writer thread that
//! commits them.
//!
//! The shard numbers each handful of changes it hands over (an epoch);
//! the writer appends everything waiting to the partition's log as one
//! batch (group commit: while one sync runs, the next turns' changes
//! gather), and reports the last epoch it committed, or that it could
//! not. The report travels through the shard's inbox like any other
//! message ([`ShardMsg::Stored`]). What the log holds reaches redb at the
//! next checkpoint (`store::checkpoint`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use bytestring::ByteString;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use redb::ReadableTable;
use rustc_hash::FxHashMap;
use tracing::{error, info};

use super::Durability;
use super::checkpoint::{Checkpoint, Checkpointer, prepares_segments};
use super::coalesce::Window;
use super::dir::Partition;
use super::log::{Log, Mutation, Unapplied};
use super::record::{self, Encoder, EntryRecord, FlightRecord, SessionRecord, StoredMessage};
use super::restore::unix_ms;
use crate::cluster::frame::message_to_wire;
use crate::message::Message;
use crate::shard::ShardId;
use crate::shard::mesh::{MeshHandle, ShardMsg};

/// With `durability = none`, how many epochs (turns with changes) the
/// writer may be behind before acknowledgements wait for it. A kill loop
/// with an unbounded backlog lost 151,576 of 170,992 acknowledged messages
/// (RELIABILITY.md).
const NONE_BACKLOG_EPOCHS: u64 = 64;

/// Free space a partition's file system must keep: below it, writes are
/// refused (and their publishers told) rather than attempted, so that a
/// commit never fails half-way through growing the file, and the broker
/// recovers by itself when space returns.
pub(super) const RESERVE_BYTES: u64 = 16 * 1024 * 1024;

/// How often the log is applied to redb. Longer lets more records be
/// born and removed between checkpoints (never written to the B-tree) and
/// makes a restart after a crash replay more; see PERF.md, "Durable
/// sessions".
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);
/// A log segment this large is checkpointed at once, which bounds the
/// replay after a crash under a heavy load of messages still owed.
pub const CHECKPOINT_BYTES: u64 = 32 * 1024 * 1024;
/// How often the writer tries again to log changes it could not (a full
/// disk), when nothing new comes.
const UNWRITTEN_RETRY: Duration = Duration::from_millis(100);
/// How long the writer waits before looking again when a checkpoint is
/// due but the one before is still running.
const CHECKPOINT_RETRY: Duration = Duration::from_millis(10);

/// One change to a partition.
#[derive(Debug, Clone)]
pub enum Op {
    /// Boxed: most ops are queue entries, and an op is moved several
    /// times on its way to the disk; a session record would make every
    /// one of them as large as itself.
    Session(Box<SessionRecord>),
    /// The session ended: its record and everything under its client id.
    RemoveSession(ByteString),
    Message {
        id: u64,
        message: Arc<Message>,
    },
    RemoveMessage(u64),
    Entry {
        client_id: ByteString,
        seq: u64,
        entry: EntryRecord,
    },
    Flight {
        client_id: ByteString,
        seq: u64,
        flight: FlightRecord,
    },
    /// The message is no longer owed: its entry goes, and its flight if
    /// `flight` (a released flow keeps its flight until PUBCOMP).
    RemoveEntry {
        client_id: ByteString,
        seq: u64,
        flight: bool,
    },
    RemoveFlight {
        client_id: ByteString,
        seq: u64,
    },
    IncomingQos2 {
        client_id: ByteString,
        packet_id: u16,
    },
    RemoveIncomingQos2 {
        client_id: ByteString,
        packet_id: u16,
    },
    /// A retained message, or with an empty payload its removal.
    Retained(Arc<Message>),
    /// A record found useless at start-up.
    Delete(Vec<u8>),
}

/// What the shard hands the writer: the changes of epoch `epoch`.
struct Commit {
    epoch: u64,
    ops: Vec<Op>,
}

/// What reaches the writer thread, in order.
enum ToWriter {
    Commit(Commit),
    /// The broker is stopping and every shard has stopped: commit what
    /// came before, sync, and end.
    Close,
}

/// A running writer thread, for [`super::DataDir`] to close once the
/// shards have stopped. Closing it does not wait for its shard's
/// [`StoreHandle`] to be dropped, which may never happen: a shard's state
/// lives as long as the tasks that hold it.
pub struct WriterThread {
    to_writer: Sender<ToWriter>,
    thread: JoinHandle<()>,
}

impl WriterThread {
    /// Asks the writer to finish and waits until it has.
    pub fn close(self) {
        let _ = self.to_writer.send(ToWriter::Close);
        let _ = self.thread.join();
    }
}

/// The shard's end of its partition.
pub struct StoreHandle {
    durability: Durability,
    to_writer: Sender<ToWriter>,
    ops: Vec<Op>,
    /// The epoch `ops` will be committed as.
    epoch: u64,
    /// Every epoch up to this one is committed.
    stored: u64,
    /// With replicated sessions, every epoch up to this one is held by
    /// the replicas too (`crate::cluster::node`, "Replicated sessions").
    replicated: Option<u64>,
    /// Messages written to the partition, by address (their `Arc` is held
    /// by the entries that count here, so the address is theirs while
    /// counted): id and number of entries.
    messages: FxHashMap<usize, (u64, u32)>,
    last_message_id: u64,
    /// Set by the writer while its disk is under the reserve.
    disk_full: Arc<AtomicBool>,
}

impl StoreHandle {
    /// Starts `shard`'s writer thread on `partition`. `messages` are the
    /// stored messages the restored sessions refer to, with their counts;
    /// `unapplied`, the log the last run left, to apply to redb first.
    pub fn start(
        partition: Partition,
        durability: Durability,
        interval: Duration,
        mesh: MeshHandle,
        shard: ShardId,
        messages: &[(u64, Arc<Message>, u32)],
        unapplied: Unapplied,
    ) -> std::io::Result<StoreHandle> {
        let (to_writer, from_shard) = crossbeam_channel::unbounded();
        let running = partition.writer.clone();
        let log = Log::open(&partition.path)?;
        let checkpoints = Checkpointer::start(
            partition.clone(),
            shard,
            unapplied,
            log.sequence(),
            prepares_segments(durability),
        )?;
        let disk_full = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            partition,
            durability,
            interval,
            mesh,
            shard,
            disk_full: disk_full.clone(),
        };
        let thread = thread::Builder::new()
            .name(format!("ringmq-store-{shard}"))
            .spawn(move || writer.run(from_shard, log, checkpoints))?;
        let previous = running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .replace(WriterThread {
                to_writer: to_writer.clone(),
                thread,
            });
        // One writer per partition: a second would commit beside the first.
        debug_assert!(previous.is_none(), "partition {shard} has two writers");
        Ok(StoreHandle {
            durability,
            to_writer,
            ops: Vec::new(),
            epoch: 1,
            stored: 0,
            replicated: None,
            messages: messages
                .iter()
                .map(|(id, message, refs)| (Arc::as_ptr(message) as usize, (*id, *refs)))
                .collect(),
            last_message_id: messages.iter().map(|(id, _, _)| *id).max().unwrap_or(0),
            disk_full,
        })
    }

    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// The id of `message` in the partition, writing it on first use.
    pub fn refer(&mut self, message: &Arc<Message>) -> u64 {
        let address = Arc::as_ptr(message) as usize;
        if let Some((id, refs)) = self.messages.get_mut(&address) {
            *refs += 1;
            return *id;
        }
        self.last_message_id += 1;
        let id = self.last_message_id;
        self.messages.insert(address, (id, 1));
        self.ops.push(Op::Message {
            id,
            message: message.clone(),
        });
        id
    }

    /// One entry less refers to `message`: the last one removes it.
    pub fn release(&mut self, message: &Arc<Message>) {
        let address = Arc::as_ptr(message) as usize;
        if let Some((id, refs)) = self.messages.get_mut(&address) {
            *refs -= 1;
            if *refs == 0 {
                let id = *id;
                self.messages.remove(&address);
                self.ops.push(Op::RemoveMessage(id));
            }
        }
    }

    /// Hands this turn's changes to the writer.
    pub fn flush(&mut self) {
        if self.ops.is_empty() {
            return;
        }
        let commit = Commit {
            epoch: self.epoch,
            ops: std::mem::take(&mut self.ops),
        };
        self.epoch += 1;
        // The writer only stops when this handle is dropped or the data
        // dir closes it, after the shards have stopped.
        let _ = self.to_writer.send(ToWriter::Commit(commit));
    }

    /// The epoch that must be committed (and replicated, when sessions
    /// are) before everything pushed so far is, or `None` if it already is
    /// (or acknowledgements do not wait).
    pub fn barrier(&self) -> Option<u64> {
        let last = self.pending_epoch();
        if self.replicated.is_some_and(|replicated| last > replicated) {
            // The replicas' copy is what lets another node serve the
            // session if this one dies: waited for whatever the
            // durability, which only says how this node's disk is used.
            return Some(last);
        }
        if last <= self.stored {
            return None;
        }
        match self.durability {
            // Not waited for, unless the writer has fallen far behind: then
            // acknowledgements wait after all, which slows the publishers
            // (Receive Maximum, then TCP) instead of letting the queue,
            // and what a crash takes with it, grow without bound.
            Durability::None if last - self.stored <= NONE_BACKLOG_EPOCHS => None,
            _ => Some(last),
        }
    }

    /// Whether this turn has changes to commit.
    pub fn has_changes(&self) -> bool {
        !self.ops.is_empty()
    }

    /// Whether acknowledgements wait for replicas.
    pub fn replicates(&self) -> bool {
        self.replicated.is_some()
    }

    /// The last epoch handed out: this turn's, if it has changes, or the
    /// one before.
    pub fn pending_epoch(&self) -> u64 {
        if self.ops.is_empty() {
            self.epoch - 1
        } else {
            self.epoch
        }
    }

    /// This turn's changes to sessions and their messages, for the
    /// replicas (retained messages travel on their own, and a record
    /// found useless at start-up is this node's business).
    pub fn session_ops(&self) -> Vec<Op> {
        (self.ops.iter())
            .filter(|op| !matches!(op, Op::Retained(_) | Op::Delete(_)))
            .cloned()
            .collect()
    }

    /// The id `message` is stored under, if a stored entry refers to it.
    pub fn message_id(&self, message: &Arc<Message>) -> Option<u64> {
        let address = Arc::as_ptr(message) as usize;
        self.messages.get(&address).map(|(id, _)| *id)
    }

    /// Whether the last write found the disk under its reserve: messages
    /// that need storing are then refused before they are routed, so that
    /// one refused is not also delivered (and delivered again when its
    /// publisher sends it again).
    pub fn disk_full(&self) -> bool {
        self.disk_full.load(Ordering::Relaxed)
    }

    /// The epoch this turn's changes will be committed as, if
    /// acknowledgements wait for the store: a change pushed at this turn's
    /// flush (a session's record) is on disk once it is.
    pub fn turn_epoch(&self) -> Option<u64> {
        (self.durability.waits() || self.replicated.is_some()).then_some(self.epoch)
    }

    /// The writer has committed everything up to `through`.
    pub fn committed(&mut self, through: u64) {
        self.stored = self.stored.max(through);
    }

    /// From now on acknowledgements wait for the replicas as well.
    pub fn replicate(&mut self) {
        self.replicated = Some(self.replicated.unwrap_or(0));
    }

    /// The replicas hold everything up to `through`.
    pub fn replicated(&mut self, through: u64) {
        if let Some(replicated) = &mut self.replicated {
            *replicated = (*replicated).max(through);
        }
    }

    /// Every epoch up to this one is committed here and, with replicated
    /// sessions, held by the replicas.
    pub fn settled(&self) -> u64 {
        self.stored.min(self.replicated.unwrap_or(u64::MAX))
    }
}

struct Writer {
    partition: Partition,
    durability: Durability,
    interval: Duration,
    mesh: MeshHandle,
    shard: ShardId,
    disk_full: Arc<AtomicBool>,
}

impl Writer {
    fn run(self, from_shard: Receiver<ToWriter>, mut log: Log, checkpoints: Checkpointer) {
        let mut sync = BatchSync::new(self.durability, self.interval);
        let mut closing = false;
        // Changes of appends that failed stay in the window, unlogged, and
        // are appended again, first, with the next ones: the shard already
        // acts on them (its sessions hold the messages, only the
        // acknowledgements were refused), and the store must catch up with
        // it, or a restart would bring back a past the broker's later
        // answers contradict, such as a session subscribed while the disk
        // was full, missing with the messages acknowledged to it since.
        let mut since_checkpoint = SinceCheckpoint::default();
        let mut records = Vec::new();
        let mut encoder = Encoder::default();
        let mut last_epoch = 0;
        let mut failing = false;
        while !closing {
            // Changes the log refused are tried again on their own, so
            // that the shard hears when the disk has room again even if
            // nothing new comes (it refuses what would need storing).
            let retry = (!since_checkpoint.window.all_logged()).then_some(UNWRITTEN_RETRY);
            let wait = [
                sync.due_in(),
                since_checkpoint.due_in(&log, checkpoints.busy()),
                retry,
            ]
            .into_iter()
            .flatten()
            .min();
            let first = match wait {
                Some(wait) => match from_shard.recv_timeout(wait) {
                    Ok(message) => Some(message),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match from_shard.recv() {
                    Ok(message) => Some(message),
                    Err(_) => break,
                },
            };
            let mut commits = Vec::new();
            for message in first.into_iter().chain(from_shard.try_iter()) {
                match message {
                    ToWriter::Commit(commit) => commits.push(commit),
                    ToWriter::Close => {
                        closing = true;
                        break;
                    }
                }
            }
            if let Some(epoch) = commits.last().map(|c| c.epoch) {
                last_epoch = epoch;
            }
            let retrying = commits.is_empty() && !since_checkpoint.window.all_logged();
            if !commits.is_empty() || retrying {
                let through = last_epoch;
                since_checkpoint.push(commits.into_iter().flat_map(|commit| commit.ops));
                let result = self.append(
                    &mut log,
                    since_checkpoint.window.unlogged(),
                    &mut records,
                    &mut encoder,
                );
                if result.is_ok() {
                    since_checkpoint.window.mark_logged();
                    sync.wrote();
                }
                // Also with `none`: the shard bounds how far behind the
                // writer may fall (see `StoreHandle::barrier`). A retry that
                // fails again has no one new to tell.
                if !(retrying && result.is_err()) {
                    self.mesh.send(
                        self.shard,
                        ShardMsg::Stored {
                            through,
                            ok: result.is_ok(),
                        },
                    );
                }
                match result {
                    Err(error) if !failing => {
                        error!(shard = self.shard, %error, "store write failed: retried every 100 ms");
                    }
                    Ok(()) if failing => info!(shard = self.shard, "store writes again"),
                    _ => {}
                }
                failing = !since_checkpoint.window.all_logged();
            }
            sync.sync_if_due(&self.partition.path, || log.sync());
            // The first segment of a run is a plain file: once the next is
            // prepared, moving to it makes every sync after cheaper.
            let into_prepared = !log.preallocated()
                && log.bytes() > 0
                && !checkpoints.busy()
                && checkpoints.prepared() == log.sequence() + 1;
            if into_prepared
                || since_checkpoint.due_in(&log, checkpoints.busy()) == Some(Duration::ZERO)
            {
                self.checkpoint(&mut log, &mut since_checkpoint, &checkpoints);
            }
        }
        // The shard is gone: whatever it wrote reaches redb, so that the
        // next start has no log to replay.
        checkpoints.send(Checkpoint {
            ops: since_checkpoint.take(),
            segment: log.path(),
            writing: None,
        });
        checkpoints.finish();
        info!(shard = self.shard, "store closed");
    }

    /// Appends `ops` to the log (synced with `always`); refused up front
    /// when the disk is under its reserve.
    fn append<'a>(
        &self,
        log: &mut Log,
        ops: impl Iterator<Item = &'a Op>,
        records: &mut Vec<u8>,
        encoder: &mut Encoder,
    ) -> Result<(), String> {
        let reserve = check_reserve(&self.partition);
        self.disk_full.store(reserve.is_err(), Ordering::Relaxed);
        reserve?;
        records.clear();
        let (now, wall) = (Instant::now(), SystemTime::now());
        for op in ops {
            let _ = mutations::<Infallible>(op, now, wall, encoder, |mutation| {
                mutation.encode(records);
                Ok(())
            });
        }
        log.append(records).map_err(|e| e.to_string())?;
        if self.durability == Durability::Always {
            log.sync().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Closes the current segment and hands it, with its changes, to the
    /// checkpoint thread.
    fn checkpoint(&self, log: &mut Log, since: &mut SinceCheckpoint, checkpoints: &Checkpointer) {
        // Changes the log refused (a full disk) go to the next segment,
        // and must not reach redb before it: wait for them.
        if !since.window.all_logged() {
            return;
        }
        // A later segment synced while this one's tail is not would, after
        // a power cut, hold changes to records whose birth is lost.
        if self.durability != Durability::None
            && let Err(error) = log.sync()
        {
            error!(shard = self.shard, %error, "log sync before a checkpoint failed");
            return;
        }
        match log.rotate() {
            Ok(segment) => checkpoints.send(Checkpoint {
                ops: since.take(),
                segment,
                writing: Some(log.sequence()),
            }),
            Err(error) => error!(shard = self.shard, %error, "starting a new log segment failed"),
        }
    }
}

/// The changes since the last checkpoint, kept for it in memory.
#[derive(Default)]
struct SinceCheckpoint {
    window: Window,
    started: Option<Instant>,
}

impl SinceCheckpoint {
    fn push(&mut self, ops: impl Iterator<Item = Op>) {
        self.started.get_or_insert_with(Instant::now);
        for op in ops {
            self.window.push(op);
        }
    }

    fn take(&mut self) -> Vec<Op> {
        self.started = None;
        self.window.take()
    }

    /// How long until a checkpoint is due, if the log holds anything.
    fn due_in(&self, log: &Log, busy: bool) -> Option<Duration> {
        if log.bytes() == 0 {
            return None;
        }
        let due = if log.bytes() >= CHECKPOINT_BYTES {
            Duration::ZERO
        } else {
            let started = self.started?;
            CHECKPOINT_INTERVAL.saturating_sub(started.elapsed())
        };
        Some(if busy && due.is_zero() {
            CHECKPOINT_RETRY
        } else {
            due
        })
    }
}

/// With `durability = batch`, when the writes since the last sync are
/// synced: every `interval`, by the writer that made them.
pub(super) struct BatchSync {
    durability: Durability,
    interval: Duration,
    last_sync: Instant,
    unsynced: bool,
}

impl BatchSync {
    pub fn new(durability: Durability, interval: Duration) -> BatchSync {
        BatchSync {
            durability,
            interval,
            last_sync: Instant::now(),
            unsynced: false,
        }
    }

    /// A commit went through.
    pub fn wrote(&mut self) {
        self.unsynced = true;
    }

    /// How long until a sync is due, if one will be.
    pub fn due_in(&self) -> Option<Duration> {
        (self.durability == Durability::Batch && self.unsynced)
            .then(|| self.interval.saturating_sub(self.last_sync.elapsed()))
    }

    /// Runs `sync` once the interval has passed since the last one.
    pub fn sync_if_due(
        &mut self,
        path: &std::path::Path,
        sync: impl FnOnce() -> std::io::Result<()>,
    ) {
        if self.due_in().is_some_and(|wait| wait.is_zero()) {
            if let Err(error) = sync() {
                error!(partition = %path.display(), %error, "store sync failed");
            }
            self.last_sync = Instant::now();
            self.unsynced = false;
        }
    }
}

/// Refuses a write when `partition`'s disk is under its reserve.
fn check_reserve(partition: &Partition) -> Result<(), String> {
    let free = free_bytes(&partition.path).map_err(|e| e.to_string())?;
    if free < RESERVE_BYTES {
        return Err(format!(
            "{} has {free} bytes free, under the {RESERVE_BYTES} kept in reserve",
            partition.path.display()
        ));
    }
    Ok(())
}

/// [`Partition::commit`], refused up front when the disk is under its
/// reserve.
pub(super) fn transaction(
    partition: &Partition,
    write: impl FnOnce(&mut redb::Table<&[u8], &[u8]>, Instant, SystemTime) -> Result<(), redb::Error>,
) -> Result<(), String> {
    check_reserve(partition)?;
    partition
        .commit(|table| write(table, Instant::now(), SystemTime::now()))
        .map_err(|error| error.to_string())
}

/// Removes every key starting with `prefix`.
pub(super) fn remove_prefix(
    table: &mut redb::Table<&[u8], &[u8]>,
    prefix: &[u8],
) -> Result<(), redb::Error> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for item in table.range(prefix..)? {
        let (key, _) = item?;
        if !key.value().starts_with(prefix) {
            break;
        }
        keys.push(key.value().to_vec());
    }
    for key in keys {
        table.remove(key.as_slice())?;
    }
    Ok(())
}

/// One change, in the transaction's table.
pub(super) fn apply(
    table: &mut redb::Table<&[u8], &[u8]>,
    op: &Op,
    now: Instant,
    wall: SystemTime,
    encoder: &mut Encoder,
) -> Result<(), redb::Error> {
    mutations(op, now, wall, encoder, |mutation| mutation.apply(table))
}

/// One change as the mutations of the table it makes, each handed to
/// `sink`: the same for the log and for redb. Values are encoded in
/// `encoder`'s buffers, each valid until the next.
pub(super) fn mutations<E>(
    op: &Op,
    now: Instant,
    wall: SystemTime,
    encoder: &mut Encoder,
    mut sink: impl FnMut(Mutation<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let mut put = |key: &[u8], value: &[u8]| sink(Mutation::Put { key, value });
    match op {
        Op::Session(session) => {
            let key = record::client_key(record::SESSION, &session.client_id);
            put(&key, encoder.encode(&key, session.as_ref()))
        }
        Op::Message { id, message } => {
            let key = record::message_key(*id);
            put(
                &key,
                encoder.encode(&key, &stored_record(message, now, wall)),
            )
        }
        Op::Entry {
            client_id,
            seq,
            entry,
        } => {
            let key = record::entry_key(record::ENTRY, client_id, *seq);
            put(&key, encoder.encode(&key, entry))
        }
        Op::Flight {
            client_id,
            seq,
            flight,
        } => {
            let key = record::entry_key(record::FLIGHT, client_id, *seq);
            put(&key, encoder.encode(&key, flight))
        }
        Op::IncomingQos2 {
            client_id,
            packet_id,
        } => {
            let key = record::incoming_qos2_key(client_id, *packet_id);
            put(&key, &record::frame(&key, &[]))
        }
        Op::Retained(message) if !message.payload.is_empty() => {
            let key = record::retained_key(&message.topic);
            put(
                &key,
                encoder.encode(&key, &stored_record(message, now, wall)),
            )
        }
        Op::Retained(message) => sink(Mutation::Remove(&record::retained_key(&message.topic))),
        Op::RemoveSession(client_id) => [
            record::SESSION,
            record::ENTRY,
            record::FLIGHT,
            record::INCOMING_QOS2,
        ]
        .into_iter()
        .try_for_each(|kind| sink(Mutation::RemovePrefix(&record::client_key(kind, client_id)))),
        Op::RemoveMessage(id) => sink(Mutation::Remove(&record::message_key(*id))),
        Op::RemoveEntry {
            client_id,
            seq,
            flight,
        } => {
            sink(Mutation::Remove(&record::entry_key(
                record::ENTRY,
                client_id,
                *seq,
            )))?;
            if *flight {
                sink(Mutation::Remove(&record::entry_key(
                    record::FLIGHT,
                    client_id,
                    *seq,
                )))?;
            }
            Ok(())
        }
        Op::RemoveFlight { client_id, seq } => sink(Mutation::Remove(&record::entry_key(
            record::FLIGHT,
            client_id,
            *seq,
        ))),
        Op::RemoveIncomingQos2 {
            client_id,
            packet_id,
        } => sink(Mutation::Remove(&record::incoming_qos2_key(
            client_id, *packet_id,
        ))),
        Op::Delete(key) => sink(Mutation::Remove(key)),
    }
}

/// `message` as stored: its expiry a wall-clock deadline.
pub fn stored_record(message: &Message, now: Instant, wall: SystemTime) -> StoredMessage {
    let mut wire = message_to_wire(message, now);
    wire.expiry_ms = None;
    StoredMessage {
        message: wire,
        expires_at_ms: message.expires_at.map(|at| unix_ms(at, now, wall)),
    }
}

/// Bytes available to an unprivileged writer on the file system of `path`.
pub(super) fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a statvfs the call fills in.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}
