//! Mutual TLS between cluster nodes: the quinn configurations every node
//! listens and dials with, and the certificates behind them.
//!
//! Every connection between two nodes is authenticated both ways: the
//! listening node requires a client certificate and the dialling node
//! checks the server's, both against one cluster CA. Nodes are not told
//! apart by TLS: every node certificate carries the same DNS name,
//! [`SERVER_NAME`], so any member can dial any other by address (seeds are
//! addresses, and a peer's name is only learnt from gossip); the node id
//! sits in the certificate's common name for logs and inspection. TLS thus
//! answers "is this a member of the cluster?", and only that.
//!
//! The CA comes from one of two places ([`ClusterTrust`]):
//!
//! - **Files**: an operator's CA certificate, and this node's certificate
//!   chain and key signed by it, as PEM. `ringmq cluster-certs` makes a
//!   fresh CA and one certificate per node ([`write_cluster_certs`]); any
//!   other CA (an organisation's, cert-manager's) works as long as each
//!   node certificate names [`SERVER_NAME`] as a DNS subject alternative
//!   name and allows both server and client authentication.
//! - **A shared secret**: every node derives the same CA key pair from the
//!   secret (HKDF-SHA256 with a fixed salt and info, giving the 32-byte
//!   seed of an Ed25519 key), and from it the same self-signed CA
//!   certificate: fixed name, serial and validity, and Ed25519 signatures
//!   are deterministic, so the certificate is the same bytes on every
//!   node. Each node then makes a fresh key pair at every start and has
//!   the derived CA sign its certificate. No certificate is ever written
//!   to disk or distributed.
//!
//! Why the secret mode is sound: the secret *is* the trust root. A node
//! proves membership by presenting a certificate signed by the CA key, and
//! only the secret yields that key, so anyone holding the secret can join
//! (or impersonate any node id) and nobody else can. Keep it as secret as
//! a CA private key: in a file readable only by the broker's user, or in
//! the `RINGMQ_CLUSTER_SECRET` variable from a secret store. HKDF is a key
//! derivation function, not a password hash: a guess can be checked
//! offline against any node certificate, so the secret must be random
//! (`openssl rand -base64 32`), not a memorable password; the configuration
//! refuses secrets shorter than 16 bytes. Rotating the secret means
//! restarting every node with the new one (nodes on different secrets do
//! not talk). The salt and info strings carry a version so that a future
//! derivation can change without silently producing a different CA from
//! the same secret.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::Sha256;

use crate::cluster::settings::{ClusterTrust, check_node_id};

/// The DNS name every node certificate carries and every node dials.
pub const SERVER_NAME: &str = "ringmq-cluster";
/// The one application protocol nodes speak; a version bump here makes
/// incompatible nodes fail the handshake rather than misread frames.
pub const ALPN: &[u8] = b"ringmq-cluster/1";

/// Salt for deriving the CA key from the secret. Changing it changes every
/// cluster's CA, so it carries a version.
const SECRET_SALT: &[u8] = b"ringmq cluster ca v1";
const SECRET_INFO: &[u8] = b"ed25519 ca signing key";
const CA_COMMON_NAME: &str = "ringmq cluster CA";

