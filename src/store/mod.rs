//! Sessions, their messages and the retained store on disk, so that a
//! restart or a `kill -9` loses nothing the broker acknowledged.
//!
//! # Layout
//!
//! `--data-dir` holds a `FORMAT` file (the layout's version: a newer or
//! unknown one refuses to start), a `LOCK` file held with `flock` while a
//! broker runs (a second broker on the same dir refuses to start), and one
//! partition set (`set-G-N`, see [`dir`]) with one partition per shard,
//! `shard-K.redb`, each its own redb database, log (`shard-K.log.N`) and
//! writer thread, so persistence adds no lock shared between shards. A
//! shard's partition holds the sessions homed on it and the retained
//! messages whose topics hash to it; [`record`] lists the keys.
//!
//! # Why redb
//!
//! Our write pattern is small records written and deleted soon after
//! (queued, sent, acknowledged), group-committed once per loop turn, and a
//! restart that reads everything back. Measured on that pattern
//! (`ringmq-bench store`, PERF.md "Store: fjall against redb"), redb
//! committed 195k-209k messages/s at `always` with 128 messages per
//! commit against fjall's 131k-173k, tied at 16, ran 1.5-2.2 times faster
//! unsynced on less CPU, never stalled a commit (fjall's slowest took over
//! 200 ms, a compaction stall), and read 2.1 million records back in
//! 0.35-0.71 s against fjall's 1.0-2.3 s (2.33 s after a crash: over the
//! 2 s restore target). fjall wins single-message commits and disk size;
//! neither matters here, since commits are grouped and queues are short.
//! redb also runs no background threads to compete with the shards.
//!
//! In the broker, committing every turn's changes to redb then cost more
//! than half of its CPU at saturation, for records mostly removed again
//! within milliseconds: the library could not keep up with that part,
//! and a log written here ([`log`]) takes it. redb keeps what outlives a
//! checkpoint, and is what a restart reads.
//!
//! # Writing without stalling a shard
//!
//! A shard never touches the disk: it hands each turn's changes to its
//! partition's writer thread ([`writer`]), which appends everything that
//! has arrived to the partition's log ([`log`]) as one batch and, with
//! `durability = always`, syncs it, then tells the shard how far it got.
//! Acknowledgements that need the message stored (PUBACK, PUBREC) wait
//! for that answer; the shard goes on serving meanwhile. Every two
//! seconds a checkpoint thread (`checkpoint`) applies to redb what is
//! still owed, so the records of messages acknowledged within that time
//! (most of them, with subscribers online) never reach the B-tree:
//! committing every turn to redb cost more than half of the broker's CPU
//! at saturation (PERF.md, "Durable sessions").
//!
//! # Durability
//!
//! [`Durability`] sets what an acknowledgement promises: `always`, on
//! disk (synced); `batch`, written to the OS (a crashed or killed broker
//! loses nothing, a power cut or kernel crash up to
//! `durability_interval_ms` of writes); `none`, not waited for unless the
//! writer is more than 64 turns behind (a crash may lose that backlog).

mod checkpoint;
mod coalesce;
pub mod dir;
pub mod log;
pub mod outbox;
pub mod record;
pub mod restore;
pub mod transfer;
pub mod writer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use dir::{DataDir, StoreError};
pub use outbox::{ClusterStore, OutboxOp, RestoredOutbox};
pub use restore::RestoredShard;
pub use writer::{Op, StoreHandle};

/// What an acknowledgement waits for; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    None,
    #[default]
    Batch,
    Always,
}

/// The validated `data_dir`, `durability`, `durability_interval_ms` and
/// `repair` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    pub dir: PathBuf,
    pub durability: Durability,
    /// How often `batch` syncs.
    pub interval: Duration,
    /// Skip damaged records at start-up (each reported) instead of
    /// refusing to start.
    pub repair: bool,
}

impl Durability {
    /// Whether acknowledgements wait for the writer thread.
    pub fn waits(self) -> bool {
        self != Durability::None
    }
}
