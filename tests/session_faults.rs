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
//!
//! The same faults and clients run against another broker's cluster
//! with `FAULT_PEER=rmqtt RMQTT=/path/to/rmqttd` or `FAULT_PEER=vibemq
//! VIBEMQ=/path/to/vibemq` (tests/common/peers.rs; run one test at a
//! time). The tally is counted the same way; what only ringmq promises
//! (nothing acknowledged lost, no will, the subscriber on the majority
//! side, the session kept) is then printed instead of asserted, and the
//! checks that read ringmq's metrics or logs are skipped. A peer's run
//! asserts only that it was valid: the clients connected and messages
//! crossed between nodes before the fault.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::cluster::Nodes;
use common::netns::NetCluster;
use common::peers::Peer;
use common::raw::Raw;
use common::tally::{parse, tally};
use common::wire::{self, Connect, Props, Pub};
use common::{RECV_TIMEOUT, unique_id};

/// Queues never drop here: only the cluster is measured.
const BROKER_TOML: &str = "max_queued_messages = 1000000\n";
/// Longest a client behind a load balancer keeps trying the nodes in turn.
const ROAM_PATIENCE: Duration = Duration::from_secs(60);

/// How long a peer's node may keep failing to start again.
const PEER_RESTART_PATIENCE: Duration = Duration::from_secs(120);

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
    topic: String,
    /// The QoS it subscribes with.
    qos: u8,
    /// QoS 2 packet ids it answered PUBREC for and awaits PUBREL on: a
    /// PUBLISH again with one of these is the same message (the client's
    /// half of exactly once), kept across its connections as its session
    /// is.
    awaiting_release: std::collections::HashSet<u16>,
    nodes: Vec<SocketAddr>,
    /// The node it is on, or tries next.
    at: usize,
    client: Option<Raw>,
    received: Vec<(String, u32)>,
    /// When each of `received` arrived.
    arrivals: Vec<Instant>,
    /// The nodes it was served by, in order, and when, and whether with
    /// its session (false: a fresh one, subscribed again).
    served: Vec<(usize, Instant, bool)>,
}

impl Roamer {
    async fn start(nodes: Vec<SocketAddr>, at: usize, topic: &str, qos: u8) -> Roamer {
        let id = unique_id("roamer");
        let (mut client, _) = Raw::connect_ok(nodes[at], persistent(&id)).await;
        client.subscribe(1, &[(topic, qos)]).await;
        Roamer {
            id,
            topic: topic.to_owned(),
            qos,
            awaiting_release: Default::default(),
            nodes,
            at,
            client: Some(client),
            received: Vec::new(),
            arrivals: Vec::new(),
            served: vec![(at, Instant::now(), true)],
        }
    }

