//! One client connection: reading its CONNECT wherever it was accepted,
//! moving it to its session's home shard, then one task that reads, decodes
//! and hands packets to the shard, and flushes whatever the shard appended
//! to the connection's output, in one write per wake-up. It waits for
//! readiness, then reads or writes without blocking, so an idle connection
//! holds no buffer ([`crate::shard::socket`]).
//!
//! A WebSocket connection first answers its HTTP upgrade; from then on the
//! reader passes what the socket gives through the connection's
//! [`Framing`] before decoding, and the writer wraps each flush in one
//! binary frame. Above that layer, the MQTT code is the same for both.
//! TLS is one more layer of the `Framing`, under the WebSocket one for
//! wss; its handshake runs while the CONNECT is awaited, on the shard that
//! accepted the connection ([`crate::shard::tls`] says why).
//!
//! The code is split along the connection's life, one file per stage:
//!
//! - [`handle`]: the shard's side, [`ConnHandle`], through which the shard
//!   queues output, wakes the task and closes the connection;
//! - [`accept`](mod@accept): the handshake (PROXY header, TLS, WebSocket upgrade,
//!   CONNECT, authentication) and the hand-over to the home shard;
//! - this file: [`Connection`], what the served connection's task holds,
//!   and the task itself, which runs the read path and the write path
//!   together and then closes;
//! - [`read`]: the read path, from readiness to packets handed to the
//!   shard;
//! - [`write`](mod@write): the write path, from the output the shard queued to the
//!   socket;
//! - [`close`]: what happens after the goodbye: shutting the socket down,
//!   and the linger that keeps a reset from destroying the goodbye.
//! - [`park`]: a plain TCP connection idle for a moment ends its task and
//!   waits as plain data in the shard's table, watched by one epoll
//!   instance per shard, until input, output or a close starts a task again.

mod accept;
mod close;
mod handle;
mod park;
mod read;
mod write;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use monoio::net::TcpStream;
use tracing::{debug, info};

use crate::abuse::publish::PublishRate;
use crate::shard::framing::Framing;
use crate::shard::limit::ConnectionPermit;
use crate::shard::socket::Input;
use crate::shard::state::ShardState;

pub(super) use accept::refuse;
pub use accept::{accept, serve_handoff};
pub use handle::{CloseReason, ConnHandle};
pub use park::{Parking, park_loop};
use read::Stopped;
pub(super) use read::read_more;

/// How long a closing connection's writer gets to flush the goodbye. A
/// peer that stopped reading would otherwise block the write, and hold
/// the socket and its buffers, for ever.
const WRITE_GRACE: Duration = Duration::from_secs(5);

/// A served connection: what its task holds for the connection's life.
///
/// One task reads and writes. It runs a reader, which decodes and hands
/// packets to the shard, and a writer, which flushes whatever the shard
/// appended to the connection's output, each waiting on its own; a task
/// each would cost a second task and a second copy of what both use.
struct Connection {
    state: Rc<RefCell<ShardState>>,
    conn: Rc<ConnHandle>,
    /// Only waited on for readiness: reading and writing go through the
    /// descriptor ([`crate::shard::socket`]).
    stream: TcpStream,
    /// Used by the reader, which feeds it and may owe a pong, and the
    /// writer, which frames the output; neither holds it across an await.
    framing: Option<Box<RefCell<Framing>>>,
    keep_alive: Option<Duration>,
    peer: SocketAddr,
    client_id: ByteString,
    /// Set when reading stopped because the connection is closing while
    /// the client may still be sending: the writer then shuts down only
    /// its own direction after the goodbye, and the rest is read and
    /// dropped ([`Connection::linger`]).
    lingers: Cell<bool>,
    /// Set by a read that got bytes and a write that sent some; taken by
    /// the reader when asked to park, so a connection busy meanwhile stays
    /// ([`park`]).
    active: Cell<bool>,
    /// Counts against the connection limit until the connection ends.
    _permit: ConnectionPermit,
}

