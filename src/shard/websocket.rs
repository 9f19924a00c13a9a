//! MQTT over WebSocket (spec 6.0), sans-IO: the HTTP upgrade and the
//! framing, with no socket and no runtime.
//!
//! tungstenite does the protocol work. Its `WebSocketContext` is the frame
//! codec plus the per-connection state (a fragmented message being
//! reassembled, the closing handshake, a pong owed) without a stream; each
//! call here lends it, as its stream, the bytes just read from the socket
//! and a `Vec` to write frames into. The connection task does the I/O:
//! it feeds what the socket gave to [`WsFraming::handle_wire`], which
//! appends the payloads of binary messages to the MQTT read buffer. Frame
//! boundaries mean nothing to MQTT (spec 6.0: a packet may span frames and
//! a frame may hold several packets), so the payloads are simply one byte
//! stream for the existing decoder. Outgoing, each flush of a connection's
//! output becomes one binary frame, written here ([`WsFraming::send`]), and
//! the writer takes every encoded byte, tungstenite's pongs and close frames
//! included, with [`WsFraming::take_output`].
//!
//! The state is plain data and `Send`, so a connection whose CONNECT was
//! read on one shard moves to its home shard with its framing intact: a
//! half-received frame, a message still missing fragments, a pong not yet
//! written.

use std::io::{self, Read, Write};

use bytes::BytesMut;
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{Request, create_response, write_response};
use tungstenite::http::{HeaderValue, StatusCode};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Message, Utf8Bytes};

/// The only path upgraded; the one MQTT clients (paho, browsers' mqtt.js)
/// use by default.
pub const PATH: &str = "/mqtt";

/// The subprotocol a client must offer and the broker selects (spec 6.0:
/// "the WebSocket Subprotocol name selected and returned by the Server MUST
/// be 'mqtt'").
pub const SUBPROTOCOL: &str = "mqtt";

/// An upgrade request still incomplete past this many bytes is refused, so
/// a client cannot make the broker buffer headers without end. Browsers
/// send well under 2 KiB.
const MAX_REQUEST: usize = 8 * 1024;

/// How far a WebSocket message may exceed the largest MQTT packet: a
/// client may put a packet of the maximum size and a few small ones in one
/// message. tungstenite buffers a whole message before handing it over, so
/// this bound keeps a connection's memory of the same order as over TCP.
const MESSAGE_SLACK: usize = 64 * 1024;

/// What tungstenite copies in at a time from the bytes read, and the
/// buffer it allocates up front and keeps for the connection's life. Its
/// default, 128 KiB, is far too much to hold for every idle client; 4 KiB
/// was most of an idle WebSocket connection. A frame larger than this
/// grows the buffer; the copying in is from memory, not the socket, so
/// small steps cost little.
const READ_CHUNK: usize = 256;

/// The answer to an HTTP upgrade request.
#[derive(Debug)]
pub enum Upgrade {
    /// The request is not complete: read more.
    Incomplete,
    /// Write `response`, then speak WebSocket through `framing`. The first
    /// `consumed` bytes were the request; any after it are already frames.
    Accepted {
        response: Vec<u8>,
        framing: Box<WsFraming>,
        consumed: usize,
    },
    /// Write `response`, then close.
    Refused {
        response: Vec<u8>,
        why: &'static str,
    },
}

/// Decides on the HTTP request at the start of `request`.
/// `max_packet_size` bounds the messages the connection will accept.
pub fn handle_upgrade(request: &[u8], max_packet_size: usize) -> Upgrade {
    let (consumed, parsed) = match Request::try_parse(request) {
        Ok(Some(parsed)) => parsed,
        Ok(None) if request.len() < MAX_REQUEST => return Upgrade::Incomplete,
        Ok(None) => {
            return refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request too large",
            );
        }
        // tungstenite's parser refuses anything but a well-formed HTTP/1.1 GET.
        Err(_) => return refuse(StatusCode::BAD_REQUEST, "not an HTTP/1.1 GET request"),
    };
    if parsed.uri().path() != PATH {
        return refuse(StatusCode::NOT_FOUND, "path is not /mqtt");
    }
    if !offers_mqtt(&parsed) {
        return refuse(StatusCode::BAD_REQUEST, "subprotocol mqtt not offered");
    }
    // Checks the upgrade headers and the key, and computes the accept key.
    let Ok(mut response) = create_response(&parsed) else {
        return refuse(StatusCode::BAD_REQUEST, "not a WebSocket upgrade");
    };
    response.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let mut bytes = Vec::new();
    if write_response(&mut bytes, &response).is_err() {
        return refuse(StatusCode::BAD_REQUEST, "cannot answer this HTTP version");
    }
    Upgrade::Accepted {
        response: bytes,
        framing: Box::new(WsFraming::new(max_packet_size)),
        consumed,
    }
}

