//! Durable sessions (`--data-dir`): queued and in-flight messages,
//! retained messages, session expiry and wills survive `kill -9` and
//! restarts, also when the shard count changes; damaged, truncated, newer
//! or locked data dirs refuse to start; a full disk refuses
//! acknowledgements and recovers; a kill loop loses nothing acknowledged.
//!
//! Every test has a data dir of its own and restarts the broker on it; the
//! new broker listens on a new port, and clients reconnect there.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::clients::{v4, v5};
use common::data_dir::{
    DataDir, Tmpfs, damage, damage_at, kill, occurrences, partition_holding, stop,
};
use common::http;
use common::raw::{Raw, RecvError};
use common::wire::{self, Connect, Props, Pub, Publish};
use common::{Broker, QUIET, RECV_TIMEOUT, run_to_exit};
use ringmq::shard::home_shard;

fn persistent(version: u8, id: &str) -> Connect {
    let connect = Connect::new(version, id).clean(false);
    if version == wire::V5 {
        connect.props(Props::new().u32(wire::SESSION_EXPIRY, 300))
    } else {
        connect
    }
}

/// A persistent session subscribed to `filters`, left offline.
async fn offline_subscriber(
    addr: std::net::SocketAddr,
    version: u8,
    id: &str,
    filters: &[(&str, u8)],
) {
    let (mut sub, _) = Raw::connect_ok(addr, persistent(version, id)).await;
    let granted: Vec<u8> = filters.iter().map(|&(_, qos)| qos).collect();
    assert_eq!(sub.subscribe(1, filters).await, granted, "{id}");
    leave(&mut sub).await;
}

async fn leave(raw: &mut Raw) {
    if raw.version == wire::V5 {
        raw.send(&wire::disconnect_v5(0, Props::new())).await;
    } else {
        raw.send(&wire::disconnect_v4()).await;
    }
    raw.expect_closed(RECV_TIMEOUT).await;
}

/// Publishes QoS 1 to `topic` and waits for the PUBACK. A persistent
/// session subscribed to `topic` makes this a barrier: the PUBACK waits
/// until that session's shard has committed the message, and so, its
/// epochs being committed in order, everything the shard wrote before.
async fn barrier(addr: std::net::SocketAddr, topic: &str) {
    let (mut publisher, _) =
        Raw::connect_ok(addr, Connect::v4(&common::unique_id("barrier"))).await;
    publisher
        .publish(Pub::new(topic, b"barrier").qos(1, 1))
        .await;
    leave(&mut publisher).await;
}

/// Receives PUBLISHes, completing each QoS flow (and any PUBREL owed from
/// before), until `count` have arrived and then [`QUIET`] passes without
/// another; returns them in arrival order.
async fn drain(raw: &mut Raw, count: usize) -> Vec<Publish> {
    let mut got = Vec::new();
    loop {
        let wait = if got.len() < count {
            RECV_TIMEOUT
        } else {
            QUIET
        };
        let packet = match raw.try_recv(wait).await {
            Ok(packet) => packet,
            Err(RecvError::Timeout) if got.len() >= count => return got,
            Err(error) => panic!(
                "{error:?} after {} of {count} messages: {:?}",
                got.len(),
                payloads(&got)
            ),
        };
        match packet.kind() {
            wire::PUBLISH => {
                let publish = packet.publish(raw.version);
                match publish.qos {
                    1 => raw.send(&wire::ack(wire::PUBACK, publish.pkid)).await,
                    2 => raw.send(&wire::ack(wire::PUBREC, publish.pkid)).await,
                    _ => {}
                }
                got.push(publish);
            }
            wire::PUBREL => raw.send(&wire::ack(wire::PUBCOMP, packet.ack().0)).await,
            other => panic!("unexpected packet type {other}: {packet:?}"),
        }
    }
}

fn payloads(publishes: &[Publish]) -> Vec<String> {
    publishes
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

/// The payloads received on `topic`, in order.
fn on_topic(publishes: &[Publish], topic: &str) -> Vec<String> {
    payloads(
        &publishes
            .iter()
            .filter(|p| p.topic == topic)
            .cloned()
            .collect::<Vec<_>>(),
    )
}

fn numbered(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|n| format!("{prefix}:{n}")).collect()
}

