//! Command line: one subcommand per scenario, sharing [`CommonArgs`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ringmq::protocol::QoS;
use rustls::pki_types::ServerName;

use crate::client::Broker;
use crate::tls::{TlsClient, TlsRoots, parse_server_name};

#[derive(Debug, Parser)]
#[command(
    name = "ringmq-bench",
    version,
    about = "Thread-per-core MQTT 3.1.1 load generator"
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// N subscriber/publisher pairs, each pair on its own topic `bench/pair/N`
    /// (the same as `pubsub --layout pairs`).
    Pairs(PairsArgs),
    /// Publishers and subscribers in a layout (emqtt-bench style): pairs,
    /// fan-in (many publishers, few subscribers of one filter) or fan-out
    /// (few publishers, many subscribers of one topic).
    Pubsub(PubsubArgs),
    /// The mqtt-stresser flow; takes mqtt-stresser's single-dash flags
    /// (`-num-clients 100`) as well as double-dash ones.
    Stresser(StresserArgs),
    /// Times SUBSCRIBE to SUBACK, each to a new filter: on a cluster node
    /// the SUBACK waits until the peers have the route.
    Subscribe(SubscribeArgs),
    /// Moves persistent sessions between two cluster nodes: each client
    /// reconnects to the other node in turn; times CONNECT to CONNACK of
    /// each move and checks the session came along.
    Takeover(TakeoverArgs),
    /// Holds N idle connections (PINGREQ keep-alive), from several source
    /// addresses and processes; reports connect rate and broker memory.
    Conn(ConnArgs),
    /// Fills a broker with stored sessions (clean_session=0, one QoS 1
    /// subscription each, disconnected) and QoS 1 messages queued for
    /// them, for timing a restart.
    Sessions(SessionsArgs),
    /// No broker: one shard's durable-session writes (or, with
    /// `--restore`, the scan that restores them) against an embedded store.
    Store(StoreArgs),
}

/// Rewrites mqtt-stresser's single-dash long flags (`-num-clients`,
/// `-broker=tcp://...`) to clap's double-dash form. Only a dash followed by
/// a letter and at least one more letter, digit or dash is rewritten, so
/// short flags (`-h`) and negative numbers pass unchanged; a value that
/// itself starts with such a dash must be written `-flag=value`.
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .map(|arg| {
            let name = arg.split('=').next().unwrap_or("");
            let bytes = name.as_bytes();
            let single_dash_long = bytes.len() >= 3
                && bytes[0] == b'-'
                && bytes[1].is_ascii_alphabetic()
                && bytes[2..]
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-');
            if single_dash_long {
                format!("-{arg}")
            } else {
                arg
            }
        })
        .collect()
}

/// How clients reach the broker: in the clear, or through TLS. Every
/// scenario that opens connections takes these.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// Connect through TLS, verifying the broker's certificate against
    /// `--tls-ca` (there is no way to skip the verification).
    #[arg(long, requires = "tls_ca")]
    pub tls: bool,
    /// CA certificates (PEM) the broker's certificate must chain to.
    #[arg(long, value_name = "FILE", requires = "tls", value_parser = parse_tls_ca)]
    pub tls_ca: Option<TlsRoots>,
    /// The name the broker's certificate must be valid for (a DNS name or
    /// an IP address); default: the IP address connected to.
    #[arg(long, value_name = "NAME", requires = "tls", value_parser = parse_server_name)]
    pub tls_server_name: Option<ServerName<'static>>,
}

impl TlsArgs {
    /// The broker at `addr`, reached as these flags say.
    pub fn broker(&self, addr: SocketAddr) -> Broker {
        let tls = match (self.tls, &self.tls_ca) {
            (true, Some(roots)) => Some(TlsClient {
                roots: roots.clone(),
                server_name: self.tls_server_name.clone(),
            }),
            // clap's `requires` keeps the flags together.
            _ => None,
        };
        Broker { addr, tls }
    }

