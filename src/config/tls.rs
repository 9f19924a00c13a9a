//! TLS listeners' settings: the `tls_*` flags and keys for the simple case
//! (`--tls-listen ADDR --tls-cert PATH --tls-key PATH`), and the TLS keys
//! of `[[listener]]` tables (`cert_file`, `key_file`, `client_ca_file`,
//! `require_client_cert`, `use_identity_as_username`). The files are read
//! and the rustls configuration built here, once, so a missing, unreadable
//! or mismatched file stops start-up naming its key; the
//! [`TlsAcceptor`] built then is the one the shards use and SIGHUP
//! reloads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::{ConfigError, FileConfig, ListenerConfig, Transport};
use crate::tls::{TlsAcceptor, TlsFile, TlsFiles, TlsLoadError};

/// A TLS listener's files and what it does with client certificates.
/// Equal when the settings are: the acceptor is what they loaded.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub files: TlsFiles,
    /// The verified client certificate's common name is the client's user
    /// name, and no password is asked; a client without a certificate is
    /// refused as Not authorized.
    pub use_identity_as_username: bool,
    pub acceptor: Arc<TlsAcceptor>,
}

/// The TLS flags, flattened into the command line; each is the top-level
/// key of the same name.
#[derive(Debug, Default, Args)]
pub(super) struct TlsArgs {
    /// Address to accept MQTT over TLS on (8883 by convention); repeat
    /// for several. Needs --tls-cert and --tls-key [default: none].
    #[arg(long, value_name = "ADDR")]
    tls_listen: Option<Vec<SocketAddr>>,
    /// The --tls-listen certificate chain, PEM, leaf first. Reloaded on
    /// SIGHUP.
    #[arg(long, value_name = "PATH")]
    tls_cert: Option<PathBuf>,
    /// The --tls-cert private key, PEM. Reloaded on SIGHUP.
    #[arg(long, value_name = "PATH")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that --tls-listen clients' certificates are
    /// verified against (mTLS); a certificate is then required, unless
    /// --tls-require-client-cert false [default: none].
    #[arg(long, value_name = "PATH")]
    tls_client_ca: Option<PathBuf>,
    /// Refuse --tls-listen clients without a certificate signed by
    /// --tls-client-ca [default: true with --tls-client-ca].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    tls_require_client_cert: Option<bool>,
    /// On --tls-listen, the client certificate's common name is the user
    /// name (for the ACL), and no password is asked; clients without a
    /// certificate are refused. Needs --tls-client-ca [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    tls_use_identity_as_username: Option<bool>,
}

impl PartialEq for TlsListener {
    fn eq(&self, other: &TlsListener) -> bool {
        self.files == other.files && self.use_identity_as_username == other.use_identity_as_username
    }
}

impl Eq for TlsListener {}

/// The `tls_listen` addresses, sharing one certificate.
pub(super) fn flag_listeners(
    cli: &TlsArgs,
    file: &FileConfig,
) -> Result<Vec<ListenerConfig>, ConfigError> {
    let addresses = cli.tls_listen.as_ref().or(file.tls_listen.as_ref());
    let settings = Settings {
        cert_file: cli.tls_cert.clone().or_else(|| file.tls_cert.clone()),
        key_file: cli.tls_key.clone().or_else(|| file.tls_key.clone()),
        client_ca_file: cli
            .tls_client_ca
            .clone()
            .or_else(|| file.tls_client_ca.clone()),
        require_client_cert: cli.tls_require_client_cert.or(file.tls_require_client_cert),
        use_identity_as_username: cli
            .tls_use_identity_as_username
            .or(file.tls_use_identity_as_username),
    };
    let Some(addresses) = addresses.filter(|addresses| !addresses.is_empty()) else {
        if settings.is_given() {
            return Err(invalid("tls_listen", "is needed by the other tls_ keys"));
        }
        return Ok(Vec::new());
    };
    let keys = Keys {
        cert_file: "tls_cert",
        key_file: "tls_key",
        client_ca_file: "tls_client_ca",
        require_client_cert: "tls_require_client_cert",
        use_identity_as_username: "tls_use_identity_as_username",
    };
    let tls = settings.load(&keys).map_err(|error| match error {
        SettingsError::Missing { key, reason } => invalid(key, reason),
        SettingsError::Load(error) => {
            let key = match error.file() {
                TlsFile::Cert => keys.cert_file,
                TlsFile::Key => keys.key_file,
                TlsFile::ClientCa => keys.client_ca_file,
            };
            match error {
                TlsLoadError::Read { path, source, .. } => {
                    ConfigError::ReadKeyFile { key, path, source }
                }
                TlsLoadError::Invalid { path, reason, .. } => {
                    ConfigError::InvalidKeyFile { key, path, reason }
                }
            }
        }
    })?;
    Ok(addresses
        .iter()
        .map(|&address| ListenerConfig {
            address,
            transport: Transport::Tls,
            proxy_protocol: false,
            tls: Some(tls.clone()),
        })
        .collect())
}

