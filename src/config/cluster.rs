//! The `[cluster]` table and its flags, merged and validated into
//! [`ClusterSettings`].
//!
//! `cluster.listen` (`--cluster-listen`) turns cluster mode on; any other
//! cluster key or flag without it is refused by name rather than ignored,
//! since a node that silently runs alone looks healthy while its clients
//! miss every other node's messages.
//!
//! Nodes authenticate each other with mutual TLS ([`crate::cluster::tls`])
//! under exactly one of:
//!
//! - certificate files: `cluster.ca_file`, `cluster.cert_file` and
//!   `cluster.key_file`, all three (`ringmq cluster-certs` writes them);
//! - a shared secret: the contents of `cluster.secret_file`, or the
//!   `RINGMQ_CLUSTER_SECRET` environment variable. Giving both is refused
//!   rather than one silently winning: two sources of one secret are
//!   likelier a mistake (an old file, a leftover variable) than a wish,
//!   and a node that picked the wrong one would be shut out of its cluster
//!   with only a handshake error to show for it. One trailing newline
//!   (`\n` or `\r\n`) is dropped from either, as editors and `echo` add
//!   one; the rest must be at least 16 bytes of UTF-8.
//!
//! Giving both kinds, or neither, is refused. Relative file paths are taken
//! from the broker's working directory.

use std::ffi::OsString;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

use super::{ConfigError, ensure};
use crate::cluster::settings::{AckMode, ClusterSettings, ClusterTrust, check_node_id};

/// Where the shared secret may come from besides `cluster.secret_file`:
/// an orchestrator's secret store usually injects one as a variable.
pub(super) const SECRET_ENV: &str = "RINGMQ_CLUSTER_SECRET";
/// 128 bits if random; shorter is within reach of an offline search (the
/// secret is checked against any node certificate without contacting a
/// node).
const MIN_SECRET_LEN: usize = 16;
/// A few probes make a failure detection: half a second detects a dead
/// node in a few seconds without much traffic.
const DEFAULT_PROBE_INTERVAL_MS: u64 = 500;
/// Long enough to ride out a GC-free but busy peer or a lost packet or
/// two, short enough that routes to a dead node are dropped quickly.
const DEFAULT_SUSPECT_TIMEOUT_MS: u64 = 3000;
const DEFAULT_ROUTE_ACK_TIMEOUT_MS: u64 = 2000;
/// Enough to hold a few seconds of a busy peer link while it reconnects.
const DEFAULT_PEER_BUFFER_BYTES: usize = 64 * 1024 * 1024;
/// Rides out a node's restart or a short partition without losing its
/// subscribers' routes.
const DEFAULT_PEER_HOLD_SECS: u64 = 300;
/// Three nodes: the smallest cluster that survives a failure, and what a
/// deployment usually starts with.
const DEFAULT_BOOTSTRAP_EXPECT: usize = 3;
/// One copy besides the owner: a session survives the loss of any one
/// node. It costs (PERF.md, "Replicated sessions") about half the
/// saturated throughput of persistent-session traffic, and nothing
/// measurable in delivery below saturation.
const DEFAULT_REPLICATION_FACTOR: usize = 2;
/// As many as the ownership raft has voters at most.
const MAX_REPLICATION_FACTOR: usize = 5;

