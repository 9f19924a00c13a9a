//! A client connection's TLS session, sans-IO: bytes from the socket in,
//! plaintext out; plaintext in, TLS records for the socket out, in the
//! shape of [`super::websocket::WsFraming`], under which it stacks for wss
//! ([`super::framing`]). The handshake needs no code of its own: its
//! records go in and out like any others until the session starts giving
//! plaintext.
//!
//! rustls's unbuffered API (`UnbufferedServerConnection`) does the
//! protocol, on buffers this layer owns. Its buffered `ServerConnection`
//! keeps a 4 KiB receive buffer for the connection's whole life, which
//! was about half of what an idle TLS connection held (PERF.md); here the
//! received bytes stay in a buffer of the layer's only while a record is
//! incomplete, and are decrypted in place, so an idle connection holds no
//! buffer, as over plain TCP ([`super::socket`]).
//!
//! # Where the handshake happens
//!
//! On the shard that accepted the connection, not the session's home
//! shard: the home shard is chosen from the client id, which is inside the
//! CONNECT, which is inside the TLS session. So the accepting shard does
//! the handshake and reads the CONNECT, and when the session lives on
//! another shard the rustls session travels with the socket in the
//! hand-over (`mesh::Handoff`), as the WebSocket framing does: it is plain
//! data and `Send`, keys, sequence numbers and any record half received
//! included, so the home shard carries on the same session. Sending the
//! raw socket back to a shard chosen before the handshake could not work
//! (nothing identifies the client before it), and re-handshaking is not
//! possible without the client's cooperation.

use bytes::BytesMut;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus,
};

use crate::tls::common_name;

/// One connection's TLS session.
pub struct TlsLayer {
    session: UnbufferedServerConnection,
    /// Bytes from the socket not yet consumed: the start of a record still
    /// arriving (decrypted in place, so kept as rustls left it), or
    /// nothing, with no allocation, between records.
    incoming: Vec<u8>,
    /// TLS records for the writer.
    outgoing: Vec<u8>,
    /// Plaintext given before the session could encrypt it (during the
    /// handshake), sent once it can.
    held: Vec<u8>,
    /// Plaintext decrypted while sending, for the next
    /// [`TlsLayer::handle_wire`].
    unread: BytesMut,
    /// A close_notify was asked for and is not sent yet.
    closing: bool,
    /// The session failed: rustls is not called again (it would report
    /// the same error, and queue a second alert).
    failed: bool,
}

/// Why a TLS session ended. An alert for the client has been queued in the
/// output where the protocol has one.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: {0}")]
    Protocol(#[from] rustls::Error),
    /// Called again after an error.
    #[error("tls: the session has failed")]
    Failed,
}

impl TlsLayer {
    pub fn new(session: UnbufferedServerConnection) -> TlsLayer {
        TlsLayer {
            session,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            held: Vec::new(),
            unread: BytesMut::new(),
            closing: false,
            failed: false,
        }
    }

    /// Takes bytes read from the socket and appends the plaintext they
    /// complete to `plain`. A partial record is kept for the next call;
    /// handshake replies wait in the output.
    pub fn handle_wire(&mut self, wire: &[u8], plain: &mut BytesMut) -> Result<(), TlsError> {
        if !self.unread.is_empty() {
            plain.extend_from_slice(&self.unread);
            self.unread = BytesMut::new();
        }
        self.incoming.extend_from_slice(wire);
        let pumped = self.pump(plain, &[]);
        if self.incoming.is_empty() {
            // Between records: hold no buffer.
            self.incoming = Vec::new();
        }
        pumped
    }

    /// Encrypts `plain` into the output, or holds it until the handshake
    /// is done.
    pub fn send(&mut self, plain: &[u8]) {
        self.pump_quietly(plain);
    }

    /// Tells the client the session is ending (close_notify).
    pub fn close(&mut self) {
        self.closing = true;
        self.pump_quietly(&[]);
    }

    pub fn has_output(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// The TLS records waiting for the socket, taken out.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outgoing)
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

    /// [`TlsLayer::pump`] from a call that has nowhere to put an error: a
    /// session that failed has queued its alert, and the reader meets the
    /// error at its next read.
    fn pump_quietly(&mut self, send: &[u8]) {
        let mut unread = std::mem::take(&mut self.unread);
        let _ = self.pump(&mut unread, send);
        self.unread = unread;
    }

    /// Runs the session on what has arrived until it needs more from the
    /// client: plaintext out to `plain`, records to the output; held
    /// plaintext, then `send`, then a close_notify encrypted once it may
    /// send (`send` is held until then).
    fn pump(&mut self, plain: &mut BytesMut, mut send: &[u8]) -> Result<(), TlsError> {
        if self.failed {
            return Err(TlsError::Failed);
        }
        let TlsLayer {
            session,
            incoming,
            outgoing,
            held,
            closing,
            failed,
            ..
        } = self;
        loop {
            let UnbufferedStatus { mut discard, state } =
                session.process_tls_records(&mut incoming[..]);
            let state = match state {
                Ok(state) => state,
                Err(error) => {
                    *failed = true;
                    incoming.drain(..discard);
                    take_alert(session, incoming, outgoing);
                    // Nothing the client sends from here on is read.
                    *incoming = Vec::new();
                    return Err(error.into());
                }
            };
            let mut blocked = false;
            match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.inspect_err(|_| *failed = true)?;
                        discard += record.discard;
                        plain.extend_from_slice(record.payload);
                    }
                }
                ConnectionState::EncodeTlsData(mut data) => encode(outgoing, &mut data),
                // Queued in `outgoing`, in order: as good as sent.
                ConnectionState::TransmitTlsData(data) => data.done(),
                ConnectionState::WriteTraffic(mut traffic) => {
                    if !held.is_empty() {
                        encrypt(outgoing, held, |out| traffic.encrypt(held, out));
                        *held = Vec::new();
                    }
                    if !send.is_empty() {
                        encrypt(outgoing, send, |out| traffic.encrypt(send, out));
                        send = &[];
                    }
                    if std::mem::take(closing) {
                        encrypt(outgoing, &[], |out| traffic.queue_close_notify(out));
                    }
                    blocked = true;
                }
                // The client's close_notify: the socket's end of file
                // follows and ends the connection.
                ConnectionState::PeerClosed => {}
                // Early data is off (`max_early_data_size` 0), so there is
                // none; states added by later versions wait for input.
                _ => blocked = true,
            }
            incoming.drain(..discard);
            if blocked {
                held.extend_from_slice(send);
                return Ok(());
            }
        }
    }
}

