//! Certificates made for a test (rcgen), and a synchronous rustls client
//! speaking MQTT through [`super::wire`], for the TLS tests: it can present
//! any client certificate, trust any CA, and say which certificate the
//! broker served.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, date_time_ymd,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::wire::{self, Connack, Connect, Packet};
use super::{Broker, RECV_TIMEOUT};

/// A directory of certificates, removed at the end: one CA, and whatever
/// it signs.
pub struct Pki {
    pub dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
    name: String,
}

impl Pki {
    /// A new CA named `name` in a directory of its own; its certificate
    /// is `<name>-ca.pem`.
    pub fn new(test: &str, name: &str) -> Pki {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "ringmq-tls-{test}-{name}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Pki::in_dir(dir, name)
    }

    /// Another CA, in the same directory as `self`.
    pub fn sibling(&self, name: &str) -> Pki {
        Pki::in_dir(self.dir.clone(), name)
    }

    fn in_dir(dir: PathBuf, name: &str) -> Pki {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        std::fs::write(dir.join(format!("{name}-ca.pem")), cert.pem()).expect("write CA");
        Pki {
            dir,
            ca: Issuer::new(params, key),
            name: name.to_owned(),
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A server certificate for `localhost` and 127.0.0.1 with common name
    /// `cn`, written to `cert_file` and `key_file`.
    pub fn server_to(&self, cn: &str, cert_file: &Path, key_file: &Path) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, cert_file, key_file);
    }

    /// A server certificate `server.pem`, `server.key` with common name
    /// `cn`; returns the two paths.
    pub fn server(&self, cn: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (self.dir.join("server.pem"), self.dir.join("server.key"));
        self.server_to(cn, &cert, &key);
        (cert, key)
    }

    /// A client certificate with common name `cn`, as `<cn>.pem` and
    /// `<cn>.key`; expired since 2021 when `expired`.
    pub fn client(&self, cn: &str, expired: bool) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let (cert, key) = (
            self.dir.join(format!("{cn}.pem")),
            self.dir.join(format!("{cn}.key")),
        );
        self.sign(params, &cert, &key);
        (cert, key)
    }

    /// A broker on two shards with `--tls-listen` serving a server
    /// certificate of this CA's for localhost (see [`Pki::server`]), and
    /// its TLS listener's address.
    pub fn tls_broker(&self) -> (Broker, SocketAddr) {
        let (cert, key) = self.server("localhost");
        let broker = Broker::start(&[
            "--cores",
            "2",
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            arg(&cert),
            "--tls-key",
            arg(&key),
        ]);
        let addr = broker.announced_addr("transport=tls");
        (broker, addr)
    }

    fn sign(&self, params: CertificateParams, cert_file: &Path, key_file: &Path) {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        std::fs::write(cert_file, cert.pem()).expect("write cert");
        std::fs::write(key_file, key.serialize_pem()).expect("write key");
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A path as a command-line argument.
pub fn arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp dir")
}

/// A rustls client configuration trusting the CAs in `ca_files`, with
/// the client certificate and key `identity` if given.
pub fn client_config(ca_files: &[&Path], identity: Option<(&Path, &Path)>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for file in ca_files {
        for cert in CertificateDer::pem_file_iter(file).expect("CA file") {
            roots.add(cert.expect("CA pem")).expect("CA");
        }
    }
    let builder = ClientConfig::builder_with_provider(ringmq::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .expect("cert file")
                .collect::<Result<Vec<_>, _>>()
                .expect("cert pem");
            let key = PrivateKeyDer::from_pem_file(key).expect("key pem");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client identity")
        }
    };
    Arc::new(config)
}

/// An MQTT client over TLS, synchronous, every read bounded by
/// [`RECV_TIMEOUT`].
pub struct TlsClient {
    tls: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl TlsClient {
    /// Connects to `addr` and completes the TLS handshake (as far as the
    /// client can tell: with TLS 1.3 a refused client certificate only
    /// shows at the first read).
    pub fn open(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<TlsClient> {
        let stream = TcpStream::connect(addr)?;
        TlsClient::over(stream, config)
    }

    /// TLS over an already connected socket (after a PROXY header, say).
    pub fn over(stream: TcpStream, config: Arc<ClientConfig>) -> io::Result<TlsClient> {
        stream.set_read_timeout(Some(RECV_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let name = ServerName::try_from("localhost").expect("name");
        let connection = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(connection, stream);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(TlsClient {
            tls,
            buf: Vec::new(),
        })
    }

    /// The common name of the certificate the broker served.
    pub fn server_cn(&self) -> String {
        let certs = self
            .tls
            .conn
            .peer_certificates()
            .expect("server certificate");
        let (_, cert) = x509_parser::parse_x509_certificate(&certs[0]).expect("x509");
        let cn = cert.subject().iter_common_name().next().expect("a CN");
        cn.as_str().expect("a string CN").to_owned()
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tls.write_all(bytes)?;
        self.tls.flush()
    }

    /// The next packet, or the error that ended the stream (a TLS alert,
    /// end of file as `UnexpectedEof`, a timeout).
    pub fn recv(&mut self) -> io::Result<Packet> {
        loop {
            if let Some(packet) = wire::take_packet(&mut self.buf) {
                return Ok(packet);
            }
            let mut chunk = [0; 16 * 1024];
            match self.tls.read(&mut chunk)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends `connect` and returns the CONNACK, or why none came.
    pub fn connect(&mut self, connect: &Connect, version: u8) -> io::Result<Connack> {
        self.send(&connect.encode())?;
        let packet = self.recv()?;
        assert_eq!(packet.kind(), wire::CONNACK, "{packet:?}");
        Ok(packet.connack(version))
    }

    /// The next packet of `kind`, skipping others; panics on an error.
    pub fn recv_kind(&mut self, kind: u8) -> Packet {
        loop {
            let packet = self
                .recv()
                .unwrap_or_else(|error| panic!("expected packet type {kind}: {error}"));
            if packet.kind() == kind {
                return packet;
            }
        }
    }
}