/// Whether any `Sec-WebSocket-Protocol` header lists `mqtt`; a client may
/// offer several, in one comma-separated header or in several headers.
fn offers_mqtt(request: &Request) -> bool {
    request
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|offered| offered.trim() == SUBPROTOCOL)
}

fn refuse(status: StatusCode, why: &'static str) -> Upgrade {
    let response =
        format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").into_bytes();
    Upgrade::Refused { response, why }
}

/// One connection's WebSocket state once upgraded.
#[derive(Debug)]
pub struct WsFraming {
    context: WebSocketContext,
    /// Frames encoded and not yet taken by the writer.
    output: Vec<u8>,
}

/// Why a WebSocket connection ended. A close frame for the client has been
/// queued in the output where the protocol allows one.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("the client closed the WebSocket")]
    Closed,
    #[error("text frame (MQTT travels in binary frames only, spec 6.0)")]
    TextFrame,
    #[error("{0}")]
    Protocol(tungstenite::Error),
}

impl WsFraming {
    fn new(max_packet_size: usize) -> WsFraming {
        let max_message = max_packet_size.saturating_add(MESSAGE_SLACK);
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_CHUNK)
            // Every call here ends with a flush into `output`; tungstenite
            // need not hold frames back.
            .write_buffer_size(0)
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message));
        WsFraming {
            context: WebSocketContext::new(Role::Server, Some(config)),
            output: Vec::new(),
        }
    }

    /// Takes bytes read from the socket and appends the payloads of the
    /// binary messages they complete to `mqtt`. A partial frame is kept for
    /// the next call. Pings are answered in the output.
    pub fn handle_wire(&mut self, wire: &[u8], mqtt: &mut BytesMut) -> Result<(), WsError> {
        let mut io = Io {
            input: wire,
            output: &mut self.output,
        };
        loop {
            match self.context.read(&mut io) {
                Ok(Message::Binary(payload)) => mqtt.extend_from_slice(&payload),
                // tungstenite queued the pong; the next read (or the flush
                // at the end of this one) writes it.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Text(_)) => {
                    let _ = self
                        .context
                        .close(&mut io, Some(close_frame(CloseCode::Unsupported)));
                    return Err(WsError::TextFrame);
                }
                Ok(Message::Close(_)) => {
                    // Writes the close reply tungstenite queued; it then
                    // reports the connection closed, as it now is.
                    let _ = self.context.flush(&mut io);
                    return Err(WsError::Closed);
                }
                Err(tungstenite::Error::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    // Every byte of `wire` is now inside tungstenite.
                    return Ok(());
                }
                Err(error) => {
                    let code = match error {
                        tungstenite::Error::Capacity(_) => CloseCode::Size,
                        _ => CloseCode::Protocol,
                    };
                    let _ = self.context.close(&mut io, Some(close_frame(code)));
                    return Err(WsError::Protocol(error));
                }
            }
        }
    }

    /// Wraps `mqtt`, what the connection had to send, in one binary
    /// message: a single unmasked frame (RFC 6455 5.2, 5.1: a server does
    /// not mask). Written here rather than by tungstenite, which would copy
    /// the bytes twice and keep a buffer as large as the largest message
    /// for the connection's life. Once the closing handshake has begun no
    /// one is left to read MQTT bytes, and they are dropped.
    pub fn send(&mut self, mqtt: &[u8]) {
        if !self.context.can_write() {
            return;
        }
        self.output.push(0x80 | 0x2);
        match mqtt.len() {
            len @ 0..126 => self.output.push(len as u8),
            len => match u16::try_from(len) {
                Ok(len) => {
                    self.output.push(126);
                    self.output.extend_from_slice(&len.to_be_bytes());
                }
                Err(_) => {
                    self.output.push(127);
                    self.output.extend_from_slice(&(len as u64).to_be_bytes());
                }
            },
        }
        self.output.extend_from_slice(mqtt);
    }

    /// Starts the closing handshake, unless it has begun already.
    pub fn close(&mut self) {
        let mut io = Io {
            input: &[],
            output: &mut self.output,
        };
        let _ = self
            .context
            .close(&mut io, Some(close_frame(CloseCode::Normal)));
    }

    /// Whether there are encoded bytes for the writer.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Everything encoded for the socket so far.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }
}