/// The cluster flags, flattened into the command line. Each is the
/// `[cluster]` key of the same name with a `cluster-` prefix, except
/// `--node-id` and `--seeds`.
#[derive(Debug, Default, Args)]
pub(super) struct ClusterArgs {
    /// This node's unique name in the cluster, 1 to 64 characters of
    /// A-Z a-z 0-9 . _ - [default: the host name].
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
    /// UDP address to accept other cluster nodes on (QUIC); turns cluster
    /// mode on [default: none, a single node].
    #[arg(long, value_name = "ADDR")]
    cluster_listen: Option<SocketAddr>,
    /// Address other nodes dial to reach this one, `ip:port` or
    /// `host:port` (resolved once, at start: a compose service name or a
    /// pod's DNS name); required when --cluster-listen is 0.0.0.0 or [::]
    /// [default: --cluster-listen].
    #[arg(long, value_name = "ADDR")]
    cluster_advertise: Option<String>,
    /// Cluster addresses of other nodes to join through, comma separated
    /// host:port; host names are resolved when joining [default: none].
    #[arg(long, value_name = "HOST:PORT,...", value_delimiter = ',')]
    seeds: Option<Vec<String>>,
    /// PEM file of the cluster CA certificate [default: none].
    #[arg(long, value_name = "PATH")]
    cluster_ca_file: Option<PathBuf>,
    /// PEM file of this node's certificate, signed by the cluster CA
    /// [default: none].
    #[arg(long, value_name = "PATH")]
    cluster_cert_file: Option<PathBuf>,
    /// PEM file of this node's private key [default: none].
    #[arg(long, value_name = "PATH")]
    cluster_key_file: Option<PathBuf>,
    /// File holding the secret shared by all nodes, instead of certificate
    /// files (or set RINGMQ_CLUSTER_SECRET) [default: none].
    #[arg(long, value_name = "PATH")]
    cluster_secret_file: Option<PathBuf>,
    /// When a QoS 1/2 publisher is acknowledged: remote (once peer nodes
    /// with subscribers have the message) or local [default: remote].
    #[arg(long, value_name = "MODE")]
    cluster_ack: Option<ClusterAck>,
    /// Milliseconds between failure-detection probes [default: 500].
    #[arg(long, value_name = "MS")]
    cluster_probe_interval_ms: Option<u64>,
    /// Milliseconds a suspected node has to refute before it is declared
    /// down [default: 3000].
    #[arg(long, value_name = "MS")]
    cluster_suspect_timeout_ms: Option<u64>,
    /// Longest a SUBACK waits for peers to learn a new route, in
    /// milliseconds [default: 2000].
    #[arg(long, value_name = "MS")]
    cluster_route_ack_timeout_ms: Option<u64>,
    /// Bytes of messages held for one peer that has not acknowledged them
    /// [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    cluster_peer_buffer_bytes: Option<usize>,
    /// Seconds an unreachable peer's routes and messages are kept
    /// [default: 300].
    #[arg(long, value_name = "SECS")]
    cluster_peer_hold_secs: Option<u64>,
    /// Nodes, this one included, to see before forming the cluster's
    /// ownership raft; 1 lets a node form it alone [default: 3].
    #[arg(long, value_name = "N")]
    cluster_bootstrap_expect: Option<usize>,
    /// Nodes holding each persistent session, its owner included; 1 keeps
    /// no copies. Needs a data dir [default: 2].
    #[arg(long, value_name = "N")]
    cluster_replication_factor: Option<usize>,
}

/// The `[cluster]` table of the file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterTable {
    pub(super) node_id: Option<String>,
    pub(super) listen: Option<SocketAddr>,
    pub(super) advertise: Option<String>,
    pub(super) seeds: Option<Vec<String>>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) secret_file: Option<PathBuf>,
    pub(super) ack: Option<ClusterAck>,
    pub(super) probe_interval_ms: Option<u64>,
    pub(super) suspect_timeout_ms: Option<u64>,
    pub(super) route_ack_timeout_ms: Option<u64>,
    pub(super) peer_buffer_bytes: Option<usize>,
    pub(super) peer_hold_secs: Option<u64>,
    pub(super) bootstrap_expect: Option<usize>,
    pub(super) replication_factor: Option<usize>,
}

/// How [`AckMode`] is spelled in flags and files.
#[derive(Debug, Clone, Copy, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum ClusterAck {
    /// Once every peer node with matching subscribers has the message.
    Remote,
    /// Once this node has routed it.
    Local,
}

impl ClusterTable {
    /// The flags over the file, key by key.
    fn overridden_by(self, cli: &ClusterArgs) -> ClusterTable {
        ClusterTable {
            node_id: cli.node_id.clone().or(self.node_id),
            listen: cli.cluster_listen.or(self.listen),
            advertise: cli.cluster_advertise.clone().or(self.advertise),
            seeds: cli.seeds.clone().or(self.seeds),
            ca_file: cli.cluster_ca_file.clone().or(self.ca_file),
            cert_file: cli.cluster_cert_file.clone().or(self.cert_file),
            key_file: cli.cluster_key_file.clone().or(self.key_file),
            secret_file: cli.cluster_secret_file.clone().or(self.secret_file),
            ack: cli.cluster_ack.or(self.ack),
            probe_interval_ms: cli.cluster_probe_interval_ms.or(self.probe_interval_ms),
            suspect_timeout_ms: cli.cluster_suspect_timeout_ms.or(self.suspect_timeout_ms),
            route_ack_timeout_ms: cli
                .cluster_route_ack_timeout_ms
                .or(self.route_ack_timeout_ms),
            peer_buffer_bytes: cli.cluster_peer_buffer_bytes.or(self.peer_buffer_bytes),
            peer_hold_secs: cli.cluster_peer_hold_secs.or(self.peer_hold_secs),
            bootstrap_expect: cli.cluster_bootstrap_expect.or(self.bootstrap_expect),
            replication_factor: cli.cluster_replication_factor.or(self.replication_factor),
        }
    }

