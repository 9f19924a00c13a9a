//! Real `ringmq` nodes in Linux network namespaces, one per node, joined by
//! veth pairs to one bridge in the root namespace, and the faults a test
//! can apply to them: cut a node's cluster traffic (nftables inside its
//! namespace, the cluster ports only, so MQTT clients stay connected),
//! heal it, kill -9, SIGSTOP and SIGCONT. With `FAULT_PEER` set, the
//! nodes are another broker's (tests/common/peers.rs), cut on its own
//! cluster ports.
//!
//! Each cluster gets its own /24 in 10.201.0.0/16: the bridge is `.1` (the
//! test process's MQTT clients and metrics scrapes go through it) and node
//! `i` is `.11 + i`. Names carry the test process's pid, so parallel tests
//! and other test processes never collide, and what a killed test run left
//! behind (its pid gone) is removed by the next run.
//!
//! Needs root, `ip` and `nft`; [`available`] says whether a test can run.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::Broker;
use super::cluster::{Nodes, linked_peers, owns_sessions};
use super::http::get;
use super::peers::{Peer, all_cross};

/// How long a cluster gets to link every pair of nodes.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
pub const MQTT_PORT: u16 = 1883;
pub const METRICS_PORT: u16 = 9090;
pub const CLUSTER_PORT: u16 = 7946;
/// The nftables table a cut adds inside a node's namespace.
const FAULT_TABLE: &str = "ringmq_fault";

/// Whether the fault tests can run here: root, `ip` and `nft`. Otherwise
/// says why and returns false, except under `CI`, where it fails.
pub fn available() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let missing: Vec<&str> = [("ip", "-V"), ("nft", "--version")]
        .into_iter()
        .filter(|(tool, flag)| {
            Command::new(tool)
                .arg(flag)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        })
        .map(|(tool, _)| tool)
        .collect();
    let reason = match (root, missing.is_empty()) {
        (true, true) => return true,
        (false, _) => "not root (network namespaces need it)".to_owned(),
        (true, false) => format!(
            "{} not installed (apt-get install iproute2 nftables)",
            missing.join(" and ")
        ),
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "the fault tests cannot run: {reason}; .ci/run installs what they need"
    );
    eprintln!("skipped: {reason}");
    false
}

/// Runs `program args`, panicking with its output if it fails.
fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `program args` and returns its stdout, ignoring failure.
fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default()
}

/// The namespaces, the bridge and the veth pairs of one test cluster.
pub struct Net {
    /// The nodes whose link has a user-space delayer instead of a veth.
    delayers: Vec<(usize, super::delay::Delayer)>,
    bridge: String,
    pub namespaces: Vec<String>,
    veths: Vec<String>,
    pub ips: Vec<Ipv4Addr>,
    /// The ports, TCP or UDP, a cut drops: ringmq's QUIC and gossip, or
    /// a peer's cluster ports.
    pub cluster_ports: Vec<u16>,
}

/// Serialises choosing a subnet within this process.
static SUBNETS: Mutex<()> = Mutex::new(());
/// Numbers the nets of this process: a veth's name must not be reused
/// while the kernel is still destroying the previous one.
static NETS: AtomicU32 = AtomicU32::new(0);

impl Net {
    /// A bridge with `n` namespaces on it, each with its address, up.
    pub fn create(n: usize) -> Net {
        Net::create_with(n, &[])
    }

