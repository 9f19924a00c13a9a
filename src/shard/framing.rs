//! What lies between a connection's socket and its MQTT bytes, when
//! anything does: TLS ([`TlsLayer`]), WebSocket ([`WsFraming`]), or both
//! (wss: WebSocket frames inside TLS records). Sans-IO like its layers:
//! the connection task reads the socket and hands the bytes to
//! [`Framing::handle_wire`], and writes what [`Framing::take_output`]
//! gives. Plain TCP has no `Framing` at all, so its path stays a direct
//! read into the decoder's buffer.
//!
//! A `Framing` with no WebSocket yet, on a WebSocket listener, passes the
//! HTTP upgrade through (decrypted, over TLS); once the upgrade is
//! answered, [`Framing::upgraded`] puts the WebSocket layer on top.
//! Everything here is plain data and `Send`: it moves with the connection
//! to its home shard (see [`super::tls`] for why the handshake happens
//! before).

use bytes::BytesMut;
use rustls::server::UnbufferedServerConnection;

use super::tls::{TlsError, TlsLayer};
use super::websocket::{WsError, WsFraming};

/// A connection's layers, outermost (TLS) first.
#[derive(Debug, Default)]
pub struct Framing {
    tls: Option<TlsLayer>,
    ws: Option<WsFraming>,
    /// Output of a connection with neither layer yet: the answer to a
    /// plain WebSocket upgrade.
    raw: Vec<u8>,
}

/// Why a layer ended the connection.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("{0}")]
    WebSocket(#[from] WsError),
}

impl Framing {
    /// A connection on a TLS listener, before its handshake.
    pub fn tls(session: UnbufferedServerConnection) -> Framing {
        Framing {
            tls: Some(TlsLayer::new(session)),
            ..Framing::default()
        }
    }

    /// Puts the WebSocket layer on, once the upgrade is answered, and
    /// appends to `mqtt` what `frames`, the bytes that followed the
    /// request (already out of TLS), complete.
    pub fn upgraded(
        &mut self,
        ws: WsFraming,
        frames: &[u8],
        mqtt: &mut BytesMut,
    ) -> Result<(), FramingError> {
        self.ws.insert(ws).handle_wire(frames, mqtt)?;
        Ok(())
    }

    /// Takes bytes read from the socket and appends to `mqtt` what they
    /// complete: MQTT bytes, or before the upgrade the HTTP request.
    pub fn handle_wire(&mut self, wire: &[u8], mqtt: &mut BytesMut) -> Result<(), FramingError> {
        match (&mut self.tls, &mut self.ws) {
            (None, None) => mqtt.extend_from_slice(wire),
            (Some(tls), None) => tls.handle_wire(wire, mqtt)?,
            (None, Some(ws)) => ws.handle_wire(wire, mqtt)?,
            (Some(tls), Some(ws)) => {
                let mut frames = BytesMut::new();
                let decrypted = tls.handle_wire(wire, &mut frames);
                // Frames decrypted before a TLS error still count: they
                // may be a close frame.
                ws.handle_wire(&frames, mqtt)?;
                decrypted?;
            }
        }
        Ok(())
    }

    /// Queues `bytes` for the client: MQTT bytes in a binary frame once
    /// upgraded, the upgrade's HTTP answer before.
    pub fn send(&mut self, bytes: &[u8]) {
        match (&mut self.tls, &mut self.ws) {
            (_, Some(ws)) => ws.send(bytes),
            (Some(tls), None) => tls.send(bytes),
            (None, None) => self.raw.extend_from_slice(bytes),
        }
    }

    /// Starts closing: the WebSocket closing handshake, then TLS's
    /// close_notify.
    pub fn close(&mut self) {
        if let Some(ws) = &mut self.ws {
            ws.close();
        }
        if let Some(tls) = &mut self.tls {
            // The close frame goes out before the close_notify.
            if let Some(ws) = &mut self.ws {
                tls.send(&ws.take_output());
            }
            tls.close();
        }
    }

