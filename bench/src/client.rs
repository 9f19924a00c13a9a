//! One MQTT 3.1.1 client connection over a monoio `TcpStream`, in the
//! clear or through TLS ([`crate::tls`]).
//!
//! Reads use monoio's owned-buffer API: the read buffer is lent to the
//! kernel and handed back, and [`protocol::read`] splits complete packets
//! off its front. Writes are batched: callers queue any number of packets
//! into the write buffer and [`Connection::flush`] sends them in one
//! `write_all`. Over TLS the same buffers hold plaintext and [`Stream`]
//! passes them through rustls; nothing above `fill` and `flush` knows
//! which it is.

use std::fmt;
use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use ringmq::protocol::{
    self, Connect, ConnectProperties, DecodeError, Disconnect, DisconnectProperties, EncodeError,
    LazyPublishProperties, Packet, PacketType, ProtocolVersion, PubResponse, PubResponseProperties,
    Publish, QoS, ReasonCode, Subscribe, SubscribeProperties, SubscriptionOptions,
    TopicSubscription,
};

use crate::tls::{TlsClient, TlsStream};

pub const VERSION: ProtocolVersion = ProtocolVersion::V3_1_1;

/// The largest packet MQTT can frame; a broker is trusted not to send more.
const MAX_PACKET_SIZE: usize = 268_435_460;

/// Free space guaranteed before each socket read.
const READ_CHUNK: usize = 64 * 1024;

/// Connect plus CONNACK, subscribe plus SUBACK.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Keep-alive of the publish/subscribe scenarios' connections, seconds.
///
/// Not 0 (disabled, spec 3.1.2.10), though a benchmark connection lives
/// only as long as the run: rumqttd refuses a CONNECT with keep-alive 0
/// (`ZeroKeepAlive`). Publishers send all the time; a subscriber sends
/// PINGREQ every half interval while it receives ([`Connection::ping_due`]).
pub const KEEP_ALIVE: u16 = 60;

/// Where a connection goes: the broker's address, and TLS when the
/// broker is to be reached through it.
#[derive(Debug, Clone)]
pub struct Broker {
    pub addr: SocketAddr,
    pub tls: Option<TlsClient>,
}

impl fmt::Display for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tls {
            None => write!(f, "{}", self.addr),
            Some(_) => write!(f, "{} (tls)", self.addr),
        }
    }
}

/// What a CONNECT says, and where the TCP connection comes from.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub client_id: String,
    /// Seconds; 0 disables keep-alive (spec 3.1.2.10).
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Local address to bind before connecting (port chosen by the kernel):
    /// each 127.0.0.x source has its own 28,000-odd ephemeral ports.
    pub source: Option<IpAddr>,
    /// Initial capacity of the read and write buffers. Idle connections
    /// need little; see `conn`.
    pub buffer: usize,
    /// Clean session (MQTT 3.1.1 `clean_session`). `false` asks the broker
    /// to keep the session after the connection closes, so a broker with
    /// durable sessions stores it and its QoS 1/2 messages.
    pub clean_start: bool,
}

impl ConnectOptions {
    pub fn new(client_id: &str) -> ConnectOptions {
        ConnectOptions {
            client_id: client_id.to_owned(),
            clean_start: true,
            keep_alive: KEEP_ALIVE,
            username: None,
            password: None,
            source: None,
            buffer: READ_CHUNK,
        }
    }
}

