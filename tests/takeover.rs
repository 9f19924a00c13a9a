//! Sessions across the cluster, with three real `ringmq` nodes on
//! 127.0.0.x: a client that reconnects to another node resumes its session
//! there with everything queued for it; a second connection on another
//! node takes the session over, and the first is told why (v5 0x8E); the
//! node that lost the session no longer delivers to it. With data dirs,
//! sessions are replicated: a client whose node was killed resumes on
//! another with every acknowledged message, QoS 2 exactly once.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::cluster::{Cluster, Nodes};
use common::raw::Raw;
use common::tally::{parse, tally};
use common::wire::{self, Connect, Props, Pub};
use common::{RECV_TIMEOUT, unique_id};

fn persistent(id: &str) -> Connect {
    Connect::new(wire::V5, id)
        .clean(false)
        .props(Props::new().u32(wire::SESSION_EXPIRY, 300))
}

/// Publishes `count` QoS 1 messages `p:0`, `p:1`, ... to `topic` through
/// node `addr`, each acknowledged.
async fn publish(addr: SocketAddr, topic: &str, from: u32, count: u32) {
    let (mut publisher, _) = served(addr, Connect::v5(&unique_id("pub"))).await;
    for n in from..from + count {
        let packet_id = (n % 60_000) as u16 + 1;
        publisher
            .publish(Pub::new(topic, format!("p:{n}").as_bytes()).qos(1, packet_id))
            .await;
    }
}

/// Receives `count` publishes on `client`, acknowledging each, and checks
/// them against what `p` published: none lost, duplicated or reordered.
async fn expect_in_order(client: &mut Raw, count: u32) {
    let mut received = Vec::new();
    for _ in 0..count {
        let publish = client.recv_publish().await;
        client.send(&wire::ack(wire::PUBACK, publish.pkid)).await;
        received.push(parse(&publish.payload));
    }
    let published = BTreeMap::from([("p".to_string(), count)]);
    let tally = tally(&published, &received);
    assert_eq!(
        (tally.lost, tally.duplicated, tally.reordered),
        (0, 0, 0),
        "{tally:?}"
    );
}

/// Connects as a client would while the cluster elects a new raft leader
/// (a killed node may have led): Server unavailable (0x88) is tried again.
async fn connect_when_served(addr: SocketAddr, id: &str) -> (Raw, wire::Connack) {
    served(addr, persistent(id)).await
}