/// Receives PUBLISHes on a rumqttc client (which acknowledges them) until
/// `count` have arrived and then [`QUIET`] passes without another: topic,
/// payload and QoS of each, in arrival order.
macro_rules! drain_rumqttc {
    ($client:expr, $count:expr) => {{
        let mut got: Vec<(String, String, u8)> = Vec::new();
        loop {
            let wait = if got.len() < $count {
                RECV_TIMEOUT
            } else {
                QUIET
            };
            match $client.try_next_publish(wait).await {
                Some(p) => got.push((
                    String::from_utf8_lossy(p.topic.as_ref()).into_owned(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                    p.qos as u8,
                )),
                None if got.len() >= $count => break got,
                None => panic!("{} of {} messages: {got:?}", got.len(), $count),
            }
        }
    }};
}

/// What arrived on `topic` against `name:0` .. `name:count-1` published
/// in order at `qos`.
fn tally_topic(
    got: &[(String, String, u8)],
    topic: &str,
    name: &str,
    count: u32,
    qos: u8,
) -> common::tally::Tally {
    let on_topic: Vec<&(String, String, u8)> = got.iter().filter(|(t, _, _)| t == topic).collect();
    for (_, payload, delivered) in &on_topic {
        assert_eq!(*delivered, qos, "{topic} {payload}: delivered QoS");
    }
    let received: Vec<(String, u32)> = on_topic
        .iter()
        .map(|(_, payload, _)| common::tally::parse(payload.as_bytes()))
        .collect();
    assert!(
        received.iter().all(|(publisher, _)| publisher == name),
        "{topic}: {received:?}"
    );
    common::tally::tally(&BTreeMap::from([(name.to_owned(), count)]), &received)
}

/// Test 1: a persistent subscriber's offline queue of QoS 1 and QoS 2
/// messages, all acknowledged to their publisher, survives `kill -9`.
/// A SUBACK for a stored session means the subscription is on disk: a
/// kill -9 the moment it arrives keeps it, and what is published to it
/// after the restart is queued for the session. Several rounds, each
/// killed right after its SUBACK (before this was so, the subscription
/// was lost in a few rounds out of a hundred, and every message with it).
#[tokio::test]
async fn a_subscription_acknowledged_survives_a_kill_right_after_its_suback() {
    let dir = DataDir::new("suback");
    let mut broker = dir.start(&["--cores", "2"]);
    for round in 0..5u8 {
        let client = format!("st1-suback-{round}");
        let topic = format!("st1/suback/{round}");
        let (mut sub, _) = Raw::connect_ok(broker.addr, persistent(wire::V4, &client)).await;
        assert_eq!(sub.subscribe(1, &[(&topic, 1)]).await, vec![1]);
        kill(broker);
        broker = dir.start(&["--cores", "2"]);
        let (mut publisher, _) =
            Raw::connect_ok(broker.addr, Connect::v4(&format!("{client}-pub"))).await;
        publisher
            .publish(Pub::new(&topic, b"after").qos(1, 1))
            .await;
        let (mut sub, connack) = Raw::connect_ok(broker.addr, persistent(wire::V4, &client)).await;
        assert!(connack.session_present, "round {round}");
        assert_eq!(
            payloads(&drain(&mut sub, 1).await),
            ["after"],
            "round {round}"
        );
    }
}

#[tokio::test]
async fn queued_messages_survive_kill_9_v4() {
    const N: u32 = 50;
    let dir = DataDir::new("queued-v4");
    let broker = dir.start(&["--cores", "2"]);
    let mut opts = v4::options(broker.addr, "st1-sub-v4");
    opts.set_clean_session(false);
    let (mut sub, present) = v4::Client::connect(opts).await;
    assert!(!present);
    sub.subscribe("st1/v4/q1", v4::QoS::AtLeastOnce).await;
    sub.subscribe("st1/v4/q2", v4::QoS::ExactlyOnce).await;
    sub.disconnect().await;

    let mut publisher = v4::Client::simple(broker.addr, "st1-pub-v4").await;
    for n in 0..N {
        let (q1, q2) = (format!("q1:{n}"), format!("q2:{n}"));
        publisher
            .publish("st1/v4/q1", v4::QoS::AtLeastOnce, false, q1.as_bytes())
            .await;
        publisher
            .publish("st1/v4/q2", v4::QoS::ExactlyOnce, false, q2.as_bytes())
            .await;
    }
    drop(publisher);
    kill(broker);

    let broker = dir.start(&["--cores", "2"]);
    let mut opts = v4::options(broker.addr, "st1-sub-v4");
    opts.set_clean_session(false);
    let (mut sub, present) = v4::Client::connect(opts).await;
    assert!(present, "the session must survive kill -9");
    let got = drain_rumqttc!(sub, 2 * N as usize);
    let q1 = tally_topic(&got, "st1/v4/q1", "q1", N, 1);
    let q2 = tally_topic(&got, "st1/v4/q2", "q2", N, 2);
    println!("after kill -9, v4: QoS 1 {q1}; QoS 2 {q2}");
    assert_eq!((q1.lost, q1.reordered), (0, 0), "QoS 1: {q1}");
    assert_eq!(
        q2,
        common::tally::Tally::default(),
        "QoS 2 exactly once, in order"
    );

    // The subscriptions came back too: live messages flow.
    let mut publisher = v4::Client::simple(broker.addr, "st1-pub-v4").await;
    publisher
        .publish("st1/v4/q2", v4::QoS::ExactlyOnce, false, b"q2:live")
        .await;
    assert_eq!(&sub.next_publish().await.payload[..], b"q2:live");
}

/// Test 1, MQTT 5: the session lives by its Session Expiry Interval.
#[tokio::test]
async fn queued_messages_survive_kill_9_v5() {
    const N: u32 = 50;
    let dir = DataDir::new("queued-v5");
    let broker = dir.start(&["--cores", "2"]);
    let options = |addr| {
        let mut opts = v5::options(addr, "st1-sub-v5");
        opts.set_clean_start(false);
        opts.set_session_expiry_interval(Some(600));
        opts
    };
    let (mut sub, connack) = v5::Client::connect(options(broker.addr)).await;
    assert!(!connack.session_present);
    sub.subscribe("st1/v5/q1", v5::QoS::AtLeastOnce).await;
    sub.subscribe("st1/v5/q2", v5::QoS::ExactlyOnce).await;
    sub.disconnect().await;

    let mut publisher = v5::Client::simple(broker.addr, "st1-pub-v5").await;
    for n in 0..N {
        let (q1, q2) = (format!("q1:{n}"), format!("q2:{n}"));
        publisher
            .publish("st1/v5/q1", v5::QoS::AtLeastOnce, false, q1.as_bytes())
            .await;
        publisher
            .publish("st1/v5/q2", v5::QoS::ExactlyOnce, false, q2.as_bytes())
            .await;
    }
    drop(publisher);
    kill(broker);

    let broker = dir.start(&["--cores", "2"]);
    let (mut sub, connack) = v5::Client::connect(options(broker.addr)).await;
    assert!(connack.session_present, "the session must survive kill -9");
    let got = drain_rumqttc!(sub, 2 * N as usize);
    let q1 = tally_topic(&got, "st1/v5/q1", "q1", N, 1);
    let q2 = tally_topic(&got, "st1/v5/q2", "q2", N, 2);
    println!("after kill -9, v5: QoS 1 {q1}; QoS 2 {q2}");
    assert_eq!((q1.lost, q1.reordered), (0, 0), "QoS 1: {q1}");
    assert_eq!(
        q2,
        common::tally::Tally::default(),
        "QoS 2 exactly once, in order"
    );

    let mut publisher = v5::Client::simple(broker.addr, "st1-pub-v5").await;
    publisher
        .publish("st1/v5/q1", v5::QoS::AtLeastOnce, false, b"q1:live")
        .await;
    assert_eq!(&sub.next_publish().await.payload[..], b"q1:live");
}

/// Test 2: messages sent but not acknowledged come again after `kill -9`
/// with DUP and the packet ids they had; a QoS 2 flow the client answered
/// with PUBREC gets its PUBREL again, not the PUBLISH.
#[tokio::test]
async fn inflight_flows_resume_after_kill_9_with_dup_and_the_same_packet_ids() {
    for version in [wire::V4, wire::V5] {
        let dir = DataDir::new(&format!("inflight-v{version}"));
        // One shard: a barrier publish covers everything written before.
        let args = ["--cores", "1"];
        let broker = dir.start(&args);
        offline_subscriber(broker.addr, wire::V4, "st2-sync", &[("st2/sync", 1)]).await;
        let id = format!("st2-sub-v{version}");
        let (mut sub, _) = Raw::connect_ok(broker.addr, persistent(version, &id)).await;
        sub.subscribe(1, &[("st2/a", 1), ("st2/b", 2)]).await;
        let (mut publisher, _) =
            Raw::connect_ok(broker.addr, Connect::new(version, "st2-pub")).await;
        let sent = [
            ("st2/a", "a1", 1),
            ("st2/a", "a2", 1),
            ("st2/b", "b1", 2),
            ("st2/b", "b2", 2),
        ];
        for (pkid, (topic, payload, qos)) in (1..).zip(sent) {
            publisher
                .publish(Pub::new(topic, payload.as_bytes()).qos(qos, pkid))
                .await;
        }
        let mut first = Vec::new();
        for (topic, payload, qos) in sent {
            let p = sub.recv_publish().await;
            assert_eq!(
                (p.topic.as_str(), p.payload.as_slice(), p.qos),
                (topic, payload.as_bytes(), qos)
            );
            assert!(!p.dup, "v{version}: first delivery of {payload}");
            first.push(p);
        }
        // b2 is received (PUBREC) but not completed (no PUBCOMP); the rest
        // are not acknowledged at all.
        let b2 = first[3].pkid;
        sub.send(&wire::ack(wire::PUBREC, b2)).await;
        assert_eq!(sub.recv_kind(wire::PUBREL).await.ack().0, b2);
        barrier(broker.addr, "st2/sync").await;
        kill(broker);

        let broker = dir.start(&args);
        let (mut sub, connack) = Raw::connect_ok(broker.addr, persistent(version, &id)).await;
        assert!(connack.session_present, "v{version}");
        let (mut again, mut released) = (Vec::new(), Vec::new());
        for _ in 0..4 {
            let packet = sub.recv().await;
            match packet.kind() {
                wire::PUBLISH => again.push(packet.publish(version)),
                wire::PUBREL => released.push(packet.ack().0),
                other => panic!("v{version}: unexpected packet type {other}: {packet:?}"),
            }
        }
        sub.expect_silence(QUIET).await;
        assert_eq!(
            released,
            [b2],
            "v{version}: PUBREL again for the released flow"
        );
        assert_eq!(
            payloads(&again),
            ["a1", "a2", "b1"],
            "v{version}: the unacknowledged ones"
        );
        for (p, before) in again.iter().zip(&first) {
            assert!(p.dup, "v{version}: {:?} redelivered without DUP", p.payload);
            assert_eq!(
                (p.pkid, p.qos, &p.topic),
                (before.pkid, before.qos, &before.topic)
            );
        }

        // Completed now: nothing is owed after the next restart.
        sub.send(&wire::ack(wire::PUBACK, again[0].pkid)).await;
        sub.send(&wire::ack(wire::PUBACK, again[1].pkid)).await;
        sub.send(&wire::ack(wire::PUBREC, again[2].pkid)).await;
        assert_eq!(sub.recv_kind(wire::PUBREL).await.ack().0, again[2].pkid);
        sub.send(&wire::ack(wire::PUBCOMP, again[2].pkid)).await;
        sub.send(&wire::ack(wire::PUBCOMP, b2)).await;
        barrier(broker.addr, "st2/sync").await;
        kill(broker);

        let broker = dir.start(&args);
        let (mut sub, connack) = Raw::connect_ok(broker.addr, persistent(version, &id)).await;
        assert!(connack.session_present, "v{version}");
        sub.expect_silence(QUIET).await;
    }
}

fn mosquitto_pub(addr: std::net::SocketAddr, args: &[&str]) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-q", "1", "-i", &common::unique_id("st-mosquitto")])
        .args(args)
        .status()
        .expect("mosquitto_pub (mosquitto-clients) must be installed");
    assert!(status.success(), "mosquitto_pub {args:?}: {status}");
}

