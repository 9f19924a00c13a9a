//! `store --restore`: what a shard's restart reads. The store is filled
//! with `--sessions` session records (`s/<client id>`, 100 bytes), each
//! with `--queued` messages (a message record and a queue entry each),
//! without fsync but with a durable last commit; then closed, reopened and
//! scanned key by key, decoding every key as the broker's restore would.
//! The reopen and the scan are timed apart: the reopen is where a store
//! replays its journal or repairs itself.
//!
//! With `--crash` the fill runs in a child process that exits without
//! closing the store, so the reopen is a recovery.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::{Backend, Op};
use crate::cli::{Durability, StoreArgs, StoreKind};

/// A session record's value: expiry, will, subscriptions in brief.
const SESSION_VALUE: usize = 100;
/// Sessions per commit while filling.
const SESSIONS_PER_COMMIT: u64 = 100;

/// What one restore run measured.
#[derive(Debug, Serialize)]
pub struct RestoreReport {
    pub scenario: &'static str,
    pub store: StoreKind,
    pub sessions: u64,
    pub queued_per_session: u64,
    pub fill_seconds: f64,
    /// `None` with `--crash`: the filling process never closed the store.
    pub close_seconds: Option<f64>,
    pub crash: bool,
    pub cold: bool,
    /// Allocated bytes of the store's files before the reopen.
    pub disk_bytes: u64,
    pub reopen_seconds: f64,
    pub scan_seconds: f64,
    /// Reopen and scan: the store's part of a restart.
    pub restore_seconds: f64,
    pub keys_per_second: f64,
    pub found: Tally,
    /// Keys missing or left over against what the fill wrote.
    pub errors: u64,
}

/// Keys seen by the scan, by kind.
#[derive(Debug, Default, Serialize)]
pub struct Tally {
    pub sessions: u64,
    pub messages: u64,
    pub queue_entries: u64,
    /// Keys that decoded as none of the three.
    pub unknown: u64,
    pub value_bytes: u64,
}

impl RestoreReport {
    pub fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        let close = self
            .close_seconds
            .map_or("crashed".to_owned(), |s| format!("close {s:.2}s"));
        writeln!(
            out,
            "store {:?} restore {} sessions x {}{}: fill {:.2}s, {close}, {:.1} MB; \
             reopen {:.3}s, scan {:.3}s ({:.0} keys/s), restore {:.3}s; \
             found {} sessions {} messages {} queue entries {} unknown; errors {}",
            self.store,
            self.sessions,
            self.queued_per_session,
            if self.cold { ", cold" } else { "" },
            self.fill_seconds,
            super::megabytes(self.disk_bytes),
            self.reopen_seconds,
            self.scan_seconds,
            self.keys_per_second,
            self.restore_seconds,
            self.found.sessions,
            self.found.messages,
            self.found.queue_entries,
            self.found.unknown,
            self.errors,
        )
    }
}

impl Tally {
    /// Decodes one key as the broker's restore would: its kind, the
    /// client id as UTF-8, the message id or queue sequence number.
    fn add(&mut self, key: &[u8], value: &[u8]) {
        self.value_bytes += value.len() as u64;
        let decoded = match key.split_first_chunk::<2>() {
            Some((b"s/", client)) => std::str::from_utf8(client)
                .is_ok()
                .then_some(&mut self.sessions),
            Some((b"m/", id)) => <[u8; 8]>::try_from(id)
                .ok()
                .map(|id| std::hint::black_box(u64::from_be_bytes(id)))
                .map(|_| &mut self.messages),
            Some((b"q/", rest)) => match rest.split_last_chunk::<8>() {
                Some(([client @ .., 0], seq)) if std::str::from_utf8(client).is_ok() => {
                    std::hint::black_box(u64::from_be_bytes(*seq));
                    Some(&mut self.queue_entries)
                }
                _ => None,
            },
            _ => None,
        };
        match decoded {
            Some(count) => *count += 1,
            None => self.unknown += 1,
        }
    }
}

