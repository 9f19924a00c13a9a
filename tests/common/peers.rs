//! Other brokers' clusters in place of ringmq's in the namespace harness
//! (netns.rs), so that the same faults and the same clients measure them:
//!
//! - `FAULT_PEER=rmqtt RMQTT=/path/to/rmqttd`: RMQTT with its raft
//!   cluster plugin (`rmqtt-cluster-raft`), sessions in memory (the
//!   binary built from `rmqtt-bin` has no session storage plugin);
//! - `FAULT_PEER=vibemq VIBEMQ=/path/to/vibemq`: VibeMQ's gossip cluster,
//!   with its persistence (fjall) in the node's own dir, as ringmq's
//!   data dir.
//!
//! Neither is built here (PERF.md, "Against RMQTT and VibeMQ", says from
//! which commits); the configuration follows bench/cluster.sh's
//! `start_rmqtt` and `start_vibemq`, on the namespaces' addresses, with
//! queues that never drop (as ringmq's `max_queued_messages` in the fault
//! tests) and ringmq's default window of 100 messages in flight per
//! client. Without `FAULT_PEER` nothing here is used.
//!
//! Neither peer says when its cluster has formed, so a cluster counts as
//! formed once a message published on each node reaches a subscriber on
//! every other ([`crosses`]).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::wire::{self, Connect, Props, Pub};

/// RMQTT's node-to-node gRPC and its raft, both TCP.
const RMQTT_PORTS: [u16; 2] = [7956, 7957];
/// VibeMQ's gossip (chitchat, UDP) and its peer links (TCP).
const VIBEMQ_PORTS: [u16; 2] = [7946, 7947];

/// Which broker a peer cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Rmqtt,
    Vibemq,
}

/// A peer broker's binary, chosen by `FAULT_PEER`.
#[derive(Debug, Clone)]
pub struct Peer {
    pub kind: Kind,
    binary: PathBuf,
}

impl Peer {
    /// The peer `FAULT_PEER` names, with its binary from `RMQTT` or
    /// `VIBEMQ`; `None` without `FAULT_PEER` (ringmq). Panics on an
    /// unknown name or a missing binary: a run meant for a peer must not
    /// quietly measure ringmq.
    pub fn from_env() -> Option<Peer> {
        let name = std::env::var("FAULT_PEER").ok()?;
        let (kind, variable) = match name.as_str() {
            "rmqtt" => (Kind::Rmqtt, "RMQTT"),
            "vibemq" => (Kind::Vibemq, "VIBEMQ"),
            other => panic!("FAULT_PEER={other}: rmqtt or vibemq"),
        };
        let binary = PathBuf::from(
            std::env::var_os(variable)
                .unwrap_or_else(|| panic!("FAULT_PEER={name} needs {variable}=/path/to/binary")),
        );
        assert!(binary.is_file(), "{variable}: no file {}", binary.display());
        Some(Peer { kind, binary })
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Rmqtt => "rmqtt",
            Kind::Vibemq => "vibemq",
        }
    }

    /// The ports of its cluster traffic (TCP and UDP), which a cut drops.
    pub fn cluster_ports(&self) -> &'static [u16] {
        match self.kind {
            Kind::Rmqtt => &RMQTT_PORTS,
            Kind::Vibemq => &VIBEMQ_PORTS,
        }
    }

    /// Writes node `i`'s configuration into `dir` (created) and appends
    /// the program and its arguments to `cmd`: node `i` listens for MQTT
    /// on `ips[i]:mqtt_port`, and every node in `ips` is its peer.
    pub fn append_node(
        &self,
        cmd: &mut Command,
        i: usize,
        ips: &[Ipv4Addr],
        mqtt_port: u16,
        dir: &Path,
    ) {
        std::fs::create_dir_all(dir.join("plugins")).expect("create the peer's dir");
        let config = match self.kind {
            Kind::Rmqtt => rmqtt_config(i, ips, mqtt_port, dir),
            Kind::Vibemq => vibemq_config(i, ips, mqtt_port, dir),
        };
        let path = dir.join("node.toml");
        std::fs::write(&path, config).expect("write the peer's configuration");
        let flag = match self.kind {
            Kind::Rmqtt => "-f",
            Kind::Vibemq => "-c",
        };
        // Both log to stdout; the harness reads stderr. `exec` keeps the
        // pid the broker's own, for kill -9.
        cmd.args(["sh", "-c", "exec \"$0\" \"$@\" 1>&2"])
            .arg(&self.binary)
            .arg(flag)
            .arg(&path)
            .current_dir(dir);
    }
}

