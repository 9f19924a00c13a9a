//! Retained messages: storage, replacement, clearing, the RETAIN flag on
//! delivery, and the v5 subscription options retain handling and retain as
//! published.

mod common;

use common::clients::{v4, v5};
use common::raw::Raw;
use common::wire::{self, Connect, Pub};
use common::{Broker, QUIET};

#[tokio::test]
async fn new_subscriber_gets_retained_message_with_retain_flag() {
    let broker = Broker::start(&[]);
    let mut publisher = v4::Client::simple(broker.addr, "ret-pub").await;
    publisher
        .publish("ret/a", v4::QoS::AtLeastOnce, true, b"kept")
        .await;

    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4("ret-sub")).await;
    assert_eq!(sub.subscribe(1, &[("ret/a", 1)]).await, vec![1]);
    let p = sub.recv_publish().await;
    assert_eq!(p.topic, "ret/a");
    assert_eq!(p.payload, b"kept");
    assert!(
        p.retain,
        "a retained message sent on subscribe has RETAIN=1"
    );
    assert_eq!(p.qos, 1);
    sub.send(&wire::ack(wire::PUBACK, p.pkid)).await;
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn retained_message_is_replaced_and_cleared() {
    let broker = Broker::start(&[]);
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("ret-repl-pub")).await;
    publisher
        .publish(Pub::new("ret/r", b"old").qos(1, 1).retain())
        .await;
    publisher
        .publish(Pub::new("ret/r", b"new").qos(1, 2).retain())
        .await;

    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4("ret-repl-sub1")).await;
    sub.subscribe(1, &[("ret/r", 0)]).await;
    let p = sub.recv_publish().await;
    assert_eq!(
        p.payload, b"new",
        "only the latest retained message is kept"
    );
    sub.expect_silence(QUIET).await;

    // An empty retained payload deletes the retained message.
    publisher
        .publish(Pub::new("ret/r", b"").qos(1, 3).retain())
        .await;
    // The existing subscriber still gets that (empty) publication live.
    let live = sub.recv_publish().await;
    assert!(live.payload.is_empty());

    let (mut late, _) = Raw::connect_ok(broker.addr, Connect::v4("ret-repl-sub2")).await;
    late.subscribe(1, &[("ret/r", 0)]).await;
    late.expect_silence(QUIET).await;
}

#[tokio::test]
async fn live_delivery_clears_retain_flag_in_v4() {
    let broker = Broker::start(&[]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4("ret-live-sub")).await;
    sub.subscribe(1, &[("ret/live", 0)]).await;
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("ret-live-pub")).await;
    publisher.publish(Pub::new("ret/live", b"x").retain()).await;
    let p = sub.recv_publish().await;
    assert_eq!(p.payload, b"x");
    assert!(
        !p.retain,
        "3.1.1: RETAIN is 0 when delivered to an established subscription"
    );
}

#[tokio::test]
async fn wildcard_subscription_receives_every_matching_retained_message() {
    let broker = Broker::start(&[]);
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("ret-wild-pub")).await;
    for (topic, payload) in [
        ("ret/w/1", "a"),
        ("ret/w/2", "b"),
        ("ret/w/x/3", "c"),
        ("ret/other", "d"),
    ] {
        publisher
            .publish(Pub::new(topic, payload.as_bytes()).qos(1, 1).retain())
            .await;
    }
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4("ret-wild-sub")).await;
    sub.subscribe(1, &[("ret/w/+", 0)]).await;
    let mut got = [sub.recv_publish().await, sub.recv_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(got[0].topic, "ret/w/1");
    assert_eq!(got[0].payload, b"a");
    assert_eq!(got[1].topic, "ret/w/2");
    assert_eq!(got[1].payload, b"b");
    assert!(got.iter().all(|p| p.retain));
    sub.expect_silence(QUIET).await;

    let (mut all, _) = Raw::connect_ok(broker.addr, Connect::v4("ret-wild-all")).await;
    all.subscribe(1, &[("ret/#", 0)]).await;
    let mut topics = Vec::new();
    for _ in 0..4 {
        topics.push(all.recv_publish().await.topic);
    }
    topics.sort();
    assert_eq!(topics, ["ret/other", "ret/w/1", "ret/w/2", "ret/w/x/3"]);
    all.expect_silence(QUIET).await;
}

