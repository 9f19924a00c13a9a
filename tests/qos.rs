//! Quality of service: the QoS 1 and 2 flows, delivered QoS = min(published,
//! granted), exactly-once, and ordering per publisher per topic.

mod common;

use common::clients::{v4, v5};
use common::raw::Raw;
use common::wire::{self, Connect, Pub};
use common::{Broker, QUIET};

#[tokio::test]
async fn rumqttc_v4_round_trip_at_each_qos() {
    let broker = Broker::start(&[]);
    let mut sub = v4::Client::simple(broker.addr, "qos-sub-v4").await;
    sub.subscribe("qos/v4", v4::QoS::ExactlyOnce).await;
    let mut publisher = v4::Client::simple(broker.addr, "qos-pub-v4").await;
    for (qos, payload) in [
        (v4::QoS::AtMostOnce, &b"zero"[..]),
        (v4::QoS::AtLeastOnce, b"one"),
        (v4::QoS::ExactlyOnce, b"two"),
    ] {
        publisher.publish("qos/v4", qos, false, payload).await;
        let p = sub.next_publish().await;
        assert_eq!(&p.payload[..], payload);
        assert_eq!(p.qos, qos, "granted 2, so delivered QoS = published QoS");
    }
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn rumqttc_v5_round_trip_at_each_qos() {
    let broker = Broker::start(&[]);
    let mut sub = v5::Client::simple(broker.addr, "qos-sub-v5").await;
    sub.subscribe("qos/v5", v5::QoS::ExactlyOnce).await;
    let mut publisher = v5::Client::simple(broker.addr, "qos-pub-v5").await;
    for (qos, payload) in [
        (v5::QoS::AtMostOnce, &b"zero"[..]),
        (v5::QoS::AtLeastOnce, b"one"),
        (v5::QoS::ExactlyOnce, b"two"),
    ] {
        publisher.publish("qos/v5", qos, false, payload).await;
        let p = sub.next_publish().await;
        assert_eq!(&p.payload[..], payload);
        assert_eq!(p.qos, qos);
    }
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn delivered_qos_is_min_of_published_and_granted() {
    for version in [wire::V4, wire::V5] {
        let broker = Broker::start(&[]);
        let mut subs = Vec::new();
        for granted in 0..=2u8 {
            let id = format!("min-sub-{version}-{granted}");
            let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::new(version, &id)).await;
            assert_eq!(raw.subscribe(1, &[("min/t", granted)]).await, vec![granted]);
            subs.push(raw);
        }
        let (mut publisher, _) =
            Raw::connect_ok(broker.addr, Connect::new(version, "min-pub")).await;
        for published in 0..=2u8 {
            let payload = [b'p', b'0' + published];
            publisher
                .publish(Pub::new("min/t", &payload).qos(published, 10 + u16::from(published)))
                .await;
            for (granted, sub) in subs.iter_mut().enumerate() {
                let p = sub.recv_publish().await;
                assert_eq!(p.payload, payload);
                assert_eq!(
                    p.qos,
                    published.min(granted as u8),
                    "v{version}: published {published}, granted {granted}"
                );
                match p.qos {
                    1 => sub.send(&wire::ack(wire::PUBACK, p.pkid)).await,
                    2 => {
                        sub.send(&wire::ack(wire::PUBREC, p.pkid)).await;
                        let (pkid, _) = sub.recv_kind(wire::PUBREL).await.ack();
                        assert_eq!(pkid, p.pkid);
                        sub.send(&wire::ack(wire::PUBCOMP, p.pkid)).await;
                    }
                    _ => {}
                }
            }
        }
    }
}

#[tokio::test]
async fn qos1_publish_is_acked_with_its_packet_id() {
    let broker = Broker::start(&[]);
    let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v4("puback-id")).await;
    for pkid in [1u16, 0x1234, 0xFFFF] {
        raw.send(&Pub::new("ack/t", b"x").qos(1, pkid).encode(wire::V4))
            .await;
        let p = raw.recv_kind(wire::PUBACK).await;
        assert_eq!(p.first_byte, 0x40);
        assert_eq!(p.ack().0, pkid);
    }
}