/// Why the cluster's TLS could not be set up. File errors name the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what} {} holds no PEM certificate", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("cluster CA certificate {} is not usable: {source}", path.display())]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("node certificate {} and key {} do not work together: {source}", cert.display(), key.display())]
    BadNodeCert {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("cannot derive the cluster CA key from the secret: {0}")]
    DeriveKey(String),
    #[error("cannot make a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("cannot build the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("the TLS configuration does not suit QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("invalid node name {node:?}: {reason}")]
    InvalidNode { node: String, reason: &'static str },
    #[error("{} already exists; not overwriting it", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The quinn server and client configurations for `node_id`: the server
/// requires a client certificate from the cluster CA, the client checks
/// the server against the same CA under [`SERVER_NAME`], both offer
/// [`ALPN`] and speak TLS 1.3 only (QUIC's). Transport settings are
/// quinn's defaults, for the caller to adjust. `node_id` names the
/// certificate made in secret mode; with files, the certificate carries
/// the name it was issued with.
pub fn quinn_configs(
    node_id: &str,
    trust: &ClusterTrust,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TlsError> {
    let identity = match trust {
        ClusterTrust::Files {
            ca_file,
            cert_file,
            key_file,
        } => Identity::load(ca_file, cert_file, key_file)?,
        ClusterTrust::Secret(secret) => Identity::from_secret(node_id, secret)?,
    };
    identity.quinn_configs()
}

/// Writes a fresh cluster CA and one certificate per node into `out`
/// (created if missing): `ca.pem`, `ca.key`, `<node>.pem`, `<node>.key`,
/// keys readable by their owner only. Nothing is written if any of the
/// files exists already. Returns the paths written, in that order.
pub fn write_cluster_certs(out: &Path, nodes: &[String]) -> Result<Vec<PathBuf>, TlsError> {
    for (i, node) in nodes.iter().enumerate() {
        check_node_id(node).map_err(|reason| TlsError::InvalidNode {
            node: node.clone(),
            reason,
        })?;
        let invalid = |reason| TlsError::InvalidNode {
            node: node.clone(),
            reason,
        };
        if node == "ca" {
            return Err(invalid("`ca` names the CA's own files"));
        }
        if nodes[..i].contains(node) {
            return Err(invalid("given twice"));
        }
    }
    let ca_key = KeyPair::generate()?;
    let ca_params = ca_params(None);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let mut files = vec![
        (out.join("ca.pem"), ca_cert.pem(), false),
        (out.join("ca.key"), ca_key.serialize_pem(), true),
    ];
    for node in nodes {
        let key = KeyPair::generate()?;
        let cert = node_params(node)?.signed_by(&key, &issuer)?;
        files.push((out.join(format!("{node}.pem")), cert.pem(), false));
        files.push((out.join(format!("{node}.key")), key.serialize_pem(), true));
    }
    // All checked before any is written, so a refusal leaves no half set.
    if let Some((path, ..)) = files.iter().find(|(path, ..)| path.exists()) {
        return Err(TlsError::Exists(path.clone()));
    }
    std::fs::create_dir_all(out).map_err(|source| TlsError::Write {
        path: out.to_owned(),
        source,
    })?;
    for (path, contents, secret) in &files {
        write_new(path, contents, *secret)?;
    }
    Ok(files.into_iter().map(|(path, ..)| path).collect())
}

/// Creates `path`, failing if it exists (even if it appeared after the
/// check above), owner-only when it holds a key.
fn write_new(path: &Path, contents: &str, secret: bool) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;

    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    if secret {
        options.mode(0o600);
    }
    let error = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::AlreadyExists => TlsError::Exists(path.to_owned()),
        _ => TlsError::Write {
            path: path.to_owned(),
            source,
        },
    };
    let mut file = options.open(path).map_err(error)?;
    file.write_all(contents.as_bytes()).map_err(error)
}

/// What a node presents and what it trusts.
struct Identity {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// For error messages: where the chain and key came from.
    source: Option<(PathBuf, PathBuf)>,
    ca_file: Option<PathBuf>,
}

impl Identity {
    fn load(ca_file: &Path, cert_file: &Path, key_file: &Path) -> Result<Identity, TlsError> {
        let ca = read_certs("cluster CA certificate (cluster.ca_file)", ca_file)?
            .into_iter()
            .next()
            .ok_or_else(|| TlsError::NoCertificate {
                what: "cluster CA certificate (cluster.ca_file)",
                path: ca_file.to_owned(),
            })?;
        let chain = read_certs("node certificate (cluster.cert_file)", cert_file)?;
        let key = PrivateKeyDer::from_pem_file(key_file).map_err(|source| TlsError::Pem {
            what: "node key (cluster.key_file)",
            path: key_file.to_owned(),
            source,
        })?;
        Ok(Identity {
            ca,
            chain,
            key,
            source: Some((cert_file.to_owned(), key_file.to_owned())),
            ca_file: Some(ca_file.to_owned()),
        })
    }