/// The retained messages a new subscriber to `filter` gets: topic and
/// payload, sorted.
async fn retained(addr: std::net::SocketAddr, filter: &str, count: usize) -> Vec<(String, String)> {
    let (mut sub, _) = Raw::connect_ok(addr, Connect::v4(&common::unique_id("st-ret"))).await;
    sub.subscribe(1, &[(filter, 1)]).await;
    let got = drain(&mut sub, count).await;
    assert!(got.iter().all(|p| p.retain), "RETAIN flag on each: {got:?}");
    let mut got: Vec<(String, String)> = got
        .iter()
        .map(|p| {
            (
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            )
        })
        .collect();
    got.sort();
    got
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|&(t, p)| (t.to_owned(), p.to_owned()))
        .collect()
}

/// Test 3: retained messages set, replaced and deleted (empty payload)
/// come back after `kill -9` as they were left; the deleted one does not.
#[tokio::test]
async fn retained_messages_survive_kill_9_and_deleted_ones_stay_deleted() {
    let dir = DataDir::new("retained");
    let broker = dir.start(&["--cores", "2"]);
    mosquitto_pub(broker.addr, &["-r", "-t", "st3/ret/a", "-m", "a1"]);
    mosquitto_pub(broker.addr, &["-r", "-t", "st3/ret/a", "-m", "a2"]);
    mosquitto_pub(broker.addr, &["-r", "-t", "st3/ret/b", "-m", "b1"]);
    mosquitto_pub(broker.addr, &["-r", "-t", "st3/ret/c", "-m", "c1"]);
    mosquitto_pub(broker.addr, &["-r", "-t", "st3/ret/c", "-n"]);
    kill(broker);

    let broker = dir.start(&["--cores", "2"]);
    assert_eq!(
        retained(broker.addr, "st3/ret/#", 2).await,
        pairs(&[("st3/ret/a", "a2"), ("st3/ret/b", "b1")])
    );
    mosquitto_pub(broker.addr, &["-r", "-t", "st3/ret/b", "-n"]);
    kill(broker);

    let broker = dir.start(&["--cores", "2"]);
    assert_eq!(
        retained(broker.addr, "st3/ret/#", 1).await,
        pairs(&[("st3/ret/a", "a2")])
    );
}

/// Whether `id` (MQTT 5, Clean Start 0) finds its session; the new
/// connection asks for `expiry` again and leaves.
async fn session_present(addr: std::net::SocketAddr, id: &str, expiry: u32) -> bool {
    let connect = Connect::v5(id)
        .clean(false)
        .props(Props::new().u32(wire::SESSION_EXPIRY, expiry));
    let (mut raw, connack) = Raw::connect_ok(addr, connect).await;
    leave(&mut raw).await;
    connack.session_present
}