    /// The first key given other than `listen`, to name when `listen` is
    /// missing.
    fn first_key_given(&self) -> Option<&'static str> {
        [
            ("cluster.node_id", self.node_id.is_some()),
            ("cluster.advertise", self.advertise.is_some()),
            ("cluster.seeds", self.seeds.is_some()),
            ("cluster.ca_file", self.ca_file.is_some()),
            ("cluster.cert_file", self.cert_file.is_some()),
            ("cluster.key_file", self.key_file.is_some()),
            ("cluster.secret_file", self.secret_file.is_some()),
            ("cluster.ack", self.ack.is_some()),
            (
                "cluster.probe_interval_ms",
                self.probe_interval_ms.is_some(),
            ),
            (
                "cluster.suspect_timeout_ms",
                self.suspect_timeout_ms.is_some(),
            ),
            (
                "cluster.route_ack_timeout_ms",
                self.route_ack_timeout_ms.is_some(),
            ),
            (
                "cluster.peer_buffer_bytes",
                self.peer_buffer_bytes.is_some(),
            ),
            ("cluster.peer_hold_secs", self.peer_hold_secs.is_some()),
            ("cluster.bootstrap_expect", self.bootstrap_expect.is_some()),
            (
                "cluster.replication_factor",
                self.replication_factor.is_some(),
            ),
        ]
        .into_iter()
        .find_map(|(key, given)| given.then_some(key))
    }
}