/// Appends to `outgoing` what `write` writes, starting with `guess` bytes
/// of room and giving it what it asks for: `asks` reads the room an error
/// asks for, `None` for an error more room would not cure (the session
/// can send no more), which writes nothing.
fn append<E>(
    outgoing: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    asks: impl Fn(&E) -> Option<usize>,
) {
    let start = outgoing.len();
    let mut room = guess;
    loop {
        outgoing.resize(start + room, 0);
        match write(&mut outgoing[start..]) {
            Ok(written) => {
                outgoing.truncate(start + written);
                return;
            }
            Err(error) => match asks(&error) {
                Some(needed) if needed > room => room = needed,
                _ => {
                    outgoing.truncate(start);
                    return;
                }
            },
        }
    }
}

/// A handshake or alert record the session queued.
fn encode(outgoing: &mut Vec<u8>, data: &mut EncodeTlsData<'_, ServerConnectionData>) {
    append(
        outgoing,
        1024,
        |out| data.encode(out),
        |error| match error {
            EncodeError::InsufficientSize(needed) => Some(needed.required_size),
            _ => None,
        },
    );
}

/// Application data, or a close_notify (`plain` empty).
fn encrypt(
    outgoing: &mut Vec<u8>,
    plain: &[u8],
    mut write: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) {
    // A record carries up to 16 KiB, plus a header and a tag.
    let guess = plain.len() + (plain.len() / 16384 + 1) * 64;
    append(outgoing, guess, &mut write, |error| match error {
        EncryptError::InsufficientSize(needed) => Some(needed.required_size),
        _ => None,
    });
}

/// After an error, the alert the session queued for the client, if it
/// queued one: rustls hands queued records out before it reads again. One
/// call only: a second would read the bytes that failed again. Given those
/// bytes all the same, as rustls expects (a half-joined handshake message
/// may point into them).
fn take_alert(
    session: &mut UnbufferedServerConnection,
    incoming: &mut [u8],
    outgoing: &mut Vec<u8>,
) {
    if let Ok(ConnectionState::EncodeTlsData(mut data)) =
        session.process_tls_records(incoming).state
    {
        encode(outgoing, &mut data);
    }
}

impl std::fmt::Debug for TlsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsLayer")
            .field("handshaking", &self.session.is_handshaking())
            .field("incoming", &self.incoming.len())
            .field("outgoing", &self.outgoing.len())
            .finish_non_exhaustive()
    }
}

impl TlsError {
    /// The reason label of `ringmq_tls_handshake_failures_total`.
    pub fn label(&self) -> &'static str {
        use rustls::Error;
        let TlsError::Protocol(error) = self else {
            return "protocol";
        };
        match error {
            Error::NoCertificatesPresented => "no_client_certificate",
            Error::InvalidCertificate(_) => "bad_client_certificate",
            // The client refused the server's certificate (unknown CA,
            // expired) or gave up.
            Error::AlertReceived(_) => "alert_received",
            Error::PeerIncompatible(_) => "incompatible",
            Error::InvalidMessage(_) => "malformed",
            _ => "protocol",
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
    use rustls::server::UnbufferedServerConnection;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};

    /// A server session on a fresh self-signed certificate, and a client
    /// session trusting it.
    pub fn pair() -> (UnbufferedServerConnection, ClientConnection) {
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
            UnbufferedServerConnection::new(Arc::new(server)).expect("server"),
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
    use std::io::Write;

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
            feed(&mut server, &wire, cut, &mut plain);
            proptest::prop_assert!(plain.is_empty(), "no plaintext without a handshake");
            // Once failed, the layer keeps refusing and sending nothing more.
            server.close();
            server.send(b"late");
        }

        /// The same once the session is up: a real record, then anything,
        /// then the connection's last words. What came before the
        /// garbage is delivered whole.
        #[test]
        fn any_input_after_the_handshake_is_answered_or_refused(
            garbage in proptest::collection::vec(proptest::num::u8::ANY, 0..2048),
            cut in 1usize..512,
        ) {
            let (mut server, mut client) = pair();
            handshake(&mut client, |wire, plain| {
                server.handle_wire(wire, plain).expect("server");
                server.take_output()
            });
            client.writer().write_all(b"\xc0\x00").expect("write");
            let mut wire = client_output(&mut client);
            wire.extend_from_slice(&garbage);
            let mut plain = BytesMut::new();
            feed(&mut server, &wire, cut, &mut plain);
            proptest::prop_assert!(plain.starts_with(b"\xc0\x00"));
            server.send(b"\xd0\x00");
            server.close();
            server.take_output();
        }
    }

    /// Feeds `wire` to `server` in pieces of `cut` bytes until it refuses.
    fn feed(server: &mut TlsLayer, wire: &[u8], cut: usize, plain: &mut BytesMut) {
        for piece in wire.chunks(cut) {
            if server.handle_wire(piece, plain).is_err() {
                return;
            }
            server.take_output();
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
