//! `store`: no broker and no network; one shard's durable-session writes
//! against an embedded store, to choose the store (PERF.md, "Store: fjall
//! against redb").
//!
//! The write pattern is what a shard does for QoS 1 messages queued for
//! persistent sessions. Each message is two puts: its record
//! (`m/<id u64 BE>`, a 40-byte header and the payload) and a queue entry
//! (`q/<client id, 16 bytes>\0<seq u64 BE>`, 24 bytes). When the
//! subscriber acks, `--ack-window` messages later, both are deleted. A
//! shard applies what one loop turn collected as one group commit: the
//! puts of `--batch` messages and the deletes of as many acked ones. Each
//! commit is timed; the run ends when every message written has been
//! deleted again, so that each counts 2 puts and 2 deletes.
//!
//! `--restore` measures the other side, a restart: the scan that reads
//! every session, message and queue entry back ([`restore`]).

mod fjall_backend;
mod redb_backend;
pub mod restore;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::new_histogram;
use crate::cli::{Durability, FjallSync, StoreArgs, StoreKind};
use crate::cpu;
use crate::report::Latency;

/// In `--durability batch`, the first commit after each interval fsyncs.
const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes of a message record before the payload (topic, properties, expiry).
const MESSAGE_HEADER: usize = 40;
/// A queue entry's value: message id, packet id, flags, expiry.
const QUEUE_VALUE: usize = 24;

/// What the scenario asks of a store: one shard's partition, written by
/// one thread.
pub trait Backend {
    /// Applies `ops` atomically. With `sync` they are on disk when this
    /// returns; without, how far they get depends on `--durability`.
    fn commit(&mut self, ops: &[Op], sync: bool) -> Result<(), String>;
    /// Visits every key in order with its value.
    fn scan(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), String>;
    /// Closes cleanly, as a broker's shutdown would.
    fn close(self: Box<Self>) -> Result<(), String>;
}

/// One operation of a group commit.
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// What one write-pattern run measured.
#[derive(Debug, Serialize)]
pub struct StoreReport {
    pub scenario: &'static str,
    pub store: StoreKind,
    pub durability: Durability,
    /// fjall's flavour of fsync; `None` for redb.
    pub fjall_sync: Option<FjallSync>,
    pub batch: u32,
    pub ack_window: u64,
    pub clients: u64,
    pub payload: u32,
    /// Messages written and deleted again (fewer than asked if the time
    /// limit stopped the run).
    pub messages: u64,
    pub time_limited: bool,
    pub commits: u64,
    pub seconds: f64,
    pub messages_per_second: f64,
    /// One group commit, microseconds.
    pub commit_us: Latency,
    /// Process CPU (the store's background threads included) per message.
    pub cpu_us_per_message: f64,
    /// Allocated bytes of the store's files at the end, still open.
    pub disk_bytes: u64,
    /// The same after a clean close.
    pub disk_bytes_closed: u64,
    pub dir: PathBuf,
    pub errors: u64,
}

impl StoreReport {
    pub fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        let c = &self.commit_us;
        writeln!(
            out,
            "store {:?} durability {:?} batch {}: {} messages{} in {:.2}s = {:.0} msg/s; \
             {} commits p50 {:.1} us p99 {:.1} us max {:.1} us; cpu {:.2} us/msg; \
             disk {:.1} MB open, {:.1} MB closed",
            self.store,
            self.durability,
            self.batch,
            self.messages,
            if self.time_limited {
                " (time limit)"
            } else {
                ""
            },
            self.seconds,
            self.messages_per_second,
            self.commits,
            c.p50,
            c.p99,
            c.max,
            self.cpu_us_per_message,
            megabytes(self.disk_bytes),
            megabytes(self.disk_bytes_closed),
        )
    }
}

