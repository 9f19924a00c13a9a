//! The read path: readiness, a non-blocking read, decoding, and the
//! packets handed to the shard in one borrow.

use std::cell::RefCell;
use std::os::fd::{OwnedFd, RawFd};
use std::pin::pin;
use std::task::Poll;
use std::time::Instant;

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use tracing::debug;

use crate::abuse::publish::{PublishLimit, PublishRate};
use crate::protocol::{self, DecodeError, Packet, ProtocolVersion, ReasonCode};
use crate::shard::abuse;
use crate::shard::deadline;
use crate::shard::framing::{Framing, FramingError};
use crate::shard::socket::{self, Input, READ_CHUNK, Received};

use super::handle::Wake;
use super::{CloseReason, Connection};

/// Why a connection's reader stopped.
pub(super) enum Stopped {
    /// The connection is closing. `client_may_send` when reading stopped
    /// because of that, not at the end of the stream: the client may still
    /// be sending ([`Connection::linger`]).
    Closing { client_may_send: bool },
    /// Idle: the connection parks on `fd`, a descriptor of its own, with
    /// the client's PUBLISH rate ([`super::park`]).
    Idle {
        fd: OwnedFd,
        publishes: Option<Box<PublishRate>>,
    },
}

impl Stopped {
    const CLIENT_MAY_SEND: Stopped = Stopped::Closing {
        client_may_send: true,
    };
}

/// Answers a client may leave unread before the broker stops reading its
/// requests; well above what a client that reads while it sends runs up.
const MAX_UNANSWERED: usize = 1024;

impl Connection {
    /// Reads until the connection closes or parks. `publishes` is the
    /// client's PUBLISH rate, handed back when the connection parks.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn holds its arguments twice"
    )]
    pub(super) fn read_loop<'a>(
        &'a self,
        input: &'a mut Input,
        mut publishes: Option<Box<PublishRate>>,
    ) -> impl Future<Output = Stopped> + 'a {
        async move {
            let conn = &self.conn;
            // The last read took all the room it had: the socket probably
            // holds more, so it is read again without waiting for
            // readiness (only for the shard's other tasks).
            let mut more = false;
            // In the shard's queue of connections that may park: asked once
            // per `park_after` at most, however busy the connection is.
            let mut candidate = false;
            loop {
                let paused = match self.hand_over(input, &mut publishes) {
                    Ok(paused) => paused,
                    Err(error) => {
                        debug!(%error, "malformed packet");
                        self.state
                            .borrow_mut()
                            .handle_malformed(conn, error.reason_code());
                        return Stopped::CLIENT_MAY_SEND;
                    }
                };
                if conn.is_closing() {
                    return Stopped::CLIENT_MAY_SEND;
                }
                // A client sending requests (a PINGREQ flood) while it does
                // not read the answers would grow them without bound: it is
                // not read from until its writer has made room. Its
                // keep-alive runs meanwhile. Answers held behind an
                // unconfirmed ticket count too (a client ignoring Receive
                // Maximum while the cluster acknowledges): the confirmation
                // pumps them out, and their write wakes this loop.
                while self.state.borrow().unanswered(conn) > MAX_UNANSWERED {
                    let written = pin!(conn.wakes.wait(Wake::Written));

                    if deadline::first(written, |cx| conn.wakes.poll(Wake::Close, cx))
                        .await
                        .is_none()
                    {
                        return Stopped::CLIENT_MAY_SEND;
                    }
                }
                // Past its PUBLISH rate, the client is not read (its
                // packets wait in the socket, and any left undecoded in
                // `input`) until the rate allows.
                if let Some(paused) = paused {
                    let keep_alive = self.keep_alive.map(|timeout| (&**conn, timeout));
                    let closing = conn.wakes.wait(Wake::Close);
                    // Boxed: only a throttled client waits here.
                    if !Box::pin(abuse::pause(&self.state, paused, keep_alive, closing)).await {
                        return Stopped::CLIENT_MAY_SEND;
                    }
                    continue;
                }

                let result = loop {
                    if more {
                        yield_now().await;
                    } else {
                        // Whether it may park is decided when asked: output
                        // queued now is usually written before then.
                        let park_after = (self.framing.is_none() && !candidate)
                            .then(|| self.state.borrow().parking_delay())
                            .flatten();
                        if let Some(park_after) = park_after {
                            let at = Instant::now() + park_after;
                            self.state.borrow_mut().parking.candidate(conn, at);
                            candidate = true;
                        }
                        let mut readable = pin!(self.stream.readable(false));
                        let woken = std::future::poll_fn(|cx| match readable.as_mut().poll(cx) {
                            Poll::Ready(result) => Poll::Ready(Ok(result)),
                            Poll::Pending => {
                                conn.wakes.poll_either(Wake::Close, Wake::Park, cx).map(Err)
                            }
                        });
                        match woken.await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => {
                                conn.close(CloseReason::SocketError);
                                return Stopped::Closing {
                                    client_may_send: false,
                                };
                            }
                            Err(Wake::Park) => {
                                candidate = false;
                                // Busy since it was queued: asked again later.
                                if !self.active.replace(false)
                                    && self.may_park(input)
                                    && let Some(fd) = self.park_fd()
                                {
                                    return Stopped::Idle { fd, publishes };
                                }
                                continue;
                            }
                            Err(_) => return Stopped::CLIENT_MAY_SEND,
                        }
                    }
                    match read_mqtt(conn.fd(), input, self.framing.as_deref()) {
                        Ok(Received::Nothing) => more = false,
                        Ok(Received::Bytes { filled }) => {
                            more = filled;
                            self.active.set(true);
                            break Ok(());
                        }
                        Ok(Received::Closed) => break Err(ReadEnd::Closed),
                        Err(end) => break Err(end),
                    }
                };
                if let Some(framing) = &self.framing
                    && framing.borrow().has_output()
                {
                    // A pong or a close frame to send.
                    conn.wakes.raise(Wake::Write);
                }
                if let Err(end) = result {
                    if let ReadEnd::Framing(error) = &end {
                        debug!(%error, "websocket or tls session closed");
                    }
                    conn.close(end.close_reason());
                    return Stopped::Closing {
                        client_may_send: false,
                    };
                }
            }
        }
    }

    /// Whether this connection may park now: plain TCP, nothing read and
    /// not decoded, nothing queued for the client, and parking on here.
    fn may_park(&self, input: &Input) -> bool {
        self.framing.is_none()
            && input.is_empty()
            && self.conn.buffered() == 0
            && !self.conn.is_closing()
            && self.state.borrow().parking.is_on()
    }

    /// Decodes everything buffered (a client may pipeline many packets into
    /// one segment) and hands it to the shard in one borrow. Past the
    /// client's PUBLISH rate, the rest stays in `input`, and the pause it
    /// needs is returned, decided at the same instant as the decoding
    /// stopped (asked later, the rate could allow more, and the reader
    /// would wait on a socket with nothing left to read).
    fn hand_over(
        &self,
        input: &mut Input,
        publishes: &mut Option<Box<PublishRate>>,
    ) -> Result<Option<(Instant, PublishLimit)>, DecodeError> {
        let conn = &*self.conn;
        let mut state = self.state.borrow_mut();
        let max_packet_size = state.config().max_packet_size;
        let mut malformed = None;
        let bytes = input.bytes();
        let now = Instant::now();
        let mut next = || {
            abuse::next_packet(publishes, now, bytes, |bytes| {
                decode(bytes, conn.version, max_packet_size, &mut malformed)
            })
        };
        if let Some(first) = next() {
            // Keep-alive is about control packets, not bytes: a client
            // dribbling a packet that never completes is as silent as one
            // sending nothing, and must not hold its read buffer for ever.
            if let Some(timeout) = self.keep_alive {
                conn.heard_from(now, timeout);
            }
            state.handle_packets(
                conn,
                std::iter::once(first).chain(std::iter::from_fn(next)),
                now,
            );
        }
        input.settle();
        match malformed {
            Some(error) => Err(error),
            None => Ok(publishes.as_ref().and_then(|rate| rate.paused(now))),
        }
    }
}

