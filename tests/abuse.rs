//! The limits against abuse, against the real binary: a client past its
//! PUBLISH rate (messages or bytes per second) is slowed, not dropped, and
//! a v5 client's Receive Maximum bounds what it has in flight meanwhile;
//! a source address past its connections or attempts per second is closed
//! before its CONNECT while another address is served (by the address a
//! PROXY header names, behind a balancer); a flapping client id is refused
//! with 0x9F, then let in after its ban; and with no limit set, a burst
//! goes through at full speed.
//!
//! Timings are asserted with wide margins: what is measured is that a
//! limit holds a client to about its rate, which no noisy machine makes
//! faster.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::http::{get, sample};
use common::raw::{Raw, RecvError};
use common::wire::{self, Connect, Prop, Pub};
use common::{Broker, RECV_TIMEOUT, unique_id};

const OTHER_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Reads `n` PUBLISHes within `within`; returns their payloads, in order.
async fn collect(sub: &mut Raw, n: usize, within: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut payloads = Vec::with_capacity(n);
    while payloads.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match sub.try_recv(left).await {
            Ok(p) => payloads.push(p.publish(sub.version).payload),
            Err(e) => panic!("{e:?} after {} of {n} messages", payloads.len()),
        }
    }
    payloads
}

/// `n` numbered QoS 0 PUBLISHes to `topic`, each `size` bytes of payload,
/// in one buffer: the client writes as fast as the socket takes them.
fn burst(topic: &str, n: usize, size: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut payload = format!("{i:06}").into_bytes();
            payload.resize(size.max(6), b'.');
            payload
        })
        .collect();
    let bytes = payloads
        .iter()
        .flat_map(|payload| Pub::new(topic, payload).encode(wire::V4))
        .collect();
    (bytes, payloads)
}

/// A subscriber on `topic` and a publisher, both 3.1.1.
async fn pair(broker: &Broker, topic: &str) -> (Raw, Raw) {
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4(&unique_id("sub"))).await;
    assert_eq!(sub.subscribe(1, &[(topic, 0)]).await, vec![0]);
    let (publisher, _) = Raw::connect_ok(broker.addr, Connect::v4(&unique_id("pub"))).await;
    (sub, publisher)
}

/// A limit's count in `ringmq_limited_total`.
fn limited(broker: &Broker, limit: &str) -> f64 {
    let (status, text) = get(broker.metrics_addr(), "/metrics");
    assert_eq!(status, 200);
    sample(&text, &format!("ringmq_limited_total{{limit=\"{limit}\"}}"))
}