/// Test 3: a session's expiry deadline is kept across a restart: it runs
/// on while the broker is down, and the rest of it after the restart.
#[tokio::test]
async fn session_expiry_runs_on_across_a_restart() {
    let dir = DataDir::new("expiry");
    let broker = dir.start(&["--cores", "2"]);
    let sessions = [
        ("st3-exp2", 2),
        ("st3-exp8-a", 8),
        ("st3-exp8-b", 8),
        ("st3-exp600", 600),
    ];
    for (id, expiry) in sessions {
        let connect = Connect::v5(id)
            .clean(false)
            .props(Props::new().u32(wire::SESSION_EXPIRY, expiry));
        let (mut raw, _) = Raw::connect_ok(broker.addr, connect).await;
        raw.subscribe(1, &[("st3/exp", 1)]).await;
        leave(&mut raw).await;
    }
    let offline = Instant::now();
    stop(broker);
    // Time has to pass with the broker down: nothing to poll.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let broker = dir.start(&["--cores", "2"]);
    assert!(
        !session_present(broker.addr, "st3-exp2", 2).await,
        "a 2 s session must have expired while the broker was down"
    );
    assert!(session_present(broker.addr, "st3-exp600", 600).await);
    let early = offline.elapsed();
    assert!(
        early < Duration::from_secs(7),
        "the machine is too slow for this test: {early:?} already"
    );
    assert!(
        session_present(broker.addr, "st3-exp8-a", 8).await,
        "an 8 s session after {early:?}"
    );
    // The deadline is the one set before the restart, not 8 s from it.
    tokio::time::sleep(Duration::from_millis(8_500).saturating_sub(offline.elapsed())).await;
    assert!(
        !session_present(broker.addr, "st3-exp8-b", 8).await,
        "an 8 s session after {:?}",
        offline.elapsed()
    );
}

/// Test 3: the wills of sessions that were connected at the kill go out
/// after the restart, once, to a persistent subscriber.
#[tokio::test]
async fn wills_of_sessions_connected_at_the_kill_go_out_after_restart() {
    let dir = DataDir::new("will");
    let broker = dir.start(&["--cores", "2"]);
    offline_subscriber(broker.addr, wire::V4, "st3-will-sub", &[("st3/will/#", 1)]).await;
    let owners = [
        Connect::v5("st3-will-v5")
            .clean(false)
            .props(Props::new().u32(wire::SESSION_EXPIRY, 600))
            .will(wire::Will::new("st3/will/v5", b"v5 gone").qos(1)),
        Connect::v4("st3-will-v4")
            .clean(false)
            .will(wire::Will::new("st3/will/v4", b"v4 gone").qos(1)),
    ];
    let mut connected = Vec::new();
    for owner in owners {
        let id = owner.client_id.clone();
        let (mut raw, _) = Raw::connect_ok(broker.addr, owner).await;
        let sync = format!("st3/sync/{id}");
        raw.subscribe(1, &[(sync.as_str(), 1)]).await;
        // The owner's shard has written its session, will included.
        barrier(broker.addr, &sync).await;
        connected.push(raw);
    }
    kill(broker);
    drop(connected);

    let broker = dir.start(&["--cores", "2"]);
    let (mut sub, connack) =
        Raw::connect_ok(broker.addr, persistent(wire::V4, "st3-will-sub")).await;
    assert!(connack.session_present);
    let mut wills: Vec<(String, String)> = drain(&mut sub, 2)
        .await
        .iter()
        .map(|p| {
            (
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            )
        })
        .collect();
    wills.sort();
    assert_eq!(
        wills,
        pairs(&[("st3/will/v4", "v4 gone"), ("st3/will/v5", "v5 gone")])
    );
    drop(sub);
    stop(broker);

    // Published once: not again after the next restart.
    let broker = dir.start(&["--cores", "2"]);
    let (mut sub, connack) =
        Raw::connect_ok(broker.addr, persistent(wire::V4, "st3-will-sub")).await;
    assert!(connack.session_present);
    sub.expect_silence(QUIET).await;
    for id in ["st3-will-v5", "st3-will-v4"] {
        let version = if id.ends_with("v5") {
            wire::V5
        } else {
            wire::V4
        };
        let (_raw, connack) = Raw::connect_ok(broker.addr, persistent(version, id)).await;
        assert!(
            connack.session_present,
            "{id}: its session outlived the kill"
        );
    }
}

/// A raw client publishing with packet ids of its own choosing, waiting
/// for each flow to complete.
struct Publisher {
    raw: Raw,
    pkid: u16,
}

impl Publisher {
    async fn connect(addr: std::net::SocketAddr, version: u8, id: &str) -> Publisher {
        let (raw, _) = Raw::connect_ok(addr, Connect::new(version, id)).await;
        Publisher { raw, pkid: 0 }
    }

    async fn send(&mut self, topic: &str, payload: &str, qos: u8, retain: bool) {
        self.pkid = self.pkid % 60_000 + 1;
        let mut publish = Pub::new(topic, payload.as_bytes()).qos(qos, self.pkid);
        if retain {
            publish = publish.retain();
        }
        self.raw.publish(publish).await;
    }
}

