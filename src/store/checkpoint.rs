//! Applying the log to redb, on a thread of its own, so that the writer
//! goes on appending (and acknowledgements go on flowing) while a B-tree
//! commit runs.
//!
//! Each checkpoint takes the changes logged since the one before, drops
//! those born and removed in between ([`cancel_transient`]), applies the
//! rest in one redb commit (synced, and with redb's quick repair, so that
//! opening after a crash need not walk the whole tree), and only then
//! deletes the log segments it covered. A checkpoint that fails (a full
//! disk) keeps its changes and segments and is retried with the next.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tracing::{error, warn};

use super::Durability;
use super::coalesce::cancel_transient;
use super::dir::Partition;
use super::log::{Unapplied, prepare_segment, remove_segments, replay, segment_path};
use super::record::Encoder;
use super::writer::{Op, apply, transaction};
use crate::shard::ShardId;

/// Whether log segments are prepared ahead (`log::prepare_segment`): with
/// `durability = always` only, whose sync after every append is what the
/// zeros make cheaper. With `batch` a sync comes once per
/// `durability_interval_ms` at most, and writing 36 MiB of zeros for every
/// 32 MiB of log took 6% of the broker's CPU at saturation (PERF.md, "The
/// log's writer, allocating less").
pub fn prepares_segments(durability: Durability) -> bool {
    durability == Durability::Always
}

/// How long after start-up the first segment is prepared ahead, unless
/// the first checkpoint comes sooner. Not at once: the shards are
/// restoring meanwhile, and writing and syncing 36 MiB of zeros beside
/// them (two partitions, two files) slowed their restore; the writer's
/// first segment is a plain file anyway.
const PREPARE_AFTER: Duration = Duration::from_secs(1);

/// The changes of one finished log segment.
pub struct Checkpoint {
    pub ops: Vec<Op>,
    pub segment: PathBuf,
    /// The segment the writer went on to, whose successor is prepared
    /// next; `None` at shutdown.
    pub writing: Option<u64>,
}

/// The writer's end of its checkpoint thread.
pub struct Checkpointer {
    to_thread: Sender<Checkpoint>,
    busy: Arc<AtomicBool>,
    /// The log segment made ready ahead ([`prepare_segment`]).
    prepared: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    /// Starts the thread, which applies what the last run logged and never
    /// checkpointed before its first checkpoint.
    /// If it `prepares` segments, also the one after `writing`, the
    /// writer's first, once [`PREPARE_AFTER`] has passed or the first
    /// checkpoint has come.
    pub fn start(
        partition: Partition,
        shard: ShardId,
        unapplied: Unapplied,
        writing: u64,
        prepares: bool,
    ) -> std::io::Result<Checkpointer> {
        let (to_thread, from_writer) = crossbeam_channel::unbounded();
        let busy = Arc::new(AtomicBool::new(false));
        let prepared = Arc::new(AtomicU64::new(0));
        let thread = thread::Builder::new()
            .name(format!("ringmq-ckpt-{shard}"))
            .spawn({
                let (busy, prepared) = (busy.clone(), prepared.clone());
                move || {
                    let thread = Thread {
                        partition,
                        busy,
                        prepared,
                        writing,
                        prepares,
                    };
                    thread.run(unapplied, from_writer)
                }
            })?;
        Ok(Checkpointer {
            to_thread,
            busy,
            prepared,
            thread,
        })
    }

    /// The segment prepared ahead, ready for the writer's next rotation.
    pub fn prepared(&self) -> u64 {
        self.prepared.load(Ordering::Acquire)
    }

    /// Whether a checkpoint is still running: the next one waits for it,
    /// and its changes keep gathering meanwhile (more of them cancel).
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    pub fn send(&self, checkpoint: Checkpoint) {
        self.busy.store(true, Ordering::Release);
        // The thread ends only when this sender is dropped.
        let _ = self.to_thread.send(checkpoint);
    }

    /// Waits for every checkpoint sent to finish.
    pub fn finish(self) {
        drop(self.to_thread);
        let _ = self.thread.join();
    }
}

struct Thread {
    partition: Partition,
    busy: Arc<AtomicBool>,
    prepared: Arc<AtomicU64>,
    /// The segment the writer is appending to.
    writing: u64,
    /// See [`prepares_segments`].
    prepares: bool,
}

impl Thread {
    /// Prepares the segment after the one the writer is on, off the
    /// writer's path: zero-filling and syncing 36 MiB takes tens of
    /// milliseconds. A failure costs only speed (the writer then makes a
    /// plain segment itself).
    fn prepare_next(&self) {
        if !self.prepares {
            return;
        }
        let next = self.writing + 1;
        match prepare_segment(&self.partition.path, next) {
            Ok(true) => self.prepared.store(next, Ordering::Release),
            Ok(false) => {}
            Err(error) => {
                warn!(partition = %self.partition.path.display(), %error, "preparing a log segment failed")
            }
        }
    }

    fn run(mut self, unapplied: Unapplied, from_writer: Receiver<Checkpoint>) {
        let partition = self.partition.clone();
        // The last run's log goes first: a checkpoint applied before it
        // would leave redb with later changes that a replay of it, at the
        // next start, would undo. Not at once, though: the shards are
        // restoring, and the first checkpoint comes soon enough.
        let mut unapplied = Some(unapplied);
        let apply_unapplied = |unapplied: &mut Option<Unapplied>| {
            let Some(log) = unapplied else {
                return Ok(());
            };
            replay(&partition, log).map_err(|error| error.to_string())?;
            *unapplied = None;
            Ok::<(), String>(())
        };
        // What failed to reach redb, applied first next time.
        let mut carried: Vec<Op> = Vec::new();
        let mut covered: Vec<PathBuf> = Vec::new();
        let first = match from_writer.recv_timeout(PREPARE_AFTER) {
            Ok(checkpoint) => Some(checkpoint),
            Err(RecvTimeoutError::Timeout) => {
                self.prepare_next();
                None
            }
            Err(RecvTimeoutError::Disconnected) => None,
        };
        for Checkpoint {
            ops,
            segment,
            writing,
        } in first.into_iter().chain(from_writer.iter())
        {
            carried.extend(ops);
            covered.push(segment);
            cancel_transient(&mut carried);
            let result = if let Err(error) = apply_unapplied(&mut unapplied) {
                Err(error)
            } else if carried.is_empty() {
                Ok(())
            } else {
                transaction(&partition, |table, now, wall| {
                    let mut encoder = Encoder::default();
                    (carried.iter()).try_for_each(|op| apply(table, op, now, wall, &mut encoder))
                })
            };
            match result {
                Ok(()) => {
                    carried.clear();
                    if let Err(error) = remove_segments(&covered) {
                        // Left in place they are replayed again at
                        // start-up, which is harmless (see `log`).
                        error!(partition = %partition.path.display(), %error, "removing applied log segments failed");
                    }
                    covered.clear();
                }
                Err(error) => {
                    error!(partition = %partition.path.display(), %error, "checkpoint failed: the log is kept and the checkpoint retried");
                }
            }
            if let Some(writing) = writing {
                self.writing = writing;
                self.prepare_next();
            }
            self.busy.store(false, Ordering::Release);
        }
        // Shut down: a segment prepared and never written goes too.
        let prepared = self.prepared.load(Ordering::Acquire);
        if prepared > self.writing {
            let _ = remove_segments(&[segment_path(&partition.path, prepared)]);
        }
    }
}
