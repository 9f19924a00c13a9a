//! The cluster with real processes: three `ringmq` nodes on 127.0.0.x,
//! joined by gossip over QUIC with a shared secret, and rumqttc clients on
//! different nodes.
//!
//! Fault tests that cut links between network namespaces are in
//! `tests/cluster_faults.rs`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::RECV_TIMEOUT;
use common::clients::{v4, v5};
use common::cluster::{Cluster, Nodes};
use common::http::sample;
use common::tally::{parse, tally};
use common::unique_id;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_2_cross_nodes_once_and_in_order() {
    let cluster = Cluster::start(3, "");
    let topic = unique_id("cross");
    let mut subscribers = Vec::new();
    for (node, qos) in [(1, v4::QoS::AtLeastOnce), (2, v4::QoS::ExactlyOnce)] {
        let mut sub = v4::Client::simple(cluster.addr(node), &unique_id("sub")).await;
        sub.subscribe(&format!("{topic}/#"), qos).await;
        subscribers.push(sub);
    }
    let mut published = BTreeMap::new();
    for (i, qos) in [v4::QoS::AtLeastOnce, v4::QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let name = format!("pub{i}");
        let mut publisher = v4::Client::simple(cluster.addr(0), &unique_id("pub")).await;
        for n in 0..100u32 {
            let payload = format!("{name}:{n}");
            publisher
                .publish(&format!("{topic}/{name}"), qos, false, payload.as_bytes())
                .await;
        }
        published.insert(name, 100);
    }
    for (index, sub) in subscribers.iter_mut().enumerate() {
        let mut received = Vec::new();
        while received.len() < 200 {
            let publish = sub.next_publish().await;
            received.push(parse(&publish.payload));
        }
        sub.expect_no_publish(Duration::from_millis(500)).await;
        let tally = tally(&published, &received);
        println!("subscriber on node {}: {tally:?}", index + 1);
        assert_eq!(
            (tally.lost, tally.duplicated, tally.reordered),
            (0, 0, 0),
            "{tally:?}"
        );
    }
    // Once per node with subscribers, whatever the number there.
    cluster.wait_sample(0, "ringmq_cluster_forwarded_messages_total", 400.0);
    let metrics = cluster.metrics(0);
    assert!(sample(&metrics, "ringmq_cluster_forward_ack_seconds_count") > 0.0);
    let peer = &cluster.node_ids[1];
    let rtt = sample(
        &metrics,
        &format!("ringmq_cluster_peer_rtt_seconds{{peer=\"{peer}\"}}"),
    );
    assert!(rtt > 0.0 && rtt < 1.0, "loopback round trip {rtt} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_cross_node() {
    let cluster = Cluster::start(2, "");
    let topic = unique_id("q0");
    let mut sub = v4::Client::simple(cluster.addr(1), &unique_id("sub")).await;
    sub.subscribe(&topic, v4::QoS::AtMostOnce).await;
    let mut publisher = v4::Client::simple(cluster.addr(0), &unique_id("pub")).await;
    publisher
        .publish(&topic, v4::QoS::AtMostOnce, false, b"hello")
        .await;
    let publish = sub.next_publish().await;
    assert_eq!(publish.payload.as_ref(), b"hello");
}

/// A SUBACK means every node routes to the subscriber: a message published
/// on another node right after it is delivered, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_on_one_node_then_publish_at_once_on_another() {
    let cluster = Cluster::start(3, "");
    let mut publisher = v4::Client::simple(cluster.addr(0), &unique_id("pub")).await;
    let mut sub = v4::Client::simple(cluster.addr(2), &unique_id("sub")).await;
    for round in 0..20 {
        let topic = unique_id("causal");
        sub.subscribe(&topic, v4::QoS::AtLeastOnce).await;
        publisher
            .publish(
                &topic,
                v4::QoS::AtLeastOnce,
                false,
                format!("{round}").as_bytes(),
            )
            .await;
        let publish = tokio::time::timeout(RECV_TIMEOUT, sub.next_publish())
            .await
            .unwrap_or_else(|_| {
                panic!("round {round}: the message published after SUBACK was lost")
            });
        assert_eq!(publish.payload.as_ref(), format!("{round}").as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_properties_survive_the_hop() {
    let cluster = Cluster::start(2, "");
    let topic = unique_id("props");
    let mut sub = v5::Client::simple(cluster.addr(1), &unique_id("sub")).await;
    sub.subscribe(&topic, v5::QoS::AtLeastOnce).await;
    let mut publisher = v5::Client::simple(cluster.addr(0), &unique_id("pub")).await;
    let properties = v5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(600),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![
            ("k1".into(), "v1".into()),
            ("k1".into(), "v2".into()),
            ("other".into(), "x".into()),
        ],
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    publisher
        .publish_with(
            &topic,
            v5::QoS::AtLeastOnce,
            false,
            b"body",
            properties.clone(),
        )
        .await;
    let publish = sub.next_publish().await;
    let got = publish.properties.expect("properties survive");
    assert_eq!(publish.payload.as_ref(), b"body");
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.response_topic, properties.response_topic);
    assert_eq!(got.correlation_data, properties.correlation_data);
    assert_eq!(got.user_properties, properties.user_properties);
    assert_eq!(got.content_type, properties.content_type);
    let expiry = got.message_expiry_interval.expect("remaining expiry");
    assert!((590..=600).contains(&expiry), "remaining expiry {expiry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_reach_every_node() {
    let cluster = Cluster::start(3, "");
    let topic = unique_id("retained");
    let mut publisher = v4::Client::simple(cluster.addr(0), &unique_id("pub")).await;
    publisher
        .publish(&topic, v4::QoS::AtLeastOnce, true, b"kept")
        .await;
    for node in [1, 2] {
        // Replication is asynchronous: give it a moment, then a fresh
        // subscriber on each node gets the message from local memory.
        let mut found = false;
        for _ in 0..50 {
            let mut sub = v4::Client::simple(cluster.addr(node), &unique_id("sub")).await;
            sub.subscribe(&topic, v4::QoS::AtLeastOnce).await;
            if let Ok(publish) =
                tokio::time::timeout(Duration::from_millis(200), sub.next_publish()).await
            {
                assert_eq!(publish.payload.as_ref(), b"kept");
                assert!(publish.retain);
                found = true;
                break;
            }
        }
        assert!(
            found,
            "node {node} never got the retained message; logs:\n{}\n{}",
            cluster.node(0).logs(),
            cluster.node(node).logs()
        );
    }
    // Deleting it (empty payload) deletes it everywhere.
    publisher
        .publish(&topic, v4::QoS::AtLeastOnce, true, b"")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut sub = v4::Client::simple(cluster.addr(2), &unique_id("sub")).await;
    sub.subscribe(&topic, v4::QoS::AtLeastOnce).await;
    sub.expect_no_publish(Duration::from_millis(700)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_no_subscriber_gets_nothing() {
    let cluster = Cluster::start(3, "");
    let topic = unique_id("only-b");
    let mut sub = v4::Client::simple(cluster.addr(1), &unique_id("sub")).await;
    sub.subscribe(&topic, v4::QoS::AtLeastOnce).await;
    let mut publisher = v4::Client::simple(cluster.addr(0), &unique_id("pub")).await;
    for _ in 0..10 {
        publisher
            .publish(&topic, v4::QoS::AtLeastOnce, false, b"x")
            .await;
    }
    for _ in 0..10 {
        sub.next_publish().await;
    }
    cluster.wait_sample(1, "ringmq_cluster_received_messages_total", 10.0);
    let received_by_c = sample(
        &cluster.metrics(2),
        "ringmq_cluster_received_messages_total",
    );
    assert_eq!(received_by_c, 0.0, "node 2 has no subscriber");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_forgotten_after_the_hold_and_the_others_keep_serving() {
    let mut cluster = Cluster::start(3, "peer_hold_secs = 2\nsuspect_timeout_ms = 1000\n");
    let topic = unique_id("survive");
    let mut on_c = v4::Client::simple(cluster.addr(2), &unique_id("sub")).await;
    on_c.subscribe(&topic, v4::QoS::AtLeastOnce).await;
    let mut on_b = v4::Client::simple(cluster.addr(1), &unique_id("sub")).await;
    on_b.subscribe(&topic, v4::QoS::AtLeastOnce).await;
    drop(on_c);
    cluster.kill(2);
    let mut publisher = v4::Client::simple(cluster.addr(0), &unique_id("pub")).await;
    // While node 2 is held, publishes still flow to node 1, and the PUBACK
    // does not wait for the dead node.
    for n in 0..5u32 {
        publisher
            .publish(&topic, v4::QoS::AtLeastOnce, false, &n.to_be_bytes())
            .await;
        let publish = on_b.next_publish().await;
        assert_eq!(publish.payload.as_ref(), n.to_be_bytes());
    }
    // Past the hold, node 0 drops node 2's routes and outbox.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let expired = sample(&cluster.metrics(0), "ringmq_cluster_peers_expired_total");
        if expired >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 2 was never forgotten; logs:\n{}",
            cluster.node(0).logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    publisher
        .publish(&topic, v4::QoS::AtLeastOnce, false, b"after")
        .await;
    assert_eq!(on_b.next_publish().await.payload.as_ref(), b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_rejoins_and_gets_new_messages() {
    let mut cluster = Cluster::start(2, "");
    cluster.restart(1);
    let topic = unique_id("rejoin");
    let mut sub = v4::Client::simple(cluster.addr(1), &unique_id("sub")).await;
    sub.subscribe(&topic, v4::QoS::AtLeastOnce).await;
    let mut publisher = v4::Client::simple(cluster.addr(0), &unique_id("pub")).await;
    publisher
        .publish(&topic, v4::QoS::AtLeastOnce, false, b"again")
        .await;
    assert_eq!(sub.next_publish().await.payload.as_ref(), b"again");
}

/// `$share/g/...` with members on three nodes: each message reaches exactly
/// one member in the whole cluster, and members on every node get some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_across_three_nodes_gets_each_message_once() {
    let cluster = Cluster::start(3, "");
    let topic = unique_id("jobs");
    let share = format!("$share/workers/{topic}/+");
    let mut members = Vec::new();
    for node in [0, 1, 2, 2] {
        let mut member = v4::Client::simple(cluster.addr(node), &unique_id("worker")).await;
        member.subscribe(&share, v4::QoS::AtLeastOnce).await;
        members.push((node, member));
    }
    let mut publisher = v4::Client::simple(cluster.addr(1), &unique_id("pub")).await;
    const MESSAGES: u32 = 60;
    for n in 0..MESSAGES {
        publisher
            .publish(
                &format!("{topic}/x"),
                v4::QoS::AtLeastOnce,
                false,
                format!("pub:{n}").as_bytes(),
            )
            .await;
    }
    let mut received = Vec::new();
    let mut per_node = [0usize; 3];
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    while received.len() < MESSAGES as usize && tokio::time::Instant::now() < deadline {
        for (node, member) in &mut members {
            if let Ok(publish) =
                tokio::time::timeout(Duration::from_millis(20), member.next_publish()).await
            {
                received.push(parse(&publish.payload));
                per_node[*node] += 1;
            }
        }
    }
    for (_, member) in &mut members {
        member.expect_no_publish(Duration::from_millis(300)).await;
    }
    let published = BTreeMap::from([("pub".to_string(), MESSAGES)]);
    received.sort_by_key(|&(_, n)| n);
    let tally = tally(&published, &received);
    println!("shared group: {tally:?}, per node {per_node:?}");
    assert_eq!((tally.lost, tally.duplicated), (0, 0), "{tally:?}");
    assert!(
        per_node.iter().all(|&n| n > 0),
        "members on every node get messages: {per_node:?}"
    );
}

/// SIGTERM is a graceful leave: the others forget the node at once, not
/// after `peer_hold`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_with_sigterm_leaves_and_is_forgotten_at_once() {
    let mut cluster = Cluster::start(3, "");
    let topic = unique_id("leave");
    let mut sub = v4::Client::simple(cluster.addr(2), &unique_id("sub")).await;
    sub.subscribe(&topic, v4::QoS::AtLeastOnce).await;
    let leaving = cluster.node_ids[2].clone();
    let mut node = cluster.nodes[2].take().expect("node 2 runs");
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(10)).success());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = cluster.metrics(0);
        if cluster.node(0).logs().contains("peer left the cluster")
            && !metrics.contains(&format!("peer=\"{leaving}\""))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 0 still knows the leaver; logs:\n{}",
            cluster.node(0).logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(node.logs().contains("left the cluster"));
    cluster.wait_sample(0, "ringmq_cluster_member_events_total{event=\"left\"}", 1.0);
}

/// A second live process with a node id already in the cluster is refused
/// by every peer, says so in its log and never becomes ready; the cluster
/// keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_node_id_is_refused_loudly() {
    let cluster = Cluster::start(2, "");
    let taken = cluster.node_ids[0].clone();
    let duplicate = cluster.spawn_extra(&taken);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !duplicate.logs().contains("a peer refused this node") {
        assert!(
            std::time::Instant::now() < deadline,
            "the duplicate was never refused; its logs:\n{}",
            duplicate.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = common::http::get(duplicate.metrics_addr(), "/ready");
    assert_eq!(status, 503, "{body}; logs:\n{}", duplicate.logs());
    assert!(
        cluster
            .node(1)
            .logs()
            .contains("a second live node claims this node id"),
        "{}",
        cluster.node(1).logs()
    );
    let topic = unique_id("still");
    let mut sub = v4::Client::simple(cluster.addr(1), &unique_id("sub")).await;
    sub.subscribe(&topic, v4::QoS::AtLeastOnce).await;
    let mut publisher = v4::Client::simple(cluster.addr(0), &unique_id("pub")).await;
    publisher
        .publish(&topic, v4::QoS::AtLeastOnce, false, b"ok")
        .await;
    assert_eq!(sub.next_publish().await.payload.as_ref(), b"ok");
}

/// With data dirs: a persistent subscriber's node is down, so a publisher
/// on another node is answered without waiting for it (once it is
/// suspected), and that node then crashes too. What it owed the dead node
/// was on its disk: after both restart, the subscriber gets every message
/// its publisher was acknowledged for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_crashed_node_owed_a_dead_one_arrives_after_both_restart() {
    let mut cluster =
        Cluster::start_durable(2, "suspect_timeout_ms = 1000\nprobe_interval_ms = 200\n");
    let topic = unique_id("owed");
    let subscriber = unique_id("sub");
    let mut options = v4::options(cluster.addr(1), &subscriber);
    options.set_clean_session(false);
    let (mut sub, _) = v4::Client::connect(options).await;
    sub.subscribe(&format!("{topic}/#"), v4::QoS::AtLeastOnce)
        .await;
    sub.disconnect().await;
    cluster.kill(1);

    let mut publisher = v4::Client::simple(cluster.addr(0), &unique_id("pub")).await;
    let sent = 20u32;
    for n in 0..sent {
        // Waits for the PUBACK, which comes once node 1 is suspected.
        publisher
            .publish(
                &format!("{topic}/{n}"),
                v4::QoS::AtLeastOnce,
                false,
                &n.to_be_bytes(),
            )
            .await;
    }
    drop(publisher);
    cluster.kill(0);

    cluster.start_again(0);
    cluster.start_again(1);
    cluster.wait_linked();
    let mut options = v4::options(cluster.addr(1), &subscriber);
    options.set_clean_session(false);
    let (mut sub, session_present) = v4::Client::connect(options).await;
    assert!(session_present, "the subscriber's session was restored");
    let mut received = Vec::new();
    while let Some(publish) = sub.try_next_publish(Duration::from_secs(5)).await {
        let n = u32::from_be_bytes(publish.payload.as_ref().try_into().expect("4 bytes"));
        received.push(n);
        if received.len() as u32 == sent {
            break;
        }
    }
    received.sort_unstable();
    received.dedup();
    assert_eq!(
        received,
        (0..sent).collect::<Vec<_>>(),
        "node 0 logs:\n{}\nnode 1 logs:\n{}",
        cluster.node(0).logs(),
        cluster.node(1).logs()
    );
}