#[tokio::test]
async fn a_publisher_past_its_message_rate_is_slowed_and_nothing_is_dropped() {
    let broker = Broker::start(&[
        "--max-publish-rate",
        "100",
        "--cores",
        "2",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let (mut sub, mut publisher) = pair(&broker, "rate/fast").await;
    let (mut witness_sub, mut witness) = pair(&broker, "rate/witness").await;

    let started = Instant::now();
    let (bytes, sent) = burst("rate/fast", 500, 8);
    publisher.send(&bytes).await;
    // While the publisher is held back, another client is not: its 50
    // messages are within its own first second's worth.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let witness_started = Instant::now();
    let (bytes, witness_sent) = burst("rate/witness", 50, 8);
    witness.send(&bytes).await;
    assert_eq!(
        collect(&mut witness_sub, 50, RECV_TIMEOUT).await,
        witness_sent
    );
    let witness_took = witness_started.elapsed();

    let received = collect(&mut sub, 500, Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert_eq!(received, sent, "every message, in order");
    // A second's worth at once, then 400 at 100/s: about 4 s.
    assert!(
        took >= Duration::from_millis(3_500),
        "500 messages in {took:?}"
    );
    assert!(
        witness_took < Duration::from_secs(2),
        "the witness took {witness_took:?}"
    );
    assert!(limited(&broker, "publish_rate") >= 1.0);
    // The publisher was paused, not cut off.
    publisher.send(&wire::pingreq()).await;
    publisher.recv_kind(wire::PINGRESP).await;
}

#[tokio::test]
async fn a_publisher_past_its_byte_rate_is_slowed_and_nothing_is_dropped() {
    let broker = Broker::start(&[
        "--max-publish-byte-rate",
        "20000",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let (mut sub, mut publisher) = pair(&broker, "bytes/big").await;
    let started = Instant::now();
    // About 101 KB: 20 KB at once, the rest at 20 KB/s, about 4 s.
    let (bytes, sent) = burst("bytes/big", 100, 1_000);
    publisher.send(&bytes).await;
    let received = collect(&mut sub, 100, Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert_eq!(received, sent, "every message, whole and in order");
    assert!(took >= Duration::from_secs(3), "101 KB in {took:?}");
    assert!(limited(&broker, "publish_bytes") >= 1.0);
    assert_eq!(limited(&broker, "publish_rate"), 0.0);
}

#[tokio::test]
async fn a_pause_longer_than_the_keep_alive_does_not_expire_it() {
    let broker = Broker::start(&["--max-publish-byte-rate", "1000"]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4("ka-sub")).await;
    assert_eq!(sub.subscribe(1, &[("ka/t", 0)]).await, vec![0]);
    let (mut publisher, _) =
        Raw::connect_ok(broker.addr, Connect::v5("ka-pub").keep_alive(1)).await;
    // Four seconds' worth in one packet, then pings the broker does not
    // read until the debt is paid: its 1.5 s keep-alive must wait too.
    let started = Instant::now();
    publisher
        .send(&Pub::new("ka/t", &[b'k'; 5_000]).encode(wire::V5))
        .await;
    let second = Pub::new("ka/t", b"after the pause").encode(wire::V5);
    publisher.send(&second).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        publisher.send(&wire::pingreq()).await;
    }
    assert_eq!(sub.recv_publish().await.payload.len(), 5_000);
    let late = collect(&mut sub, 1, Duration::from_secs(10)).await;
    assert_eq!(late, [b"after the pause".to_vec()]);
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(3), "paused only {took:?}");
    // Still connected: the pings are answered, no DISCONNECT 0x8D.
    for _ in 0..5 {
        let packet = publisher.recv().await;
        assert_eq!(packet.kind(), wire::PINGRESP, "{packet:?}");
    }
}

#[tokio::test]
async fn a_v5_publisher_at_qos_1_is_held_by_its_receive_maximum() {
    let broker = Broker::start(&["--max-publish-rate", "20", "--max-inflight", "10"]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4("rm-sub")).await;
    assert_eq!(sub.subscribe(1, &[("rm/t", 0)]).await, vec![0]);
    let (mut publisher, connack) = Raw::connect_ok(broker.addr, Connect::v5("rm-pub")).await;
    let Some(Prop::U16(receive_maximum)) = connack.prop(0x21) else {
        panic!("no Receive Maximum in {connack:?}");
    };
    assert_eq!(*receive_maximum, 10);

    // A well-behaved client: never more than Receive Maximum in flight,
    // one more PUBLISH for each PUBACK.
    let total = 100u16;
    let started = Instant::now();
    let (mut sent, mut acked, mut window_full) = (0u16, 0u16, 0);
    while acked < total {
        while sent < total && sent - acked < *receive_maximum {
            sent += 1;
            let publish = Pub::new("rm/t", format!("{sent}").as_bytes()).qos(1, sent);
            publisher.send(&publish.encode(wire::V5)).await;
        }
        if sent - acked == *receive_maximum {
            window_full += 1;
        }
        let ack = publisher.recv().await;
        assert_eq!(ack.kind(), wire::PUBACK, "{ack:?}");
        let (pkid, reason) = ack.ack();
        assert_eq!((pkid, reason), (acked + 1, 0), "PUBACKs in order, success");
        acked += 1;
    }
    let took = started.elapsed();
    // 21 at once, then 20/s: about 4 s, the client blocked by its window
    // all along rather than cut off (no DISCONNECT 0x93).
    assert!(took >= Duration::from_secs(3), "100 QoS 1 in {took:?}");
    assert!(window_full >= 50, "window full {window_full} times");
    assert_eq!(collect(&mut sub, 100, RECV_TIMEOUT).await.len(), 100);
}

#[tokio::test]
async fn rumqttc_v5_at_qos_1_keeps_its_receive_maximum_while_slowed() {
    use common::clients::v5::{Client, Event, Packet, QoS, options};
    use rumqttc::v5::mqttbytes::v5::PubAckReason;

    let broker = Broker::start(&["--max-publish-rate", "20", "--max-inflight", "10"]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4("rumq-sub")).await;
    assert_eq!(sub.subscribe(1, &[("rumq/t", 0)]).await, vec![0]);
    let (mut publisher, connack) = Client::connect(options(broker.addr, "rumq-pub")).await;
    let receive_maximum = connack.properties.and_then(|p| p.receive_max);
    assert_eq!(receive_maximum, Some(10));

    let started = Instant::now();
    // Queued at once: rumqttc sends while its window has room.
    for n in 0..100 {
        publisher
            .client
            .publish("rumq/t", QoS::AtLeastOnce, false, format!("{n}"))
            .await
            .unwrap();
    }
    let (mut sent, mut acked, mut most_in_flight) = (0, 0, 0);
    while acked < 100 {
        match publisher.next_event().await {
            Event::Outgoing(rumqttc::Outgoing::Publish(_)) => sent += 1,
            Event::Incoming(Packet::PubAck(ack)) => {
                assert_eq!(ack.reason, PubAckReason::Success);
                acked += 1;
            }
            _ => {}
        }
        most_in_flight = most_in_flight.max(sent - acked);
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(3), "100 QoS 1 in {took:?}");
    assert!(most_in_flight <= 10, "{most_in_flight} in flight");
    assert_eq!(most_in_flight, 10, "the window filled: the rate held it");
    assert_eq!(collect(&mut sub, 100, RECV_TIMEOUT).await.len(), 100);
}

#[tokio::test]
async fn without_limits_a_burst_is_not_slowed() {
    let broker = Broker::start(&["--metrics-listen", "127.0.0.1:0"]);
    let (mut sub, mut publisher) = pair(&broker, "free/t").await;
    let started = Instant::now();
    // Small enough (about 30 KB) to fit in the subscriber's socket and
    // session queue however late the test reads: QoS 0 past a full queue
    // would be dropped, which is not what is measured here.
    let (bytes, sent) = burst("free/t", 1_000, 16);
    publisher.send(&bytes).await;
    assert_eq!(
        collect(&mut sub, 1_000, Duration::from_secs(10)).await,
        sent
    );
    let took = started.elapsed();
    // At the 100/s a limit would be, this would take 9 s.
    assert!(took < Duration::from_secs(4), "1000 messages in {took:?}");
    for limit in ["publish_rate", "publish_bytes", "address_rate", "flapping"] {
        assert_eq!(limited(&broker, limit), 0.0, "{limit}");
    }
}

/// Opens a connection from `source` and sends a CONNECT: the CONNACK's
/// code, or `None` if the broker closed the socket without one.
async fn try_connect(addr: SocketAddr, source: Option<IpAddr>, id: &str) -> (Raw, Option<u8>) {
    let mut raw = match source {
        Some(source) => Raw::open_from(addr, source, wire::V4).await,
        None => Raw::open(addr, wire::V4).await,
    };
    // The broker may have closed before the CONNECT arrives.
    raw.send_lossy(&Connect::v4(id).encode()).await;
    let code = connack_code(&mut raw, id).await;
    (raw, code)
}

/// The CONNACK's code, or `None` if the broker closed the socket.
async fn connack_code(raw: &mut Raw, id: &str) -> Option<u8> {
    match raw.try_recv(RECV_TIMEOUT).await {
        Ok(p) => Some(p.connack(wire::V4).code),
        Err(RecvError::Closed) => None,
        Err(RecvError::Timeout) => panic!("{id}: neither answered nor closed"),
    }
}

#[tokio::test]
async fn an_address_past_its_open_connections_is_closed_and_others_are_served() {
    let broker = Broker::start(&[
        "--max-connections-per-address",
        "5",
        "--cores",
        "2",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let mut five = Vec::new();
    for n in 0..5 {
        let (raw, code) = try_connect(broker.addr, None, &format!("addr-{n}")).await;
        assert_eq!(code, Some(0), "connection {n}");
        five.push(raw);
    }
    let (mut sixth, code) = try_connect(broker.addr, None, "addr-6").await;
    assert_eq!(code, None, "the 6th from one address is closed unanswered");
    let (_other, code) = try_connect(broker.addr, Some(OTHER_SOURCE), "addr-other").await;
    assert_eq!(code, Some(0), "another address is served");
    assert_eq!(limited(&broker, "address_connections"), 1.0);
    let (_, text) = get(broker.metrics_addr(), "/metrics");
    let rejected = "ringmq_connections_rejected_total{reason=\"AddressConnections\"}";
    assert_eq!(sample(&text, rejected), 1.0);
    broker.wait_for_log("too many from one address", 1);

    // The five are untouched; once one leaves, its place is free again.
    sixth.expect_closed(RECV_TIMEOUT).await;
    five[0].send(&wire::pingreq()).await;
    five[0].recv_kind(wire::PINGRESP).await;
    let first = five.remove(0);
    first.drop_abruptly();
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        let (_raw, code) = try_connect(broker.addr, None, "addr-again").await;
        if code == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "the place was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_address_past_its_attempts_per_second_is_closed_for_a_while() {
    let broker = Broker::start(&[
        "--max-connection-rate-per-address",
        "5",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let started = Instant::now();
    let mut accepted = 0;
    let mut kept = Vec::new();
    for n in 0..30 {
        let (raw, code) = try_connect(broker.addr, None, &format!("rate-{n}")).await;
        if code == Some(0) {
            accepted += 1;
            kept.push(raw);
        }
    }
    let took = started.elapsed().as_secs_f64();
    // A second's worth (and one) at once, then 5/s while the loop ran.
    let allowed = 6.0 + 5.0 * took + 1.0;
    assert!(accepted >= 5, "only {accepted} accepted");
    assert!(
        f64::from(accepted) <= allowed,
        "{accepted} of 30 accepted in {took:.2} s"
    );
    assert!(limited(&broker, "address_rate") >= 30.0 - allowed);
    let (_other, code) = try_connect(broker.addr, Some(OTHER_SOURCE), "rate-other").await;
    assert_eq!(code, Some(0), "another address is served");

    // A second later, the address is let in again.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (_raw, code) = try_connect(broker.addr, None, "rate-later").await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn behind_a_proxy_the_address_in_its_header_is_limited() {
    let broker = Broker::start(&[
        "--proxy-protocol",
        "--max-connections-per-address",
        "1",
        "--cores",
        "2",
    ]);
    // Every connection comes from 127.0.0.1, the balancer; the headers
    // name the clients.
    let connect_as = |client: &'static str, id: &'static str| async move {
        let mut raw = Raw::open(broker.addr, wire::V4).await;
        let mut bytes = format!("PROXY TCP4 {client} 127.0.0.1 40000 1883\r\n").into_bytes();
        bytes.extend_from_slice(&Connect::v4(id).encode());
        raw.send_lossy(&bytes).await;
        let code = connack_code(&mut raw, id).await;
        (raw, code)
    };
    let (_first, code) = connect_as("203.0.113.1", "proxied-1").await;
    assert_eq!(code, Some(0));
    let (_second, code) = connect_as("203.0.113.1", "proxied-2").await;
    assert_eq!(code, None, "the same client address again");
    let (_third, code) = connect_as("203.0.113.2", "proxied-3").await;
    assert_eq!(code, Some(0), "another client behind the same balancer");
}

#[tokio::test]
async fn a_flapping_client_id_is_refused_for_its_ban_then_let_in() {
    let broker = Broker::start(&[
        "--flapping-threshold",
        "3",
        "--flapping-window",
        "30",
        "--flapping-ban",
        "2",
        "--cores",
        "2",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    for _ in 0..3 {
        let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v5("flapper")).await;
        raw.send(&wire::disconnect_v5(0, wire::Props::new())).await;
        raw.expect_closed(RECV_TIMEOUT).await;
    }
    let banned_at = Instant::now();
    let (mut raw, connack) = Raw::connect(broker.addr, Connect::v5("flapper")).await;
    assert_eq!(connack.code, 0x9F, "v5: Connection rate exceeded");
    raw.expect_closed(RECV_TIMEOUT).await;
    let (mut raw, connack) = Raw::connect(broker.addr, Connect::v4("flapper")).await;
    assert_eq!(connack.code, 3, "3.1.1: Server unavailable");
    raw.expect_closed(RECV_TIMEOUT).await;
    // Only that client id.
    Raw::connect_ok(broker.addr, Connect::v5("steady")).await;
    broker.wait_for_log("client id flapping", 1);
    assert!(
        broker
            .logs()
            .lines()
            .any(|l| l.contains("client id flapping") && l.contains("client=flapper")),
        "the log names the client:\n{}",
        broker.logs()
    );
    assert_eq!(limited(&broker, "flapping"), 2.0);

    // After the ban it is let in again.
    let wait = Duration::from_millis(2_300).saturating_sub(banned_at.elapsed());
    tokio::time::sleep(wait).await;
    let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v5("flapper")).await;
    raw.send(&wire::pingreq()).await;
    raw.recv_kind(wire::PINGRESP).await;
}