    /// Connects to the node it is at, or the ones after it in turn, until
    /// one serves it: with its session, or with a fresh one (no node had
    /// it), on which it subscribes again, as a client must.
    async fn reconnect(&mut self) {
        let deadline = Instant::now() + ROAM_PATIENCE;
        loop {
            let addr = self.nodes[self.at];
            if let Some((mut client, connack)) = Raw::try_connect(addr, persistent(&self.id)).await
                && connack.code == 0
            {
                if !connack.session_present {
                    // The SUBACK is taken in `receive`, among the messages.
                    let filters = [(self.topic.as_str(), self.qos)];
                    client
                        .send(&wire::subscribe(wire::V5, 1, &filters, Props::new()))
                        .await;
                }
                self.client = Some(client);
                self.served
                    .push((self.at, Instant::now(), connack.session_present));
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
                    let (ack, first) = match publish.qos {
                        2 => (wire::PUBREC, self.awaiting_release.insert(publish.pkid)),
                        _ => (wire::PUBACK, true),
                    };
                    if client.send_lossy(&wire::ack(ack, publish.pkid)).await && first {
                        self.received.push(parse(&publish.payload));
                        self.arrivals.push(Instant::now());
                    }
                }
                Ok(packet) if packet.kind() == wire::PUBREL => {
                    let (pkid, _) = packet.ack();
                    if client.send_lossy(&wire::ack(wire::PUBCOMP, pkid)).await {
                        self.awaiting_release.remove(&pkid);
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

    /// The longest time without a message between `since` and `until`
    /// (while the publishers went on): how long the subscriber waited for
    /// delivery to recover from a fault at `since`, or, if it never did,
    /// the time from its last message to `until`.
    fn longest_gap(&self, since: Instant, until: Instant) -> Duration {
        let between =
            (self.arrivals.iter()).filter(|&&arrival| since <= arrival && arrival <= until);
        let (mut longest, mut last) = (Duration::ZERO, since);
        for &arrival in between.chain([&until]) {
            longest = longest.max(arrival - last);
            last = arrival;
        }
        longest
    }

    /// Whether every connection after the first resumed its session.
    fn kept_its_session(&self) -> bool {
        self.served.iter().all(|(_, _, resumed)| *resumed)
    }
}

/// The broker under test, for the printed results.
fn broker_name(peer: Option<&Peer>) -> &'static str {
    peer.map_or("ringmq", Peer::name)
}

/// A publisher task and what it counted, kept if the task fails.
struct Publisher {
    name: &'static str,
    acked: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<Duration>,
}

/// Publishes `name:0`, `name:1`, ... at `qos` on `topic` through `addr`,
/// one at a time, until `stop`; counts those acknowledged, and returns
/// the longest wait for a PUBACK. It waits for each up to the cut plus
/// 45 s: on a node cut off from every peer, a message for a persistent
/// session is acknowledged only once a replica is back and holds it.
fn spawn_publisher(
    addr: SocketAddr,
    topic: &str,
    name: &'static str,
    qos: u8,
    stop: Arc<AtomicBool>,
) -> Publisher {
    let topic = topic.to_owned();
    let acked = Arc::new(AtomicU32::new(0));
    let count = acked.clone();
    let task = tokio::spawn(async move {
        let (mut publisher, _) = Raw::connect_ok(addr, Connect::v5(&unique_id("pub"))).await;
        let mut longest = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            let n = count.load(Ordering::Relaxed);
            let packet_id = (n % 60_000) as u16 + 1;
            let payload = format!("{name}:{n}");
            let sent = Instant::now();
            let patience = cut_length() + Duration::from_secs(45);
            publisher
                .publish_within(
                    Pub::new(&topic, payload.as_bytes()).qos(qos, packet_id),
                    patience,
                )
                .await;
            longest = longest.max(sent.elapsed());
            count.store(n + 1, Ordering::Relaxed);
            // Steady, not saturating: the test is about where messages
            // go, and a debug build on two cores must keep up.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        longest
    });
    Publisher { name, acked, task }
}

impl Publisher {
    /// How many were acknowledged, and the longest wait for a PUBACK, or
    /// why the publisher stopped early (its broker's failure: it never
    /// waits more than the cut plus 45 s for one).
    async fn finish(self) -> (String, u32, Result<Duration, String>) {
        let outcome = self
            .task
            .await
            .map_err(|failed| match failed.try_into_panic() {
                Ok(why) => (why.downcast_ref::<String>().cloned())
                    .or_else(|| why.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default(),
                Err(failed) => failed.to_string(),
            });
        let acked = self.acked.load(Ordering::Relaxed);
        (self.name.to_owned(), acked, outcome)
    }
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

/// How long a test's cut lasts: `CUT_SECS`, 10 s by default.
fn cut_length() -> Duration {
    let secs = std::env::var("CUT_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok());
    Duration::from_secs(secs.unwrap_or(10))
}

fn name(node: usize) -> char {
    char::from(b'A' + node as u8)
}

/// What a test does to the cluster for [`cut_length`].
enum Fault<'a> {
    /// These nodes are cut off from the rest (not from each other).
    Partition(&'a [usize]),
    /// Every frame this node sends waits this long.
    Delay(usize, Duration),
    /// This node is killed (SIGKILL) and stays dead.
    Kill(usize),
}

/// `n` nodes; the persistent subscriber starts on node `at`, a publisher
/// each on node A and on node `at` (on another survivor if `at` is
/// killed); after 2 s `fault` for [`cut_length`], then it ends. For
/// ringmq, asserts that nothing acknowledged was lost and that the
/// subscriber's will (30 s delay) never went out, and, for a partition,
/// that the subscriber ended on the majority side; prints the tally,
/// the longest time the subscriber went without a message from the
/// fault on, and whether it kept its session.
async fn under_fault(n: usize, fault: Fault<'_>, at: usize, qos: u8) {
    let cut = cut_length();
    let (cluster, minority) = match fault {
        Fault::Partition(minority) => (NetCluster::start_durable(n, BROKER_TOML), minority),
        Fault::Delay(node, _) => (
            NetCluster::start_durable_delayed(n, BROKER_TOML, &[node]),
            &[][..],
        ),
        Fault::Kill(_) => (NetCluster::start_durable(n, BROKER_TOML), &[][..]),
    };
    let mut cluster = cluster;
    let peer = cluster.peer.clone();
    let broker = broker_name(peer.as_ref());
    let nodes: Vec<SocketAddr> = (0..n).map(|i| cluster.addr(i)).collect();
    let topic = unique_id("part");
    let witness = (0..n).find(|i| !minority.contains(i)).expect("a majority");
    let (mut wills, _) =
        Raw::connect_ok(cluster.addr(witness), Connect::v5(&unique_id("wills"))).await;
    wills.subscribe(1, &[(WILL_TOPIC, 1)]).await;
    let mut roamer = Roamer::start(nodes, at, &topic, qos).await;
    if peer.is_none() {
        // The copy is on the next node by id.
        wait_for_copies(&cluster, (at + 1) % n, 1.0);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let second = match fault {
        Fault::Kill(killed) => (1..n).find(|&i| i != killed).expect("a survivor"),
        _ => at,
    };
    let publishers = [
        spawn_publisher(cluster.addr(0), &topic, "a", qos, stop.clone()),
        spawn_publisher(cluster.addr(second), &topic, "m", qos, stop.clone()),
    ];
    roamer.receive(Duration::from_secs(2), |_| false).await;
    // A valid run for a peer: what A's publisher sent reached the
    // subscriber's node before the fault (ringmq's checks below cover
    // that, and a loaded machine may take longer than these 2 s).
    let crossed = roamer
        .received
        .iter()
        .filter(|(from, _)| from == "a")
        .count();
    assert!(
        peer.is_none() || at == 0 || crossed > 0,
        "{broker}: nothing crossed from A to {} before the fault; the cluster was not formed",
        name(at)
    );
    let label = match fault {
        Fault::Partition(minority) => {
            cluster.partition(minority);
            let names: String = minority.iter().map(|&i| name(i)).collect();
            format!("{names} cut off")
        }
        Fault::Delay(node, delay) => {
            cluster.set_delay(node, delay);
            format!("{} delayed {delay:?}", name(node))
        }
        Fault::Kill(node) => {
            cluster.kill(node);
            format!("{} killed (SIGKILL)", name(node))
        }
    };
    let cut_at = Instant::now();
    roamer.receive(cut, |_| false).await;
    match fault {
        Fault::Partition(minority) => minority.iter().for_each(|&i| cluster.heal(i)),
        Fault::Delay(node, _) => cluster.set_delay(node, Duration::ZERO),
        Fault::Kill(_) => {}
    }
    let relinked = cluster.try_wait_linked_within(Duration::from_secs(30));
    roamer.receive(Duration::from_secs(2), |_| false).await;
    stop.store(true, Ordering::Relaxed);
    let stopped_at = Instant::now();
    let mut published = BTreeMap::new();
    let mut longest_waits = Vec::new();
    for publisher in publishers {
        let (name, acked, outcome) = publisher.finish().await;
        match outcome {
            Ok(longest) => longest_waits.push(format!("{name} {:.2} s", longest.as_secs_f64())),
            Err(why) if peer.is_some() => longest_waits.push(format!("{name} stopped: {why}")),
            Err(why) => panic!("publisher {name} failed: {why}"),
        }
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
    let each: Vec<String> = (published.iter())
        .map(|(name, &acked)| {
            let one = BTreeMap::from([(name.clone(), acked)]);
            format!("{name}: {}", common::tally::tally(&one, &roamer.received))
        })
        .collect();
    let moves: Vec<String> = (roamer.served.iter())
        .map(|(node, when, resumed)| {
            let since = when.saturating_duration_since(cut_at).as_secs_f64();
            let how = if *resumed { "" } else { " (fresh session)" };
            format!("{} at {since:+.1} s{how}", name(*node))
        })
        .collect();
    let will = match wills.try_recv(Duration::from_secs(1)).await {
        Ok(packet) if packet.kind() == wire::PUBLISH => Some(packet.publish(wire::V5).payload),
        _ => None,
    };
    let relinked = relinked.map_or("not within 30 s".to_owned(), |after| {
        format!("{:.1} s", after.as_secs_f64())
    });
    println!(
        "{broker}: QoS {qos}, {n} nodes, {label} for {cut:?}, subscriber on {}: acknowledged {published:?} (m: on {}), longest wait for a PUBACK {}, {} received: {tally} ({}); longest without a message from the fault on {:.1} s; served by {}; session kept: {}; will sent: {}; relinked {relinked} after the end",
        name(at),
        name(second),
        longest_waits.join(", "),
        roamer.received.len(),
        each.join(", "),
        roamer.longest_gap(cut_at, stopped_at).as_secs_f64(),
        moves.join(", "),
        roamer.kept_its_session(),
        will.is_some(),
    );
    if std::env::var_os("SHOW_LOGS").is_some() {
        for i in (0..n).filter(|&i| cluster.nodes[i].is_some()) {
            println!("--- node {i}\n{}", cluster.node(i).logs());
        }
    }
    if peer.is_some() {
        return;
    }
    assert_ne!(
        relinked, "not within 30 s",
        "the cluster did not link again"
    );
    assert_eq!(tally.lost, 0, "{tally}");
    if qos == 2 {
        assert_eq!(tally.duplicated, 0, "QoS 2 is exactly once: {tally}");
    }
    if !minority.is_empty() {
        let (last, _, _) = roamer.served[roamer.served.len() - 1];
        assert!(
            roamer.served.len() > 1 && !minority.contains(&last),
            "the subscriber should have left for the majority: {moves:?}"
        );
    }
    assert!(will.is_none(), "a will went out: {will:?}");
}

/// Node C of three, under a persistent subscriber, is cut off from A and
/// B (its cluster traffic only: its MQTT clients could stay) while
/// publishers on A and on C go on. C is the minority: it lets the
/// subscriber go, the subscriber resumes its session on A from A's copy,
/// and after the heal C drops its stale copy and sends on what its own
/// publisher published for the session meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_lets_its_persistent_sessions_go_to_the_majority() {
    if !common::netns::available() {
        return;
    }
    under_fault(3, Fault::Partition(&[2]), 2, 1).await;
}

/// As above at QoS 2 throughout: nothing lost, nothing twice. The cut-off
/// node sends a QoS 2 PUBLISH (or PUBREL) only once its copy has the
/// flight (`src/shard/state/commit.rs`); before that, what it sent in the
/// second before it noticed the cut arrived twice, under a new packet id
/// from the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_keeps_qos2_exactly_once() {
    if !common::netns::available() {
        return;
    }
    under_fault(3, Fault::Partition(&[2]), 2, 2).await;
}

/// Five nodes, B and D cut off together from A, C and E: the subscriber
/// on B resumes on the majority side from C's copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_of_five_lets_its_persistent_sessions_go_to_the_majority() {
    if !common::netns::available() {
        return;
    }
    under_fault(5, Fault::Partition(&[1, 3]), 1, 1).await;
}

/// Five nodes, D and E cut off together: D's subscriber has its only
/// copy on E, on the same side, so the majority has none to resume it
/// from. It starts afresh there (session present 0, subscribing again),
/// and after the heal what D held for it arrives from D's stale copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_copies_are_all_cut_off_starts_afresh_and_gets_them_after_the_heal() {
    if !common::netns::available() {
        return;
    }
    under_fault(5, Fault::Partition(&[3, 4]), 3, 1).await;
}

/// Node C of three, under a persistent QoS 1 subscriber, is killed with
/// SIGKILL (and stays dead) while publishers on A and B go on: the
/// subscriber reconnects through A, as in tests/takeover.rs's
/// `killing_the_node_under_a_persistent_subscriber_loses_nothing_acknowledged`
/// on loopback, here in namespaces so that peers run it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_under_a_persistent_subscriber_loses_nothing() {
    if !common::netns::available() {
        return;
    }
    under_fault(3, Fault::Kill(2), 2, 1).await;
}

/// Node C of three sends everything 200 ms late for [`cut_length`] (user
/// space, tests/common/delay.rs), under a persistent subscriber and
/// publishers on A and C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_200_ms_away_loses_nothing() {
    if !common::netns::available() {
        return;
    }
    under_fault(3, Fault::Delay(2, Duration::from_millis(200)), 2, 1).await;
}

/// A persistent QoS 1 publisher behind a load balancer, numbering its
/// messages: when its node ends or refuses its connection it tries the
/// next node, resumes its session and sends the message without a
/// PUBACK again (DUP), as a client must. Returns how many were
/// acknowledged and how many of its connections found no session.
async fn roaming_publisher(
    nodes: Vec<SocketAddr>,
    topic: String,
    stop: Arc<AtomicBool>,
) -> (String, u32, u32) {
    let id = unique_id("roaming-pub");
    let connect = || {
        Connect::new(wire::V5, &id)
            .clean(false)
            .props(Props::new().u32(wire::SESSION_EXPIRY, 3600))
    };
    let mut at = 0;
    let mut client: Option<Raw> = None;
    let mut acked = 0u32;
    let mut sessions_lost = 0;
    let mut resend = false;
    let deadline_for = || Instant::now() + ROAM_PATIENCE;
    let mut deadline = deadline_for();
    while !stop.load(Ordering::Relaxed) {
        let Some(publisher) = client.as_mut() else {
            assert!(Instant::now() < deadline, "no node served {id}");
            match Raw::try_connect(nodes[at], connect()).await {
                Some((raw, connack)) if connack.code == 0 => {
                    let first = acked == 0 && !resend;
                    if !first && !connack.session_present {
                        sessions_lost += 1;
                    }
                    client = Some(raw);
                    deadline = deadline_for();
                }
                _ => {
                    at = (at + 1) % nodes.len();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            continue;
        };
        let packet_id = (acked % 60_000) as u16 + 1;
        let mut publish = Pub::new(&topic, format!("p:{acked}").as_bytes()).qos(1, packet_id);
        if resend {
            publish = publish.dup();
        }
        resend = true;
        let sent = publisher.send_lossy(&publish.encode(wire::V5)).await;
        let acknowledged = sent
            && loop {
                match publisher.try_recv(RECV_TIMEOUT).await {
                    Ok(packet) if packet.kind() == wire::PUBACK => {
                        break packet.ack().0 == packet_id;
                    }
                    Ok(_) => {}
                    Err(_) => break false,
                }
            };
        if acknowledged {
            acked += 1;
            resend = false;
            tokio::time::sleep(Duration::from_millis(5)).await;
        } else {
            client = None;
            at = (at + 1) % nodes.len();
        }
    }
    ("p".to_owned(), acked, sessions_lost)
}

/// Every node of three restarted in turn with SIGTERM, under a persistent
/// subscriber and a persistent publisher that each move to the next node
/// when theirs stops: each stopping node hands its sessions over before
/// it exits (README, "Replicated sessions"), so nothing acknowledged is
/// lost and no will goes out. A peer's nodes are restarted the same way;
/// their exit status and logs are not checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_with_sigterm_loses_nothing() {
    if !common::netns::available() {
        return;
    }
    restart_in_turn(&[0, 1, 2], Stop::Term).await;
}

/// Node A, under the persistent publisher, is killed (SIGKILL) and
/// started again, while the subscriber stays on C: the publisher resumes
/// its session on B from B's copy and sends again, with DUP, what had no
/// PUBACK; nothing acknowledged is lost, and A comes back as a new
/// incarnation that drops its stale copy of the publisher's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_publishers_node_and_starting_it_again_loses_nothing() {
    if !common::netns::available() {
        return;
    }
    restart_in_turn(&[0], Stop::Kill).await;
}

/// How [`restart_in_turn`] ends a node before starting it again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM: the node hands its sessions over and leaves.
    Term,
    /// SIGKILL: the node is gone at once.
    Kill,
}

/// Three nodes; a roaming persistent subscriber on C and a roaming
/// persistent publisher starting on A; the nodes of `order` are ended
/// (`stop`) and started again one after another, 3 s apart. For ringmq,
/// asserts that nothing acknowledged was lost and that both clients kept
/// their sessions (and, with SIGTERM, that each node handed everything
/// over before it exited).
async fn restart_in_turn(order: &[usize], stop_by: Stop) {
    let mut cluster = NetCluster::start_durable(3, BROKER_TOML);
    let peer = cluster.peer.clone();
    let nodes: Vec<SocketAddr> = (0..3).map(|i| cluster.addr(i)).collect();
    let topic = unique_id("roll");
    let mut roamer = Roamer::start(nodes.clone(), 2, &topic, 1).await;
    if peer.is_none() {
        wait_for_copies(&cluster, 0, 1.0);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn(roaming_publisher(nodes, topic, stop.clone()));
    let started = Instant::now();
    let mut restarts = Vec::new();
    for (turn, &i) in order.iter().enumerate() {
        roamer.receive(Duration::from_secs(3), |_| false).await;
        // A valid run for a peer: the publisher's messages (from A)
        // reached the subscriber (on C) before the first restart.
        assert!(
            peer.is_none() || turn > 0 || !roamer.received.is_empty(),
            "{}: nothing crossed from A to C before the restarts",
            broker_name(peer.as_ref())
        );
        let stopping = Instant::now();
        match stop_by {
            Stop::Kill => cluster.kill(i),
            Stop::Term if peer.is_none() => {
                let log = cluster.stop(i);
                assert!(
                    log.contains("handed_over=true"),
                    "node {i} left without handing everything over:\n{log}"
                );
            }
            Stop::Term => {
                if let Some(mut node) = cluster.slots()[i].take() {
                    node.signal(libc::SIGTERM);
                    node.wait_exit(Duration::from_secs(30));
                }
            }
        }
        let stopped = stopping.elapsed();
        let mut attempts = 1;
        let broker = match peer {
            None => cluster.spawn_node(i),
            // A peer that exits while starting is started again, as a
            // supervisor would, the clients going on meanwhile: RMQTT's
            // raft port stays in TIME_WAIT for a minute.
            Some(_) => loop {
                match cluster.try_spawn(i) {
                    Ok(broker) => break broker,
                    Err(why) => {
                        let first = why.lines().nth(1).unwrap_or_default();
                        println!("node {i} did not start again (attempt {attempts}): {first}");
                        assert!(stopping.elapsed() < PEER_RESTART_PATIENCE, "{why}");
                    }
                }
                attempts += 1;
                roamer.receive(Duration::from_secs(2), |_| false).await;
            },
        };
        cluster.slots()[i] = Some(broker);
        // The clients go on meanwhile: the roamer is polled while the
        // restarted node joins.
        let deadline = Instant::now() + Duration::from_secs(30);
        // A peer's probe (a message from each node to each) runs beside.
        let addrs = cluster.running_addrs();
        let probe = (peer.is_some()).then(|| {
            tokio::task::spawn_blocking(move || {
                common::peers::all_cross(&addrs, Duration::from_secs(30))
            })
        });
        let rejoined = loop {
            let linked = match &probe {
                None => (0..3).all(|j| cluster.linked_peers(j) == 2),
                Some(probe) => probe.is_finished(),
            };
            if linked {
                break match probe {
                    Some(probe) => probe.await.expect("the probe runs to the end"),
                    None => Some(Duration::ZERO),
                };
            }
            // A peer's probe gives up by itself.
            assert!(
                peer.is_some() || Instant::now() < deadline,
                "node {i} did not rejoin"
            );
            roamer.receive(Duration::from_millis(200), |_| false).await;
        };
        let rejoined = match rejoined {
            Some(_) => format!("back at {:+.1} s", started.elapsed().as_secs_f64()),
            None => "not rejoined within 30 s".to_owned(),
        };
        restarts.push(format!(
            "{} stopped in {:.2} s, started in {attempts} attempt(s), {rejoined}",
            name(i),
            stopped.as_secs_f64(),
        ));
    }
    roamer.receive(Duration::from_secs(3), |_| false).await;
    stop.store(true, Ordering::Relaxed);
    let stopped_at = Instant::now();
    let (name_of_publisher, acked, sessions_lost) =
        publisher.await.expect("the publisher runs to the end");
    let published = BTreeMap::from([(name_of_publisher, acked)]);
    let all_in = |received: &[(String, u32)]| {
        let got: std::collections::BTreeSet<u32> = received.iter().map(|(_, n)| *n).collect();
        (0..acked).all(|n| got.contains(&n))
    };
    roamer.receive(RECV_TIMEOUT, all_in).await;
    let tally = tally(&published, &roamer.received);
    let moves: Vec<String> = (roamer.served.iter())
        .map(|(node, when, resumed)| {
            let since = when.saturating_duration_since(started).as_secs_f64();
            let how = if *resumed { "" } else { " (fresh session)" };
            format!("{} at {since:+.1} s{how}", name(*node))
        })
        .collect();
    let what = match stop_by {
        Stop::Term => "rolling restart of 3 nodes with SIGTERM",
        Stop::Kill => "publisher's node killed (SIGKILL) and started again",
    };
    println!(
        "{}: {what} ({}): {acked} acknowledged, {} received: {tally}; longest without a message {:.1} s; subscriber served by {}; subscriber kept its session: {}; publisher found no session {sessions_lost} times",
        broker_name(peer.as_ref()),
        restarts.join("; "),
        roamer.received.len(),
        roamer.longest_gap(started, stopped_at).as_secs_f64(),
        moves.join(", "),
        roamer.kept_its_session(),
    );
    if peer.is_some() {
        return;
    }
    if tally.lost > 0 {
        let got: std::collections::BTreeSet<u32> =
            roamer.received.iter().map(|(_, n)| *n).collect();
        let missing: Vec<u32> = (0..acked).filter(|n| !got.contains(n)).collect();
        println!("missing: {missing:?}");
        for i in 0..3 {
            println!("--- node {i}\n{}", cluster.node(i).logs());
        }
    }
    assert_eq!(tally.lost, 0, "{tally}");
    assert_eq!(sessions_lost, 0, "the publisher lost its session");
    assert!(
        roamer.kept_its_session(),
        "the subscriber lost its session: {moves:?}"
    );
}
