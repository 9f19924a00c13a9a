//! Idle connections that hold no task.
//!
//! A served connection's task (its future, monoio's 80-byte `TcpStream`
//! and its shared descriptor, the io_uring slot of the readiness poll it
//! waits in) was about 700 of the 1,450 bytes an idle connection cost
//! (PERF.md, "The gap to Mosquitto"). So a plain TCP connection that has
//! been idle for `park_after_ms` ends its task and is *parked*: what the
//! next task needs stays in this shard's table ([`Parked`]: the descriptor,
//! the [`ConnHandle`], the keep-alive, the client's PUBLISH rate, the
//! permit and what the disconnect log line names), and one epoll instance
//! per shard watches the parked sockets. The shard's park task waits for
//! that epoll descriptor in the shard's own driver (an io_uring poll, or
//! the legacy driver's epoll), so one wait covers every parked connection
//! under either driver. When it fires, the task takes the ready sockets
//! with a non-blocking `epoll_wait` and starts a fresh task for each; the
//! task reads what arrived (or the end of the stream) as usual.
//!
//! The shard reaches a parked connection only through its `ConnHandle`:
//! output queued for it, a close, a keep-alive expiry (the deadline heap
//! still holds it) raise its wakes as for a live task, and the waker a
//! parked connection leaves there names it by its key in this table, so
//! the park task starts its task again ([`waker`]).
//!
//! Hysteresis: a connection is a candidate once it waits for input with
//! nothing pending; the shard's tick asks it to park once `park_after_ms`
//! has passed since it last read or wrote, and a connection that was busy
//! meanwhile stays and is asked again later. A busy connection therefore
//! keeps its task and today's fast path, and pays one queue entry per
//! `park_after_ms` at most. The delay measured, 200 ms, is two shard
//! ticks: long enough that a client in a conversation keeps its task,
//! short enough that a burst of new idle connections does not hold a task
//! each for long (the memory they free is what the next ones reuse). A
//! client that sends less often than that parks between its messages and
//! pays a park and a wake-up for each (PERF.md, "Idle connections without
//! a task": 1.31x the broker CPU per message at 2 messages a second
//! each), and saturated QoS 1 pairs saw 30% more latency with parking on,
//! not yet explained; so parking is off (0) unless an operator turns it
//! on. TLS and WebSocket connections keep their tasks
//! for now: their framing state is larger, and the idle figures that
//! matter most are plain MQTT's.
//!
//! Why a descriptor of its own: the task's `TcpStream` cannot be turned
//! back into a plain descriptor while its cancelled poll is still in the
//! ring (monoio holds the descriptor until the kernel answers the cancel,
//! and `into_raw_fd` panics meanwhile). So a parking connection duplicates
//! its descriptor and lets the task's copy close when monoio is done with
//! it; where no descriptor is left to duplicate (at the open-file limit),
//! the connection does not park.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::time::{Duration, Instant};

use bytestring::ByteString;
use monoio::net::TcpStream;
use slab::Slab;
use tracing::{info, warn};

use crate::abuse::publish::PublishRate;
use crate::shard::deadline;
use crate::shard::limit::ConnectionPermit;
use crate::shard::socket::Input;
use crate::shard::state::ShardState;

use super::{CloseReason, ConnHandle, Connection};

/// Events taken per `epoll_wait`; more are taken by calling again.
const EVENTS: usize = 256;

/// A shard's parked connections and the epoll instance that watches them.
#[derive(Default)]
pub struct Parking {
    /// `None` until the park task watches it: no task, no parking.
    epoll: Option<OwnedFd>,
    parked: Slab<Parked>,
    /// Connections waiting for input with nothing pending, and when each
    /// may park, roughly oldest first (a connection asked too early comes
    /// back with its own later time).
    candidates: VecDeque<(Instant, Weak<ConnHandle>)>,
}