/// A table's TLS settings: required with `transport = "tls"` or `"wss"`,
/// refused with the others.
pub(super) fn table_tls(
    address: SocketAddr,
    transport: Transport,
    settings: Settings,
) -> Result<Option<TlsListener>, ConfigError> {
    let refuse = |reason: String| ConfigError::InvalidListener { address, reason };
    if !transport.is_tls() {
        if settings.is_given() {
            return Err(refuse(
                "TLS keys (`cert_file`, `key_file`, ...) need transport = \"tls\" or \"wss\""
                    .to_owned(),
            ));
        }
        return Ok(None);
    }
    let keys = Keys {
        cert_file: "cert_file",
        key_file: "key_file",
        client_ca_file: "client_ca_file",
        require_client_cert: "require_client_cert",
        use_identity_as_username: "use_identity_as_username",
    };
    settings.load(&keys).map(Some).map_err(|error| match error {
        SettingsError::Missing { key, reason } => refuse(format!("`{key}` {reason}")),
        SettingsError::Load(error) => refuse(format!("`{}` {error}", error.file().key())),
    })
}

/// A listener's TLS settings as given, from flags or a table.
pub(super) struct Settings {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    pub require_client_cert: Option<bool>,
    pub use_identity_as_username: Option<bool>,
}

/// What each setting is called where it was given.
struct Keys {
    cert_file: &'static str,
    key_file: &'static str,
    client_ca_file: &'static str,
    require_client_cert: &'static str,
    use_identity_as_username: &'static str,
}

enum SettingsError {
    Missing {
        key: &'static str,
        reason: &'static str,
    },
    Load(TlsLoadError),
}

impl Settings {
    fn is_given(&self) -> bool {
        self.cert_file.is_some()
            || self.key_file.is_some()
            || self.client_ca_file.is_some()
            || self.require_client_cert.is_some()
            || self.use_identity_as_username.is_some()
    }

    fn load(self, keys: &Keys) -> Result<TlsListener, SettingsError> {
        let missing = |key, reason| SettingsError::Missing { key, reason };
        let cert_file = self
            .cert_file
            .ok_or_else(|| missing(keys.cert_file, "is required for a TLS listener"))?;
        let key_file = self
            .key_file
            .ok_or_else(|| missing(keys.key_file, "is required for a TLS listener"))?;
        let has_ca = self.client_ca_file.is_some();
        if self.require_client_cert == Some(true) && !has_ca {
            return Err(missing(
                keys.require_client_cert,
                "needs a client CA file to verify certificates against",
            ));
        }
        let use_identity_as_username = self.use_identity_as_username.unwrap_or(false);
        if use_identity_as_username && !has_ca {
            return Err(missing(
                keys.use_identity_as_username,
                "needs a client CA file to verify certificates against",
            ));
        }
        let files = TlsFiles {
            cert_file,
            key_file,
            client_ca_file: self.client_ca_file,
            require_client_cert: self.require_client_cert.unwrap_or(has_ca),
        };
        let acceptor = TlsAcceptor::load(files.clone()).map_err(SettingsError::Load)?;
        Ok(TlsListener {
            files,
            use_identity_as_username,
            acceptor: Arc::new(acceptor),
        })
    }
}

