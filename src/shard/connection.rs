//! One client connection: reading its CONNECT wherever it was accepted,
//! moving it to its session's home shard, then a reader task that decodes
//! and hands packets to the shard and a writer task that flushes whatever
//! the shard appended to the connection's output, in one write per wake-up.
//!
//! A WebSocket connection first answers its HTTP upgrade; from then on the
//! reader passes what the socket gives through the connection's
//! [`WsFraming`] before decoding, and the writer wraps each flush in one
//! binary frame. Above that layer, the MQTT code is the same for both.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use bytestring::ByteString;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use tracing::{debug, info, warn};

use super::limit::ConnectionPermit;
use super::mesh::{Handoff, ShardMsg};
use super::notify::LocalNotify;
use super::proxy;
use super::state::{SessionKey, ShardState};
use super::websocket::{self, Upgrade, WsError, WsFraming};
use super::{ShardId, home_shard};
use crate::config::{ListenerConfig, Transport};
use crate::protocol::{
    self, ConnAck, ConnAckProperties, Connect, DecodeError, Disconnect, DisconnectProperties,
    Packet, ProtocolVersion, ReasonCode,
};

/// How much the reader asks the kernel for at a time.
pub(super) const READ_CHUNK: usize = 4 * 1024;

/// Answers a client may leave unread before the broker stops reading its
/// requests; well above what a client that reads while it sends runs up.
const MAX_UNANSWERED: usize = 1024;

/// How long a closing connection's writer gets to flush the goodbye. A
/// peer that stopped reading would otherwise block the write, and hold
/// the socket and its buffers, for ever.
const WRITE_GRACE: Duration = Duration::from_secs(5);

