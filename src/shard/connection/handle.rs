//! The shard's handle on a connection, and what wakes the connection's
//! task.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tracing::warn;

use crate::protocol::{Disconnect, DisconnectProperties, Packet, ProtocolVersion, ReasonCode};
use crate::shard::deadline::Deadline;
use crate::shard::socket::{self};
use crate::shard::state::SessionKey;

/// The shard's handle on a live connection: where packets for the client
/// are encoded, and how its writer is woken or told to close.
pub struct ConnHandle {
    /// Distinguishes this connection from a later one of the same session.
    pub id: u64,
    pub key: SessionKey,
    pub version: ProtocolVersion,
    /// Changes when the connection parks ([`super::park`]), which moves
    /// the socket to a descriptor of its own.
    fd: Cell<RawFd>,
    pub(super) out: RefCell<BytesMut>,
    pub(super) wakes: Wakes,
    /// When the client's keep-alive runs out, if it has one
    /// ([`crate::shard::deadline`]).
    deadline: Cell<Option<Instant>>,
    closing: Cell<bool>,
    /// Why the connection ended, for the disconnect log line; the first
    /// reason recorded wins.
    why: Cell<Option<CloseReason>>,
}

/// What wakes a connection's task, one bit each.
#[derive(Debug, Clone, Copy)]
pub(super) enum Wake {
    /// Output was appended, or the connection is closing: the writer
    /// flushes.
    Write = 1,
    /// The writer wrote: there may be room for answers the reader is
    /// waiting to make.
    Written = 2,
    /// The connection is closing: the reader stops waiting for the client.
    Close = 4,
    /// The connection has been idle a while: the reader parks it if it
    /// still is ([`super::park`]).
    Park = 8,
}

/// Wake-ups for a connection's task. It waits on up to three things at
/// once, but it is one task: one waker does, where a
/// [`LocalNotify`](crate::shard::notify::LocalNotify) each would hold three copies
/// of it in every connection. Raising a wake that
/// is already raised wakes nothing; a wake raised with no one waiting is
/// kept for the next wait.
#[derive(Default)]
pub(super) struct Wakes {
    raised: Cell<u8>,
    waker: Cell<Option<Waker>>,
}

impl Wakes {
    pub(super) fn raise(&self, wake: Wake) {
        let raised = self.raised.get();
        self.raised.set(raised | wake as u8);
        if raised & wake as u8 == 0
            && let Some(waker) = self.waker.take()
        {
            waker.wake();
        }
    }

    /// Ready once `wake` is raised, which it lowers.
    pub(super) fn poll(&self, wake: Wake, cx: &mut Context<'_>) -> Poll<()> {
        let raised = self.raised.get();
        if raised & wake as u8 != 0 {
            self.raised.set(raised & !(wake as u8));
            return Poll::Ready(());
        }
        self.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }

    /// Ready once `a` or `b` is raised, which it lowers (`a` first if both
    /// are).
    pub(super) fn poll_either(&self, a: Wake, b: Wake, cx: &mut Context<'_>) -> Poll<Wake> {
        let raised = self.raised.get();
        for wake in [a, b] {
            if raised & wake as u8 != 0 {
                self.raised.set(raised & !(wake as u8));
                return Poll::Ready(wake);
            }
        }
        self.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }

    /// Hands the wake-ups of a connection whose task ended to `waker`,
    /// dropping the task's own (which would keep the ended task's memory
    /// alive). Returns `false`, with nothing changed, when output or a
    /// close is already raised: the connection needs its task now.
    pub(super) fn park(&self, waker: Waker) -> bool {
        if self.raised.get() & (Wake::Write as u8 | Wake::Close as u8) != 0 {
            return false;
        }
        // What the ended task left raised concerns nobody now.
        self.raised.set(0);
        self.waker.set(Some(waker));
        true
    }

    /// Drops the parked connection's waker: its new task sets its own.
    pub(super) fn unpark(&self) {
        self.waker.take();
    }

    pub(super) async fn wait(&self, wake: Wake) {
        std::future::poll_fn(|cx| self.poll(wake, cx)).await
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT with this reason.
    ClientDisconnect(ReasonCode),
    /// The client closed the socket without DISCONNECT.
    ClientClosed,
    /// The broker closed the connection, with this reason (sent to v5
    /// clients).
    Server(ReasonCode),
    /// The broker refused the CONNECT.
    Refused(ReasonCode),
    /// The session ended the connection for a reason of its own: a full
    /// queue under the disconnect policy.
    SessionLimit,
    SocketError,
}

impl ConnHandle {
    pub fn new(id: u64, key: SessionKey, version: ProtocolVersion, fd: RawFd) -> ConnHandle {
        ConnHandle {
            id,
            key,
            version,
            fd: Cell::new(fd),
            out: RefCell::new(BytesMut::new()),
            wakes: Wakes::default(),
            deadline: Cell::new(None),
            closing: Cell::new(false),
            why: Cell::new(None),
        }
    }

    /// Encodes `packet` after whatever is already waiting; the writer sends
    /// everything appended in this turn of the loop in one write.
    pub fn send(&self, packet: &Packet) {
        self.send_within(packet, usize::MAX);
    }

