//! The rest of MQTT 5 against the real binary: CONNACK limits, topic
//! aliases both ways, Receive Maximum and Maximum Packet Size both ways,
//! message expiry, problem information, and authentication methods.

mod common;

use std::time::Duration;

use common::clients::v5;
use common::raw::{Raw, RecvError};
use common::wire::{self, Connect, Prop, Props, Pub};
use common::{Broker, QUIET, RECV_TIMEOUT, unique_id};

/// A v5 raw PUBLISH carrying a topic alias.
fn aliased(topic: &str, alias: u16, payload: &[u8]) -> Pub {
    Pub::new(topic, payload).props(Props::new().u16(wire::TOPIC_ALIAS, alias))
}

/// Waits for the broker's DISCONNECT and the close after it; returns the
/// reason code and Reason String.
async fn expect_disconnect(raw: &mut Raw) -> (u8, Option<String>) {
    let packets = raw.expect_closed(RECV_TIMEOUT).await;
    let disconnect = packets
        .iter()
        .find(|p| p.kind() == wire::DISCONNECT)
        .unwrap_or_else(|| panic!("no DISCONNECT before the close: {packets:?}"));
    let reason_string = match wire::find(&disconnect.disconnect_props(), wire::REASON_STRING) {
        Some(Prop::Str(s)) => Some(s.clone()),
        _ => None,
    };
    (disconnect.disconnect_reason(), reason_string)
}

/// A persistent v5 session (one hour of expiry) with `props` added.
fn persistent(id: &str, props: Props) -> Connect {
    Connect::v5(id)
        .clean(false)
        .props(props.u32(wire::SESSION_EXPIRY, 3600))
}

async fn goodbye(mut raw: Raw) {
    raw.send(&wire::disconnect_v5(0, Props::new())).await;
    raw.expect_closed(RECV_TIMEOUT).await;
}

#[tokio::test]
async fn connack_advertises_every_limit() {
    let broker = Broker::start(&["--max-inflight", "7", "--max-packet-size", "4096"]);
    let connect = Connect::v5("limits").props(
        Props::new()
            .byte(wire::REQUEST_RESPONSE_INFORMATION, 1)
            .byte(wire::REQUEST_PROBLEM_INFORMATION, 1),
    );
    let (_raw, connack) = Raw::connect_ok(broker.addr, connect).await;
    assert_eq!(connack.prop(wire::RECEIVE_MAXIMUM), Some(&Prop::U16(7)));
    assert_eq!(connack.prop(wire::MAX_PACKET_SIZE), Some(&Prop::U32(4096)));
    assert_eq!(
        connack.prop(wire::TOPIC_ALIAS_MAXIMUM),
        Some(&Prop::U16(10))
    );
    assert_eq!(connack.prop(wire::RETAIN_AVAILABLE), Some(&Prop::Byte(1)));
    assert_eq!(
        connack.prop(wire::WILDCARD_SUBSCRIPTION_AVAILABLE),
        Some(&Prop::Byte(1))
    );
    assert_eq!(
        connack.prop(wire::SUBSCRIPTION_IDS_AVAILABLE),
        Some(&Prop::Byte(1))
    );
    // Whether shared subscriptions are available is another feature's to
    // decide; it is announced either way.
    assert!(matches!(
        connack.prop(wire::SHARED_SUBSCRIPTION_AVAILABLE),
        Some(Prop::Byte(0 | 1))
    ));
    assert_eq!(connack.prop(wire::MAXIMUM_QOS), None, "absent means QoS 2");
    assert_eq!(
        connack.prop(wire::RESPONSE_INFORMATION),
        None,
        "no Response Information is offered"
    );
    assert_eq!(connack.prop(wire::REASON_STRING), None);
}