/// The cluster settings from the flags, the file's `[cluster]` table and
/// `RINGMQ_CLUSTER_SECRET` (`secret_env`); `None` without `cluster.listen`.
pub(super) fn merge(
    cli: &ClusterArgs,
    file: Option<&ClusterTable>,
    secret_env: Option<OsString>,
) -> Result<Option<ClusterSettings>, ConfigError> {
    let table = file.cloned().unwrap_or_default().overridden_by(cli);
    let Some(listen) = table.listen else {
        return match table.first_key_given() {
            // The variable may be set machine-wide; it alone is no request
            // for cluster mode.
            None => Ok(None),
            Some(key) => Err(ConfigError::InvalidValue {
                key,
                reason: "needs `cluster.listen` (--cluster-listen), which turns cluster mode on"
                    .to_owned(),
            }),
        };
    };

    let node_id = match &table.node_id {
        Some(id) => {
            check_node_id(id).map_err(|reason| invalid("cluster.node_id", reason.to_owned()))?;
            id.clone()
        }
        None => {
            let host = host_name().ok_or_else(|| {
                invalid(
                    "cluster.node_id",
                    "not given, and the host name is unknown".to_owned(),
                )
            })?;
            check_node_id(&host).map_err(|reason| {
                invalid(
                    "cluster.node_id",
                    format!("not given, and the host name {host:?} is no node id: {reason}"),
                )
            })?;
            host
        }
    };

    let advertise = match &table.advertise {
        Some(advertise) => {
            let advertise = resolve_advertise(advertise)?;
            ensure(
                !advertise.ip().is_unspecified() && advertise.port() != 0,
                "cluster.advertise",
                "must be an address other nodes can dial: not 0.0.0.0 or [::], not port 0",
            )?;
            advertise
        }
        None => {
            if listen.ip().is_unspecified() {
                return Err(invalid(
                    "cluster.advertise",
                    format!(
                        "is required when `cluster.listen` ({listen}) is an unspecified \
                         address: other nodes need one they can dial"
                    ),
                ));
            }
            listen
        }
    };

    let seeds = table.seeds.clone().unwrap_or_default();
    for seed in &seeds {
        check_seed(seed)
            .map_err(|reason| invalid("cluster.seeds", format!("{seed:?} {reason}")))?;
    }

    let ack = match table.ack {
        None | Some(ClusterAck::Remote) => AckMode::Remote,
        Some(ClusterAck::Local) => AckMode::Local,
    };
    let probe_interval_ms = at_least_one(
        "cluster.probe_interval_ms",
        table.probe_interval_ms,
        DEFAULT_PROBE_INTERVAL_MS,
    )?;
    let suspect_timeout_ms = at_least_one(
        "cluster.suspect_timeout_ms",
        table.suspect_timeout_ms,
        DEFAULT_SUSPECT_TIMEOUT_MS,
    )?;
    let route_ack_timeout_ms = at_least_one(
        "cluster.route_ack_timeout_ms",
        table.route_ack_timeout_ms,
        DEFAULT_ROUTE_ACK_TIMEOUT_MS,
    )?;
    let peer_buffer_bytes = table.peer_buffer_bytes.unwrap_or(DEFAULT_PEER_BUFFER_BYTES);
    ensure(
        peer_buffer_bytes >= 1,
        "cluster.peer_buffer_bytes",
        "must be at least 1",
    )?;

    let bootstrap_expect = table.bootstrap_expect.unwrap_or(DEFAULT_BOOTSTRAP_EXPECT);
    ensure(
        bootstrap_expect >= 1,
        "cluster.bootstrap_expect",
        "must be at least 1 (1: a node may form the ownership raft alone)",
    )?;

    let replication_factor = table
        .replication_factor
        .unwrap_or(DEFAULT_REPLICATION_FACTOR);
    ensure(
        (1..=MAX_REPLICATION_FACTOR).contains(&replication_factor),
        "cluster.replication_factor",
        "must be 1 to 5 (1: sessions are kept by their owner alone)",
    )?;

    Ok(Some(ClusterSettings {
        node_id,
        listen,
        advertise,
        seeds,
        trust: trust(&table, secret_env)?,
        ack,
        probe_interval: Duration::from_millis(probe_interval_ms),
        suspect_timeout: Duration::from_millis(suspect_timeout_ms),
        route_ack_timeout: Duration::from_millis(route_ack_timeout_ms),
        peer_buffer_bytes,
        peer_hold: Duration::from_secs(table.peer_hold_secs.unwrap_or(DEFAULT_PEER_HOLD_SECS)),
        bootstrap_expect,
        replication_factor,
        // The broker's data dir, once `config` knows it.
        data_dir: None,
    }))
}

/// Certificate files or a secret: exactly one of them, and complete.
fn trust(table: &ClusterTable, secret_env: Option<OsString>) -> Result<ClusterTrust, ConfigError> {
    let file_keys = [
        ("cluster.ca_file", &table.ca_file),
        ("cluster.cert_file", &table.cert_file),
        ("cluster.key_file", &table.key_file),
    ];
    let any_file = file_keys.iter().any(|(_, path)| path.is_some());
    if any_file && let Some((key, _)) = file_keys.iter().find(|(_, path)| path.is_none()) {
        return Err(invalid(
            key,
            "missing: `cluster.ca_file`, `cluster.cert_file` and `cluster.key_file` go together"
                .to_owned(),
        ));
    }
    let files = match (&table.ca_file, &table.cert_file, &table.key_file) {
        (Some(ca_file), Some(cert_file), Some(key_file)) => Some(ClusterTrust::Files {
            ca_file: ca_file.clone(),
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        }),
        _ => None,
    };
    if files.is_some() && (table.secret_file.is_some() || secret_env.is_some()) {
        return Err(ConfigError::ClusterTrust(format!(
            "both certificate files (`cluster.ca_file`, `cluster.cert_file`, \
             `cluster.key_file`) and a shared secret (`cluster.secret_file` or \
             {SECRET_ENV}) are given; use one"
        )));
    }
    let secret = match (&table.secret_file, secret_env) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::ClusterTrust(format!(
                "both `cluster.secret_file` and the {SECRET_ENV} environment variable are set; \
                 give the secret one way"
            )));
        }
        (Some(path), None) => read_secret_file(path)?,
        (None, Some(value)) => value
            .into_string()
            .map_err(|_| not_utf8())
            .and_then(|value| checked_secret(value.into_bytes()))
            .map_err(|reason| ConfigError::InvalidEnv {
                var: SECRET_ENV,
                reason,
            })?,
        (None, None) => {
            return files.ok_or_else(|| {
                ConfigError::ClusterTrust(format!(
                    "cluster mode needs a way for nodes to trust each other: certificate files \
                     (`cluster.ca_file`, `cluster.cert_file` and `cluster.key_file`; \
                     `ringmq cluster-certs` makes them) or a shared secret \
                     (`cluster.secret_file` or the {SECRET_ENV} environment variable)"
                ))
            });
        }
    };
    Ok(ClusterTrust::Secret(secret))
}

