//! Persistent sessions: clean session / clean start, v5 session expiry
//! (including a change at DISCONNECT), offline queueing, redelivery with DUP,
//! and session takeover.

mod common;

use std::time::Duration;

use common::clients::{v4, v5};
use common::raw::Raw;
use common::wire::{self, Connect, Props, Pub};
use common::{Broker, QUIET, RECV_TIMEOUT};

fn persistent(version: u8, id: &str) -> Connect {
    let c = Connect::new(version, id).clean(false);
    if version == wire::V5 {
        c.props(Props::new().u32(wire::SESSION_EXPIRY, 300))
    } else {
        c
    }
}

async fn leave(raw: &mut Raw) {
    if raw.version == wire::V5 {
        raw.send(&wire::disconnect_v5(0, Props::new())).await;
    } else {
        raw.send(&wire::disconnect_v4()).await;
    }
    raw.expect_closed(RECV_TIMEOUT).await;
}

#[tokio::test]
async fn persistent_session_keeps_subscriptions_and_queues_offline_messages() {
    for version in [wire::V4, wire::V5] {
        let broker = Broker::start(&[]);
        let (mut sub, connack) = Raw::connect_ok(broker.addr, persistent(version, "ps-sub")).await;
        assert!(!connack.session_present, "v{version}: no session yet");
        assert_eq!(sub.subscribe(1, &[("ps/t", 1)]).await, vec![1]);
        leave(&mut sub).await;

        let (mut publisher, _) =
            Raw::connect_ok(broker.addr, Connect::new(version, "ps-pub")).await;
        for i in 0..5u16 {
            publisher
                .publish(Pub::new("ps/t", format!("offline {i}").as_bytes()).qos(1, i + 1))
                .await;
        }

        let (mut sub, connack) = Raw::connect_ok(broker.addr, persistent(version, "ps-sub")).await;
        assert!(
            connack.session_present,
            "v{version}: session must be resumed"
        );
        for i in 0..5 {
            let p = sub.recv_publish().await;
            assert_eq!(p.payload, format!("offline {i}").as_bytes(), "v{version}");
            assert_eq!(p.qos, 1);
            sub.send(&wire::ack(wire::PUBACK, p.pkid)).await;
        }
        // The subscription itself survived: live messages keep flowing.
        publisher.publish(Pub::new("ps/t", b"live").qos(1, 9)).await;
        assert_eq!(sub.recv_publish().await.payload, b"live");
    }
}

#[tokio::test]
async fn clean_session_discards_previous_session() {
    for version in [wire::V4, wire::V5] {
        let broker = Broker::start(&[]);
        let (mut sub, _) = Raw::connect_ok(broker.addr, persistent(version, "cs-sub")).await;
        sub.subscribe(1, &[("cs/t", 1)]).await;
        leave(&mut sub).await;
        let (mut publisher, _) =
            Raw::connect_ok(broker.addr, Connect::new(version, "cs-pub")).await;
        publisher.publish(Pub::new("cs/t", b"lost").qos(1, 1)).await;

        let (mut sub, connack) =
            Raw::connect_ok(broker.addr, Connect::new(version, "cs-sub").clean(true)).await;
        assert!(!connack.session_present, "v{version}");
        sub.expect_silence(QUIET).await;
        // And the old subscription is gone.
        publisher
            .publish(Pub::new("cs/t", b"after").qos(1, 2))
            .await;
        sub.expect_silence(QUIET).await;
    }
}

#[tokio::test]
async fn v4_clean_session_is_not_persisted() {
    let broker = Broker::start(&[]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4("cs1-sub").clean(true)).await;
    sub.subscribe(1, &[("cs1/t", 1)]).await;
    leave(&mut sub).await;
    let (_sub, connack) = Raw::connect_ok(broker.addr, Connect::v4("cs1-sub").clean(false)).await;
    assert!(!connack.session_present);
}

#[tokio::test]
async fn v5_session_expiry_zero_ends_session_at_disconnect() {
    let broker = Broker::start(&[]);
    // Clean start 0 but no Session Expiry Interval: the session ends with the
    // connection.
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v5("se0-sub").clean(false)).await;
    sub.subscribe(1, &[("se0/t", 1)]).await;
    leave(&mut sub).await;
    let (_sub, connack) = Raw::connect_ok(broker.addr, Connect::v5("se0-sub").clean(false)).await;
    assert!(!connack.session_present);
}