    /// The same flags, for a child process's command line.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let (true, Some(roots)) = (self.tls, &self.tls_ca) {
            args.push("--tls".to_owned());
            args.push("--tls-ca".to_owned());
            args.push(roots.path.display().to_string());
            if let Some(name) = &self.tls_server_name {
                args.push("--tls-server-name".to_owned());
                args.push(name.to_str().into_owned());
            }
        }
        args
    }
}

/// `--tls-ca FILE`: read and checked while the flags are parsed, so a
/// file that does not load is an error naming the flag.
fn parse_tls_ca(text: &str) -> Result<TlsRoots, String> {
    TlsRoots::load(std::path::Path::new(text))
}

/// Flags every scenario understands.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Broker address (host:port): where publishers connect, and
    /// subscribers too unless `--sub-broker` is given.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker: SocketAddr,
    /// Where subscribers connect instead, for a cluster: subscriber N to
    /// entry N mod the count (`--sub-broker B` puts every subscriber on
    /// node B; `--sub-broker A,B,C` spreads them over three nodes).
    #[arg(long, value_delimiter = ',')]
    pub sub_broker: Vec<SocketAddr>,
    /// CPUs to pin worker threads to, one thread per entry: `1`, `0,1`, `0-3`.
    #[arg(long, default_value = "0", value_parser = parse_cpus)]
    pub cpus: CpuList,
    /// Measured window, after the warmup: `10s`, `500ms`, `2m`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Publishing before the measured window; not counted in rates or latency.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// After the window, how long to wait for messages still in flight.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Most handshakes (connect, and subscribe) in progress at once, over
    /// all workers; keeps a connection storm within the broker's backlog.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub connect_concurrency: u32,
    /// Print the summary as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Broker process ids (`1234`, or a cluster's `1234,1235,1236`): their
    /// CPU times over the measured window are read from /proc/PID/stat,
    /// summed, and reported per delivered message.
    #[arg(long, value_delimiter = ',')]
    pub broker_pid: Vec<u32>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

impl CommonArgs {
    /// The broker publishers connect to.
    pub fn publisher_broker(&self) -> Broker {
        self.tls.broker(self.broker)
    }

    /// The broker subscriber `n` connects to.
    pub fn subscriber_broker(&self, n: usize) -> Broker {
        let addr = match self.sub_broker.len() {
            0 => self.broker,
            len => self.sub_broker[n % len],
        };
        self.tls.broker(addr)
    }
}

#[derive(Debug, Clone, Args)]
pub struct PairsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Number of pairs (connections = 2 x pairs).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub pairs: u32,
    /// QoS of the publishes and the subscriptions: 0, 1 or 2.
    #[arg(long, default_value = "0", value_parser = parse_qos)]
    pub qos: QoS,
    /// Payload bytes per message; the first 8 carry the send timestamp.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(8..=16_777_216))]
    pub payload: u32,
    /// Messages per second per publisher; 0 publishes as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// QoS 1/2: unacknowledged publishes a publisher may have outstanding.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,
    /// Most messages a publisher may be ahead of its subscriber (sent but
    /// not yet received); 0 publishes open-loop, however far the broker
    /// falls behind.
    #[arg(long, default_value_t = 500)]
    pub max_lag: u32,
    /// Most PUBLISH packets coalesced into one write.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    #[command(flatten)]
    pub sessions: SessionArgs,
}

/// Whether the clients' sessions outlive their connections.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct SessionArgs {
    /// Subscribers connect with clean_session=0 and a stable client id, so
    /// a broker with durable sessions stores their sessions and queued
    /// QoS 1/2 messages. Run against a fresh broker (and data dir): a
    /// session kept from an earlier run would deliver its stale messages.
    #[arg(long)]
    pub persistent_subscribers: bool,
    /// Publishers too connect with clean_session=0 and a stable client id.
    #[arg(long)]
    pub persistent_publishers: bool,
}