/// Test 4: queued, in-flight and retained messages and subscriptions are
/// rehomed when the broker restarts with another number of shards, 2 to 3
/// to 1, each time after `kill -9`.
#[tokio::test]
async fn everything_is_rehomed_when_the_shard_count_changes() {
    const SUBS: usize = 6;
    let dir = DataDir::new("rehome");
    let version = |i: usize| {
        if i.is_multiple_of(2) {
            wire::V4
        } else {
            wire::V5
        }
    };
    let id = |i: usize| format!("st4-sub-{i}");
    let topic = |i: usize| format!("st4/{i}");

    let broker = dir.start(&["--cores", "2"]);
    for i in 0..SUBS {
        let filters = [(topic(i), 1), ("st4/all".to_owned(), 2)];
        let filters: Vec<(&str, u8)> = filters.iter().map(|(f, q)| (f.as_str(), *q)).collect();
        offline_subscriber(broker.addr, version(i), &id(i), &filters).await;
    }
    let mut publisher = Publisher::connect(broker.addr, wire::V5, "st4-pub").await;
    for i in 0..SUBS {
        publisher
            .send(&format!("st4/ret/{i}"), &format!("ret {i}"), 1, true)
            .await;
    }
    let mut next = [0u32; SUBS];
    for _ in 0..10 {
        for (i, n) in next.iter_mut().enumerate() {
            publisher
                .send(&topic(i), &format!("{i}:{n}"), 1, false)
                .await;
            *n += 1;
        }
    }
    for n in 0..5 {
        publisher
            .send("st4/all", &format!("all:{n}"), 2, false)
            .await;
    }
    // Sub 0 takes its messages in flight and vanishes without a PUBACK.
    let (mut sub0, _) = Raw::connect_ok(broker.addr, persistent(version(0), &id(0))).await;
    let mut in_flight = Vec::new();
    for _ in 0..15 {
        in_flight.push(sub0.recv_publish().await);
    }
    assert_eq!(
        payloads(&in_flight),
        [numbered("0", 0..10), numbered("all", 0..5)].concat()
    );
    sub0.drop_abruptly();
    // Queued to sub 0 on its shard, after the flights it wrote.
    publisher.send(&topic(0), "0:10", 1, false).await;
    next[0] += 1;
    drop(publisher);
    kill(broker);

    let broker = dir.start(&["--cores", "3"]);
    assert_eq!(
        (dir.current(), dir.sets()),
        ("set-2-3".to_owned(), vec!["set-2-3".to_owned()])
    );
    let expected: Vec<(String, String)> = (0..SUBS)
        .map(|i| (format!("st4/ret/{i}"), format!("ret {i}")))
        .collect();
    assert_eq!(retained(broker.addr, "st4/ret/#", SUBS).await, expected);
    let mut publisher = Publisher::connect(broker.addr, wire::V5, "st4-pub").await;
    for _ in 0..5 {
        for (i, n) in next.iter_mut().enumerate() {
            publisher
                .send(&topic(i), &format!("{i}:{n}"), 1, false)
                .await;
            *n += 1;
        }
    }
    for n in 5..10 {
        publisher
            .send("st4/all", &format!("all:{n}"), 2, false)
            .await;
    }
    publisher.send("st4/ret/0", "ret 0 v2", 1, true).await;
    publisher.send("st4/ret/1", "", 1, true).await;
    drop(publisher);
    kill(broker);

    let broker = dir.start(&["--cores", "1"]);
    assert_eq!(
        (dir.current(), dir.sets()),
        ("set-3-1".to_owned(), vec!["set-3-1".to_owned()])
    );
    let mut expected: Vec<(String, String)> = (2..SUBS)
        .map(|i| (format!("st4/ret/{i}"), format!("ret {i}")))
        .collect();
    expected.insert(0, ("st4/ret/0".into(), "ret 0 v2".into()));
    assert_eq!(retained(broker.addr, "st4/ret/#", SUBS - 1).await, expected);
    for (i, &n) in next.iter().enumerate() {
        let (mut sub, connack) = Raw::connect_ok(broker.addr, persistent(version(i), &id(i))).await;
        assert!(connack.session_present, "{}", id(i));
        let got = drain(&mut sub, n as usize + 10).await;
        assert_eq!(
            on_topic(&got, &topic(i)),
            numbered(&i.to_string(), 0..n),
            "{}",
            id(i)
        );
        assert_eq!(
            on_topic(&got, "st4/all"),
            numbered("all", 0..10),
            "{}",
            id(i)
        );
        assert!(
            got.iter()
                .filter(|p| p.topic == "st4/all")
                .all(|p| p.qos == 2)
        );
        if i == 0 {
            for (p, before) in got.iter().zip(&in_flight) {
                assert_eq!(
                    p.payload, before.payload,
                    "in-flight messages first, in order"
                );
                assert!(p.dup, "{:?} again without DUP", p.payload);
                assert_eq!(
                    p.pkid, before.pkid,
                    "{:?} under another packet id",
                    p.payload
                );
            }
            assert!(got[in_flight.len()..].iter().all(|p| !p.dup));
        }
    }
}

/// A partition with a persistent offline session holding `before`, a
/// message with a payload found nowhere else, and `after`; returns that
/// payload.
async fn session_with_unique_message(broker: &Broker, sub: &str) -> String {
    offline_subscriber(broker.addr, wire::V4, sub, &[("st5/t", 1)]).await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let unique = format!("unique-payload-{}-{nanos}-{sub}", std::process::id());
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("st5-pub")).await;
    for (pkid, payload) in (1..).zip(["before", unique.as_str(), "after"]) {
        publisher
            .publish(Pub::new("st5/t", payload.as_bytes()).qos(1, pkid))
            .await;
    }
    unique
}

/// Test 5: a record whose checksum fails stops the start, naming its
/// partition; `--repair` skips it (and logs that), and removes it, so the
/// next start needs no `--repair`.
#[tokio::test]
async fn a_damaged_record_refuses_start_unless_repair() {
    let dir = DataDir::new("damaged");
    let broker = dir.start(&["--cores", "2"]);
    let unique = session_with_unique_message(&broker, "st5-sub").await;
    // A clean stop: after a crash the engine checks its own page
    // checksums first (the next test).
    stop(broker);
    let partition = partition_holding(&dir, unique.as_bytes());
    assert!(damage(&partition, unique.as_bytes()) >= 1);

    let out = dir.refused(&["--cores", "2"]);
    let named = partition.display().to_string();
    assert!(
        out.stderr.contains("damaged record") && out.stderr.contains(&named),
        "stderr does not name the damaged record in {named}:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("at key m"),
        "the message record's key:\n{}",
        out.stderr
    );

    let broker = dir.start(&["--cores", "2", "--repair"]);
    let logs = broker.logs();
    assert!(
        logs.contains("damaged record skipped (--repair)") && logs.contains(&named),
        "the skip is not logged with its partition:\n{logs}"
    );
    assert!(!logs.contains("damaged record in"), "{logs}");
    let (mut sub, connack) = Raw::connect_ok(broker.addr, persistent(wire::V4, "st5-sub")).await;
    assert!(connack.session_present);
    assert_eq!(payloads(&drain(&mut sub, 2).await), ["before", "after"]);
    drop(sub);
    stop(broker);

    let broker = dir.start(&["--cores", "2"]);
    assert!(
        !broker.logs().contains("damaged record"),
        "{}",
        broker.logs()
    );
}