#[tokio::test]
async fn topic_alias_maximum_is_configurable() {
    let broker = Broker::start(&["--topic-alias-maximum", "3"]);
    let (_raw, connack) = Raw::connect_ok(broker.addr, Connect::v5("tam-3")).await;
    assert_eq!(connack.prop(wire::TOPIC_ALIAS_MAXIMUM), Some(&Prop::U16(3)));

    let broker = Broker::start(&["--topic-alias-maximum", "0"]);
    let (mut raw, connack) = Raw::connect_ok(broker.addr, Connect::v5("tam-0")).await;
    assert_eq!(connack.prop(wire::TOPIC_ALIAS_MAXIMUM), None, "0 is absent");
    raw.send(&aliased("t", 1, b"x").encode(wire::V5)).await;
    let (reason, why) = expect_disconnect(&mut raw).await;
    assert_eq!(reason, 0x94);
    assert_eq!(why.as_deref(), Some("topic alias 1 exceeds maximum 0"));
}

#[tokio::test]
async fn incoming_topic_alias_is_resolved_for_subscribers() {
    let broker = Broker::start(&[]);
    let (mut sub5, _) = Raw::connect_ok(broker.addr, Connect::v5("ali-sub5")).await;
    sub5.subscribe(1, &[("alias/#", 1)]).await;
    let (mut sub4, _) = Raw::connect_ok(broker.addr, Connect::v4("ali-sub4")).await;
    sub4.subscribe(1, &[("alias/#", 1)]).await;

    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("ali-pub")).await;
    publisher
        .publish(aliased("alias/a", 1, b"1").qos(1, 1))
        .await;
    publisher.publish(aliased("", 1, b"2").qos(1, 2)).await;
    // Rebinding alias 1 to another topic.
    publisher
        .publish(aliased("alias/b", 1, b"3").qos(1, 3))
        .await;
    publisher.publish(aliased("", 1, b"4").qos(2, 4)).await;
    publisher.publish(aliased("", 10, b"never").qos(0, 0)).await;
    let (reason, why) = expect_disconnect(&mut publisher).await;
    assert_eq!(reason, 0x82, "alias 10 was never bound");
    assert_eq!(
        why.as_deref(),
        Some("topic alias 10 is not bound to a topic on this connection")
    );

    for sub in [&mut sub5, &mut sub4] {
        let mut got = Vec::new();
        for _ in 0..4 {
            let p = sub.recv_publish().await;
            assert_eq!(p.prop(wire::TOPIC_ALIAS), None, "routed without alias");
            got.push((p.topic, p.payload));
        }
        assert_eq!(
            got,
            vec![
                ("alias/a".to_string(), b"1".to_vec()),
                ("alias/a".to_string(), b"2".to_vec()),
                ("alias/b".to_string(), b"3".to_vec()),
                ("alias/b".to_string(), b"4".to_vec()),
            ]
        );
    }
}

#[tokio::test]
async fn topic_alias_above_the_maximum_is_invalid() {
    let broker = Broker::start(&[]);
    let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v5("ali-big")).await;
    raw.send(&aliased("t", 11, b"x").encode(wire::V5)).await;
    let (reason, why) = expect_disconnect(&mut raw).await;
    assert_eq!(reason, 0x94);
    assert_eq!(why.as_deref(), Some("topic alias 11 exceeds maximum 10"));

    let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v5("ali-zero")).await;
    raw.send(&aliased("t", 0, b"x").encode(wire::V5)).await;
    assert_eq!(expect_disconnect(&mut raw).await.0, 0x94);
}

#[tokio::test]
async fn incoming_topic_aliases_reset_on_reconnect() {
    let broker = Broker::start(&[]);
    let id = unique_id("ali-reset");
    let (mut raw, _) = Raw::connect_ok(broker.addr, persistent(&id, Props::new())).await;
    raw.publish(aliased("reset/t", 1, b"x").qos(1, 1)).await;
    goodbye(raw).await;
    let (mut raw, connack) = Raw::connect_ok(broker.addr, persistent(&id, Props::new())).await;
    assert!(connack.session_present);
    raw.send(&aliased("", 1, b"y").encode(wire::V5)).await;
    assert_eq!(expect_disconnect(&mut raw).await.0, 0x82);
}

