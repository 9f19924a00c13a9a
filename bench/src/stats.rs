//! Counters shared between the worker threads and the reporting thread.
//!
//! Each worker owns one [`WorkerStats`]; only that worker's thread writes
//! it, so an increment is a plain load and store (no locked instruction on
//! the message path) and the reporting thread merely reads. Each block sits
//! on its own cache lines so two workers never share one. Errors are rare
//! and go to one [`ErrorLog`] behind a mutex, keyed by kind.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Nanoseconds since the process-wide time base. Every client lives in this
/// process, so a send timestamp taken by a publisher on one thread and read
/// by a subscriber on another measure against the same monotonic clock.
pub fn now_nanos() -> u64 {
    nanos_at(Instant::now())
}

pub fn nanos_at(instant: Instant) -> u64 {
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(instant.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX)
}

static BASE: OnceLock<Instant> = OnceLock::new();

/// Fixes the time base; call once before any timestamp is taken.
pub fn init_clock() {
    BASE.get_or_init(Instant::now);
}

/// One worker's counters, written only by that worker's thread.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerStats {
    /// PUBLISH packets written to the socket.
    pub sent: Counter,
    /// PUBLISH packets received by subscribers.
    pub received: Counter,
    /// Deliveries not from this run (see `PublishTemplate`): acknowledged
    /// but neither counted as received nor timed.
    pub stale: Counter,
    /// QoS 1 PUBACKs and QoS 2 PUBCOMPs received by publishers.
    pub acked: Counter,
    /// QoS 0 deliveries a stalled publisher stopped waiting for (`flow`).
    pub written_off: Counter,
    pub opened: Counter,
    pub closed: Counter,
    pub errors: Counter,
}

/// A single-writer counter: see the module doc.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        // Single writer: no read-modify-write race to guard against.
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// The sum of every worker's counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub sent: u64,
    pub received: u64,
    pub stale: u64,
    pub acked: u64,
    pub written_off: u64,
    pub connections: u64,
    pub errors: u64,
}

impl Totals {
    pub fn sum(workers: &[Arc<WorkerStats>]) -> Totals {
        let mut t = Totals::default();
        for w in workers {
            t.sent += w.sent.get();
            t.received += w.received.get();
            t.stale += w.stale.get();
            t.acked += w.acked.get();
            t.written_off += w.written_off.get();
            t.connections += w.opened.get().saturating_sub(w.closed.get());
            t.errors += w.errors.get();
        }
        t
    }
}

/// Error counts by kind ("connect: Connection refused (os error 111)").
#[derive(Debug, Default)]
pub struct ErrorLog {
    kinds: Mutex<BTreeMap<String, u64>>,
}

impl ErrorLog {
    pub fn record(&self, stats: &WorkerStats, kind: String) {
        stats.errors.add(1);
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        *kinds.entry(kind).or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.kinds.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Counts a connection as open from creation until drop.
pub struct OpenConnection<'a>(&'a WorkerStats);

impl<'a> OpenConnection<'a> {
    pub fn new(stats: &'a WorkerStats) -> Self {
        stats.opened.add(1);
        OpenConnection(stats)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.closed.add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_workers() {
        let a = Arc::new(WorkerStats::default());
        let b = Arc::new(WorkerStats::default());
        a.sent.add(3);
        b.sent.add(4);
        b.received.add(5);
        let _open = OpenConnection::new(&a);
        {
            let _closed = OpenConnection::new(&b);
        }
        let t = Totals::sum(&[a.clone(), b]);
        assert_eq!((t.sent, t.received, t.connections), (7, 5, 1));
    }

    #[test]
    fn clock_is_monotonic() {
        init_clock();
        let a = now_nanos();
        let b = now_nanos();
        assert!(b >= a);
    }
}