pub fn run(args: &StoreArgs) -> Result<StoreReport, String> {
    let dir = fresh_dir(args)?;
    let mut store = open(args, &dir, args.durability)?;
    let mut latency = new_histogram();
    let batch = u64::from(args.batch);
    let mut ops = Vec::with_capacity(4 * args.batch as usize);
    // Messages [acked, put) are stored; the next put is `put`.
    let (mut put, mut acked) = (0, 0);
    let mut time_limited = false;
    let mut commits = 0;
    let cpu_before = cpu::cpu_seconds(None)?;
    let start = Instant::now();
    let mut next_sync = start + SYNC_INTERVAL;
    loop {
        let now = Instant::now();
        if put < args.messages && now >= start + args.time_limit {
            time_limited = true;
        }
        ops.clear();
        let first = put;
        if !time_limited {
            put = (put + batch).min(args.messages);
        }
        for id in first..put {
            ops.push(Op::Put(message_key(id), message_value(id, args.payload)));
            let (client, seq) = (id % args.clients, id / args.clients);
            ops.push(Op::Put(queue_key(client, seq), queue_value(id)));
        }
        // Acks trail the puts by the window; once publishing has stopped
        // the rest drain at the same pace, a batch per turn.
        let ack_until = if put > first {
            put.saturating_sub(args.ack_window)
        } else {
            (acked + batch).min(put)
        };
        for id in acked..ack_until {
            let (client, seq) = (id % args.clients, id / args.clients);
            ops.push(Op::Delete(queue_key(client, seq)));
            ops.push(Op::Delete(message_key(id)));
        }
        acked = ack_until;
        if ops.is_empty() {
            break;
        }
        let sync = match args.durability {
            Durability::Always => true,
            Durability::None => false,
            Durability::Batch => now >= next_sync,
        };
        if sync {
            next_sync = now + SYNC_INTERVAL;
        }
        let begin = Instant::now();
        store.commit(&ops, sync)?;
        latency.saturating_record((begin.elapsed().as_nanos() as u64).max(1));
        commits += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu_seconds = cpu::cpu_seconds(None)? - cpu_before;
    let disk_bytes_open = disk_bytes(&dir)?;
    store.close()?;
    let disk_bytes_closed = disk_bytes(&dir)?;
    remove_unless_kept(args, &dir)?;
    Ok(StoreReport {
        scenario: "store",
        store: args.store,
        durability: args.durability,
        fjall_sync: (args.store == StoreKind::Fjall).then_some(args.fjall_sync),
        batch: args.batch,
        ack_window: args.ack_window,
        clients: args.clients,
        payload: args.payload,
        messages: put,
        time_limited,
        commits,
        seconds,
        messages_per_second: put as f64 / seconds.max(1e-9),
        commit_us: Latency::from_nanos(&latency),
        cpu_us_per_message: cpu_seconds * 1e6 / put.max(1) as f64,
        disk_bytes: disk_bytes_open,
        disk_bytes_closed,
        dir,
        errors: 0,
    })
}

/// Opens (or creates) the store of `args.store` in `dir`.
fn open(args: &StoreArgs, dir: &Path, durability: Durability) -> Result<Box<dyn Backend>, String> {
    Ok(match args.store {
        StoreKind::Fjall => Box::new(fjall_backend::FjallStore::open(
            dir,
            durability,
            args.fjall_sync,
        )?),
        StoreKind::Redb => Box::new(redb_backend::RedbStore::open(dir, durability)?),
    })
}

/// A new, empty subdirectory of `--dir` for this run.
fn fresh_dir(args: &StoreArgs) -> Result<PathBuf, String> {
    let parent = &args.dir;
    match std::fs::metadata(parent) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(format!("--dir {}: not a directory", parent.display())),
        Err(e) => return Err(format!("--dir {}: {e}", parent.display())),
    }
    let mode = if args.restore {
        "restore".to_owned()
    } else {
        format!("{:?}-b{}", args.durability, args.batch).to_lowercase()
    };
    let name = format!(
        "ringmq-store-{}-{mode}-{}",
        format!("{:?}", args.store).to_lowercase(),
        super::run_tag()
    );
    let dir = parent.join(name);
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

fn remove_unless_kept(args: &StoreArgs, dir: &Path) -> Result<(), String> {
    if args.keep {
        return Ok(());
    }
    std::fs::remove_dir_all(dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))
}

/// Bytes allocated to the files under `dir` (as `du` counts them: fjall's
/// journal is preallocated sparse, so its length would overstate it).
fn disk_bytes(path: &Path) -> Result<u64, String> {
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let meta = std::fs::symlink_metadata(path).map_err(fail)?;
    if !meta.is_dir() {
        return Ok(meta.blocks() * 512);
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path).map_err(fail)? {
        total += disk_bytes(&entry.map_err(fail)?.path())?;
    }
    Ok(total)
}

/// Drops the files under `path` from the page cache, so that the next read
/// goes to the disk (on a VM: to the host, which may still cache it).
fn evict_from_page_cache(path: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let meta = std::fs::symlink_metadata(path).map_err(fail)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(fail)? {
            evict_from_page_cache(&entry.map_err(fail)?.path())?;
        }
        return Ok(());
    }
    let file = std::fs::File::open(path).map_err(fail)?;
    // Only clean pages can be dropped.
    file.sync_all().map_err(fail)?;
    // SAFETY: a valid open descriptor; the call only advises the kernel.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(fail(std::io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// `m/<id>`: a message record, shared by every queue entry pointing at it.
fn message_key(id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(10);
    key.extend_from_slice(b"m/");
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// `q/<client id>\0<seq>`: a session's queue, in delivery order.
fn queue_key(client: u64, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(27);
    key.extend_from_slice(b"q/");
    key.extend_from_slice(&client_id(client));
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `s/<client id>`: a session record.
fn session_key(client: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(18);
    key.extend_from_slice(b"s/");
    key.extend_from_slice(&client_id(client));
    key
}

/// `client-000000042`: 16 bytes, the length the write pattern assumes.
fn client_id(n: u64) -> [u8; 16] {
    let mut id = *b"client-000000000";
    let mut rest = n;
    for digit in id[7..].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    id
}

fn message_value(id: u64, payload: u32) -> Vec<u8> {
    noise(id, MESSAGE_HEADER + payload as usize)
}

fn queue_value(id: u64) -> Vec<u8> {
    let mut value = id.to_be_bytes().to_vec();
    value.extend_from_slice(&noise(!id, QUEUE_VALUE - 8));
    value
}

/// `len` bytes that do not compress (payloads are often encrypted or
/// already compressed, and fjall compresses its blocks).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    // splitmix64
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        bytes.extend_from_slice(&next().to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape() {
        assert_eq!(&client_id(42), b"client-000000042");
        assert_eq!(message_key(1), b"m/\0\0\0\0\0\0\0\x01");
        let queue = queue_key(42, 258);
        assert_eq!(queue.len(), 27);
        assert_eq!(&queue[..19], b"q/client-000000042\0");
        assert_eq!(&queue[19..], &258u64.to_be_bytes());
        assert_eq!(session_key(7), b"s/client-000000007");
        assert_eq!(message_value(3, 64).len(), 104);
        assert_eq!(queue_value(3).len(), QUEUE_VALUE);
    }
}