/// What a parked connection keeps until its next task.
pub(super) struct Parked {
    pub fd: OwnedFd,
    pub conn: Rc<ConnHandle>,
    pub keep_alive: Option<Duration>,
    pub peer: SocketAddr,
    pub client_id: ByteString,
    pub publishes: Option<Box<PublishRate>>,
    pub permit: ConnectionPermit,
}

impl Parking {
    /// Whether connections may park on this shard.
    pub fn is_on(&self) -> bool {
        self.epoll.is_some()
    }

    /// Parked connections, for the gauge.
    pub fn len(&self) -> usize {
        self.parked.len()
    }

    /// `conn`, waiting for input with nothing pending, may park at `at`.
    pub(super) fn candidate(&mut self, conn: &Rc<ConnHandle>, at: Instant) {
        self.candidates.push_back((at, Rc::downgrade(conn)));
    }

    /// The candidates whose time has come at `now`, taken off the queue;
    /// each is asked to park, and decides itself whether it still may.
    pub fn due(&mut self, now: Instant) -> Vec<Rc<ConnHandle>> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.candidates.front()
            && *at <= now
        {
            if let Some((_, conn)) = self.candidates.pop_front()
                && let Some(conn) = conn.upgrade()
            {
                due.push(conn);
            }
        }
        due
    }

    /// Puts `parked` in the table and its socket under watch; gives it back
    /// if the socket cannot be watched.
    fn park(&mut self, parked: Parked) -> Result<usize, Box<Parked>> {
        let Some(epoll) = &self.epoll else {
            return Err(Box::new(parked));
        };
        let fd = parked.fd.as_raw_fd();
        let entry = self.parked.vacant_entry();
        let key = entry.key();
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: key as u64,
        };
        // SAFETY: both descriptors are open; `event` is a valid epoll_event.
        let added =
            unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if added != 0 {
            return Err(Box::new(parked));
        }
        entry.insert(parked);
        Ok(key)
    }

    /// Takes parked connection `key` out of the table and from under watch,
    /// if it is still parked.
    fn unpark(&mut self, key: usize) -> Option<Parked> {
        let parked = self.parked.try_remove(key)?;
        if let Some(epoll) = &self.epoll {
            // SAFETY: both descriptors are open; a null event is allowed
            // for EPOLL_CTL_DEL. A failure leaves nothing to undo: the
            // descriptor leaves every epoll set when it closes.
            unsafe {
                libc::epoll_ctl(
                    epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    parked.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                );
            }
        }
        Some(parked)
    }

    /// Appends to `keys` the parked connections whose sockets are ready,
    /// without waiting.
    fn ready(&self, keys: &mut Vec<usize>) {
        let Some(epoll) = &self.epoll else {
            return;
        };
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        loop {
            // SAFETY: `events` has room for EVENTS entries; timeout 0 does
            // not block.
            let n = unsafe {
                libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), EVENTS as i32, 0)
            };
            let Ok(n) = usize::try_from(n) else {
                return;
            };
            keys.extend(events[..n].iter().map(|event| event.u64 as usize));
            if n < EVENTS {
                return;
            }
        }
    }

    /// Creates the epoll instance; returns a second descriptor of it for
    /// the park task to wait on in the shard's driver.
    fn watch(&mut self) -> io::Result<OwnedFd> {
        // SAFETY: epoll_create1 takes no pointer.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just created and owned by nobody else.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        let waited = epoll.try_clone()?;
        self.epoll = Some(epoll);
        Ok(waited)
    }
}

thread_local! {
    /// Keys of parked connections whose wakes were raised, for the park
    /// task: a raise happens inside the shard state's borrow, so the waker
    /// cannot take the connection out of the table itself.
    static WOKEN: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    /// The park task, while it waits.
    static PARK_TASK: Cell<Option<Waker>> = const { Cell::new(None) };
}

/// The waker a parked connection leaves in its wakes: its key, and no
/// allocation. Waking it queues the key for the park task. A `ConnHandle`
/// is not `Send`, so its wakes are only raised on the shard's thread,
/// which is the one whose queue this is.
fn waker(key: usize) -> Waker {
    // SAFETY: the vtable's functions only read the data as a number.
    unsafe { Waker::from_raw(raw_waker(key)) }
}