/// How long a connection the broker closed keeps reading (and dropping)
/// what the client still sends, after the goodbye went out; see [`linger`].
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
    writer: LocalNotify,
    /// Rung by the writer after each write: there may be room for answers
    /// the reader is waiting to make.
    written: LocalNotify,
    closing: Cell<bool>,
    /// Set when reading stopped because the connection is closing while
    /// the client may still be sending: the writer then shuts down only
    /// its own direction after the goodbye, and the rest is read and
    /// dropped (see [`linger`]).
    linger: Cell<bool>,
    /// Why the connection ended, for the disconnect log line; the first
    /// reason recorded wins.
    why: Cell<Option<CloseReason>>,
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
            writer: LocalNotify::default(),
            written: LocalNotify::default(),
            closing: Cell::new(false),
            linger: Cell::new(false),
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
        let before = out.len();
        match packet.write(self.version, &mut out) {
            Ok(written) if written > limit => {
                out.truncate(before);
                return false;
            }
            Ok(_) => {}
            Err(error) => {
                out.truncate(before);
                warn!(%error, packet = ?packet.packet_type(), "cannot encode packet; closing connection");
                drop(out);
                self.close(CloseReason::Server(ReasonCode::ImplementationSpecificError));
            }
        }
        self.writer.notify();
        true
    }

    /// Bytes encoded and not yet handed to the kernel.
    pub fn buffered(&self) -> usize {
        self.out.borrow().len()
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
        self.writer.notify();
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
            self.send(&Packet::Disconnect(Disconnect {
                reason,
                properties: DisconnectProperties::default(),
            }));
        }
        self.close(CloseReason::Server(reason));
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
    let deadline = Instant::now() + connect_timeout;
    let mut read_buf = BytesMut::with_capacity(READ_CHUNK);
    if listener.proxy_protocol {
        match monoio::time::timeout(proxy::HEADER_TIMEOUT, proxy::read_header(&mut stream)).await {
            Ok(Ok((client, after))) => {
                // From here on, logs name the client, not the balancer.
                peer = client.unwrap_or(peer);
                read_buf = after;
            }
            Ok(Err(error)) => {
                debug!(%peer, %error, "closing connection");
                return reject(EarlyClose::ProxyHeader);
            }
            Err(_) => {
                debug!(%peer, "no proxy protocol header within its timeout");
                return reject(EarlyClose::ProxyHeader);
            }
        }
    }
    // In a `RefCell` only so that this task and, once served here, the
    // connection's reader and writer use it the same way.
    let framing = match listener.transport {
        Transport::Tcp => None,
        Transport::WebSocket => {
            let upgrade = upgrade(&mut stream, read_buf, max_packet_size);
            match monoio::time::timeout_at(deadline.into(), upgrade).await {
                Ok(Ok((framing, mqtt))) => {
                    read_buf = mqtt;
                    Some(RefCell::new(framing))
                }
                Ok(Err(error)) => {
                    debug!(%peer, %error, "closing connection before websocket upgrade");
                    return reject(EarlyClose::WebSocketUpgrade);
                }
                Err(_) => {
                    debug!(%peer, "no websocket upgrade within the connect timeout");
                    return reject(EarlyClose::ConnectTimeout);
                }
            }
        }
    };
    let websocket = framing.as_ref();
    let read = read_connect(&mut stream, websocket, read_buf, max_packet_size);
    let (mut connect, read_buf) = match monoio::time::timeout_at(deadline.into(), read).await {
        Ok(Ok(connected)) => connected,
        Ok(Err(HandshakeError::Decode(DecodeError::UnsupportedProtocolLevel(level)))) => {
            debug!(%peer, level, "unsupported protocol level");
            // Spec 3.1.2.2: answer 0x01 in the 3.1.1 form, then close.
            let reason = ReasonCode::UnsupportedProtocolVersion;
            state.borrow_mut().metrics.refused(reason);
            refuse(&mut stream, websocket, ProtocolVersion::V3_1_1, reason).await;
            return;
        }
        // A client that hung up was not refused anything.
        Ok(Err(HandshakeError::Closed)) => return,
        Ok(Err(error)) => {
            debug!(%peer, %error, "closing connection before CONNECT");
            reject(EarlyClose::Malformed);
            // A WebSocket may owe the client a close frame.
            write_framing_output(&mut stream, websocket).await;
            return;
        }
        Err(_) => {
            debug!(%peer, "no CONNECT within the connect timeout");
            return reject(EarlyClose::ConnectTimeout);
        }
    };

    let Some(permit) = permit else {
        debug!(%peer, "connection limit reached; refused");
        // 0x97 names the cause: a configured limit, not a transient state
        // (0x89 Server busy); 3.1.1 can only say Server unavailable.
        let reason = ReasonCode::QuotaExceeded;
        state.borrow_mut().metrics.refused(reason);
        refuse(&mut stream, websocket, connect.protocol, reason).await;
        return;
    };
    if connect.client_id.len() > max_client_id_length {
        debug!(%peer, len = connect.client_id.len(), "client id too long");
        let reason = ReasonCode::ClientIdentifierNotValid;
        state.borrow_mut().metrics.refused(reason);
        refuse(&mut stream, websocket, connect.protocol, reason).await;
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

    let (me, shards) = {
        let state = state.borrow();
        (state.id(), state.mesh.shard_count())
    };
    let home = home_shard(&connect.client_id, shards);
    let websocket = framing.map(RefCell::into_inner);
    if home == me {
        serve(
            state,
            stream,
            peer,
            connect,
            assigned_client_id,
            read_buf,
            websocket,
        )
        .await;
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
            read_buf,
            websocket,
            permit,
        })),
    );
    state.mesh.flush();
}

/// Serves a connection another shard handed over.
pub async fn serve_handoff(state: Rc<RefCell<ShardState>>, handoff: Handoff) {
    // Held until the connection ends, here.
    let _permit = handoff.permit;
    let stream = match TcpStream::from_std(std::net::TcpStream::from(handoff.socket)) {
        Ok(stream) => stream,
        Err(error) => {
            warn!(%error, peer = %handoff.peer, "cannot adopt handed-over connection");
            return;
        }
    };
    serve(
        state,
        stream,
        handoff.peer,
        handoff.connect,
        handoff.assigned_client_id,
        handoff.read_buf,
        handoff.websocket,
    )
    .await;
}

