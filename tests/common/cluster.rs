//! Several real `ringmq` processes joined into one cluster on loopback
//! addresses (127.0.0.x), with a shared secret in a file.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::http::{get, sample};
use super::{Broker, STARTUP_TIMEOUT};

/// How long a cluster gets to link every pair of nodes.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Cluster {
    pub nodes: Vec<Option<Broker>>,
    pub cluster_addrs: Vec<SocketAddr>,
    pub node_ids: Vec<String>,
    secret: PathBuf,
    extra_toml: String,
    /// Top-level keys, before the `[cluster]` table.
    top_toml: String,
    /// Each node's `--data-dir`, kept across its restarts; none for an
    /// in-memory cluster.
    data_dirs: Vec<Option<PathBuf>>,
}

/// A free UDP port on `ip`, found by binding port 0 and letting go.
pub fn free_udp_addr(ip: &str) -> SocketAddr {
    let socket = UdpSocket::bind(format!("{ip}:0")).expect("bind a UDP port");
    socket.local_addr().expect("local address")
}

impl Cluster {
    /// Starts `n` nodes on 127.0.0.{11..}, each seeded with all others,
    /// and waits until every pair is linked. `extra_toml` goes into each
    /// node's `[cluster]` table.
    pub fn start(n: usize, extra_toml: &str) -> Cluster {
        Cluster::start_with(n, "", extra_toml, false)
    }

    /// [`Cluster::start`] with a data dir per node (removed on drop).
    pub fn start_durable(n: usize, extra_toml: &str) -> Cluster {
        Cluster::start_with(n, "", extra_toml, true)
    }

    /// [`Cluster::start_durable`] with `top_toml` as each node's top-level
    /// keys.
    pub fn start_durable_with(n: usize, top_toml: &str, extra_toml: &str) -> Cluster {
        Cluster::start_with(n, top_toml, extra_toml, true)
    }