#[tokio::test]
async fn qos2_publish_flow_and_exactly_once() {
    let broker = Broker::start(&[]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4("eo-sub")).await;
    assert_eq!(sub.subscribe(1, &[("eo/t", 0)]).await, vec![0]);
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("eo-pub")).await;

    let publish = Pub::new("eo/t", b"once").qos(2, 7);
    publisher.send(&publish.encode(wire::V4)).await;
    let p = publisher.recv_kind(wire::PUBREC).await;
    assert_eq!(p.first_byte, 0x50);
    assert_eq!(p.ack().0, 7);
    // The publisher did not see PUBREC (as far as the broker knows) and
    // retransmits with DUP: the broker must not deliver it twice.
    publisher
        .send(&publish.clone().dup().encode(wire::V4))
        .await;
    assert_eq!(publisher.recv_kind(wire::PUBREC).await.ack().0, 7);
    publisher.send(&wire::ack(wire::PUBREL, 7)).await;
    let p = publisher.recv_kind(wire::PUBCOMP).await;
    assert_eq!(p.first_byte, 0x70);
    assert_eq!(p.ack().0, 7);

    let got = sub.recv_publish().await;
    assert_eq!(got.payload, b"once");
    sub.expect_silence(QUIET).await;

    // After PUBCOMP the packet id is free again: a new message with id 7
    // is a new message.
    publisher
        .publish(Pub::new("eo/t", b"again").qos(2, 7))
        .await;
    assert_eq!(sub.recv_publish().await.payload, b"again");
}

#[tokio::test]
async fn qos2_delivery_to_subscriber_follows_the_four_step_flow() {
    let broker = Broker::start(&[]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v5("q2-sub")).await;
    assert_eq!(sub.subscribe(1, &[("q2/t", 2)]).await, vec![2]);
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("q2-pub")).await;
    publisher.publish(Pub::new("q2/t", b"m").qos(2, 1)).await;

    let p = sub.recv_publish().await;
    assert_eq!(p.qos, 2);
    assert!(!p.dup);
    assert_ne!(p.pkid, 0, "QoS 2 needs a non-zero packet id");
    sub.send(&wire::ack(wire::PUBREC, p.pkid)).await;
    let rel = sub.recv_kind(wire::PUBREL).await;
    assert_eq!(rel.first_byte, 0x62, "PUBREL fixed header flags are 0b0010");
    assert_eq!(rel.ack().0, p.pkid);
    sub.send(&wire::ack(wire::PUBCOMP, p.pkid)).await;
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn one_publisher_one_topic_is_delivered_in_order() {
    for qos in 0..=2u8 {
        let broker = Broker::start(&[]);
        let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4("order-sub")).await;
        assert_eq!(sub.subscribe(1, &[("order/t", 2)]).await, vec![2]);
        let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("order-pub")).await;
        const N: u16 = 500;
        for i in 0..N {
            let publish = Pub::new("order/t", format!("{i}").as_bytes()).qos(qos, i + 1);
            if qos < 2 {
                // Pipelined: acks are not awaited between messages.
                publisher.send(&publish.encode(wire::V4)).await;
            } else {
                publisher.publish(publish).await;
            }
        }
        let mut next = 0;
        while next < N {
            let p = sub.recv().await;
            match p.kind() {
                wire::PUBLISH => {
                    let p = p.publish(wire::V4);
                    assert_eq!(
                        String::from_utf8(p.payload.clone()).unwrap(),
                        format!("{next}"),
                        "QoS {qos}: out of order"
                    );
                    assert_eq!(p.qos, qos);
                    next += 1;
                    match p.qos {
                        1 => sub.send(&wire::ack(wire::PUBACK, p.pkid)).await,
                        2 => sub.send(&wire::ack(wire::PUBREC, p.pkid)).await,
                        _ => {}
                    }
                }
                wire::PUBREL => sub.send(&wire::ack(wire::PUBCOMP, p.ack().0)).await,
                _ => panic!("unexpected {p:?}"),
            }
        }
    }
}
