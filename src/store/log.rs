//! A partition's write-ahead log: what an acknowledgement waits for.
//!
//! Committing every turn's changes to redb's B-tree cost more than half of
//! the broker's CPU at saturation (PERF.md, "Durable sessions": the writer
//! thread's inserts, deletes and page copies), although most of those
//! records are removed again within a second, when the subscriber
//! acknowledges. So the writer appends each turn's changes to this log
//! (a sequential write, synced with `durability = always`) and answers
//! the shard; every [`super::writer::CHECKPOINT_INTERVAL`], or sooner once
//! the log has grown past [`super::writer::CHECKPOINT_BYTES`], another
//! thread applies what is still live to redb in one commit, and the log
//! segments it covered are deleted. Records born and removed between two
//! checkpoints never touch the B-tree.
//!
//! A segment is a run of records, each `length (u32 LE) | CRC-32 (u32 LE)
//! | body`, the body one [`Mutation`] of the partition's table. At start-up
//! the segments left by a crash are replayed into redb, oldest first,
//! before anything reads it ([`replay`]). Replaying a segment a checkpoint
//! already applied (the broker died between the commit and the deletion)
//! is harmless: every mutation sets or removes keys outright, so the later
//! ones, replayed after it, leave each key as it was.
//!
//! With `durability = always`, segments are prepared ahead, filled with
//! zeros ([`prepare_segment`]): a segment's data ends where its zeros
//! start; otherwise a segment is a plain file, growing as it is written. A crash mid-append leaves
//! a record cut short at the end of the newest segment's data (running
//! past the end of the file, or failing its checksum with only zeros
//! after it), never acknowledged: it is dropped with a log line. Anything
//! else that fails its checksum is damage, handled like a damaged redb
//! record: the broker refuses to start unless `--repair`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tracing::{info, warn};

use super::dir::{Partition, StoreError};
use super::record;
use super::writer::remove_prefix;
use super::writer::{RESERVE_BYTES, free_bytes};

/// One change to a partition's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation<'a> {
    Put {
        key: &'a [u8],
        value: &'a [u8],
    },
    Remove(&'a [u8]),
    /// Every key starting with these bytes.
    RemovePrefix(&'a [u8]),
}

const PUT: u8 = 1;
const REMOVE: u8 = 2;
const REMOVE_PREFIX: u8 = 3;
/// Length and checksum.
const HEADER: usize = 8;

impl Mutation<'_> {
    /// Appends this mutation as one log record.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (tag, key, value): (u8, &[u8], &[u8]) = match *self {
            Mutation::Put { key, value } => (PUT, key, value),
            Mutation::Remove(key) => (REMOVE, key, &[]),
            Mutation::RemovePrefix(key) => (REMOVE_PREFIX, key, &[]),
        };
        let body_len = 1 + 4 + key.len() + value.len();
        let start = out.len();
        out.reserve(HEADER + body_len);
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.push(tag);
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(value);
        let sum = crc32fast::hash(&out[start + HEADER..]);
        out[start + 4..start + HEADER].copy_from_slice(&sum.to_le_bytes());
    }

    /// Applies this mutation to `table`.
    pub fn apply(&self, table: &mut redb::Table<&[u8], &[u8]>) -> Result<(), redb::Error> {
        match *self {
            Mutation::Put { key, value } => {
                table.insert(key, value)?;
            }
            Mutation::Remove(key) => {
                table.remove(key)?;
            }
            Mutation::RemovePrefix(prefix) => remove_prefix(table, prefix)?,
        }
        Ok(())
    }
}

/// Where parsing a segment stopped before its end.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// The last record runs past the end of the file: an append cut short.
    Torn { offset: usize },
    /// Only zeros from here on: space prepared ahead and not yet written
    /// (or written but lost to a power cut, which `batch` allows).
    Zeros { offset: usize },
    /// A record that is there but wrong.
    Damaged {
        offset: usize,
        problem: &'static str,
    },
}

/// The mutations of one segment, in order, and where they stopped if
/// before the end.
pub fn parse(bytes: &[u8]) -> (Vec<Mutation<'_>>, Option<Stop>) {
    let mut mutations = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        match record_at(bytes, offset) {
            Ok((mutation, next)) => {
                mutations.push(mutation);
                offset = next;
            }
            Err(stop) => return (mutations, Some(stop)),
        }
    }
    (mutations, None)
}