    fn from_secret(node_id: &str, secret: &str) -> Result<Identity, TlsError> {
        let ca_key = secret_ca_key(secret)?;
        let ca_params = ca_params(Some(SerialNumber::from_slice(&[1])));
        let ca = ca_params.self_signed(&ca_key)?.der().clone();
        let issuer = Issuer::new(ca_params, &ca_key);
        let key = KeyPair::generate()?;
        let cert = node_params(node_id)?.signed_by(&key, &issuer)?;
        Ok(Identity {
            ca,
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            source: None,
            ca_file: None,
        })
    }

    fn quinn_configs(self) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TlsError> {
        // ring, without post-quantum key exchange: the traffic is node to
        // node inside one operator's network.
        let provider = crate::tls::crypto_provider();
        let mut roots = RootCertStore::empty();
        roots.add(self.ca).map_err(|source| match &self.ca_file {
            Some(path) => TlsError::BadCa {
                path: path.clone(),
                source,
            },
            None => TlsError::Rustls(source),
        })?;
        let roots = Arc::new(roots);
        let node_cert_error = |source| match &self.source {
            Some((cert, key)) => TlsError::BadNodeCert {
                cert: cert.clone(),
                key: key.clone(),
                source,
            },
            None => TlsError::Rustls(source),
        };

        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(node_cert_error)?;
        server.alpn_protocols = vec![ALPN.to_vec()];

        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(self.chain, self.key)
            .map_err(node_cert_error)?;
        client.alpn_protocols = vec![ALPN.to_vec()];

        let server =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server)?));
        let client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client)?));
        Ok((server, client))
    }
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |source| TlsError::Pem {
        what,
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The CA key every node holding `secret` derives alike.
fn secret_ca_key(secret: &str) -> Result<KeyPair, TlsError> {
    let mut seed = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(Some(SECRET_SALT), secret.as_bytes())
        .expand(SECRET_INFO, &mut seed)
        .map_err(|error| TlsError::DeriveKey(error.to_string()))?;
    let signing_key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let pkcs8 = signing_key
        .to_pkcs8_der()
        .map_err(|error| TlsError::DeriveKey(error.to_string()))?;
    let der = PrivatePkcs8KeyDer::from(pkcs8.as_bytes());
    Ok(KeyPair::from_pkcs8_der_and_sign_algo(
        &der,
        &rcgen::PKCS_ED25519,
    )?)
}

/// The CA certificate's parameters: the same on every node, so that a
/// secret-derived CA is identical everywhere. rcgen's default validity
/// (1975 to 4096) is kept on purpose: a clock that is wrong must not split
/// the cluster, and the CA is replaced by changing the secret or files,
/// not by expiry.
fn ca_params(serial: Option<SerialNumber>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "ringmq");
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    // Signs node certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = serial;
    params
}

