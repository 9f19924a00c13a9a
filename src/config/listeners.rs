//! Where clients are accepted: the `listen`, `ws_listen` and `tls_listen`
//! lists and the `[[listener]]` tables, merged into one list of
//! [`ListenerConfig`]. TLS settings are checked and loaded in
//! [`super::tls`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use super::tls::{self, Settings, TlsListener};
use super::{Cli, ConfigError, DEFAULT_PORT, FileConfig, ensure};

/// One address the broker accepts clients on, and how they arrive there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub transport: Transport,
    /// Whether each connection starts with a PROXY protocol v1 or v2
    /// header: true behind a load balancer that sends one (HAProxy's
    /// `send-proxy-v2`), whose address would otherwise stand for every
    /// client. Per listener, because a broker commonly also takes direct
    /// connections from inside the network.
    pub proxy_protocol: bool,
    /// The certificate and client verification of a `tls` or `wss`
    /// listener; `None` for the others.
    pub tls: Option<TlsListener>,
}

/// How MQTT reaches the broker on a listening address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MQTT packets directly on the TCP stream.
    #[default]
    Tcp,
    /// MQTT packets in WebSocket binary frames, after an HTTP upgrade on
    /// `/mqtt` (spec 6.0).
    WebSocket,
    /// MQTT packets in a TLS session.
    Tls,
    /// WebSocket in a TLS session.
    Wss,
}

impl Transport {
    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    pub fn is_websocket(self) -> bool {
        matches!(self, Transport::WebSocket | Transport::Wss)
    }
}

/// A `[[listener]]` table of the file: the one way to give each listener
/// its own settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenerTable {
    address: SocketAddr,
    #[serde(default)]
    transport: Transport,
    #[serde(default)]
    proxy_protocol: bool,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    require_client_cert: Option<bool>,
    use_identity_as_username: Option<bool>,
}

impl ListenerTable {
    fn tls_settings(&self) -> Settings {
        Settings {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            client_ca_file: self.client_ca_file.clone(),
            require_client_cert: self.require_client_cert,
            use_identity_as_username: self.use_identity_as_username,
        }
    }
}

