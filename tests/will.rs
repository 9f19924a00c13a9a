//! Will messages: published on abnormal disconnect only, with retain and
//! QoS, on keep-alive expiry, and (v5) after the will delay interval.

mod common;

use std::time::Duration;

use common::raw::Raw;
use common::wire::{self, Connect, Props, Will};
use common::{Broker, QUIET};

async fn will_watcher(broker: &Broker, id: &str, filter: &str, version: u8) -> Raw {
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::new(version, id)).await;
    assert_eq!(sub.subscribe(1, &[(filter, 1)]).await, vec![1]);
    sub
}

#[tokio::test]
async fn will_is_published_on_abnormal_disconnect() {
    for version in [wire::V4, wire::V5] {
        let broker = Broker::start(&[]);
        let mut watcher = will_watcher(&broker, "will-watch", "will/#", version).await;
        let (client, _) = Raw::connect_ok(
            broker.addr,
            Connect::new(version, "will-dies").will(Will::new("will/dies", b"gone").qos(1)),
        )
        .await;
        watcher.expect_silence(QUIET).await;
        client.drop_abruptly();
        let p = watcher.recv_publish().await;
        assert_eq!(p.topic, "will/dies", "v{version}");
        assert_eq!(p.payload, b"gone");
        assert_eq!(p.qos, 1);
        assert!(!p.retain);
    }
}

#[tokio::test]
async fn will_is_not_published_on_normal_disconnect() {
    for version in [wire::V4, wire::V5] {
        let broker = Broker::start(&[]);
        let mut watcher = will_watcher(&broker, "will-watch", "will/#", version).await;
        let (mut client, _) = Raw::connect_ok(
            broker.addr,
            Connect::new(version, "will-polite").will(Will::new("will/polite", b"no")),
        )
        .await;
        let disconnect = if version == wire::V5 {
            wire::disconnect_v5(0, Props::new())
        } else {
            wire::disconnect_v4()
        };
        client.send(&disconnect).await;
        client.expect_closed(Duration::from_secs(5)).await;
        watcher.expect_silence(Duration::from_secs(2)).await;
    }
}

#[tokio::test]
async fn retained_will_is_stored() {
    let broker = Broker::start(&[]);
    let (client, _) = Raw::connect_ok(
        broker.addr,
        Connect::v4("will-ret").will(Will::new("will/ret", b"last").retain()),
    )
    .await;
    client.drop_abruptly();
    // Give the broker time to publish the will before subscribing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut late = will_watcher(&broker, "will-late", "will/ret", wire::V4).await;
    let p = late.recv_publish().await;
    assert_eq!(p.payload, b"last");
    assert!(p.retain);
}

#[tokio::test]
async fn will_is_published_on_keep_alive_expiry() {
    let broker = Broker::start(&[]);
    let mut watcher = will_watcher(&broker, "will-watch", "will/#", wire::V4).await;
    // The client goes silent but keeps its socket open.
    let (_silent, _) = Raw::connect_ok(
        broker.addr,
        Connect::v4("will-silent")
            .keep_alive(1)
            .will(Will::new("will/silent", b"timeout")),
    )
    .await;
    let p = match watcher.try_recv(Duration::from_secs(10)).await {
        Ok(p) => p.publish(wire::V4),
        Err(e) => panic!("no will after keep-alive expiry: {e:?}"),
    };
    assert_eq!(p.topic, "will/silent");
    assert_eq!(p.payload, b"timeout");
}

#[tokio::test]
async fn will_is_published_on_protocol_violation() {
    let broker = Broker::start(&[]);
    let mut watcher = will_watcher(&broker, "will-watch", "will/#", wire::V4).await;
    let (mut client, _) = Raw::connect_ok(
        broker.addr,
        Connect::v4("will-bad").will(Will::new("will/bad", b"violation")),
    )
    .await;
    // PUBLISH to a topic with a wildcard is a protocol violation.
    client
        .send(&wire::Pub::new("will/+", b"x").encode(wire::V4))
        .await;
    client.expect_closed(Duration::from_secs(5)).await;
    let p = watcher.recv_publish().await;
    assert_eq!(p.payload, b"violation");
}

#[tokio::test]
async fn v5_will_delay_postpones_the_will() {
    let broker = Broker::start(&[]);
    let mut watcher = will_watcher(&broker, "wd-watch", "wd/#", wire::V5).await;
    let (client, _) = Raw::connect_ok(
        broker.addr,
        Connect::v5("wd-client")
            .props(Props::new().u32(wire::SESSION_EXPIRY, 60))
            .will(Will::new("wd/t", b"late").props(Props::new().u32(wire::WILL_DELAY, 3))),
    )
    .await;
    let dropped = std::time::Instant::now();
    client.drop_abruptly();
    // Not before the delay has (nearly) elapsed...
    watcher.expect_silence(Duration::from_millis(1500)).await;
    // ...but it does come.
    let p = match watcher.try_recv(Duration::from_secs(10)).await {
        Ok(p) => p.publish(wire::V5),
        Err(e) => panic!("delayed will never arrived: {e:?}"),
    };
    assert_eq!(p.payload, b"late");
    assert!(
        dropped.elapsed() >= Duration::from_millis(2500),
        "will came too early"
    );
}