/// Runs a connection on its session's home shard until it closes.
async fn serve(
    state: Rc<RefCell<ShardState>>,
    stream: TcpStream,
    peer: SocketAddr,
    connect: Connect,
    assigned_client_id: bool,
    read_buf: BytesMut,
    websocket: Option<WsFraming>,
) {
    let client_id = connect.client_id.clone();
    state.borrow_mut().connection_opened();
    let attached = state.borrow_mut().attach(
        &connect,
        assigned_client_id,
        stream.as_raw_fd(),
        Instant::now(),
    );
    let conn = attached.conn;
    info!(client = %client_id, version = connect.protocol.level(), %peer, "client connected");
    drop(connect);

    // Shared by the reader, which feeds it and may owe a pong, and the
    // writer, which frames the output; neither holds it across an await.
    let framing = websocket.map(|framing| Rc::new(RefCell::new(framing)));
    let (mut reader, writer) = stream.into_split();
    let writer = monoio::spawn(write_loop(
        state.clone(),
        conn.clone(),
        writer,
        framing.clone(),
    ));
    // Set before the writer next runs: the broker closing the connection
    // happens in this task, with no await between it and here.
    let client_may_send = conn.is_closing()
        || read_loop(
            &state,
            &conn,
            &mut reader,
            read_buf,
            attached.keep_alive,
            framing.as_deref(),
        )
        .await;
    conn.linger.set(client_may_send);
    state.borrow_mut().detach(&conn, Instant::now());
    let flushed = monoio::time::timeout(WRITE_GRACE, writer).await.is_ok();
    if !flushed {
        debug!(client = %client_id, %peer, "peer not reading; resetting the connection");
        // SAFETY: the writer has not returned, so its half of the stream
        // keeps the descriptor open and it is still this connection's.
        let fd = unsafe { BorrowedFd::borrow_raw(conn.fd) };
        // Unsent bytes are discarded (RST on close) rather than left to a
        // socket nobody reads; the shutdown fails the blocked write.
        let _ = socket2::SockRef::from(&fd).set_linger(Some(Duration::ZERO));
        shutdown(conn.fd, libc::SHUT_RDWR);
    }
    state.borrow_mut().connection_closed();
    let reason = conn.close_reason().unwrap_or(CloseReason::ClientClosed);
    info!(
        client = %client_id,
        version = conn.version.level(),
        %peer,
        ?reason,
        "client disconnected"
    );
    if flushed && conn.linger.get() {
        linger(&mut reader).await;
    }
}

/// Returns whether the client may still be sending: reading stopped
/// because the connection is closing, not at the end of the stream.
async fn read_loop(
    state: &RefCell<ShardState>,
    conn: &ConnHandle,
    reader: &mut OwnedReadHalf<TcpStream>,
    mut buf: BytesMut,
    keep_alive: Option<Duration>,
    websocket: Option<&RefCell<WsFraming>>,
) -> bool {
    let max_packet_size = state.borrow().config().max_packet_size;
    let mut packets = Vec::new();
    let mut wire = BytesMut::new();
    // Keep-alive is about control packets, not bytes (spec 3.1.2.10): a
    // client dribbling a packet that never completes is as silent as one
    // sending nothing, and must not hold its read buffer for ever.
    let mut deadline = keep_alive.map(|limit| Instant::now() + limit);
    loop {
        // Decode everything buffered (a client may pipeline many packets
        // into one segment), then hand them over in one borrow.
        let decoded = loop {
            match protocol::read(&mut buf, conn.version, max_packet_size) {
                Ok(Some(packet)) => packets.push(packet),
                Ok(None) => break Ok(()),
                Err(error) => break Err(error),
            }
        };
        if !packets.is_empty() {
            let now = Instant::now();
            deadline = keep_alive.map(|limit| now + limit);
            state
                .borrow_mut()
                .handle_packets(conn, packets.drain(..), now);
        }
        if let Err(error) = decoded {
            debug!(%error, "malformed packet");
            state
                .borrow_mut()
                .handle_malformed(conn, error.reason_code());
            return true;
        }
        if conn.is_closing() {
            return true;
        }
        // A client sending requests (a PINGREQ flood) while it does not
        // read the answers would grow them without bound: it is not read
        // from until its writer has made room, for at most its keep-alive.
        while state.borrow().unanswered(conn) > MAX_UNANSWERED {
            let written = conn.written.notified();
            let made_room = match deadline {
                Some(deadline) => monoio::time::timeout_at(deadline.into(), written)
                    .await
                    .is_ok(),
                None => {
                    written.await;
                    true
                }
            };
            if !made_room {
                conn.disconnect(ReasonCode::KeepAliveTimeout);
                return true;
            }
            if conn.is_closing() {
                return true;
            }
        }

        let read = read_mqtt(reader, &mut buf, websocket, &mut wire);
        let result = match deadline {
            Some(deadline) => match monoio::time::timeout_at(deadline.into(), read).await {
                Ok(done) => done,
                Err(_) => {
                    conn.disconnect(ReasonCode::KeepAliveTimeout);
                    return true;
                }
            },
            None => read.await,
        };
        if websocket.is_some_and(|framing| framing.borrow().has_output()) {
            // A pong or a close frame to send.
            conn.writer.notify();
        }
        if let Err(end) = result {
            if let ReadEnd::WebSocket(error) = &end {
                debug!(%error, "websocket closed");
            }
            conn.close(end.close_reason());
            return false;
        }
    }
}

