//! Command line and TOML configuration, validated once into [`Config`].
//!
//! Every setting can come from a flag (`--max-inflight`) or the same key in
//! snake case in the file given with `--config` (`max_inflight`); the flag
//! wins, then the file, then the default. Both sources are read into structs
//! of `Option`s so the merge knows what was actually given, and the range
//! checks run once on the merged value, whichever source it came from.
//! `deploy/ringmq.toml` documents every key. Cluster settings live in a
//! `[cluster]` table whose keys have `--cluster-` flags (`cluster.ack` is
//! `--cluster-ack`), except `node_id` and `seeds` (`--node-id`,
//! `--seeds`); see `src/config/cluster.rs`.
//!
//! Authentication keys (`password_file`, `allow_anonymous`, `acl_file`, ...) are
//! top-level, as in Mosquitto's file; see `src/config/auth.rs`. So are the
//! limits against abuse (`max_publish_rate`, `flapping_threshold`, ...);
//! see `src/config/abuse.rs`.
//!
//! Besides serving, the binary has two subcommands: `cluster-certs`, which
//! writes a cluster CA and node certificates, and `passwd`, which edits a
//! password file; [`Command`] is one of the three.

mod abuse;
mod auth;
mod cluster;
mod listeners;
mod tls;

use listeners::ListenerTable;
pub use listeners::{ListenerConfig, Transport};
pub use tls::TlsListener;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use tracing::level_filters::LevelFilter;

use crate::abuse::AbuseSettings;
use crate::auth::AuthSettings;
use crate::auth::passwd::PasswdAction;
use crate::cluster::settings::ClusterSettings;
use crate::protocol::topic::{MAX_TOPIC_LEN, MAX_TOPIC_LEVELS, TopicLimits};
use crate::router::shared::Strategy;
use crate::session::{QueueFullPolicy, SessionConfig};
use crate::store::{Durability, StoreSettings};

const DEFAULT_PORT: u16 = 1883;
const DEFAULT_MAX_INFLIGHT: u16 = 100;
const DEFAULT_MAX_QUEUED_MESSAGES: usize = 1000;
const DEFAULT_MAX_KEEPALIVE: u16 = u16::MAX;
const DEFAULT_MAX_PACKET_SIZE: u32 = 1024 * 1024;
const DEFAULT_TOPIC_ALIAS_MAXIMUM: u16 = 10;
const DEFAULT_SYS_INTERVAL: u64 = 10;
/// A power cut loses at most this much of what `batch` acknowledged.
const DEFAULT_DURABILITY_INTERVAL_MS: u64 = 100;
/// The smallest limit that still admits a useful CONNECT.
const MIN_PACKET_SIZE: u32 = 16;
/// The largest size the remaining-length varint can express (spec 2.1.4).
const MAX_PACKET_SIZE: u32 = 268_435_455;
/// Enough for a default-configured broker to serve a large fleet, low
/// enough that a connection flood is refused with a CONNACK long before it
/// exhausts memory; hosts tuned for more (tuning/) raise it.
const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Long enough for a CONNECT over a slow mobile link, short enough that
/// idle sockets opened to hold descriptors are shed quickly.
const DEFAULT_CONNECT_TIMEOUT: u32 = 10;
/// Off: parking saves memory per idle connection but costs CPU for
/// clients that send less often than the delay, and latency under load
/// (PERF.md, "Idle connections without a task"); an operator whose hosts
/// are bound by memory turns it on (200 is two shard ticks).
const DEFAULT_PARK_AFTER_MS: u64 = 0;
/// EMQX's default; Mosquitto hard-codes 200. Real topics have a handful of
/// levels, and each level is a trie node.
const DEFAULT_MAX_TOPIC_LEVELS: usize = 128;
/// Generous for hierarchical filter sets; one client cannot grow every
/// shard's route table without bound (each new filter is announced to all
/// shards).
const DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT: usize = 1000;
/// Room for UUIDs, device serials and host names (253), while a session's
/// key, logs and assigned-id comparisons stay small.
const DEFAULT_MAX_CLIENT_ID_LENGTH: u16 = 256;
/// A server must accept client ids of 1 to 23 bytes (spec 3.1.3.1).
const MIN_CLIENT_ID_LENGTH: u16 = 23;

