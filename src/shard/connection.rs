//! One client connection: reading its CONNECT wherever it was accepted,
//! moving it to its session's home shard, then one task that reads, decodes
//! and hands packets to the shard, and flushes whatever the shard appended
//! to the connection's output, in one write per wake-up. It waits for
//! readiness, then reads or writes without blocking, so an idle connection
//! holds no buffer ([`socket`]).
//!
//! A WebSocket connection first answers its HTTP upgrade; from then on the
//! reader passes what the socket gives through the connection's
//! [`Framing`] before decoding, and the writer wraps each flush in one
//! binary frame. Above that layer, the MQTT code is the same for both.
//! TLS is one more layer of the `Framing`, under the WebSocket one for
//! wss; its handshake runs while the CONNECT is awaited, on the shard that
//! accepted the connection ([`super::tls`] says why).

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use bytestring::ByteString;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use tracing::{debug, info, warn};

use super::abuse;
use super::auth::{authenticate, authenticate_identity, authorize_will};
use super::deadline::{self, Alarm, Deadline};
use super::framing::{Framing, FramingError};
use super::limit::ConnectionPermit;
use super::mesh::{ClaimOutcome, Handoff, ShardMsg};
use super::proxy;
use super::socket::{self, Input, READ_CHUNK, Received};
use super::state::{SessionKey, ShardState};
use super::tls::TlsError;
use super::websocket::{self, Upgrade};
use super::{ShardId, home_shard};
use crate::abuse::publish::{PublishLimit, PublishRate};
use crate::config::ListenerConfig;
use crate::protocol::{
    self, ConnAck, ConnAckProperties, Connect, DecodeError, Disconnect, DisconnectProperties,
    Packet, ProtocolVersion, ReasonCode,
};

/// Answers a client may leave unread before the broker stops reading its
/// requests; well above what a client that reads while it sends runs up.
const MAX_UNANSWERED: usize = 1024;

/// How long a closing connection's writer gets to flush the goodbye. A
/// peer that stopped reading would otherwise block the write, and hold
/// the socket and its buffers, for ever.
const WRITE_GRACE: Duration = Duration::from_secs(5);

/// How long a connection the broker closed keeps reading (and dropping)
/// what the client still sends, after the goodbye went out; see
/// [`Connection::linger`].
const LINGER: Duration = Duration::from_secs(2);

/// The shard's handle on a live connection: where packets for the client
/// are encoded, and how its writer is woken or told to close.
pub struct ConnHandle {
    /// Distinguishes this connection from a later one of the same session.
    pub id: u64,
    pub key: SessionKey,
    pub version: ProtocolVersion,
    fd: RawFd,
    out: RefCell<BytesMut>,
    wakes: Wakes,
    /// When the client's keep-alive runs out, if it has one
    /// ([`super::deadline`]).
    deadline: Cell<Option<Instant>>,
    closing: Cell<bool>,
    /// Why the connection ended, for the disconnect log line; the first
    /// reason recorded wins.
    why: Cell<Option<CloseReason>>,
}

/// What wakes a connection's task, one bit each.
#[derive(Debug, Clone, Copy)]
enum Wake {
    /// Output was appended, or the connection is closing: the writer
    /// flushes.
    Write = 1,
    /// The writer wrote: there may be room for answers the reader is
    /// waiting to make.
    Written = 2,
    /// The connection is closing: the reader stops waiting for the client.
    Close = 4,
}

/// Wake-ups for a connection's task. It waits on up to three things at
/// once, but it is one task: one waker does, where a
/// [`LocalNotify`](super::notify::LocalNotify) each would hold three copies
/// of it in every connection. Raising a wake that
/// is already raised wakes nothing; a wake raised with no one waiting is
/// kept for the next wait.
#[derive(Default)]
struct Wakes {
    raised: Cell<u8>,
    waker: Cell<Option<Waker>>,
}

impl Wakes {
    fn raise(&self, wake: Wake) {
        let raised = self.raised.get();
        self.raised.set(raised | wake as u8);
        if raised & wake as u8 == 0
            && let Some(waker) = self.waker.take()
        {
            waker.wake();
        }
    }

