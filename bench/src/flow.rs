//! Closed-loop flow control between a publisher and its subscriber(s) on
//! the same worker: a publisher may run at most `max_lag` messages ahead of
//! what its subscribers have received.
//!
//! Without it, "as fast as possible" at QoS 0 measures how much a broker
//! will buffer: a broker that reads without bound accepts millions of
//! publishes in the warmup, delivers them during the window, and the
//! figures describe the backlog rather than the broker. With it, the
//! publisher's rate settles at what the broker actually delivers, and
//! latency reflects a bounded queue. `--max-lag 0` turns it off.
//!
//! A broker may drop QoS 0 messages, which would leave the lag open
//! forever; at QoS 0 a publisher that waits longer than [`STALL`] writes
//! the gap off as lost and carries on. QoS 1 and 2 messages are not lost,
//! only late, so there the publisher waits as long as it takes.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::Duration;

/// How long a publisher waits for its subscribers before writing the
/// outstanding messages off as lost.
pub const STALL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Flow {
    /// 0: no limit.
    max_lag: u64,
    /// Deliveries each publish should produce.
    fanout: u64,
    /// Whether a stall writes outstanding deliveries off (QoS 0).
    forgive: bool,
    /// Deliveries received by the subscribers.
    received: Cell<u64>,
    /// Deliveries written off as lost after a stall.
    forgiven: Cell<u64>,
    /// Woken once `received` reaches `wake_at`.
    waiter: RefCell<Option<Waker>>,
    wake_at: Cell<u64>,
}

impl Flow {
    pub fn new(max_lag: u32, fanout: u64, forgive: bool) -> Flow {
        Flow {
            max_lag: u64::from(max_lag),
            fanout: fanout.max(1),
            forgive,
            received: Cell::new(0),
            forgiven: Cell::new(0),
            waiter: RefCell::new(None),
            wake_at: Cell::new(u64::MAX),
        }
    }

    /// Subscriber side: `count` more deliveries arrived.
    pub fn delivered(&self, count: u64) {
        let received = self.received.get() + count;
        self.received.set(received);
        if received >= self.wake_at.get()
            && let Some(waker) = self.waiter.borrow_mut().take()
        {
            waker.wake();
        }
    }

    /// Messages the publisher may send now, having sent `sent`.
    pub fn room(&self, sent: u64) -> u64 {
        if self.max_lag == 0 {
            return u64::MAX;
        }
        self.max_lag.saturating_sub(self.lag(sent))
    }

    /// Messages sent whose deliveries have not all arrived.
    fn lag(&self, sent: u64) -> u64 {
        let expected = sent * self.fanout;
        let arrived = self.received.get() + self.forgiven.get();
        expected.saturating_sub(arrived).div_ceil(self.fanout)
    }

