//! Topic names and filters: wildcard matching, `$` topics, invalid topics
//! and filters, unsubscribe, and shared subscription names (the shared
//! delivery itself is tested in `shared.rs`).

mod common;

use std::time::Duration;

use common::clients::v5;
use common::raw::Raw;
use common::wire::{self, Connect, Prop, Props, Pub};
use common::{Broker, QUIET, RECV_TIMEOUT};

/// Publishes each topic and returns the ones `filter` received.
async fn matches(filter: &str, topics: &[&str]) -> Vec<String> {
    let broker = Broker::start(&[]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4("match-sub")).await;
    assert_eq!(
        sub.subscribe(1, &[(filter, 0)]).await,
        vec![0],
        "filter {filter}"
    );
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("match-pub")).await;
    for topic in topics {
        publisher.publish(Pub::new(topic, b"m").qos(1, 1)).await;
    }
    // A final marker on a topic the filter is known to match tells us all
    // earlier messages have been routed.
    let mut got = Vec::new();
    loop {
        match sub.try_recv(Duration::from_millis(1500)).await {
            Ok(p) => got.push(p.publish(wire::V4).topic),
            Err(_) => return got,
        }
    }
}

#[tokio::test]
async fn single_level_wildcard() {
    let got = matches(
        "sport/+/player",
        &[
            "sport/tennis/player",
            "sport/player",
            "sport/tennis/x/player",
            "sport//player",
        ],
    )
    .await;
    assert_eq!(got, ["sport/tennis/player", "sport//player"]);
}

#[tokio::test]
async fn multi_level_wildcard_includes_parent() {
    let got = matches(
        "sport/tennis/#",
        &[
            "sport/tennis",
            "sport/tennis/a",
            "sport/tennis/a/b",
            "sport/tennisx",
            "sport",
        ],
    )
    .await;
    assert_eq!(got, ["sport/tennis", "sport/tennis/a", "sport/tennis/a/b"]);
}

#[tokio::test]
async fn plus_matches_empty_levels_and_leading_slash() {
    let got = matches("+/+", &["/finance", "a/b", "a", "a/b/c"]).await;
    assert_eq!(got, ["/finance", "a/b"]);
}

#[tokio::test]
async fn topics_are_case_sensitive_and_exact() {
    let got = matches("a/B", &["a/b", "a/B", "A/B", "a/B/"]).await;
    assert_eq!(got, ["a/B"]);
}

#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let got = matches("#", &["$SYS/x", "$internal", "plain/t"]).await;
    assert_eq!(got, ["plain/t"]);
    let got = matches("+/x", &["$SYS/x", "a/x"]).await;
    assert_eq!(got, ["a/x"]);
}

#[tokio::test]
async fn dollar_topics_are_matched_explicitly() {
    let got = matches("$app/#", &["$app/a", "$app/b/c", "app/a"]).await;
    assert_eq!(got, ["$app/a", "$app/b/c"]);
}

#[tokio::test]
async fn publish_to_wildcard_topic_closes_v4_connection() {
    for topic in ["bad/+", "bad/#", "+"] {
        let broker = Broker::start(&[]);
        let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4("wild-watch")).await;
        sub.subscribe(1, &[("#", 0)]).await;
        let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v4("wild-pub")).await;
        raw.send(&Pub::new(topic, b"x").qos(1, 1).encode(wire::V4))
            .await;
        let seen = raw.expect_closed(RECV_TIMEOUT).await;
        assert!(
            seen.iter().all(|p| p.kind() != wire::PUBACK),
            "{topic}: must not be acknowledged: {seen:?}"
        );
        sub.expect_silence(QUIET).await;
    }
}

#[tokio::test]
async fn publish_to_wildcard_topic_gets_v5_disconnect_0x90() {
    let broker = Broker::start(&[]);
    let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v5("wild-pub-v5")).await;
    raw.send(&Pub::new("bad/+/x", b"x").encode(wire::V5)).await;
    let seen = raw.expect_closed(RECV_TIMEOUT).await;
    assert_eq!(seen.len(), 1, "expected one DISCONNECT: {seen:?}");
    assert_eq!(seen[0].disconnect_reason(), 0x90, "Topic Name invalid");
}