    /// Ready once `wake` is raised, which it lowers.
    fn poll(&self, wake: Wake, cx: &mut Context<'_>) -> Poll<()> {
        let raised = self.raised.get();
        if raised & wake as u8 != 0 {
            self.raised.set(raised & !(wake as u8));
            return Poll::Ready(());
        }
        self.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }

    async fn wait(&self, wake: Wake) {
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
            fd,
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

/// Reads the CONNECT of a freshly accepted connection, then serves it here
/// or hands it to its client id's home shard. `permit` is `None` when the
/// connection limit was reached: the CONNECT is still read, so the client
/// is refused in its own protocol version and learns why.
pub async fn accept(
    state: Rc<RefCell<ShardState>>,
    mut stream: TcpStream,
    mut peer: SocketAddr,
    listener: ListenerConfig,
    permit: Option<ConnectionPermit>,
) {
    // Small MQTT packets must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let (max_packet_size, connect_timeout, max_client_id_length) = {
        let state = state.borrow();
        let config = state.config();
        (
            config.max_packet_size,
            config.connect_timeout,
            config.max_client_id_length,
        )
    };
    let reject = |why: EarlyClose| state.borrow_mut().metrics.refused(why);
    // One deadline for the upgrade and the CONNECT together: a client
    // cannot buy time by dribbling either.
    let mut limit = HandshakeLimit {
        at: Instant::now() + connect_timeout,
        alarm: None,
    };
    let mut read_buf = BytesMut::new();
    if listener.proxy_protocol {
        let header_limit = state
            .borrow_mut()
            .deadlines
            .alarm(Instant::now() + proxy::HEADER_TIMEOUT);
        match header_limit.on(proxy::read_header(&mut stream)).await {
            Some(Ok((client, after))) => {
                // From here on, logs name the client, not the balancer.
                peer = client.unwrap_or(peer);
                read_buf = after;
            }
            Some(Err(error)) => {
                debug!(%peer, %error, "closing connection");
                return reject(EarlyClose::ProxyHeader);
            }
            None => {
                debug!(%peer, "no proxy protocol header within its timeout");
                return reject(EarlyClose::ProxyHeader);
            }
        }
    }
    // Closed unanswered: a flood from one address costs no CONNECT read,
    // and no TLS handshake.
    let Some(address) = abuse::admit_address(&state, peer) else {
        return;
    };
    let mut framing = match &listener.tls {
        None => None,
        Some(tls) => match tls.acceptor.session() {
            Ok(session) => Some(Framing::tls(session)),
            Err(error) => {
                warn!(%peer, %error, "cannot start a tls session");
                return;
            }
        },
    };
    if listener.transport.is_websocket() {
        let mut layers = framing.take().unwrap_or_default();
        let upgrade = upgrade(&mut stream, &mut layers, read_buf, max_packet_size);
        match limit.on(&state, upgrade).await {
            Some(Ok(mqtt)) => {
                read_buf = mqtt;
                framing = Some(layers);
            }
            Some(Err(error)) => {
                debug!(%peer, %error, "closing connection before websocket upgrade");
                tls_failed(&state, &error, &layers);
                // A TLS alert saying why, if there is one.
                let _ = write_wire(&mut stream, layers.take_output()).await;
                return reject(EarlyClose::WebSocketUpgrade);
            }
            None => {
                debug!(%peer, "no websocket upgrade within the connect timeout");
                tls_failed(&state, &HandshakeError::TimedOut, &layers);
                return reject(EarlyClose::ConnectTimeout);
            }
        }
    } else if let Some(layers) = &mut framing {
        // TLS records that came in with a PROXY header.
        let mut mqtt = BytesMut::new();
        if let Err(error) = layers.handle_wire(&read_buf, &mut mqtt) {
            debug!(%peer, %error, "closing connection before CONNECT");
            tls_failed(&state, &HandshakeError::Framing(error), layers);
            let _ = write_wire(&mut stream, layers.take_output()).await;
            return reject(EarlyClose::Malformed);
        }
        read_buf = mqtt;
    }
    // In a `RefCell` only so that this task and, once served here, the
    // connection's task use it the same way.
    let framing = framing.map(RefCell::new);
    let websocket = framing.as_ref();
    let input = Input::new(read_buf);
    let read = read_connect(
        &state,
        &mut stream,
        websocket,
        input,
        max_packet_size,
        &mut limit,
    );
    let count_tls_failure = |error: &HandshakeError| {
        if let Some(framing) = websocket {
            tls_failed(&state, error, &framing.borrow());
        }
    };
    let (mut connect, input) = match read.await {
        Ok(connected) => connected,
        Err(HandshakeError::Decode(DecodeError::UnsupportedProtocolLevel(level))) => {
            debug!(%peer, level, "unsupported protocol level");
            // Spec 3.1.2.2: answer 0x01 in the 3.1.1 form, then close.
            let reason = ReasonCode::UnsupportedProtocolVersion;
            state.borrow_mut().metrics.refused(reason);
            refuse(&mut stream, websocket, ProtocolVersion::V3_1_1, reason).await;
            return;
        }
        // A client that hung up was not refused anything.
        Err(HandshakeError::Closed) => return count_tls_failure(&HandshakeError::Closed),
        Err(HandshakeError::TimedOut) => {
            debug!(%peer, "no CONNECT within the connect timeout");
            count_tls_failure(&HandshakeError::TimedOut);
            return reject(EarlyClose::ConnectTimeout);
        }
        Err(error) => {
            debug!(%peer, %error, "closing connection before CONNECT");
            count_tls_failure(&error);
            reject(EarlyClose::Malformed);
            // A WebSocket may owe the client a close frame.
            write_framing_output(&mut stream, websocket).await;
            return;
        }
    };

    let Some(mut permit) = permit else {
        debug!(%peer, "connection limit reached; refused");
        // 0x97 names the cause: a configured limit, not a transient state
        // (0x89 Server busy); 3.1.1 can only say Server unavailable.
        let reason = ReasonCode::QuotaExceeded;
        state.borrow_mut().metrics.refused(reason);
        refuse(&mut stream, websocket, connect.protocol, reason).await;
        return;
    };
    permit.hold(address);
    if connect.client_id.len() > max_client_id_length {
        debug!(%peer, len = connect.client_id.len(), "client id too long");
        let reason = ReasonCode::ClientIdentifierNotValid;
        state.borrow_mut().metrics.refused(reason);
        refuse(&mut stream, websocket, connect.protocol, reason).await;
        return;
    }

    let authenticated = match listener.tls.as_ref() {
        Some(tls) if tls.use_identity_as_username => {
            let identity = websocket.and_then(|framing| framing.borrow().peer_identity());
            authenticate_identity(&state, &mut stream, websocket, &mut connect, peer, identity)
                .await
        }
        _ => authenticate(&state, &mut stream, websocket, &mut connect, peer).await,
    };
    if !authenticated {
        return;
    }

    let assigned_client_id = connect.client_id.is_empty();
    if assigned_client_id {
        // 3.1.1 only allows an empty client id with a clean session
        // (spec 3.1.3-8); v5 always gets one assigned.
        if !connect.clean_start && !connect.protocol.is_v5() {
            let reason = ReasonCode::ClientIdentifierNotValid;
            state.borrow_mut().metrics.refused(reason);
            refuse(&mut stream, websocket, connect.protocol, reason).await;
            return;
        }
        connect.client_id = assign_client_id(state.borrow().id());
    }
    if !authorize_will(&state, &mut stream, websocket, &connect, peer).await {
        return;
    }

    let (me, shards) = {
        let state = state.borrow();
        (state.id(), state.mesh.shard_count())
    };
    let home = home_shard(&connect.client_id, shards);
    let websocket = framing.map(RefCell::into_inner);
    if home == me {
        let arrival = Arrival {
            peer,
            connect,
            assigned_client_id,
            read_buf: input.into_bytes(),
            websocket,
            permit,
        };
        serve(state, stream, arrival);
        return;
    }
    // SAFETY: `into_raw_fd` gives up monoio's ownership of the descriptor
    // (and deregisters it from this runtime), so the `OwnedFd` is its sole
    // owner.
    let socket = unsafe { OwnedFd::from_raw_fd(stream.into_raw_fd()) };
    let mut state = state.borrow_mut();
    state.mesh.push(
        home,
        ShardMsg::Handoff(Box::new(Handoff {
            socket,
            peer,
            connect,
            assigned_client_id,
            read_buf: input.into_bytes(),
            websocket,
            permit,
        })),
    );
    state.flush();
}

/// Serves a connection another shard handed over.
pub fn serve_handoff(state: Rc<RefCell<ShardState>>, handoff: Handoff) {
    let stream = match TcpStream::from_std(std::net::TcpStream::from(handoff.socket)) {
        Ok(stream) => stream,
        Err(error) => {
            warn!(%error, peer = %handoff.peer, "cannot adopt handed-over connection");
            return;
        }
    };
    let arrival = Arrival {
        peer: handoff.peer,
        connect: handoff.connect,
        assigned_client_id: handoff.assigned_client_id,
        read_buf: handoff.read_buf,
        websocket: handoff.websocket,
        permit: handoff.permit,
    };
    serve(state, stream, arrival);
}

/// A connection whose CONNECT has been read, on its session's home shard.
struct Arrival {
    peer: SocketAddr,
    connect: Connect,
    assigned_client_id: bool,
    /// Bytes read past the CONNECT.
    read_buf: BytesMut,
    websocket: Option<Framing>,
    permit: ConnectionPermit,
}

/// Attaches a connection to its session, then leaves it to a task of its
/// own. The task that read the CONNECT ends here: a connection holds for
/// its life only what [`Connection`] needs. In a cluster the CONNECT first
/// waits, in a task of its own, until this node owns the client id and
/// holds the session the previous owner handed over; if no majority
/// confirms the claim, it is refused with Server unavailable.
fn serve(state: Rc<RefCell<ShardState>>, stream: TcpStream, arrival: Arrival) {
    let connect = &arrival.connect;
    // An assigned id is new each time: it cannot flap.
    if !arrival.assigned_client_id
        && !abuse::admit_client_id(&state, &connect.client_id, arrival.peer)
    {
        // 3.1.1 can only say Server unavailable.
        let reason = ReasonCode::ConnectionRateExceeded;
        monoio::spawn(async move { refuse_arrival(&state, stream, arrival, reason).await });
        return;
    }
    let Some(answered) = state.borrow_mut().claim(&arrival.connect) else {
        attach_and_run(state, stream, arrival, 0);
        return;
    };
    monoio::spawn(async move {
        match answered.await {
            // The shard adopted the session handed over, if any, when the
            // answer came.
            Ok(ClaimOutcome::Owner { epoch, .. }) => attach_and_run(state, stream, arrival, epoch),
            // The cluster answers every claim; a dropped answer means it
            // stopped.
            Ok(ClaimOutcome::Unavailable) | Err(_) => {
                info!(client = %arrival.connect.client_id, "CONNECT refused: no majority confirmed this node as the session's owner");
                refuse_arrival(&state, stream, arrival, ReasonCode::ServerUnavailable).await;
            }
        }
    });
}

/// Counts and refuses a CONNECT that reached its home shard.
async fn refuse_arrival(
    state: &RefCell<ShardState>,
    mut stream: TcpStream,
    arrival: Arrival,
    reason: ReasonCode,
) {
    state.borrow_mut().metrics.refused(reason);
    let framing = arrival.websocket.map(RefCell::new);
    refuse(
        &mut stream,
        framing.as_ref(),
        arrival.connect.protocol,
        reason,
    )
    .await;
}

fn attach_and_run(state: Rc<RefCell<ShardState>>, stream: TcpStream, arrival: Arrival, epoch: u64) {
    let Arrival {
        peer,
        connect,
        assigned_client_id,
        read_buf,
        websocket,
        permit,
    } = arrival;
    state.borrow_mut().connection_opened();
    let attached = state.borrow_mut().attach(
        &connect,
        assigned_client_id,
        stream.as_raw_fd(),
        epoch,
        Instant::now(),
    );
    let conn = attached.conn;
    info!(client = %connect.client_id, version = connect.protocol.level(), %peer, "client connected");

    if let Some(timeout) = attached.keep_alive {
        conn.heard_from(Instant::now(), timeout);
        state.borrow_mut().deadlines.watch(&conn);
    }
    let connection = Connection {
        state,
        conn,
        stream,
        framing: websocket.map(|framing| Box::new(RefCell::new(framing))),
        keep_alive: attached.keep_alive,
        peer,
        client_id: connect.client_id,
        lingers: Cell::new(false),
        _permit: permit,
    };
    monoio::spawn(connection.run(Input::new(read_buf)));
}

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
    /// descriptor ([`socket`]).
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
    fn run(self, mut input: Input) -> impl Future<Output = ()> {
        async move {
            let mut writing = pin!(self.write_loop());
            let mut written_all = false;
            let client_may_send = self.conn.is_closing() || {
                let mut reading = pin!(self.read_loop(&mut input));
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
                    let fd = unsafe { BorrowedFd::borrow_raw(conn.fd) };
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
        }
    }

    /// Reads and drops what the client still sends after the broker's
    /// goodbye, until it closes its side or [`LINGER`] passes. A socket
    /// closed with unread data, or that receives data once closed, makes
    /// the kernel send a reset, and the reset can destroy the goodbye (the
    /// DISCONNECT saying why) before the client has read it: a client that
    /// pipelined PUBLISHes past its Receive Maximum would see a broken pipe
    /// instead of 0x93.
    async fn linger(&self) {
        let limit = self
            .state
            .borrow_mut()
            .deadlines
            .alarm(Instant::now() + LINGER);
        let drain = async {
            while let Ok(()) = self.stream.readable(false).await {
                loop {
                    match socket::recv_arena(self.conn.fd) {
                        Ok((_, Received::Bytes { .. })) => {}
                        Ok((_, Received::Nothing)) => break,
                        Ok((_, Received::Closed)) | Err(_) => return,
                    }
                }
            }
        };
        let _ = limit.on(drain).await;
    }

    /// Returns whether the client may still be sending: reading stopped
    /// because the connection is closing, not at the end of the stream.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn holds its arguments twice"
    )]
    fn read_loop<'a>(&'a self, input: &'a mut Input) -> impl Future<Output = bool> + 'a {
        async move {
            let conn = &self.conn;
            // The last read took all the room it had: the socket probably
            // holds more, so it is read again without waiting for
            // readiness (only for the shard's other tasks).
            let mut more = false;
            let mut publishes = self
                .state
                .borrow()
                .config()
                .abuse
                .publish
                .start(Instant::now());
            loop {
                let paused = match self.hand_over(input, &mut publishes) {
                    Ok(paused) => paused,
                    Err(error) => {
                        debug!(%error, "malformed packet");
                        self.state
                            .borrow_mut()
                            .handle_malformed(conn, error.reason_code());
                        return true;
                    }
                };
                if conn.is_closing() {
                    return true;
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
                        return true;
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
                        return true;
                    }
                    continue;
                }

                let result = loop {
                    if more {
                        yield_now().await;
                    } else {
                        let readable = pin!(self.stream.readable(false));
                        let closing = |cx: &mut Context<'_>| conn.wakes.poll(Wake::Close, cx);
                        match deadline::first(readable, closing).await {
                            None => return true,
                            Some(Ok(())) => {}
                            Some(Err(_)) => {
                                conn.close(CloseReason::SocketError);
                                return false;
                            }
                        }
                    }
                    match read_mqtt(conn.fd, input, self.framing.as_deref()) {
                        Ok(Received::Nothing) => more = false,
                        Ok(Received::Bytes { filled }) => {
                            more = filled;
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
                    return false;
                }
            }
        }
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

    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn holds its arguments twice"
    )]
    fn write_loop(&self) -> impl Future<Output = ()> + '_ {
        async move {
            let conn = &self.conn;
            // WebSocket frames the socket has not taken yet.
            let mut frames = Vec::new();
            loop {
                conn.wakes.wait(Wake::Write).await;
                if self.flush(&mut frames).await.is_err() {
                    conn.close(CloseReason::SocketError);
                    shutdown(conn.fd, libc::SHUT_RDWR);
                    return;
                }
                if conn.is_closing() {
                    if let Some(framing) = &self.framing {
                        // The closing handshake, unless the client began it.
                        framing.borrow_mut().close();
                        let _ = self.flush(&mut frames).await;
                    }
                    // Both ways wakes a reader still waiting on the socket;
                    // a reader that already stopped leaves the client's
                    // direction open for the linger.
                    let how = if self.lingers.get() {
                        libc::SHUT_WR
                    } else {
                        libc::SHUT_RDWR
                    };
                    shutdown(conn.fd, how);
                    return;
                }
            }
        }
    }

    /// Hands the socket everything queued for the client, waiting for room
    /// whenever its buffer is full. Over WebSocket, what the reader left
    /// (pongs, a close frame) goes too, so frames are written even with no
    /// MQTT output.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn holds its arguments twice"
    )]
    fn flush<'a>(&'a self, frames: &'a mut Vec<u8>) -> impl Future<Output = io::Result<()>> + 'a {
        async move {
            let conn = &self.conn;
            loop {
                let sent = match &self.framing {
                    None => {
                        let mut out = conn.out.borrow_mut();
                        if out.is_empty() {
                            // An idle connection keeps no output buffer.
                            socket::release_output(&mut out);
                            return Ok(());
                        }
                        socket::send_from(conn.fd, &mut out)?
                    }
                    Some(framing) => {
                        if frames.is_empty() {
                            let mut framing = framing.borrow_mut();
                            let mut out = conn.out.borrow_mut();
                            if !out.is_empty() {
                                framing.send(&out);
                                out.clear();
                            }
                            socket::release_output(&mut out);
                            *frames = framing.take_output();
                            if frames.is_empty() {
                                return Ok(());
                            }
                        }
                        let sent = socket::send(conn.fd, frames)?;
                        match sent {
                            Some(n) if n == frames.len() => *frames = Vec::new(),
                            Some(n) => drop(frames.drain(..n)),
                            None => {}
                        }
                        sent
                    }
                };
                if sent.is_some() {
                    self.state.borrow_mut().on_written(conn, Instant::now());
                    conn.wakes.raise(Wake::Written);
                } else {
                    // Boxed: only a client slower than its messages waits
                    // here, and every connection's future would otherwise
                    // hold room for it.
                    Box::pin(self.stream.writable(false)).await?;
                }
            }
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

/// Why a connection was closed before it had a CONNECT to refuse: counted
/// beside the refused CONNECTs, where a flood of half-open or garbage
/// connections shows up.
#[derive(Debug, Clone, Copy)]
enum EarlyClose {
    /// No CONNECT (or WebSocket upgrade) within `connect_timeout`.
    ConnectTimeout,
    /// No valid PROXY protocol header within its timeout.
    ProxyHeader,
    /// The HTTP request was not a WebSocket upgrade we accept.
    WebSocketUpgrade,
    /// The first packet was malformed or not a CONNECT.
    Malformed,
}

/// Why a connection's reading ended.
enum ReadEnd {
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
fn read_mqtt(
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
pub(super) async fn read_more(
    reader: &mut impl AsyncReadRent,
    mut buf: BytesMut,
) -> (std::io::Result<usize>, BytesMut) {
    buf.reserve(READ_CHUNK);
    let (filled, capacity) = (buf.len(), buf.capacity());
    let (result, spare) = reader.read(buf.slice_mut(filled..capacity)).await;
    (result, spare.into_inner())
}

/// Shuts `how` (`SHUT_RDWR` or `SHUT_WR`) down; both ways, a reader waiting
/// on this socket wakes up to end-of-file, and a writer to an error,
/// whichever driver they wait in.
fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: called by the task that holds the stream, so the descriptor
    // is still open; shutdown(2) touches no memory.
    unsafe {
        libc::shutdown(fd, how);
    }
}

/// The connect timeout, armed only once the handshake has to wait: a client
/// that sends its CONNECT at once costs the shard's deadlines nothing.
struct HandshakeLimit {
    at: Instant,
    alarm: Option<Rc<Alarm>>,
}

impl HandshakeLimit {
    /// Runs `work` until it completes, or `None` once the limit is past.
    async fn on<T>(
        &mut self,
        state: &RefCell<ShardState>,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        let at = self.at;
        let alarm = self
            .alarm
            .get_or_insert_with(|| state.borrow_mut().deadlines.alarm(at));
        alarm.on(work).await
    }
}

#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("first packet was {0:?}, not CONNECT")]
    NotConnect(protocol::PacketType),
    #[error("closed before CONNECT")]
    Closed,
    #[error("no CONNECT within the connect timeout")]
    TimedOut,
    #[error("websocket upgrade refused: {0}")]
    Upgrade(&'static str),
    #[error("{0}")]
    Framing(#[from] FramingError),
}

/// Answers a WebSocket connection's HTTP upgrade request. `wire` holds
/// what was already read (after a PROXY header, say); `framing` has no
/// layer yet, or TLS, through which the request comes and the answer goes.
/// Puts the WebSocket layer on `framing`, and returns the MQTT bytes of
/// any frames sent along with the request.
async fn upgrade(
    stream: &mut TcpStream,
    framing: &mut Framing,
    mut wire: BytesMut,
    max_packet_size: usize,
) -> Result<BytesMut, HandshakeError> {
    let mut request = BytesMut::new();
    loop {
        framing.handle_wire(&wire, &mut request)?;
        // A TLS handshake's replies, if any.
        write_wire(stream, framing.take_output()).await?;
        match websocket::handle_upgrade(&request, max_packet_size) {
            Upgrade::Incomplete => {
                wire.clear();
                let (result, returned) = read_more(stream, wire).await;
                wire = returned;
                match result {
                    Ok(0) | Err(_) => return Err(HandshakeError::Closed),
                    Ok(_) => {}
                }
            }
            Upgrade::Refused { response, why } => {
                framing.send(&response);
                let _ = write_wire(stream, framing.take_output()).await;
                return Err(HandshakeError::Upgrade(why));
            }
            Upgrade::Accepted {
                response,
                framing: ws,
                consumed,
            } => {
                framing.send(&response);
                write_wire(stream, framing.take_output()).await?;
                let mut mqtt = BytesMut::new();
                framing.upgraded(*ws, &request[consumed..], &mut mqtt)?;
                return Ok(mqtt);
            }
        }
    }
}

async fn read_connect(
    state: &RefCell<ShardState>,
    stream: &mut TcpStream,
    websocket: Option<&RefCell<Framing>>,
    mut input: Input,
    max_packet_size: usize,
    limit: &mut HandshakeLimit,
) -> Result<(Connect, Input), HandshakeError> {
    loop {
        if let Some(mut frame) = first_packet(input.bytes(), max_packet_size)? {
            // The level CONNECT carries is what counts; the argument only
            // matters for packets that are not CONNECT, which are refused.
            if let Some(packet) = protocol::read(&mut frame, ProtocolVersion::V5, max_packet_size)?
            {
                input.settle();
                return match packet {
                    Packet::Connect(connect) => Ok((*connect, input)),
                    other => Err(HandshakeError::NotConnect(other.packet_type())),
                };
            }
        }
        input.settle();
        // A TLS handshake's replies to what was read.
        if let Some(framing) = websocket {
            let wire = framing.borrow_mut().take_output();
            write_wire(stream, wire).await?;
        }
        // Read before waiting: the CONNECT has usually arrived by now.
        match read_mqtt(stream.as_raw_fd(), &mut input, websocket) {
            Ok(Received::Bytes { .. }) => {}
            Ok(Received::Nothing) => match limit.on(state, stream.readable(false)).await {
                Some(Ok(())) => {}
                Some(Err(_)) => return Err(HandshakeError::Closed),
                None => return Err(HandshakeError::TimedOut),
            },
            Ok(Received::Closed) | Err(ReadEnd::Closed | ReadEnd::SocketError) => {
                return Err(HandshakeError::Closed);
            }
            Err(ReadEnd::Framing(error)) => return Err(error.into()),
        }
    }
}

/// Takes the first packet off `bytes`, if it has all arrived, as a copy of
/// its own: the session keeps the CONNECT's client id and will for as long
/// as it lives, and as slices of the read arena they would keep a whole
/// arena allocation alive.
fn first_packet(
    bytes: &mut BytesMut,
    max_packet_size: usize,
) -> Result<Option<BytesMut>, DecodeError> {
    let Some(header) = protocol::check(bytes, max_packet_size)? else {
        return Ok(None);
    };
    if bytes.len() < header.frame_len() {
        return Ok(None);
    }
    let frame = BytesMut::from(&bytes[..header.frame_len()]);
    bytes.advance(header.frame_len());
    Ok(Some(frame))
}

/// Sends a refusing CONNACK and lets the stream drop (closing it).
pub(super) async fn refuse(
    stream: &mut TcpStream,
    websocket: Option<&RefCell<Framing>>,
    version: ProtocolVersion,
    reason: ReasonCode,
) {
    let connack = Packet::ConnAck(Box::new(ConnAck {
        session_present: false,
        reason,
        properties: ConnAckProperties::default(),
    }));
    let mut out = BytesMut::new();
    if connack.write(version, &mut out).is_err() {
        return;
    }
    match websocket {
        None => {
            let _ = stream.write_all(out).await;
        }
        Some(framing) => {
            {
                let mut framing = framing.borrow_mut();
                framing.send(&out);
                framing.close();
            }
            write_framing_output(stream, websocket).await;
        }
    }
}

/// Writes what a connection's framing has for the client, if anything.
async fn write_framing_output(stream: &mut TcpStream, websocket: Option<&RefCell<Framing>>) {
    if let Some(framing) = websocket {
        let wire = framing.borrow_mut().take_output();
        let _ = write_wire(stream, wire).await;
    }
}

/// Writes `wire` unless it is empty; a failed write means the client is
/// gone.
async fn write_wire(stream: &mut TcpStream, wire: Vec<u8>) -> Result<(), HandshakeError> {
    if wire.is_empty() {
        return Ok(());
    }
    match stream.write_all(wire).await.0 {
        Ok(_) => Ok(()),
        Err(_) => Err(HandshakeError::Closed),
    }
}

/// Counts a TLS handshake that failed, by why, if `framing` was still in
/// one when the connection ended with `error`.
fn tls_failed(state: &RefCell<ShardState>, error: &HandshakeError, framing: &Framing) {
    if !framing.is_handshaking() {
        return;
    }
    let reason = match error {
        HandshakeError::Framing(error) => error.tls().map_or("protocol", TlsError::label),
        HandshakeError::TimedOut => "timeout",
        _ => "closed",
    };
    state.borrow_mut().metrics.tls_handshake_failed(reason);
}

/// A client id unique within this process and across restarts of it.
fn assign_client_id(shard: ShardId) -> ByteString {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    ByteString::from(format!("ringmq-{started:x}-{shard}-{n}"))
}

#[cfg(test)]
mod tests {
    use super::super::notify::testing::WakeCounter;
    use super::*;

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

    /// The size of what a function returns: a connection's task is the
    /// future `Connection::run` returns, whose type has no name.
    fn returned_size<A, B, R>(_: fn(A, B) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// What every connection holds, idle or not, in fixed-size parts: its
    /// session's slot (`Session` 320 bytes, the `ConnHandle` pointer and the
    /// fencing epoch: 336, 368 while it kept a second filter set), its
    /// `ConnHandle` behind an `Rc` (104 bytes and two counts) and its task's
    /// future (616 in a test build). Heap the session and the task point to
    /// (queues, filters, the client id) comes on top. Upper bounds, and only
    /// where they were measured, since std's type sizes differ between
    /// targets: a field that pushes one past its bound has to say what it
    /// is worth.
    #[test]
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    fn what_a_connection_holds_stays_small() {
        use std::mem::size_of;
        let slot = size_of::<super::super::state::SessionSlot>();
        let handle = size_of::<ConnHandle>();
        let task = returned_size(Connection::run);
        assert!(slot <= 336, "session slot grew to {slot} bytes");
        assert!(handle <= 104, "ConnHandle grew to {handle} bytes");
        assert!(task <= 616, "connection task grew to {task} bytes");
        let total = slot + handle + 16 + task;
        assert!(total <= 1072, "a connection holds {total} bytes");
    }
}
