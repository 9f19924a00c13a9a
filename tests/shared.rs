//! Shared subscriptions (`$share/{group}/{filter}`) against the real
//! binary on two shards: each message reaches exactly one member wherever
//! the members live, strategies, retained messages, malformed names, No
//! Local, unsubscribe, and unacknowledged messages moving to another member
//! when one disconnects.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::raw::{Raw, RecvError};
use common::wire::{self, Connect, Pub};
use common::{Broker, QUIET, RECV_TIMEOUT};
use ringmq::shard::home_shard;

/// How long a member waits for more before deciding it has everything.
const SETTLE: Duration = Duration::from_millis(1500);

/// `n` client ids starting with `prefix`, half homed on each of two shards,
/// alternating, so a group of them spans both.
fn ids_on_both_shards(prefix: &str, n: usize) -> Vec<String> {
    let mut by_shard = [Vec::new(), Vec::new()];
    for i in 0.. {
        let id = format!("{prefix}-{i}");
        let shard = home_shard(&id, 2);
        if by_shard[shard].len() < n.div_ceil(2) {
            by_shard[shard].push(id);
        }
        if by_shard[0].len() + by_shard[1].len() >= n {
            break;
        }
    }
    let [zero, one] = by_shard;
    let mut ids = Vec::new();
    for (a, b) in zero.into_iter().zip(one) {
        ids.push(a);
        ids.push(b);
    }
    ids.truncate(n);
    ids
}

/// Connects (v4 or v5 by `version`) and subscribes to `filter` at QoS 1.
async fn member(addr: SocketAddr, version: u8, id: &str, filter: &str) -> Raw {
    let (mut raw, _) = Raw::connect_ok(addr, Connect::new(version, id)).await;
    assert_eq!(raw.subscribe(1, &[(filter, 1)]).await, vec![1], "{id}");
    raw
}

/// Every PUBLISH payload received until nothing came for [`SETTLE`],
/// acknowledging QoS 1.
async fn receive_all(raw: &mut Raw) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        match raw.try_recv(SETTLE).await {
            Ok(p) if p.kind() == wire::PUBLISH => {
                let p = p.publish(raw.version);
                if p.qos == 1 {
                    raw.send(&wire::ack(wire::PUBACK, p.pkid)).await;
                }
                got.push(String::from_utf8_lossy(&p.payload).into_owned());
            }
            Ok(other) => panic!("unexpected packet {other:?}"),
            Err(RecvError::Timeout) => return got,
            Err(RecvError::Closed) => panic!("broker closed a member's connection"),
        }
    }
}

