//! The ownership tests' network over real QUIC: the cluster's own
//! transport ([`QuicTransport`]) and request server ([`raftnet::serve`]),
//! one quinn endpoint per node on 127.0.0.1 with the cluster's mutual TLS
//! (a shared secret), and one connection per pair of nodes, as the
//! cluster runtime keeps them. The runtime's main loop is not here: this
//! stands in for it, publishing each node's links and its raft, so the
//! raft's wire, streams and timeouts are what the tests exercise. A
//! partition closes the connections that cross it; healing dials them
//! again.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use openraft::Raft;
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::watch;

use super::NodeId;
use super::raft::TypeConfig;
use super::tests::TestNet;
use crate::cluster::runtime::raftnet::{
    self, LeaderContact, QuicTransport, RaftLinks, RaftServer, Timeouts,
};
use crate::cluster::settings::ClusterTrust;
use crate::cluster::tls;

const SECRET: &str = "the ownership tests' cluster secret";

pub struct QuicNet {
    /// Node `id` is `nodes[id - 1]`.
    nodes: Vec<NetNode>,
    /// The connection from `a` to `b`, under `(a, b)`.
    connections: Mutex<FxHashMap<(NodeId, NodeId), quinn::Connection>>,
}

struct NetNode {
    endpoint: TestEndpoint,
    transport: Arc<QuicTransport>,
    links: watch::Sender<RaftLinks>,
    server: watch::Sender<Option<RaftServer>>,
}

impl QuicNet {
    fn node(&self, id: NodeId) -> &NetNode {
        &self.nodes[(id - 1) as usize]
    }

    fn connections(&self) -> MutexGuard<'_, FxHashMap<(NodeId, NodeId), quinn::Connection>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Connects `a` and `b` (`a` dials), serves each one's requests on
    /// the other's end, and gives both transports the link.
    async fn link(&self, a: NodeId, b: NodeId) {
        let (dialed, accepted) = self.node(a).endpoint.connect(&self.node(b).endpoint).await;
        for (me, peer, connection) in [(a, b, &dialed), (b, a, &accepted)] {
            tokio::spawn(raftnet::serve(
                connection.clone(),
                format!("node-{peer}"),
                vec![peer],
                self.node(me).server.subscribe(),
                Duration::from_secs(10),
            ));
        }
        let mut connections = self.connections();
        connections.insert((a, b), dialed);
        connections.insert((b, a), accepted);
        self.publish(&connections);
    }

    fn publish(&self, connections: &FxHashMap<(NodeId, NodeId), quinn::Connection>) {
        for (index, node) in self.nodes.iter().enumerate() {
            let me = index as NodeId + 1;
            let links = connections
                .iter()
                .filter(|((from, _), _)| *from == me)
                .map(|(&(_, to), connection)| (to, connection.clone()))
                .collect();
            node.links.send_replace(Arc::new(links));
        }
    }

    fn pairs(&self) -> impl Iterator<Item = (NodeId, NodeId)> + use<> {
        let n = self.nodes.len() as NodeId;
        (1..=n).flat_map(move |a| (a + 1..=n).map(move |b| (a, b)))
    }
}

/// A test node's QUIC endpoint on 127.0.0.1, with the cluster's mutual
/// TLS under a shared secret.
pub struct TestEndpoint {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    client: quinn::ClientConfig,
}

impl TestEndpoint {
    pub fn new(name: &str) -> TestEndpoint {
        let trust = ClusterTrust::Secret(SECRET.to_owned());
        let (server, client) = tls::quinn_configs(name, &trust).expect("TLS configs");
        let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().expect("an address"))
            .expect("binds");
        let addr = endpoint.local_addr().expect("bound");
        TestEndpoint {
            endpoint,
            addr,
            client,
        }
    }

    /// Dials `to`: this end's connection, and `to`'s.
    pub async fn connect(&self, to: &TestEndpoint) -> (quinn::Connection, quinn::Connection) {
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), to.addr, tls::SERVER_NAME)
            .expect("dials");
        let accepting = async {
            let incoming = to.endpoint.accept().await.expect("an incoming connection");
            incoming.await.expect("accepts")
        };
        let (dialed, accepted) = tokio::join!(connecting, accepting);
        (dialed.expect("connects"), accepted)
    }
}

impl TestNet for QuicNet {
    type Link = QuicTransport;

    const SLACK: Duration = Duration::from_millis(500);
    /// Slower than in memory: real time, on a machine that may be busy.
    const TIMING: (u64, (u64, u64), u64) = (100, (500, 1000), 2000);

    async fn build(n: NodeId) -> Arc<QuicNet> {
        let nodes = (1..=n)
            .map(|id| {
                let links = watch::Sender::new(RaftLinks::default());
                let timeouts = Timeouts {
                    rpc: Duration::from_secs(2),
                    forward: Self::config().claim_timeout,
                    snapshot: Duration::from_secs(10),
                };
                NetNode {
                    endpoint: TestEndpoint::new(&format!("node-{id}")),
                    transport: Arc::new(QuicTransport::new(links.subscribe(), timeouts)),
                    links,
                    server: watch::Sender::new(None),
                }
            })
            .collect();
        let net = Arc::new(QuicNet {
            nodes,
            connections: Mutex::default(),
        });
        for (a, b) in net.pairs() {
            net.link(a, b).await;
        }
        net
    }

    fn link(net: &Arc<QuicNet>, id: NodeId) -> Arc<QuicTransport> {
        net.node(id).transport.clone()
    }

    fn add(&self, id: NodeId, raft: Raft<TypeConfig>) {
        self.node(id).server.send_replace(Some(RaftServer {
            raft,
            contact: LeaderContact::new(Instant::now()),
        }));
    }

    fn partition(&self, side: &[NodeId]) {
        let mut connections = self.connections();
        connections.retain(|&(a, b), connection| {
            let crosses = side.contains(&a) != side.contains(&b);
            if crosses {
                connection.close(0u32.into(), b"partitioned");
            }
            !crosses
        });
        self.publish(&connections);
    }

    async fn heal_all(&self) {
        let cut: FxHashSet<(NodeId, NodeId)> = {
            let connections = self.connections();
            self.pairs()
                .filter(|pair| !connections.contains_key(pair))
                .collect()
        };
        for (a, b) in cut {
            self.link(a, b).await;
        }
    }
}