fn read_secret_file(path: &Path) -> Result<String, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::ReadKeyFile {
        key: "cluster.secret_file",
        path: path.to_owned(),
        source,
    })?;
    checked_secret(bytes).map_err(|reason| {
        invalid(
            "cluster.secret_file",
            format!("{}: {reason}", path.display()),
        )
    })
}

/// Drops one trailing newline and checks what is left.
fn checked_secret(mut bytes: Vec<u8>) -> Result<String, String> {
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    let secret = String::from_utf8(bytes).map_err(|_| not_utf8())?;
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "the secret must be at least {MIN_SECRET_LEN} bytes (random ones: \
             `openssl rand -base64 32`), got {}",
            secret.len()
        ));
    }
    Ok(secret)
}

fn not_utf8() -> String {
    "the secret must be UTF-8 text".to_owned()
}

/// Whether `seed` is `host:port` with a port: an IPv4 address, a
/// bracketed IPv6 address or a DNS name. Names are not resolved here: the
/// runtime resolves them again on every join attempt, and a name that does
/// not resolve yet (a peer not started) must not stop this node.
fn check_seed(seed: &str) -> Result<(), &'static str> {
    let Some((host, port)) = seed.rsplit_once(':') else {
        return Err("needs a port: host:port");
    };
    if !matches!(port.parse::<u16>(), Ok(1..)) {
        return Err("must end in a port, 1 to 65535: host:port");
    }
    let host_ok = match host.strip_prefix('[') {
        Some(bracketed) => bracketed
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok()),
        None => host.parse::<Ipv4Addr>().is_ok() || is_dns_name(host),
    };
    if !host_ok {
        return Err("is not host:port with a host name or IP address (IPv6 in brackets)");
    }
    Ok(())
}

/// Letters, digits, `-` and `_` in dot-separated labels of 1 to 63,
/// none starting or ending with `-`; a trailing dot is allowed.
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The kernel's host name, as `hostname` prints it.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

fn at_least_one(key: &'static str, value: Option<u64>, default: u64) -> Result<u64, ConfigError> {
    let value = value.unwrap_or(default);
    ensure(value >= 1, key, "must be at least 1")?;
    Ok(value)
}

/// `ip:port`, or `host:port` resolved now to its first address.
fn resolve_advertise(advertise: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = advertise.parse() {
        return Ok(addr);
    }
    let mut addrs = std::net::ToSocketAddrs::to_socket_addrs(advertise).map_err(|error| {
        invalid(
            "cluster.advertise",
            format!("{advertise:?} is not host:port, or does not resolve: {error}"),
        )
    })?;
    addrs.next().ok_or_else(|| {
        invalid(
            "cluster.advertise",
            format!("{advertise:?} resolves to no address"),
        )
    })
}

fn invalid(key: &'static str, reason: String) -> ConfigError {
    ConfigError::InvalidValue { key, reason }
}

#[cfg(test)]
mod tests {
    use super::super::tests::TempFile;
    use super::super::{Cli, Config, FileConfig};
    use super::*;
    use clap::Parser;

    const SECRET: &str = "0123456789abcdef0123";