#[tokio::test]
async fn outgoing_topic_aliases_up_to_the_client_maximum() {
    let broker = Broker::start(&[]);
    let connect = Connect::v5("ali-out").props(Props::new().u16(wire::TOPIC_ALIAS_MAXIMUM, 2));
    let (mut sub, _) = Raw::connect_ok(broker.addr, connect).await;
    sub.subscribe(1, &[("out/#", 0)]).await;
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("ali-out-pub")).await;
    for topic in ["out/a", "out/a", "out/b", "out/c", "out/b", "out/a"] {
        publisher.publish(Pub::new(topic, b"p").qos(1, 1)).await;
    }
    let mut got = Vec::new();
    for _ in 0..6 {
        let p = sub.recv_publish().await;
        let alias = match p.prop(wire::TOPIC_ALIAS) {
            Some(Prop::U16(alias)) => Some(*alias),
            None => None,
            other => panic!("bad topic alias {other:?}"),
        };
        got.push((p.topic, alias));
    }
    assert_eq!(
        got,
        vec![
            ("out/a".to_string(), Some(1)),
            (String::new(), Some(1)),
            ("out/b".to_string(), Some(2)),
            ("out/c".to_string(), None),
            (String::new(), Some(2)),
            (String::new(), Some(1)),
        ]
    );
}

#[tokio::test]
async fn outgoing_topic_aliases_only_to_clients_that_accept_them() {
    let broker = Broker::start(&[]);
    let accepting = |id| Connect::v5(id).props(Props::new().u16(wire::TOPIC_ALIAS_MAXIMUM, 1));
    let (mut one, _) = Raw::connect_ok(broker.addr, accepting("ali-one")).await;
    // Absent means 0 (spec 3.1.2.11.5): the broker must not send any.
    let (mut absent, _) = Raw::connect_ok(broker.addr, Connect::v5("ali-absent")).await;
    let zero = Connect::v5("ali-zero-max").props(Props::new().u16(wire::TOPIC_ALIAS_MAXIMUM, 0));
    let (mut zero, _) = Raw::connect_ok(broker.addr, zero).await;
    for sub in [&mut one, &mut absent, &mut zero] {
        sub.subscribe(1, &[("each/qos", 2)]).await;
    }
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("ali-each-pub")).await;
    for qos in 0..=2 {
        publisher
            .publish(Pub::new("each/qos", &[qos]).qos(qos, u16::from(qos)))
            .await;
    }
    let mut seen = Vec::new();
    for qos in 0..=2 {
        let p = one.recv_publish().await;
        assert_eq!((p.qos, p.payload.as_slice()), (qos, &[qos][..]));
        seen.push((p.topic.clone(), p.prop(wire::TOPIC_ALIAS).cloned()));
        if qos == 2 {
            one.send(&wire::ack(wire::PUBREC, p.pkid)).await;
            one.recv_kind(wire::PUBREL).await;
            one.send(&wire::ack(wire::PUBCOMP, p.pkid)).await;
        } else if qos == 1 {
            one.send(&wire::ack(wire::PUBACK, p.pkid)).await;
        }
    }
    let alias = Some(Prop::U16(1));
    assert_eq!(
        seen,
        vec![
            ("each/qos".to_string(), alias.clone()),
            (String::new(), alias.clone()),
            (String::new(), alias),
        ]
    );
    for sub in [&mut absent, &mut zero] {
        for qos in 0..=2 {
            let p = sub.recv_publish().await;
            assert_eq!((p.topic.as_str(), p.qos), ("each/qos", qos));
            assert_eq!(p.prop(wire::TOPIC_ALIAS), None);
        }
    }
}

#[tokio::test]
async fn outgoing_topic_aliases_can_be_turned_off() {
    let broker = Broker::start(&["--server-topic-aliases", "false"]);
    let connect = Connect::v5("ali-off").props(Props::new().u16(wire::TOPIC_ALIAS_MAXIMUM, 5));
    let (mut sub, _) = Raw::connect_ok(broker.addr, connect).await;
    sub.subscribe(1, &[("off/#", 0)]).await;
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("ali-off-pub")).await;
    for _ in 0..2 {
        publisher.publish(Pub::new("off/t", b"p").qos(1, 1)).await;
    }
    for _ in 0..2 {
        let p = sub.recv_publish().await;
        assert_eq!(p.topic, "off/t");
        assert_eq!(p.prop(wire::TOPIC_ALIAS), None);
    }
}