/// Where publishers and subscribers meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Publisher N to subscriber N on `bench/pair/N`.
    Pairs,
    /// Publisher N on `bench/fan-in/N`; every subscriber on `bench/fan-in/+`.
    FanIn,
    /// Every publisher on `bench/fan-out`; every subscriber on it too.
    FanOut,
}

#[derive(Debug, Clone, Args)]
pub struct PubsubArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long, value_enum, default_value = "pairs")]
    pub layout: Layout,
    /// Publishing connections.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub publishers: u32,
    /// Subscribing connections; default: as many as publishers for pairs
    /// (which needs them equal), 1 for fan-in, 100 for fan-out.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub subscribers: Option<u32>,
    /// QoS of the publishes and the subscriptions: 0, 1 or 2.
    #[arg(long, default_value = "0", value_parser = parse_qos)]
    pub qos: QoS,
    /// Payload bytes per message; the first 8 carry the send timestamp.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(8..=16_777_216))]
    pub payload: u32,
    /// Messages per second per publisher; 0 publishes as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// QoS 1/2: unacknowledged publishes a publisher may have outstanding.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,
    /// Most messages a subscriber may be behind; 0 is open loop. In pairs
    /// per publisher; in fan-in and fan-out all publishers together, since
    /// every subscriber receives every publish.
    #[arg(long, default_value_t = 500)]
    pub max_lag: u32,
    /// Most PUBLISH packets coalesced into one write.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    #[command(flatten)]
    pub sessions: SessionArgs,
}

impl PubsubArgs {
    pub fn subscribers(&self) -> u32 {
        self.subscribers.unwrap_or(match self.layout {
            Layout::Pairs => self.publishers,
            Layout::FanIn => 1,
            Layout::FanOut => 100,
        })
    }

    /// The publishing flags in the form the `pairs` machinery takes.
    pub fn as_pairs(&self) -> PairsArgs {
        PairsArgs {
            common: self.common.clone(),
            pairs: self.publishers,
            qos: self.qos,
            payload: self.payload,
            rate: self.rate,
            inflight: self.inflight,
            max_lag: self.max_lag,
            batch: self.batch,
            sessions: self.sessions,
        }
    }
}

