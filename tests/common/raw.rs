//! A raw MQTT connection: writes literal bytes, reads whole packets back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::RECV_TIMEOUT;
use super::wire::{self, Connack, Connect, Packet, Publish};

/// Why [`Raw::try_recv`] returned no packet.
#[derive(Debug, PartialEq, Eq)]
pub enum RecvError {
    Timeout,
    Closed,
}

pub struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Protocol level used to decode version-dependent packets.
    pub version: u8,
}

impl Raw {
    pub async fn open(addr: SocketAddr, version: u8) -> Raw {
        Raw::establish(TcpStream::connect(addr), version).await
    }

    /// Like [`Raw::open`], from the local address `source` (any port), so
    /// that the broker, or a proxy in front of it, sees that address.
    pub async fn open_from(addr: SocketAddr, source: std::net::IpAddr, version: u8) -> Raw {
        let socket = match source {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .expect("cannot create a socket");
        socket
            .bind(SocketAddr::new(source, 0))
            .unwrap_or_else(|error| panic!("cannot bind to {source}: {error}"));
        Raw::establish(socket.connect(addr), version).await
    }

    /// Waits at most [`RECV_TIMEOUT`] for `connecting` and wraps the stream
    /// with Nagle off: the one way [`Raw::open`] and [`Raw::open_from`]
    /// finish, so both time out, fail and send alike.
    async fn establish(
        connecting: impl Future<Output = std::io::Result<TcpStream>>,
        version: u8,
    ) -> Raw {
        let stream = tokio::time::timeout(RECV_TIMEOUT, connecting)
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect failed");
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
            version,
        }
    }

