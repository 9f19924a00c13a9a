//! The phases of a run, decided by the coordinating (main) thread and
//! followed by every worker.
//!
//! The main thread moves [`Control::phase`] forward; each worker polls it
//! every millisecond and mirrors it into a thread-local [`LocalPhase`] that
//! the worker's connection tasks await.
//! Thousands of connection tasks thus wait on a waker list, not on
//! thousands of timers, and nothing but this one atomic crosses threads.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// In order; a run only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Subscribers connect and subscribe.
    Subscribe = 0,
    /// Publishers connect; they do not publish yet.
    Connect = 1,
    /// Publishers publish until the window ends, then drain.
    Run = 2,
    /// Every connection task stops where it is.
    Stop = 3,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Subscribe,
            1 => Phase::Connect,
            2 => Phase::Run,
            _ => Phase::Stop,
        }
    }
}

/// Shared by all threads.
#[derive(Debug)]
pub struct Control {
    phase: AtomicU8,
    /// Set when entering [`Phase::Run`].
    start: OnceLock<Instant>,
    pub warmup: Duration,
    pub duration: Duration,
    /// Subscriber connections that finished connecting, whether or not
    /// they succeeded; the main thread waits for all of them.
    pub subscribers_settled: AtomicUsize,
    pub subscribers_ok: AtomicUsize,
    pub publishers_settled: AtomicUsize,
    pub publishers_ok: AtomicUsize,
    /// Publishers that have started and not yet finished (acks drained).
    pub publishers_active: AtomicUsize,
}

impl Control {
    pub fn new(warmup: Duration, duration: Duration) -> Control {
        Control {
            phase: AtomicU8::new(Phase::Subscribe as u8),
            start: OnceLock::new(),
            warmup,
            duration,
            subscribers_settled: AtomicUsize::new(0),
            subscribers_ok: AtomicUsize::new(0),
            publishers_settled: AtomicUsize::new(0),
            publishers_ok: AtomicUsize::new(0),
            publishers_active: AtomicUsize::new(0),
        }
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    pub fn advance(&self, phase: Phase) {
        if phase == Phase::Run {
            self.start.get_or_init(Instant::now);
        }
        self.phase.fetch_max(phase as u8, Ordering::AcqRel);
    }

    /// When publishing began. Only meaningful from [`Phase::Run`] on.
    pub fn start(&self) -> Instant {
        *self.start.get_or_init(Instant::now)
    }

    /// Start of the measured window.
    pub fn window_start(&self) -> Instant {
        self.start() + self.warmup
    }

    /// End of the measured window: publishers stop here.
    pub fn window_end(&self) -> Instant {
        self.window_start() + self.duration
    }
}

/// A worker's copy of the phase, awaited by its connection tasks.
///
/// Each waiting future owns one slot in `waiting` for its life, so a
/// future polled again and again (a `select!` branch beside a busy socket
/// read) replaces its waker rather than piling up new ones.
#[derive(Debug, Default)]
pub struct LocalPhase {
    phase: Cell<u8>,
    waiting: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
}

#[derive(Debug)]
enum Slot {
    Free,
    Taken(Option<Waker>),
}

impl LocalPhase {
    pub fn get(&self) -> Phase {
        Phase::from_u8(self.phase.get())
    }

    /// Moves the local phase forward and wakes whoever waits for it.
    pub fn set(&self, phase: Phase) {
        if phase as u8 > self.phase.get() {
            self.phase.set(phase as u8);
            for slot in self.waiting.borrow_mut().iter_mut() {
                if let Slot::Taken(waker) = slot
                    && let Some(waker) = waker.take()
                {
                    waker.wake();
                }
            }
        }
    }

    /// Resolves once the run has reached `phase`.
    pub fn reached(&self, phase: Phase) -> Reached<'_> {
        Reached {
            local: self,
            phase,
            slot: None,
        }
    }

    fn register(&self, slot: &mut Option<usize>, waker: &Waker) {
        let mut waiting = self.waiting.borrow_mut();
        let index = *slot.get_or_insert_with(|| match self.free.borrow_mut().pop() {
            Some(index) => index,
            None => {
                waiting.push(Slot::Free);
                waiting.len() - 1
            }
        });
        match &mut waiting[index] {
            Slot::Taken(Some(current)) if current.will_wake(waker) => {}
            entry => *entry = Slot::Taken(Some(waker.clone())),
        }
    }

    fn release(&self, index: usize) {
        self.waiting.borrow_mut()[index] = Slot::Free;
        self.free.borrow_mut().push(index);
    }
}

/// Future of [`LocalPhase::reached`].
pub struct Reached<'a> {
    local: &'a LocalPhase,
    phase: Phase,
    slot: Option<usize>,
}

impl Future for Reached<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.local.get() >= this.phase {
            return Poll::Ready(());
        }
        this.local.register(&mut this.slot, cx.waker());
        Poll::Pending
    }
}

impl Drop for Reached<'_> {
    fn drop(&mut self) {
        if let Some(index) = self.slot.take() {
            self.local.release(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn local_phase_wakes_waiters_once_reached() {
        let local = Rc::new(LocalPhase::default());
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let waiter = {
                let local = local.clone();
                monoio::spawn(async move { local.reached(Phase::Run).await })
            };
            monoio::time::sleep(Duration::from_millis(2)).await;
            local.set(Phase::Connect);
            monoio::time::sleep(Duration::from_millis(2)).await;
            local.set(Phase::Run);
            waiter.await;
            local.reached(Phase::Connect).await;
        });
        assert_eq!(local.free.borrow().len(), 1);
    }
}