#[tokio::test]
async fn retained_delivery_qos_is_min_of_stored_and_granted() {
    let broker = Broker::start(&[]);
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("ret-qos-pub")).await;
    publisher
        .publish(Pub::new("ret/q", b"q2").qos(2, 1).retain())
        .await;
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4("ret-qos-sub")).await;
    sub.subscribe(1, &[("ret/q", 1)]).await;
    let p = sub.recv_publish().await;
    assert_eq!(p.qos, 1);
    assert!(p.retain);
}

/// Subscribes twice to the same filter with `options` and returns how many
/// retained messages each SUBSCRIBE brought.
async fn retained_counts(options: u8) -> (usize, usize) {
    let broker = Broker::start(&[]);
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("rh-pub")).await;
    publisher
        .publish(Pub::new("rh/t", b"r").qos(1, 1).retain())
        .await;
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v5("rh-sub")).await;
    let mut counts = [0, 0];
    for (round, count) in counts.iter_mut().enumerate() {
        let codes = sub.subscribe(round as u16 + 1, &[("rh/t", options)]).await;
        assert_eq!(codes, vec![options & 0x03]);
        while let Ok(p) = sub.try_recv(QUIET).await {
            let p = p.publish(wire::V5);
            assert_eq!(p.payload, b"r");
            assert!(p.retain);
            *count += 1;
        }
    }
    (counts[0], counts[1])
}

#[tokio::test]
async fn v5_retain_handling_0_sends_on_every_subscribe() {
    assert_eq!(retained_counts(0).await, (1, 1));
}

#[tokio::test]
async fn v5_retain_handling_1_sends_only_for_new_subscription() {
    assert_eq!(
        retained_counts(wire::RETAIN_HANDLING_NEW_ONLY).await,
        (1, 0)
    );
}

#[tokio::test]
async fn v5_retain_handling_2_never_sends() {
    assert_eq!(retained_counts(wire::RETAIN_HANDLING_NEVER).await, (0, 0));
}

#[tokio::test]
async fn v5_retain_as_published() {
    let broker = Broker::start(&[]);
    let (mut keep, _) = Raw::connect_ok(broker.addr, Connect::v5("rap-keep")).await;
    keep.subscribe(1, &[("rap/t", wire::RETAIN_AS_PUBLISHED)])
        .await;
    let (mut clear, _) = Raw::connect_ok(broker.addr, Connect::v5("rap-clear")).await;
    clear.subscribe(1, &[("rap/t", 0)]).await;

    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("rap-pub")).await;
    publisher.publish(Pub::new("rap/t", b"r").retain()).await;
    publisher.publish(Pub::new("rap/t", b"n")).await;

    let (r, n) = (keep.recv_publish().await, keep.recv_publish().await);
    assert!(r.retain && r.payload == b"r", "RAP=1 keeps RETAIN=1: {r:?}");
    assert!(!n.retain && n.payload == b"n");
    let (r, n) = (clear.recv_publish().await, clear.recv_publish().await);
    assert!(!r.retain && r.payload == b"r", "RAP=0 clears RETAIN: {r:?}");
    assert!(!n.retain);
}

#[tokio::test]
async fn rumqttc_v5_retain_handling_never() {
    let broker = Broker::start(&[]);
    let mut publisher = v5::Client::simple(broker.addr, "rh-lib-pub").await;
    publisher
        .publish("rh/lib", v5::QoS::AtLeastOnce, true, b"r")
        .await;
    let mut sub = v5::Client::simple(broker.addr, "rh-lib-sub").await;
    let mut filter = v5::Filter::new("rh/lib", v5::QoS::AtLeastOnce);
    filter.retain_forward_rule = v5::RetainForwardRule::Never;
    sub.subscribe_filter(filter, None).await;
    sub.expect_no_publish(QUIET).await;
    // A plain subscriber does get it.
    let mut plain = v5::Client::simple(broker.addr, "rh-lib-plain").await;
    plain.subscribe("rh/lib", v5::QoS::AtLeastOnce).await;
    let p = plain.next_publish().await;
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"r");
}