/// A blocking connect from `source` (monoio's connect cannot bind first).
/// On loopback the handshake completes in microseconds, so blocking the
/// worker briefly is cheaper than a readiness dance.
fn connect_from(source: IpAddr, broker: SocketAddr, limit: Duration) -> io::Result<TcpStream> {
    let domain = socket2::Domain::for_address(broker);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    // Pick the port at connect, per (source, destination): otherwise bind
    // reserves a port for the source address alone and the 28,000-odd
    // ephemeral ports run out across every destination together.
    let yes: libc::c_int = 1;
    // SAFETY: a valid socket, option value and length.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&yes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&broker.into(), limit)?;
    socket.set_nonblocking(true)?;
    TcpStream::from_std(socket.into())
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect: {0}")]
    Connect(io::Error),
    /// The TLS handshake failed: a certificate the CA does not vouch for,
    /// a name it is not valid for, no common protocol version.
    #[error("tls handshake: {0}")]
    Handshake(io::Error),
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    #[error("encode: {0}")]
    Encode(#[from] EncodeError),
    #[error("broker closed the connection")]
    Closed,
    #[error("handshake timed out")]
    Timeout,
    #[error("connection refused by broker: {0:?}")]
    Refused(ReasonCode),
    #[error("subscription refused by broker: {0:?}")]
    SubscribeRefused(ReasonCode),
    #[error("unexpected {0:?} packet")]
    Unexpected(PacketType),
    #[error("{0:?} for unknown packet id")]
    UnknownPacketId(PacketType),
    #[error("publish template: the codec did not lay out PUBLISH as MQTT 3.1.1 does")]
    Template,
}

/// The byte stream under the MQTT packets.
enum Stream {
    Plain(TcpStream),
    /// Boxed, so that a plain connection does not carry the size of a
    /// rustls session.
    Tls(Box<TlsStream>),
}

pub struct Connection {
    /// The CONNACK's session present flag.
    pub session_present: bool,
    stream: Stream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// Free space guaranteed before each socket read ([`READ_CHUNK`] unless
    /// the connection asked for small buffers).
    read_chunk: usize,
}

impl Connection {
    /// TCP connect (and TLS handshake), CONNECT (clean session,
    /// keep-alive [`KEEP_ALIVE`]), await CONNACK.
    pub async fn open(broker: &Broker, client_id: &str) -> Result<Connection, ClientError> {
        Self::open_with(broker, &ConnectOptions::new(client_id)).await
    }

    /// [`Connection::open`], with a session the broker keeps after the
    /// connection closes unless `clean` (clean_session=0: stored by a
    /// broker with durable sessions).
    pub async fn open_session(
        broker: &Broker,
        client_id: &str,
        clean: bool,
    ) -> Result<Connection, ClientError> {
        let options = ConnectOptions {
            clean_start: clean,
            ..ConnectOptions::new(client_id)
        };
        Self::open_with(broker, &options).await
    }

    /// TCP connect (from `options.source` if set), TLS handshake if the
    /// broker is reached through TLS, CONNECT, await CONNACK, all within
    /// [`HANDSHAKE_TIMEOUT`].
    pub async fn open_with(
        broker: &Broker,
        options: &ConnectOptions,
    ) -> Result<Connection, ClientError> {
        Self::open_within(broker, options, HANDSHAKE_TIMEOUT).await
    }

    /// [`Connection::open_with`] with its own time limit.
    pub async fn open_within(
        broker: &Broker,
        options: &ConnectOptions,
        limit: Duration,
    ) -> Result<Connection, ClientError> {
        let read_chunk = options.buffer.clamp(64, READ_CHUNK);
        let handshake = async {
            let tcp = match options.source {
                None => TcpStream::connect(broker.addr)
                    .await
                    .map_err(ClientError::Connect)?,
                Some(source) => {
                    connect_from(source, broker.addr, limit).map_err(ClientError::Connect)?
                }
            };
            tcp.set_nodelay(true)?;
            let stream = match &broker.tls {
                None => Stream::Plain(tcp),
                Some(tls) => Stream::Tls(Box::new(
                    TlsStream::connect(tcp, tls, broker.addr, read_chunk)
                        .await
                        .map_err(ClientError::Handshake)?,
                )),
            };
            let mut conn = Connection {
                session_present: false,
                stream,
                read_buf: BytesMut::with_capacity(options.buffer),
                write_buf: BytesMut::with_capacity(options.buffer),
                read_chunk,
            };
            conn.queue(&Packet::Connect(Box::new(Connect {
                protocol: VERSION,
                clean_start: options.clean_start,
                keep_alive: options.keep_alive,
                client_id: ByteString::from(options.client_id.as_str()),
                will: None,
                username: options.username.as_deref().map(ByteString::from),
                password: options
                    .password
                    .as_ref()
                    .map(|p| Bytes::copy_from_slice(p.as_bytes())),
                properties: ConnectProperties::default(),
            })))?;
            conn.flush().await?;
            match conn.recv().await? {
                Packet::ConnAck(ack) if ack.reason == ReasonCode::Success => {
                    conn.session_present = ack.session_present;
                    Ok(conn)
                }
                Packet::ConnAck(ack) => Err(ClientError::Refused(ack.reason)),
                other => Err(ClientError::Unexpected(other.packet_type())),
            }
        };
        monoio::time::timeout(limit, handshake)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// SUBSCRIBE to one filter and await its SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), ClientError> {
        const PACKET_ID: u16 = 1;
        self.queue(&Packet::Subscribe(Subscribe {
            packet_id: PACKET_ID,
            filters: vec![TopicSubscription {
                filter: ByteString::from(filter),
                options: SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            }],
            properties: SubscribeProperties::default(),
        }))?;
        let exchange = async {
            self.flush().await?;
            match self.recv().await? {
                Packet::SubAck(ack) if ack.packet_id == PACKET_ID => {
                    match ack.reasons.first().copied() {
                        Some(
                            ReasonCode::Success | ReasonCode::GrantedQoS1 | ReasonCode::GrantedQoS2,
                        ) => Ok(()),
                        Some(reason) => Err(ClientError::SubscribeRefused(reason)),
                        None => Err(ClientError::SubscribeRefused(ReasonCode::UnspecifiedError)),
                    }
                }
                other => Err(ClientError::Unexpected(other.packet_type())),
            }
        };
        monoio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// Appends one encoded packet to the write buffer.
    pub fn queue(&mut self, packet: &Packet) -> Result<(), ClientError> {
        packet.write(VERSION, &mut self.write_buf)?;
        Ok(())
    }

    /// Queues PUBACK, PUBREC, PUBREL or PUBCOMP (chosen by `kind`).
    pub fn queue_response(
        &mut self,
        kind: fn(PubResponse) -> Packet,
        packet_id: u16,
    ) -> Result<(), ClientError> {
        self.queue(&kind(PubResponse {
            packet_id,
            reason: ReasonCode::Success,
            properties: PubResponseProperties::default(),
        }))
    }

    /// The write buffer, for callers that append pre-encoded packets.
    pub fn write_buf(&mut self) -> &mut BytesMut {
        &mut self.write_buf
    }

    /// Writes everything queued in one `write_all`.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        match &mut self.stream {
            Stream::Plain(tcp) => {
                let buf = mem::take(&mut self.write_buf);
                let (result, mut buf) = tcp.write_all(buf).await;
                buf.clear();
                self.write_buf = buf;
                result?;
            }
            Stream::Tls(tls) => {
                let result = tls.write_all(&self.write_buf).await;
                self.write_buf.clear();
                result?;
            }
        }
        Ok(())
    }

    /// The next complete packet already buffered, if any.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, ClientError> {
        Ok(protocol::read(
            &mut self.read_buf,
            VERSION,
            MAX_PACKET_SIZE,
        )?)
    }

    /// One socket read (over TLS: as many as it takes to complete a
    /// record), appended to the read buffer.
    pub async fn fill(&mut self) -> Result<(), ClientError> {
        let read = match &mut self.stream {
            Stream::Plain(tcp) => {
                let mut buf = mem::take(&mut self.read_buf);
                if buf.capacity() - buf.len() < self.read_chunk / 4 {
                    buf.reserve(self.read_chunk);
                }
                let len = buf.len();
                let capacity = buf.capacity();
                let (result, slice) = tcp.read(buf.slice_mut(len..capacity)).await;
                self.read_buf = slice.into_inner();
                result
            }
            Stream::Tls(tls) => tls.read(&mut self.read_buf).await,
        };
        match read? {
            0 => Err(ClientError::Closed),
            _ => Ok(()),
        }
    }

    /// The next packet, reading from the socket as needed.
    pub async fn recv(&mut self) -> Result<Packet, ClientError> {
        loop {
            if let Some(packet) = self.next_packet()? {
                return Ok(packet);
            }
            self.fill().await?;
        }
    }

    /// Queues a PINGREQ if half the keep-alive has passed since `last`
    /// (and moves `last` to `now`). For connections that only receive.
    pub fn ping_due(
        &mut self,
        last: &mut std::time::Instant,
        now: std::time::Instant,
    ) -> Result<(), ClientError> {
        if now.duration_since(*last) >= Duration::from_secs(u64::from(KEEP_ALIVE) / 2) {
            *last = now;
            self.queue(&Packet::PingReq)?;
        }
        Ok(())
    }

    /// Sends PINGREQ and waits for PINGRESP (anything else is an error).
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.queue(&Packet::PingReq)?;
        self.flush().await?;
        match self.recv().await? {
            Packet::PingResp => Ok(()),
            other => Err(ClientError::Unexpected(other.packet_type())),
        }
    }

    /// Sends DISCONNECT; the socket closes when `self` drops.
    pub async fn disconnect(mut self) -> Result<(), ClientError> {
        self.queue(&Packet::Disconnect(Box::new(Disconnect {
            reason: ReasonCode::Success,
            properties: DisconnectProperties::default(),
        })))?;
        self.flush().await
    }
}