/// mqtt-stresser's flags, same names and defaults.
#[derive(Debug, Clone, Args)]
pub struct StresserArgs {
    /// Broker URL, `tcp://host:port` (or `host:port`).
    #[arg(long, default_value = "tcp://127.0.0.1:1883", value_parser = parse_broker_url)]
    pub broker: SocketAddr,
    /// Workers; each has one subscriber and one publisher connection.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub num_clients: u32,
    /// Messages each worker publishes (and its subscriber must receive).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub num_messages: u32,
    /// Workers started per batch.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub rampup_size: u32,
    /// Pause between batches.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub rampup_delay: Duration,
    #[arg(long, default_value = "0", value_parser = parse_qos)]
    pub publisher_qos: QoS,
    #[arg(long, default_value = "0", value_parser = parse_qos)]
    pub subscriber_qos: QoS,
    /// Limit on each action: connect, subscribe, one publish's completion.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Limit on the whole test; workers still receiving then time out.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub global_timeout: Duration,
    /// Payload of every message; default `this is msg #N!`.
    #[arg(long)]
    pub constant_payload: Option<String>,
    #[arg(long)]
    pub username: Option<String>,
    #[arg(long)]
    pub password: Option<String>,
    /// CPUs to pin worker threads to (not an mqtt-stresser flag).
    #[arg(long, default_value = "0", value_parser = parse_cpus)]
    pub cpus: CpuList,
    /// Broker process ids (several are summed): their CPU time over the
    /// test, per delivered message.
    #[arg(long, value_delimiter = ',')]
    pub broker_pid: Vec<u32>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sessions: SessionArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SessionsArgs {
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker: SocketAddr,
    /// Sessions to store, client ids `bench-stored-0` onwards.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub sessions: u32,
    /// QoS 1 messages queued for each session.
    #[arg(long, default_value_t = 10)]
    pub messages: u32,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    pub payload: u32,
    /// Unacknowledged PUBLISHes per publisher.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,
    /// Sessions connecting at once, per worker.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub connect_concurrency: u32,
    #[arg(long, default_value = "0", value_parser = parse_cpus)]
    pub cpus: CpuList,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SubscribeArgs {
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker: SocketAddr,
    /// Connections, each subscribing in sequence (one SUBSCRIBE in flight).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub clients: u32,
    /// SUBSCRIBEs per connection, each to a filter never used before.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub subscribes: u32,
    #[arg(long, default_value = "0", value_parser = parse_qos)]
    pub qos: QoS,
    #[arg(long, default_value = "0", value_parser = parse_cpus)]
    pub cpus: CpuList,
    /// Broker process ids (several are summed): CPU time per subscribe.
    #[arg(long, value_delimiter = ',')]
    pub broker_pid: Vec<u32>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
}

#[derive(Debug, Clone, Args)]
pub struct TakeoverArgs {
    /// The node each client's session starts on.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker: SocketAddr,
    /// The node it moves to, and back from.
    #[arg(long)]
    pub other_broker: SocketAddr,
    /// Clients, each moving its own session in sequence.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub clients: u32,
    /// Moves per client.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub moves: u32,
    /// Keep the old connection open during the move (a takeover of a
    /// connected session) instead of disconnecting first.
    #[arg(long)]
    pub while_connected: bool,
    #[arg(long, default_value = "0", value_parser = parse_cpus)]
    pub cpus: CpuList,
    /// Broker process ids (several are summed): CPU time per move.
    #[arg(long, value_delimiter = ',')]
    pub broker_pid: Vec<u32>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker: SocketAddr,
    /// Idle connections to hold, over all processes.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,
    /// Local addresses to connect from, round robin: `127.0.0.2,127.0.0.3`.
    #[arg(long, value_delimiter = ',')]
    pub source_addrs: Vec<std::net::IpAddr>,
    /// Processes to spread the connections over (this one re-executed);
    /// default: as few as the open-file limit allows.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub processes: Option<u32>,
    /// Keep-alive in the CONNECT, seconds; PINGREQ goes out at this interval.
    #[arg(long, default_value_t = 60)]
    pub keep_alive: u16,
    /// How long to hold the connections once all are up.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub hold: Duration,
    /// Most handshakes in progress at once per process.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub connect_concurrency: u32,
    #[arg(long, default_value = "0", value_parser = parse_cpus)]
    pub cpus: CpuList,
    /// Broker process ids (several are summed): VmRSS before and after,
    /// and CPU time.
    #[arg(long, value_delimiter = ',')]
    pub broker_pid: Vec<u32>,
    #[arg(long)]
    pub json: bool,
    /// Internal: run as child number N of a multi-process run (its share
    /// of connections is `--connections`); reports on stdout, holds until
    /// stdin closes.
    #[arg(long, hide = true)]
    pub child: Option<u32>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// The embedded stores the `store` scenario compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// LSM tree with a write-ahead journal.
    Fjall,
    /// Copy-on-write B-tree in one file.
    Redb,
}

/// When a group commit reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Every commit is fsynced before it counts as done.
    Always,
    /// Commits are not fsynced, but the first commit after each 100 ms is.
    Batch,
    /// Never fsynced while running.
    None,
}

/// fjall's fsync flavour for a durable commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FjallSync {
    /// `fsync`: data and metadata.
    All,
    /// `fdatasync`: data, and only the metadata needed to read it back.
    Data,
}

