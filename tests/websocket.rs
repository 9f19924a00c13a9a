//! MQTT over WebSocket (spec 6.0) against the real binary: the upgrade on
//! `/mqtt` with subprotocol `mqtt`, MQTT bytes split across frames and
//! several packets in one frame, messages crossing between WebSocket and
//! TCP clients, and the refusals (wrong path, missing subprotocol, text
//! frames).
//!
//! The clients are synchronous: tungstenite does the client handshake and
//! reads frames; frames are written by hand (masked, as a client must) so a
//! test decides exactly where the bytes are cut.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::wire::{self, Connect, Packet, Pub, Will};
use common::{Broker, RECV_TIMEOUT, unique_id};
use tungstenite::handshake::client::Response;
use tungstenite::http::StatusCode;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::{ClientRequestBuilder, HandshakeError, Message, WebSocket};

/// Two shards, so that some connections are accepted on one shard and
/// served on the other, with their WebSocket state handed over.
fn broker() -> Broker {
    Broker::start(&["--ws-listen", "127.0.0.1:0", "--cores", "2"])
}

fn request(addr: SocketAddr, path: &str, protocol: Option<&str>) -> ClientRequestBuilder {
    let uri = format!("ws://{addr}{path}").parse().expect("valid URI");
    let request = ClientRequestBuilder::new(uri);
    match protocol {
        Some(protocol) => request.with_sub_protocol(protocol),
        None => request,
    }
}

/// The handshake's outcome: the socket, or the HTTP status it was refused
/// with.
fn handshake(
    addr: SocketAddr,
    path: &str,
    protocol: Option<&str>,
) -> Result<(WebSocket<TcpStream>, Response), StatusCode> {
    let stream = TcpStream::connect(addr).expect("TCP connect");
    stream.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    match tungstenite::client(request(addr, path, protocol), stream) {
        Ok(done) => Ok(done),
        Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => Err(response.status()),
        Err(error) => panic!("handshake failed without an HTTP answer: {error}"),
    }
}

/// One MQTT client over a WebSocket or over plain TCP, synchronous.
enum Link {
    Ws(Box<WebSocket<TcpStream>>),
    Tcp(TcpStream),
}

struct Client {
    link: Link,
    /// Bytes received and not yet taken as a packet.
    buf: Vec<u8>,
}

impl Client {
    fn ws(addr: SocketAddr) -> Client {
        let (ws, response) = handshake(addr, "/mqtt", Some("mqtt")).expect("upgrade accepted");
        assert_eq!(
            response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .map(|v| v.as_bytes()),
            Some(&b"mqtt"[..])
        );
        Client {
            link: Link::Ws(Box::new(ws)),
            buf: Vec::new(),
        }
    }

    fn tcp(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("TCP connect");
        stream.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            link: Link::Tcp(stream),
            buf: Vec::new(),
        }
    }

    /// Writes raw bytes: frames built by [`frame`] on a WebSocket, MQTT
    /// bytes on TCP.
    fn write(&mut self, bytes: &[u8]) {
        let stream = match &mut self.link {
            Link::Ws(ws) => ws.get_mut(),
            Link::Tcp(stream) => stream,
        };
        stream.write_all(bytes).expect("write to broker");
        stream.flush().expect("flush");
    }

    /// Sends MQTT bytes: in one binary frame on a WebSocket.
    fn send(&mut self, mqtt: &[u8]) {
        match &self.link {
            Link::Ws(_) => self.write(&frame(OpCode::Data(Data::Binary), true, mqtt)),
            Link::Tcp(_) => self.write(mqtt),
        }
    }

    /// Connects with `connect` and expects an accepting CONNACK.
    fn connect(&mut self, connect: Connect) {
        self.send(&connect.encode());
        self.expect_connack();
    }

    fn expect_connack(&mut self) {
        let connack = self.recv_kind(wire::CONNACK).connack(wire::V4);
        assert_eq!(connack.code, 0, "CONNACK refused: {connack:?}");
    }

    /// The next MQTT packet.
    fn recv(&mut self) -> Packet {
        loop {
            if let Some(packet) = wire::take_packet(&mut self.buf) {
                return packet;
            }
            match &mut self.link {
                Link::Ws(ws) => match ws.read() {
                    Ok(Message::Binary(payload)) => self.buf.extend_from_slice(&payload),
                    Ok(Message::Ping(_) | Message::Pong(_)) => {}
                    Ok(other) => panic!("expected a binary message, got {other:?}"),
                    Err(error) => panic!("expected a packet, got {error}"),
                },
                Link::Tcp(stream) => {
                    let mut chunk = [0; 4096];
                    match stream.read(&mut chunk) {
                        Ok(0) => panic!("broker closed the connection"),
                        Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                        Err(error) => panic!("expected a packet, got {error}"),
                    }
                }
            }
        }
    }

    fn recv_kind(&mut self, kind: u8) -> Packet {
        let packet = self.recv();
        assert_eq!(packet.kind(), kind, "expected type {kind}, got {packet:?}");
        packet
    }

    fn ws_mut(&mut self) -> &mut WebSocket<TcpStream> {
        match &mut self.link {
            Link::Ws(ws) => ws,
            Link::Tcp(_) => panic!("not a WebSocket client"),
        }
    }

    /// Reads until the broker's close frame; returns its code. The socket
    /// must then reach end-of-file.
    fn expect_close(&mut self) -> CloseCode {
        let ws = self.ws_mut();
        let code = loop {
            match ws.read() {
                Ok(Message::Close(frame)) => break frame.map(|f| f.code),
                Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_)) => {}
                Ok(other) => panic!("expected a close frame, got {other:?}"),
                Err(error) => panic!("expected a close frame, got {error}"),
            }
        };
        expect_eof(ws.get_mut());
        code.expect("close frame with a status code")
    }
}

