//! A client connection's TLS session, sans-IO: bytes from the socket in,
//! plaintext out; plaintext in, TLS records for the socket out. rustls's
//! `ServerConnection` does the protocol (`read_tls`, `process_new_packets`,
//! `reader`, `writer`, `write_tls`); this wraps it in the shape of
//! [`super::websocket::WsFraming`], under which it stacks for wss
//! ([`super::framing`]). The handshake needs no code of its own: its
//! records go in and out like any others until the session starts giving
//! plaintext.
//!
//! # Where the handshake happens
//!
//! On the shard that accepted the connection, not the session's home
//! shard: the home shard is chosen from the client id, which is inside the
//! CONNECT, which is inside the TLS session. So the accepting shard does
//! the handshake and reads the CONNECT, and when the session lives on
//! another shard the `ServerConnection` travels with the socket in the
//! hand-over (`mesh::Handoff`), as the WebSocket framing does: it is plain
//! data and `Send`, keys, sequence numbers and any record half received
//! included, so the home shard carries on the same session. Sending the
//! raw socket back to a shard chosen before the handshake could not work
//! (nothing identifies the client before it), and re-handshaking is not
//! possible without the client's cooperation.

use std::io::{Read, Write};

use bytes::BytesMut;
use rustls::ServerConnection;

use crate::tls::common_name;

/// One connection's TLS session.
#[derive(Debug)]
pub struct TlsLayer {
    session: ServerConnection,
}

/// Why a TLS session ended. An alert for the client has been queued in the
/// output where the protocol has one.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: {0}")]
    Protocol(#[from] rustls::Error),
    /// rustls refused more input; it only does so when its plaintext is
    /// not taken, which [`TlsLayer::handle_wire`] always does.
    #[error("tls: {0}")]
    Input(std::io::Error),
}

impl TlsLayer {
    pub fn new(mut session: ServerConnection) -> TlsLayer {
        // Output is taken right after every call that makes some, so
        // rustls's own limit (64 KiB) would only turn a large flush of
        // MQTT output into an error; the connection's output is bounded
        // above this layer.
        session.set_buffer_limit(None);
        TlsLayer { session }
    }

    /// Takes bytes read from the socket and appends the plaintext they
    /// complete to `plain`. A partial record is kept for the next call;
    /// handshake replies wait in the output.
    pub fn handle_wire(&mut self, mut wire: &[u8], plain: &mut BytesMut) -> Result<(), TlsError> {
        while !wire.is_empty() {
            // rustls takes a record's worth or more each time; taking
            // nothing would loop for ever here, so it ends the session.
            if self.session.read_tls(&mut wire).map_err(TlsError::Input)? == 0 {
                return Err(TlsError::Input(std::io::Error::other(
                    "rustls took no bytes",
                )));
            }
            let state = self.session.process_new_packets()?;
            let ready = state.plaintext_bytes_to_read();
            if ready > 0 {
                let start = plain.len();
                plain.resize(start + ready, 0);
                self.session
                    .reader()
                    .read_exact(&mut plain[start..])
                    .map_err(TlsError::Input)?;
            }
        }
        Ok(())
    }

    /// Encrypts `plain` into the output. Before the handshake completes
    /// rustls holds it back, and sends it once the session is up.
    pub fn send(&mut self, plain: &[u8]) {
        // Cannot fail: the buffer limit is off, and a session that sent
        // its close_notify drops what it is given.
        let _ = self.session.writer().write_all(plain);
    }

    /// Tells the client the session is ending (close_notify).
    pub fn close(&mut self) {
        self.session.send_close_notify();
    }

    pub fn has_output(&self) -> bool {
        self.session.wants_write()
    }

    /// The TLS records waiting for the socket, taken out.
    pub fn take_output(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.session.wants_write() {
            // Writing into a `Vec` cannot fail.
            if self.session.write_tls(&mut out).is_err() {
                break;
            }
        }
        out
    }

    pub fn is_handshaking(&self) -> bool {
        self.session.is_handshaking()
    }

    /// The common name of the client's certificate, once the handshake has
    /// verified one.
    pub fn peer_identity(&self) -> Option<String> {
        if self.session.is_handshaking() {
            return None;
        }
        common_name(self.session.peer_certificates()?.first()?)
    }
}

impl TlsError {
    /// The reason label of `ringmq_tls_handshake_failures_total`.
    pub fn label(&self) -> &'static str {
        use rustls::Error;
        match self {
            TlsError::Protocol(Error::NoCertificatesPresented) => "no_client_certificate",
            TlsError::Protocol(Error::InvalidCertificate(_)) => "bad_client_certificate",
            // The client refused the server's certificate (unknown CA,
            // expired) or gave up.
            TlsError::Protocol(Error::AlertReceived(_)) => "alert_received",
            TlsError::Protocol(Error::PeerIncompatible(_)) => "incompatible",
            TlsError::Protocol(Error::InvalidMessage(_)) | TlsError::Input(_) => "malformed",
            TlsError::Protocol(_) => "protocol",
        }
    }
}