/// Connects with `connect`, trying again while the cluster has no raft
/// leader (Server unavailable, 0x88).
async fn served(addr: SocketAddr, connect: Connect) -> (Raw, wire::Connack) {
    let deadline = std::time::Instant::now() + RECV_TIMEOUT;
    loop {
        let (raw, connack) = Raw::connect(addr, connect.clone()).await;
        if connack.code == 0 {
            return (raw, connack);
        }
        assert_eq!(connack.code, 0x88, "only Server unavailable is expected");
        assert!(std::time::Instant::now() < deadline, "never served");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moves_to_the_node_its_client_reconnects_to() {
    let cluster = Cluster::start(3, "");
    let id = unique_id("mover");
    let topic = unique_id("mv");
    let (mut client, connack) = Raw::connect_ok(cluster.addr(0), persistent(&id)).await;
    assert!(!connack.session_present);
    client.subscribe(1, &[(topic.as_str(), 1)]).await;
    client.send(&wire::disconnect_v5(0, Props::new())).await;
    client.expect_closed(RECV_TIMEOUT).await;

    // Queued on node 0 while the client is away.
    publish(cluster.addr(2), &topic, 0, 20).await;

    // It comes back through another node: the session is there.
    let (mut client, connack) = Raw::connect_ok(cluster.addr(1), persistent(&id)).await;
    assert!(connack.session_present, "the session moved with the client");
    expect_in_order(&mut client, 20).await;

    // Its subscription moved too: what is published now reaches it on
    // node 1, wherever it is published, and node 0 holds nothing for it.
    publish(cluster.addr(0), &topic, 20, 5).await;
    let mut received = Vec::new();
    for _ in 0..5 {
        let publish = client.recv_publish().await;
        client.send(&wire::ack(wire::PUBACK, publish.pkid)).await;
        received.push(parse(&publish.payload).1);
    }
    assert_eq!(received, (20..25).collect::<Vec<_>>());
    // The reconnect claimed the client id on node 1; node 0 handed the
    // session over.
    cluster.wait_sample(1, "ringmq_cluster_claims_granted_total", 1.0);
    cluster.wait_sample(1, "ringmq_cluster_takeover_seconds_count", 1.0);
    cluster.wait_sample(0, "ringmq_cluster_sessions_handed_over_total", 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_on_another_node_takes_the_session_over() {
    let cluster = Cluster::start(3, "");
    let id = unique_id("taken");
    let topic = unique_id("tk");
    let (mut old, _) = Raw::connect_ok(cluster.addr(0), persistent(&id)).await;
    old.subscribe(1, &[(topic.as_str(), 1)]).await;

    let (mut new, connack) = Raw::connect_ok(cluster.addr(1), persistent(&id)).await;
    assert!(connack.session_present, "takeover resumes the session");
    let seen = old.expect_closed(RECV_TIMEOUT).await;
    assert_eq!(seen.len(), 1, "exactly a DISCONNECT: {seen:?}");
    assert_eq!(seen[0].disconnect_reason(), 0x8E, "Session taken over");

    publish(cluster.addr(2), &topic, 0, 10).await;
    expect_in_order(&mut new, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_drops_its_copy_of_a_session_claimed_elsewhere_meanwhile() {
    // No copies: the session dies with node 0 until its restart.
    let mut cluster = Cluster::start_durable(3, "replication_factor = 1");
    let id = unique_id("stale");
    let topic = unique_id("st");
    let (mut client, _) = Raw::connect_ok(cluster.addr(0), persistent(&id)).await;
    client.subscribe(1, &[(topic.as_str(), 1)]).await;
    client.send(&wire::disconnect_v5(0, Props::new())).await;
    client.expect_closed(RECV_TIMEOUT).await;

    // Node 0 dies with the session on its disk; the client comes back on
    // node 1, which cannot ask node 0 for it: a fresh session there.
    cluster.kill(0);
    let (mut client, connack) = connect_when_served(cluster.addr(1), &id).await;
    assert!(!connack.session_present, "node 0 could not hand it over");
    client.subscribe(1, &[(topic.as_str(), 1)]).await;
    cluster.wait_sample(1, "ringmq_cluster_handovers_missed_total", 1.0);

    // Node 0 comes back with its copy, learns the session is node 1's
    // now, and drops the copy: a message published now reaches the client
    // once, on node 1, and node 0 keeps nothing for it.
    cluster.restart(0);
    wait_for_log(
        &cluster,
        0,
        "restored sessions claimed by other nodes meanwhile dropped",
    );
    publish(cluster.addr(2), &topic, 0, 3).await;
    expect_in_order(&mut client, 3).await;
    let metrics = cluster.metrics(0);
    assert_eq!(
        common::http::sample(&metrics, "ringmq_sessions{state=\"offline\"}"),
        0.0,
        "{metrics}"
    );
}

/// Waits until node `i` keeps copies of `count` other nodes' sessions.
fn wait_for_copies(cluster: &Cluster, i: usize, count: f64) {
    let deadline = std::time::Instant::now() + RECV_TIMEOUT;
    loop {
        let metrics = cluster.metrics(i);
        if common::http::sample(&metrics, "ringmq_cluster_session_copies") == count {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node {i} never kept {count} copies:\n{metrics}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_node_was_killed_resumes_elsewhere_with_every_acknowledged_message() {
    let mut cluster = Cluster::start_durable(3, "");
    let id = unique_id("survivor");
    let topic = unique_id("sv");
    let (mut client, _) = Raw::connect_ok(cluster.addr(0), persistent(&id)).await;
    client.subscribe(1, &[(topic.as_str(), 1)]).await;
    client.send(&wire::disconnect_v5(0, Props::new())).await;
    client.expect_closed(RECV_TIMEOUT).await;
    // Node 0's copies go to node 1, the next by name.
    wait_for_copies(&cluster, 1, 1.0);

    // Each PUBACK means node 0 queued the message and node 1 holds it.
    publish(cluster.addr(2), &topic, 0, 100).await;
    cluster.kill(0);

    // Back on node 2, which keeps no copy of node 0's: node 1 gives it up.
    let (mut client, connack) = connect_when_served(cluster.addr(2), &id).await;
    assert!(connack.session_present, "the copy on node 1 is resumed");
    expect_in_order(&mut client, 100).await;
    client
        .expect_silence(std::time::Duration::from_millis(300))
        .await;
    // From the copy: asked of node 1 by node 2's claim, or taken over by
    // node 1 when gossip said node 0 was down and handed over from there.
    let from_copy = common::http::sample(
        &cluster.metrics(2),
        "ringmq_cluster_sessions_recovered_total",
    ) + common::http::sample(
        &cluster.metrics(1),
        "ringmq_cluster_sessions_promoted_total",
    );
    assert_eq!(from_copy, 1.0);
    cluster.wait_sample(2, "ringmq_cluster_handovers_missed_total", 0.0);
    // The session is node 2's now, and copied in turn (to node 1, the
    // only peer left).
    wait_for_copies(&cluster, 1, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_stays_exactly_once_across_the_death_of_the_node_holding_both_sessions() {
    let mut cluster = Cluster::start_durable(3, "");
    let (sub_id, pub_id) = (unique_id("q2sub"), unique_id("q2pub"));
    let topic = unique_id("q2");
    let (mut subscriber, _) = Raw::connect_ok(cluster.addr(0), persistent(&sub_id)).await;
    subscriber.subscribe(1, &[(topic.as_str(), 2)]).await;
    // The subscriber gets message 0 and sends PUBREC, not yet PUBCOMP's
    // PUBREL answer: node 0 owes it PUBREL only.
    let (mut publisher, _) = Raw::connect_ok(cluster.addr(0), persistent(&pub_id)).await;
    publisher.publish(Pub::new(&topic, b"p:0").qos(2, 1)).await;
    let first = subscriber.recv_publish().await;
    assert_eq!(first.payload, b"p:0");
    subscriber.send(&wire::ack(wire::PUBREC, first.pkid)).await;
    subscriber.recv_kind(wire::PUBREL).await;
    // Message 1 reaches node 0 (PUBREC) and its PUBREL is not sent yet:
    // node 0 awaits PUBREL for the publisher's packet id 2.
    publisher
        .send(&Pub::new(&topic, b"p:1").qos(2, 2).encode(wire::V5))
        .await;
    let (pkid, reason) = publisher.recv_kind(wire::PUBREC).await.ack();
    assert_eq!((pkid, reason), (2, 0));
    wait_for_copies(&cluster, 1, 2.0);
    cluster.kill(0);

    // The subscriber resumes on node 2: PUBREL for message 0 (still owed),
    // then message 1, each once.
    let (mut subscriber, connack) = connect_when_served(cluster.addr(2), &sub_id).await;
    assert!(connack.session_present);
    assert_eq!(receive_qos2(&mut subscriber, first.pkid, 1).await, ["p:1"]);

    // The publisher resumes on node 1 and releases packet id 2: its
    // session knows it, so PUBCOMP says success (not 0x92, id not found),
    // and message 1 is not delivered again.
    let (mut publisher, connack) = connect_when_served(cluster.addr(1), &pub_id).await;
    assert!(connack.session_present);
    publisher.send(&wire::ack(wire::PUBREL, 2)).await;
    let (pkid, reason) = publisher.recv_kind(wire::PUBCOMP).await.ack();
    assert_eq!((pkid, reason), (2, 0), "PUBCOMP for the awaited id");
    publisher.publish(Pub::new(&topic, b"p:2").qos(2, 3)).await;
    assert_eq!(receive_qos2(&mut subscriber, 0, 1).await, ["p:2"]);
    subscriber
        .expect_silence(std::time::Duration::from_millis(500))
        .await;
}

/// Receives `count` QoS 2 messages on `subscriber`, completing each flow,
/// and the PUBREL owed for `released` (0: none) on the way.
async fn receive_qos2(subscriber: &mut Raw, released: u16, count: usize) -> Vec<String> {
    let mut received = Vec::new();
    while received.len() < count {
        let packet = subscriber.recv().await;
        match packet.kind() {
            wire::PUBREL => {
                let (pkid, _) = packet.ack();
                assert_eq!(pkid, released, "a PUBREL owed");
                subscriber.send(&wire::ack(wire::PUBCOMP, pkid)).await;
            }
            wire::PUBLISH => {
                let publish = packet.publish(wire::V5);
                received.push(String::from_utf8_lossy(&publish.payload).into_owned());
                subscriber
                    .send(&wire::ack(wire::PUBREC, publish.pkid))
                    .await;
                subscriber.recv_kind(wire::PUBREL).await;
                subscriber
                    .send(&wire::ack(wire::PUBCOMP, publish.pkid))
                    .await;
            }
            other => panic!("unexpected packet kind {other}"),
        }
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_session_is_served_by_its_replica_will_included_until_its_client_returns() {
    let mut cluster = Cluster::start_durable(3, "suspect_timeout_ms = 1000");
    let id = unique_id("orphan");
    let topic = unique_id("or");
    let will_topic = unique_id("will");
    let (mut watcher, _) = Raw::connect_ok(cluster.addr(2), Connect::v5(&unique_id("w"))).await;
    watcher.subscribe(1, &[(will_topic.as_str(), 1)]).await;
    let connect = persistent(&id).will(wire::Will::new(&will_topic, b"gone").qos(1));
    let (mut client, _) = Raw::connect_ok(cluster.addr(0), connect).await;
    client.subscribe(1, &[(topic.as_str(), 1)]).await;
    wait_for_copies(&cluster, 1, 1.0);

    // Node 0 dies with the client connected: node 1, which keeps the copy,
    // takes the session over once gossip says node 0 is down, and its
    // will goes out from there, once.
    cluster.kill(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while common::http::sample(
        &cluster.metrics(1),
        "ringmq_cluster_sessions_promoted_total",
    ) < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "node 1 never took the session over:\n{}",
            cluster.node(1).logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let will = match watcher.try_recv(RECV_TIMEOUT).await {
        Ok(packet) => packet.publish(wire::V5),
        Err(error) => panic!(
            "no will ({error:?}); node 1:\n{}\nnode 2:\n{}",
            cluster.node(1).logs(),
            cluster.node(2).logs()
        ),
    };
    assert_eq!(will.payload, b"gone");
    watcher.send(&wire::ack(wire::PUBACK, will.pkid)).await;

    // Messages published meanwhile are queued on node 1 for the client.
    publish(cluster.addr(1), &topic, 0, 20).await;
    let (mut client, connack) = connect_when_served(cluster.addr(2), &id).await;
    assert!(connack.session_present);
    expect_in_order(&mut client, 20).await;

    // Node 0 comes back with the session on its disk, cut while connected:
    // its will is not sent again, and the stale copy is dropped.
    cluster.restart(0);
    wait_for_log(
        &cluster,
        0,
        "restored sessions claimed by other nodes meanwhile dropped",
    );
    watcher
        .expect_silence(std::time::Duration::from_millis(500))
        .await;
    drop(client);
}

/// Waits until node `i` has logged `line`.
fn wait_for_log(cluster: &Cluster, i: usize, line: &str) {
    let deadline = std::time::Instant::now() + RECV_TIMEOUT;
    while !cluster.node(i).logs().contains(line) {
        assert!(
            std::time::Instant::now() < deadline,
            "node {i} never logged {line:?}:\n{}",
            cluster.node(i).logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Receives on `client`, acknowledging each message, until the connection
/// closes or `done` says everything expected has come, or `within` passes.
async fn receive_until(
    client: &mut Raw,
    received: &mut Vec<(String, u32)>,
    done: impl Fn(&[(String, u32)]) -> bool,
    within: std::time::Duration,
) {
    let deadline = std::time::Instant::now() + within;
    while !done(received) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match client.try_recv(left).await {
            Ok(packet) if packet.kind() == wire::PUBLISH => {
                let publish = packet.publish(wire::V5);
                client.send(&wire::ack(wire::PUBACK, publish.pkid)).await;
                received.push(parse(&publish.payload));
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Receives until `p:0` .. `p:{total - 1}` are all in (or the time is
/// up), then counts what was lost, duplicated and reordered.
async fn receive_numbered(
    client: &mut Raw,
    received: &mut Vec<(String, u32)>,
    total: u32,
) -> common::tally::Tally {
    let all_in = |received: &[(String, u32)]| {
        let got: std::collections::BTreeSet<u32> = received.iter().map(|(_, n)| *n).collect();
        (0..total).all(|n| got.contains(&n))
    };
    receive_until(client, received, all_in, RECV_TIMEOUT).await;
    tally(&BTreeMap::from([("p".to_string(), total)]), received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_under_a_persistent_subscriber_loses_nothing_acknowledged() {
    // Queues never drop here: only the cluster is measured (what the dead
    // node was owed arrives at the session's new node in a burst).
    let top = "max_queued_messages = 1000000";
    let mut cluster = Cluster::start_durable_with(3, top, "suspect_timeout_ms = 1000");
    let id = unique_id("steady");
    let topic = unique_id("kt");
    let (mut subscriber, _) = Raw::connect_ok(cluster.addr(0), persistent(&id)).await;
    subscriber.subscribe(1, &[(topic.as_str(), 1)]).await;
    wait_for_copies(&cluster, 1, 1.0);

    // One publisher on node 2, one QoS 1 message after another, each
    // counted once its PUBACK is in, for 8 s; node 0 dies after 2 s.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = numbered_publisher(cluster.addr(2), &topic, stop.clone());
    let mut received = Vec::new();
    let two_seconds = std::time::Duration::from_secs(2);
    receive_until(&mut subscriber, &mut received, |_| false, two_seconds).await;
    cluster.kill(0);
    let killed = std::time::Instant::now();
    receive_until(&mut subscriber, &mut received, |_| false, RECV_TIMEOUT).await;

    // The client comes back through node 1, as a load balancer would send
    // it, while the publisher goes on.
    let (mut subscriber, connack) = connect_when_served(cluster.addr(1), &id).await;
    assert!(connack.session_present);
    let resumed = killed.elapsed();
    receive_until(&mut subscriber, &mut received, |_| false, two_seconds * 2).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = publisher.await.expect("the publisher runs to the end");
    let tally = receive_numbered(&mut subscriber, &mut received, acked).await;
    println!(
        "{acked} acknowledged, {} received: {tally}; session resumed {:.1} s after the kill, everything in after {:.1} s",
        received.len(),
        resumed.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(tally.lost, 0, "{tally}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_with_sigterm_hands_its_sessions_over_before_it_exits() {
    // Failure detection far off: only the leave can move the session.
    let mut cluster = Cluster::start_durable(3, "suspect_timeout_ms = 60000");
    let id = unique_id("rolling");
    let topic = unique_id("rl");
    let (mut client, _) = Raw::connect_ok(cluster.addr(0), persistent(&id)).await;
    client.subscribe(1, &[(topic.as_str(), 1)]).await;
    client.send(&wire::disconnect_v5(0, Props::new())).await;
    client.expect_closed(RECV_TIMEOUT).await;
    publish(cluster.addr(2), &topic, 0, 30).await;

    let stopped = std::time::Instant::now();
    let log = cluster.stop(0);
    // It left once drained and replicated, not when it gave up waiting.
    assert!(log.contains("handed_over=true"), "{log}");
    cluster.wait_sample(1, "ringmq_cluster_sessions_promoted_total", 1.0);
    let moved = stopped.elapsed();
    println!(
        "session taken over by node 1 {:.2} s after SIGTERM",
        moved.as_secs_f64()
    );
    publish(cluster.addr(1), &topic, 30, 10).await;

    let (mut client, connack) = connect_when_served(cluster.addr(2), &id).await;
    assert!(connack.session_present);
    expect_in_order(&mut client, 40).await;

    // Back after its restart, node 0 drops its copy: a message published
    // now reaches the client once.
    cluster.start_again(0);
    wait_for_log(
        &cluster,
        0,
        "restored sessions claimed by other nodes meanwhile dropped",
    );
    client
        .expect_silence(std::time::Duration::from_millis(300))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_session_expires_once_and_its_copy_with_it() {
    let cluster = Cluster::start_durable(3, "");
    let id = unique_id("brief");
    let connect = Connect::new(wire::V5, &id)
        .clean(false)
        .props(Props::new().u32(wire::SESSION_EXPIRY, 2));
    let (mut client, _) = Raw::connect_ok(cluster.addr(0), connect).await;
    client.subscribe(1, &[("brief/#", 1)]).await;
    client.send(&wire::disconnect_v5(0, Props::new())).await;
    client.expect_closed(RECV_TIMEOUT).await;
    wait_for_copies(&cluster, 1, 1.0);
    // Expired on node 0 after 2 s: its copy on node 1 goes with it, and
    // the client id is free (a new session, not present).
    wait_for_copies(&cluster, 1, 0.0);
    let metrics = cluster.metrics(0);
    assert_eq!(
        common::http::sample(&metrics, "ringmq_sessions{state=\"offline\"}"),
        0.0,
        "{metrics}"
    );
    let (_, connack) = connect_when_served(cluster.addr(2), &id).await;
    assert!(!connack.session_present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_under_a_publisher_loses_nothing_acknowledged() {
    let top = "max_queued_messages = 1000000";
    let mut cluster = Cluster::start_durable_with(3, top, "suspect_timeout_ms = 1000");
    let id = unique_id("listener");
    let topic = unique_id("kp");
    let (mut subscriber, _) = Raw::connect_ok(cluster.addr(2), persistent(&id)).await;
    subscriber.subscribe(1, &[(topic.as_str(), 1)]).await;

    // A persistent publisher on node 0 numbers QoS 1 messages, counting
    // each once its PUBACK is in, until node 0 dies under it; it then
    // comes back through node 1 and goes on from the first number without
    // a PUBACK (the one in flight is sent again, as a client would).
    let publisher_id = unique_id("kpub");
    let (mut publisher, _) = Raw::connect_ok(cluster.addr(0), persistent(&publisher_id)).await;
    let mut acked = 0u32;
    let started = std::time::Instant::now();
    let mut killed = false;
    loop {
        if !killed && started.elapsed() > std::time::Duration::from_secs(2) {
            cluster.kill(0);
            killed = true;
        }
        let packet_id = (acked % 60_000) as u16 + 1;
        let payload = format!("p:{acked}");
        publisher
            .send(
                &Pub::new(&topic, payload.as_bytes())
                    .qos(1, packet_id)
                    .encode(wire::V5),
            )
            .await;
        match publisher.try_recv(RECV_TIMEOUT).await {
            Ok(packet) if packet.kind() == wire::PUBACK => acked += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    let (mut publisher, connack) = connect_when_served(cluster.addr(1), &publisher_id).await;
    assert!(connack.session_present);
    let resumed_at = acked;
    for n in resumed_at..resumed_at + 500 {
        let packet_id = (n % 60_000) as u16 + 1;
        let payload = format!("p:{n}");
        publisher
            .publish(Pub::new(&topic, payload.as_bytes()).qos(1, packet_id))
            .await;
    }
    let total = resumed_at + 500;
    let mut received = Vec::new();
    let tally = receive_numbered(&mut subscriber, &mut received, total).await;
    println!("{resumed_at} acknowledged before the kill, {total} in all: {tally}");
    assert_eq!(tally.lost, 0, "{tally}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_takeovers_racing_on_two_nodes_leave_one_session_with_everything() {
    let cluster = Cluster::start_durable(3, "");
    let id = unique_id("racer");
    let topic = unique_id("rc");
    let (mut client, _) = Raw::connect_ok(cluster.addr(0), persistent(&id)).await;
    client.subscribe(1, &[(topic.as_str(), 1)]).await;
    client.send(&wire::disconnect_v5(0, Props::new())).await;
    client.expect_closed(RECV_TIMEOUT).await;
    publish(cluster.addr(0), &topic, 0, 20).await;

    // The same client id connects to nodes 1 and 2 at once: the raft
    // orders the two claims. The later one gets the session, from the
    // earlier: that connection is closed (0x8E) if it was answered
    // already, or refused (0x88) if it still waited for the session.
    let (one, two) = tokio::join!(
        Raw::connect(cluster.addr(1), persistent(&id)),
        Raw::connect(cluster.addr(2), persistent(&id))
    );
    let mut received = Vec::new();
    let mut survivors = Vec::new();
    for (mut raw, connack) in [one, two] {
        if connack.code == 0x88 {
            continue;
        }
        assert_eq!(connack.code, 0, "{connack:?}");
        assert!(connack.session_present);
        let mut taken_over = false;
        while let Ok(packet) = raw.try_recv(std::time::Duration::from_secs(2)).await {
            match packet.kind() {
                wire::DISCONNECT => {
                    assert_eq!(packet.disconnect_reason(), 0x8E);
                    taken_over = true;
                    break;
                }
                wire::PUBLISH => {
                    let publish = packet.publish(wire::V5);
                    raw.send(&wire::ack(wire::PUBACK, publish.pkid)).await;
                    received.push(parse(&publish.payload));
                }
                other => panic!("unexpected packet kind {other}"),
            }
        }
        if !taken_over {
            survivors.push(raw);
        }
    }
    assert_eq!(survivors.len(), 1, "one connection keeps the session");
    let mut winner = survivors.pop().expect("one survivor");
    let all_in = |received: &[(String, u32)]| {
        let got: std::collections::BTreeSet<u32> = received.iter().map(|(_, n)| *n).collect();
        got.len() == 20
    };
    receive_until(&mut winner, &mut received, all_in, RECV_TIMEOUT).await;
    let tally = tally(&BTreeMap::from([("p".to_string(), 20)]), &received);
    assert_eq!(tally.lost, 0, "{tally}");
    winner
        .expect_silence(std::time::Duration::from_millis(300))
        .await;
}

/// A persistent subscriber moves between two live nodes six times (each
/// CONNECT on the other node takes the session over) while a publisher on
/// a third publishes QoS 1 messages one after another: every acknowledged
/// message reaches it, whatever the routes said during each move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moving_between_live_nodes_under_load_loses_nothing() {
    let top = "max_queued_messages = 1000000";
    let cluster = Cluster::start_durable_with(3, top, "");
    let id = unique_id("mover");
    let topic = unique_id("mv");
    let (mut subscriber, _) = Raw::connect_ok(cluster.addr(0), persistent(&id)).await;
    subscriber.subscribe(1, &[(topic.as_str(), 1)]).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = numbered_publisher(cluster.addr(2), &topic, stop.clone());
    let mut received = Vec::new();
    let second = std::time::Duration::from_secs(1);
    for hop in 1..=6 {
        receive_until(&mut subscriber, &mut received, |_| false, second).await;
        let (mut next, connack) = connect_when_served(cluster.addr(hop % 2), &id).await;
        assert!(connack.session_present);
        // What the old connection got before its DISCONNECT counts too.
        receive_until(&mut subscriber, &mut received, |_| false, RECV_TIMEOUT).await;
        std::mem::swap(&mut subscriber, &mut next);
    }
    receive_until(&mut subscriber, &mut received, |_| false, second).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = publisher.await.expect("the publisher runs to the end");
    let tally = receive_numbered(&mut subscriber, &mut received, acked).await;
    println!("six moves between live nodes: {acked} acknowledged: {tally}");
    let published = BTreeMap::from([("p".to_string(), acked)]);
    assert_eq!(
        tally.lost,
        0,
        "{tally}; missing {:?}",
        common::tally::missing(&published, &received)
    );
}

/// A QoS 1 publisher on `addr` numbering its messages `p:0`, `p:1`, ...
/// on `topic`, one after another, each counted once its PUBACK is in,
/// until `stop`: returns how many were acknowledged.
fn numbered_publisher(
    addr: std::net::SocketAddr,
    topic: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<u32> {
    let topic = topic.to_string();
    tokio::spawn(async move {
        let (mut publisher, _) = Raw::connect_ok(addr, Connect::v5(&unique_id("np"))).await;
        let mut acked = 0u32;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let packet_id = (acked % 60_000) as u16 + 1;
            let payload = format!("p:{acked}");
            publisher
                .publish(Pub::new(&topic, payload.as_bytes()).qos(1, packet_id))
                .await;
            acked += 1;
        }
        acked
    })
}