    /// Like [`ConnHandle::send`], but a packet that encodes to more than
    /// `limit` bytes is taken back out and `false` returned.
    pub fn send_within(&self, packet: &Packet, limit: usize) -> bool {
        if self.closing.get() {
            return true;
        }
        let mut out = self.out.borrow_mut();
        if out.capacity() == 0 {
            *out = socket::output_buffer();
        }
        let fits = self.encode_within(packet, limit, &mut out);
        drop(out);
        self.wakes.raise(Wake::Write);
        fits
    }

    /// Encodes `packet` for this connection at the end of `out`, unless it
    /// takes more than `limit` bytes (then `false`, and `out` is as it
    /// was). A packet that cannot be encoded closes the connection.
    pub fn encode_within(&self, packet: &Packet, limit: usize, out: &mut BytesMut) -> bool {
        let before = out.len();
        match packet.write(self.version, out) {
            Ok(written) if written > limit => {
                out.truncate(before);
                false
            }
            Ok(_) => true,
            Err(error) => {
                out.truncate(before);
                warn!(%error, packet = ?packet.packet_type(), "cannot encode packet; closing connection");
                self.close(CloseReason::Server(ReasonCode::ImplementationSpecificError));
                true
            }
        }
    }

    /// Appends packets encoded earlier ([`ConnHandle::encode_within`]).
    pub fn send_encoded(&self, encoded: &[u8]) {
        if self.closing.get() {
            return;
        }
        let mut out = self.out.borrow_mut();
        if out.capacity() == 0 {
            *out = socket::output_buffer();
        }
        out.extend_from_slice(encoded);
        drop(out);
        self.wakes.raise(Wake::Write);
    }

    /// The socket's descriptor.
    pub(super) fn fd(&self) -> RawFd {
        self.fd.get()
    }

    /// The socket moved to `fd` (a parked connection's own copy).
    pub(super) fn set_fd(&self, fd: RawFd) {
        self.fd.set(fd);
    }

    /// Bytes encoded and not yet handed to the kernel.
    pub fn buffered(&self) -> usize {
        self.out.borrow().len()
    }

    /// The packets encoded and not yet handed to the kernel, taken out.
    #[cfg(test)]
    pub fn take_packets(&self) -> Vec<Packet> {
        let mut out = std::mem::take(&mut *self.out.borrow_mut());
        std::iter::from_fn(|| crate::protocol::read(&mut out, self.version, usize::MAX).ok()?)
            .collect()
    }

    /// Records why the connection is ending, for the log, when the closing
    /// itself comes later (after a goodbye packet is queued).
    pub fn note_close_reason(&self, why: CloseReason) {
        if self.why.get().is_none() {
            self.why.set(Some(why));
        }
    }

    /// The writer flushes what is buffered, then shuts the socket down.
    pub fn close(&self, why: CloseReason) {
        self.note_close_reason(why);
        self.closing.set(true);
        self.wakes.raise(Wake::Write);
        self.wakes.raise(Wake::Close);
    }

    /// A control packet arrived at `now`: the next must come within
    /// `timeout` (one and a half keep-alives, spec 3.1.2.10).
    pub fn heard_from(&self, now: Instant, timeout: Duration) {
        self.deadline.set(Some(now + timeout));
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.why.get()
    }

    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Idle connections are asked to park now and then; each decides
    /// whether it still may ([`super::park`]).
    pub fn ask_to_park(&self) {
        self.wakes.raise(Wake::Park);
    }

    /// v5 clients are told why with a DISCONNECT; then the connection closes.
    pub fn disconnect(&self, reason: ReasonCode) {
        if self.version.is_v5() {
            self.send(&Packet::Disconnect(Box::new(Disconnect {
                reason,
                properties: DisconnectProperties::default(),
            })));
        }
        self.close(CloseReason::Server(reason));
    }
}

/// The keep-alive.
impl Deadline for ConnHandle {
    fn due(&self) -> Option<Instant> {
        if self.closing.get() {
            return None;
        }
        self.deadline.get()
    }

    fn expire(&self) {
        self.disconnect(ReasonCode::KeepAliveTimeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::notify::testing::WakeCounter;

    #[test]
    fn wakes_are_kept_apart_and_wake_the_task_once() {
        let wakes = Wakes::default();
        let (counter, waker) = WakeCounter::new();
        let mut cx = Context::from_waker(&waker);

        assert!(wakes.poll(Wake::Write, &mut cx).is_pending());
        assert!(wakes.poll(Wake::Close, &mut cx).is_pending());
        wakes.raise(Wake::Write);
        wakes.raise(Wake::Write);
        wakes.raise(Wake::Written);
        assert_eq!(counter.wakes(), 1, "one task, woken once");
        assert!(wakes.poll(Wake::Close, &mut cx).is_pending());
        assert!(wakes.poll(Wake::Write, &mut cx).is_ready());
        assert!(wakes.poll(Wake::Write, &mut cx).is_pending(), "lowered");
        // Raised while nobody waited for it: kept for the next wait.
        assert!(wakes.poll(Wake::Written, &mut cx).is_ready());
    }
}