    /// The local address of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("a connected socket")
    }

    /// Opens a socket, sends `connect`, and returns the CONNACK.
    pub async fn connect(addr: SocketAddr, connect: Connect) -> (Raw, Connack) {
        let mut raw = Raw::open(addr, connect.version).await;
        raw.send(&connect.encode()).await;
        let connack = raw.recv().await.connack(connect.version);
        (raw, connack)
    }

    /// Like [`Raw::connect`], but `None` where a node may be dead, cut off
    /// or closing: no TCP connection within [`RECV_TIMEOUT`], or no CONNACK.
    pub async fn try_connect(addr: SocketAddr, connect: Connect) -> Option<(Raw, Connack)> {
        let stream = tokio::time::timeout(RECV_TIMEOUT, TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
        stream.set_nodelay(true).ok()?;
        let mut raw = Raw {
            stream,
            buf: Vec::new(),
            version: connect.version,
        };
        if !raw.send_lossy(&connect.encode()).await {
            return None;
        }
        let packet = raw.try_recv(RECV_TIMEOUT).await.ok()?;
        (packet.kind() == wire::CONNACK).then(|| {
            let connack = packet.connack(connect.version);
            (raw, connack)
        })
    }

    /// Like [`Raw::connect`], and asserts that the broker accepted it.
    pub async fn connect_ok(addr: SocketAddr, connect: Connect) -> (Raw, Connack) {
        let id = connect.client_id.clone();
        let (raw, connack) = Raw::connect(addr, connect).await;
        assert_eq!(connack.code, 0, "CONNACK for {id:?} refused: {connack:?}");
        (raw, connack)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(RECV_TIMEOUT, self.stream.write_all(bytes))
            .await
            .expect("write to broker timed out")
            .expect("write to broker failed");
    }

    /// Sends without panicking; the broker may already have closed.
    pub async fn send_lossy(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(RECV_TIMEOUT, self.stream.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Next packet, or why there was none within `timeout`.
    pub async fn try_recv(&mut self, timeout: Duration) -> Result<Packet, RecvError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(p) = wire::take_packet(&mut self.buf) {
                return Ok(p);
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(RecvError::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(RecvError::Closed),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Next packet; panics if none arrives within [`RECV_TIMEOUT`].
    pub async fn recv(&mut self) -> Packet {
        match self.try_recv(RECV_TIMEOUT).await {
            Ok(p) => p,
            Err(e) => panic!("expected a packet from the broker, got {e:?}"),
        }
    }

    /// Next packet, which must be a PUBLISH.
    pub async fn recv_publish(&mut self) -> Publish {
        let p = self.recv().await;
        p.publish(self.version)
    }

    /// Next packet, which must be of type `kind`.
    pub async fn recv_kind(&mut self, kind: u8) -> Packet {
        self.recv_kind_within(kind, RECV_TIMEOUT).await
    }

    /// Next packet within `timeout`, which must be of type `kind`.
    pub async fn recv_kind_within(&mut self, kind: u8, timeout: Duration) -> Packet {
        match self.try_recv(timeout).await {
            Ok(p) => {
                assert_eq!(p.kind(), kind, "expected packet type {kind}, got {p:?}");
                p
            }
            Err(e) => panic!("expected packet type {kind} within {timeout:?}, got {e:?}"),
        }
    }

    /// Sends SUBSCRIBE and returns the SUBACK codes.
    pub async fn subscribe(&mut self, pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        self.subscribe_with(pkid, filters, wire::Props::new()).await
    }

    pub async fn subscribe_with(
        &mut self,
        pkid: u16,
        filters: &[(&str, u8)],
        props: wire::Props,
    ) -> Vec<u8> {
        self.send(&wire::subscribe(self.version, pkid, filters, props))
            .await;
        let p = self.recv_kind(wire::SUBACK).await;
        let (got, codes) = p.suback(self.version);
        assert_eq!(got, pkid, "SUBACK packet id");
        codes
    }

    /// Publishes and completes the QoS flow (PUBACK, or PUBREC/PUBREL/PUBCOMP).
    pub async fn publish(&mut self, publish: wire::Pub) {
        self.publish_within(publish, RECV_TIMEOUT).await;
    }

    /// As [`Raw::publish`], waiting up to `patience` for each answer.
    pub async fn publish_within(&mut self, publish: wire::Pub, patience: Duration) {
        self.send(&publish.encode(self.version)).await;
        match publish.qos {
            0 => {}
            1 => {
                let (pkid, reason) = self.recv_kind_within(wire::PUBACK, patience).await.ack();
                assert_eq!(pkid, publish.pkid, "PUBACK packet id");
                assert!(reason < 0x80, "PUBACK reason {reason:#04x}");
            }
            _ => {
                let (pkid, reason) = self.recv_kind_within(wire::PUBREC, patience).await.ack();
                assert_eq!(pkid, publish.pkid, "PUBREC packet id");
                assert!(reason < 0x80, "PUBREC reason {reason:#04x}");
                self.send(&wire::ack(wire::PUBREL, pkid)).await;
                let (pkid, _) = self.recv_kind_within(wire::PUBCOMP, patience).await.ack();
                assert_eq!(pkid, publish.pkid, "PUBCOMP packet id");
            }
        }
    }

    /// Asserts that no packet arrives for `d` (and the socket stays open).
    pub async fn expect_silence(&mut self, d: Duration) {
        match self.try_recv(d).await {
            Err(RecvError::Timeout) => {}
            Err(RecvError::Closed) => panic!("broker closed the connection unexpectedly"),
            Ok(p) => panic!("expected no packet, got {p:?}"),
        }
    }

    /// Reads until the broker closes the connection; returns the packets
    /// received before the close. Panics if it stays open for `timeout`.
    pub async fn expect_closed(&mut self, timeout: Duration) -> Vec<Packet> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.try_recv(left).await {
                Ok(p) => seen.push(p),
                Err(RecvError::Closed) => return seen,
                Err(RecvError::Timeout) => panic!(
                    "broker kept the connection open for {timeout:?}; packets seen: {seen:?}"
                ),
            }
        }
    }

    /// Closes the socket without DISCONNECT (an abnormal disconnect).
    pub fn drop_abruptly(self) {
        // Linger 0 makes the close an RST: unambiguous network failure.
        let std = self.stream.into_std().unwrap();
        let sock = socket2::SockRef::from(&std);
        let _ = sock.set_linger(Some(Duration::ZERO));
        drop(std);
    }

    /// Shrinks the kernel receive buffer (used by slow-consumer tests so
    /// the broker sees back-pressure sooner).
    pub fn set_recv_buffer(&self, bytes: usize) {
        let sock = socket2::SockRef::from(&self.stream);
        sock.set_recv_buffer_size(bytes).unwrap();
    }
}