fn invalid(key: &'static str, reason: &str) -> ConfigError {
    ConfigError::InvalidValue {
        key,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair};

    use super::super::tests::{merge, parse};
    use super::*;
    use crate::testing::TempDir;

    /// A self-signed certificate and its key in `dir`, as paths.
    fn cert(dir: &TempDir) -> (String, String) {
        std::fs::create_dir_all(&dir.0).expect("temp dir");
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let (cert_file, key_file) = (dir.0.join("server.pem"), dir.0.join("server.key"));
        std::fs::write(&cert_file, cert.pem()).expect("write");
        std::fs::write(&key_file, key.serialize_pem()).expect("write");
        let path = |p: PathBuf| p.to_str().expect("utf-8").to_owned();
        (path(cert_file), path(key_file))
    }

    #[test]
    fn tls_listen_addresses_share_one_certificate_and_come_after_tcp() {
        let dir = TempDir::new("config-tls-flags");
        let (cert, key) = cert(&dir);
        let config = merge(
            &[
                "--tls-listen",
                "127.0.0.1:8883",
                "--tls-listen",
                "[::1]:8883",
            ],
            &format!("listen = [\"127.0.0.1:1883\"]\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n"),
        )
        .expect("valid");
        let transports: Vec<_> = config.listeners.iter().map(|l| l.transport).collect();
        assert_eq!(transports, [Transport::Tcp, Transport::Tls, Transport::Tls]);
        let (a, b) = (&config.listeners[1], &config.listeners[2]);
        let (a, b) = (a.tls.as_ref().expect("tls"), b.tls.as_ref().expect("tls"));
        assert!(Arc::ptr_eq(&a.acceptor, &b.acceptor));
        assert!(!a.use_identity_as_username);
        assert_eq!(a.files.client_ca_file, None);
    }

    #[test]
    fn a_client_ca_requires_certificates_unless_told_otherwise() {
        let dir = TempDir::new("config-tls-ca");
        let (cert, key) = cert(&dir);
        let flags = [
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ];
        let with = |extra: &[&str]| {
            let args: Vec<&str> = flags.iter().chain(extra).copied().collect();
            let config = parse(&args).expect("valid");
            let tls = config.listeners[1].tls.clone().expect("tls");
            (tls.files.require_client_cert, tls.use_identity_as_username)
        };
        assert_eq!(with(&["--tls-client-ca", &cert]), (true, false));
        assert_eq!(
            with(&[
                "--tls-client-ca",
                &cert,
                "--tls-require-client-cert",
                "false",
                "--tls-use-identity-as-username"
            ]),
            (false, true)
        );
        let error = parse(&[&flags[..], &["--tls-require-client-cert"]].concat())
            .expect_err("nothing to verify against");
        assert!(
            error.to_string().contains("--tls-require-client-cert"),
            "{error}"
        );
    }

    #[test]
    fn tls_keys_without_a_tls_listener_are_refused() {
        let error = parse(&["--tls-cert", "/x.pem"]).expect_err("no tls_listen");
        assert!(error.to_string().contains("`tls_listen`"), "{error}");
        let error = merge(
            &[],
            "[[listener]]\naddress = \"127.0.0.1:1\"\ntransport = \"websocket\"\ncert_file = \"/x\"\n",
        )
        .expect_err("websocket without tls");
        assert_eq!(
            error.to_string(),
            "invalid [[listener]] 127.0.0.1:1: TLS keys (`cert_file`, `key_file`, ...) need transport = \"tls\" or \"wss\""
        );
    }
}
