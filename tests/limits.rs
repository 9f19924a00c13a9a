//! The configured limits, enforced on the wire: connections, the CONNECT
//! timeout, keep-alive, topic length and levels, subscriptions per client
//! and client id length. `max_packet_size`, `max_inflight` and
//! `max_queued_messages` are covered in tests/cli.rs.

mod common;

use std::time::{Duration, Instant};

use common::raw::{Raw, RecvError};
use common::wire::{self, Connect, Pub, Will};
use common::{Broker, QUIET, RECV_TIMEOUT};

/// Connects until the broker accepts, for a place that frees up
/// asynchronously once a connection's close has been handled.
async fn connect_eventually(broker: &Broker, connect: Connect) -> Raw {
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        let (raw, connack) = Raw::connect(broker.addr, connect.clone()).await;
        if connack.code == 0 {
            return raw;
        }
        assert!(
            Instant::now() < deadline,
            "still refused ({:#04x}) after {RECV_TIMEOUT:?}",
            connack.code
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn max_connections_refuses_with_quota_exceeded_and_frees_places() {
    // Two shards: the places are broker-wide, not per shard.
    let broker = Broker::start(&["--max-connections", "2", "--cores", "2"]);
    let (mut first, _) = Raw::connect_ok(broker.addr, Connect::v5("mc-1")).await;
    let (_second, _) = Raw::connect_ok(broker.addr, Connect::v4("mc-2")).await;

    let (mut refused, connack) = Raw::connect(broker.addr, Connect::v5("mc-3")).await;
    assert_eq!(connack.code, 0x97, "v5: Quota exceeded");
    refused.expect_closed(RECV_TIMEOUT).await;
    let (mut refused, connack) = Raw::connect(broker.addr, Connect::v4("mc-4")).await;
    assert_eq!(connack.code, 0x03, "3.1.1: Server unavailable");
    refused.expect_closed(RECV_TIMEOUT).await;

    // The connected clients are untouched.
    first.send(&wire::pingreq()).await;
    first.recv_kind(wire::PINGRESP).await;

    // A closed connection gives its place back.
    first
        .send(&wire::disconnect_v5(0, wire::Props::new()))
        .await;
    first.expect_closed(RECV_TIMEOUT).await;
    let mut third = connect_eventually(&broker, Connect::v5("mc-5")).await;
    third.send(&wire::pingreq()).await;
    third.recv_kind(wire::PINGRESP).await;
}

#[tokio::test]
async fn max_connections_is_lowered_to_fit_the_open_file_limit() {
    use std::os::unix::process::CommandExt;
    // No connection limit, but only 100 descriptors: past them, a client
    // would wait unaccepted while every accept fails, so the broker keeps
    // 80 for itself (64 and 16 per shard) and refuses the rest.
    let mut cmd = common::broker_command(&["--max-connections", "0", "--cores", "1"], None);
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the
    // parent's.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 100,
                rlim_max: 100,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let broker = Broker::launch(cmd, None);
    broker.wait_for_log("lowered_to=20 open_files=100", 1);
    let mut admitted = Vec::new();
    for n in 0..20 {
        let (raw, _) = Raw::connect_ok(broker.addr, Connect::v4(&format!("nofile-{n}"))).await;
        admitted.push(raw);
    }
    // Refused, where before the broker accepted up to its 100th descriptor.
    let (mut refused, connack) = Raw::connect(broker.addr, Connect::v5("nofile-20")).await;
    assert_eq!(connack.code, 0x97, "v5: Quota exceeded");
    refused.expect_closed(RECV_TIMEOUT).await;
    for raw in &mut admitted {
        raw.send(&wire::pingreq()).await;
        raw.recv_kind(wire::PINGRESP).await;
    }
}

#[tokio::test]
async fn connections_waiting_to_send_connect_take_places() {
    let broker = Broker::start(&["--max-connections", "1", "--connect-timeout", "1"]);
    let _idle = Raw::open(broker.addr, wire::V5).await;
    // Give the broker time to accept the idle socket first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_refused, connack) = Raw::connect(broker.addr, Connect::v5("mc-behind-idle")).await;
    assert_eq!(connack.code, 0x97);
    // Once the idle socket is shed by the connect timeout, there is room.
    let mut raw = connect_eventually(&broker, Connect::v5("mc-after-idle")).await;
    raw.send(&wire::pingreq()).await;
    raw.recv_kind(wire::PINGRESP).await;
}

#[tokio::test]
async fn connect_timeout_closes_silent_and_dribbling_connections() {
    let broker = Broker::start(&["--connect-timeout", "1"]);
    let started = Instant::now();
    let mut silent = Raw::open(broker.addr, wire::V4).await;
    let mut dribbling = Raw::open(broker.addr, wire::V4).await;
    let connect = Connect::v4("dribbler").encode();
    // One byte of the CONNECT every 200 ms: the whole would take longer
    // than the timeout, and each byte must not restart it.
    let mut sent = 0;
    let closed = loop {
        if sent < connect.len() {
            dribbling.send_lossy(&connect[sent..=sent]).await;
            sent += 1;
        }
        match dribbling.try_recv(Duration::from_millis(200)).await {
            Err(RecvError::Timeout) => {}
            Err(RecvError::Closed) => break started.elapsed(),
            Ok(p) => panic!("incomplete CONNECT answered: {p:?}"),
        }
        assert!(started.elapsed() < RECV_TIMEOUT, "dribbler never closed");
    };
    assert!(sent < connect.len(), "the CONNECT was never completed");
    assert!(
        closed >= Duration::from_millis(900),
        "closed after {closed:?}, before the timeout"
    );
    let seen = silent.expect_closed(RECV_TIMEOUT).await;
    assert!(seen.is_empty(), "{seen:?}");

    // A client that sends its CONNECT in time is served past the timeout.
    let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v4("prompt").keep_alive(0)).await;
    raw.expect_silence(Duration::from_millis(1500)).await;
    raw.send(&wire::pingreq()).await;
    raw.recv_kind(wire::PINGRESP).await;
}

#[tokio::test]
async fn v3_clients_are_held_to_max_keepalive() {
    let broker = Broker::start(&["--max-keepalive", "2"]);
    // 0 (none) and 600 are both more than the broker grants; 3.1.1 cannot
    // be told, so the broker enforces its own 2 s (closing after 1.5 x).
    for asked in [0, 600] {
        let (mut raw, connack) = Raw::connect_ok(
            broker.addr,
            Connect::v4(&format!("ka-v3-{asked}")).keep_alive(asked),
        )
        .await;
        assert!(connack.props.is_empty());
        let started = Instant::now();
        let seen = raw.expect_closed(Duration::from_secs(10)).await;
        assert!(seen.is_empty(), "3.1.1 gets no DISCONNECT: {seen:?}");
        let after = started.elapsed();
        assert!(
            (Duration::from_millis(2500)..Duration::from_secs(6)).contains(&after),
            "asked {asked}: closed after {after:?}, expected about 3 s"
        );
    }
}

#[tokio::test]
async fn keep_alive_is_not_reset_by_an_incomplete_packet() {
    let broker = Broker::start(&[]);
    let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v5("ka-dribble").keep_alive(1)).await;
    let publish = Pub::new("dribble/t", &[b'x'; 100]).encode(wire::V5);
    let started = Instant::now();
    let mut sent = 0;
    // A byte every 300 ms is well inside the 1.5 s keep-alive, but the
    // PUBLISH never completes: no control packet arrives.
    let seen = loop {
        if sent < publish.len() - 1 {
            raw.send_lossy(&publish[sent..=sent]).await;
            sent += 1;
        }
        match raw.try_recv(Duration::from_millis(300)).await {
            Err(RecvError::Timeout) => {}
            Err(RecvError::Closed) => break Vec::new(),
            Ok(p) => break [vec![p], raw.expect_closed(RECV_TIMEOUT).await].concat(),
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "a dribbling client kept the connection past its keep-alive"
        );
    };
    for p in &seen {
        assert_eq!(p.disconnect_reason(), 0x8D, "Keep alive timeout");
    }
}

