//! Back-pressure: a subscriber that stops reading its socket must not slow
//! the publisher or other subscribers, its queue is bounded (messages past
//! --max-queued-messages are dropped, or with --queue-full-policy disconnect
//! the slow client is closed), and the broker's memory stays bounded.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::Broker;
use common::raw::{Raw, RecvError};
use common::wire::{self, Connect, Pub};

/// Messages per flood and their size: 20,000 x 4 KiB = 80 MiB, far more
/// than kernel socket buffers plus a bounded queue can hold.
const FLOOD: usize = 20_000;
const PAYLOAD: usize = 4096;
/// RSS growth allowed while flooding: well under the flood's size.
const RSS_BUDGET_KIB: u64 = 48 * 1024;
/// Generous: the flood has to pass through a debug build.
const FLOOD_TIMEOUT: Duration = Duration::from_secs(120);

/// Floods `topic` with FLOOD messages at `qos` from a fresh client and
/// waits until the broker has acknowledged all of them (PUBACKs for QoS 1,
/// a PINGRESP after the last message for QoS 0). The publisher reads and
/// writes concurrently so it never stalls the broker itself.
async fn flood(addr: SocketAddr, topic: &str, qos: u8) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .write_all(&Connect::v4("bp-flooder").keep_alive(0).encode())
        .await
        .unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut pubacks = 0usize;
        loop {
            while let Some(p) = wire::take_packet(&mut buf) {
                match p.kind() {
                    wire::CONNACK => assert_eq!(p.body, [0, 0]),
                    wire::PUBACK => pubacks += 1,
                    wire::PINGRESP => return pubacks,
                    other => panic!("publisher got unexpected packet type {other}"),
                }
            }
            let n = rd.read(&mut chunk).await.expect("publisher read failed");
            assert!(n > 0, "broker closed the publisher's connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    });
    let payload = vec![b'x'; PAYLOAD];
    let mut batch = Vec::new();
    for i in 0..FLOOD {
        let pkid = (i % 65_535) as u16 + 1;
        batch.extend_from_slice(&Pub::new(topic, &payload).qos(qos, pkid).encode(wire::V4));
        if batch.len() > 256 * 1024 {
            wr.write_all(&batch).await.unwrap();
            batch.clear();
        }
    }
    if qos == 1 {
        // With QoS 1 the PINGREQ goes only once every PUBACK is in, so the
        // reader can tell "all acked" from "ping answered first".
        wr.write_all(&batch).await.unwrap();
        batch.clear();
    }
    batch.extend_from_slice(&wire::pingreq());
    wr.write_all(&batch).await.unwrap();
    let pubacks = tokio::time::timeout(FLOOD_TIMEOUT, reader)
        .await
        .expect("publisher was stalled: flood not acknowledged in time")
        .unwrap();
    if qos == 1 {
        assert_eq!(pubacks, FLOOD, "every QoS 1 publish must be acknowledged");
    }
    drop(wr);
}

/// A subscriber that never reads: tiny receive buffer, no keep-alive.
async fn slow_subscriber(addr: SocketAddr, id: &str, qos: u8) -> Raw {
    let mut raw = Raw::open(addr, wire::V4).await;
    // Small, so the broker's side backs up quickly, but above loopback's
    // MSS (about 64 KiB): a receive window smaller than one segment is only
    // reopened by the sender's zero-window probes, whose backoff reaches
    // minutes, and draining afterwards would take that long.
    raw.set_recv_buffer(128 * 1024);
    raw.send(&Connect::v4(id).keep_alive(0).encode()).await;
    assert_eq!(raw.recv().await.connack(wire::V4).code, 0);
    assert_eq!(raw.subscribe(1, &[("bp/flood", qos)]).await, vec![qos]);
    raw
}

async fn slow_consumer_is_isolated(qos: u8) {
    let broker = Broker::start(&["--max-queued-messages", "100", "--max-inflight", "10"]);
    let mut slow = slow_subscriber(broker.addr, "bp-slow", qos).await;

    // A healthy subscriber on the flood topic and on a probe topic.
    let (mut healthy, _) =
        Raw::connect_ok(broker.addr, Connect::v4("bp-healthy").keep_alive(0)).await;
    healthy
        .subscribe(1, &[("bp/flood", qos), ("bp/probe", 1)])
        .await;
    let healthy_task = tokio::spawn(async move {
        let mut flood_seen = 0usize;
        loop {
            let p = match healthy.try_recv(FLOOD_TIMEOUT).await {
                Ok(p) => p,
                Err(e) => panic!("healthy subscriber starved: {e:?} after {flood_seen}"),
            };
            if p.kind() != wire::PUBLISH {
                continue;
            }
            let p = p.publish(wire::V4);
            if p.qos == 1 {
                healthy.send(&wire::ack(wire::PUBACK, p.pkid)).await;
            }
            if p.topic == "bp/probe" {
                return flood_seen;
            }
            flood_seen += 1;
        }
    });

    let rss_before = broker.rss_kib();
    flood(broker.addr, "bp/flood", qos).await;
    let rss_after = broker.rss_kib();
    assert!(
        rss_after < rss_before + RSS_BUDGET_KIB,
        "broker RSS grew from {rss_before} KiB to {rss_after} KiB while a slow consumer was flooded"
    );

    // A probe reaches the healthy subscriber after the flood. It is repeated
    // because the healthy subscriber may itself still be catching up, with
    // a full queue that drops a single probe.
    let addr = broker.addr;
    let prober = tokio::spawn(async move {
        let (mut prober, _) = Raw::connect_ok(addr, Connect::v4("bp-prober")).await;
        for pkid in 1.. {
            prober
                .publish(Pub::new("bp/probe", b"probe").qos(1, pkid))
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let flood_seen = tokio::time::timeout(Duration::from_secs(30), healthy_task)
        .await
        .expect("probe never reached the healthy subscriber")
        .unwrap();
    prober.abort();
    assert!(
        flood_seen > 0,
        "healthy subscriber received none of the flood"
    );

    // With the drop policy the slow client is still connected: drain what
    // the broker kept for it, then it answers a ping.
    slow.send(&wire::pingreq()).await;
    let mut received = 0usize;
    loop {
        match slow.try_recv(Duration::from_secs(30)).await {
            Ok(p) if p.kind() == wire::PINGRESP => break,
            Ok(p) if p.kind() == wire::PUBLISH => {
                received += 1;
                let p = p.publish(wire::V4);
                if p.qos == 1 {
                    slow.send(&wire::ack(wire::PUBACK, p.pkid)).await;
                }
            }
            Ok(p) => panic!("unexpected packet {p:?}"),
            Err(RecvError::Closed) => {
                panic!("slow consumer was disconnected under the drop policy")
            }
            Err(RecvError::Timeout) => {
                panic!("no PINGRESP for the slow consumer after {received} messages")
            }
        }
    }
    assert!(
        received < FLOOD,
        "the slow consumer got all {FLOOD} messages: nothing was dropped, so the queue is unbounded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_qos0_consumer_does_not_slow_others_and_memory_stays_bounded() {
    slow_consumer_is_isolated(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_qos1_consumer_does_not_slow_others_and_memory_stays_bounded() {
    slow_consumer_is_isolated(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disconnect_policy_closes_slow_consumer() {
    let broker = Broker::start(&[
        "--queue-full-policy",
        "disconnect",
        "--max-queued-messages",
        "50",
    ]);
    // The policy is about QoS 1/2: QoS 0 past the limit is always dropped.
    let mut slow = slow_subscriber(broker.addr, "bp-slow-dc", 1).await;
    let (mut healthy, _) =
        Raw::connect_ok(broker.addr, Connect::v4("bp-healthy-dc").keep_alive(0)).await;
    healthy.subscribe(1, &[("bp/probe", 1)]).await;

    flood(broker.addr, "bp/flood", 1).await;
    // Reading now drains whatever was in flight, then must hit EOF.
    let mut received = 0usize;
    loop {
        match slow.try_recv(Duration::from_secs(30)).await {
            Ok(_) => received += 1,
            Err(RecvError::Closed) => break,
            Err(RecvError::Timeout) => {
                panic!("slow consumer still connected after the flood ({received} packets read)")
            }
        }
    }
    assert!(received < FLOOD);

    // Everyone else is unaffected.
    let (mut prober, _) = Raw::connect_ok(broker.addr, Connect::v4("bp-prober-dc")).await;
    prober
        .publish(Pub::new("bp/probe", b"probe").qos(1, 1))
        .await;
    let p = healthy.recv_publish().await;
    assert_eq!(p.payload, b"probe");
}
