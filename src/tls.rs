//! TLS for client listeners (`transport = "tls"` and `"wss"`): the
//! certificate files, the rustls server configuration built from them, and
//! its reload on SIGHUP. The per-connection side, a sans-IO layer around
//! rustls's `UnbufferedServerConnection`, is [`crate::shard::tls`].
//!
//! rustls does all the cryptography, with the ring provider the cluster's
//! QUIC links already use, and its defaults: TLS 1.2 and 1.3, its safe
//! cipher suites. A listener with `client_ca_file` verifies client
//! certificates against that CA (mTLS), requiring one unless
//! `require_client_cert = false`; with `use_identity_as_username` the
//! certificate's common name becomes the client's user name
//! ([`common_name`]).
//!
//! Reloading: each listener has one [`TlsAcceptor`] shared by every shard,
//! holding the current `Arc<ServerConfig>` behind a lock taken once per new
//! connection, for as long as it takes to clone the `Arc`. A reload builds
//! a whole new configuration from the files and swaps it in: handshakes
//! after the swap use it, connections already established keep the session
//! they negotiated (a rustls connection holds its own `Arc` of the
//! configuration it started with). A file that does not load keeps the
//! previous configuration, and says why in the log.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::UnbufferedServerConnection;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tracing::{error, info};

/// Where a listener's TLS material is read from, and what it asks of
/// clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first, PEM.
    pub cert_file: PathBuf,
    /// The server certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) client certificates are verified against;
    /// `None`: clients are not asked for one.
    pub client_ca_file: Option<PathBuf>,
    /// With a client CA: whether a client without a certificate is
    /// refused in the handshake (true) or let in unidentified (false).
    pub require_client_cert: bool,
}

/// Which of a listener's files is at fault, for the message that names its
/// key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
    ClientCa,
}

/// Why a listener's TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsLoadError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        file: TlsFile,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Invalid {
        file: TlsFile,
        path: PathBuf,
        reason: String,
    },
}

/// One TLS listener's current configuration, shared by the shards (which
/// start sessions from it) and the reload thread (which replaces it).
#[derive(Debug)]
pub struct TlsAcceptor {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsFile {
    /// The `[[listener]]` key naming this file.
    pub fn key(self) -> &'static str {
        match self {
            TlsFile::Cert => "cert_file",
            TlsFile::Key => "key_file",
            TlsFile::ClientCa => "client_ca_file",
        }
    }
}

impl TlsLoadError {
    pub fn file(&self) -> TlsFile {
        match self {
            TlsLoadError::Read { file, .. } | TlsLoadError::Invalid { file, .. } => *file,
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            TlsLoadError::Read { path, .. } | TlsLoadError::Invalid { path, .. } => path,
        }
    }
}

impl TlsAcceptor {
    /// Reads the files and builds the configuration; an error names the
    /// file at fault.
    pub fn load(files: TlsFiles) -> Result<TlsAcceptor, TlsLoadError> {
        let config = server_config(&files)?;
        Ok(TlsAcceptor {
            files,
            current: RwLock::new(config),
        })
    }

    /// A server session for a new connection, on the configuration current
    /// now.
    pub fn session(&self) -> Result<UnbufferedServerConnection, rustls::Error> {
        let config = match self.current.read() {
            Ok(config) => config.clone(),
            // A reload never panics while holding the lock; if one did,
            // the configuration it left is still whole.
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        UnbufferedServerConnection::new(config)
    }

    /// Reads the files again (on SIGHUP). A file that does not load is
    /// logged and the configuration loaded before kept: a certificate
    /// renewal gone wrong must not stop every new client from connecting.
    pub fn reload(&self) {
        match server_config(&self.files) {
            Ok(config) => {
                match self.current.write() {
                    Ok(mut current) => *current = config,
                    Err(poisoned) => *poisoned.into_inner() = config,
                }
                info!(cert_file = %self.files.cert_file.display(), "tls certificate reloaded");
            }
            Err(error) => error!(
                key = error.file().key(),
                %error,
                "tls files not reloaded; keeping the previous certificate"
            ),
        }
    }
}

/// The cryptography every rustls configuration of the broker uses, client
/// listeners' and the cluster's. Explicit, so the choice never depends on
/// which providers other crates compiled in or installed as the process
/// default. ring is deprecated in rustls for lacking post-quantum key
/// exchange (clients offering X25519MLKEM768 fall back to X25519); it is
/// still the provider because aws-lc-rs needs a C and CMake toolchain to
/// build.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration `files` describe.
fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsLoadError> {
    let provider = crypto_provider();
    let certs = read_certs(TlsFile::Cert, &files.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|error| pem_error(TlsFile::Key, &files.key_file, error))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| invalid(TlsFile::Cert, &files.cert_file, error))?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(TlsFile::ClientCa, path)? {
                roots
                    .add(cert)
                    .map_err(|error| invalid(TlsFile::ClientCa, path, error))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if files.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|error| invalid(TlsFile::ClientCa, path, error))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    // Fails when the key is not the certificate's.
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|error| invalid(TlsFile::Key, &files.key_file, error))?;
    Ok(Arc::new(config))
}