/// The `listen` and `ws_listen` lists (the flags replacing the file's)
/// and the file's `[[listener]]` tables, as one list with the TCP
/// listeners first, so that the first `listening` line names one.
pub(super) fn merge_listeners(
    cli: &Cli,
    file: &FileConfig,
) -> Result<Vec<ListenerConfig>, ConfigError> {
    let tables = file.listener.as_deref().unwrap_or_default();
    let tcp = match cli.listen.as_ref().or(file.listen.as_ref()) {
        Some(listen) => {
            ensure(
                !listen.is_empty() || !tables.is_empty(),
                "listen",
                "must name at least one address",
            )?;
            listen.clone()
        }
        None if tables.is_empty() => vec![SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_PORT))],
        None => Vec::new(),
    };
    let proxy_protocol = cli.proxy_protocol.or(file.proxy_protocol).unwrap_or(false);
    let websocket = cli.ws_listen.as_ref().or(file.ws_listen.as_ref());
    let mut listeners: Vec<ListenerConfig> = tcp
        .into_iter()
        .map(|address| ListenerConfig {
            address,
            transport: Transport::Tcp,
            proxy_protocol,
            tls: None,
        })
        .chain(
            websocket
                .into_iter()
                .flatten()
                .map(|&address| ListenerConfig {
                    address,
                    transport: Transport::WebSocket,
                    proxy_protocol: false,
                    tls: None,
                }),
        )
        .chain(tls::flag_listeners(&cli.tls, file)?)
        .collect();
    for table in tables {
        listeners.push(ListenerConfig {
            address: table.address,
            transport: table.transport,
            proxy_protocol: table.proxy_protocol,
            tls: tls::table_tls(table.address, table.transport, table.tls_settings())?,
        });
    }
    listeners.sort_by_key(|listener| listener.transport != Transport::Tcp);
    // SO_REUSEPORT would let a second socket bind the same address, and the
    // kernel would then split its clients between two sets of settings.
    for (i, listener) in listeners.iter().enumerate() {
        let repeated = listener.address.port() != 0
            && listeners[..i]
                .iter()
                .any(|earlier| earlier.address == listener.address);
        if repeated {
            return Err(ConfigError::RepeatedListener(listener.address));
        }
    }
    Ok(listeners)
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::super::tests::{merge, parse, tcp, websocket};

    #[test]
    fn listen_is_repeatable() {
        let config = parse(&["--listen", "127.0.0.1:1883", "--listen", "[::]:0"]).expect("valid");
        assert_eq!(
            config.listeners,
            [tcp("127.0.0.1:1883", false), tcp("[::]:0", false)]
        );
    }

    #[test]
    fn ws_listen_is_repeatable_and_overrides_the_file() {
        let config = merge(
            &["--ws-listen", "127.0.0.1:8083", "--ws-listen", "[::1]:0"],
            "ws_listen = [\"0.0.0.0:9001\"]",
        )
        .expect("valid");
        assert_eq!(
            config.listeners,
            [
                tcp("0.0.0.0:1883", false),
                websocket("127.0.0.1:8083", false),
                websocket("[::1]:0", false),
            ]
        );
        let error = parse(&["--ws-listen", "localhost"]).expect_err("not an address");
        assert!(error.to_string().contains("--ws-listen"), "{error}");
    }

    #[test]
    fn proxy_protocol_flag_alone_means_true() {
        let proxied = |config: Config| config.listeners.iter().all(|l| l.proxy_protocol);
        assert!(proxied(parse(&["--proxy-protocol"]).expect("valid")));
        let config = merge(&["--proxy-protocol", "false"], "proxy_protocol = true").expect("valid");
        assert!(!proxied(config));
        assert!(proxied(merge(&[], "proxy_protocol = true").expect("valid")));
    }

    #[test]
    fn listener_tables_set_proxy_protocol_per_listener() {
        let toml = r#"
            listen = ["127.0.0.1:1883"]
            proxy_protocol = false

            [[listener]]
            address = "10.0.0.1:1883"
            proxy_protocol = true

            [[listener]]
            address = "10.0.0.1:8083"
            transport = "websocket"
            proxy_protocol = true

            [[listener]]
            address = "127.0.0.1:8083"
            transport = "websocket"
            "#;
        let config = merge(&[], toml).expect("valid");
        assert_eq!(
            config.listeners,
            [
                tcp("127.0.0.1:1883", false),
                tcp("10.0.0.1:1883", true),
                websocket("10.0.0.1:8083", true),
                websocket("127.0.0.1:8083", false),
            ]
        );
        // The flag replaces `listen`, and its proxy setting covers only
        // what it lists; the tables keep theirs.
        let config = merge(&["--listen", "127.0.0.1:9", "--proxy-protocol"], toml).expect("valid");
        assert_eq!(config.listeners[0], tcp("127.0.0.1:9", true));
        assert_eq!(config.listeners[1], tcp("10.0.0.1:1883", true));
        assert_eq!(config.listeners[3], websocket("127.0.0.1:8083", false));
    }

    #[test]
    fn listener_tables_alone_replace_the_default_address() {
        let config = merge(
            &[],
            "[[listener]]\naddress = \"127.0.0.1:2883\"\nproxy_protocol = true\n",
        )
        .expect("valid");
        assert_eq!(config.listeners, [tcp("127.0.0.1:2883", true)]);
    }

    #[test]
    fn bad_listener_tables_are_named() {
        let error = merge(
            &[],
            "[[listener]]\naddress = \"127.0.0.1:1\"\nproxy = true\n",
        )
        .expect_err("unknown key");
        assert!(error.to_string().contains("proxy"), "{error}");
        let error = merge(
            &[],
            "[[listener]]\naddress = \"127.0.0.1:1\"\ntransport = \"udp\"\n",
        )
        .expect_err("unknown transport");
        assert!(error.to_string().contains("udp"), "{error}");
        let error = merge(&[], "[[listener]]\nproxy_protocol = true\n").expect_err("no address");
        assert!(error.to_string().contains("address"), "{error}");
    }

    #[test]
    fn an_address_given_twice_is_refused() {
        let error = merge(
            &["--ws-listen", "127.0.0.1:8083"],
            "[[listener]]\naddress = \"127.0.0.1:8083\"\nproxy_protocol = true\n",
        )
        .expect_err("same address twice");
        assert_eq!(
            error.to_string(),
            "listen address 127.0.0.1:8083 is given more than once (in `listen`, `ws_listen`, `tls_listen` or `[[listener]]`)"
        );
        // Port 0 is a fresh port each time.
        let config = parse(&["--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"]).expect("valid");
        assert_eq!(config.listeners.len(), 2);
    }
}