#[tokio::test]
async fn v5_will_delay_is_cancelled_by_reconnect() {
    let broker = Broker::start(&[]);
    let mut watcher = will_watcher(&broker, "wdc-watch", "wdc/#", wire::V5).await;
    let connect = Connect::v5("wdc-client")
        .clean(false)
        .props(Props::new().u32(wire::SESSION_EXPIRY, 60))
        .will(Will::new("wdc/t", b"cancelled").props(Props::new().u32(wire::WILL_DELAY, 3)));
    let (client, _) = Raw::connect_ok(broker.addr, connect.clone()).await;
    client.drop_abruptly();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_back, connack) = Raw::connect_ok(broker.addr, connect).await;
    assert!(connack.session_present);
    watcher.expect_silence(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn v5_will_is_published_when_session_ends_before_will_delay() {
    let broker = Broker::start(&[]);
    let mut watcher = will_watcher(&broker, "wds-watch", "wds/#", wire::V5).await;
    // Session expiry 2 s < will delay 60 s: the will goes when the session
    // ends, not before and not at the delay.
    let (client, _) = Raw::connect_ok(
        broker.addr,
        Connect::v5("wds-client")
            .props(Props::new().u32(wire::SESSION_EXPIRY, 2))
            .will(
                Will::new("wds/t", b"session over").props(Props::new().u32(wire::WILL_DELAY, 60)),
            ),
    )
    .await;
    let dropped = std::time::Instant::now();
    client.drop_abruptly();
    watcher.expect_silence(Duration::from_millis(1000)).await;
    let p = match watcher.try_recv(Duration::from_secs(10)).await {
        Ok(p) => p.publish(wire::V5),
        Err(e) => panic!("will not published at session end: {e:?}"),
    };
    assert_eq!(p.payload, b"session over");
    assert!(
        dropped.elapsed() >= Duration::from_millis(1500),
        "will came before the session ended: {:?}",
        dropped.elapsed()
    );
}

#[tokio::test]
async fn v5_will_delay_gives_way_to_a_session_that_ends_with_the_connection() {
    let broker = Broker::start(&[]);
    let mut watcher = will_watcher(&broker, "wd0-watch", "wd0/#", wire::V5).await;
    // No Session Expiry Interval: the session ends as the connection does,
    // and the will with it (spec 3.1.3.2.2), long before the 5 s delay.
    let (client, _) = Raw::connect_ok(
        broker.addr,
        Connect::v5("wd0-client")
            .will(Will::new("wd0/t", b"now").props(Props::new().u32(wire::WILL_DELAY, 5))),
    )
    .await;
    let dropped = std::time::Instant::now();
    client.drop_abruptly();
    let p = match watcher.try_recv(Duration::from_secs(10)).await {
        Ok(p) => p.publish(wire::V5),
        Err(e) => panic!("will not published: {e:?}"),
    };
    assert_eq!(p.payload, b"now");
    assert!(
        dropped.elapsed() < Duration::from_secs(2),
        "will waited for its delay: {:?}",
        dropped.elapsed()
    );
}

#[tokio::test]
async fn rumqttc_v4_will() {
    use common::clients::v4;
    let broker = Broker::start(&[]);
    let mut watcher = v4::Client::simple(broker.addr, "will-lib-watch").await;
    watcher.subscribe("will/lib", v4::QoS::AtLeastOnce).await;
    let (mut raw, _) = Raw::connect_ok(
        broker.addr,
        Connect::v4("will-lib-raw").will(Will::new("will/lib", b"bye").qos(1)),
    )
    .await;
    raw.send(&wire::pingreq()).await;
    raw.recv_kind(wire::PINGRESP).await;
    raw.drop_abruptly();
    let p = watcher.next_publish().await;
    assert_eq!(&p.payload[..], b"bye");
}

#[tokio::test]
async fn v5_disconnect_with_will_message_publishes_the_will_with_its_properties() {
    let broker = Broker::start(&[]);
    let mut watcher = will_watcher(&broker, "will-watch-04", "will/#", wire::V5).await;
    let will = Will::new("will/asked", b"as requested").qos(1).props(
        Props::new()
            .string(wire::CONTENT_TYPE, "text/plain")
            .string(wire::RESPONSE_TOPIC, "will/replies")
            .binary(wire::CORRELATION_DATA, b"corr-1")
            .byte(wire::PAYLOAD_FORMAT, 1)
            .user("origin", "test")
            .user("origin", "again"),
    );
    let (mut client, _) = Raw::connect_ok(broker.addr, Connect::v5("will-04").will(will)).await;
    // 0x04: Disconnect with Will Message.
    client.send(&wire::disconnect_v5(0x04, Props::new())).await;
    client.expect_closed(Duration::from_secs(5)).await;

    let p = watcher.recv_publish().await;
    assert_eq!(p.topic, "will/asked");
    assert_eq!(p.payload, b"as requested");
    assert_eq!(
        p.prop(wire::CONTENT_TYPE),
        Some(&wire::Prop::Str("text/plain".into()))
    );
    assert_eq!(
        p.prop(wire::RESPONSE_TOPIC),
        Some(&wire::Prop::Str("will/replies".into()))
    );
    assert_eq!(
        p.prop(wire::CORRELATION_DATA),
        Some(&wire::Prop::Bin(b"corr-1".to_vec()))
    );
    assert_eq!(p.prop(wire::PAYLOAD_FORMAT), Some(&wire::Prop::Byte(1)));
    assert_eq!(
        p.user_props(),
        vec![
            ("origin".to_string(), "test".to_string()),
            ("origin".to_string(), "again".to_string())
        ]
    );
}