#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    #[arg(long, value_enum)]
    pub store: StoreKind,
    #[arg(long, value_enum, default_value = "always")]
    pub durability: Durability,
    /// Messages per group commit (one loop turn of a shard).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Messages to write; each is 2 puts and, later, 2 deletes.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: u64,
    /// Stop publishing after this long even if `--messages` are not all
    /// written (the acks still outstanding are then drained).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub time_limit: Duration,
    /// Messages between a put and its delete: the subscribers' ack lag.
    #[arg(long, default_value_t = 1000)]
    pub ack_window: u64,
    /// Persistent sessions the messages are queued for, round robin.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub clients: u64,
    /// Payload bytes per message (a 40-byte header is added).
    #[arg(long, default_value_t = 64)]
    pub payload: u32,
    /// An existing directory (on the filesystem to measure); each run
    /// works in a fresh subdirectory of it, removed afterwards.
    #[arg(long)]
    pub dir: std::path::PathBuf,
    /// Keep the run's subdirectory.
    #[arg(long)]
    pub keep: bool,
    /// fjall only: `fsync` or `fdatasync` for a durable commit.
    #[arg(long, value_enum, default_value = "all")]
    pub fjall_sync: FjallSync,
    /// Instead of the write pattern: fill `--sessions` sessions with
    /// `--queued` messages each (no fsync), close, reopen and scan every
    /// key, timing each step.
    #[arg(long)]
    pub restore: bool,
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub sessions: u64,
    #[arg(long, default_value_t = 10)]
    pub queued: u64,
    /// `--restore`: fill in a child process that exits without closing the
    /// store (after a durable last commit), as a crash would leave it.
    #[arg(long)]
    pub crash: bool,
    /// `--restore`: drop the store's files from the page cache before the
    /// reopen (`posix_fadvise` DONTNEED on its files only).
    #[arg(long)]
    pub cold: bool,
    /// Internal: the `--crash` child; fills the store at `--dir` itself.
    #[arg(long, hide = true)]
    pub fill_only: bool,
    #[arg(long)]
    pub json: bool,
}