/// Lets the shard's other tasks run before this one goes on: a client that
/// keeps its socket full must not keep the rest of the shard waiting.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// The next whole packet in `bytes`, if there is one; a decoding error
/// ends the packets and is left in `malformed`.
fn decode(
    bytes: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
    malformed: &mut Option<DecodeError>,
) -> Option<Packet> {
    if malformed.is_some() {
        return None;
    }
    protocol::read(bytes, version, max_packet_size).unwrap_or_else(|error| {
        *malformed = Some(error);
        None
    })
}

/// Why a connection's reading ended.
pub(super) enum ReadEnd {
    Closed,
    SocketError,
    Framing(FramingError),
}

impl ReadEnd {
    fn close_reason(&self) -> CloseReason {
        match self {
            ReadEnd::Closed => CloseReason::ClientClosed,
            ReadEnd::Framing(error) if error.is_close() => CloseReason::ClientClosed,
            ReadEnd::SocketError => CloseReason::SocketError,
            ReadEnd::Framing(_) => CloseReason::Server(ReasonCode::ProtocolError),
        }
    }
}

/// Reads from the socket once, without waiting, and appends to `input` the
/// MQTT bytes that arrived: all of them over TCP; over WebSocket or TLS,
/// the payloads of the messages or records they complete, perhaps none.
pub(super) fn read_mqtt(
    fd: RawFd,
    input: &mut Input,
    websocket: Option<&RefCell<Framing>>,
) -> Result<Received, ReadEnd> {
    let Some(framing) = websocket else {
        return input.recv(fd).map_err(|_| ReadEnd::SocketError);
    };
    // The frames are only passed through: tungstenite keeps what it needs.
    let (wire, received) = socket::recv_arena(fd).map_err(|_| ReadEnd::SocketError)?;
    if let Received::Bytes { .. } = received {
        framing
            .borrow_mut()
            .handle_wire(&wire, input.bytes())
            .map_err(ReadEnd::Framing)?;
    }
    Ok(received)
}

/// Reads into the spare capacity after what `buf` already holds: a partial
/// packet left from the previous read must be extended, not overwritten
/// (monoio reads into a whole `BytesMut` from its start).
pub(in crate::shard) async fn read_more(
    reader: &mut impl AsyncReadRent,
    mut buf: BytesMut,
) -> (std::io::Result<usize>, BytesMut) {
    buf.reserve(READ_CHUNK);
    let (filled, capacity) = (buf.len(), buf.capacity());
    let (result, spare) = reader.read(buf.slice_mut(filled..capacity)).await;
    (result, spare.into_inner())
}
