//! MQTT 5 properties carried from publisher to subscriber unchanged, no
//! local, and subscription identifiers.

mod common;

use common::clients::v5;
use common::raw::Raw;
use common::wire::{self, Connect, Prop, Props, Pub};
use common::{Broker, QUIET};

#[tokio::test]
async fn publish_properties_pass_through_unchanged() {
    let broker = Broker::start(&[]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v5("props-sub")).await;
    sub.subscribe(1, &[("props/t", 1)]).await;
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("props-pub")).await;
    let props = Props::new()
        .byte(wire::PAYLOAD_FORMAT, 1)
        .string(wire::CONTENT_TYPE, "application/json")
        .string(wire::RESPONSE_TOPIC, "props/reply")
        .binary(wire::CORRELATION_DATA, &[0, 1, 2, 0xFF])
        .user("k1", "v1")
        .user("k1", "v1 again")
        .user("zeta", "")
        .user("alpha", "ünïcode");
    publisher
        .publish(Pub::new("props/t", br#"{"a":1}"#).qos(1, 1).props(props))
        .await;

    let p = sub.recv_publish().await;
    assert_eq!(p.payload, br#"{"a":1}"#);
    assert_eq!(p.prop(wire::PAYLOAD_FORMAT), Some(&Prop::Byte(1)));
    assert_eq!(
        p.prop(wire::CONTENT_TYPE),
        Some(&Prop::Str("application/json".into()))
    );
    assert_eq!(
        p.prop(wire::RESPONSE_TOPIC),
        Some(&Prop::Str("props/reply".into()))
    );
    assert_eq!(
        p.prop(wire::CORRELATION_DATA),
        Some(&Prop::Bin(vec![0, 1, 2, 0xFF]))
    );
    // User properties keep their order and duplicates.
    assert_eq!(
        p.user_props(),
        vec![
            ("k1".to_string(), "v1".to_string()),
            ("k1".to_string(), "v1 again".to_string()),
            ("zeta".to_string(), String::new()),
            ("alpha".to_string(), "ünïcode".to_string()),
        ]
    );
    assert_eq!(p.prop(wire::SUBSCRIPTION_ID), None, "none was requested");
}

#[tokio::test]
async fn retained_message_keeps_its_properties() {
    let broker = Broker::start(&[]);
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("rprops-pub")).await;
    publisher
        .publish(
            Pub::new("rprops/t", b"r").qos(1, 1).retain().props(
                Props::new()
                    .string(wire::CONTENT_TYPE, "text/plain")
                    .user("u", "1"),
            ),
        )
        .await;
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v5("rprops-sub")).await;
    sub.subscribe(1, &[("rprops/t", 0)]).await;
    let p = sub.recv_publish().await;
    assert!(p.retain);
    assert_eq!(
        p.prop(wire::CONTENT_TYPE),
        Some(&Prop::Str("text/plain".into()))
    );
    assert_eq!(p.user_props(), vec![("u".to_string(), "1".to_string())]);
}

#[tokio::test]
async fn properties_reach_v4_subscriber_as_plain_publish() {
    let broker = Broker::start(&[]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4("v4-sees-v5")).await;
    sub.subscribe(1, &[("mix/t", 0)]).await;
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("v5-pub")).await;
    publisher
        .publish(Pub::new("mix/t", b"body").props(Props::new().user("a", "b")))
        .await;
    // Decoded as 3.1.1: the payload must be exactly the body, no property
    // bytes leaked into it.
    let p = sub.recv_publish().await;
    assert_eq!(p.topic, "mix/t");
    assert_eq!(p.payload, b"body");
}

#[tokio::test]
async fn no_local_suppresses_own_messages() {
    let broker = Broker::start(&[]);
    let (mut me, _) = Raw::connect_ok(broker.addr, Connect::v5("nl-me")).await;
    me.subscribe(1, &[("nl/t", 1 | wire::NO_LOCAL)]).await;
    me.publish(Pub::new("nl/t", b"mine").qos(1, 5)).await;
    me.expect_silence(QUIET).await;

    let (mut other, _) = Raw::connect_ok(broker.addr, Connect::v5("nl-other")).await;
    other.publish(Pub::new("nl/t", b"theirs").qos(1, 1)).await;
    assert_eq!(me.recv_publish().await.payload, b"theirs");

    // Without no local a client does get its own messages.
    let (mut echo, _) = Raw::connect_ok(broker.addr, Connect::v5("nl-echo")).await;
    echo.subscribe(1, &[("nl/echo", 0)]).await;
    echo.publish(Pub::new("nl/echo", b"echo")).await;
    assert_eq!(echo.recv_publish().await.payload, b"echo");
}