fn read_certs(file: TlsFile, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsLoadError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| pem_error(file, path, error))?;
    if certs.is_empty() {
        return Err(invalid(file, path, "no certificate in the file"));
    }
    Ok(certs)
}

fn pem_error(file: TlsFile, path: &Path, error: pem::Error) -> TlsLoadError {
    match error {
        pem::Error::Io(source) => TlsLoadError::Read {
            file,
            path: path.to_owned(),
            source,
        },
        pem::Error::NoItemsFound => invalid(file, path, "no PEM private key in the file"),
        other => invalid(file, path, other),
    }
}

fn invalid(file: TlsFile, path: &Path, reason: impl std::fmt::Display) -> TlsLoadError {
    TlsLoadError::Invalid {
        file,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The first common name (CN) of a certificate's subject, if it has one
/// that is a string. Only ever called on a certificate the verifier has
/// accepted, but parsed as untrusted all the same: an unparsable one has
/// no name.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let name = parsed.subject().iter_common_name().next()?;
    name.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair};

    use super::*;
    use crate::testing::TempDir;

    fn dir(name: &str) -> TempDir {
        let dir = TempDir::new(name);
        std::fs::create_dir_all(&dir.0).expect("temp dir");
        dir
    }

    /// A self-signed certificate with `cn`, written as `<name>.pem` and
    /// `<name>.key`.
    fn self_signed(dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.self_signed(&key).expect("cert");
        let (cert_file, key_file) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).expect("write");
        std::fs::write(&key_file, key.serialize_pem()).expect("write");
        (cert_file, key_file)
    }

    fn files(cert_file: &Path, key_file: &Path) -> TlsFiles {
        TlsFiles {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            client_ca_file: None,
            require_client_cert: true,
        }
    }

    #[test]
    fn the_common_name_is_read_from_a_certificate() {
        let dir = dir("cn");
        let (cert_file, _) = self_signed(&dir.0, "a", "sensor-17");
        let cert = CertificateDer::from_pem_file(&cert_file).expect("pem");
        assert_eq!(common_name(&cert).as_deref(), Some("sensor-17"));
        assert_eq!(common_name(&CertificateDer::from(vec![0x30, 0x03])), None);
    }

    #[test]
    fn each_bad_file_is_named() {
        let dir = dir("bad");
        let (cert_a, key_a) = self_signed(&dir.0, "a", "a");
        let (_, key_b) = self_signed(&dir.0, "b", "b");
        let garbage = dir.0.join("garbage.pem");
        std::fs::write(&garbage, "not pem at all").expect("write");
        let missing = dir.0.join("missing.pem");

        let fails = |files: TlsFiles| TlsAcceptor::load(files).expect_err("must fail");
        let error = fails(files(&missing, &key_a));
        assert_eq!(error.file(), TlsFile::Cert);
        assert!(matches!(error, TlsLoadError::Read { .. }), "{error}");
        assert_eq!(fails(files(&garbage, &key_a)).file(), TlsFile::Cert);
        assert_eq!(fails(files(&cert_a, &garbage)).file(), TlsFile::Key);
        let error = fails(files(&cert_a, &key_b));
        assert_eq!(error.file(), TlsFile::Key, "a key that is not the cert's");
        let error = fails(TlsFiles {
            client_ca_file: Some(garbage.clone()),
            ..files(&cert_a, &key_a)
        });
        assert_eq!(error.file(), TlsFile::ClientCa);
        assert_eq!(error.path(), garbage);

        let acceptor = TlsAcceptor::load(files(&cert_a, &key_a)).expect("valid");
        assert!(acceptor.session().is_ok());
    }

    #[test]
    fn a_bad_reload_keeps_the_configuration_and_a_good_one_replaces_it() {
        let dir = dir("reload");
        let (cert_file, key_file) = self_signed(&dir.0, "a", "a");
        let acceptor = TlsAcceptor::load(files(&cert_file, &key_file)).expect("valid");
        let before = acceptor.current.read().expect("lock").clone();

        std::fs::write(&cert_file, "broken").expect("write");
        acceptor.reload();
        assert!(Arc::ptr_eq(
            &before,
            &acceptor.current.read().expect("lock")
        ));

        self_signed(&dir.0, "a", "renewed");
        acceptor.reload();
        assert!(!Arc::ptr_eq(
            &before,
            &acceptor.current.read().expect("lock")
        ));
    }
}
