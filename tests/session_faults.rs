//! Persistent sessions under cluster faults, with real `ringmq` nodes in
//! network namespaces (tests/common/netns.rs), each with a data dir, so
//! sessions are stored and replicated (`replication_factor` 2). The
//! subscriber behaves as a client behind a load balancer: when its node
//! closes the connection or refuses it, it tries the next node, resuming
//! its session (clean start off). Each test prints what the subscriber
//! lost, received twice and out of order, and asserts nothing
//! acknowledged was lost; RELIABILITY.md records the tallies.
//!
//! Needs root, `ip` and `nft`, as tests/cluster_faults.rs does.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::netns::NetCluster;
use common::raw::Raw;
use common::tally::{parse, tally};
use common::wire::{self, Connect, Props, Pub};
use common::{RECV_TIMEOUT, unique_id};

/// Queues never drop here: only the cluster is measured.
const BROKER_TOML: &str = "max_queued_messages = 1000000\n";
/// Longest a client behind a load balancer keeps trying the nodes in turn.
const ROAM_PATIENCE: Duration = Duration::from_secs(60);

/// Every roamer's will, which must never go out: its client always
/// comes back within the will's delay.
const WILL_TOPIC: &str = "roamer-wills";
const WILL_DELAY_SECS: u32 = 30;

fn persistent(id: &str) -> Connect {
    Connect::new(wire::V5, id)
        .clean(false)
        .props(Props::new().u32(wire::SESSION_EXPIRY, 3600))
        .will(
            wire::Will::new(WILL_TOPIC, id.as_bytes())
                .qos(1)
                .props(Props::new().u32(wire::WILL_DELAY, WILL_DELAY_SECS)),
        )
}

/// A persistent subscriber behind a load balancer: it stays on a node
/// until that node ends or refuses its connection, then tries the next.
struct Roamer {
    id: String,
    nodes: Vec<SocketAddr>,
    /// The node it is on, or tries next.
    at: usize,
    client: Option<Raw>,
    received: Vec<(String, u32)>,
    /// The nodes it was served by, in order, and when.
    served: Vec<(usize, Instant)>,
}

impl Roamer {
    async fn start(nodes: Vec<SocketAddr>, at: usize, topic: &str) -> Roamer {
        let id = unique_id("roamer");
        let (mut client, _) = Raw::connect_ok(nodes[at], persistent(&id)).await;
        client.subscribe(1, &[(topic, 1)]).await;
        Roamer {
            id,
            nodes,
            at,
            client: Some(client),
            received: Vec::new(),
            served: vec![(at, Instant::now())],
        }
    }