    fn start_with(n: usize, top_toml: &str, extra_toml: &str, durable: bool) -> Cluster {
        let tag = super::unique_id("c");
        let secret = std::env::temp_dir().join(format!(
            "ringmq-cluster-secret-{}-{tag}",
            std::process::id()
        ));
        std::fs::write(&secret, "a test secret, long enough\n").expect("write the secret");
        let cluster_addrs: Vec<SocketAddr> = (0..n)
            .map(|i| free_udp_addr(&format!("127.0.0.{}", 11 + i)))
            .collect();
        let node_ids: Vec<String> = (0..n).map(|i| format!("{tag}-n{i}")).collect();
        let data_dirs = node_ids
            .iter()
            .map(|id| {
                durable.then(|| {
                    std::env::temp_dir().join(format!("ringmq-data-{}-{id}", std::process::id()))
                })
            })
            .collect();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            cluster_addrs,
            node_ids,
            secret,
            extra_toml: extra_toml.to_owned(),
            top_toml: top_toml.to_owned(),
            data_dirs,
        };
        for i in 0..n {
            let broker = cluster.spawn(i);
            cluster.nodes.push(Some(broker));
        }
        cluster.wait_linked();
        cluster
    }

    /// Starts one more node outside the cluster's list, with `node_id`,
    /// seeded with every node of the cluster.
    pub fn spawn_extra(&self, node_id: &str) -> Broker {
        let addr = free_udp_addr("127.0.0.19");
        self.spawn_as(node_id, addr, &self.cluster_addrs)
    }

    fn spawn(&self, i: usize) -> Broker {
        let others: Vec<SocketAddr> = self
            .cluster_addrs
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, addr)| *addr)
            .collect();
        self.spawn_as(&self.node_ids[i], self.cluster_addrs[i], &others)
    }

    /// Starts node `i` again after [`Cluster::kill`], without waiting for
    /// its links (the others may be down).
    pub fn start_again(&mut self, i: usize) {
        let broker = self.spawn(i);
        self.nodes[i] = Some(broker);
    }

    fn spawn_as(&self, node_id: &str, listen: SocketAddr, seeds: &[SocketAddr]) -> Broker {
        let seeds: Vec<String> = seeds.iter().map(SocketAddr::to_string).collect();
        // The whole cluster forms the ownership raft, however many nodes.
        let toml = format!(
            "{}\n[cluster]\nsecret_file = {:?}\nbootstrap_expect = {}\n{}\n",
            self.top_toml,
            self.secret.display().to_string(),
            self.node_ids.len(),
            self.extra_toml
        );
        let listen = listen.to_string();
        let seeds = seeds.join(",");
        let data_dir = self
            .node_ids
            .iter()
            .position(|id| id == node_id)
            .and_then(|i| self.data_dirs[i].as_ref())
            .map(|dir| dir.display().to_string());
        let mut args = vec![
            "--cores",
            "1",
            "--metrics-listen",
            "127.0.0.1:0",
            "--node-id",
            node_id,
            "--cluster-listen",
            &listen,
            "--seeds",
            &seeds,
        ];
        if let Some(dir) = &data_dir {
            args.extend(["--data-dir", dir]);
        }
        Broker::start_with_config(&toml, &args)
    }

    pub fn node(&self, i: usize) -> &Broker {
        self.nodes[i].as_ref().expect("node is running")
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.node(i).addr
    }

    /// The peers node `i` has a link to, by its log (links up minus down).
    pub fn linked_peers(&self, i: usize) -> usize {
        linked_peers(&self.node(i).logs())
    }

    /// Waits until every running node links to every other running node
    /// and says it is ready.
    pub fn wait_linked(&self) {
        let running = self.nodes.iter().filter(|n| n.is_some()).count();
        let deadline = Instant::now() + JOIN_TIMEOUT;
        loop {
            let linked = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].is_some())
                .all(|i| {
                    self.linked_peers(i) == running - 1
                        && get(self.node(i).metrics_addr(), "/ready").0 == 200
                        && owns_sessions(self.node(i).metrics_addr(), running, self.nodes.len())
                });
            if linked {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .flatten()
                    .map(|broker| broker.logs())
                    .collect();
                panic!("the cluster did not link within {JOIN_TIMEOUT:?}; logs:\n{logs:#?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until node `i`'s `metric` reads `expected` (the cluster's
    /// figures are refreshed ten times a second), and fails if it never
    /// does or goes past it.
    pub fn wait_sample(&self, i: usize, metric: &str, expected: f64) {
        self.wait_sample_within(i, metric, expected, Duration::from_secs(5));
    }

    /// [`Cluster::wait_sample`] for up to `within`.
    pub fn wait_sample_within(&self, i: usize, metric: &str, expected: f64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let value = sample(&self.metrics(i), metric);
            assert!(
                value <= expected,
                "{metric} on node {i} is {value}, past {expected}"
            );
            if value == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{metric} on node {i} stayed at {value}, expected {expected}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Node `i`'s metrics text.
    /// A 503 (a shard that did not answer the scrape within its second,
    /// which a loaded test machine can cause) is asked again.
    pub fn metrics(&self, i: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = get(self.node(i).metrics_addr(), "/metrics");
            if status == 200 || Instant::now() > deadline {
                return body;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Nodes for Cluster {
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

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.secret);
        // The nodes still run (they are killed when dropped, after this);
        // their open files go with the dir's last link.
        for dir in self.data_dirs.iter().flatten() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The peers a node has a link to, by its log: `cluster link up` lines
/// minus `cluster link down` lines, per `peer=`.
pub fn linked_peers(logs: &str) -> usize {
    let mut peers: Vec<&str> = Vec::new();
    for line in logs.lines() {
        let Some(peer) = field(line, "peer=") else {
            continue;
        };
        if line.contains("cluster link up") {
            if !peers.contains(&peer) {
                peers.push(peer);
            }
        } else if line.contains("cluster link down") {
            peers.retain(|p| *p != peer);
        }
    }
    peers.len()
}

/// The value of `key` (`peer=`) in a log line, without quotes.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(key)? + key.len()..];
    let rest = rest.trim_start_matches('"');
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"')
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// What the cluster on loopback and the one in network namespaces share:
/// nodes killed and started again as new incarnations.
pub trait Nodes {
    fn slots(&mut self) -> &mut Vec<Option<Broker>>;
    fn spawn_node(&self, i: usize) -> Broker;
    fn wait_all_linked(&self);

    /// `kill -9` node `i`, and waits for the process to be gone.
    fn kill(&mut self, i: usize) {
        if let Some(mut broker) = self.slots()[i].take() {
            broker.signal(libc::SIGKILL);
            broker.wait_exit(STARTUP_TIMEOUT);
        }
    }

    /// SIGTERM to node `i`; waits for a clean exit and returns its log.
    fn stop(&mut self, i: usize) -> String {
        let Some(mut broker) = self.slots()[i].take() else {
            return String::new();
        };
        broker.signal(libc::SIGTERM);
        let status = broker.wait_exit(STARTUP_TIMEOUT);
        assert!(status.success(), "node {i} exited with {status}");
        broker.logs()
    }

    /// Starts node `i` again (a new incarnation, same address) and waits
    /// for every link.
    fn restart(&mut self, i: usize) {
        self.kill(i);
        let broker = self.spawn_node(i);
        self.slots()[i] = Some(broker);
        self.wait_all_linked();
    }
}

/// Whether a node can take CONNECTs: in a cluster every CONNECT claims
/// its client id in the ownership raft, so a node must know a leader it
/// can reach (`ringmq_ownership_has_quorum`). Asked only while a majority
/// of the cluster's `total` nodes is `running`; without one no node has
/// a leader, and a test that stopped that many waits for its links only.
pub fn owns_sessions(metrics: SocketAddr, running: usize, total: usize) -> bool {
    if running * 2 <= total {
        return true;
    }
    let (status, text) = get(metrics, "/metrics");
    status == 200
        && text
            .lines()
            .any(|line| line == "ringmq_ownership_has_quorum 1")
}