/// `tcp://host:port`, `mqtt://host:port` or `host:port`; the host may be a
/// name (resolved once, first address).
pub fn parse_broker_url(text: &str) -> Result<SocketAddr, String> {
    let rest = match text.split_once("://") {
        Some(("tcp" | "mqtt", rest)) => rest,
        Some((scheme, _)) => return Err(format!("unsupported scheme `{scheme}` (use tcp://)")),
        None => text,
    };
    let rest = rest.trim_end_matches('/');
    use std::net::ToSocketAddrs;
    rest.to_socket_addrs()
        .map_err(|e| format!("`{text}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

/// The CPUs worker threads are pinned to, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// `1`, `0,1`, `0-3`, `0-1,4`.
pub fn parse_cpus(text: &str) -> Result<CpuList, String> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim) {
        let parse = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{s}` is not a CPU number"))
        };
        match part.split_once('-') {
            Some((low, high)) => {
                let (low, high) = (parse(low)?, parse(high)?);
                if low > high {
                    return Err(format!("empty CPU range `{part}`"));
                }
                cpus.extend(low..=high);
            }
            None => cpus.push(parse(part)?),
        }
    }
    let mut sorted = cpus.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != cpus.len() {
        return Err("a CPU is listed twice".into());
    }
    Ok(CpuList(cpus))
}

/// `10s`, `500ms`, `2m`, `1.5s`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 10s or 500ms"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit `{unit}` (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
}

pub fn parse_qos(text: &str) -> Result<QoS, String> {
    text.parse::<u8>()
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| format!("QoS must be 0, 1 or 2, not `{text}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("1"), Ok(CpuList(vec![1])));
        assert_eq!(parse_cpus("0,1"), Ok(CpuList(vec![0, 1])));
        assert_eq!(parse_cpus("0-2,5"), Ok(CpuList(vec![0, 1, 2, 5])));
        assert!(parse_cpus("1,1").is_err());
        assert!(parse_cpus("2-1").is_err());
        assert!(parse_cpus("x").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "ringmq-bench",
            "pairs",
            "--cpus",
            "0,1",
            "--qos",
            "1",
            "--duration",
            "3s",
        ])
        .expect("valid command line");
        let Scenario::Pairs(args) = cli.scenario else {
            panic!("not pairs")
        };
        assert_eq!(args.common.cpus, CpuList(vec![0, 1]));
        assert_eq!(args.qos, QoS::AtLeastOnce);
        assert_eq!(args.pairs, 100);
    }

    #[test]
    fn stresser_takes_single_dash_flags() {
        let argv = [
            "ringmq-bench",
            "stresser",
            "-broker",
            "tcp://127.0.0.1:1884",
            "-num-clients",
            "500",
            "-num-messages=100",
            "-rampup-delay",
            "1s",
            "-publisher-qos",
            "2",
            "--subscriber-qos",
            "1",
            "-constant-payload",
            "hello",
            "-h2",
        ];
        let args = normalize_args(argv.iter().map(|s| s.to_string()));
        assert_eq!(args[2], "--broker");
        assert_eq!(args[6], "--num-messages=100");
        assert_eq!(args[11], "--subscriber-qos");
        assert_eq!(args[15], "--h2");
        let cli = Cli::try_parse_from(&args[..15]).expect("valid command line");
        let Scenario::Stresser(s) = cli.scenario else {
            panic!("not stresser")
        };
        assert_eq!(
            s.broker,
            "127.0.0.1:1884"
                .parse::<std::net::SocketAddr>()
                .expect("literal")
        );
        assert_eq!(
            (s.num_clients, s.num_messages, s.rampup_size),
            (500, 100, 100)
        );
        assert_eq!(s.rampup_delay, Duration::from_secs(1));
        assert_eq!(
            (s.publisher_qos, s.subscriber_qos),
            (QoS::ExactlyOnce, QoS::AtLeastOnce)
        );
        assert_eq!(s.constant_payload.as_deref(), Some("hello"));
        assert_eq!(
            normalize_args(["-h".to_string(), "-5".to_string()]),
            ["-h", "-5"]
        );
    }

    #[test]
    fn persistent_session_flags() {
        let cli = Cli::try_parse_from(["b", "pairs", "--persistent-subscribers"]).expect("valid");
        let Scenario::Pairs(args) = cli.scenario else {
            panic!("not pairs")
        };
        assert!(args.sessions.persistent_subscribers);
        assert!(!args.sessions.persistent_publishers);
        let argv = [
            "b",
            "stresser",
            "-num-clients",
            "5",
            "--persistent-publishers",
        ];
        let args = normalize_args(argv.iter().map(|s| s.to_string()));
        let cli = Cli::try_parse_from(&args).expect("valid");
        let Scenario::Stresser(s) = cli.scenario else {
            panic!("not stresser")
        };
        assert!(s.sessions.persistent_publishers && !s.sessions.persistent_subscribers);
        let cli = Cli::try_parse_from(["b", "sessions", "--sessions", "10"]).expect("valid");
        let Scenario::Sessions(s) = cli.scenario else {
            panic!("not sessions")
        };
        assert_eq!((s.sessions, s.messages), (10, 10));
    }

    #[test]
    fn broker_urls() {
        let addr: SocketAddr = "127.0.0.1:1883".parse().expect("literal");
        assert_eq!(parse_broker_url("tcp://127.0.0.1:1883"), Ok(addr));
        assert_eq!(parse_broker_url("127.0.0.1:1883"), Ok(addr));
        assert!(parse_broker_url("ssl://127.0.0.1:8883").is_err());
    }

    #[test]
    fn single_broker_flags_unchanged() {
        let cli = Cli::try_parse_from([
            "b",
            "pairs",
            "--broker",
            "127.0.0.1:1884",
            "--broker-pid",
            "42",
        ])
        .expect("valid");
        let Scenario::Pairs(args) = cli.scenario else {
            panic!("not pairs")
        };
        let broker: SocketAddr = "127.0.0.1:1884".parse().expect("literal");
        assert_eq!(args.common.broker_pid, [42]);
        assert!(args.common.sub_broker.is_empty());
        assert_eq!(args.common.subscriber_broker(0).addr, broker);
        assert_eq!(args.common.subscriber_broker(7).addr, broker);
        assert!(args.common.subscriber_broker(0).tls.is_none());
        let cli = Cli::try_parse_from(["b", "pairs"]).expect("valid");
        let Scenario::Pairs(args) = cli.scenario else {
            panic!("not pairs")
        };
        assert!(args.common.broker_pid.is_empty());
    }

    #[test]
    fn cluster_flags() {
        let cli = Cli::try_parse_from([
            "b",
            "pubsub",
            "--layout",
            "fan-out",
            "--broker",
            "127.0.0.11:1883",
            "--sub-broker",
            "127.0.0.11:1883,127.0.0.12:1883",
            "--sub-broker",
            "127.0.0.13:1883",
            "--broker-pid",
            "10,11",
            "--broker-pid",
            "12",
        ])
        .expect("valid");
        let Scenario::Pubsub(args) = cli.scenario else {
            panic!("not pubsub")
        };
        let common = &args.common;
        assert_eq!(common.broker_pid, [10, 11, 12]);
        let node = |i: u8| SocketAddr::from(([127, 0, 0, 10 + i], 1883));
        assert_eq!(common.broker, node(1));
        let spread: Vec<_> = (0..5).map(|n| common.subscriber_broker(n).addr).collect();
        assert_eq!(spread, [node(1), node(2), node(3), node(1), node(2)]);
        // pubsub --layout pairs hands the same flags to the pairs machinery.
        assert_eq!(args.as_pairs().common.sub_broker, common.sub_broker);
        assert!(Cli::try_parse_from(["b", "pairs", "--sub-broker", "nonsense"]).is_err());
        assert!(Cli::try_parse_from(["b", "pairs", "--broker-pid", "1,x"]).is_err());
        let cli = Cli::try_parse_from(["b", "stresser", "--broker-pid", "1,2"]).expect("valid");
        let Scenario::Stresser(s) = cli.scenario else {
            panic!("not stresser")
        };
        assert_eq!(s.broker_pid, [1, 2]);
        let cli = Cli::try_parse_from([
            "b",
            "subscribe",
            "--broker",
            "127.0.0.12:1883",
            "--subscribes",
            "50",
            "--broker-pid",
            "7,8,9",
        ])
        .expect("valid");
        let Scenario::Subscribe(s) = cli.scenario else {
            panic!("not subscribe")
        };
        assert_eq!((s.clients, s.subscribes), (1, 50));
        assert_eq!(s.broker_pid, [7, 8, 9]);
    }

    #[test]
    fn tls_flags_go_together() {
        // The CA is read while parsing: an unreadable one names the flag.
        let error = Cli::try_parse_from(["b", "pairs", "--tls", "--tls-ca", "/nonexistent/ca.pem"])
            .expect_err("no such file");
        let text = error.to_string();
        assert!(
            text.contains("--tls-ca") && text.contains("cannot read"),
            "{text}"
        );
        assert!(Cli::try_parse_from(["b", "pairs", "--tls"]).is_err());
        assert!(Cli::try_parse_from(["b", "conn", "--tls-server-name", "localhost"]).is_err());
        let cli = Cli::try_parse_from(["b", "stresser"]).expect("valid");
        let Scenario::Stresser(s) = cli.scenario else {
            panic!("not stresser")
        };
        assert!(s.tls.broker(s.broker).tls.is_none());
        assert!(s.tls.to_args().is_empty());
    }

    #[test]
    fn pubsub_defaults_follow_layout() {
        let parse = |layout: &str| {
            let cli = Cli::try_parse_from(["b", "pubsub", "--layout", layout, "--publishers", "5"])
                .expect("valid");
            let Scenario::Pubsub(args) = cli.scenario else {
                panic!("not pubsub")
            };
            args.subscribers()
        };
        assert_eq!(parse("pairs"), 5);
        assert_eq!(parse("fan-in"), 1);
        assert_eq!(parse("fan-out"), 100);
    }
}
