//! QoS 2 exactly once to a subscriber that stays connected while the
//! broker is killed (`kill -9`) again and again under load: the broker
//! sends a stored session's QoS 2 PUBLISH only once its flight is on
//! disk, so after a restart the message goes again under the same packet
//! id (which the client answers without giving it twice), or the client
//! never had it (`src/shard/state/commit.rs`).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::data_dir::{DataDir, kill};
use common::raw::{Raw, RecvError};
use common::wire::{self, Connect, Pub};
use common::{QUIET, RECV_TIMEOUT};

const TOPIC: &str = "eo/t";
/// QoS 2 messages the publisher keeps in flight.
const WINDOW: usize = 16;

/// What a QoS 2 subscriber keeps across its connections, as a client
/// library does: the ids it has answered with PUBREC and not yet seen
/// released (a PUBLISH under one of them is the same message again), and
/// the numbers it gave the application, in order.
#[derive(Default)]
struct Receiver {
    awaiting_release: BTreeSet<u16>,
    given: Vec<u32>,
}

impl Receiver {
    /// Receives on `raw` until the broker goes away, or until it has been
    /// quiet for `quiet`.
    async fn run(mut self, mut raw: Raw, quiet: Duration) -> Receiver {
        loop {
            let packet = match raw.try_recv(quiet).await {
                Ok(packet) => packet,
                Err(RecvError::Closed | RecvError::Timeout) => return self,
            };
            let answer = match packet.kind() {
                wire::PUBLISH => {
                    let publish = packet.publish(wire::V4);
                    assert_eq!(publish.qos, 2, "granted and published at QoS 2");
                    if self.awaiting_release.insert(publish.pkid) {
                        self.given.push(common::tally::parse(&publish.payload).1);
                    }
                    wire::ack(wire::PUBREC, publish.pkid)
                }
                wire::PUBREL => {
                    let (pkid, _) = packet.ack();
                    self.awaiting_release.remove(&pkid);
                    wire::ack(wire::PUBCOMP, pkid)
                }
                other => panic!("the subscriber got packet kind {other}"),
            };
            if !raw.send_lossy(&answer).await {
                return self;
            }
        }
    }
}

/// Publishes `p:N` at QoS 2 (N from `next` on), `WINDOW` in flight, until
/// the broker goes away: the numbers whose PUBREC came (the broker has
/// them), and the next unused number.
async fn publish_until_killed(mut raw: Raw, mut next: u32) -> (Vec<u32>, u32) {
    let mut in_flight = std::collections::BTreeMap::new();
    let mut received = Vec::new();
    loop {
        while in_flight.len() < WINDOW {
            let pkid = (next % 65_535) as u16 + 1;
            let publish = Pub::new(TOPIC, format!("p:{next}").as_bytes()).qos(2, pkid);
            if !raw.send_lossy(&publish.encode(wire::V4)).await {
                return (received, next + 1);
            }
            in_flight.insert(pkid, next);
            next += 1;
        }
        let packet = match raw.try_recv(RECV_TIMEOUT).await {
            Ok(packet) => packet,
            Err(RecvError::Closed) => return (received, next),
            Err(RecvError::Timeout) => panic!("no answer with {} in flight", in_flight.len()),
        };
        let (pkid, _) = packet.ack();
        match packet.kind() {
            wire::PUBREC => {
                if let Some(&n) = in_flight.get(&pkid) {
                    received.push(n);
                }
                if !raw.send_lossy(&wire::ack(wire::PUBREL, pkid)).await {
                    return (received, next);
                }
            }
            wire::PUBCOMP => {
                in_flight.remove(&pkid);
            }
            other => panic!("the publisher got packet kind {other}"),
        }
    }
}

/// Connects to a broker just restarted; its first CONNACK may come late
/// on a loaded machine (more than 5 s, seen with two benchmarks running
/// beside the test), so a refusal or silence is tried again for 30 s.
async fn reconnect(addr: std::net::SocketAddr, connect: Connect) -> (Raw, wire::Connack) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match Raw::try_connect(addr, connect.clone()).await {
            Some((raw, connack)) if connack.code == 0 => return (raw, connack),
            other if std::time::Instant::now() > deadline => {
                panic!(
                    "no CONNACK from the restarted broker: {:?}",
                    other.map(|(_, c)| c)
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A QoS 2 subscriber connected throughout (reconnecting to each restart
/// with its session), a QoS 2 publisher, `durability = always`, and the
/// broker killed at random moments: every message the broker took is
/// given once, none twice.
#[tokio::test]
async fn qos2_to_a_connected_subscriber_stays_exactly_once_through_kill_9() {
    let kills: u64 = std::env::var("RINGMQ_KILL_LOOP")
        .ok()
        .map(|v| v.parse().expect("RINGMQ_KILL_LOOP: a number of kills"))
        .unwrap_or(12);
    let dir = DataDir::new("exactly-once");
    let args = ["--cores", "2", "--durability", "always"];
    let mut broker = dir.start(&args);
    let subscriber = Connect::v4("eo-sub").clean(false);
    let (mut raw, _) = Raw::connect_ok(broker.addr, subscriber.clone()).await;
    assert_eq!(raw.subscribe(1, &[(TOPIC, 2)]).await, [2]);

    let mut receiver = Receiver::default();
    let (mut taken, mut next) = (Vec::new(), 0u32);
    for kill_number in 0..kills {
        let receiving = tokio::spawn(receiver.run(raw, RECV_TIMEOUT));
        let (publisher, _) = reconnect(broker.addr, Connect::v4("eo-pub")).await;
        let publishing = tokio::spawn(publish_until_killed(publisher, next));
        // Moments spread over 150-450 ms, repeatable.
        let wait = 150 + (kill_number * 7_919) % 300;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        kill(broker);
        let (got, after) = publishing.await.expect("the publisher task");
        taken.extend(got);
        next = after;
        receiver = receiving.await.expect("the subscriber task");
        broker = dir.start(&args);
        let (again, connack) = reconnect(broker.addr, subscriber.clone()).await;
        assert!(connack.session_present, "the session survives kill -9");
        raw = again;
    }
    let receiver = receiver.run(raw, QUIET).await;

    let mut given = receiver.given.clone();
    given.sort_unstable();
    let unique: BTreeSet<u32> = given.iter().copied().collect();
    let duplicated = given.len() - unique.len();
    let lost: Vec<u32> = (taken.iter())
        .filter(|n| !unique.contains(n))
        .copied()
        .collect();
    println!(
        "{kills} kills: {next} sent, {} taken by the broker, {} given, duplicated {duplicated}, lost {}",
        taken.len(),
        receiver.given.len(),
        lost.len()
    );
    assert!(
        taken.len() as u64 >= kills,
        "too few messages to test anything"
    );
    assert!(lost.is_empty(), "taken and never given: {lost:?}");
    assert_eq!(duplicated, 0, "given twice");
    drop(dir);
}