/// Test 5: damage found after a crash (the engine's own checksums) stops
/// the start too, naming the partition.
#[tokio::test]
async fn a_damaged_partition_after_kill_9_refuses_start() {
    let dir = DataDir::new("damaged-crash");
    let broker = dir.start(&["--cores", "2"]);
    let unique = session_with_unique_message(&broker, "st5-sub-crash").await;
    kill(broker);
    let partition = partition_holding(&dir, unique.as_bytes());
    assert!(damage(&partition, unique.as_bytes()) >= 1);
    let out = dir.refused(&["--cores", "2"]);
    let named = partition.display().to_string();
    assert!(
        out.stderr.contains(&named),
        "stderr does not name {named}:\n{}",
        out.stderr
    );
}

/// Test 5: after a crash, the engine checks its pages, and if its last
/// commit fails the check, rolls back to the commit before it. Whichever
/// copy of a record's page is damaged, the start refuses naming the
/// partition, or loses nothing, or says what it rolled back: never a
/// silent loss of acknowledged messages.
#[tokio::test]
async fn damage_after_kill_9_is_never_a_silent_loss() {
    let dir = DataDir::new("damaged-copy");
    let args = ["--cores", "1"];
    let broker = dir.start(&args);
    let unique = session_with_unique_message(&broker, "st5-sub-copy").await;
    kill(broker);
    let partition = partition_holding(&dir, unique.as_bytes());
    let found = occurrences(&partition, unique.as_bytes());
    assert!(!found.is_empty());
    for &at in &found {
        let trial = DataDir::copy_of(&dir, "damaged-copy-trial");
        let file = trial.path.join(partition.strip_prefix(&dir.path).unwrap());
        damage_at(&file, &[at], unique.len());
        let named = file.display().to_string();
        let broker = match trial.try_start(&args) {
            Err(refusal) => {
                assert!(refusal.contains(&named), "copy at {at}: {refusal}");
                println!("copy at {at} of {found:?} damaged: refused");
                continue;
            }
            Ok(broker) => broker,
        };
        let (mut sub, _) = Raw::connect_ok(broker.addr, persistent(wire::V4, "st5-sub-copy")).await;
        let got = payloads(&drain(&mut sub, 0).await);
        println!("copy at {at} of {found:?} damaged: started, delivered {got:?}");
        if got != ["before", unique.as_str(), "after"] {
            let logs = broker.logs();
            assert!(
                logs.contains("rolled back") && logs.contains(&named),
                "copy at {at}: {got:?} delivered after a silent start:\n{logs}"
            );
        }
    }
}

/// Test 5: a partition cut to half its length is an error, never a silent
/// start with what is left.
#[tokio::test]
async fn a_truncated_partition_refuses_start() {
    let dir = DataDir::new("truncated");
    let broker = dir.start(&["--cores", "2"]);
    let unique = session_with_unique_message(&broker, "st5-sub-cut").await;
    stop(broker);
    let partition = partition_holding(&dir, unique.as_bytes());
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&partition)
        .unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len / 2).unwrap();
    drop(file);
    let named = partition.display().to_string();
    for args in [&["--cores", "2"][..], &["--cores", "2", "--repair"]] {
        let out = dir.refused(args);
        assert!(
            out.stderr.contains(&named),
            "{args:?}: stderr does not name {named}:\n{}",
            out.stderr
        );
    }
}

/// Test 5: a data dir of a newer layout is refused, naming what it found.
#[tokio::test]
async fn a_newer_format_is_refused() {
    let dir = DataDir::new("format");
    stop(dir.start(&[]));
    assert_eq!(
        std::fs::read_to_string(dir.path.join("FORMAT")).unwrap(),
        "ringmq-data 2\n"
    );
    std::fs::write(dir.path.join("FORMAT"), "ringmq-data 99\n").unwrap();
    let out = dir.refused(&[]);
    assert!(
        out.stderr.contains("format") && out.stderr.contains("ringmq-data 99"),
        "stderr does not name the format:\n{}",
        out.stderr
    );
}

/// Test 5: one broker per data dir; the lock of a killed broker does not
/// outlive it.
#[tokio::test]
async fn a_second_broker_on_the_same_dir_is_refused() {
    let dir = DataDir::new("locked");
    let first = dir.start(&[]);
    let out = dir.refused(&[]);
    assert!(
        out.stderr.contains("in use by another broker") && out.stderr.contains(dir.arg()),
        "{}",
        out.stderr
    );
    // The first one serves on.
    let (mut raw, _) = Raw::connect_ok(first.addr, Connect::v4("st5-still")).await;
    raw.send(&wire::pingreq()).await;
    raw.recv_kind(wire::PINGRESP).await;
    kill(first);
    stop(dir.start(&[]));
}

/// Test 5: bad store settings are refused by name, as flags and as keys.
#[test]
fn bad_store_settings_are_refused_by_name() {
    let dir = DataDir::new("settings");
    let cases: [(&[&str], Option<&str>, &str); 6] = [
        (&["--durability", "sometimes"], None, "durability"),
        (
            &["--durability-interval-ms", "0"],
            None,
            "durability-interval-ms",
        ),
        (
            &["--durability-interval-ms", "60001"],
            None,
            "durability-interval-ms",
        ),
        (&[], Some("durability = \"sometimes\"\n"), "durability"),
        (
            &[],
            Some("durability_interval_ms = 0\n"),
            "durability_interval_ms",
        ),
        (&[], Some("data_dir = \"\"\n"), "data_dir"),
    ];
    for (args, toml, name) in cases {
        let mut all = vec!["--data-dir", dir.arg()];
        if toml.is_some_and(|t| t.starts_with("data_dir")) {
            all.clear();
        }
        all.extend_from_slice(args);
        let out = run_to_exit(&all, toml);
        assert!(
            !out.status.success(),
            "{all:?} {toml:?}: exit {}",
            out.status
        );
        assert!(
            out.stderr.contains(name),
            "{all:?} {toml:?}: stderr does not name {name}:\n{}",
            out.stderr
        );
    }
    // A data dir that is a file.
    let file = std::env::temp_dir().join(format!("ringmq-store-file-{}", std::process::id()));
    std::fs::write(&file, "not a dir").unwrap();
    let out = run_to_exit(&["--data-dir", file.to_str().unwrap()], None);
    let _ = std::fs::remove_file(&file);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains(file.to_str().unwrap()),
        "{}",
        out.stderr
    );
}

/// The value of `ringmq_store_write_failures_total`.
fn store_failures(broker: &Broker) -> f64 {
    let (status, text) = http::get(broker.metrics_addr(), "/metrics");
    assert_eq!(status, 200);
    http::sample(&text, "ringmq_store_write_failures_total")
}