#[tokio::test]
async fn subscription_identifier_is_attached_to_deliveries() {
    let broker = Broker::start(&[]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v5("sid-sub")).await;
    sub.subscribe_with(
        1,
        &[("sid/a/+", 1)],
        Props::new().varint(wire::SUBSCRIPTION_ID, 7),
    )
    .await;
    // A large identifier needs a multi-byte variable integer.
    sub.subscribe_with(
        2,
        &[("sid/b", 1)],
        Props::new().varint(wire::SUBSCRIPTION_ID, 268_435_455),
    )
    .await;
    sub.subscribe(3, &[("sid/c", 1)]).await;

    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("sid-pub")).await;
    publisher.publish(Pub::new("sid/a/x", b"a")).await;
    publisher.publish(Pub::new("sid/b", b"b")).await;
    publisher.publish(Pub::new("sid/c", b"c")).await;

    let a = sub.recv_publish().await;
    assert_eq!(a.payload, b"a");
    assert_eq!(a.prop(wire::SUBSCRIPTION_ID), Some(&Prop::Varint(7)));
    let b = sub.recv_publish().await;
    assert_eq!(
        b.prop(wire::SUBSCRIPTION_ID),
        Some(&Prop::Varint(268_435_455))
    );
    let c = sub.recv_publish().await;
    assert_eq!(c.prop(wire::SUBSCRIPTION_ID), None);
}

#[tokio::test]
async fn subscription_identifier_on_retained_delivery() {
    let broker = Broker::start(&[]);
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("sidr-pub")).await;
    publisher
        .publish(Pub::new("sidr/t", b"r").qos(1, 1).retain())
        .await;
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v5("sidr-sub")).await;
    sub.subscribe_with(
        1,
        &[("sidr/#", 0)],
        Props::new().varint(wire::SUBSCRIPTION_ID, 42),
    )
    .await;
    let p = sub.recv_publish().await;
    assert_eq!(p.prop(wire::SUBSCRIPTION_ID), Some(&Prop::Varint(42)));
}

#[tokio::test]
async fn rumqttc_v5_properties_round_trip() {
    let broker = Broker::start(&[]);
    let mut sub = v5::Client::simple(broker.addr, "lib-props-sub").await;
    sub.subscribe("lib/props", v5::QoS::AtLeastOnce).await;
    let mut publisher = v5::Client::simple(broker.addr, "lib-props-pub").await;
    let props = v5::PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain".into()),
        response_topic: Some("lib/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr-1")),
        user_properties: vec![("x".into(), "1".into()), ("y".into(), "2".into())],
        ..Default::default()
    };
    publisher
        .publish_with("lib/props", v5::QoS::AtLeastOnce, false, b"hello", props)
        .await;
    let p = sub.next_publish().await;
    let got = p.properties.expect("properties missing");
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.response_topic.as_deref(), Some("lib/reply"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"corr-1"[..]));
    assert_eq!(
        got.user_properties,
        vec![
            ("x".to_string(), "1".to_string()),
            ("y".to_string(), "2".to_string())
        ]
    );
}

#[tokio::test]
async fn rumqttc_v5_no_local() {
    let broker = Broker::start(&[]);
    let mut me = v5::Client::simple(broker.addr, "lib-nl").await;
    let mut filter = v5::Filter::new("lib/nl", v5::QoS::AtLeastOnce);
    filter.nolocal = true;
    me.subscribe_filter(filter, None).await;
    me.publish("lib/nl", v5::QoS::AtLeastOnce, false, b"self")
        .await;
    me.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn rumqttc_v5_subscription_identifier() {
    let broker = Broker::start(&[]);
    let mut sub = v5::Client::simple(broker.addr, "lib-sid").await;
    let props = v5::SubscribeProperties {
        id: Some(99),
        user_properties: vec![],
    };
    sub.subscribe_filter(v5::Filter::new("lib/sid", v5::QoS::AtMostOnce), Some(props))
        .await;
    let mut publisher = v5::Client::simple(broker.addr, "lib-sid-pub").await;
    publisher
        .publish("lib/sid", v5::QoS::AtMostOnce, false, b"x")
        .await;
    let p = sub.next_publish().await;
    let ids = p
        .properties
        .map(|p| p.subscription_identifiers)
        .unwrap_or_default();
    assert_eq!(ids, vec![99]);
}