#[tokio::test]
async fn resend_after_reconnect_names_the_topic_again() {
    let broker = Broker::start(&[]);
    let id = unique_id("ali-dup");
    let props = || Props::new().u16(wire::TOPIC_ALIAS_MAXIMUM, 5);
    let (mut sub, _) = Raw::connect_ok(broker.addr, persistent(&id, props())).await;
    sub.subscribe(1, &[("dup/t", 1)]).await;
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("ali-dup-pub")).await;
    publisher.publish(Pub::new("dup/t", b"1").qos(1, 1)).await;
    publisher.publish(Pub::new("dup/t", b"2").qos(1, 2)).await;
    let first = sub.recv_publish().await;
    let second = sub.recv_publish().await;
    assert_eq!(first.topic, "dup/t");
    assert_eq!(second.topic, "", "sent by alias");
    // Neither is acknowledged: both are owed again on the next connection,
    // where alias 1 means nothing yet.
    sub.drop_abruptly();
    let (mut sub, connack) = Raw::connect_ok(broker.addr, persistent(&id, props())).await;
    assert!(connack.session_present);
    let first = sub.recv_publish().await;
    let second = sub.recv_publish().await;
    assert!(first.dup && second.dup);
    assert_eq!(first.topic, "dup/t", "the alias is announced again");
    assert_eq!(first.prop(wire::TOPIC_ALIAS), Some(&Prop::U16(1)));
    assert_eq!(
        (second.topic.as_str(), second.payload.as_slice()),
        ("", &b"2"[..])
    );
}

#[tokio::test]
async fn rumqttc_client_uses_topic_aliases_both_ways() {
    let broker = Broker::start(&[]);
    let mut opts = v5::options(broker.addr, "ali-rumqttc-sub");
    opts.set_topic_alias_max(Some(5));
    let (mut sub, connack) = v5::Client::connect(opts).await;
    let advertised = connack.properties.and_then(|p| p.topic_alias_max);
    assert_eq!(advertised, Some(10));
    sub.subscribe("rq/#", v5::QoS::AtLeastOnce).await;

    let (mut publisher, _) = v5::Client::connect(v5::options(broker.addr, "ali-rumqttc-pub")).await;
    for (topic, payload) in [("rq/a", b"1"), ("rq/a", b"2"), ("rq/b", b"3")] {
        let props = v5::PublishProperties {
            topic_alias: Some(2),
            ..Default::default()
        };
        publisher
            .publish_with(topic, v5::QoS::AtLeastOnce, false, payload, props)
            .await;
    }
    // rumqttc's state machine tracks the broker's aliases (an unknown one
    // would end its connection), but its events carry the packet as sent:
    // resolve them here the same way.
    let mut bound = std::collections::HashMap::new();
    for (topic, payload) in [("rq/a", b"1"), ("rq/a", b"2"), ("rq/b", b"3")] {
        let p = sub.next_publish().await;
        let alias = p.properties.as_ref().and_then(|props| props.topic_alias);
        let alias = alias.expect("the broker assigns aliases to rumqttc");
        if !p.topic.is_empty() {
            bound.insert(alias, p.topic.clone());
        }
        assert_eq!(bound.get(&alias).map(|t| &t[..]), Some(topic.as_bytes()));
        assert_eq!(&p.payload[..], payload);
    }
    sub.client
        .publish("rq/alive", v5::QoS::AtLeastOnce, false, "x")
        .await
        .expect("client still connected");
    assert_eq!(&sub.next_publish().await.payload[..], b"x");
}