fn record_at(bytes: &[u8], offset: usize) -> Result<(Mutation<'_>, usize), Stop> {
    let rest = &bytes[offset..];
    if rest.iter().all(|&b| b == 0) {
        return Err(Stop::Zeros { offset });
    }
    let torn = Stop::Torn { offset };
    let header = rest.get(..HEADER).ok_or(torn)?;
    let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let sum = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let end = HEADER + body_len;
    let body = rest.get(HEADER..end).ok_or(Stop::Torn { offset })?;
    // An append cut short in preallocated space leaves zeros where the
    // rest of its records should be: a record that fails with nothing but
    // zeros after it is that, not damage (which has records after it).
    let cut_short = rest[end..].iter().all(|&b| b == 0);
    let damaged = |problem| {
        if cut_short {
            Stop::Torn { offset }
        } else {
            Stop::Damaged { offset, problem }
        }
    };
    if crc32fast::hash(body) != sum {
        return Err(damaged("checksum mismatch"));
    }
    let (&tag, body) = body.split_first().ok_or(damaged("empty record"))?;
    let (key_len, body) = body.split_at_checked(4).ok_or(damaged("no key length"))?;
    let key_len = u32::from_le_bytes([key_len[0], key_len[1], key_len[2], key_len[3]]) as usize;
    let (key, value) = body
        .split_at_checked(key_len)
        .ok_or(damaged("key longer than its record"))?;
    let mutation = match tag {
        PUT => Mutation::Put { key, value },
        REMOVE => Mutation::Remove(key),
        REMOVE_PREFIX => Mutation::RemovePrefix(key),
        _ => return Err(damaged("unknown mutation")),
    };
    Ok((mutation, offset + HEADER + body_len))
}