    /// Connects to the node it is at, or the ones after it in turn, until
    /// one serves its session.
    async fn reconnect(&mut self) {
        let deadline = Instant::now() + ROAM_PATIENCE;
        loop {
            let addr = self.nodes[self.at];
            if let Some((client, connack)) = Raw::try_connect(addr, persistent(&self.id)).await
                && connack.code == 0
            {
                assert!(
                    connack.session_present,
                    "node {} served {} without its session",
                    self.at, self.id
                );
                self.client = Some(client);
                self.served.push((self.at, Instant::now()));
                return;
            }
            assert!(Instant::now() < deadline, "no node served {}", self.id);
            self.at = (self.at + 1) % self.nodes.len();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Receives for `within`, acknowledging each message and moving on
    /// when its node lets it go, or until `done` says all is in.
    async fn receive(&mut self, within: Duration, done: impl Fn(&[(String, u32)]) -> bool) {
        let deadline = Instant::now() + within;
        while !done(&self.received) && Instant::now() < deadline {
            let Some(client) = self.client.as_mut() else {
                self.reconnect().await;
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match client.try_recv(left).await {
                Ok(packet) if packet.kind() == wire::PUBLISH => {
                    let publish = packet.publish(wire::V5);
                    if client
                        .send_lossy(&wire::ack(wire::PUBACK, publish.pkid))
                        .await
                    {
                        self.received.push(parse(&publish.payload));
                    }
                }
                Ok(packet) if packet.kind() == wire::DISCONNECT => {
                    println!(
                        "node {} disconnected {} with reason {:#04x}",
                        self.at,
                        self.id,
                        packet.disconnect_reason()
                    );
                    self.move_on();
                }
                Ok(_) => {}
                Err(common::raw::RecvError::Closed) => self.move_on(),
                Err(common::raw::RecvError::Timeout) => {}
            }
        }
    }

    fn move_on(&mut self) {
        self.client = None;
        self.at = (self.at + 1) % self.nodes.len();
    }
}

/// Publishes `name:0`, `name:1`, ... at QoS 1 on `topic` through `addr`,
/// one at a time, until `stop`; returns how many were acknowledged.
fn spawn_publisher(
    addr: SocketAddr,
    topic: &str,
    name: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(String, u32)> {
    let topic = topic.to_owned();
    tokio::spawn(async move {
        let (mut publisher, _) = Raw::connect_ok(addr, Connect::v5(&unique_id("pub"))).await;
        let mut acked = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let packet_id = (acked % 60_000) as u16 + 1;
            let payload = format!("{name}:{acked}");
            publisher
                .publish(Pub::new(&topic, payload.as_bytes()).qos(1, packet_id))
                .await;
            acked += 1;
            // Steady, not saturating: the test is about where messages
            // go, and a debug build on two cores must keep up.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (name.to_owned(), acked)
    })
}

/// Waits until node `i` keeps `count` session copies.
fn wait_for_copies(cluster: &NetCluster, i: usize, count: f64) {
    let deadline = Instant::now() + RECV_TIMEOUT;
    while common::http::sample(&cluster.metrics(i), "ringmq_cluster_session_copies") != count {
        assert!(
            Instant::now() < deadline,
            "node {i} never held {count} session copies"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Node C, under a persistent subscriber, is cut off from A and B (its
/// cluster traffic only: its MQTT clients could stay) for `CUT_SECS`
/// (10 s by default) while publishers on A and on C go on. C is the
/// minority: it lets the subscriber go, the subscriber resumes its
/// session on A, and after the heal C drops its stale copy and sends on
/// what its own publisher published for the session meanwhile. Nothing
/// acknowledged is lost, and the subscriber's will never goes out: its
/// client was back well within the will's delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_lets_its_persistent_sessions_go_to_the_majority() {
    if !common::netns::available() {
        return;
    }
    let cut = Duration::from_secs(
        std::env::var("CUT_SECS")
            .ok()
            .and_then(|secs| secs.parse().ok())
            .unwrap_or(10),
    );
    let cluster = NetCluster::start_durable(3, BROKER_TOML);
    let nodes: Vec<SocketAddr> = (0..3).map(|i| cluster.addr(i)).collect();
    let topic = unique_id("part");
    let (mut wills, _) = Raw::connect_ok(cluster.addr(1), Connect::v5(&unique_id("wills"))).await;
    wills.subscribe(1, &[(WILL_TOPIC, 1)]).await;
    let mut roamer = Roamer::start(nodes, 2, &topic).await;
    // C's replica is A, the next node by id after it.
    wait_for_copies(&cluster, 0, 1.0);

    let stop = Arc::new(AtomicBool::new(false));
    let publishers = [
        spawn_publisher(cluster.addr(0), &topic, "a", stop.clone()),
        spawn_publisher(cluster.addr(2), &topic, "c", stop.clone()),
    ];
    roamer.receive(Duration::from_secs(2), |_| false).await;
    cluster.cut(2);
    let cut_at = Instant::now();
    roamer.receive(cut, |_| false).await;
    cluster.heal(2);
    let relinked = cluster.wait_linked_within(Duration::from_secs(30));
    roamer.receive(Duration::from_secs(2), |_| false).await;
    stop.store(true, Ordering::Relaxed);
    let mut published = BTreeMap::new();
    for publisher in publishers {
        let (name, acked) = publisher.await.expect("the publisher runs to the end");
        published.insert(name, acked);
    }
    let all_in = |received: &[(String, u32)]| {
        published.iter().all(|(name, &acked)| {
            let got: std::collections::BTreeSet<u32> = (received.iter())
                .filter(|(from, _)| from == name)
                .map(|(_, n)| *n)
                .collect();
            (0..acked).all(|n| got.contains(&n))
        })
    };
    roamer.receive(RECV_TIMEOUT, all_in).await;

    let tally = tally(&published, &roamer.received);
    let moves: Vec<String> = (roamer.served.iter())
        .map(|(node, at)| {
            let since = at.saturating_duration_since(cut_at).as_secs_f64();
            format!("{} at {since:+.1} s", char::from(b'A' + *node as u8))
        })
        .collect();
    println!(
        "partition of the subscriber's node for {cut:?}: acknowledged {published:?}, {} received: {tally}; served by {}; relinked {:.1} s after the heal",
        roamer.received.len(),
        moves.join(", "),
        relinked.as_secs_f64()
    );
    if std::env::var_os("SHOW_LOGS").is_some() {
        for i in 0..3 {
            println!("--- node {i}\n{}", cluster.node(i).logs());
        }
    }
    assert_eq!(tally.lost, 0, "{tally}");
    assert!(
        roamer.served.len() > 1 && roamer.served.iter().skip(1).all(|(node, _)| *node != 2),
        "the subscriber should have left C for the majority: {moves:?}"
    );
    match wills.try_recv(Duration::from_secs(1)).await {
        Ok(packet) if packet.kind() == wire::PUBLISH => {
            panic!("a will went out: {:?}", packet.publish(wire::V5).payload)
        }
        _ => {}
    }
}