/// Test 6: with less than the reserve free on the data dir's file
/// system, a publish whose message a stored session queued is refused
/// (v5: PUBACK 0x97; 3.1.1: connection closed) and counted; once space
/// returns, publishes are acknowledged and delivered again.
#[tokio::test]
async fn a_full_disk_refuses_acknowledgements_and_recovers() {
    let Some(tmpfs) = Tmpfs::mount("40m") else {
        return;
    };
    let dir = DataDir::under(&tmpfs.path, "full");
    let args = ["--cores", "1", "--metrics-listen", "127.0.0.1:0"];
    let broker = dir.start(&args);
    offline_subscriber(broker.addr, wire::V4, "st6-sub", &[("st6/t", 1)]).await;
    let (mut v5_publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("st6-pub-v5")).await;
    v5_publisher
        .publish(Pub::new("st6/t", b"ok:0").qos(1, 1))
        .await;
    assert_eq!(store_failures(&broker), 0.0);

    // Under the 16 MiB reserve the writer keeps.
    let filler = tmpfs.fill(8 << 20);
    v5_publisher
        .send(&Pub::new("st6/t", b"full:0").qos(1, 2).encode(wire::V5))
        .await;
    let (pkid, reason) = v5_publisher.recv_kind(wire::PUBACK).await.ack();
    assert_eq!((pkid, reason), (2, 0x97), "PUBACK: Quota exceeded");
    let (mut v4_publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("st6-pub-v4")).await;
    v4_publisher
        .send(&Pub::new("st6/t", b"full:1").qos(1, 1).encode(wire::V4))
        .await;
    let seen = v4_publisher.expect_closed(RECV_TIMEOUT).await;
    assert!(
        seen.is_empty(),
        "3.1.1 gets no PUBACK, just a close: {seen:?}"
    );
    // A session written while the disk is full: its SUBACK waits for the
    // store, which refuses it (a SUBACK has no code for that: it is sent as
    // granted), and it must be stored once the disk has room again.
    offline_subscriber(broker.addr, wire::V5, "st6-late", &[("st6/t", 1)]).await;
    let failures = store_failures(&broker);
    assert!(
        failures >= 2.0,
        "ringmq_store_write_failures_total {failures}"
    );
    // Known full now: a QoS 2 PUBLISH is refused before it is routed, and
    // its flow ends, so that the same message sent again later is taken.
    v5_publisher
        .send(&Pub::new("st6/t", b"full:2").qos(2, 4).encode(wire::V5))
        .await;
    assert_eq!(v5_publisher.recv_kind(wire::PUBREC).await.ack(), (4, 0x97));

    std::fs::remove_file(&filler).unwrap();
    // The broker notices within its 100 ms retry; a client that was told
    // 0x97 sends again, as this one does.
    let mut answer = (3, 0x97);
    for _ in 0..40 {
        v5_publisher
            .send(&Pub::new("st6/t", b"ok:1").qos(1, 3).encode(wire::V5))
            .await;
        answer = v5_publisher.recv_kind(wire::PUBACK).await.ack();
        if answer.1 != 0x97 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answer, (3, 0), "accepted again once the disk has room");
    v5_publisher
        .publish(Pub::new("st6/t", b"full:2").qos(2, 4))
        .await;
    // The writer reports in order: no failure from before is still to come.
    let recovered = store_failures(&broker);
    let (mut v4_publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("st6-pub-v4")).await;
    v4_publisher
        .publish(Pub::new("st6/t", b"ok:2").qos(1, 1))
        .await;
    assert_eq!(
        store_failures(&broker),
        recovered,
        "no failure once space is back"
    );

    // Without a restart, the subscriber gets what it was queued.
    let (mut sub, connack) = Raw::connect_ok(broker.addr, persistent(wire::V4, "st6-sub")).await;
    assert!(connack.session_present);
    let got = payloads(&drain(&mut sub, 3).await);
    println!("after the disk filled and emptied, without a restart: {got:?}");
    let acknowledged: Vec<&String> = got.iter().filter(|p| p.starts_with("ok:")).collect();
    assert_eq!(acknowledged, ["ok:0", "ok:1", "ok:2"]);
    let qos2: Vec<&String> = got.iter().filter(|p| *p == "full:2").collect();
    assert_eq!(qos2.len(), 1, "refused before routing, then taken: once");
    // The refused ones were queued before the store refused them: the
    // publisher may send them again, but the broker sends each once.
    for refused in ["full:0", "full:1"] {
        assert!(got.iter().filter(|p| *p == refused).count() <= 1, "{got:?}");
    }
    assert!(
        got.iter()
            .all(|p| p.starts_with("ok:") || p.starts_with("full:")),
        "{got:?}"
    );
    drop(sub);

    // And after kill -9, what the store holds: every acknowledged
    // message to the session written while the disk was full.
    kill(broker);
    let broker = dir.start(&args);
    let (mut late, connack) = Raw::connect_ok(broker.addr, persistent(wire::V5, "st6-late")).await;
    assert!(
        connack.session_present,
        "st6-late was lost with the disk full"
    );
    let got = payloads(&drain(&mut late, 2).await);
    println!("st6-late after kill -9: {got:?}");
    let acknowledged: Vec<&String> = got.iter().filter(|p| p.starts_with("ok:")).collect();
    assert_eq!(acknowledged, ["ok:1", "ok:2"]);
    drop(late);
    kill(broker);
    drop(dir);
}

/// SplitMix64: the kill loop's moments, repeatable from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// Publishes `p:N` (QoS 1, N from `next` on) to `st7/t` with up to
/// [`KILL_LOOP_WINDOW`] in flight until the broker goes away; returns the
/// numbers acknowledged and the next unused one.
async fn publish_until_killed(mut raw: Raw, mut next: u32) -> (Vec<u32>, u32) {
    let mut in_flight: BTreeMap<u16, u32> = BTreeMap::new();
    let mut acked = Vec::new();
    loop {
        while in_flight.len() < KILL_LOOP_WINDOW {
            let pkid = (next % 65_535) as u16 + 1;
            let publish = Pub::new("st7/t", format!("p:{next}").as_bytes()).qos(1, pkid);
            next += 1;
            if !raw.send_lossy(&publish.encode(wire::V4)).await {
                return (acked, next);
            }
            in_flight.insert(pkid, next - 1);
        }
        match raw.try_recv(RECV_TIMEOUT).await {
            Ok(packet) if packet.kind() == wire::PUBACK => {
                let pkid = packet.ack().0;
                let n = in_flight
                    .remove(&pkid)
                    .unwrap_or_else(|| panic!("PUBACK for packet id {pkid}, not in flight"));
                acked.push(n);
            }
            Ok(packet) => panic!("the publisher got {packet:?}"),
            Err(RecvError::Closed) => return (acked, next),
            Err(RecvError::Timeout) => panic!(
                "no PUBACK for {RECV_TIMEOUT:?} with {} in flight",
                in_flight.len()
            ),
        }
    }
}

