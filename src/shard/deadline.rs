//! Deadlines a shard enforces on its tick: keep-alives (spec 3.1.2.10: a
//! connection that sends no control packet for one and a half times its
//! keep-alive is closed) and handshake and closing time limits.
//!
//! They live in one heap per shard, checked on every tick, rather than in
//! a timer each: a monoio timer is 640 bytes, aligned to 128 (cache-line
//! padding for cross-thread use this runtime never makes). Held by every
//! idle connection's reader, that was as much as the rest of the
//! connection together; held by every handshake, the over-aligned
//! allocation left a hole in the heap that the next handshake's could not
//! reuse, 3 KB per connection (PERF.md).
//!
//! A deadline may move later without touching the heap (a keep-alive does
//! at every packet): an entry found early is pushed again at the deadline
//! it then has, so a connection has one entry, pushed again at most once
//! per keep-alive period. Expiry is late by at most one tick.

use std::cell::Cell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll};
use std::time::Instant;

use super::notify::LocalNotify;

/// Something with a deadline.
pub trait Deadline {
    /// When it is due, as of now; `None` once it no longer is.
    fn due(&self) -> Option<Instant>;
    /// Its deadline has passed.
    fn expire(&self);
}

#[derive(Default)]
pub struct Deadlines {
    heap: BinaryHeap<Reverse<Entry>>,
}

/// A deadline as it was when the entry was pushed.
struct Entry {
    at: Instant,
    /// Weak: whatever ends before its deadline leaves only a stale entry.
    of: Weak<dyn Deadline>,
}

/// A time limit on some work: [`Alarm::on`] gives up on the work once the
/// alarm has rung.
pub struct Alarm {
    at: Instant,
    rung: LocalNotify,
    expired: Cell<bool>,
}

impl Deadlines {
    pub fn watch<D: Deadline + 'static>(&mut self, of: &Rc<D>) {
        if let Some(at) = of.due() {
            let of: Weak<D> = Rc::downgrade(of);
            self.heap.push(Reverse(Entry { at, of }));
        }
    }

    /// A new alarm at `at`, already watched.
    pub fn alarm(&mut self, at: Instant) -> Rc<Alarm> {
        let alarm = Rc::new(Alarm {
            at,
            rung: LocalNotify::default(),
            expired: Cell::new(false),
        });
        self.watch(&alarm);
        alarm
    }

    /// Expires whatever is due at `now`.
    pub fn expire(&mut self, now: Instant) {
        while self
            .heap
            .peek()
            .is_some_and(|Reverse(entry)| entry.at <= now)
        {
            let Some(Reverse(entry)) = self.heap.pop() else {
                break;
            };
            let Some(of) = entry.of.upgrade() else {
                continue;
            };
            match of.due() {
                Some(at) if at <= now => of.expire(),
                Some(at) => self.heap.push(Reverse(Entry { at, of: entry.of })),
                None => {}
            }
        }
    }
}

impl Alarm {
    /// Runs `work` until it completes, or `None` if the alarm rings first.
    pub async fn on<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        first(std::pin::pin!(work), |cx| self.rung.poll_notified(cx)).await
    }
}

impl Deadline for Alarm {
    fn due(&self) -> Option<Instant> {
        (!self.expired.get()).then_some(self.at)
    }

    fn expire(&self) {
        self.expired.set(true);
        self.rung.notify();
    }
}

/// Polls `work` until it completes, or `None` if `stop` is ready first.
///
/// The caller pins `work` in its own future: moved into an `async fn`, a
/// future is held twice (as captured, and again once moved into the body),
/// and a connection's reader waits here for its whole idle life.
pub fn first<'a, F: Future>(
    mut work: Pin<&'a mut F>,
    mut stop: impl FnMut(&mut Context<'_>) -> Poll<()> + 'a,
) -> impl Future<Output = Option<F::Output>> + 'a {
    std::future::poll_fn(move |cx| match work.as_mut().poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => stop(cx).map(|()| None),
    })
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.at == other.at
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Entry) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Entry) -> Ordering {
        self.at.cmp(&other.at)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::protocol::{ProtocolVersion, ReasonCode};
    use crate::shard::connection::{CloseReason, ConnHandle};

    fn conn(id: u64, version: ProtocolVersion) -> Rc<ConnHandle> {
        Rc::new(ConnHandle::new(id, 0, version, -1))
    }

    #[test]
    fn a_silent_connection_is_closed_and_a_talking_one_is_not() {
        let start = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut deadlines = Deadlines::default();
        let (silent, talking) = (
            conn(1, ProtocolVersion::V5),
            conn(2, ProtocolVersion::V3_1_1),
        );
        for conn in [&silent, &talking] {
            conn.heard_from(start, timeout);
            deadlines.watch(conn);
        }

        deadlines.expire(start + Duration::from_secs(5));
        talking.heard_from(start + Duration::from_secs(5), timeout);
        assert!(!silent.is_closing());

        deadlines.expire(start + Duration::from_secs(10));
        assert_eq!(
            silent.close_reason(),
            Some(CloseReason::Server(ReasonCode::KeepAliveTimeout))
        );
        // The v5 client is told why.
        assert!(silent.buffered() > 0);
        assert!(!talking.is_closing());
        assert_eq!(deadlines.heap.len(), 1, "pushed again at its new deadline");

        deadlines.expire(start + Duration::from_secs(15));
        assert!(talking.is_closing());
        assert!(deadlines.heap.is_empty());
    }

    #[test]
    fn ended_and_keep_alive_free_connections_leave_nothing() {
        let start = Instant::now();
        let mut deadlines = Deadlines::default();
        let none = conn(1, ProtocolVersion::V5);
        deadlines.watch(&none);
        assert!(deadlines.heap.is_empty());

        let gone = conn(2, ProtocolVersion::V5);
        gone.heard_from(start, Duration::from_secs(1));
        deadlines.watch(&gone);
        drop(gone);
        deadlines.expire(start + Duration::from_secs(2));
        assert!(deadlines.heap.is_empty());
    }

    #[test]
    fn an_alarm_cuts_work_short_once_it_rings() {
        let start = Instant::now();
        let mut deadlines = Deadlines::default();
        let alarm = deadlines.alarm(start + Duration::from_secs(1));
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);

        let mut work = Box::pin(alarm.on(std::future::pending::<()>()));
        assert!(work.as_mut().poll(&mut cx).is_pending());
        deadlines.expire(start);
        assert!(work.as_mut().poll(&mut cx).is_pending());
        deadlines.expire(start + Duration::from_secs(1));
        assert_eq!(work.as_mut().poll(&mut cx), Poll::Ready(None));

        let done = deadlines.alarm(start + Duration::from_secs(1));
        let mut work = Box::pin(done.on(std::future::ready(7)));
        assert_eq!(work.as_mut().poll(&mut cx), Poll::Ready(Some(7)));
    }
}
