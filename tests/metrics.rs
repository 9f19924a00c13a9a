//! The metrics endpoint (`--metrics-listen`) and the `$SYS` topics, seen
//! from outside: scrape after real traffic and parse the text.

mod common;

use std::time::Duration;

use common::Broker;
use common::clients::v4;
use common::http::{get, sample, wait_ready};
use common::raw::Raw;
use common::wire::{self, Connect, Props, Pub};

/// Every `_bucket` sample of histogram `name`, in order.
fn buckets(text: &str, name: &str) -> Vec<(String, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|rest| {
            let (le, value) = rest.split_once("\"} ").expect("a bucket sample");
            (le.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

fn assert_histogram(text: &str, name: &str) -> f64 {
    let buckets = buckets(text, name);
    assert_eq!(buckets.len(), 20, "{name} has 19 bounds and +Inf:\n{text}");
    assert_eq!(buckets[0].0, "0.00001", "{name} starts at 10 µs");
    assert_eq!(buckets[18].0, "10.0", "{name} ends at 10 s");
    assert_eq!(buckets[19].0, "+Inf");
    for pair in buckets.windows(2) {
        assert!(
            pair[0].1 <= pair[1].1,
            "{name} buckets are cumulative: {buckets:?}"
        );
    }
    let count = sample(text, &format!("{name}_count"));
    assert_eq!(buckets[19].1, count, "{name}: +Inf bucket equals _count");
    let sum = sample(text, &format!("{name}_sum"));
    assert!(sum >= 0.0 && sum.is_finite());
    count
}

#[tokio::test]
async fn counters_and_histograms_follow_pub_sub_traffic() {
    let broker = Broker::start(&["--cores", "2", "--metrics-listen", "127.0.0.1:0"]);
    let metrics = broker.metrics_addr();

    let mut subscriber = v4::Client::simple(broker.addr, "metrics-sub").await;
    subscriber.subscribe("m/#", v4::QoS::AtLeastOnce).await;
    let mut publisher = v4::Client::simple(broker.addr, "metrics-pub").await;
    for n in 0..10u8 {
        publisher
            .publish("m/a", v4::QoS::AtLeastOnce, false, &[n; 16])
            .await;
    }
    for n in 0..5u8 {
        publisher
            .publish("m/b", v4::QoS::AtMostOnce, false, &[n])
            .await;
    }
    publisher
        .publish("nobody/listens", v4::QoS::AtMostOnce, false, b"x")
        .await;
    for _ in 0..15 {
        subscriber.next_publish().await;
    }

    let (status, text) = get(metrics, "/metrics");
    assert_eq!(status, 200, "{text}");
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    assert!(sample(&text, "ringmq_connections_total") >= 2.0);
    assert!(sample(&text, "ringmq_connections_current") >= 2.0);
    assert!(sample(&text, "ringmq_sessions{state=\"online\"}") >= 2.0);
    assert!(sample(&text, "ringmq_subscriptions") >= 1.0);
    assert!(sample(&text, "ringmq_messages_received_total{qos=\"1\"}") >= 10.0);
    assert!(sample(&text, "ringmq_messages_received_total{qos=\"0\"}") >= 6.0);
    assert!(sample(&text, "ringmq_received_payload_bytes_total{qos=\"1\"}") >= 160.0);
    assert!(sample(&text, "ringmq_messages_sent_total{qos=\"1\"}") >= 10.0);
    assert!(sample(&text, "ringmq_messages_sent_total{qos=\"0\"}") >= 5.0);
    assert!(
        sample(
            &text,
            "ringmq_messages_dropped_total{reason=\"no_subscribers\"}"
        ) >= 1.0
    );
    assert!(assert_histogram(&text, "ringmq_publish_latency_seconds") >= 15.0);
    assert!(assert_histogram(&text, "ringmq_connect_duration_seconds") >= 2.0);
    assert_histogram(&text, "ringmq_cross_shard_hop_seconds");
    for shard in 0..2 {
        sample(
            &text,
            &format!("ringmq_shard_inbox_depth{{shard=\"{shard}\"}}"),
        );
        sample(
            &text,
            &format!("ringmq_cross_shard_messages_sent_total{{shard=\"{shard}\"}}"),
        );
    }
}

#[test]
fn health_and_ready_answer_200_when_running() {
    let broker = Broker::start(&["--cores", "2", "--metrics-listen", "127.0.0.1:0"]);
    let metrics = broker.metrics_addr();
    assert_eq!(wait_ready(metrics), (200, "OK\n".to_owned()));
    assert_eq!(get(metrics, "/health"), (200, "OK\n".to_owned()));
    assert_eq!(get(metrics, "/nothing-here").0, 404);
}

#[tokio::test]
async fn sys_uptime_reaches_a_subscriber() {
    let broker = Broker::start(&["--sys-interval", "1"]);
    let mut subscriber = v4::Client::simple(broker.addr, "sys-sub").await;
    subscriber
        .subscribe("$SYS/broker/uptime", v4::QoS::AtMostOnce)
        .await;
    let uptime = subscriber.next_publish().await;
    assert_eq!(uptime.topic, "$SYS/broker/uptime");
    let payload = String::from_utf8(uptime.payload.to_vec()).expect("UTF-8");
    assert!(payload.ends_with(" seconds"), "{payload:?}");

    // Retained: a later subscriber gets the last value at once, along
    // with the other counters under Mosquitto's names.
    let mut late = v4::Client::simple(broker.addr, "sys-late").await;
    late.subscribe("$SYS/broker/clients/connected", v4::QoS::AtMostOnce)
        .await;
    let connected = late.next_publish().await;
    assert!(connected.retain);
    let n: u64 = String::from_utf8(connected.payload.to_vec())
        .expect("UTF-8")
        .parse()
        .expect("a count");
    assert!(n >= 1, "at least the first subscriber is connected");
}

#[tokio::test]
async fn refused_connects_are_counted_by_reason() {
    let broker = Broker::start(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--connect-timeout",
        "1",
        "--max-client-id-length",
        "23",
    ]);
    let metrics = broker.metrics_addr();
    // 3.1.1 forbids an empty client id without a clean session.
    let (_raw, connack) = Raw::connect(broker.addr, Connect::v4("").clean(false)).await;
    assert_eq!(connack.code, 0x02);
    let (_raw, connack) = Raw::connect(broker.addr, Connect::v4(&"x".repeat(24))).await;
    assert_eq!(connack.code, 0x02, "longer than --max-client-id-length");
    // A v5 CONNECT asking for an unknown authentication method.
    let bad_auth = Connect::v5("metrics-auth").props(Props::new().string(0x15, "nope"));
    let (_raw, connack) = Raw::connect(broker.addr, bad_auth).await;
    assert_eq!(connack.code, 0x8C);
    // Connections closed before they had a CONNECT to refuse: one opening
    // with a PUBLISH, one silent past the connect timeout.
    let mut early = Raw::open(broker.addr, wire::V4).await;
    early
        .send(&Pub::new("before/connect", b"x").encode(wire::V4))
        .await;
    assert!(early.expect_closed(Duration::from_secs(2)).await.is_empty());
    let mut silent = Raw::open(broker.addr, wire::V4).await;
    assert!(
        silent
            .expect_closed(Duration::from_secs(5))
            .await
            .is_empty()
    );

    let (_, text) = get(metrics, "/metrics");
    assert_eq!(
        sample(
            &text,
            "ringmq_connections_rejected_total{reason=\"ClientIdentifierNotValid\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "ringmq_connections_rejected_total{reason=\"Malformed\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "ringmq_connections_rejected_total{reason=\"ConnectTimeout\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "ringmq_connections_rejected_total{reason=\"BadAuthenticationMethod\"}"
        ),
        1.0
    );
}
