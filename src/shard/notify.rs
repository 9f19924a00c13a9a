//! A single-waiter, same-thread wake-up flag: the shard's inbox task sleeps
//! on one until another task leaves it work, and a handshake on an alarm's
//! until its time limit passes. Shard-local, so `Cell`s and no atomics.

use std::cell::Cell;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct LocalNotify {
    notified: Cell<bool>,
    waiter: Cell<Option<Waker>>,
}

impl LocalNotify {
    /// Wakes the waiter, or lets its next `notified()` return at once.
    /// Ringing many times before the waiter runs wakes it once.
    pub fn notify(&self) {
        if !self.notified.replace(true)
            && let Some(waker) = self.waiter.take()
        {
            waker.wake();
        }
    }

    pub async fn notified(&self) {
        std::future::poll_fn(|cx| self.poll_notified(cx)).await
    }

    pub fn poll_notified(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.notified.replace(false) {
            Poll::Ready(())
        } else {
            self.waiter.set(Some(cx.waker().clone()));
            Poll::Pending
        }
    }
}

/// A waker that counts its wake-ups, for the tests of what wakes a task
/// here and in [`super::connection`].
#[cfg(test)]
pub(super) mod testing {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    pub struct WakeCounter(AtomicUsize);

    impl WakeCounter {
        pub fn new() -> (Arc<WakeCounter>, Waker) {
            let counter = Arc::new(WakeCounter(AtomicUsize::new(0)));
            let waker = Waker::from(counter.clone());
            (counter, waker)
        }

        pub fn wakes(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl Wake for WakeCounter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::WakeCounter;
    use super::*;

    #[test]
    fn many_notifies_wake_once_and_are_not_lost() {
        let notify = LocalNotify::default();
        let (counter, waker) = WakeCounter::new();
        let mut cx = Context::from_waker(&waker);

        let mut wait = Box::pin(notify.notified());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        notify.notify();
        notify.notify();
        assert_eq!(counter.wakes(), 1);
        assert!(wait.as_mut().poll(&mut cx).is_ready());

        // A notify with no waiter is remembered for the next wait.
        notify.notify();
        let mut next = Box::pin(notify.notified());
        assert!(next.as_mut().poll(&mut cx).is_ready());
    }
}