pub fn run(args: &StoreArgs) -> Result<RestoreReport, String> {
    let dir = super::fresh_dir(args)?;
    let fill_start = Instant::now();
    let close_seconds = if args.crash {
        fill_in_child(args, &dir)?;
        None
    } else {
        let mut store = super::open(args, &dir, Durability::None)?;
        fill(store.as_mut(), args)?;
        let begin = Instant::now();
        store.close()?;
        Some(begin.elapsed().as_secs_f64())
    };
    let fill_seconds = fill_start.elapsed().as_secs_f64() - close_seconds.unwrap_or(0.0);
    let disk_bytes = super::disk_bytes(&dir)?;
    if args.cold {
        super::evict_from_page_cache(&dir)?;
    }

    let begin = Instant::now();
    let store = super::open(args, &dir, Durability::None)?;
    let reopen_seconds = begin.elapsed().as_secs_f64();
    let begin = Instant::now();
    let mut found = Tally::default();
    store.scan(&mut |key, value| found.add(key, value))?;
    let scan_seconds = begin.elapsed().as_secs_f64();
    store.close()?;
    super::remove_unless_kept(args, &dir)?;

    let messages = args.sessions * args.queued;
    let errors = found.sessions.abs_diff(args.sessions)
        + found.messages.abs_diff(messages)
        + found.queue_entries.abs_diff(messages)
        + found.unknown;
    let keys = found.sessions + found.messages + found.queue_entries + found.unknown;
    Ok(RestoreReport {
        scenario: "store-restore",
        store: args.store,
        sessions: args.sessions,
        queued_per_session: args.queued,
        fill_seconds,
        close_seconds,
        crash: args.crash,
        cold: args.cold,
        disk_bytes,
        reopen_seconds,
        scan_seconds,
        restore_seconds: reopen_seconds + scan_seconds,
        keys_per_second: keys as f64 / scan_seconds.max(1e-9),
        found,
        errors,
    })
}

/// The `--crash` child: fills the store in `--dir` itself and exits
/// without closing it.
pub fn fill_only(args: &StoreArgs) -> Result<(), String> {
    let mut store = super::open(args, &args.dir, Durability::None)?;
    fill(store.as_mut(), args)?;
    // As if killed right after the last commit: no close, no destructor.
    std::mem::forget(store);
    Ok(())
}

fn fill_in_child(args: &StoreArgs, dir: &Path) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let store = format!("{:?}", args.store).to_lowercase();
    let status = std::process::Command::new(exe)
        .args(["store", "--store", &store, "--restore", "--fill-only"])
        .arg("--dir")
        .arg(dir)
        .args(["--sessions", &args.sessions.to_string()])
        .args(["--queued", &args.queued.to_string()])
        .args(["--payload", &args.payload.to_string()])
        .status()
        .map_err(|e| format!("cannot start the filling process: {e}"))?;
    if !status.success() {
        return Err(format!("the filling process failed: {status}"));
    }
    Ok(())
}

/// Writes the sessions and their queues, `SESSIONS_PER_COMMIT` sessions a
/// commit, only the last one durable.
fn fill(store: &mut dyn Backend, args: &StoreArgs) -> Result<(), String> {
    let mut ops = Vec::new();
    let mut client = 0;
    while client < args.sessions {
        let end = (client + SESSIONS_PER_COMMIT).min(args.sessions);
        ops.clear();
        for client in client..end {
            ops.push(Op::Put(
                super::session_key(client),
                super::noise(client, SESSION_VALUE),
            ));
            for seq in 0..args.queued {
                let id = client * args.queued + seq;
                ops.push(Op::Put(
                    super::message_key(id),
                    super::message_value(id, args.payload),
                ));
                ops.push(Op::Put(
                    super::queue_key(client, seq),
                    super::queue_value(id),
                ));
            }
        }
        client = end;
        store.commit(&ops, client == args.sessions)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_decodes_every_kind() {
        let mut tally = Tally::default();
        tally.add(&super::super::session_key(1), b"x");
        tally.add(&super::super::message_key(2), b"");
        tally.add(&super::super::queue_key(1, 3), b"");
        tally.add(b"q/client\x01", b"");
        tally.add(b"m/short", b"");
        assert_eq!(
            (tally.sessions, tally.messages, tally.queue_entries),
            (1, 1, 1)
        );
        assert_eq!(tally.unknown, 2);
        assert_eq!(tally.value_bytes, 1);
    }
}