/// The broker's settings, complete and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where clients are accepted: never empty, TCP ones first, no
    /// address twice. Port 0 asks the OS for a free port.
    pub listeners: Vec<ListenerConfig>,
    /// Shards to start, one thread each. At least 1; more than the CPU
    /// count is allowed and pinned modulo the CPUs.
    pub cores: usize,
    pub io_driver: IoDriver,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    /// At least 1.
    pub max_inflight: u16,
    /// At least 1.
    pub max_queued_messages: usize,
    pub queue_full_policy: QueueFullPolicy,
    pub max_keepalive: u16,
    /// Between 16 and 268,435,455 bytes.
    pub max_packet_size: u32,
    /// Topic aliases a v5 client may use on PUBLISH; 0 disables them.
    pub topic_alias_maximum: u16,
    /// Whether the broker assigns topic aliases to v5 subscribers.
    pub server_topic_aliases: bool,
    /// How a shared subscription group picks the member for a message.
    pub shared_subscription_strategy: Strategy,
    /// Client connections open at once, broker-wide; 0 is no limit.
    pub max_connections: usize,
    /// Seconds a new connection has to deliver its CONNECT. At least 1.
    pub connect_timeout: u32,
    /// Milliseconds a plain-TCP connection stays idle before it parks
    /// (gives up its task); 0 never parks.
    pub park_after_ms: u64,
    /// Bytes in a topic name or filter. At least 1.
    pub max_topic_length: u16,
    /// Levels in a topic name or filter, 1 to [`MAX_TOPIC_LEVELS`].
    pub max_topic_levels: usize,
    /// Subscriptions one session may hold; 0 is no limit.
    pub max_subscriptions_per_client: usize,
    /// Bytes in a client id. At least 23.
    pub max_client_id_length: u16,
    /// Where to serve `/metrics`, `/health` and `/ready`; off when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds between `$SYS` updates; 0 turns them off.
    pub sys_interval: u64,
    /// The cluster this node joins; `None` (no `cluster.listen`) runs a
    /// single node.
    pub cluster: Option<ClusterSettings>,
    /// `None` without `data_dir`: everything stays in memory.
    pub store: Option<StoreSettings>,
    /// Who may connect.
    pub auth: AuthSettings,
    /// What one client, address or reconnect loop may cost.
    pub abuse: AbuseSettings,
}

/// What the binary was asked to do.
#[derive(Debug)]
pub enum Command {
    /// Run the broker (no subcommand).
    Serve(Box<Config>),
    /// `ringmq cluster-certs`: write a cluster CA and a certificate per node
    /// into `out`, then exit.
    ClusterCerts { out: PathBuf, nodes: Vec<String> },
    /// `ringmq passwd`: add, update or delete a user of a password file,
    /// then exit.
    Passwd {
        file: PathBuf,
        user: String,
        action: PasswdAction,
    },
}

/// Which I/O backend the shards run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoDriver {
    /// io_uring where the kernel supports it, epoll otherwise.
    #[default]
    Auto,
    /// io_uring, with no fallback.
    Uring,
    /// epoll, for kernels or sandboxes without io_uring.
    Epoll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