    /// Waits until the lag is down to half of `max_lag`, or, if this flow
    /// forgives, writes the outstanding deliveries off after [`STALL`].
    /// Returns the number of deliveries written off.
    pub async fn wait_for_room(&self, sent: u64) -> u64 {
        let target_lag = self.max_lag / 2;
        let needed = (sent.saturating_sub(target_lag)) * self.fanout;
        let arrived = || self.received.get() + self.forgiven.get();
        self.wake_at.set(needed.saturating_sub(self.forgiven.get()));
        let wait = poll_fn(|cx| {
            if arrived() >= needed {
                Poll::Ready(())
            } else {
                *self.waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        let arrived_in_time = match self.forgive {
            true => monoio::time::timeout(STALL, wait).await.is_ok(),
            false => {
                wait.await;
                true
            }
        };
        self.wake_at.set(u64::MAX);
        self.waiter.borrow_mut().take();
        if arrived_in_time {
            return 0;
        }
        let missing = (sent * self.fanout).saturating_sub(arrived());
        self.forgiven.set(self.forgiven.get() + missing);
        missing
    }
}

/// What a publisher asks of its flow control: [`Flow`] for a publisher
/// whose subscribers share its worker, [`SharedFlow`] when deliveries land
/// on any worker (fan-in, fan-out).
pub trait FlowControl {
    /// Subscriber side: `count` more deliveries arrived.
    fn delivered(&self, count: u64);
    /// Messages the publisher may send now, having sent `sent`.
    fn room(&self, sent: u64) -> u64;
    /// Waits for room; returns the deliveries written off (QoS 0 stalls).
    fn wait_for_room(&self, sent: u64) -> impl std::future::Future<Output = u64>;
}

impl FlowControl for Flow {
    fn delivered(&self, count: u64) {
        Flow::delivered(self, count)
    }
    fn room(&self, sent: u64) -> u64 {
        Flow::room(self, sent)
    }
    async fn wait_for_room(&self, sent: u64) -> u64 {
        Flow::wait_for_room(self, sent).await
    }
}

/// Flow control over every worker at once, for layouts where a publish is
/// delivered to subscribers on other threads. In fan-in and fan-out every
/// subscriber receives every publish, so a subscriber's backlog is the
/// publishers' lag all together: the run's totals are held to at most
/// about `max_lag` publishes ahead of their deliveries, the same
/// per-subscriber bound as `pairs`. A publish is counted only once its
/// write completes, so publishers on one worker could all see the same
/// room at once; hence half of `max_lag` is shared out and each publisher
/// takes at most its share (`max_lag / 2 / publishers`) at a time, which
/// keeps the worst case near `max_lag`, under a broker's usual queue limit
/// of 1,000 messages per session. Waiting polls every millisecond (wakers cannot cross
/// threads cheaply, and a millisecond is far below any stall).
///
/// A stall of [`STALL`] writes the missing deliveries off at every QoS,
/// not only 0: a broker may drop QoS 1 messages for a subscriber whose
/// queue is full (Mosquitto's `max_queued_messages`), and waiting for them
/// would stop the run. They still count as `missing`.
#[derive(Debug)]
pub struct SharedFlow {
    /// Publishes all together may lag: half of `--max-lag`.
    limit: u64,
    /// Most one publisher takes at a time.
    share: u64,
    fanout: u64,
    stats: Vec<std::sync::Arc<crate::stats::WorkerStats>>,
    forgiven: std::sync::atomic::AtomicU64,
}

impl SharedFlow {
    pub fn new(
        max_lag: u32,
        publishers: u64,
        fanout: u64,
        stats: Vec<std::sync::Arc<crate::stats::WorkerStats>>,
    ) -> SharedFlow {
        let limit = u64::from(max_lag).div_ceil(2);
        SharedFlow {
            limit,
            share: (limit / publishers.max(1)).max(1),
            fanout: fanout.max(1),
            stats,
            forgiven: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Publishes (over all publishers) whose deliveries have not all arrived.
    fn lag(&self) -> u64 {
        let totals = crate::stats::Totals::sum(&self.stats);
        let forgiven = self.forgiven.load(std::sync::atomic::Ordering::Relaxed);
        shared_lag(totals.sent, totals.received + forgiven, self.fanout)
    }
}

/// Publishes not yet fully delivered, given deliveries that arrived.
fn shared_lag(sent: u64, arrived: u64, fanout: u64) -> u64 {
    (sent * fanout).saturating_sub(arrived).div_ceil(fanout)
}

impl FlowControl for SharedFlow {
    fn delivered(&self, _count: u64) {
        // Deliveries are read from the workers' counters.
    }

    fn room(&self, _sent: u64) -> u64 {
        if self.limit == 0 {
            return u64::MAX;
        }
        self.limit.saturating_sub(self.lag()).min(self.share)
    }

    async fn wait_for_room(&self, _sent: u64) -> u64 {
        let target = self.limit / 2;
        let started = std::time::Instant::now();
        while self.lag() > target {
            if started.elapsed() >= STALL {
                let totals = crate::stats::Totals::sum(&self.stats);
                let missing = (totals.sent * self.fanout).saturating_sub(totals.received);
                let before = self
                    .forgiven
                    .fetch_max(missing, std::sync::atomic::Ordering::Relaxed);
                return missing.saturating_sub(before);
            }
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_flow_counts_every_worker() {
        use crate::stats::WorkerStats;
        use std::sync::Arc;
        let (a, b) = (
            Arc::new(WorkerStats::default()),
            Arc::new(WorkerStats::default()),
        );
        // 40 -> 20 in all, at most 10 per publisher at a time.
        let flow = SharedFlow::new(40, 2, 3, vec![a.clone(), b.clone()]);
        assert_eq!(flow.room(0), 10);
        a.sent.add(15);
        // 15 publishes, 45 deliveries due, none arrived: 5 more allowed.
        assert_eq!(flow.room(0), 5);
        b.received.add(30);
        assert_eq!(flow.room(0), 10);
        assert_eq!(shared_lag(4, 10, 3), 1);
    }

    #[test]
    fn room_follows_deliveries() {
        let flow = Flow::new(100, 1, true);
        assert_eq!(flow.room(0), 100);
        assert_eq!(flow.room(60), 40);
        flow.delivered(50);
        assert_eq!(flow.room(120), 30);
        assert_eq!(Flow::new(0, 1, true).room(1_000_000), u64::MAX);
        let fanout = Flow::new(10, 4, false);
        fanout.delivered(6);
        // 3 publishes: 12 deliveries due, 6 arrived: 2 publishes lagging.
        assert_eq!(fanout.room(3), 8);
    }

    #[test]
    fn waiting_publisher_is_woken_or_forgives() {
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let flow = std::rc::Rc::new(Flow::new(10, 1, true));
            let subscriber = {
                let flow = flow.clone();
                monoio::spawn(async move {
                    monoio::time::sleep(Duration::from_millis(5)).await;
                    flow.delivered(5);
                })
            };
            assert_eq!(flow.wait_for_room(10).await, 0);
            subscriber.await;
            assert_eq!(flow.room(10), 5);
            // Nothing more arrives: after STALL the 5 missing are forgiven.
            assert_eq!(flow.wait_for_room(12).await, 7);
            assert_eq!(flow.room(12), 10);
        });
    }
}
