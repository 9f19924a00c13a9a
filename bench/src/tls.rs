//! TLS for the generator's client connections (`--tls --tls-ca FILE`).
//!
//! rustls does the protocol, with the broker's crypto provider
//! ([`ringmq::tls::crypto_provider`], ring) and its safe defaults (TLS 1.2
//! and 1.3), verifying the broker's certificate against the CA file and
//! the name the connection asks for: `--tls-server-name`, or else the
//! broker's IP address (which the certificate must then list as a SAN).
//! There is deliberately no way to skip verification: a figure for TLS
//! should be the cost of TLS as deployed.
//!
//! Session resumption is off, so every connection is a full handshake:
//! `conn` and the stresser's connects then measure what a fleet of
//! devices connecting for the first time costs, as `openssl s_time -new`
//! does, and a run does not depend on what the one before left in a
//! ticket cache.
//!
//! [`TlsStream`] is the per-connection side: rustls's buffered
//! `ClientConnection` over a monoio `TcpStream`, with owned buffers of its
//! own for the socket's reads and writes. [`crate::client::Connection`]
//! holds either this or the plain stream and keeps the MQTT logic to
//! itself.

use std::io::{self, Read, Write};
use std::mem;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// A client configuration trusting one CA file, as `--tls-ca` gives it.
#[derive(Clone)]
pub struct TlsRoots {
    /// The file, for children re-executed with the same flags (`conn`).
    pub path: PathBuf,
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsRoots")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl TlsRoots {
    /// Reads the CA certificates (PEM) in `path` and builds the client
    /// configuration that trusts them and nothing else.
    pub fn load(path: &Path) -> Result<TlsRoots, String> {
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| match e {
                rustls::pki_types::pem::Error::Io(e) => format!("cannot read {shown}: {e}"),
                other => format!("{shown}: {other}"),
            })?;
        if certs.is_empty() {
            return Err(format!("{shown}: no PEM certificate in the file"));
        }
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots.add(cert).map_err(|e| format!("{shown}: {e}"))?;
        }
        let mut config = ClientConfig::builder_with_provider(ringmq::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = Resumption::disabled();
        Ok(TlsRoots {
            path: path.to_owned(),
            config: Arc::new(config),
        })
    }
}

/// How a connection speaks TLS: whom it trusts and what name it checks.
#[derive(Debug, Clone)]
pub struct TlsClient {
    pub roots: TlsRoots,
    /// The name the broker's certificate must be valid for; `None`: the
    /// IP address connected to.
    pub server_name: Option<ServerName<'static>>,
}

/// `--tls-server-name`: a DNS name or an IP address.
pub fn parse_server_name(text: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(text.to_owned()).map_err(|e| format!("`{text}`: {e}"))
}

/// One TLS session over a TCP connection.
pub struct TlsStream {
    tcp: TcpStream,
    session: ClientConnection,
    /// What the socket read last; kept between reads for its allocation.
    wire_in: Vec<u8>,
    /// TLS records for the socket; kept between writes likewise.
    wire_out: Vec<u8>,
    /// The broker has ended the session (close_notify) or the stream.
    ended: bool,
}

impl TlsStream {
    /// Runs the handshake over `tcp`, connected to `broker`. `read_chunk`
    /// bounds each socket read.
    pub async fn connect(
        tcp: TcpStream,
        client: &TlsClient,
        broker: SocketAddr,
        read_chunk: usize,
    ) -> io::Result<TlsStream> {
        let name = match &client.server_name {
            Some(name) => name.clone(),
            None => ServerName::from(broker.ip()),
        };
        let mut session =
            ClientConnection::new(client.roots.config.clone(), name).map_err(invalid_data)?;
        // Drained to the socket after every write: no need for rustls to
        // refuse plaintext when its output queue is long.
        session.set_buffer_limit(None);
        let mut stream = TlsStream {
            tcp,
            session,
            wire_in: Vec::with_capacity(read_chunk),
            wire_out: Vec::new(),
            ended: false,
        };
        while stream.session.is_handshaking() {
            if stream.session.wants_write() {
                stream.send_records().await?;
            } else {
                stream.receive(&mut BytesMut::new()).await?;
                if stream.ended {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
        stream.send_records().await?;
        Ok(stream)
    }

    /// Encrypts `plain` and writes the records.
    pub async fn write_all(&mut self, plain: &[u8]) -> io::Result<()> {
        self.session.writer().write_all(plain)?;
        self.send_records().await
    }

    /// Reads from the socket until some plaintext arrives, and appends it
    /// to `plain`; 0 once the broker has ended the session (with a
    /// close_notify or not) and everything before that has been given.
    pub async fn read(&mut self, plain: &mut BytesMut) -> io::Result<usize> {
        let before = plain.len();
        // A partial record, or one that carried no data (a session
        // ticket), gives nothing: read on.
        while plain.len() == before && !self.ended {
            if self.session.wants_write() {
                // A handshake message's answer, or an alert.
                self.send_records().await?;
            }
            self.receive(plain).await?;
        }
        Ok(plain.len() - before)
    }

    /// One socket read, through rustls, its plaintext appended to `plain`;
    /// sets `ended` when the session or the stream ends.
    async fn receive(&mut self, plain: &mut BytesMut) -> io::Result<()> {
        let mut buf = mem::take(&mut self.wire_in);
        buf.clear();
        let (result, buf) = self.tcp.read(buf).await;
        self.wire_in = buf;
        let read = result?;
        if read == 0 {
            self.ended = true;
            return Ok(());
        }
        let mut rest = &self.wire_in[..read];
        while !rest.is_empty() {
            if self.session.read_tls(&mut rest)? == 0 {
                // After a close_notify rustls takes nothing more.
                self.ended = true;
                break;
            }
            let state = match self.session.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // Tell the broker why, as far as it listens.
                    let _ = self.send_records().await;
                    return Err(invalid_data(e));
                }
            };
            let ready = state.plaintext_bytes_to_read();
            if ready > 0 {
                let at = plain.len();
                plain.resize(at + ready, 0);
                self.session.reader().read_exact(&mut plain[at..])?;
            }
            self.ended |= state.peer_has_closed();
        }
        Ok(())
    }

    /// Writes every record rustls has queued.
    async fn send_records(&mut self) -> io::Result<()> {
        while self.session.wants_write() {
            self.session.write_tls(&mut self.wire_out)?;
        }
        if self.wire_out.is_empty() {
            return Ok(());
        }
        let buf = mem::take(&mut self.wire_out);
        let (result, mut buf) = self.tcp.write_all(buf).await;
        buf.clear();
        self.wire_out = buf;
        result.map(drop)
    }
}

fn invalid_data(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_or_empty_ca_files_are_refused_by_name() {
        let missing = Path::new("/nonexistent/ca.pem");
        let error = TlsRoots::load(missing).expect_err("no such file");
        assert!(error.contains("cannot read /nonexistent/ca.pem"), "{error}");
        let empty = std::env::temp_dir().join(format!("bench-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").expect("temp file");
        let error = TlsRoots::load(&empty).expect_err("no certificate");
        assert!(error.contains("no PEM certificate"), "{error}");
        let _ = std::fs::remove_file(&empty);
    }

    #[test]
    fn server_names() {
        assert!(matches!(
            parse_server_name("localhost"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            parse_server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(parse_server_name("not a name!").is_err());
    }
}