/// How log lines are written: `text` for people, `json` (one object per
/// line) for log collectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Why the configuration was refused. Each message names the flag or key
/// at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A bad flag, or `--help`/`--version`: `main` calls `exit()` on it,
    /// which prints it and exits with the right status.
    #[error(transparent)]
    Cli(#[from] clap::Error),
    #[error("cannot read config file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// toml's message names the key and shows its line.
    #[error("invalid config file {}: {source}", path.display())]
    ParseFile {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid value for `{key}` (--{flag}): {reason}", flag = flag_for_key(key))]
    InvalidValue { key: &'static str, reason: String },
    #[error("invalid environment variable {var}: {reason}")]
    InvalidEnv { var: &'static str, reason: String },
    #[error("cannot read `{key}` (--{flag}) {}: {source}", path.display(), flag = flag_for_key(key))]
    ReadKeyFile {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file a key names was read and is not valid; `reason` names the
    /// line.
    #[error("invalid `{key}` (--{flag}) {}: {reason}", path.display(), flag = flag_for_key(key))]
    InvalidKeyFile {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// How cluster nodes authenticate each other is missing or ambiguous.
    #[error("{0}")]
    ClusterTrust(String),
    /// [`Config::from_args`] was given a subcommand, which starts no broker.
    #[error("`{0}` is a subcommand, not a broker configuration")]
    NotServe(&'static str),
    #[error(
        "listen address {0} is given more than once (in `listen`, `ws_listen`, `tls_listen` or `[[listener]]`)"
    )]
    RepeatedListener(SocketAddr),
    /// A `[[listener]]` table's settings do not go together, or a file
    /// it names is missing or invalid; `reason` names the key.
    #[error("invalid [[listener]] {address}: {reason}")]
    InvalidListener { address: SocketAddr, reason: String },
}

/// The command line. Flags are optional so a file value is not overridden
/// by a default; defaults are applied in [`Config::merge`].
#[derive(Debug, Default, Parser)]
#[command(
    name = "ringmq",
    version,
    about = "A thread-per-core MQTT broker",
    // So that `--max-inflight -3` is reported as a bad value of that flag,
    // not as an unknown argument `-3`.
    allow_negative_numbers = true,
    // Broker flags before a subcommand would be silently ignored.
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<CliCommand>,
    /// TOML file with the same settings in snake case; flags override it.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address to accept MQTT connections on; repeat for several
    /// [default: 0.0.0.0:1883].
    #[arg(long, value_name = "ADDR")]
    listen: Option<Vec<SocketAddr>>,
    /// Address to accept MQTT over WebSocket on (HTTP upgrade on /mqtt);
    /// repeat for several [default: none].
    #[arg(long, value_name = "ADDR")]
    ws_listen: Option<Vec<SocketAddr>>,
    /// Expect a PROXY protocol (v1 or v2) header at the start of every
    /// connection on every --listen address (not --ws-listen), and log the
    /// client address it names; connections without one are closed.
    /// `--proxy-protocol` alone means true; `[[listener]]` tables in the
    /// file set it per listener [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    proxy_protocol: Option<bool>,
    #[command(flatten)]
    tls: tls::TlsArgs,
    /// Number of shards (threads) [default: number of CPUs].
    #[arg(long, value_name = "N")]
    cores: Option<usize>,
    /// I/O backend [default: auto].
    #[arg(long, value_name = "DRIVER")]
    io_driver: Option<IoDriver>,
    /// Most verbose level logged [default: info].
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<LogLevel>,
    /// Log line format, text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// Outgoing QoS 1/2 messages in flight per client, 1 to 65535
    /// [default: 100].
    #[arg(long, value_name = "N")]
    max_inflight: Option<u16>,
    /// Messages queued per session, online or offline [default: 1000].
    #[arg(long, value_name = "N")]
    max_queued_messages: Option<usize>,
    /// What a QoS 1/2 message finding the queue full does [default: drop].
    #[arg(long, value_name = "POLICY")]
    queue_full_policy: Option<QueueFull>,
    /// Longest keep-alive granted to a client, in seconds [default: 65535].
    #[arg(long, value_name = "SECS")]
    max_keepalive: Option<u16>,
    /// Largest packet accepted, 16 to 268435455 bytes [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    max_packet_size: Option<u32>,
    /// Topic aliases an MQTT 5 client may use on PUBLISH, 0 to 65535; 0
    /// disables them [default: 10].
    #[arg(long, value_name = "N")]
    topic_alias_maximum: Option<u16>,
    /// Assign topic aliases to messages sent to MQTT 5 clients that accept
    /// them, true or false [default: true].
    #[arg(long, value_name = "BOOL")]
    server_topic_aliases: Option<bool>,
    /// How a shared subscription group picks the member for each message
    /// [default: round_robin].
    #[arg(long, value_name = "STRATEGY")]
    shared_subscription_strategy: Option<SharedStrategy>,
    /// Client connections open at once, broker-wide; 0 is no limit
    /// [default: 100000].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Seconds a new connection has to send its CONNECT [default: 10].
    #[arg(long, value_name = "SECS")]
    connect_timeout: Option<u32>,
    /// Milliseconds a plain-TCP connection may be idle before it gives up
    /// its task (less memory, more CPU when it wakes); 0 never [default: 0].
    #[arg(long, value_name = "MS")]
    park_after_ms: Option<u64>,
    /// Longest topic name or filter, 1 to 65535 bytes [default: 65535].
    #[arg(long, value_name = "BYTES")]
    max_topic_length: Option<u16>,
    /// Most levels in a topic name or filter, 1 to 1024 [default: 128].
    #[arg(long, value_name = "N")]
    max_topic_levels: Option<usize>,
    /// Subscriptions one client's session may hold; 0 is no limit
    /// [default: 1000].
    #[arg(long, value_name = "N")]
    max_subscriptions_per_client: Option<usize>,
    /// Longest client id accepted, 23 to 65535 bytes [default: 256].
    #[arg(long, value_name = "BYTES")]
    max_client_id_length: Option<u16>,
    /// Address to serve Prometheus metrics (/metrics), /health and /ready
    /// on [default: none].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Seconds between updates of the $SYS topics; 0 turns them off
    /// [default: 10].
    #[arg(long, value_name = "SECS")]
    sys_interval: Option<u64>,
    /// Directory for sessions, queued messages and retained messages, kept
    /// across restarts; without it everything stays in memory
    /// [default: none].
    #[arg(long, value_name = "PATH")]
    data_dir: Option<PathBuf>,
    /// What a PUBACK or PUBREC for a stored message waits for: always (on
    /// disk, synced), batch (written; synced every durability_interval_ms)
    /// or none (not waited for) [default: batch].
    #[arg(long, value_name = "LEVEL")]
    durability: Option<DurabilityLevel>,
    /// Milliseconds between syncs with durability batch, 1 to 60000
    /// [default: 100].
    #[arg(long, value_name = "MS")]
    durability_interval_ms: Option<u64>,
    /// Start even if the data dir has damaged records: each is logged and
    /// skipped. `--repair` alone means true [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    repair: Option<bool>,
    #[command(flatten)]
    auth: auth::AuthArgs,
    #[command(flatten)]
    abuse: abuse::AbuseArgs,
    #[command(flatten)]
    cluster: cluster::ClusterArgs,
}

#[derive(Debug, Subcommand)]
enum CliCommand {
    /// Write a new cluster CA (ca.pem, ca.key) and a certificate and key
    /// per node (<node>.pem, <node>.key) for cluster.ca_file, cert_file and
    /// key_file; existing files are never overwritten.
    ClusterCerts {
        /// Directory to write into; created if missing.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Node ids, comma separated: one certificate each, the id as its
        /// common name.
        #[arg(long, value_name = "ID,...", value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
    /// Add a user to a password file (created if missing) or set their
    /// password, as an argon2id hash; the password is asked twice on the
    /// terminal, or read from stdin (one line) with --stdin. With -D,
    /// delete the user. Other lines are kept.
    Passwd {
        /// Delete USER instead.
        #[arg(short = 'D', long = "delete", conflicts_with = "stdin")]
        delete: bool,
        /// Read the password from the first line of stdin, not the
        /// terminal.
        #[arg(long)]
        stdin: bool,
        /// The password file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The user name.
        #[arg(value_name = "USER")]
        user: String,
    },
}

/// The TOML file: the flags' settings except `config` itself.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Vec<SocketAddr>>,
    ws_listen: Option<Vec<SocketAddr>>,
    proxy_protocol: Option<bool>,
    /// Listeners with settings of their own, beside `listen` and
    /// `ws_listen` (which `--listen` and `--ws-listen` replace).
    listener: Option<Vec<ListenerTable>>,
    tls_listen: Option<Vec<SocketAddr>>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tls_require_client_cert: Option<bool>,
    tls_use_identity_as_username: Option<bool>,
    cores: Option<usize>,
    io_driver: Option<IoDriver>,
    log_level: Option<LogLevel>,
    log_format: Option<LogFormat>,
    max_inflight: Option<u16>,
    max_queued_messages: Option<usize>,
    queue_full_policy: Option<QueueFull>,
    max_keepalive: Option<u16>,
    max_packet_size: Option<u32>,
    topic_alias_maximum: Option<u16>,
    server_topic_aliases: Option<bool>,
    shared_subscription_strategy: Option<SharedStrategy>,
    max_connections: Option<usize>,
    connect_timeout: Option<u32>,
    park_after_ms: Option<u64>,
    max_topic_length: Option<u16>,
    max_topic_levels: Option<usize>,
    max_subscriptions_per_client: Option<usize>,
    max_client_id_length: Option<u16>,
    metrics_listen: Option<SocketAddr>,
    sys_interval: Option<u64>,
    data_dir: Option<PathBuf>,
    durability: Option<DurabilityLevel>,
    durability_interval_ms: Option<u64>,
    repair: Option<bool>,
    password_file: Option<PathBuf>,
    allow_anonymous: Option<bool>,
    auth_threads: Option<usize>,
    auth_queue: Option<usize>,
    acl_file: Option<PathBuf>,
    max_publish_rate: Option<u64>,
    max_publish_byte_rate: Option<u64>,
    max_connections_per_address: Option<u32>,
    max_connection_rate_per_address: Option<u64>,
    flapping_threshold: Option<u32>,
    flapping_window: Option<u32>,
    flapping_ban: Option<u32>,
    cluster: Option<cluster::ClusterTable>,
}

/// How [`Durability`] is spelled in flags and files.
#[derive(Debug, Clone, Copy, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DurabilityLevel {
    /// Acknowledge once on disk (synced).
    Always,
    /// Acknowledge once written; sync every durability_interval_ms.
    Batch,
    /// Acknowledge without waiting for the store.
    None,
}

/// How [`QueueFullPolicy`] is spelled in flags and files; the session type
/// stays free of clap and serde.
#[derive(Debug, Clone, Copy, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum QueueFull {
    /// Drop the message.
    Drop,
    /// Disconnect the client.
    Disconnect,
}

/// How [`Strategy`] is spelled in flags and files, in snake case like the
/// keys; the router type stays free of clap and serde.
#[derive(Debug, Clone, Copy, ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
enum SharedStrategy {
    /// Each member in turn.
    RoundRobin,
    /// A member at random.
    Random,
    /// The same member until it leaves or goes offline.
    Sticky,
}

impl Command {
    /// Parses the command line (program name first). Without a
    /// subcommand, reads the file it names if any, takes the cluster
    /// secret from `RINGMQ_CLUSTER_SECRET` if set, and validates the
    /// result.
    pub fn from_args<I, T>(args: I) -> Result<Command, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut cli = Cli::try_parse_from(args)?;
        match cli.command.take() {
            Some(CliCommand::ClusterCerts { out, nodes }) => {
                Ok(Command::ClusterCerts { out, nodes })
            }
            Some(CliCommand::Passwd {
                delete,
                stdin,
                file,
                user,
            }) => Ok(Command::Passwd {
                file,
                user,
                action: if delete {
                    PasswdAction::Delete
                } else {
                    PasswdAction::Set { stdin }
                },
            }),
            None => {
                let file = match &cli.config {
                    Some(path) => FileConfig::load(path)?,
                    None => FileConfig::default(),
                };
                let env = std::env::var_os(cluster::SECRET_ENV);
                Config::merge(cli, file, env).map(|config| Command::Serve(Box::new(config)))
            }
        }
    }
}