#[tokio::test]
async fn incoming_receive_maximum_counts_qos2_awaiting_pubrel() {
    let broker = Broker::start(&["--max-inflight", "2"]);
    // QoS 1 is acknowledged as it is read: a burst never exceeds the limit.
    let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v5("rm-in-1")).await;
    let mut burst = Vec::new();
    for pkid in 1..=20 {
        burst.extend(Pub::new("rm/in", b"q1").qos(1, pkid).encode(wire::V5));
    }
    raw.send(&burst).await;
    for pkid in 1..=20 {
        assert_eq!(raw.recv_kind(wire::PUBACK).await.ack(), (pkid, 0));
    }

    let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v5("rm-in-2")).await;
    for pkid in 1..=2 {
        raw.send(&Pub::new("rm/in", b"q2").qos(2, pkid).encode(wire::V5))
            .await;
        assert_eq!(raw.recv_kind(wire::PUBREC).await.ack(), (pkid, 0));
    }
    raw.send(&Pub::new("rm/in", b"q2").qos(2, 3).encode(wire::V5))
        .await;
    let (reason, why) = expect_disconnect(&mut raw).await;
    assert_eq!(reason, 0x93);
    assert_eq!(
        why.as_deref(),
        Some("more than 2 QoS 2 messages awaiting PUBREL")
    );
}

#[tokio::test]
async fn client_answering_pubrecs_after_receive_maximum_burst_reads_0x93() {
    let broker = Broker::start(&["--max-inflight", "2"]);
    let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v5("rm-burst")).await;
    // Sent before reading anything, as a client does that writes its whole
    // backlog first: the third is past the limit.
    let mut burst = Vec::new();
    for pkid in 1..=3 {
        burst.extend(Pub::new("rm/burst", b"q2").qos(2, pkid).encode(wire::V5));
    }
    raw.send(&burst).await;
    // The client answers each packet as it reads it, slower than the
    // broker closes. Were the broker's socket gone (or shut for reading),
    // the first PUBREL would draw a reset, and the next write would fail
    // before the DISCONNECT was read.
    let mut reason = None;
    loop {
        let packet = match raw.try_recv(RECV_TIMEOUT).await {
            Ok(packet) => packet,
            Err(RecvError::Closed) => break,
            Err(error) => panic!("broker neither answered nor closed: {error:?}"),
        };
        match packet.kind() {
            wire::PUBREC => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let answered = raw
                    .send_lossy(&wire::ack(wire::PUBREL, packet.ack().0))
                    .await;
                assert!(answered, "connection reset before the DISCONNECT was read");
            }
            wire::DISCONNECT => reason = Some(packet.disconnect_reason()),
            _ => panic!("unexpected {packet:?}"),
        }
    }
    assert_eq!(reason, Some(0x93));
}

#[tokio::test]
async fn outgoing_receive_maximum_bounds_unacknowledged_messages() {
    let broker = Broker::start(&[]);
    let connect = Connect::v5("rm-out").props(Props::new().u16(wire::RECEIVE_MAXIMUM, 2));
    let (mut sub, _) = Raw::connect_ok(broker.addr, connect).await;
    sub.subscribe(1, &[("rm/out", 2)]).await;
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("rm-out-pub")).await;
    for (pkid, qos) in [(1, 1), (2, 2), (3, 1), (4, 2), (5, 1)] {
        publisher
            .publish(Pub::new("rm/out", &[pkid as u8]).qos(qos, pkid))
            .await;
    }
    let a = sub.recv_publish().await;
    let b = sub.recv_publish().await;
    assert_eq!((a.payload.clone(), b.payload.clone()), (vec![1], vec![2]));
    sub.expect_silence(QUIET).await;

    sub.send(&wire::ack(wire::PUBACK, a.pkid)).await;
    let c = sub.recv_publish().await;
    assert_eq!(c.payload, vec![3]);
    sub.expect_silence(QUIET).await;

    // A QoS 2 message holds its slot until PUBCOMP, not just PUBREC.
    sub.send(&wire::ack(wire::PUBREC, b.pkid)).await;
    assert_eq!(sub.recv_kind(wire::PUBREL).await.ack().0, b.pkid);
    sub.expect_silence(QUIET).await;
    sub.send(&wire::ack(wire::PUBCOMP, b.pkid)).await;
    assert_eq!(sub.recv_publish().await.payload, vec![4]);
}