/// A client frame: masked, as RFC 6455 requires of clients.
fn frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = Frame::message(payload.to_vec(), opcode, fin);
    frame.header_mut().mask = Some([0x37, 0xfa, 0x21, 0x3d]);
    let mut out = Vec::new();
    frame.format(&mut out).expect("write to Vec");
    out
}

fn binary(payload: &[u8]) -> Vec<u8> {
    frame(OpCode::Data(Data::Binary), true, payload)
}

/// `bytes` in binary frames of at most `size` bytes each.
fn binary_pieces(bytes: &[u8], size: usize) -> Vec<u8> {
    bytes.chunks(size).flat_map(binary).collect()
}

fn expect_eof(stream: &mut TcpStream) {
    let deadline = Instant::now() + RECV_TIMEOUT;
    let mut chunk = [0; 256];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return,
            Err(error) => panic!("expected the broker to close, got {error}"),
        }
        assert!(Instant::now() < deadline, "broker kept the socket open");
    }
}

fn subscribe(client: &mut Client, filter: &str, qos: u8) {
    client.send(&wire::subscribe(
        wire::V4,
        1,
        &[(filter, qos)],
        wire::Props::new(),
    ));
    let suback = client.recv_kind(wire::SUBACK);
    assert_eq!(suback.body, [0, 1, qos]);
}

fn expect_publish(client: &mut Client, topic: &str, payload: &[u8]) {
    let publish = client.recv_kind(wire::PUBLISH).publish(wire::V4);
    assert_eq!(publish.topic, topic);
    assert_eq!(publish.payload, payload);
}

#[test]
fn mqtt_bytes_split_across_frames_and_packed_into_one() {
    let broker = broker();
    let addr = broker.ws_addr();
    assert_ne!(addr, broker.addr, "the harness still finds TCP first");
    // Several clients: with two shards, some are handed over to the other
    // shard mid-stream, with a frame cut in half at that moment.
    for n in 0..6 {
        let mut client = Client::ws(addr);
        let connect = Connect::v4(&unique_id("ws-split")).encode();
        let subscribe = wire::subscribe(wire::V4, 1, &[("split/#", 1)], wire::Props::new());
        // CONNECT in frames of 3 bytes, then a frame holding SUBSCRIBE and
        // PINGREQ, written with the cut inside the second frame's header
        // and, for odd n, the rest only after a pause.
        let mut bytes = binary_pieces(&connect, 3);
        let cut = bytes.len() + 1;
        bytes.extend(binary(&[subscribe, wire::pingreq()].concat()));
        client.write(&bytes[..cut]);
        if n % 2 == 1 {
            std::thread::sleep(Duration::from_millis(50));
        }
        client.write(&bytes[cut..]);
        client.expect_connack();
        assert_eq!(client.recv_kind(wire::SUBACK).body, [0, 1, 1]);
        client.recv_kind(wire::PINGRESP);

        // Three PUBLISHes to itself: two in one frame, the third split
        // across a fragmented message (a first frame and a continuation).
        let publishes: Vec<Vec<u8>> = (0..3)
            .map(|i| Pub::new("split/t", format!("m{i}").as_bytes()).encode(wire::V4))
            .collect();
        let third = &publishes[2];
        let mut bytes = binary(&[publishes[0].clone(), publishes[1].clone()].concat());
        bytes.extend(frame(OpCode::Data(Data::Binary), false, &third[..4]));
        bytes.extend(frame(OpCode::Data(Data::Continue), true, &third[4..]));
        client.write(&bytes);
        for i in 0..3 {
            expect_publish(&mut client, "split/t", format!("m{i}").as_bytes());
        }
    }
}