/// QoS 1 messages the kill loop's publisher keeps in flight.
const KILL_LOOP_WINDOW: usize = 32;

/// Test 7: a QoS 1 publisher publishing without pause to a persistent
/// offline subscriber's topic, `--durability always`, and the broker
/// killed (`kill -9`) at random moments, restarted on the same dir each
/// time; at the end the subscriber must get every message whose PUBACK
/// the publisher saw. 20 kills by default; `RINGMQ_KILL_LOOP=200` runs
/// 200, `RINGMQ_KILL_SEED` repeats a run's moments,
/// `RINGMQ_KILL_DURABILITY` sets another durability.
#[tokio::test]
async fn kill_loop_loses_no_acknowledged_message() {
    kill_loop("kill-loop", "st7/t", "st7-sub", "st7-pub", 20).await;
}

/// The kill loop with the subscriber the only member of a shared group,
/// homed on the other shard than the publisher: the publisher's PUBACK
/// must wait for the member's shard to store the message, which only the
/// group's owner knows. 10 kills by default (`RINGMQ_KILL_LOOP`).
#[tokio::test]
async fn kill_loop_loses_nothing_acknowledged_to_a_shared_member_on_another_shard() {
    let publisher = "st7-pub";
    let member = (0..)
        .map(|i| format!("st7-member-{i}"))
        .find(|id| home_shard(id, 2) != home_shard(publisher, 2))
        .expect("some client id is homed on the other shard");
    kill_loop("kill-loop-shared", "$share/g/st7/t", &member, publisher, 10).await;
}

/// Runs the kill loop: `sub` subscribes to `filter` (matching `st7/t`)
/// and goes offline, `publisher` publishes to `st7/t` through
/// `default_kills` kills (or `RINGMQ_KILL_LOOP`), then `sub` must get
/// every acknowledged message.
async fn kill_loop(dir_name: &str, filter: &str, sub: &str, publisher: &str, default_kills: usize) {
    let kills: usize = std::env::var("RINGMQ_KILL_LOOP")
        .ok()
        .map(|v| v.parse().expect("RINGMQ_KILL_LOOP: a number of kills"))
        .unwrap_or(default_kills);
    let seed: u64 = std::env::var("RINGMQ_KILL_SEED")
        .ok()
        .map(|v| v.parse().expect("RINGMQ_KILL_SEED: a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("kill loop: {kills} kills, RINGMQ_KILL_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = DataDir::new(dir_name);
    // Another level only to measure what it loses (RELIABILITY.md): the
    // assertion below holds for `always` and `batch`.
    let durability =
        std::env::var("RINGMQ_KILL_DURABILITY").unwrap_or_else(|_| "always".to_owned());
    let args = [
        "--cores",
        "2",
        "--durability",
        &durability,
        "--max-queued-messages",
        "100000000",
    ];
    let mut broker = dir.start(&args);
    offline_subscriber(broker.addr, wire::V4, sub, &[(filter, 1)]).await;

    let started = Instant::now();
    let (mut acked, mut next, mut idle_rounds) = (Vec::new(), 0u32, 0);
    for _ in 0..kills {
        let (raw, _) = Raw::connect_ok(broker.addr, Connect::v4(publisher)).await;
        let load = tokio::spawn(publish_until_killed(raw, next));
        tokio::time::sleep(Duration::from_millis(rng.between(100, 400))).await;
        kill(broker);
        let (got, after) = tokio::time::timeout(RECV_TIMEOUT, load)
            .await
            .expect("the publisher notices the kill")
            .expect("the publisher task");
        idle_rounds += usize::from(got.is_empty());
        acked.extend(got);
        next = after;
        broker = dir.start(&args);
    }
    let loading = started.elapsed();

    let (mut sub, connack) = Raw::connect_ok(broker.addr, persistent(wire::V4, sub)).await;
    assert!(connack.session_present);
    acked.sort_unstable();
    let mut delivered: Vec<u32> = Vec::new();
    let mut missing = acked.clone();
    loop {
        // Every acknowledged one is there: then only a pause ends it.
        let wait = if missing.is_empty() {
            QUIET
        } else {
            RECV_TIMEOUT
        };
        match sub.try_recv(wait).await {
            Ok(packet) if packet.kind() == wire::PUBLISH => {
                let publish = packet.publish(wire::V4);
                sub.send(&wire::ack(wire::PUBACK, publish.pkid)).await;
                let (tag, n) = common::tally::parse(&publish.payload);
                assert_eq!((tag.as_str(), publish.topic.as_str()), ("p", "st7/t"));
                if let Ok(at) = missing.binary_search(&n) {
                    missing.remove(at);
                }
                delivered.push(n);
            }
            Ok(packet) => panic!("the subscriber got {packet:?}"),
            Err(RecvError::Timeout) => break,
            Err(RecvError::Closed) => panic!("the broker closed the subscriber"),
        }
    }
    let mut unique = delivered.clone();
    unique.sort_unstable();
    unique.dedup();
    let duplicates = delivered.len() - unique.len();
    let reordered = delivered.windows(2).filter(|w| w[1] < w[0]).count();
    let unacked_delivered = unique.len() - (acked.len() - missing.len());
    println!(
        "kill loop: {kills} kills in {loading:.1?} ({idle_rounds} without a PUBACK), {next} sent, \
         {} acked, {} delivered ({} of them never acked), lost {}, duplicates {duplicates}, \
         reordered {reordered}; seed {seed}",
        acked.len(),
        unique.len(),
        unacked_delivered,
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged but lost ({} of {}), first ones: {:?}; RINGMQ_KILL_SEED={seed}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(
        unique.iter().all(|&n| n < next),
        "delivered what was never sent"
    );
    assert!(
        acked.len() >= kills,
        "too few PUBACKs to test anything: {}",
        acked.len()
    );
}