#[tokio::test]
async fn message_larger_than_the_client_maximum_packet_size_is_skipped() {
    let broker = Broker::start(&[]);
    let connect = Connect::v5("mps").props(Props::new().u32(wire::MAX_PACKET_SIZE, 100));
    let (mut sub, _) = Raw::connect_ok(broker.addr, connect).await;
    sub.subscribe(1, &[("mps/#", 1)]).await;
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("mps-pub")).await;
    publisher
        .publish(Pub::new("mps/big", &[b'x'; 500]).qos(1, 1))
        .await;
    publisher
        .publish(Pub::new("mps/small", b"ok").qos(1, 2))
        .await;
    let p = sub.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("mps/small", &b"ok"[..])
    );
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn alias_announced_by_a_skipped_message_is_announced_again() {
    let broker = Broker::start(&[]);
    let connect = Connect::v5("mps-alias").props(
        Props::new()
            .u32(wire::MAX_PACKET_SIZE, 100)
            .u16(wire::TOPIC_ALIAS_MAXIMUM, 5),
    );
    let (mut sub, _) = Raw::connect_ok(broker.addr, connect).await;
    sub.subscribe(1, &[("mpsa/t", 0)]).await;
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("mps-alias-pub")).await;
    publisher
        .publish(Pub::new("mpsa/t", &[b'x'; 500]).qos(1, 1))
        .await;
    publisher.publish(Pub::new("mpsa/t", b"1").qos(1, 2)).await;
    publisher.publish(Pub::new("mpsa/t", b"2").qos(1, 3)).await;
    // The too-large message would have bound alias 1; the client never saw
    // it, so the next message binds it.
    let first = sub.recv_publish().await;
    assert_eq!(first.topic, "mpsa/t");
    assert_eq!(first.prop(wire::TOPIC_ALIAS), Some(&Prop::U16(1)));
    assert_eq!(first.payload, b"1");
    let second = sub.recv_publish().await;
    assert_eq!(second.topic, "");
    assert_eq!(second.prop(wire::TOPIC_ALIAS), Some(&Prop::U16(1)));
    assert_eq!(second.payload, b"2");
}

#[tokio::test]
async fn expired_message_is_not_delivered_to_a_returning_session() {
    let broker = Broker::start(&[]);
    let id = unique_id("exp-off");
    let (mut sub, _) = Raw::connect_ok(broker.addr, persistent(&id, Props::new())).await;
    sub.subscribe(1, &[("exp/off", 1)]).await;
    goodbye(sub).await;

    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("exp-off-pub")).await;
    publisher
        .publish(
            Pub::new("exp/off", b"short")
                .qos(1, 1)
                .props(Props::new().u32(wire::MESSAGE_EXPIRY, 1)),
        )
        .await;
    publisher
        .publish(Pub::new("exp/off", b"keep").qos(1, 2))
        .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let (mut sub, connack) = Raw::connect_ok(broker.addr, persistent(&id, Props::new())).await;
    assert!(connack.session_present);
    let p = sub.recv_publish().await;
    assert_eq!(p.payload, b"keep");
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn forwarded_expiry_interval_is_what_remains() {
    let broker = Broker::start(&[]);
    let id = unique_id("exp-left");
    let (mut sub, _) = Raw::connect_ok(broker.addr, persistent(&id, Props::new())).await;
    sub.subscribe(1, &[("exp/left", 1)]).await;
    goodbye(sub).await;
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("exp-left-pub")).await;
    publisher
        .publish(
            Pub::new("exp/left", b"x")
                .qos(1, 1)
                .props(Props::new().u32(wire::MESSAGE_EXPIRY, 10)),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (mut sub, _) = Raw::connect_ok(broker.addr, persistent(&id, Props::new())).await;
    let p = sub.recv_publish().await;
    match p.prop(wire::MESSAGE_EXPIRY) {
        Some(Prop::U32(left)) => assert!((1..=8).contains(left), "{left} s left of 10"),
        other => panic!("expiry interval not forwarded: {other:?}"),
    }
}