#[tokio::test]
async fn topics_past_the_length_and_level_limits_are_refused() {
    let broker = Broker::start(&["--max-topic-length", "16", "--max-topic-levels", "3"]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v5("tl-sub")).await;
    // At the limits: 16 bytes; 3 levels.
    assert_eq!(
        sub.subscribe(1, &[("tl/0123456789abc", 0), ("tl/+/#", 0)])
            .await,
        vec![0, 0]
    );
    for (version, failure) in [(wire::V4, 0x80), (wire::V5, 0x8F)] {
        let (mut raw, _) = Raw::connect_ok(
            broker.addr,
            Connect::new(version, &format!("tl-f{version}")),
        )
        .await;
        let codes = raw
            .subscribe(1, &[("tl/0123456789abcd", 1), ("tl/a/b/c", 1), ("tl/a", 1)])
            .await;
        assert_eq!(codes, vec![failure, failure, 1], "v{version}");
    }

    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("tl-ok")).await;
    publisher
        .publish(Pub::new("tl/0123456789abc", b"fits").qos(1, 1))
        .await;
    assert_eq!(sub.recv_publish().await.payload, b"fits");

    for topic in ["tl/0123456789abcd", "tl/a/b/c"] {
        let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v5("tl-long-v5")).await;
        raw.send(&Pub::new(topic, b"x").qos(1, 1).encode(wire::V5))
            .await;
        let seen = raw.expect_closed(RECV_TIMEOUT).await;
        assert_eq!(seen.len(), 1, "{topic}: {seen:?}");
        assert_eq!(seen[0].disconnect_reason(), 0x90, "Topic Name invalid");

        let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v4("tl-long-v4")).await;
        raw.send(&Pub::new(topic, b"x").qos(1, 1).encode(wire::V4))
            .await;
        let seen = raw.expect_closed(RECV_TIMEOUT).await;
        assert!(seen.is_empty(), "{topic}: not acknowledged: {seen:?}");
    }

    // A will topic past the limits refuses the CONNECT.
    let (mut raw, connack) = Raw::connect(
        broker.addr,
        Connect::v5("tl-will").will(Will::new("tl/will/too/deep", b"w")),
    )
    .await;
    assert_eq!(connack.code, 0x90);
    raw.expect_closed(RECV_TIMEOUT).await;
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn subscriptions_past_the_limit_exceed_the_quota() {
    let broker = Broker::start(&["--max-subscriptions-per-client", "2"]);
    for (version, failure) in [(wire::V4, 0x80), (wire::V5, 0x97)] {
        let (mut raw, _) =
            Raw::connect_ok(broker.addr, Connect::new(version, &format!("ms-{version}"))).await;
        let codes = raw
            .subscribe(1, &[("ms/a", 1), ("ms/b", 1), ("ms/c", 1)])
            .await;
        assert_eq!(codes, vec![1, 1, failure], "v{version}");
        // Replacing a held subscription is always allowed.
        assert_eq!(raw.subscribe(2, &[("ms/a", 0)]).await, vec![0]);
        // Unsubscribing makes room.
        raw.send(&wire::unsubscribe(version, 3, &["ms/b"])).await;
        raw.recv_kind(wire::UNSUBACK).await;
        assert_eq!(raw.subscribe(4, &[("ms/c", 1)]).await, vec![1]);
        assert_eq!(raw.subscribe(5, &[("ms/d", 1)]).await, vec![failure]);
    }
}

#[tokio::test]
async fn client_ids_past_the_limit_are_refused() {
    let broker = Broker::start(&["--max-client-id-length", "23"]);
    let fits = "a".repeat(23);
    let long = "a".repeat(24);
    let (_raw, _) = Raw::connect_ok(broker.addr, Connect::v5(&fits)).await;
    for (version, code) in [(wire::V4, 0x02), (wire::V5, 0x85)] {
        let (mut raw, connack) = Raw::connect(broker.addr, Connect::new(version, &long)).await;
        assert_eq!(connack.code, code, "v{version}");
        raw.expect_closed(RECV_TIMEOUT).await;
    }
}

#[tokio::test]
async fn default_client_id_limit_is_256_bytes() {
    let broker = Broker::start(&[]);
    let (_raw, _) = Raw::connect_ok(broker.addr, Connect::v4(&"b".repeat(256))).await;
    let (_raw, connack) = Raw::connect(broker.addr, Connect::v4(&"b".repeat(257))).await;
    assert_eq!(connack.code, 0x02);
}