/// The segment files of the partition at `partition_path`, oldest first.
pub fn segments(partition_path: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let prefix = segment_prefix(partition_path);
    let dir = partition_path.parent().unwrap_or(Path::new("."));
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let sequence = name
            .to_str()
            .and_then(|name| name.strip_prefix(&prefix))
            .and_then(|sequence| sequence.parse::<u64>().ok());
        if let Some(sequence) = sequence {
            found.push((sequence, entry.path()));
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// `shard-K.redb`'s segments are `shard-K.log.N`.
fn segment_prefix(partition_path: &Path) -> String {
    let stem = partition_path
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{stem}.log.")
}

pub fn segment_path(partition_path: &Path, sequence: u64) -> PathBuf {
    partition_path.with_file_name(format!("{}{sequence}", segment_prefix(partition_path)))
}

/// Bytes of zeros a new segment is given before it is used: appending
/// within them, a sync need not also write the file's new size through
/// the file system's journal (an fdatasync after each 2 KB append took
/// 180-225 µs on this machine's disk, 127-133 µs when overwriting
/// preallocated space, `bench/fsync-prealloc.py`). A segment past it
/// grows as any file.
pub const PREALLOCATED_BYTES: u64 = super::writer::CHECKPOINT_BYTES + (4 << 20);

/// The segment being appended to.
pub struct Log {
    partition_path: PathBuf,
    sequence: u64,
    file: File,
    len: u64,
    preallocated: bool,
}

impl Log {
    /// Starts a new segment after any left on disk (the log the last run
    /// left, which the restore has read).
    pub fn open(partition_path: &Path) -> io::Result<Log> {
        let next = segments(partition_path)?
            .last()
            .map_or(1, |(sequence, _)| sequence + 1);
        let (file, preallocated) = open_segment(partition_path, next)?;
        Ok(Log {
            partition_path: partition_path.to_owned(),
            sequence: next,
            file,
            len: 0,
            preallocated,
        })
    }

    pub fn append(&mut self, records: &[u8]) -> io::Result<()> {
        self.file.write_all_at(records, self.len)?;
        self.len += records.len() as u64;
        Ok(())
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The current segment, for the last checkpoint, at shutdown.
    pub fn path(&self) -> PathBuf {
        segment_path(&self.partition_path, self.sequence)
    }

    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Whether the current segment was prepared ahead with zeros.
    pub fn preallocated(&self) -> bool {
        self.preallocated
    }

    /// Bytes in the current segment.
    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// Starts the next segment (the one [`prepare_segment`] made ready, if
    /// it did) and returns the path of the one before, complete, for a
    /// checkpoint to delete once it has applied it.
    pub fn rotate(&mut self) -> io::Result<PathBuf> {
        let (file, preallocated) = open_segment(&self.partition_path, self.sequence + 1)?;
        let done = segment_path(&self.partition_path, self.sequence);
        self.file = file;
        self.sequence += 1;
        self.len = 0;
        self.preallocated = preallocated;
        Ok(done)
    }
}

/// Segment `sequence`, prepared ahead if [`prepare_segment`] got to it,
/// else new and empty, its directory entry synced so that a sync of its
/// data later finds it after a power cut.
fn open_segment(partition_path: &Path, sequence: u64) -> io::Result<(File, bool)> {
    let path = segment_path(partition_path, sequence);
    match OpenOptions::new().write(true).open(&path) {
        Ok(file) => return Ok((file, true)),
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        Err(_) => {}
    }
    let file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)?;
    sync_dir(&path)?;
    Ok((file, false))
}

/// Makes segment `sequence` ready ahead of its use: written with zeros
/// under another name, synced, then linked into place (never over a
/// segment the writer has already made itself).
/// Not when that would leave the disk under the writer's reserve: the
/// space is the log's to grow into, not to take from what remains.
/// Returns whether it did.
pub fn prepare_segment(partition_path: &Path, sequence: u64) -> io::Result<bool> {
    let target = segment_path(partition_path, sequence);
    if target.exists() {
        return Ok(true);
    }
    if free_bytes(partition_path)? < RESERVE_BYTES + 2 * PREALLOCATED_BYTES {
        return Ok(false);
    }
    let temp = partition_path.with_file_name(format!("{}prepare", segment_prefix(partition_path)));
    let filled = fill_with_zeros(&temp);
    let linked = filled.and_then(|()| fs::hard_link(&temp, &target));
    let removed = fs::remove_file(&temp);
    match linked {
        Err(error) if error.kind() != io::ErrorKind::AlreadyExists => return Err(error),
        _ => removed?,
    }
    sync_dir(&target)?;
    Ok(true)
}

fn fill_with_zeros(path: &Path) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..PREALLOCATED_BYTES >> 20 {
        file.write_all(&zeros)?;
    }
    file.sync_all()
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Deletes applied segments.
pub fn remove_segments(paths: &[PathBuf]) -> io::Result<()> {
    for path in paths {
        match fs::remove_file(path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    Ok(())
}

/// What a run of mutations leaves behind: the prefixes removed, then each
/// key's last value (or removal) after them. Applied in that order, and in
/// key order, it leaves a table as the mutations one by one would; in key
/// order, a replay touches each B-tree page once rather than at random.
///
/// Keys and values are slices of the segments read, not copies: a crash
/// under load leaves hundreds of thousands of them, and a restart spent
/// 8% of its time copying them out one allocation each (perf).
#[derive(Default)]
pub struct NetEffect {
    prefixes: Vec<Vec<u8>>,
    keys: BTreeMap<Bytes, Option<Bytes>>,
}

impl NetEffect {
    /// Adds `mutation`, whose key and value are copied.
    pub fn add(&mut self, mutation: Mutation<'_>) {
        let copy = |bytes: &[u8]| Bytes::copy_from_slice(bytes);
        self.add_in(mutation, copy);
    }

    /// Adds `mutation`, whose key and value are slices of `segment`.
    pub fn add_from(&mut self, segment: &Bytes, mutation: Mutation<'_>) {
        self.add_in(mutation, |bytes| segment.slice_ref(bytes));
    }

    fn add_in(&mut self, mutation: Mutation<'_>, shared: impl Fn(&[u8]) -> Bytes) {
        match mutation {
            Mutation::Put { key, value } => {
                self.keys.insert(shared(key), Some(shared(value)));
            }
            Mutation::Remove(key) => {
                self.keys.insert(shared(key), None);
            }
            Mutation::RemovePrefix(prefix) => {
                // What was set under it before is gone with it.
                let under: Vec<Bytes> = self
                    .keys
                    .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
                    .map(|(key, _)| key)
                    .take_while(|key| key.starts_with(prefix))
                    .cloned()
                    .collect();
                for key in under {
                    self.keys.remove(&key);
                }
                self.prefixes.push(prefix.to_vec());
            }
        }
    }

    /// How many keys it sets or removes.
    pub fn keys_touched(&self) -> usize {
        self.keys.len()
    }

    /// Each key set or removed, in key order.
    pub fn keys(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.keys
            .iter()
            .map(|(key, value)| (key.as_ref(), value.as_deref()))
    }

    /// Whether a record under `key` that was there before is gone: the
    /// removed prefixes are whole client keys (a session's end), so the
    /// record's own client key is all there is to look up.
    pub fn removes_by_prefix(&self, key: &[u8]) -> bool {
        !self.prefixes.is_empty()
            && record::split_client_key(key).is_some_and(|(_, rest)| {
                let prefix = &key[..key.len() - rest.len()];
                self.prefixes.iter().any(|removed| removed == prefix)
            })
    }

    pub fn apply(&self, table: &mut redb::Table<&[u8], &[u8]>) -> Result<(), redb::Error> {
        for prefix in &self.prefixes {
            remove_prefix(table, prefix)?;
        }
        for (key, value) in self.keys() {
            match value {
                Some(value) => Mutation::Put { key, value },
                None => Mutation::Remove(key),
            }
            .apply(table)?;
        }
        Ok(())
    }
}

/// The log segments a crash left, not yet applied to redb, and what they
/// change. A restart reads the partition through them
/// ([`super::restore`]) and serves at once; its checkpoint thread applies
/// them to redb afterwards ([`replay`]), so that a crash under load does
/// not make the next start wait for a B-tree commit.
#[derive(Default)]
pub struct Unapplied {
    pub segments: Vec<PathBuf>,
    pub net: NetEffect,
}

/// Reads the segments of the partition at `partition_path`, oldest first.
/// Damage stops the start, or with `repair` is logged and the rest of that
/// segment skipped.
pub fn unapplied(partition_path: &Path, repair: bool) -> Result<Unapplied, StoreError> {
    let io_error = |source: io::Error| StoreError::Io {
        path: partition_path.to_owned(),
        source,
    };
    let started = std::time::Instant::now();
    let found = segments(partition_path).map_err(io_error)?;
    let mut unapplied = Unapplied::default();
    let contents = found
        .iter()
        .map(|(_, path)| read_segment(path).map(Bytes::from))
        .collect::<io::Result<Vec<_>>>()
        .map_err(io_error)?;
    // Segments prepared ahead and never written are all zeros: the newest
    // is the last with data.
    let newest = contents
        .iter()
        .rposition(|bytes| bytes.iter().any(|&b| b != 0));
    for (index, ((_, path), bytes)) in found.iter().zip(&contents).enumerate() {
        if bytes.is_empty() {
            // Never written.
            fs::remove_file(path).map_err(io_error)?;
            continue;
        }
        let (mutations, stop) = parse(bytes);
        for mutation in mutations {
            unapplied.net.add_from(bytes, mutation);
        }
        let data_end = match stop {
            None => None,
            // The end of what was written in preallocated space.
            Some(Stop::Zeros { offset }) => Some(offset),
            Some(Stop::Torn { offset }) if Some(index) == newest => {
                warn!(
                    segment = %path.display(),
                    offset,
                    "the log ends in a write cut short by the crash, never acknowledged: dropped"
                );
                Some(offset)
            }
            Some(stop) => {
                let (offset, problem) = match stop {
                    Stop::Damaged { offset, problem } => (offset, problem),
                    Stop::Torn { offset } | Stop::Zeros { offset } => {
                        (offset, "record cut short in an older segment")
                    }
                };
                if !repair {
                    return Err(StoreError::Damaged {
                        path: path.clone(),
                        key: format!("log offset {offset}"),
                        problem: problem.to_owned(),
                    });
                }
                tracing::error!(
                    segment = %path.display(),
                    offset,
                    problem,
                    "damaged log record: the rest of its segment skipped (--repair)"
                );
                None
            }
        };
        // Each segment is cut to its data (a torn end, or the next start,
        // with segments after this one, would take it for damage; a crash
        // loop must not pile up preallocated space that every start reads
        // again), and one that holds none goes.
        match data_end {
            Some(0) => fs::remove_file(path).map_err(io_error)?,
            Some(end) => {
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_error)?;
                file.set_len(end as u64).map_err(io_error)?;
                file.sync_all().map_err(io_error)?;
                unapplied.segments.push(path.clone());
            }
            None => unapplied.segments.push(path.clone()),
        }
    }
    if !unapplied.segments.is_empty() {
        info!(
            partition = %partition_path.display(),
            segments = unapplied.segments.len(),
            keys = unapplied.net.keys_touched(),
            millis = started.elapsed().as_millis() as u64,
            "log read"
        );
    }
    Ok(unapplied)
}

/// A segment's bytes; none for one prepared ahead and never written (its
/// first record's length would not be zero), without reading its 36 MiB
/// of zeros.
fn read_segment(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let mut head = [0u8; HEADER];
    let read = std::io::Read::read(&mut file, &mut head)?;
    if head[..read].iter().all(|&b| b == 0) {
        return Ok(Vec::new());
    }
    fs::read(path)
}

/// Applies `unapplied` to `partition`'s table in one synced commit, then
/// deletes its segments.
pub fn replay(partition: &Partition, unapplied: &Unapplied) -> Result<(), StoreError> {
    if unapplied.segments.is_empty() {
        return Ok(());
    }
    // Synced: partitions sync every commit (see `dir`).
    partition
        .commit(|table| unapplied.net.apply(table))
        .map_err(|error| StoreError::Engine {
            path: partition.path.clone(),
            detail: error.to_string(),
        })?;
    remove_segments(&unapplied.segments).map_err(|source| StoreError::Io {
        path: partition.path.clone(),
        source,
    })?;
    info!(partition = %partition.path.display(), segments = unapplied.segments.len(), "log applied");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(mutations: &[Mutation]) -> Vec<u8> {
        let mut out = Vec::new();
        for mutation in mutations {
            mutation.encode(&mut out);
        }
        out
    }

    const SAMPLE: [Mutation<'static>; 3] = [
        Mutation::Put {
            key: b"Ea",
            value: b"one",
        },
        Mutation::Remove(b"Eb"),
        Mutation::RemovePrefix(b"Sc"),
    ];

    #[test]
    fn what_is_encoded_parses_back_in_order() {
        let bytes = log_of(&SAMPLE);
        assert_eq!(parse(&bytes), (SAMPLE.to_vec(), None));
    }

    #[test]
    fn a_record_cut_short_stops_the_parse_where_it_starts() {
        let bytes = log_of(&SAMPLE);
        let second = log_of(&SAMPLE[..1]).len();
        let cut = &bytes[..bytes.len() - 3];
        let (mutations, stop) = parse(cut);
        assert_eq!(mutations, SAMPLE[..2].to_vec());
        let third = log_of(&SAMPLE[..2]).len();
        assert_eq!(stop, Some(Stop::Torn { offset: third }));
        assert!(second < third);
    }

    #[test]
    fn the_net_effect_keeps_what_follows_a_prefix_removal_and_drops_what_precedes_it() {
        let mut net = NetEffect::default();
        let ec = record::client_key(record::ENTRY, "c");
        let under = |seq: u8| [ec.as_slice(), &[seq]].concat();
        for mutation in [
            Mutation::Put {
                key: &under(1),
                value: b"a",
            },
            Mutation::Put {
                key: b"Ed1",
                value: b"b",
            },
            Mutation::RemovePrefix(&ec),
            Mutation::Put {
                key: &under(2),
                value: b"c",
            },
            Mutation::Remove(b"Ed1"),
        ] {
            net.add(mutation);
        }
        let keys: Vec<_> = net.keys().collect();
        assert_eq!(
            keys,
            vec![(&b"Ed1"[..], None), (&under(2)[..], Some(&b"c"[..]))]
        );
        // What redb holds under the removed prefix is gone, whatever it is.
        assert!(net.removes_by_prefix(&under(7)));
        let other = record::client_key(record::ENTRY, "d");
        assert!(!net.removes_by_prefix(&[other.as_slice(), &[1]].concat()));
    }

    #[test]
    fn an_append_cut_short_in_preallocated_space_is_told_from_damage() {
        let whole = log_of(&SAMPLE);
        let second = log_of(&SAMPLE[..1]).len();
        let mut space = vec![0u8; whole.len() + 64];
        // The write stopped inside the second record's body.
        space[..second + 10].copy_from_slice(&whole[..second + 10]);
        let (mutations, stop) = parse(&space);
        assert_eq!(mutations, SAMPLE[..1].to_vec());
        assert_eq!(stop, Some(Stop::Torn { offset: second }));
        // Inside its header, too.
        let mut space = vec![0u8; whole.len() + 64];
        space[..second + 2].copy_from_slice(&whole[..second + 2]);
        assert_eq!(parse(&space).1, Some(Stop::Torn { offset: second }));
        // A damaged record with records after it is damage.
        let mut damaged = whole.clone();
        damaged.extend_from_slice(&[0; 64]);
        damaged[second + 10] ^= 0x01;
        assert!(matches!(parse(&damaged).1, Some(Stop::Damaged { .. })));
    }

    #[test]
    fn trailing_zeros_are_told_from_damage() {
        let mut bytes = log_of(&SAMPLE[..1]);
        let end = bytes.len();
        bytes.extend_from_slice(&[0; 64]);
        assert_eq!(parse(&bytes).1, Some(Stop::Zeros { offset: end }));

        let mut damaged = log_of(&SAMPLE);
        let in_second = log_of(&SAMPLE[..1]).len() + HEADER + 2;
        damaged[in_second] ^= 0x40;
        let (mutations, stop) = parse(&damaged);
        assert_eq!(mutations.len(), 1);
        assert!(matches!(
            stop,
            Some(Stop::Damaged {
                problem: "checksum mismatch",
                ..
            })
        ));
    }
}
