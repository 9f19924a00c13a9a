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
//! A crash mid-append leaves a record cut short at the end of the newest
//! segment, never acknowledged: it is dropped with a log line. So is a
//! tail of zeros there (a power cut after the file grew but before its
//! data reached the disk, which `batch` allows). Anything else that fails
//! its checksum is damage, handled like a damaged redb record: the broker
//! refuses to start unless `--repair`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::dir::{Partition, RECORDS, StoreError};
use super::writer::remove_prefix;

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
    /// Only zeros from here on: written space whose data never arrived.
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
    let body = rest
        .get(HEADER..HEADER + body_len)
        .ok_or(Stop::Torn { offset })?;
    let damaged = |problem| Stop::Damaged { offset, problem };
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

fn segment_path(partition_path: &Path, sequence: u64) -> PathBuf {
    partition_path.with_file_name(format!("{}{sequence}", segment_prefix(partition_path)))
}

/// The segment being appended to.
pub struct Log {
    partition_path: PathBuf,
    sequence: u64,
    file: File,
    len: u64,
}

impl Log {
    /// Starts a new segment after any left on disk (which [`replay`] has
    /// normally applied and removed before the writer starts).
    pub fn open(partition_path: &Path) -> io::Result<Log> {
        let next = segments(partition_path)?
            .last()
            .map_or(1, |(sequence, _)| sequence + 1);
        let file = create_segment(partition_path, next)?;
        Ok(Log {
            partition_path: partition_path.to_owned(),
            sequence: next,
            file,
            len: 0,
        })
    }

    pub fn append(&mut self, records: &[u8]) -> io::Result<()> {
        self.file.write_all(records)?;
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

    /// Bytes in the current segment.
    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// Starts the next segment and returns the path of the one before,
    /// complete, for a checkpoint to delete once it has applied it.
    pub fn rotate(&mut self) -> io::Result<PathBuf> {
        let file = create_segment(&self.partition_path, self.sequence + 1)?;
        let done = segment_path(&self.partition_path, self.sequence);
        self.file = file;
        self.sequence += 1;
        self.len = 0;
        Ok(done)
    }
}

/// A new, empty segment, its directory entry synced so that a sync of its
/// data later finds it after a power cut.
fn create_segment(partition_path: &Path, sequence: u64) -> io::Result<File> {
    let path = segment_path(partition_path, sequence);
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(file)
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

/// Applies the segments a crash left to `partition`'s table in one
/// synced commit, then deletes them. Damage stops the start, or with
/// `repair` is logged and the rest of that segment skipped.
pub fn replay(partition: &Partition, repair: bool) -> Result<(), StoreError> {
    let io_error = |source: io::Error| StoreError::Io {
        path: partition.path.clone(),
        source,
    };
    let engine = |error: redb::Error| StoreError::Engine {
        path: partition.path.clone(),
        detail: error.to_string(),
    };
    let found = segments(&partition.path).map_err(io_error)?;
    if found.is_empty() {
        return Ok(());
    }
    let mut tx = partition.db.begin_write().map_err(|e| engine(e.into()))?;
    tx.set_quick_repair(true);
    let mut applied = 0usize;
    {
        let mut table = tx.open_table(RECORDS).map_err(|e| engine(e.into()))?;
        for (index, (_, path)) in found.iter().enumerate() {
            let bytes = fs::read(path).map_err(io_error)?;
            let (mutations, stop) = parse(&bytes);
            for mutation in &mutations {
                mutation.apply(&mut table).map_err(engine)?;
            }
            applied += mutations.len();
            let newest = index + 1 == found.len();
            match stop {
                None => {}
                Some(Stop::Torn { offset } | Stop::Zeros { offset }) if newest => {
                    warn!(
                        segment = %path.display(),
                        offset,
                        dropped_bytes = bytes.len() - offset,
                        "the log ends in a write cut short by the crash, never acknowledged: dropped"
                    );
                }
                Some(stop) => {
                    let problem = match stop {
                        Stop::Damaged { problem, .. } => problem,
                        Stop::Torn { .. } => "record cut short in an older segment",
                        Stop::Zeros { .. } => "zeros in an older segment",
                    };
                    let (Stop::Torn { offset }
                    | Stop::Zeros { offset }
                    | Stop::Damaged { offset, .. }) = stop;
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
                }
            }
        }
    }
    tx.commit().map_err(|e| engine(e.into()))?;
    // The commit is synced (partitions sync every commit, see `dir`).
    let paths: Vec<PathBuf> = found.into_iter().map(|(_, path)| path).collect();
    remove_segments(&paths).map_err(io_error)?;
    info!(partition = %partition.path.display(), segments = paths.len(), mutations = applied, "log replayed");
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
    fn trailing_zeros_are_told_from_damage() {
        let mut bytes = log_of(&SAMPLE[..1]);
        let end = bytes.len();
        bytes.extend_from_slice(&[0; 64]);
        assert_eq!(parse(&bytes).1, Some(Stop::Zeros { offset: end }));

        let mut damaged = log_of(&SAMPLE);
        let last = damaged.len() - 1;
        damaged[last] ^= 0x40;
        let (mutations, stop) = parse(&damaged);
        assert_eq!(mutations.len(), 2);
        assert!(matches!(
            stop,
            Some(Stop::Damaged {
                problem: "checksum mismatch",
                ..
            })
        ));
    }
}