fn close_frame(code: CloseCode) -> CloseFrame {
    CloseFrame {
        code,
        reason: Utf8Bytes::default(),
    }
}

/// The socket as tungstenite sees it during one call: reads come from the
/// bytes the socket just gave, and would block once those are used up
/// (there are no more until the next socket read); writes go to the
/// output.
struct Io<'a> {
    input: &'a [u8],
    output: &'a mut Vec<u8>,
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.input.read(buf)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
    use tungstenite::protocol::frame::{Frame, FrameHeader};

    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(path: &str, protocol: Option<&str>) -> Vec<u8> {
        let protocol = protocol
            .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
            .unwrap_or_default();
        format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
             Sec-WebSocket-Version: 13\r\n{protocol}\r\n"
        )
        .into_bytes()
    }

    fn accepted(request: &[u8]) -> (String, WsFraming, usize) {
        match handle_upgrade(request, 1024) {
            Upgrade::Accepted {
                response,
                framing,
                consumed,
            } => (
                String::from_utf8(response).expect("ASCII response"),
                *framing,
                consumed,
            ),
            other => panic!("expected an upgrade, got {other:?}"),
        }
    }

    fn refused_status(request: &[u8]) -> String {
        match handle_upgrade(request, 1024) {
            Upgrade::Refused { response, .. } => String::from_utf8(response)
                .expect("ASCII response")
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// A data frame, masked as a client sends it.
    fn client_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        masked(Frame::message(payload.to_vec(), opcode, fin))
    }

    fn masked(mut frame: Frame) -> Vec<u8> {
        frame.header_mut().mask = Some([1, 2, 3, 4]);
        let mut out = Vec::new();
        frame.format(&mut out).expect("write to Vec");
        out
    }

    fn binary(payload: &[u8]) -> Vec<u8> {
        client_frame(OpCode::Data(Data::Binary), true, payload)
    }

    /// Parses the server's (unmasked) frames out of `bytes`.
    fn server_frames(bytes: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
        let mut cursor = io::Cursor::new(bytes);
        let mut frames = Vec::new();
        while let Some((header, len)) = FrameHeader::parse(&mut cursor).expect("valid header") {
            let start = cursor.position() as usize;
            let end = start + len as usize;
            frames.push((header.opcode, bytes[start..end].to_vec()));
            cursor.set_position(end as u64);
        }
        frames
    }

    #[test]
    fn upgrade_selects_mqtt_and_computes_the_accept_key() {
        let request = request("/mqtt", Some("mqttv3.1, mqtt"));
        let (response, _, consumed) = accepted(&request);
        assert_eq!(consumed, request.len());
        assert!(response.starts_with("HTTP/1.1 101"), "{response}");
        // The example key of RFC 6455 section 1.3.
        assert!(
            response.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{response}"
        );
        assert!(
            response.contains("sec-websocket-protocol: mqtt\r\n"),
            "{response}"
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            refused_status(&request("/other", Some("mqtt"))),
            "HTTP/1.1 404 Not Found"
        );
        assert_eq!(
            refused_status(&request("/mqtt", None)),
            "HTTP/1.1 400 Bad Request"
        );
        assert_eq!(
            refused_status(&request("/mqtt", Some("wamp"))),
            "HTTP/1.1 400 Bad Request"
        );
        assert_eq!(
            refused_status(b"POST /mqtt HTTP/1.1\r\n\r\n"),
            "HTTP/1.1 400 Bad Request"
        );
        let plain_get = b"GET /mqtt HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";
        assert_eq!(refused_status(plain_get), "HTTP/1.1 400 Bad Request");
    }

    #[test]
    fn partial_request_waits_then_is_bounded() {
        let request = request("/mqtt", Some("mqtt"));
        assert!(matches!(
            handle_upgrade(&request[..request.len() - 1], 1024),
            Upgrade::Incomplete
        ));
        let endless = [
            b"GET /mqtt HTTP/1.1\r\nX: ".as_slice(),
            &[b'a'; MAX_REQUEST],
        ]
        .concat();
        assert_eq!(
            refused_status(&endless),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
    }

    #[test]
    fn payloads_form_one_stream_across_frames_and_reads() {
        let (_, mut framing, _) = accepted(&request("/mqtt", Some("mqtt")));
        let wire = [
            binary(b"ab"),
            client_frame(OpCode::Data(Data::Binary), false, b"cd"),
            client_frame(OpCode::Data(Data::Continue), true, b"ef"),
            binary(b"gh"),
        ]
        .concat();
        let mut mqtt = BytesMut::new();
        // Byte by byte: frames split across socket reads.
        for byte in wire.chunks(1) {
            framing.handle_wire(byte, &mut mqtt).expect("valid frames");
        }
        assert_eq!(&mqtt[..], b"abcdefgh");
        assert!(!framing.has_output());
    }

    #[test]
    fn ping_is_answered_and_close_is_acknowledged() {
        let (_, mut framing, _) = accepted(&request("/mqtt", Some("mqtt")));
        let mut mqtt = BytesMut::new();
        let ping = masked(Frame::ping(b"hi".to_vec()));
        framing.handle_wire(&ping, &mut mqtt).expect("ping");
        assert_eq!(
            server_frames(&framing.take_output()),
            [(OpCode::Control(Control::Pong), b"hi".to_vec())]
        );
        let close = masked(Frame::close(None));
        assert!(matches!(
            framing.handle_wire(&close, &mut mqtt),
            Err(WsError::Closed)
        ));
        let frames = server_frames(&framing.take_output());
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].0, OpCode::Control(Control::Close));
    }

    #[test]
    fn text_frame_is_refused_with_a_close_frame() {
        let (_, mut framing, _) = accepted(&request("/mqtt", Some("mqtt")));
        let text = client_frame(OpCode::Data(Data::Text), true, b"hello");
        let mut mqtt = BytesMut::new();
        assert!(matches!(
            framing.handle_wire(&text, &mut mqtt),
            Err(WsError::TextFrame)
        ));
        let frames = server_frames(&framing.take_output());
        assert_eq!(frames[0].1[..2], 1003u16.to_be_bytes());
        assert!(mqtt.is_empty());
    }

    #[test]
    fn unmasked_and_oversized_frames_are_refused() {
        let (_, mut framing, _) = accepted(&request("/mqtt", Some("mqtt")));
        let mut unmasked = Vec::new();
        Frame::message(b"x".to_vec(), OpCode::Data(Data::Binary), true)
            .format(&mut unmasked)
            .expect("write to Vec");
        let mut mqtt = BytesMut::new();
        assert!(matches!(
            framing.handle_wire(&unmasked, &mut mqtt),
            Err(WsError::Protocol(_))
        ));

        let (_, mut framing, _) = accepted(&request("/mqtt", Some("mqtt")));
        let big = binary(&vec![0; 1024 + MESSAGE_SLACK + 1]);
        assert!(matches!(
            framing.handle_wire(&big, &mut mqtt),
            Err(WsError::Protocol(tungstenite::Error::Capacity(_)))
        ));
        let frames = server_frames(&framing.take_output());
        assert_eq!(frames[0].1[..2], 1009u16.to_be_bytes());
    }

    #[test]
    fn send_wraps_output_in_one_binary_frame() {
        let (_, mut framing, _) = accepted(&request("/mqtt", Some("mqtt")));
        framing.send(b"\x20\x02\x00\x00\xd0\x00");
        assert_eq!(
            server_frames(&framing.take_output()),
            [(
                OpCode::Data(Data::Binary),
                b"\x20\x02\x00\x00\xd0\x00".to_vec()
            )]
        );
        framing.close();
        let frames = server_frames(&framing.take_output());
        assert_eq!(frames[0].1[..2], 1000u16.to_be_bytes());
        framing.send(b"too late");
        assert!(!framing.has_output(), "nothing after the close frame");
    }

    #[test]
    fn send_uses_each_length_form() {
        let (_, mut framing, _) = accepted(&request("/mqtt", Some("mqtt")));
        let payloads = [vec![1; 125], vec![2; 126], vec![3; 65_535], vec![4; 65_536]];
        for payload in &payloads {
            framing.send(payload);
        }
        let output = framing.take_output();
        // Headers of 2, 4, 4 and 10 bytes.
        assert_eq!(
            output.len(),
            payloads.iter().map(Vec::len).sum::<usize>() + 2 + 4 + 4 + 10
        );
        let binary = OpCode::Data(Data::Binary);
        assert_eq!(
            server_frames(&output),
            payloads.map(|payload| (binary, payload))
        );
    }
}