    fn cluster(
        args: &[&str],
        toml: &str,
        env: Option<&str>,
    ) -> Result<Option<ClusterSettings>, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("ringmq").chain(args.iter().copied()))?;
        let file = FileConfig::parse(toml, Path::new("ringmq.toml"))?;
        Config::merge(cli, file, env.map(OsString::from)).map(|config| config.cluster)
    }

    fn error(args: &[&str], toml: &str, env: Option<&str>) -> String {
        match cluster(args, toml, env) {
            Ok(settings) => panic!("{args:?} {toml:?} accepted: {settings:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn no_listen_is_a_single_node() {
        assert_eq!(cluster(&[], "", None).expect("valid"), None);
        // A machine-wide secret variable alone asks for nothing.
        assert_eq!(cluster(&[], "", Some(SECRET)).expect("valid"), None);
        assert_eq!(cluster(&[], "[cluster]\n", None).expect("valid"), None);
    }

    #[test]
    fn a_full_table() {
        let toml = r#"
            [cluster]
            node_id = "n1"
            listen = "0.0.0.0:7883"
            advertise = "10.0.0.1:7883"
            seeds = ["n2.example.net:7883", "10.0.0.3:7883", "[fd00::3]:7883"]
            ca_file = "ca.pem"
            cert_file = "n1.pem"
            key_file = "n1.key"
            ack = "local"
            probe_interval_ms = 100
            suspect_timeout_ms = 1000
            route_ack_timeout_ms = 50
            peer_buffer_bytes = 1024
            peer_hold_secs = 0
            bootstrap_expect = 5
            replication_factor = 3
        "#;
        let settings = cluster(&[], toml, None).expect("valid").expect("cluster");
        assert_eq!(
            settings,
            ClusterSettings {
                node_id: "n1".to_owned(),
                listen: "0.0.0.0:7883".parse().expect("literal"),
                advertise: "10.0.0.1:7883".parse().expect("literal"),
                seeds: vec![
                    "n2.example.net:7883".to_owned(),
                    "10.0.0.3:7883".to_owned(),
                    "[fd00::3]:7883".to_owned(),
                ],
                trust: ClusterTrust::Files {
                    ca_file: "ca.pem".into(),
                    cert_file: "n1.pem".into(),
                    key_file: "n1.key".into(),
                },
                ack: AckMode::Local,
                probe_interval: Duration::from_millis(100),
                suspect_timeout: Duration::from_millis(1000),
                route_ack_timeout: Duration::from_millis(50),
                peer_buffer_bytes: 1024,
                peer_hold: Duration::ZERO,
                bootstrap_expect: 5,
                replication_factor: 3,
                data_dir: None,
            }
        );
    }

    #[test]
    fn defaults_and_flags() {
        let settings = cluster(&["--cluster-listen", "127.0.0.1:7883"], "", Some(SECRET))
            .expect("valid")
            .expect("cluster");
        assert_eq!(settings.advertise, settings.listen, "advertise defaults");
        assert!(settings.seeds.is_empty());
        assert_eq!(settings.trust, ClusterTrust::Secret(SECRET.to_owned()));
        assert_eq!(settings.ack, AckMode::Remote);
        assert_eq!(settings.probe_interval, Duration::from_millis(500));
        assert_eq!(settings.suspect_timeout, Duration::from_millis(3000));
        assert_eq!(settings.route_ack_timeout, Duration::from_millis(2000));
        assert_eq!(settings.peer_buffer_bytes, 64 * 1024 * 1024);
        assert_eq!(settings.peer_hold, Duration::from_secs(300));
        assert_eq!(settings.bootstrap_expect, 3);
        assert_eq!(settings.replication_factor, 2);
        assert_eq!(settings.data_dir, None);
        if let Some(host) = host_name().filter(|host| check_node_id(host).is_ok()) {
            assert_eq!(settings.node_id, host);
        }

        let toml = "[cluster]\nlisten = \"127.0.0.1:1\"\nnode_id = \"file\"\nseeds = [\"a:1\"]\nack = \"local\"\n";
        let settings = cluster(
            &[
                "--node-id",
                "flag",
                "--seeds",
                "b:2,c:3",
                "--cluster-ack",
                "remote",
                "--cluster-probe-interval-ms",
                "7",
            ],
            toml,
            Some(SECRET),
        )
        .expect("valid")
        .expect("cluster");
        assert_eq!(settings.node_id, "flag");
        assert_eq!(settings.seeds, ["b:2", "c:3"]);
        assert_eq!(settings.ack, AckMode::Remote);
        assert_eq!(settings.probe_interval, Duration::from_millis(7));
        assert_eq!(
            settings.listen,
            "127.0.0.1:1"
                .parse::<std::net::SocketAddr>()
                .expect("literal")
        );
    }

    #[test]
    fn the_ownership_raft_lives_in_the_data_dir() {
        let settings = cluster(
            &[
                "--cluster-listen",
                "127.0.0.1:7883",
                "--data-dir",
                "/var/lib/ringmq",
                "--cluster-bootstrap-expect",
                "1",
            ],
            "",
            Some(SECRET),
        )
        .expect("valid")
        .expect("cluster");
        assert_eq!(settings.data_dir, Some(PathBuf::from("/var/lib/ringmq")));
        assert_eq!(settings.bootstrap_expect, 1);
    }

    #[test]
    fn cluster_keys_need_listen() {
        for (args, toml, key) in [
            (
                &["--node-id", "n1"][..],
                "",
                "`cluster.node_id` (--node-id)",
            ),
            (&["--seeds", "a:1"], "", "`cluster.seeds` (--seeds)"),
            (
                &[],
                "[cluster]\npeer_hold_secs = 1\n",
                "`cluster.peer_hold_secs` (--cluster-peer-hold-secs)",
            ),
            (
                &["--cluster-bootstrap-expect", "3"],
                "",
                "`cluster.bootstrap_expect` (--cluster-bootstrap-expect)",
            ),
            (
                &["--cluster-secret-file", "s"],
                "",
                "`cluster.secret_file` (--cluster-secret-file)",
            ),
        ] {
            let message = error(args, toml, None);
            assert!(message.contains(key), "{message}");
            assert!(message.contains("cluster.listen"), "{message}");
        }
    }

    #[test]
    fn advertise_must_be_dialable() {
        let message = error(&["--cluster-listen", "0.0.0.0:7883"], "", Some(SECRET));
        assert!(
            message.starts_with(
                "invalid value for `cluster.advertise` (--cluster-advertise): is required"
            ),
            "{message}"
        );
        for advertise in ["0.0.0.0:7883", "[::]:7883", "10.0.0.1:0"] {
            let message = error(
                &[
                    "--cluster-listen",
                    "[::]:7883",
                    "--cluster-advertise",
                    advertise,
                ],
                "",
                Some(SECRET),
            );
            assert!(message.contains("`cluster.advertise`"), "{message}");
        }
        let settings = cluster(
            &[
                "--cluster-listen",
                "[::]:7883",
                "--cluster-advertise",
                "[fd00::1]:7883",
            ],
            "",
            Some(SECRET),
        )
        .expect("valid")
        .expect("cluster");
        assert_eq!(
            settings.advertise,
            "[fd00::1]:7883"
                .parse::<std::net::SocketAddr>()
                .expect("literal")
        );
    }

    #[test]
    fn bad_values_are_named() {
        let listen = "[cluster]\nlisten = \"127.0.0.1:7883\"\n";
        for (toml, expected) in [
            ("node_id = \"a b\"", "`cluster.node_id` (--node-id)"),
            ("node_id = \"\"", "`cluster.node_id` (--node-id)"),
            (
                "seeds = [\"host\"]",
                "`cluster.seeds` (--seeds): \"host\" needs a port",
            ),
            ("seeds = [\"host:0\"]", "`cluster.seeds` (--seeds)"),
            ("seeds = [\"host:http\"]", "`cluster.seeds` (--seeds)"),
            ("seeds = [\"::1:7883\"]", "`cluster.seeds` (--seeds)"),
            ("seeds = [\"bad_host-:1\"]", "`cluster.seeds` (--seeds)"),
            ("seeds = [\":1\"]", "`cluster.seeds` (--seeds)"),
            (
                "probe_interval_ms = 0",
                "`cluster.probe_interval_ms` (--cluster-probe-interval-ms)",
            ),
            ("suspect_timeout_ms = 0", "`cluster.suspect_timeout_ms`"),
            ("route_ack_timeout_ms = 0", "`cluster.route_ack_timeout_ms`"),
            ("peer_buffer_bytes = 0", "`cluster.peer_buffer_bytes`"),
            (
                "bootstrap_expect = 0",
                "`cluster.bootstrap_expect` (--cluster-bootstrap-expect): must be at least 1",
            ),
            (
                "replication_factor = 0",
                "`cluster.replication_factor` (--cluster-replication-factor): must be 1 to 5",
            ),
            ("replication_factor = 6", "`cluster.replication_factor`"),
            ("ack = \"never\"", "ack"),
            ("listen_addr = \"127.0.0.1:1\"", "listen_addr"),
        ] {
            let message = error(&[], &format!("{listen}{toml}\n"), Some(SECRET));
            assert!(message.contains(expected), "{toml}: {message}");
        }
        let message = error(&["--cluster-ack", "sometimes"], "", None);
        assert!(message.contains("--cluster-ack"), "{message}");
    }

    #[test]
    fn seeds() {
        for good in [
            "a:1",
            "node-2.example.net:7883",
            "node-2.example.net.:7883",
            "ringmq-0.ringmq._udp.svc:7883",
            "10.0.0.1:65535",
            "[::1]:7883",
        ] {
            assert_eq!(check_seed(good), Ok(()), "{good}");
        }
        for bad in [
            "a", "a:", "a:65536", "[::1]", "[nope]:1", "a..b:1", "-a:1", "a b:1",
        ] {
            assert!(check_seed(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn certificate_files_go_together() {
        let listen = ["--cluster-listen", "127.0.0.1:7883"];
        let message = error(
            &[
                &listen[..],
                &[
                    "--cluster-ca-file",
                    "ca.pem",
                    "--cluster-cert-file",
                    "n.pem",
                ],
            ]
            .concat(),
            "",
            None,
        );
        assert!(
            message
                .starts_with("invalid value for `cluster.key_file` (--cluster-key-file): missing"),
            "{message}"
        );
        let message = error(&listen, "[cluster]\nkey_file = \"n.key\"\n", None);
        assert!(message.contains("`cluster.ca_file`"), "{message}");
    }

    #[test]
    fn trust_is_required_and_unambiguous() {
        let listen = ["--cluster-listen", "127.0.0.1:7883"];
        let message = error(&listen, "", None);
        for option in [
            "cluster.ca_file",
            "cluster.cert_file",
            "cluster.key_file",
            "cluster.secret_file",
            "RINGMQ_CLUSTER_SECRET",
        ] {
            assert!(message.contains(option), "{message}");
        }
        let files = "[cluster]\nca_file = \"c\"\ncert_file = \"n\"\nkey_file = \"k\"\n";
        let message = error(&listen, files, Some(SECRET));
        assert!(message.starts_with("both certificate files"), "{message}");
        let secret = TempFile::new("both", SECRET.as_bytes());
        let message = error(
            &[&listen[..], &["--cluster-secret-file", secret.arg()]].concat(),
            "",
            Some(SECRET),
        );
        assert!(
            message.contains("cluster.secret_file") && message.contains("RINGMQ_CLUSTER_SECRET"),
            "{message}"
        );
    }

    #[test]
    fn secrets() {
        let listen = ["--cluster-listen", "127.0.0.1:7883"];
        let from_file = |contents: &[u8]| {
            let file = TempFile::new("secret", contents);
            cluster(
                &[&listen[..], &["--cluster-secret-file", file.arg()]].concat(),
                "",
                None,
            )
            .map(|settings| settings.map(|settings| settings.trust))
        };
        let expected = Some(ClusterTrust::Secret(SECRET.to_owned()));
        assert_eq!(
            from_file(format!("{SECRET}\n").as_bytes()).expect("ok"),
            expected
        );
        assert_eq!(
            from_file(format!("{SECRET}\r\n").as_bytes()).expect("ok"),
            expected
        );
        // Only one newline goes; the rest is the secret's.
        assert_eq!(
            from_file(format!(" {SECRET}\n\n").as_bytes()).expect("ok"),
            Some(ClusterTrust::Secret(format!(" {SECRET}\n")))
        );
        let message = from_file(b"fifteen bytes!!\n")
            .expect_err("short")
            .to_string();
        assert!(
            message.starts_with("invalid value for `cluster.secret_file` (--cluster-secret-file)"),
            "{message}"
        );
        assert!(message.contains("at least 16 bytes"), "{message}");
        let message = from_file(b"\xff0123456789abcdef")
            .expect_err("binary")
            .to_string();
        assert!(message.contains("UTF-8"), "{message}");

        let message = error(&listen, "", Some("short"));
        assert!(
            message.starts_with("invalid environment variable RINGMQ_CLUSTER_SECRET"),
            "{message}"
        );
        let message = error(
            &[
                &listen[..],
                &["--cluster-secret-file", "/nonexistent/secret"],
            ]
            .concat(),
            "",
            None,
        );
        assert!(
            message.starts_with(
                "cannot read `cluster.secret_file` (--cluster-secret-file) /nonexistent/secret: "
            ),
            "{message}"
        );
    }
}