fn raw_waker(key: usize) -> RawWaker {
    static VTABLE: RawWakerVTable = RawWakerVTable::new(
        |data| raw_waker(data.addr()),
        |data| woken(data.addr()),
        |data| woken(data.addr()),
        |_| {},
    );
    RawWaker::new(std::ptr::without_provenance(key), &VTABLE)
}

fn woken(key: usize) {
    WOKEN.with_borrow_mut(|woken| woken.push(key));
    if let Some(task) = PARK_TASK.take() {
        task.wake();
    }
}

fn poll_woken(cx: &mut Context<'_>) -> Poll<()> {
    if WOKEN.with_borrow(|woken| !woken.is_empty()) {
        return Poll::Ready(());
    }
    PARK_TASK.set(Some(cx.waker().clone()));
    Poll::Pending
}

/// The shard's park task: starts a task again for each parked connection
/// whose socket is ready or whose wakes were raised.
pub async fn park_loop(state: Rc<RefCell<ShardState>>) {
    if state.borrow().config().park_after.is_none() {
        return;
    }
    let watched = state.borrow_mut().parking.watch();
    // Not a TCP stream: monoio only offers readiness on its stream types,
    // and an epoll descriptor is readable while it holds ready events.
    let epoll = match watched.and_then(|fd| TcpStream::from_std(std::net::TcpStream::from(fd))) {
        Ok(epoll) => epoll,
        Err(error) => {
            state.borrow_mut().parking.epoll = None;
            warn!(%error, "cannot watch parked connections; idle connections keep their tasks");
            return;
        }
    };
    let mut ready = Vec::new();
    loop {
        let readable = pin!(epoll.readable(false));
        if let Some(Err(error)) = deadline::first(readable, poll_woken).await {
            warn!(%error, "parked connections can no longer be watched");
            return;
        }
        state.borrow().parking.ready(&mut ready);
        WOKEN.with_borrow_mut(|woken| ready.append(woken));
        for key in ready.drain(..) {
            let parked = state.borrow_mut().parking.unpark(key);
            if let Some(parked) = parked {
                resume(&state, parked);
            }
        }
    }
}

/// Starts a task for a connection that was parked, or could not park.
fn resume(state: &Rc<RefCell<ShardState>>, parked: Parked) {
    let Parked {
        fd,
        conn,
        keep_alive,
        peer,
        client_id,
        publishes,
        permit,
    } = parked;
    conn.wakes.unpark();
    let stream = match TcpStream::from_std(std::net::TcpStream::from(fd)) {
        Ok(stream) => stream,
        Err(error) => {
            // The descriptor closed with the error; what the task's end
            // would have done is done here.
            warn!(%error, client = %client_id, %peer, "cannot resume a parked connection");
            conn.close(CloseReason::SocketError);
            let mut state = state.borrow_mut();
            state.detach(&conn, Instant::now());
            state.connection_closed();
            info!(client = %client_id, %peer, reason = ?CloseReason::SocketError, "client disconnected");
            return;
        }
    };
    let connection = Connection {
        state: state.clone(),
        conn,
        stream,
        framing: None,
        keep_alive,
        peer,
        client_id,
        lingers: Cell::new(false),
        active: Cell::new(false),
        _permit: permit,
    };
    monoio::spawn(connection.run(Input::default(), publishes));
}