#[tokio::test]
async fn v5_session_expires_after_interval() {
    let broker = Broker::start(&[]);
    let connect = Connect::v5("se-short")
        .clean(false)
        .props(Props::new().u32(wire::SESSION_EXPIRY, 1));
    let (mut sub, _) = Raw::connect_ok(broker.addr, connect.clone()).await;
    sub.subscribe(1, &[("se/t", 1)]).await;
    leave(&mut sub).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_sub, connack) = Raw::connect_ok(broker.addr, connect).await;
    assert!(
        !connack.session_present,
        "session should have expired after 1 s"
    );
}

#[tokio::test]
async fn v5_session_survives_within_interval() {
    let broker = Broker::start(&[]);
    let connect = Connect::v5("se-long")
        .clean(false)
        .props(Props::new().u32(wire::SESSION_EXPIRY, 60));
    let (mut sub, _) = Raw::connect_ok(broker.addr, connect.clone()).await;
    sub.subscribe(1, &[("se/l", 1)]).await;
    leave(&mut sub).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_sub, connack) = Raw::connect_ok(broker.addr, connect).await;
    assert!(connack.session_present);
}

#[tokio::test]
async fn v5_session_expiry_changed_at_disconnect() {
    let broker = Broker::start(&[]);
    let connect = Connect::v5("se-change")
        .clean(false)
        .props(Props::new().u32(wire::SESSION_EXPIRY, 300));
    let (mut sub, _) = Raw::connect_ok(broker.addr, connect.clone()).await;
    sub.subscribe(1, &[("sec/t", 1)]).await;
    // DISCONNECT sets the interval to 0: the session must end now.
    sub.send(&wire::disconnect_v5(
        0,
        Props::new().u32(wire::SESSION_EXPIRY, 0),
    ))
    .await;
    sub.expect_closed(RECV_TIMEOUT).await;
    let (mut sub, connack) = Raw::connect_ok(broker.addr, connect.clone()).await;
    assert!(
        !connack.session_present,
        "DISCONNECT expiry 0 ends the session"
    );

    // And the other way round: 300 s at CONNECT, 1 s at DISCONNECT.
    sub.subscribe(1, &[("sec/t", 1)]).await;
    sub.send(&wire::disconnect_v5(
        0,
        Props::new().u32(wire::SESSION_EXPIRY, 1),
    ))
    .await;
    sub.expect_closed(RECV_TIMEOUT).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_sub, connack) = Raw::connect_ok(broker.addr, connect).await;
    assert!(!connack.session_present, "DISCONNECT expiry 1 s has passed");
}

#[tokio::test]
async fn unacked_qos1_is_redelivered_with_dup_on_reconnect() {
    for version in [wire::V4, wire::V5] {
        let broker = Broker::start(&[]);
        let (mut sub, _) = Raw::connect_ok(broker.addr, persistent(version, "dup1-sub")).await;
        sub.subscribe(1, &[("dup/t", 1)]).await;
        let (mut publisher, _) =
            Raw::connect_ok(broker.addr, Connect::new(version, "dup1-pub")).await;
        publisher
            .publish(Pub::new("dup/t", b"unacked").qos(1, 1))
            .await;
        let first = sub.recv_publish().await;
        assert!(!first.dup);
        // Drop without PUBACK.
        sub.drop_abruptly();

        let (mut sub, connack) =
            Raw::connect_ok(broker.addr, persistent(version, "dup1-sub")).await;
        assert!(connack.session_present);
        let again = sub.recv_publish().await;
        assert_eq!(again.payload, b"unacked", "v{version}");
        assert!(again.dup, "v{version}: redelivery must set DUP");
        assert_eq!(again.pkid, first.pkid, "same packet id on redelivery");
        sub.send(&wire::ack(wire::PUBACK, again.pkid)).await;
        sub.expect_silence(QUIET).await;
    }
}