/// A PUBLISH encoded once by the codec, then copied per message with its
/// packet id and send timestamp patched in place.
///
/// Payload layout: bytes 0..8 the send timestamp, bytes 8..16 (when the
/// payload is that long) the run's tag, so a subscriber can tell this run's
/// messages from stale ones a broker still delivers from an earlier run
/// with the same topics.
///
/// Encoding a fresh packet (and allocating its payload) per message would
/// make the load generator, which shares the machine with the broker, spend
/// more CPU per message than it needs to. At MQTT 3.1.1 the packet id is the
/// two bytes right before the payload, and the payload is the packet's tail;
/// [`PublishTemplate::new`] checks that layout against the codec's output.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    bytes: Bytes,
    stamp_at: usize,
    packet_id_at: Option<usize>,
}

impl PublishTemplate {
    const PROBE_ID: u16 = 0xA55A;

    pub fn new(
        topic: &str,
        qos: QoS,
        payload_len: usize,
        run_tag: u64,
    ) -> Result<Self, ClientError> {
        let payload_len = payload_len.max(8);
        let mut payload = BytesMut::zeroed(payload_len);
        payload[8..].fill(b'x');
        if let Some(tag) = payload.get_mut(8..16) {
            tag.copy_from_slice(&run_tag.to_be_bytes());
        }
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            Self::PROBE_ID
        };
        let mut bytes = BytesMut::new();
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: ByteString::from(topic),
            packet_id,
            properties: LazyPublishProperties::default(),
            payload: payload.freeze(),
        })
        .write(VERSION, &mut bytes)?;
        let stamp_at = bytes
            .len()
            .checked_sub(payload_len)
            .ok_or(ClientError::Template)?;
        let packet_id_at = match qos {
            QoS::AtMostOnce => None,
            _ => {
                let at = stamp_at.checked_sub(2).ok_or(ClientError::Template)?;
                if bytes[at..stamp_at] != Self::PROBE_ID.to_be_bytes() {
                    return Err(ClientError::Template);
                }
                Some(at)
            }
        };
        Ok(PublishTemplate {
            bytes: bytes.freeze(),
            stamp_at,
            packet_id_at,
        })
    }

    /// Appends one PUBLISH carrying `packet_id` (ignored at QoS 0) and the
    /// send timestamp `stamp` (see [`crate::stats::now_nanos`]).
    pub fn append(&self, out: &mut BytesMut, packet_id: u16, stamp: u64) {
        let start = out.len();
        out.put_slice(&self.bytes);
        let packet = &mut out[start..];
        if let Some(at) = self.packet_id_at {
            packet[at..at + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        packet[self.stamp_at..self.stamp_at + 8].copy_from_slice(&stamp.to_be_bytes());
    }
}

/// The send timestamp a [`PublishTemplate`] of this run (`run_tag`) put in
/// a payload; `None` for a payload too short or tagged by another run.
pub fn stamp_of(payload: &[u8], run_tag: u64) -> Option<u64> {
    let word = |at: usize| {
        let bytes: [u8; 8] = payload.get(at..at + 8)?.try_into().ok()?;
        Some(u64::from_be_bytes(bytes))
    };
    match word(8) {
        Some(tag) if tag != run_tag => None,
        _ => word(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs the codec: the template must equal what the codec encodes for
    /// the same packet.
    #[test]
    fn template_matches_codec() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let template = PublishTemplate::new("bench/pair/7", qos, 64, 0xABCD).expect("template");
            let mut out = BytesMut::new();
            template.append(&mut out, 4242, 0x0102_0304_0506_0708);
            let mut payload = vec![b'x'; 64];
            payload[..8].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
            payload[8..16].copy_from_slice(&0xABCDu64.to_be_bytes());
            let expected = Packet::Publish(Publish {
                dup: false,
                qos,
                retain: false,
                topic: ByteString::from("bench/pair/7"),
                packet_id: if qos == QoS::AtMostOnce { 0 } else { 4242 },
                properties: LazyPublishProperties::default(),
                payload: Bytes::from(payload),
            });
            let decoded = protocol::read(&mut out, VERSION, MAX_PACKET_SIZE)
                .expect("decodes")
                .expect("complete");
            assert_eq!(decoded, expected);
            assert!(out.is_empty());
            let Packet::Publish(publish) = decoded else {
                unreachable!()
            };
            assert_eq!(
                stamp_of(&publish.payload, 0xABCD),
                Some(0x0102_0304_0506_0708)
            );
            assert_eq!(stamp_of(&publish.payload, 0xABCE), None);
        }
    }

    #[test]
    fn short_payloads_carry_only_a_stamp() {
        assert_eq!(stamp_of(&7u64.to_be_bytes(), 1), Some(7));
        assert_eq!(stamp_of(&[0; 12], 1), Some(0));
        assert_eq!(stamp_of(&[0; 7], 1), None);
    }
}