    /// [`Net::create`], with the nodes `delayed` linked through a
    /// [`super::delay::Delayer`] (no delay until [`Net::set_delay`]).
    pub fn create_with(n: usize, delayed: &[usize]) -> Net {
        let _guard = SUBNETS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        remove_stale();
        let pid = std::process::id();
        let used = output("ip", &["-4", "-o", "addr", "show"]);
        let subnet = (1..=250u8)
            .find(|s| !used.contains(&format!("10.201.{s}.")))
            .expect("a free 10.201.x.0/24");
        let k = NETS.fetch_add(1, Ordering::Relaxed);
        let bridge = format!("rmqb{pid}-{k}");
        run("ip", &["link", "add", &bridge, "type", "bridge"]);
        let mut net = Net {
            delayers: Vec::new(),
            bridge,
            namespaces: Vec::new(),
            veths: Vec::new(),
            ips: Vec::new(),
            cluster_ports: vec![CLUSTER_PORT],
        };
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("10.201.{subnet}.1/24"),
                "dev",
                &net.bridge,
            ],
        );
        run("ip", &["link", "set", &net.bridge, "up"]);
        for i in 0..n {
            let ns = format!("rmq-{pid}-{k}-{i}");
            let veth = format!("rv{pid}-{k}-{i}");
            let ip = Ipv4Addr::new(10, 201, subnet, 11 + i as u8);
            run("ip", &["netns", "add", &ns]);
            net.namespaces.push(ns.clone());
            if delayed.contains(&i) {
                // Two TAPs (they go with their files): one in the node's
                // namespace as its eth0, its twin on the bridge.
                let inner = format!("rd{pid}-{k}-{i}");
                let node = super::delay::open_tap(&inner);
                run("ip", &["link", "set", &inner, "netns", &ns]);
                run("ip", &["-n", &ns, "link", "set", &inner, "name", "eth0"]);
                let bridge_side = super::delay::open_tap(&veth);
                run("ip", &["link", "set", &veth, "master", &net.bridge, "up"]);
                let delayer = super::delay::Delayer::start(node, bridge_side);
                net.delayers.push((i, delayer));
            } else {
                run(
                    "ip",
                    &[
                        "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                    ],
                );
                net.veths.push(veth.clone());
                run("ip", &["link", "set", &veth, "master", &net.bridge, "up"]);
            }
            run(
                "ip",
                &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            );
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
            net.ips.push(ip);
        }
        net
    }

    /// Drops all traffic to and from the cluster ports inside namespace
    /// `i`: its QUIC links and gossip stop, its MQTT clients do not.
    pub fn cut(&self, i: usize) {
        self.drop_cluster_traffic(i, "", "");
    }

    /// Like [`Net::cut`], but only between namespace `i` and the
    /// namespaces `others`: with each side of a partition cut from the
    /// other, the nodes on one side still talk among themselves.
    pub fn cut_from(&self, i: usize, others: &[usize]) {
        let ips: Vec<String> = others.iter().map(|&j| self.ips[j].to_string()).collect();
        let ips = ips.join(", ");
        self.drop_cluster_traffic(
            i,
            &format!("ip saddr {{ {ips} }} "),
            &format!("ip daddr {{ {ips} }} "),
        );
    }

    /// Drops, inside namespace `i`, TCP and UDP on the cluster ports
    /// coming in where `from` matches and going out where `to` does.
    fn drop_cluster_traffic(&self, i: usize, from: &str, to: &str) {
        let ports: Vec<String> = self.cluster_ports.iter().map(u16::to_string).collect();
        let ports = format!("{{ {} }}", ports.join(", "));
        let any = "meta l4proto { tcp, udp } th";
        let rules = format!(
            "table inet {FAULT_TABLE} {{
  chain input {{ type filter hook input priority 0; policy accept;
    {from}{any} dport {ports} drop; {from}{any} sport {ports} drop; }}
  chain output {{ type filter hook output priority 0; policy accept;
    {to}{any} dport {ports} drop; {to}{any} sport {ports} drop; }}
}}
"
        );
        let path = std::env::temp_dir().join(format!("{}.nft", self.namespaces[i]));
        std::fs::write(&path, rules).expect("write the nftables rules");
        let path = path.display().to_string();
        run(
            "ip",
            &["netns", "exec", &self.namespaces[i], "nft", "-f", &path],
        );
        let _ = std::fs::remove_file(path);
    }

    /// Every frame node `i` sends waits `delay` from now on; node `i` must
    /// have been created delayed ([`Net::create_with`]).
    pub fn set_delay(&self, i: usize, delay: Duration) {
        let (_, delayer) = (self.delayers.iter())
            .find(|(node, _)| *node == i)
            .expect("node created with a delayer");
        delayer.set_delay(delay);
    }

    /// Removes the cut from namespace `i`.
    pub fn heal(&self, i: usize) {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.namespaces[i],
                "nft",
                "delete",
                "table",
                "inet",
                FAULT_TABLE,
            ],
        );
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Their TAPs go with them.
        self.delayers.clear();
        for ns in &self.namespaces {
            remove_namespace(ns);
        }
        for veth in &self.veths {
            let _ = Command::new("ip")
                .args(["link", "del", veth])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// Kills whatever still runs in `ns`, then deletes it (its veth pair goes
/// with it).
fn remove_namespace(ns: &str) {
    for pid in output("ip", &["netns", "pids", ns]).split_whitespace() {
        if let Ok(pid) = pid.parse::<libc::pid_t>() {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid
            // was just listed as living in our own test namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// Removes the namespaces and bridges of test processes that are gone.
fn remove_stale() {
    // A killed test process may stay a zombie until its parent reaps it.
    let alive = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
    };
    for line in output("ip", &["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if let Some(rest) = name.strip_prefix("rmq-")
            && let Some(pid) = rest.split('-').next()
            && !alive(pid)
        {
            remove_namespace(name);
        }
    }
    for line in output("ip", &["-o", "link", "show", "type", "bridge"]).lines() {
        let Some(name) = line.split(':').nth(1).map(str::trim) else {
            continue;
        };
        if let Some(rest) = name.strip_prefix("rmqb")
            && let Some(pid) = rest.split('-').next()
            && !alive(pid)
        {
            let _ = Command::new("ip").args(["link", "del", name]).status();
        }
    }
}

/// A cluster of `ringmq` processes (or a peer's, see [`NetCluster::peer`]),
/// one per namespace of a [`Net`].
pub struct NetCluster {
    pub nodes: Vec<Option<Broker>>,
    /// The broker `FAULT_PEER` names instead of ringmq, if any.
    pub peer: Option<Peer>,
    pub node_ids: Vec<String>,
    secret: PathBuf,
    toml: String,
    /// Each node's `--data-dir` (a peer's working dir), kept across its
    /// restarts; empty for an in-memory ringmq cluster.
    data_dirs: Vec<super::data_dir::DataDir>,
    // Last: the nodes are killed (Broker's drop) before their namespaces go.
    pub net: Net,
}

impl NetCluster {
    /// Starts `n` nodes, each seeded with all others, and waits until every
    /// pair is linked. `toml` is the whole configuration file, to which the
    /// `[cluster]` table's `secret_file` is added: put cluster keys under
    /// `[cluster]` in it and top-level keys before that.
    pub fn start(n: usize, toml: &str) -> NetCluster {
        NetCluster::start_with(n, toml, false, &[])
    }

    /// [`NetCluster::start`] with a data dir for each node, so that
    /// persistent sessions are stored and replicated.
    pub fn start_durable(n: usize, toml: &str) -> NetCluster {
        NetCluster::start_with(n, toml, true, &[])
    }

    /// [`NetCluster::start_durable`], the nodes `delayed` linked through a
    /// user-space delayer ([`NetCluster::set_delay`]).
    pub fn start_durable_delayed(n: usize, toml: &str, delayed: &[usize]) -> NetCluster {
        NetCluster::start_with(n, toml, true, delayed)
    }

    fn start_with(n: usize, toml: &str, durable: bool, delayed: &[usize]) -> NetCluster {
        let peer = Peer::from_env();
        let mut net = Net::create_with(n, delayed);
        if let Some(peer) = &peer {
            net.cluster_ports = peer.cluster_ports().to_vec();
        }
        let secret = std::env::temp_dir().join(format!("{}.secret", net.namespaces[0]));
        std::fs::write(&secret, "a test secret, long enough\n").expect("write the secret");
        let toml = if toml.contains("[cluster]") {
            toml.replacen(
                "[cluster]",
                &format!(
                    "[cluster]\nsecret_file = {:?}\nbootstrap_expect = {n}",
                    secret.display().to_string()
                ),
                1,
            )
        } else {
            format!(
                "{toml}\n[cluster]\nsecret_file = {:?}\nbootstrap_expect = {n}\n",
                secret.display().to_string()
            )
        };
        let mut cluster = NetCluster {
            nodes: Vec::new(),
            node_ids: (0..n)
                .map(|i| format!("node-{}", char::from(b'a' + i as u8)))
                .collect(),
            secret,
            toml,
            data_dirs: if durable || peer.is_some() {
                (0..n)
                    .map(|i| super::data_dir::DataDir::new(&format!("netns-{i}")))
                    .collect()
            } else {
                Vec::new()
            },
            peer,
            net,
        };
        for i in 0..n {
            let broker = cluster.spawn(i);
            cluster.nodes.push(Some(broker));
        }
        cluster.wait_linked();
        cluster
    }

    fn spawn(&self, i: usize) -> Broker {
        if self.peer.is_some() {
            return self.try_spawn(i).unwrap_or_else(|why| panic!("{why}"));
        }
        let ip = self.net.ips[i];
        let seeds: Vec<String> = (0..self.net.ips.len())
            .filter(|&j| j != i)
            .map(|j| format!("{}:{CLUSTER_PORT}", self.net.ips[j]))
            .collect();
        let config = super::write_temp_config(&self.toml);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.net.namespaces[i]])
            .arg(env!("CARGO_BIN_EXE_ringmq"))
            .args(["--listen", &format!("{ip}:{MQTT_PORT}")])
            .arg("--config")
            .arg(&config)
            .args(["--cores", "1"])
            .args(["--metrics-listen", &format!("{ip}:{METRICS_PORT}")])
            .args(["--node-id", &self.node_ids[i]])
            .args(["--cluster-listen", &format!("{ip}:{CLUSTER_PORT}")])
            .args(["--seeds", &seeds.join(",")]);
        if let Some(dir) = self.data_dirs.get(i) {
            cmd.args(["--data-dir", dir.arg()]);
        }
        cmd.env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Broker::launch(cmd, Some(config))
    }

    /// Starts a peer's node `i` once, or says why it did not start: a
    /// peer may refuse to start again at once (RMQTT's raft port is left
    /// in TIME_WAIT for a minute by its previous process).
    pub fn try_spawn(&self, i: usize) -> Result<Broker, String> {
        let peer = self.peer.as_ref().expect("a peer cluster");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.net.namespaces[i]]);
        peer.append_node(
            &mut cmd,
            i,
            &self.net.ips,
            MQTT_PORT,
            &self.data_dirs[i].path,
        );
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Broker::launch_listening(&mut cmd, self.addr(i))
    }

    pub fn node(&self, i: usize) -> &Broker {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// Node `i`'s MQTT listener.
    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.net.ips[i], MQTT_PORT))
    }

    pub fn metrics_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.net.ips[i], METRICS_PORT))
    }

    /// Node `i`'s metrics text.
    pub fn metrics(&self, i: usize) -> String {
        get(self.metrics_addr(i), "/metrics").1
    }

    pub fn linked_peers(&self, i: usize) -> usize {
        linked_peers(&self.node(i).logs())
    }

    /// Waits until every running node links to every other running node
    /// and says it is ready (a stopped node is not running for this).
    pub fn wait_linked(&self) {
        self.wait_linked_within(JOIN_TIMEOUT);
    }

    pub fn wait_linked_within(&self, timeout: Duration) -> Duration {
        self.try_wait_linked_within(timeout)
            .unwrap_or_else(|| self.not_linked(timeout))
    }

    /// How long it took every running node to link to every other (for
    /// a peer: a message to cross from each to each), or `None` after
    /// `timeout`.
    pub fn try_wait_linked_within(&self, timeout: Duration) -> Option<Duration> {
        if self.peer.is_some() {
            return all_cross(&self.running_addrs(), timeout);
        }
        let start = Instant::now();
        let running = self.nodes.iter().filter(|n| n.is_some()).count();
        loop {
            let linked = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].is_some())
                .all(|i| {
                    self.linked_peers(i) == running - 1
                        && get(self.metrics_addr(i), "/ready").0 == 200
                        && owns_sessions(self.metrics_addr(i), running, self.nodes.len())
                });
            if linked {
                return Some(start.elapsed());
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The MQTT listeners of the nodes running now.
    pub fn running_addrs(&self) -> Vec<SocketAddr> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .map(|i| self.addr(i))
            .collect()
    }

    fn not_linked(&self, timeout: Duration) -> ! {
        let logs: Vec<String> = (self.nodes.iter().flatten())
            .map(|broker| broker.logs())
            .collect();
        panic!("the cluster did not link within {timeout:?}; logs:\n{logs:#?}");
    }

    /// Waits until node `i` has `peers` links, by its log; returns how long
    /// that took.
    pub fn wait_peers(&self, i: usize, peers: usize, timeout: Duration) -> Duration {
        let start = Instant::now();
        while self.linked_peers(i) != peers {
            assert!(
                start.elapsed() < timeout,
                "node {i} still has {} links, expected {peers}, after {timeout:?}; log:\n{}",
                self.linked_peers(i),
                self.node(i).logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }

    pub fn cut(&self, i: usize) {
        self.net.cut(i);
    }

    pub fn heal(&self, i: usize) {
        self.net.heal(i);
    }

    /// Every frame node `i` sends waits `delay` from now on.
    pub fn set_delay(&self, i: usize, delay: Duration) {
        self.net.set_delay(i, delay);
    }

    /// Cuts the nodes `minority` from all the others, not from each other.
    pub fn partition(&self, minority: &[usize]) {
        let majority: Vec<usize> = (0..self.net.ips.len())
            .filter(|i| !minority.contains(i))
            .collect();
        for &i in minority {
            self.net.cut_from(i, &majority);
        }
    }

    /// SIGSTOP node `i`: it keeps its sockets and answers nothing.
    pub fn freeze(&self, i: usize) {
        self.node(i).signal(libc::SIGSTOP);
    }

    pub fn thaw(&self, i: usize) {
        self.node(i).signal(libc::SIGCONT);
    }
}

impl Nodes for NetCluster {
    fn slots(&mut self) -> &mut Vec<Option<Broker>> {
        &mut self.nodes
    }

    fn spawn_node(&self, i: usize) -> Broker {
        self.spawn(i)
    }

    fn wait_all_linked(&self) {
        self.wait_linked();
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        // A frozen process would ignore nothing but SIGKILL anyway; thaw
        // it so that Broker's drop (SIGKILL, wait) is prompt either way.
        for broker in self.nodes.iter().flatten() {
            let pid = libc::pid_t::try_from(broker.pid()).unwrap();
            // SAFETY: our own unreaped child; kill(2) has no memory-safety
            // preconditions.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
        self.nodes.clear();
        let _ = std::fs::remove_file(&self.secret);
    }
}