// The futures a connection waits in for its whole life are `fn`s returning
// `async move` blocks: a block uses what it captures in place, while an
// `async fn` holds its arguments twice (as captured, and again moved into
// its body).
impl Connection {
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn holds its arguments twice"
    )]
    fn run(
        self,
        mut input: Input,
        publishes: Option<Box<PublishRate>>,
    ) -> impl Future<Output = ()> {
        async move {
            // The writer borrows the connection until it is dropped, and a
            // connection that parks moves out of the task.
            let parks = 'served: {
                let mut writing = pin!(self.write_loop());
                let mut written_all = false;
                let stopped = if self.conn.is_closing() {
                    Stopped::Closing {
                        client_may_send: true,
                    }
                } else {
                    let mut reading = pin!(self.read_loop(&mut input, publishes));
                    // Reading first: when the connection starts closing, the
                    // reader sees it and says whether to linger before the
                    // writer sends the goodbye and shuts the socket down.
                    std::future::poll_fn(|cx| {
                        let read = reading.as_mut().poll(cx);
                        if read.is_pending() && !written_all {
                            written_all = writing.as_mut().poll(cx).is_ready();
                        }
                        read
                    })
                    .await
                };
                let client_may_send = match stopped {
                    Stopped::Idle { fd, publishes } => break 'served Some((fd, publishes)),
                    Stopped::Closing { client_may_send } => client_may_send,
                };
                self.lingers.set(client_may_send);
                let conn = &self.conn;
                self.state.borrow_mut().detach(conn, Instant::now());
                let mut flushed = written_all;
                if !written_all {
                    let grace = self
                        .state
                        .borrow_mut()
                        .deadlines
                        .alarm(Instant::now() + WRITE_GRACE);
                    flushed = grace.on(writing).await.is_some();
                    if !flushed {
                        debug!(client = %self.client_id, peer = %self.peer, "peer not reading; resetting the connection");
                        // SAFETY: `self.stream` owns the descriptor and is alive.
                        let fd = unsafe { BorrowedFd::borrow_raw(conn.fd()) };
                        // Unsent bytes are discarded (RST on close) rather than
                        // left to a socket nobody reads.
                        let _ = socket2::SockRef::from(&fd).set_linger(Some(Duration::ZERO));
                    }
                }
                self.state.borrow_mut().connection_closed();
                let reason = conn.close_reason().unwrap_or(CloseReason::ClientClosed);
                info!(
                    client = %self.client_id,
                    version = conn.version.level(),
                    peer = %self.peer,
                    ?reason,
                    "client disconnected"
                );
                if flushed && self.lingers.get() {
                    // Boxed: only a closing connection needs its room.
                    Box::pin(self.linger()).await;
                }
                None
            };
            if let Some((fd, publishes)) = parks {
                self.park(fd, publishes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what a function returns: a connection's task is the
    /// future `Connection::run` returns, whose type has no name.
    fn returned_size<A, B, C, R>(_: fn(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// What every connection holds, in fixed-size parts: its session's slot
    /// (`Session` 312 bytes, the `ConnHandle` pointer and the fencing
    /// epoch: 328; 336 with a `u64` packet-size limit, 368 while it kept a
    /// second filter set) and its
    /// `ConnHandle` behind an `Rc` (104 bytes and two counts); then, while
    /// it is served, its task's future (616 in a test build, 648 since the
    /// task carries the client's PUBLISH rate and its parking outcome), or
    /// while it is parked, its entry in the shard's table of parked
    /// connections ([`park::Parked`] in a slab slot, no task). Heap the
    /// session and the task point to (queues, filters, the client id) comes
    /// on top. Upper bounds, and only where they were measured, since std's
    /// type sizes differ between targets: a field that pushes one past its
    /// bound has to say what it is worth.
    #[test]
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    fn what_a_connection_holds_stays_small() {
        use std::mem::size_of;
        let slot = size_of::<super::super::state::SessionSlot>();
        let handle = size_of::<ConnHandle>();
        let task = returned_size(Connection::run);
        // A slab slot is the entry or the next vacant key, as an `Option`.
        let parked = size_of::<Option<park::Parked>>();
        assert!(slot <= 328, "session slot grew to {slot} bytes");
        assert!(handle <= 104, "ConnHandle grew to {handle} bytes");
        assert!(task <= 648, "connection task grew to {task} bytes");
        assert!(parked <= 144, "a parked entry grew to {parked} bytes");
        let total = slot + handle + 16 + task;
        assert!(total <= 1096, "a served connection holds {total} bytes");
        let idle = slot + handle + 16 + parked;
        assert!(idle <= 592, "a parked connection holds {idle} bytes");
    }
}