async fn write_loop(
    state: Rc<RefCell<ShardState>>,
    conn: Rc<ConnHandle>,
    mut writer: OwnedWriteHalf<TcpStream>,
    websocket: Option<Rc<RefCell<WsFraming>>>,
) {
    let mut spare = BytesMut::new();
    loop {
        conn.writer.notified().await;
        loop {
            let out = std::mem::replace(&mut *conn.out.borrow_mut(), spare);
            let result = match &websocket {
                None => {
                    if out.is_empty() {
                        spare = out;
                        break;
                    }
                    let (result, mut written) = writer.write_all(out).await;
                    written.clear();
                    // A buffer that grew for a burst is not kept by an idle client.
                    spare = if written.capacity() > 4 * READ_CHUNK {
                        BytesMut::new()
                    } else {
                        written
                    };
                    result
                }
                Some(framing) => {
                    // Frames are written even with no MQTT output: the
                    // reader may have left a pong or a close frame.
                    let wire = {
                        let mut framing = framing.borrow_mut();
                        if out.is_empty() {
                            spare = out;
                        } else {
                            // The frame copies the bytes; the buffer goes
                            // with the `Bytes` rather than being kept.
                            framing.send(out.freeze());
                            spare = BytesMut::new();
                        }
                        framing.take_output()
                    };
                    if wire.is_empty() {
                        break;
                    }
                    writer.write_all(wire).await.0
                }
            };
            if result.is_err() {
                conn.close(CloseReason::SocketError);
                shutdown(conn.fd, libc::SHUT_RDWR);
                return;
            }
            state.borrow_mut().on_written(&conn, Instant::now());
            conn.written.notify();
        }
        if conn.is_closing() {
            if let Some(framing) = &websocket {
                // The closing handshake, unless the client began it.
                let wire = {
                    let mut framing = framing.borrow_mut();
                    framing.close();
                    framing.take_output()
                };
                let _ = writer.write_all(wire).await;
            }
            // Both ways wakes a reader still blocked on the socket; a
            // reader that already stopped leaves the client's direction
            // open for the linger.
            let how = if conn.linger.get() {
                libc::SHUT_WR
            } else {
                libc::SHUT_RDWR
            };
            shutdown(conn.fd, how);
            return;
        }
    }
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
    WebSocket(WsError),
}

impl ReadEnd {
    fn close_reason(&self) -> CloseReason {
        match self {
            ReadEnd::Closed | ReadEnd::WebSocket(WsError::Closed) => CloseReason::ClientClosed,
            ReadEnd::SocketError => CloseReason::SocketError,
            ReadEnd::WebSocket(WsError::TextFrame | WsError::Protocol(_)) => {
                CloseReason::Server(ReasonCode::ProtocolError)
            }
        }
    }
}

/// Reads from the socket once and appends to `buf` the MQTT bytes that
/// arrived: all of them over TCP; over WebSocket, the payloads of the
/// binary messages they complete, perhaps none (`wire` is the reader's
/// buffer for the frames).
async fn read_mqtt(
    reader: &mut impl AsyncReadRent,
    buf: &mut BytesMut,
    websocket: Option<&RefCell<WsFraming>>,
    wire: &mut BytesMut,
) -> Result<(), ReadEnd> {
    let target = if websocket.is_some() {
        &mut *wire
    } else {
        &mut *buf
    };
    let (result, returned) = read_more(reader, std::mem::take(target)).await;
    *target = returned;
    match result {
        Ok(0) => return Err(ReadEnd::Closed),
        Ok(_) => {}
        Err(_) => return Err(ReadEnd::SocketError),
    }
    if let Some(framing) = websocket {
        let unframed = framing.borrow_mut().handle_wire(wire, buf);
        wire.clear();
        unframed.map_err(ReadEnd::WebSocket)?;
    }
    Ok(())
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

/// Reads and drops what the client still sends after the broker's goodbye,
/// until it closes its side or [`LINGER`] passes. A socket closed with
/// unread data, or that receives data once closed, makes the kernel send a
/// reset, and the reset can destroy the goodbye (the DISCONNECT saying why)
/// before the client has read it: a client that pipelined PUBLISHes past
/// its Receive Maximum would see a broken pipe instead of 0x93.
async fn linger(reader: &mut OwnedReadHalf<TcpStream>) {
    let drain = async {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            buf.clear();
            let (result, returned) = read_more(reader, buf).await;
            buf = returned;
            if !matches!(result, Ok(read) if read > 0) {
                return;
            }
        }
    };
    let _ = monoio::time::timeout(LINGER, drain).await;
}