    /// Whether there are bytes for the writer: a pong, a close frame, a
    /// handshake reply.
    pub fn has_output(&self) -> bool {
        !self.raw.is_empty()
            || self.ws.as_ref().is_some_and(WsFraming::has_output)
            || self.tls.as_ref().is_some_and(TlsLayer::has_output)
    }

    /// Everything encoded for the socket so far.
    pub fn take_output(&mut self) -> Vec<u8> {
        let frames = match &mut self.ws {
            Some(ws) => ws.take_output(),
            None => std::mem::take(&mut self.raw),
        };
        match &mut self.tls {
            None => frames,
            Some(tls) => {
                if !frames.is_empty() {
                    tls.send(&frames);
                }
                tls.take_output()
            }
        }
    }

    /// Whether a TLS handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(TlsLayer::is_handshaking)
    }

    /// The common name of a verified client certificate, if any.
    pub fn peer_identity(&self) -> Option<String> {
        self.tls.as_ref()?.peer_identity()
    }
}

impl FramingError {
    /// Whether the client ended the session itself (a WebSocket close).
    pub fn is_close(&self) -> bool {
        matches!(self, FramingError::WebSocket(WsError::Closed))
    }

    /// The TLS error, for the handshake failure count.
    pub fn tls(&self) -> Option<&TlsError> {
        match self {
            FramingError::Tls(error) => Some(error),
            FramingError::WebSocket(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::super::tls::testing::{client_input, client_output, handshake, pair};
    use super::super::websocket::{self, Upgrade};
    use super::*;

    /// wss end to end: the handshake, the HTTP upgrade inside TLS, MQTT
    /// bytes both ways in binary frames inside records, and the close: a
    /// close frame, then close_notify.
    #[test]
    fn websocket_runs_inside_tls() {
        let (server, mut client) = pair();
        let mut framing = Framing::tls(server);
        handshake(&mut client, |wire, plain| {
            framing.handle_wire(wire, plain).expect("handshake");
            framing.take_output()
        });
        assert!(!framing.is_handshaking());

        let request = "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";
        // A binary frame with a PINGREQ (0xc0 0x00) masked by 1 2 3 4,
        // sent with the request.
        let frame = [0x82, 0x82, 1, 2, 3, 4, 0xc1, 0x02];
        client
            .writer()
            .write_all(request.as_bytes())
            .expect("write");
        client.writer().write_all(&frame).expect("write");
        let mut http = BytesMut::new();
        framing
            .handle_wire(&client_output(&mut client), &mut http)
            .expect("request");
        let Upgrade::Accepted {
            response,
            framing: ws,
            consumed,
        } = websocket::handle_upgrade(&http, 1024)
        else {
            panic!("upgrade refused");
        };
        framing.send(&response);
        let answer = client_input(&mut client, &framing.take_output());
        assert!(answer.starts_with(b"HTTP/1.1 101"), "{answer:?}");
        let mut mqtt = BytesMut::new();
        framing
            .upgraded(*ws, &http[consumed..], &mut mqtt)
            .expect("frames");
        assert_eq!(&mqtt[..], [0xc0, 0x00], "the frame sent with the request");

        framing.send(&[0xd0, 0x00]);
        let out = client_input(&mut client, &framing.take_output());
        assert_eq!(out, [0x82, 0x02, 0xd0, 0x00], "PINGRESP in a binary frame");

        framing.close();
        let out = client_input(&mut client, &framing.take_output());
        assert_eq!(&out[..2], [0x88, 0x02], "a close frame, code 1000");
        assert!(
            client
                .process_new_packets()
                .expect("state")
                .peer_has_closed()
        );
    }

    #[test]
    fn without_layers_bytes_pass_through_until_the_upgrade() {
        let mut framing = Framing::default();
        let mut plain = BytesMut::new();
        framing.handle_wire(b"GET /", &mut plain).expect("raw");
        assert_eq!(&plain[..], b"GET /");
        framing.send(b"HTTP/1.1 404");
        assert!(framing.has_output());
        assert_eq!(framing.take_output(), b"HTTP/1.1 404");
        assert!(!framing.is_handshaking());
        assert_eq!(framing.peer_identity(), None);
    }
}