#[tokio::test]
async fn expired_retained_message_is_not_delivered() {
    let broker = Broker::start(&[]);
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("exp-ret-pub")).await;
    publisher
        .publish(
            Pub::new("expret/short", b"short")
                .qos(1, 1)
                .retain()
                .props(Props::new().u32(wire::MESSAGE_EXPIRY, 1)),
        )
        .await;
    publisher
        .publish(Pub::new("expret/long", b"long").qos(1, 2).retain())
        .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v5("exp-ret-sub")).await;
    sub.subscribe(1, &[("expret/#", 1)]).await;
    let p = sub.recv_publish().await;
    assert_eq!((p.topic.as_str(), p.retain), ("expret/long", true));
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn request_problem_information_zero_withholds_reason_strings() {
    let broker = Broker::start(&[]);
    let bad_filter = [("a/#/b", 0)];

    let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v5("rpi-1")).await;
    raw.send(&wire::subscribe(wire::V5, 1, &bad_filter, Props::new()))
        .await;
    let suback = raw.recv_kind(wire::SUBACK).await;
    assert_eq!(suback.suback(wire::V5).1, vec![0x8F]);
    assert_eq!(
        wire::find(&suback.suback_props(), wire::REASON_STRING),
        Some(&Prop::Str("\"a/#/b\": invalid topic filter".into()))
    );

    let connect =
        Connect::v5("rpi-0").props(Props::new().byte(wire::REQUEST_PROBLEM_INFORMATION, 0));
    let (mut raw, _) = Raw::connect_ok(broker.addr, connect).await;
    raw.send(&wire::subscribe(wire::V5, 1, &bad_filter, Props::new()))
        .await;
    let suback = raw.recv_kind(wire::SUBACK).await;
    assert_eq!(suback.suback(wire::V5).1, vec![0x8F]);
    assert_eq!(suback.suback_props(), vec![]);
    // DISCONNECT is exempt: it still says why.
    raw.send(&aliased("t", 11, b"x").encode(wire::V5)).await;
    let (reason, why) = expect_disconnect(&mut raw).await;
    assert_eq!(reason, 0x94);
    assert!(why.is_some());
}

#[tokio::test]
async fn unsupported_authentication_method_is_refused() {
    let broker = Broker::start(&[]);
    let connect = Connect::v5("auth")
        .props(Props::new().string(wire::AUTHENTICATION_METHOD, "SCRAM-SHA-256"));
    let (mut raw, connack) = Raw::connect(broker.addr, connect).await;
    assert_eq!(connack.code, 0x8C);
    assert!(!connack.session_present);
    assert_eq!(
        connack.prop(wire::REASON_STRING),
        Some(&Prop::Str(
            "authentication method \"SCRAM-SHA-256\" is not supported".into()
        ))
    );
    raw.expect_closed(RECV_TIMEOUT).await;
    // Refused without a trace: the same client id connects normally.
    let (_raw, connack) = Raw::connect_ok(broker.addr, Connect::v5("auth")).await;
    assert!(!connack.session_present);
}

#[tokio::test]
async fn refused_connect_does_not_take_over_the_connected_client() {
    let broker = Broker::start(&[]);
    let (mut first, _) = Raw::connect_ok(broker.addr, Connect::v5("auth-victim")).await;
    let refused = Connect::v5("auth-victim")
        .props(Props::new().string(wire::AUTHENTICATION_METHOD, "SCRAM-SHA-256"));
    let (mut second, connack) = Raw::connect(broker.addr, refused).await;
    assert_eq!(connack.code, 0x8C);
    second.expect_closed(RECV_TIMEOUT).await;

    // The client already connected was not told to go (no DISCONNECT 0x8E)
    // and still gets answers.
    first.send(&wire::pingreq()).await;
    assert_eq!(first.recv().await.kind(), wire::PINGRESP);
}