impl Connection {
    /// Ends this task and leaves the connection in the shard's table, on
    /// `fd`, a descriptor of its own ([`Connection::park_fd`]).
    pub(super) fn park(self, fd: OwnedFd, publishes: Option<Box<PublishRate>>) {
        let Connection {
            state,
            conn,
            stream,
            keep_alive,
            peer,
            client_id,
            _permit: permit,
            ..
        } = self;
        // The task's descriptor closes once monoio has its poll back.
        drop(stream);
        conn.set_fd(fd.as_raw_fd());
        let parked = Parked {
            fd,
            conn: conn.clone(),
            keep_alive,
            peer,
            client_id,
            publishes,
            permit,
        };
        let key = state.borrow_mut().parking.park(parked);
        match key {
            Ok(key) => {
                if !conn.wakes.park(waker(key)) {
                    // Output or a close came first.
                    woken(key);
                }
            }
            Err(parked) => resume(&state, *parked),
        }
    }

    /// A descriptor of this connection's own, to park on, if one is left.
    pub(super) fn park_fd(&self) -> Option<OwnedFd> {
        // SAFETY: the stream owns the descriptor and is alive.
        let fd: RawFd = self.conn.fd();
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        borrowed.try_clone_to_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    /// The delay measured (`--park-after-ms 200`).
    const PARK_AFTER: Duration = Duration::from_millis(200);

    use super::*;
    use crate::protocol::ProtocolVersion;

    fn conn(id: u64) -> Rc<ConnHandle> {
        Rc::new(ConnHandle::new(id, 0, ProtocolVersion::V5, -1))
    }

    #[test]
    fn candidates_are_asked_once_their_time_has_come() {
        let start = Instant::now();
        let mut parking = Parking::default();
        let (a, b) = (conn(1), conn(2));
        parking.candidate(&a, start + PARK_AFTER);
        parking.candidate(&b, start + 2 * PARK_AFTER);
        assert!(parking.due(start).is_empty());
        let due = parking.due(start + PARK_AFTER);
        assert_eq!(due.iter().map(|c| c.id).collect::<Vec<_>>(), [1]);
        assert!(parking.due(start + PARK_AFTER).is_empty(), "asked once");
        drop(due);
        drop(b);
        assert!(
            parking.due(start + 3 * PARK_AFTER).is_empty(),
            "an ended connection leaves nothing"
        );
        assert!(parking.candidates.is_empty());
    }

    #[test]
    fn a_parked_connection_waits_in_the_table_until_its_socket_is_ready() {
        use std::io::Write;
        use std::os::unix::net::UnixStream;

        let mut parking = Parking::default();
        let _waited = parking.watch().expect("epoll");
        let (ours, mut theirs) = UnixStream::pair().expect("socketpair");
        let conn = conn(1);
        let parked = Parked {
            fd: OwnedFd::from(ours),
            conn: conn.clone(),
            keep_alive: None,
            peer: "127.0.0.1:1".parse().expect("address"),
            client_id: ByteString::from("c"),
            publishes: None,
            permit: crate::shard::limit::ConnectionLimit::new(0)
                .admit()
                .expect("permit"),
        };
        let key = parking.park(parked).ok().expect("parked");
        assert_eq!(parking.len(), 1);
        let mut keys = Vec::new();
        parking.ready(&mut keys);
        assert!(keys.is_empty(), "nothing to read yet");

        theirs.write_all(b"x").expect("write");
        parking.ready(&mut keys);
        assert_eq!(keys, [key]);
        keys.clear();
        parking.ready(&mut keys);
        assert!(keys.is_empty(), "one shot");

        let parked = parking.unpark(key).expect("still parked");
        assert!(Rc::ptr_eq(&parked.conn, &conn));
        assert!(parking.unpark(key).is_none(), "taken once");
        assert_eq!(parking.len(), 0);
    }

    #[test]
    fn a_parked_connections_waker_queues_its_key() {
        let conn = conn(1);
        assert!(conn.wakes.park(waker(7)));
        conn.send_encoded(b"\xd0\x00");
        assert_eq!(WOKEN.with_borrow_mut(std::mem::take), [7]);
        conn.close(CloseReason::SocketError);
        assert!(WOKEN.with_borrow(Vec::is_empty), "woken once");
        // Output already raised: the connection does not park.
        assert!(!conn.wakes.park(waker(8)));
    }
}