/// A rustls client and server session for the tests of this layer and of
/// the stack above it.
#[cfg(test)]
pub(super) mod testing {
    use std::sync::Arc;

    use bytes::BytesMut;
    use rcgen::{CertificateParams, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

    /// A server session on a fresh self-signed certificate, and a client
    /// session trusting it.
    pub fn pair() -> (ServerConnection, ClientConnection) {
        let provider = crate::tls::crypto_provider();
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
            )
            .expect("server config");
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).expect("root");
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = ClientConnection::new(
            Arc::new(client),
            ServerName::try_from("localhost").expect("name"),
        )
        .expect("client");
        (
            ServerConnection::new(Arc::new(server)).expect("server"),
            client,
        )
    }

    pub fn client_output(client: &mut ClientConnection) -> Vec<u8> {
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).expect("write");
        }
        out
    }

    /// Gives the client what the server wrote; returns the plaintext.
    pub fn client_input(client: &mut ClientConnection, records: &[u8]) -> Vec<u8> {
        let mut records = records;
        let mut plain = Vec::new();
        while !records.is_empty() {
            client.read_tls(&mut records).expect("client read");
            let state = client.process_new_packets().expect("client");
            let start = plain.len();
            plain.resize(start + state.plaintext_bytes_to_read(), 0);
            std::io::Read::read_exact(&mut client.reader(), &mut plain[start..]).expect("plain");
        }
        plain
    }

    /// Runs the handshake through `server`, a layer that takes wire bytes
    /// and gives its output: the client's records go in a byte at a time
    /// (a record may arrive in any number of reads).
    pub fn handshake(
        client: &mut ClientConnection,
        mut server: impl FnMut(&[u8], &mut BytesMut) -> Vec<u8>,
    ) {
        let mut plain = BytesMut::new();
        let mut reply = Vec::new();
        while client.is_handshaking() || !reply.is_empty() {
            client_input(client, &reply);
            reply.clear();
            for byte in client_output(client) {
                reply.extend(server(&[byte], &mut plain));
            }
        }
        assert!(plain.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use rustls::ClientConnection;

    use super::testing::{client_input, client_output, handshake};
    use super::*;

    fn pair() -> (TlsLayer, ClientConnection) {
        let (server, client) = testing::pair();
        (TlsLayer::new(server), client)
    }

    #[test]
    fn plaintext_crosses_both_ways_after_the_handshake() {
        let (mut server, mut client) = pair();
        handshake(&mut client, |wire, plain| {
            server.handle_wire(wire, plain).expect("server");
            server.take_output()
        });

        client.writer().write_all(b"\x10 connect").expect("write");
        let mut plain = BytesMut::new();
        server
            .handle_wire(&client_output(&mut client), &mut plain)
            .expect("server");
        assert_eq!(&plain[..], b"\x10 connect");

        server.send(b"\x20 connack");
        let records = server.take_output();
        assert!(!records.windows(7).any(|w| w == b"connack"), "encrypted");
        assert_eq!(client_input(&mut client, &records), b"\x20 connack");
        assert_eq!(server.peer_identity(), None, "no client certificate");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever a client sends, in whatever pieces, after a real
        /// ClientHello or instead of one: the layer answers or refuses,
        /// and never panics.
        #[test]
        fn any_input_in_any_pieces_is_answered_or_refused(
            hello in proptest::bool::ANY,
            garbage in proptest::collection::vec(proptest::num::u8::ANY, 0..2048),
            cut in 1usize..512,
        ) {
            let (mut server, mut client) = pair();
            let mut wire = if hello { client_output(&mut client) } else { Vec::new() };
            wire.extend_from_slice(&garbage);
            let mut plain = BytesMut::new();
            for piece in wire.chunks(cut) {
                if server.handle_wire(piece, &mut plain).is_err() {
                    break;
                }
                server.take_output();
            }
            proptest::prop_assert!(plain.is_empty(), "no plaintext without a handshake");
        }
    }

    #[test]
    fn garbage_is_an_error_with_an_alert_not_a_panic() {
        let (mut server, _) = pair();
        let error = server
            .handle_wire(b"GET / HTTP/1.1\r\n\r\n", &mut BytesMut::new())
            .expect_err("not tls");
        assert_eq!(error.label(), "malformed");
        assert!(server.has_output(), "an alert for the client");
    }
}