/// A node certificate: the node id for people, [`SERVER_NAME`] for TLS,
/// and both authentications since every node both listens and dials.
fn node_params(node_id: &str) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "ringmq");
    params.distinguished_name.push(DnType::CommonName, node_id);
    params.subject_alt_names = vec![SanType::DnsName(SERVER_NAME.try_into()?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::testing::TempDir;

    const SECRET: &str = "0123456789abcdef-test-secret";
    const TIMEOUT: Duration = Duration::from_secs(10);

    fn secret(secret: &str) -> ClusterTrust {
        ClusterTrust::Secret(secret.to_owned())
    }

    fn files(dir: &Path, node: &str) -> ClusterTrust {
        ClusterTrust::Files {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join(format!("{node}.pem")),
            key_file: dir.join(format!("{node}.key")),
        }
    }

    /// What the server and the client each saw of one connection over
    /// loopback: the server echoes what it reads, prefixed; the client
    /// sends `ping` and returns the answer.
    struct Outcome {
        server: Result<(), String>,
        client: Result<Vec<u8>, String>,
    }

    async fn exchange(server: quinn::ServerConfig, client: quinn::ClientConfig) -> Outcome {
        let localhost: SocketAddr = "127.0.0.1:0".parse().expect("literal");
        let server_endpoint = quinn::Endpoint::server(server, localhost).expect("bind server");
        let addr = server_endpoint.local_addr().expect("bound");
        let serve = tokio::spawn(async move {
            let incoming = server_endpoint.accept().await.ok_or("endpoint closed")?;
            let connection = incoming.await.map_err(|e| e.to_string())?;
            let (mut send, mut recv) = connection.accept_bi().await.map_err(|e| e.to_string())?;
            let request = recv.read_to_end(64).await.map_err(|e| e.to_string())?;
            send.write_all(&[b"pong: ", &request[..]].concat())
                .await
                .map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            // Until the client has read the answer and closed.
            connection.closed().await;
            Ok::<(), String>(())
        });
        let client_endpoint = quinn::Endpoint::client(localhost).expect("bind client");
        let client = async {
            let connection = client_endpoint
                .connect_with(client, addr, SERVER_NAME)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(b"ping").await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            let answer = recv.read_to_end(64).await.map_err(|e| e.to_string())?;
            connection.close(0u32.into(), b"done");
            Ok::<Vec<u8>, String>(answer)
        };
        let client = tokio::time::timeout(TIMEOUT, client)
            .await
            .unwrap_or_else(|_| Err("client timed out".to_owned()));
        let server = match tokio::time::timeout(TIMEOUT, serve).await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => Err(format!("server task failed: {panic}")),
            Err(_) => Err("server timed out".to_owned()),
        };
        client_endpoint.wait_idle().await;
        Outcome { server, client }
    }

    fn assert_exchanged(outcome: Outcome) {
        assert_eq!(outcome.client, Ok(b"pong: ping".to_vec()));
        assert_eq!(outcome.server, Ok(()));
    }

    /// Both sides fail, and the server (which sees every case) says why.
    fn assert_refused(outcome: Outcome, why: &str) {
        assert!(outcome.client.is_err(), "client got {:?}", outcome.client);
        match outcome.server {
            Ok(()) => panic!("server accepted the connection"),
            Err(error) => assert!(error.contains(why), "{error}"),
        }
    }

    #[tokio::test]
    async fn nodes_sharing_a_secret_connect() {
        let (server, _) = quinn_configs("node-a", &secret(SECRET)).expect("configs");
        let (_, client) = quinn_configs("node-b", &secret(SECRET)).expect("configs");
        assert_exchanged(exchange(server, client).await);
    }

    #[tokio::test]
    async fn nodes_with_different_secrets_do_not_connect() {
        let (server, _) = quinn_configs("node-a", &secret(SECRET)).expect("configs");
        let (_, client) = quinn_configs("node-b", &secret("another-secret-0123456")).expect("ok");
        assert_refused(exchange(server, client).await, "invalid peer certificate");
    }

    #[test]
    fn a_secret_derives_the_same_ca_everywhere() {
        let a = Identity::from_secret("a", SECRET).expect("identity");
        let b = Identity::from_secret("b", SECRET).expect("identity");
        let c = Identity::from_secret("a", "another-secret-0123456").expect("identity");
        assert_eq!(a.ca, b.ca, "same secret, same CA bytes");
        assert_ne!(a.ca, c.ca);
        assert_ne!(a.chain, b.chain, "each node its own certificate");
    }

    #[tokio::test]
    async fn certificates_from_cluster_certs_connect() {
        let dir = TempDir::new("files");
        let nodes = ["n1".to_owned(), "n2".to_owned()];
        let written = write_cluster_certs(&dir.0, &nodes).expect("written");
        let names: Vec<_> = written
            .iter()
            .map(|path| path.file_name().and_then(|n| n.to_str()).unwrap_or(""))
            .collect();
        assert_eq!(
            names,
            ["ca.pem", "ca.key", "n1.pem", "n1.key", "n2.pem", "n2.key"]
        );
        for path in &written {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .expect("written")
                .permissions()
                .mode();
            if path.extension().is_some_and(|e| e == "key") {
                assert_eq!(mode & 0o077, 0, "{} readable by others", path.display());
            }
        }
        let (server, _) = quinn_configs("n1", &files(&dir.0, "n1")).expect("configs");
        let (_, client) = quinn_configs("n2", &files(&dir.0, "n2")).expect("configs");
        assert_exchanged(exchange(server, client).await);
    }

    #[test]
    fn cluster_certs_never_overwrite() {
        let dir = TempDir::new("overwrite");
        write_cluster_certs(&dir.0, &["n1".to_owned()]).expect("written");
        let before = std::fs::read(dir.0.join("ca.key")).expect("written");
        let error = write_cluster_certs(&dir.0, &["n2".to_owned()]).expect_err("ca.pem exists");
        assert!(matches!(&error, TlsError::Exists(path) if path.ends_with("ca.pem")));
        assert!(!dir.0.join("n2.pem").exists(), "nothing written");
        assert_eq!(std::fs::read(dir.0.join("ca.key")).expect("kept"), before);
    }

    #[test]
    fn cluster_certs_refuse_bad_node_names() {
        let dir = TempDir::new("names");
        for nodes in [&["a/b"][..], &["ca"], &["n1", "n1"], &[""]] {
            let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
            let error = write_cluster_certs(&dir.0, &nodes).expect_err("bad name");
            assert!(matches!(error, TlsError::InvalidNode { .. }), "{error}");
        }
        assert!(!dir.0.exists());
    }

    #[test]
    fn missing_and_mismatched_files_are_named() {
        let dir = TempDir::new("missing");
        write_cluster_certs(&dir.0, &["n1".to_owned(), "n2".to_owned()]).expect("written");
        let missing = ClusterTrust::Files {
            ca_file: dir.0.join("nope.pem"),
            cert_file: dir.0.join("n1.pem"),
            key_file: dir.0.join("n1.key"),
        };
        let message = quinn_configs("n1", &missing)
            .expect_err("missing")
            .to_string();
        assert!(message.contains("nope.pem"), "{message}");
        assert!(message.contains("cluster.ca_file"), "{message}");
        let mismatched = ClusterTrust::Files {
            ca_file: dir.0.join("ca.pem"),
            cert_file: dir.0.join("n1.pem"),
            key_file: dir.0.join("n2.key"),
        };
        let message = quinn_configs("n1", &mismatched)
            .expect_err("wrong key")
            .to_string();
        assert!(
            message.contains("n1.pem") && message.contains("n2.key"),
            "{message}"
        );
        let not_a_cert = ClusterTrust::Files {
            ca_file: dir.0.join("ca.key"),
            cert_file: dir.0.join("n1.pem"),
            key_file: dir.0.join("n1.key"),
        };
        let message = quinn_configs("n1", &not_a_cert)
            .expect_err("a key")
            .to_string();
        assert!(message.contains("ca.key"), "{message}");
    }

    #[tokio::test]
    async fn a_client_certificate_from_another_ca_is_refused() {
        let (server, _) = quinn_configs("node-a", &secret(SECRET)).expect("configs");
        // Trusts the server's CA, but presents a certificate of another.
        let ours = Identity::from_secret("node-a", SECRET).expect("identity");
        let theirs = Identity::from_secret("intruder", "another-secret-0123456").expect("id");
        let (_, client) = Identity {
            ca: ours.ca,
            ..theirs
        }
        .quinn_configs()
        .expect("configs");
        assert_refused(exchange(server, client).await, "invalid peer certificate");
    }

    #[tokio::test]
    async fn a_client_without_a_certificate_is_refused() {
        let (server, _) = quinn_configs("node-a", &secret(SECRET)).expect("configs");
        let ca = Identity::from_secret("node-a", SECRET)
            .expect("identity")
            .ca;
        let mut roots = RootCertStore::empty();
        roots.add(ca).expect("CA");
        let mut tls = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let client =
            quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).expect("QUIC")));
        assert_refused(exchange(server, client).await, "peer sent no certificates");
    }
}