/// Shuts `how` (`SHUT_RDWR` or `SHUT_WR`) down; both ways, a reader blocked
/// on this socket wakes up with end-of-file, whichever driver it waits in.
fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: called while a half of the stream is held, so the descriptor
    // is still open; shutdown(2) touches no memory.
    unsafe {
        libc::shutdown(fd, how);
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
    #[error("websocket upgrade refused: {0}")]
    Upgrade(&'static str),
    #[error("{0}")]
    WebSocket(#[from] WsError),
}

/// Answers a WebSocket connection's HTTP upgrade request, of which
/// `request` holds what was already read (after a PROXY header, say).
/// Returns its framing and the MQTT bytes of any frames sent along with
/// the request.
async fn upgrade(
    stream: &mut TcpStream,
    mut request: BytesMut,
    max_packet_size: usize,
) -> Result<(WsFraming, BytesMut), HandshakeError> {
    loop {
        match websocket::handle_upgrade(&request, max_packet_size) {
            Upgrade::Incomplete => {
                let (result, returned) = read_more(stream, request).await;
                request = returned;
                match result {
                    Ok(0) | Err(_) => return Err(HandshakeError::Closed),
                    Ok(_) => {}
                }
            }
            Upgrade::Refused { response, why } => {
                let _ = stream.write_all(response).await;
                return Err(HandshakeError::Upgrade(why));
            }
            Upgrade::Accepted {
                response,
                mut framing,
                consumed,
            } => {
                if stream.write_all(response).await.0.is_err() {
                    return Err(HandshakeError::Closed);
                }
                let mut mqtt = BytesMut::with_capacity(READ_CHUNK);
                framing.handle_wire(&request[consumed..], &mut mqtt)?;
                return Ok((*framing, mqtt));
            }
        }
    }
}

async fn read_connect(
    stream: &mut TcpStream,
    websocket: Option<&RefCell<WsFraming>>,
    mut buf: BytesMut,
    max_packet_size: usize,
) -> Result<(Connect, BytesMut), HandshakeError> {
    let mut wire = BytesMut::new();
    loop {
        // The level CONNECT carries is what counts; the argument only
        // matters for packets that are not CONNECT, which are refused.
        if let Some(packet) = protocol::read(&mut buf, ProtocolVersion::V5, max_packet_size)? {
            return match packet {
                Packet::Connect(connect) => Ok((*connect, buf)),
                other => Err(HandshakeError::NotConnect(other.packet_type())),
            };
        }
        match read_mqtt(stream, &mut buf, websocket, &mut wire).await {
            Ok(()) => {}
            Err(ReadEnd::WebSocket(error)) => return Err(error.into()),
            Err(ReadEnd::Closed | ReadEnd::SocketError) => return Err(HandshakeError::Closed),
        }
    }
}

/// Sends a refusing CONNACK and lets the stream drop (closing it).
async fn refuse(
    stream: &mut TcpStream,
    websocket: Option<&RefCell<WsFraming>>,
    version: ProtocolVersion,
    reason: ReasonCode,
) {
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason,
        properties: ConnAckProperties::default(),
    });
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
                framing.send(out.freeze());
                framing.close();
            }
            write_framing_output(stream, websocket).await;
        }
    }
}

/// Writes what a WebSocket's framing has for the client, if anything.
async fn write_framing_output(stream: &mut TcpStream, websocket: Option<&RefCell<WsFraming>>) {
    let Some(wire) = websocket.map(|framing| framing.borrow_mut().take_output()) else {
        return;
    };
    if !wire.is_empty() {
        let _ = stream.write_all(wire).await;
    }
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