impl Config {
    /// [`Command::from_args`] for callers that only serve: a subcommand is
    /// an error.
    pub fn from_args<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        match Command::from_args(args)? {
            Command::Serve(config) => Ok(*config),
            Command::ClusterCerts { .. } => Err(ConfigError::NotServe("cluster-certs")),
            Command::Passwd { .. } => Err(ConfigError::NotServe("passwd")),
        }
    }

    pub fn session_config(&self) -> SessionConfig {
        SessionConfig {
            max_inflight: self.max_inflight,
            max_queued_messages: self.max_queued_messages,
            queue_full: self.queue_full_policy,
            max_keepalive: self.max_keepalive,
            max_packet_size: self.max_packet_size,
            topic_alias_maximum: self.topic_alias_maximum,
            server_topic_aliases: self.server_topic_aliases,
            topics: TopicLimits {
                max_length: usize::from(self.max_topic_length),
                max_levels: self.max_topic_levels,
            },
            max_subscriptions: match self.max_subscriptions_per_client {
                0 => usize::MAX,
                n => n,
            },
            durable: self.store.is_some(),
        }
    }

    /// How long a new connection has to send its CONNECT.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.connect_timeout))
    }

    /// How long a connection may be idle before it parks; `None`: never.
    pub fn park_after(&self) -> Option<Duration> {
        (self.park_after_ms > 0).then(|| Duration::from_millis(self.park_after_ms))
    }

    /// `secret_env` is `RINGMQ_CLUSTER_SECRET`, passed in so tests need
    /// not set the process environment.
    fn merge(
        cli: Cli,
        file: FileConfig,
        secret_env: Option<OsString>,
    ) -> Result<Config, ConfigError> {
        let listeners = listeners::merge_listeners(&cli, &file)?;
        let mut cluster = cluster::merge(&cli.cluster, file.cluster.as_ref(), secret_env)?;
        let auth = auth::merge(&cli.auth, &file)?;
        let abuse = abuse::merge(&cli.abuse, &file)?;

        let cores = cli.cores.or(file.cores).unwrap_or_else(|| {
            // The CPU count can be unknowable (restricted /proc); one shard
            // still serves.
            std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
        });
        ensure(cores >= 1, "cores", "must be at least 1")?;

        let max_inflight = cli
            .max_inflight
            .or(file.max_inflight)
            .unwrap_or(DEFAULT_MAX_INFLIGHT);
        ensure(
            max_inflight >= 1,
            "max_inflight",
            "must be between 1 and 65535",
        )?;

        let max_queued_messages = cli
            .max_queued_messages
            .or(file.max_queued_messages)
            .unwrap_or(DEFAULT_MAX_QUEUED_MESSAGES);
        ensure(
            max_queued_messages >= 1,
            "max_queued_messages",
            "must be at least 1",
        )?;

        let max_packet_size = cli
            .max_packet_size
            .or(file.max_packet_size)
            .unwrap_or(DEFAULT_MAX_PACKET_SIZE);
        ensure(
            (MIN_PACKET_SIZE..=MAX_PACKET_SIZE).contains(&max_packet_size),
            "max_packet_size",
            &format!("must be between {MIN_PACKET_SIZE} and {MAX_PACKET_SIZE}"),
        )?;

        let connect_timeout = cli
            .connect_timeout
            .or(file.connect_timeout)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        ensure(
            connect_timeout >= 1,
            "connect_timeout",
            "must be at least 1",
        )?;

        let max_topic_length = cli
            .max_topic_length
            .or(file.max_topic_length)
            .unwrap_or(u16::MAX);
        ensure(
            max_topic_length >= 1,
            "max_topic_length",
            &format!("must be between 1 and {MAX_TOPIC_LEN}"),
        )?;

        let max_topic_levels = cli
            .max_topic_levels
            .or(file.max_topic_levels)
            .unwrap_or(DEFAULT_MAX_TOPIC_LEVELS);
        ensure(
            (1..=MAX_TOPIC_LEVELS).contains(&max_topic_levels),
            "max_topic_levels",
            &format!("must be between 1 and {MAX_TOPIC_LEVELS}"),
        )?;

        let max_client_id_length = cli
            .max_client_id_length
            .or(file.max_client_id_length)
            .unwrap_or(DEFAULT_MAX_CLIENT_ID_LENGTH);
        ensure(
            max_client_id_length >= MIN_CLIENT_ID_LENGTH,
            "max_client_id_length",
            &format!("must be between {MIN_CLIENT_ID_LENGTH} and 65535"),
        )?;

        let queue_full_policy = match cli.queue_full_policy.or(file.queue_full_policy) {
            None | Some(QueueFull::Drop) => QueueFullPolicy::Drop,
            Some(QueueFull::Disconnect) => QueueFullPolicy::Disconnect,
        };

        let shared_subscription_strategy = match cli
            .shared_subscription_strategy
            .or(file.shared_subscription_strategy)
        {
            None | Some(SharedStrategy::RoundRobin) => Strategy::RoundRobin,
            Some(SharedStrategy::Random) => Strategy::Random,
            Some(SharedStrategy::Sticky) => Strategy::Sticky,
        };

        let interval = cli
            .durability_interval_ms
            .or(file.durability_interval_ms)
            .unwrap_or(DEFAULT_DURABILITY_INTERVAL_MS);
        ensure(
            (1..=60_000).contains(&interval),
            "durability_interval_ms",
            "must be 1 to 60000",
        )?;
        let durability = match cli.durability.or(file.durability) {
            None | Some(DurabilityLevel::Batch) => Durability::Batch,
            Some(DurabilityLevel::Always) => Durability::Always,
            Some(DurabilityLevel::None) => Durability::None,
        };
        let store = match cli.data_dir.or(file.data_dir) {
            Some(dir) => {
                ensure(!dir.as_os_str().is_empty(), "data_dir", "must not be empty")?;
                Some(StoreSettings {
                    dir,
                    durability,
                    interval: Duration::from_millis(interval),
                    repair: cli.repair.or(file.repair).unwrap_or(false),
                })
            }
            None => None,
        };
        // The ownership raft's file lives in the data dir.
        if let Some(cluster) = &mut cluster {
            cluster.data_dir = store.as_ref().map(|store| store.dir.clone());
        }

        Ok(Config {
            listeners,
            cores,
            io_driver: cli.io_driver.or(file.io_driver).unwrap_or_default(),
            log_level: cli.log_level.or(file.log_level).unwrap_or_default(),
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            max_inflight,
            max_queued_messages,
            queue_full_policy,
            max_keepalive: cli
                .max_keepalive
                .or(file.max_keepalive)
                .unwrap_or(DEFAULT_MAX_KEEPALIVE),
            max_packet_size,
            topic_alias_maximum: cli
                .topic_alias_maximum
                .or(file.topic_alias_maximum)
                .unwrap_or(DEFAULT_TOPIC_ALIAS_MAXIMUM),
            server_topic_aliases: cli
                .server_topic_aliases
                .or(file.server_topic_aliases)
                .unwrap_or(true),
            shared_subscription_strategy,
            max_connections: cli
                .max_connections
                .or(file.max_connections)
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            connect_timeout,
            park_after_ms: cli
                .park_after_ms
                .or(file.park_after_ms)
                .unwrap_or(DEFAULT_PARK_AFTER_MS),
            max_topic_length,
            max_topic_levels,
            max_subscriptions_per_client: cli
                .max_subscriptions_per_client
                .or(file.max_subscriptions_per_client)
                .unwrap_or(DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT),
            max_client_id_length,
            metrics_listen: cli.metrics_listen.or(file.metrics_listen),
            sys_interval: cli
                .sys_interval
                .or(file.sys_interval)
                .unwrap_or(DEFAULT_SYS_INTERVAL),
            cluster,
            store,
            auth,
            abuse,
        })
    }
}

impl LogLevel {
    /// For `tracing_subscriber`'s level filter.
    pub fn level_filter(self) -> LevelFilter {
        match self {
            LogLevel::Trace => LevelFilter::TRACE,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Error => LevelFilter::ERROR,
        }
    }
}

impl FileConfig {
    fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        FileConfig::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::ParseFile {
            path: path.to_owned(),
            source,
        })
    }
}

/// The flag for a key: `max_inflight` is `--max-inflight`; in the
/// `[cluster]` table `cluster.ack` is `--cluster-ack`, but `node_id` and
/// `seeds` are short enough to go without the prefix.
fn flag_for_key(key: &str) -> String {
    let flag = match key.strip_prefix("cluster.") {
        Some(name @ ("node_id" | "seeds")) => name.to_owned(),
        Some(name) => format!("cluster_{name}"),
        None => key.to_owned(),
    };
    flag.replace('_', "-")
}

fn ensure(ok: bool, key: &'static str, reason: &str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidValue {
            key,
            reason: reason.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests;