#[test]
fn tcp_and_websocket_clients_exchange_messages() {
    let broker = broker();
    let ws_addr = broker.ws_addr();

    let mut ws_sub = Client::ws(ws_addr);
    ws_sub.connect(Connect::v4(&unique_id("ws-sub")));
    subscribe(&mut ws_sub, "to-ws/+", 1);
    let mut tcp_sub = Client::tcp(broker.addr);
    tcp_sub.connect(Connect::v4(&unique_id("tcp-sub")));
    subscribe(&mut tcp_sub, "to-tcp/+", 1);

    let mut tcp_pub = Client::tcp(broker.addr);
    tcp_pub.connect(Connect::v4(&unique_id("tcp-pub")));
    tcp_pub.send(&Pub::new("to-ws/a", b"from tcp").qos(1, 7).encode(wire::V4));
    assert_eq!(tcp_pub.recv_kind(wire::PUBACK).body, [0, 7]);
    expect_publish(&mut ws_sub, "to-ws/a", b"from tcp");

    let mut ws_pub = Client::ws(ws_addr);
    ws_pub.connect(Connect::v4(&unique_id("ws-pub")));
    // A payload larger than one read of the broker's socket.
    let big = vec![0x5a; 64 * 1024];
    ws_pub.send(&Pub::new("to-tcp/b", &big).qos(1, 9).encode(wire::V4));
    assert_eq!(ws_pub.recv_kind(wire::PUBACK).body, [0, 9]);
    expect_publish(&mut tcp_sub, "to-tcp/b", &big);

    // Ping frames are answered; the MQTT session is undisturbed.
    let ws = ws_sub.ws_mut();
    ws.send(Message::Ping(b"still there?".to_vec().into()))
        .expect("send ping");
    match ws.read().expect("pong") {
        Message::Pong(payload) => assert_eq!(&payload[..], b"still there?"),
        other => panic!("expected a pong, got {other:?}"),
    }
    tcp_pub.send(&Pub::new("to-ws/c", b"after ping").encode(wire::V4));
    expect_publish(&mut ws_sub, "to-ws/c", b"after ping");
}

#[test]
fn close_frame_without_disconnect_publishes_the_will() {
    let broker = broker();
    let mut watcher = Client::tcp(broker.addr);
    watcher.connect(Connect::v4(&unique_id("watcher")));
    subscribe(&mut watcher, "wills/#", 0);

    let mut client = Client::ws(broker.ws_addr());
    client.connect(Connect::v4(&unique_id("ws-will")).will(Will::new("wills/ws", b"gone")));
    let ws = client.ws_mut();
    ws.close(None).expect("send close");
    // The broker acknowledges the close, then closes the socket.
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(error) => panic!("expected the close handshake to finish, got {error}"),
        }
    }
    expect_publish(&mut watcher, "wills/ws", b"gone");
}

#[test]
fn wrong_path_is_not_found() {
    let broker = broker();
    let status = handshake(broker.ws_addr(), "/other", Some("mqtt")).map(|_| ());
    assert_eq!(status, Err(StatusCode::NOT_FOUND));
}

#[test]
fn missing_or_other_subprotocol_is_refused() {
    let broker = broker();
    let addr = broker.ws_addr();
    for protocol in [None, Some("wamp"), Some("mqttv3.1")] {
        let status = handshake(addr, "/mqtt", protocol).map(|_| ());
        assert_eq!(status, Err(StatusCode::BAD_REQUEST), "{protocol:?}");
    }
}

#[test]
fn text_frame_closes_the_connection() {
    let broker = broker();
    let addr = broker.ws_addr();

    // Before CONNECT.
    let mut client = Client::ws(addr);
    client
        .ws_mut()
        .send(Message::Text("hello".into()))
        .expect("send text");
    assert_eq!(client.expect_close(), CloseCode::Unsupported);

    // After CONNECT, while the session is live.
    let mut client = Client::ws(addr);
    client.connect(Connect::v4(&unique_id("ws-text")));
    client.write(&frame(
        OpCode::Data(Data::Text),
        true,
        &Pub::new("t", b"x").encode(wire::V4),
    ));
    assert_eq!(client.expect_close(), CloseCode::Unsupported);
}

#[test]
fn broker_side_close_sends_a_close_frame() {
    let broker = broker();
    let mut client = Client::ws(broker.ws_addr());
    client.connect(Connect::v4(&unique_id("ws-bad")));
    // A second CONNECT is a protocol violation (spec 3.1.0-2).
    client.send(&Connect::v4("again").encode());
    assert_eq!(client.expect_close(), CloseCode::Normal);
}

#[test]
fn refused_connect_arrives_framed_before_the_close() {
    let broker = broker();
    let mut client = Client::ws(broker.ws_addr());
    client.send(&Connect::new(9, &unique_id("ws-level-9")).encode());
    let connack = client.recv_kind(wire::CONNACK).connack(wire::V4);
    assert_eq!(connack.code, 0x01, "unacceptable protocol version");
    assert_eq!(client.expect_close(), CloseCode::Normal);
}
