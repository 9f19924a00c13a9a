//! A worker-local limit on concurrent handshakes.
//!
//! Thousands of clients connecting at the same instant overflow the
//! broker's listen backlog; SYNs are then retransmitted after 1, 3, 7
//! seconds and handshakes time out. A [`Gate`] lets at most `limit`
//! connections handshake at once per worker, first come first served.
//!
//! Tickets rather than a waiter queue: each waiting future is admitted when
//! its ticket number falls inside the window `done..done + limit`, and only
//! the ticket that just entered the window is woken, so a future polled
//! repeatedly (inside `select!`) cannot leave duplicates behind.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Debug)]
pub struct Gate {
    limit: u64,
    next_ticket: Cell<u64>,
    /// Permits released so far.
    done: Cell<u64>,
    waiting: RefCell<BTreeMap<u64, Waker>>,
}

impl Gate {
    pub fn new(limit: usize) -> Gate {
        Gate {
            limit: limit.max(1) as u64,
            next_ticket: Cell::new(0),
            done: Cell::new(0),
            waiting: RefCell::new(BTreeMap::new()),
        }
    }

    /// Waits for a turn; the turn lasts as long as the [`Permit`].
    pub fn acquire(&self) -> Acquire<'_> {
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        Acquire { gate: self, ticket }
    }

    fn admits(&self, ticket: u64) -> bool {
        ticket < self.done.get() + self.limit
    }

    fn release(&self) {
        self.done.set(self.done.get() + 1);
        let admitted = self.done.get() + self.limit - 1;
        if let Some(waker) = self.waiting.borrow_mut().remove(&admitted) {
            waker.wake();
        }
    }
}

/// Future of [`Gate::acquire`].
pub struct Acquire<'a> {
    gate: &'a Gate,
    ticket: u64,
}

impl<'a> Future for Acquire<'a> {
    type Output = Permit<'a>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit<'a>> {
        let gate = self.gate;
        if gate.admits(self.ticket) {
            gate.waiting.borrow_mut().remove(&self.ticket);
            return Poll::Ready(Permit(gate));
        }
        gate.waiting
            .borrow_mut()
            .insert(self.ticket, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        self.gate.waiting.borrow_mut().remove(&self.ticket);
    }
}

/// A turn through the [`Gate`]; the next ticket goes when it drops.
pub struct Permit<'a>(&'a Gate);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::Duration;

    #[test]
    fn admits_at_most_limit_at_once() {
        let gate = Rc::new(Gate::new(2));
        let inside = Rc::new(Cell::new(0));
        let most = Rc::new(Cell::new(0));
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let tasks: Vec<_> = (0..6)
                .map(|_| {
                    let (gate, inside, most) = (gate.clone(), inside.clone(), most.clone());
                    monoio::spawn(async move {
                        let _permit = gate.acquire().await;
                        inside.set(inside.get() + 1);
                        most.set(most.get().max(inside.get()));
                        monoio::time::sleep(Duration::from_millis(2)).await;
                        inside.set(inside.get() - 1);
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
        });
        assert_eq!(most.get(), 2);
        assert_eq!(gate.done.get(), 6);
        assert!(gate.waiting.borrow().is_empty());
    }
}