#[tokio::test]
async fn unacked_qos2_is_redelivered_and_pubrel_resent() {
    let broker = Broker::start(&[]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, persistent(wire::V4, "dup2-sub")).await;
    sub.subscribe(1, &[("dup2/a", 2), ("dup2/b", 2)]).await;
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("dup2-pub")).await;
    publisher
        .publish(Pub::new("dup2/a", b"no pubrec").qos(2, 1))
        .await;
    let a = sub.recv_publish().await;
    assert_eq!(a.payload, b"no pubrec");
    sub.drop_abruptly();

    // Not acknowledged at all: the PUBLISH comes again with DUP.
    let (mut sub, connack) = Raw::connect_ok(broker.addr, persistent(wire::V4, "dup2-sub")).await;
    assert!(connack.session_present);
    let again = sub.recv_publish().await;
    assert_eq!(again.payload, b"no pubrec");
    assert!(again.dup);
    assert_eq!(again.qos, 2);
    // Acknowledge with PUBREC, then vanish before PUBCOMP.
    sub.send(&wire::ack(wire::PUBREC, again.pkid)).await;
    let rel = sub.recv_kind(wire::PUBREL).await;
    assert_eq!(rel.ack().0, again.pkid);
    sub.drop_abruptly();

    // After PUBREC the broker resends PUBREL, not the PUBLISH.
    let (mut sub, _) = Raw::connect_ok(broker.addr, persistent(wire::V4, "dup2-sub")).await;
    let rel = sub.recv_kind(wire::PUBREL).await;
    assert_eq!(rel.ack().0, again.pkid);
    sub.send(&wire::ack(wire::PUBCOMP, again.pkid)).await;
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn v5_takeover_disconnects_old_connection_with_0x8e() {
    let broker = Broker::start(&[]);
    let (mut old, _) = Raw::connect_ok(broker.addr, persistent(wire::V5, "take-v5")).await;
    old.subscribe(1, &[("take/t", 1)]).await;
    let (mut new, connack) = Raw::connect_ok(broker.addr, persistent(wire::V5, "take-v5")).await;
    assert!(connack.session_present, "takeover resumes the session");
    let seen = old.expect_closed(RECV_TIMEOUT).await;
    assert_eq!(
        seen.len(),
        1,
        "old connection gets exactly a DISCONNECT: {seen:?}"
    );
    assert_eq!(seen[0].disconnect_reason(), 0x8E, "Session taken over");

    // The new connection owns the subscription.
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("take-pub")).await;
    publisher
        .publish(Pub::new("take/t", b"to new").qos(1, 1))
        .await;
    assert_eq!(new.recv_publish().await.payload, b"to new");
}

#[tokio::test]
async fn v4_takeover_closes_old_connection() {
    let broker = Broker::start(&[]);
    let (mut old, _) = Raw::connect_ok(broker.addr, Connect::v4("take-v4")).await;
    let (mut new, _) = Raw::connect_ok(broker.addr, Connect::v4("take-v4")).await;
    let seen = old.expect_closed(RECV_TIMEOUT).await;
    assert!(seen.is_empty(), "3.1.1 has no server DISCONNECT: {seen:?}");
    new.send(&wire::pingreq()).await;
    new.recv_kind(wire::PINGRESP).await;
}

#[tokio::test]
async fn rumqttc_v4_persistent_session() {
    let broker = Broker::start(&[]);
    let mut opts = v4::options(broker.addr, "lib-ps-sub");
    opts.set_clean_session(false);
    let (mut sub, present) = v4::Client::connect(opts.clone()).await;
    assert!(!present);
    sub.subscribe("lib/ps", v4::QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publisher = v4::Client::simple(broker.addr, "lib-ps-pub").await;
    publisher
        .publish("lib/ps", v4::QoS::AtLeastOnce, false, b"while away")
        .await;

    let (mut sub, present) = v4::Client::connect(opts).await;
    assert!(present);
    assert_eq!(&sub.next_publish().await.payload[..], b"while away");
}

#[tokio::test]
async fn rumqttc_v5_session_expiry() {
    let broker = Broker::start(&[]);
    let mut opts = v5::options(broker.addr, "lib-se-sub");
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(120));
    let (mut sub, connack) = v5::Client::connect(opts.clone()).await;
    assert!(!connack.session_present);
    sub.subscribe("lib/se", v5::QoS::ExactlyOnce).await;
    sub.disconnect().await;

    let mut publisher = v5::Client::simple(broker.addr, "lib-se-pub").await;
    publisher
        .publish("lib/se", v5::QoS::ExactlyOnce, false, b"kept for you")
        .await;

    let (mut sub, connack) = v5::Client::connect(opts).await;
    assert!(connack.session_present);
    let p = sub.next_publish().await;
    assert_eq!(&p.payload[..], b"kept for you");
    assert_eq!(p.qos, v5::QoS::ExactlyOnce);
}
