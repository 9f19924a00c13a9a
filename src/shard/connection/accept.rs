//! From an accepted socket to a served connection: the PROXY header, the
//! TLS handshake and WebSocket upgrade, the CONNECT and its
//! authentication, then the hand-over to the session's home shard and the
//! start of the connection's task there.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use bytestring::ByteString;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::config::ListenerConfig;
use crate::protocol::{
    self, ConnAck, ConnAckProperties, Connect, DecodeError, Packet, ProtocolVersion, ReasonCode,
};
use crate::shard::abuse;
use crate::shard::auth::{authenticate, authenticate_identity, authorize_will};
use crate::shard::deadline::Alarm;
use crate::shard::framing::{Framing, FramingError};
use crate::shard::limit::ConnectionPermit;
use crate::shard::mesh::{ClaimOutcome, Handoff, ShardMsg};
use crate::shard::proxy;
use crate::shard::socket::{Input, Received};
use crate::shard::state::ShardState;
use crate::shard::tls::TlsError;
use crate::shard::websocket::{self, Upgrade};
use crate::shard::{ShardId, home_shard};

use super::Connection;
use super::read::{ReadEnd, read_more, read_mqtt};

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
        active: Cell::new(false),
        _permit: permit,
    };
    let publishes = connection
        .state
        .borrow()
        .config()
        .abuse
        .publish
        .start(Instant::now());
    monoio::spawn(connection.run(Input::new(read_buf), publishes));
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
pub(in crate::shard) async fn refuse(
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