#[tokio::test]
async fn invalid_filters_get_failure_codes_per_filter() {
    let invalid = ["a/#/b", "a+/b", "a/b#", "#/a", "+x"];
    for (version, failure) in [(wire::V4, 0x80u8), (wire::V5, 0x8F)] {
        let broker = Broker::start(&[]);
        let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::new(version, "bad-filter")).await;
        for (i, filter) in invalid.iter().enumerate() {
            // Each invalid filter sits between two valid ones.
            let codes = raw
                .subscribe(i as u16 + 1, &[("ok/one", 1), (filter, 1), ("ok/two", 0)])
                .await;
            assert_eq!(codes, vec![1, failure, 0], "v{version} filter {filter:?}");
        }
        // The connection is still usable and the valid filters work.
        let (mut publisher, _) =
            Raw::connect_ok(broker.addr, Connect::new(version, "bf-pub")).await;
        publisher.publish(Pub::new("ok/two", b"fine")).await;
        assert_eq!(raw.recv_publish().await.payload, b"fine");
    }
}

#[tokio::test]
async fn v5_shared_subscription_is_granted_and_advertised() {
    let broker = Broker::start(&[]);
    let (mut raw, connack) = Raw::connect_ok(broker.addr, Connect::v5("shared")).await;
    // Shared Subscription Available (0x2A) is 1, or absent (which means 1).
    assert!(
        matches!(connack.prop(0x2A), None | Some(wire::Prop::Byte(1))),
        "{:?}",
        connack.prop(0x2A)
    );
    let codes = raw
        .subscribe(1, &[("$share/group/t", 1), ("plain/t", 1)])
        .await;
    assert_eq!(codes, vec![1, 1]);
}

#[tokio::test]
async fn rumqttc_v5_shared_subscription_granted() {
    let broker = Broker::start(&[]);
    let mut c = v5::Client::simple(broker.addr, "shared-lib").await;
    let codes = c
        .subscribe_filter(v5::Filter::new("$share/g/t", v5::QoS::AtMostOnce), None)
        .await;
    assert_eq!(
        codes,
        vec![v5::SubscribeReasonCode::Success(v5::QoS::AtMostOnce)]
    );
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let broker = Broker::start(&[]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4("unsub")).await;
    sub.subscribe(1, &[("un/t", 0), ("un/keep", 0)]).await;
    sub.send(&wire::unsubscribe(wire::V4, 2, &["un/t"])).await;
    let p = sub.recv_kind(wire::UNSUBACK).await;
    assert_eq!(p.body, vec![0x00, 0x02]);
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("unsub-pub")).await;
    publisher.publish(Pub::new("un/t", b"gone").qos(1, 1)).await;
    publisher
        .publish(Pub::new("un/keep", b"kept").qos(1, 2))
        .await;
    let p = sub.recv_publish().await;
    assert_eq!(p.topic, "un/keep");
    sub.expect_silence(QUIET).await;
}

/// Subscribes to three filters matching `ov/t` at QoS 0, 1 and 2 (each
/// with its own subscription identifier on v5), publishes one QoS 2
/// message there, and returns the copies delivered.
async fn overlapping_copies(version: u8) -> Vec<wire::Publish> {
    let broker = Broker::start(&[]);
    let connect = if version == wire::V5 {
        Connect::v5("overlap")
    } else {
        Connect::v4("overlap")
    };
    let (mut sub, _) = Raw::connect_ok(broker.addr, connect).await;
    for (pkid, filter, qos) in [(1, "ov/t", 0), (2, "ov/#", 2), (3, "ov/+", 1)] {
        let props = if version == wire::V5 {
            Props::new().varint(wire::SUBSCRIPTION_ID, usize::from(pkid))
        } else {
            Props::new()
        };
        assert_eq!(
            sub.subscribe_with(pkid, &[(filter, qos)], props).await,
            vec![qos]
        );
    }
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("overlap-pub")).await;
    publisher.publish(Pub::new("ov/t", b"x").qos(2, 1)).await;
    let mut copies = Vec::new();
    while let Ok(packet) = sub.try_recv(QUIET).await {
        copies.push(packet.publish(version));
    }
    copies
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_one_copy_at_the_highest_qos_v4() {
    // 3.1.1 allows one copy per subscription too (3.3.5); ringmq, like
    // 5.0 requires, sends one, at the highest QoS granted.
    let copies = overlapping_copies(wire::V4).await;
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(
        (copies[0].qos, copies[0].payload.as_slice()),
        (2, &b"x"[..])
    );
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_one_copy_at_the_highest_qos_v5() {
    let copies = overlapping_copies(wire::V5).await;
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0].qos, 2);
    // Spec 3.3.4: the one copy carries every matching subscription's identifier.
    let mut ids: Vec<u32> = copies[0]
        .props
        .iter()
        .filter_map(|(_, prop)| match prop {
            Prop::Varint(id) => Some(*id),
            _ => None,
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2, 3]);
}