/// Receives concurrently on every member; each gets its own list back.
async fn receive_on_all(members: Vec<Raw>) -> Vec<(Raw, Vec<String>)> {
    let tasks: Vec<_> = members
        .into_iter()
        .map(|mut raw| {
            tokio::spawn(async move {
                let got = receive_all(&mut raw).await;
                (raw, got)
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("member task"));
    }
    results
}

async fn publish_numbered(addr: SocketAddr, id: &str, topic: &str, count: u16) {
    let (mut publisher, _) = Raw::connect_ok(addr, Connect::v4(id)).await;
    for i in 0..count {
        publisher
            .publish(Pub::new(topic, format!("{i}").as_bytes()).qos(1, i + 1))
            .await;
    }
}

/// How many times each payload was received, over all lists.
fn tally<'a>(lists: impl IntoIterator<Item = &'a Vec<String>>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for payload in lists.into_iter().flatten() {
        *counts.entry(payload.clone()).or_insert(0) += 1;
    }
    counts
}

fn numbered(count: u16) -> BTreeMap<String, usize> {
    (0..count).map(|i| (format!("{i}"), 1)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_message_reaches_exactly_one_member_across_shards_round_robin() {
    const MESSAGES: u16 = 120;
    let broker = Broker::start(&["--cores", "2"]);
    let ids = ids_on_both_shards("rr-member", 6);
    let mut members = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        // v5 and 3.1.1 clients in one group.
        let version = if i % 2 == 0 { wire::V5 } else { wire::V4 };
        members.push(member(broker.addr, version, id, "$share/workers/jobs/+").await);
    }
    // An ordinary subscription on the same filter is not part of the group.
    let plain = member(broker.addr, wire::V5, "rr-plain", "jobs/+").await;

    let receivers = tokio::spawn(receive_on_all(members));
    let plain_receiver = tokio::spawn(receive_on_all(vec![plain]));
    publish_numbered(broker.addr, "rr-pub", "jobs/a", MESSAGES).await;
    let results = receivers.await.expect("members");
    let plain = plain_receiver.await.expect("plain");

    let lists: Vec<_> = results.iter().map(|(_, got)| got).collect();
    assert_eq!(
        tally(lists.iter().copied()),
        numbered(MESSAGES),
        "every message exactly once across the group"
    );
    let per_member = MESSAGES as usize / ids.len();
    for (id, got) in ids.iter().zip(&lists) {
        assert!(
            got.len().abs_diff(per_member) <= 2,
            "round robin: {id} got {} of {MESSAGES}",
            got.len()
        );
    }
    assert_eq!(tally([&plain[0].1]), numbered(MESSAGES), "plain subscriber");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_strategy_delivers_each_message_once() {
    const MESSAGES: u16 = 60;
    let broker = Broker::start(&["--cores", "2", "--shared-subscription-strategy", "random"]);
    let mut members = Vec::new();
    for id in ids_on_both_shards("rand-member", 4) {
        members.push(member(broker.addr, wire::V4, &id, "$share/r/rand/t").await);
    }
    let receivers = tokio::spawn(receive_on_all(members));
    publish_numbered(broker.addr, "rand-pub", "rand/t", MESSAGES).await;
    let results = receivers.await.expect("members");
    assert_eq!(
        tally(results.iter().map(|(_, got)| got)),
        numbered(MESSAGES)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sticky_strategy_keeps_one_member() {
    const MESSAGES: u16 = 30;
    let broker = Broker::start(&["--cores", "2", "--shared-subscription-strategy", "sticky"]);
    let mut members = Vec::new();
    for id in ids_on_both_shards("sticky-member", 4) {
        members.push(member(broker.addr, wire::V5, &id, "$share/s/sticky/#").await);
    }
    let receivers = tokio::spawn(receive_on_all(members));
    publish_numbered(broker.addr, "sticky-pub", "sticky/x", MESSAGES).await;
    let results = receivers.await.expect("members");
    let counts: Vec<usize> = results.iter().map(|(_, got)| got.len()).collect();
    assert_eq!(
        tally(results.iter().map(|(_, got)| got)),
        numbered(MESSAGES)
    );
    assert!(
        counts.contains(&(MESSAGES as usize)),
        "one member gets everything: {counts:?}"
    );
}

#[tokio::test]
async fn shared_subscribe_gets_no_retained_messages() {
    let broker = Broker::start(&["--cores", "2"]);
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("ret-pub")).await;
    publisher
        .publish(Pub::new("ret/t", b"kept").qos(1, 1).retain())
        .await;
    for version in [wire::V4, wire::V5] {
        let mut raw = member(
            broker.addr,
            version,
            &format!("ret-member-{version}"),
            "$share/g/ret/t",
        )
        .await;
        raw.expect_silence(QUIET).await;
        // The same filter, not shared, does get it.
        assert_eq!(raw.subscribe(2, &[("ret/t", 1)]).await, vec![1]);
        let p = raw.recv_publish().await;
        assert!(p.retain);
        assert_eq!(p.payload, b"kept");
    }
}

#[tokio::test]
async fn malformed_share_names_get_failure_codes() {
    let malformed = [
        "$share//t",
        "$share/g",
        "$share/g/",
        "$share/g+/t",
        "$share/#/t",
        "$share/g/a/#/b",
    ];
    let broker = Broker::start(&["--cores", "2"]);
    for (version, failure) in [(wire::V4, 0x80u8), (wire::V5, 0x8F)] {
        let (mut raw, _) = Raw::connect_ok(
            broker.addr,
            Connect::new(version, &format!("bad-share-{version}")),
        )
        .await;
        for (i, name) in malformed.iter().enumerate() {
            let codes = raw
                .subscribe(i as u16 + 1, &[("$share/ok/t", 1), (name, 1), ("ok/t", 0)])
                .await;
            assert_eq!(codes, vec![1, failure, 0], "v{version} {name:?}");
        }
    }
}

#[tokio::test]
async fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let broker = Broker::start(&[]);
    let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v5("no-local-share")).await;
    // Options: QoS 1 with No Local (bit 2).
    raw.send(&wire::subscribe(
        wire::V5,
        1,
        &[("$share/g/t", 0x05)],
        wire::Props::new(),
    ))
    .await;
    let seen = raw.expect_closed(RECV_TIMEOUT).await;
    assert_eq!(seen.len(), 1, "one DISCONNECT, no SUBACK: {seen:?}");
    assert_eq!(seen[0].disconnect_reason(), 0x82, "Protocol Error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsubscribe_removes_only_that_membership() {
    const MESSAGES: u16 = 4;
    let broker = Broker::start(&["--cores", "2"]);
    let ids = ids_on_both_shards("unsub", 2);
    let mut both = member(broker.addr, wire::V5, &ids[0], "$share/g1/u/t").await;
    assert_eq!(both.subscribe(2, &[("$share/g2/u/t", 1)]).await, vec![1]);
    let other = member(broker.addr, wire::V4, &ids[1], "$share/g1/u/t").await;

    both.send(&wire::unsubscribe(wire::V5, 3, &["$share/g1/u/t"]))
        .await;
    let unsuback = both.recv_kind(wire::UNSUBACK).await;
    assert_eq!(unsuback.body.last(), Some(&0x00), "Success: {unsuback:?}");

    let receivers = tokio::spawn(receive_on_all(vec![both, other]));
    publish_numbered(broker.addr, "unsub-pub", "u/t", MESSAGES).await;
    let results = receivers.await.expect("members");
    // g2 has only the first client now, g1 only the second: each gets all.
    assert_eq!(tally([&results[0].1]), numbered(MESSAGES), "g2");
    assert_eq!(tally([&results[1].1]), numbered(MESSAGES), "g1");
}

/// A member that read its messages but never acknowledged them goes away
/// (`clean` true: its session ends; false: it persists, offline): the
/// messages go to the member that is left.
async fn unacked_messages_move_to_another_member(clean: bool) {
    const MESSAGES: u16 = 10;
    let broker = Broker::start(&["--cores", "2"]);
    let ids = ids_on_both_shards(&format!("leaver-{clean}"), 2);
    let (mut leaver, _) = Raw::connect_ok(
        broker.addr,
        Connect::v5(&ids[0]).clean(clean).props(
            // Without an expiry interval a v5 session ends with its
            // connection whatever the clean start flag.
            wire::Props::new().u32(0x11, if clean { 0 } else { 600 }),
        ),
    )
    .await;
    assert_eq!(leaver.subscribe(1, &[("$share/g/work", 1)]).await, vec![1]);
    let stayer = member(broker.addr, wire::V4, &ids[1], "$share/g/work").await;
    let stayer = tokio::spawn(receive_on_all(vec![stayer]));

    publish_numbered(
        broker.addr,
        &format!("leaver-pub-{clean}"),
        "work",
        MESSAGES,
    )
    .await;
    // Round robin gives the leaver half. It leaves as soon as it has them,
    // well inside the stayer's settling time.
    for _ in 0..MESSAGES / 2 {
        let p = leaver.recv_publish().await;
        assert_eq!(p.qos, 1);
    }
    leaver.drop_abruptly();

    let results = stayer.await.expect("stayer");
    assert_eq!(
        tally([&results[0].1]),
        numbered(MESSAGES),
        "the stayer ends up with its own messages and the leaver's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_session_ending_hands_unacked_messages_on() {
    unacked_messages_move_to_another_member(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_going_offline_hands_unacked_messages_on() {
    unacked_messages_move_to_another_member(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_member_is_skipped_and_the_last_one_queues() {
    let broker = Broker::start(&["--cores", "2"]);
    let ids = ids_on_both_shards("offline", 2);
    let persistent = |id: &str| {
        Connect::v5(id)
            .clean(false)
            .props(wire::Props::new().u32(0x11, 600))
    };
    let (mut away, _) = Raw::connect_ok(broker.addr, persistent(&ids[0])).await;
    assert_eq!(away.subscribe(1, &[("$share/g/off", 1)]).await, vec![1]);
    away.send(&wire::disconnect_v5(0x00, wire::Props::new()))
        .await;
    let mut online = member(broker.addr, wire::V4, &ids[1], "$share/g/off").await;
    // Give the broker time to see the DISCONNECT.
    tokio::time::sleep(Duration::from_millis(200)).await;

    publish_numbered(broker.addr, "offline-pub", "off", 4).await;
    assert_eq!(receive_all(&mut online).await.len(), 4);

    // With no online member left, the offline one queues.
    online.send(&wire::disconnect_v4()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish_numbered(broker.addr, "offline-pub", "off", 3).await;
    let (mut back, connack) = Raw::connect_ok(broker.addr, persistent(&ids[0])).await;
    assert!(connack.session_present);
    assert_eq!(tally([&receive_all(&mut back).await]), numbered(3));
}