fn rmqtt_config(i: usize, ips: &[Ipv4Addr], mqtt_port: u16, dir: &Path) -> String {
    let [grpc, raft] = RMQTT_PORTS;
    let list = |port: u16| {
        let addrs: Vec<String> = (ips.iter().enumerate())
            .map(|(j, ip)| format!("\"{}@{ip}:{port}\"", j + 1))
            .collect();
        addrs.join(", ")
    };
    std::fs::write(
        dir.join("plugins/rmqtt-acl.toml"),
        "rules = [[\"allow\", \"all\"]]\n",
    )
    .expect("write RMQTT's ACL");
    std::fs::write(
        dir.join("plugins/rmqtt-cluster-raft.toml"),
        format!(
            "worker_threads = 1
node_grpc_addrs = [{}]
raft_peer_addrs = [{}]
# Without a named leader, nodes started together may each lead a raft
# group of one: every SUBSCRIBE is acknowledged, nothing crosses.
leader_id = 1
",
            list(grpc),
            list(raft)
        ),
    )
    .expect("write RMQTT's raft plugin configuration");
    let ip = ips[i];
    format!(
        "[node]
id = {id}
[rpc]
server_addr = \"{ip}:{grpc}\"
[log]
to = \"console\"
level = \"warn\"
[plugins]
dir = \"{plugins}\"
default_startups = [\"rmqtt-cluster-raft\"]
[listener.tcp.external]
addr = \"{ip}:{mqtt_port}\"
workers = 1
nodelay = true
allow_anonymous = true
max_inflight = 100
max_mqueue_len = 1000000
mqueue_rate_limit = \"100000000,1s\"
",
        id = i + 1,
        plugins = dir.join("plugins").display(),
    )
}

fn vibemq_config(i: usize, ips: &[Ipv4Addr], mqtt_port: u16, dir: &Path) -> String {
    let [gossip, peer] = VIBEMQ_PORTS;
    let seeds: Vec<String> = (ips.iter().enumerate())
        .filter(|(j, _)| *j != i)
        .map(|(_, ip)| format!("\"{ip}:{gossip}\""))
        .collect();
    let ip = ips[i];
    format!(
        "[server]
bind = \"{ip}:{mqtt_port}\"
workers = 1
[log]
level = \"warn\"
[metrics]
enabled = false
[limits]
max_inflight = 100
max_queued_messages = 1000000
# A connection's outgoing channel drops what does not fit (\"channel
# full - dropping message\"): as large as the queue.
outbound_channel_capacity = 1000000
[persistence]
enabled = true
path = \"{data}\"
[[cluster]]
enabled = true
node_id = \"n{i}\"
gossip_addr = \"{ip}:{gossip}\"
gossip_advertise_addr = \"{ip}:{gossip}\"
peer_addr = \"{ip}:{peer}\"
peer_advertise_addr = \"{ip}:{peer}\"
seeds = [{seeds}]
",
        data = dir.join("data").display(),
        seeds = seeds.join(", "),
    )
}

/// A blocking MQTT 5 connection for the probe.
struct Probe {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Probe {
    fn connect(addr: SocketAddr, id: &str) -> Option<Probe> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        stream.set_nodelay(true).ok()?;
        let mut probe = Probe {
            stream,
            buf: Vec::new(),
        };
        probe.send(&Connect::v5(id).encode())?;
        let packet = probe.recv(Duration::from_secs(2))?;
        (packet.kind() == wire::CONNACK && packet.connack(wire::V5).code == 0).then_some(probe)
    }

    fn send(&mut self, bytes: &[u8]) -> Option<()> {
        self.stream.write_all(bytes).ok()
    }

    fn recv(&mut self, within: Duration) -> Option<wire::Packet> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(packet) = wire::take_packet(&mut self.buf) {
                return Some(packet);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Whether a QoS 0 message published on `from` (again every 200 ms, at
/// least once) reaches a subscriber on `to` within `within`.
pub fn crosses(from: SocketAddr, to: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let id = super::unique_id("probe");
    let topic = format!("probe/{id}");
    let Some(mut subscriber) = Probe::connect(to, &format!("{id}-sub")) else {
        return false;
    };
    let subscribe = wire::subscribe(wire::V5, 1, &[(&topic, 0)], Props::new());
    if subscriber.send(&subscribe).is_none()
        || !matches!(subscriber.recv(Duration::from_secs(2)), Some(p) if p.kind() == wire::SUBACK)
    {
        return false;
    }
    let Some(mut publisher) = Probe::connect(from, &format!("{id}-pub")) else {
        return false;
    };
    loop {
        if publisher
            .send(&Pub::new(&topic, b"x").encode(wire::V5))
            .is_none()
        {
            return false;
        }
        if matches!(subscriber.recv(Duration::from_millis(200)), Some(p) if p.kind() == wire::PUBLISH)
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

/// How long until a message published on each of `nodes` reaches a
/// subscriber on every other ([`crosses`]), or `None` after `within`.
pub fn all_cross(nodes: &[SocketAddr], within: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        let all = nodes.iter().all(|&from| {
            (nodes.iter().filter(|&&to| to != from)).all(|&to| {
                let left = within.saturating_sub(start.elapsed());
                crosses(from, to, left.min(Duration::from_secs(5)))
            })
        });
        if all {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// For a test whose checks only make sense for ringmq (its metrics, its
/// log lines, its promises): true, after saying why, when `FAULT_PEER`
/// names a peer.
pub fn skipped_for_peer(why: &str) -> bool {
    let Ok(peer) = std::env::var("FAULT_PEER") else {
        return false;
    };
    eprintln!("skipped for FAULT_PEER={peer}: {why}");
    true
}
