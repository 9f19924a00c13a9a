//! Thread-per-core routing: with --cores 2 and many distinct client ids,
//! publishers and subscribers land on different shards; every message must
//! still arrive, in order, exactly where it is subscribed.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Broker;
use common::raw::Raw;
use common::wire::{self, Connect, Pub};

const PAIRS: usize = 20;
const MESSAGES: u16 = 200;

/// Receives `count` QoS 1 messages and checks they are "0".."count" in order.
async fn expect_sequence(mut sub: Raw, label: String, count: u16) {
    for i in 0..count {
        let p = match sub.try_recv(Duration::from_secs(30)).await {
            Ok(p) => p.publish(wire::V4),
            Err(e) => panic!("{label}: message {i} never arrived ({e:?})"),
        };
        assert_eq!(
            String::from_utf8_lossy(&p.payload),
            format!("{i}"),
            "{label}: out of order or lost"
        );
        if p.qos == 1 {
            sub.send(&wire::ack(wire::PUBACK, p.pkid)).await;
        }
    }
}

async fn publish_sequence(addr: SocketAddr, id: String, topic: String, count: u16) {
    let (mut publisher, _) = Raw::connect_ok(addr, Connect::v4(&id)).await;
    // Pipelined: all messages go out before any PUBACK is read, so the
    // broker has many in flight between shards at once.
    let mut batch = Vec::new();
    for i in 0..count {
        batch.extend_from_slice(
            &Pub::new(&topic, format!("{i}").as_bytes())
                .qos(1, i + 1)
                .encode(wire::V4),
        );
    }
    publisher.send(&batch).await;
    for i in 0..count {
        let (pkid, _) = publisher.recv_kind(wire::PUBACK).await.ack();
        assert_eq!(pkid, i + 1, "{id}: PUBACKs in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_pairs_across_two_shards_deliver_everything_in_order() {
    let broker = Broker::start(&["--cores", "2"]);
    let mut subscribers = Vec::new();
    for i in 0..PAIRS {
        let (mut sub, _) =
            Raw::connect_ok(broker.addr, Connect::v4(&format!("shard-sub-{i}"))).await;
        assert_eq!(
            sub.subscribe(1, &[(&format!("shard/{i}"), 1)]).await,
            vec![1]
        );
        subscribers.push(tokio::spawn(expect_sequence(
            sub,
            format!("pair {i}"),
            MESSAGES,
        )));
    }
    let publishers: Vec<_> = (0..PAIRS)
        .map(|i| {
            tokio::spawn(publish_sequence(
                broker.addr,
                format!("shard-pub-{i}"),
                format!("shard/{i}"),
                MESSAGES,
            ))
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    for s in subscribers {
        s.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fan_out_reaches_subscribers_on_every_shard() {
    let broker = Broker::start(&["--cores", "2"]);
    let mut subscribers = Vec::new();
    for i in 0..PAIRS {
        let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4(&format!("fan-sub-{i}"))).await;
        // Mix exact and wildcard filters.
        let filter = if i % 2 == 0 { "fan/all" } else { "fan/+" };
        sub.subscribe(1, &[(filter, 1)]).await;
        subscribers.push(tokio::spawn(expect_sequence(
            sub,
            format!("fan sub {i}"),
            100,
        )));
    }
    publish_sequence(broker.addr, "fan-pub".into(), "fan/all".into(), 100).await;
    for s in subscribers {
        s.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retained_and_sessions_work_across_shards() {
    let broker = Broker::start(&["--cores", "2"]);
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("xs-pub")).await;
    for i in 0..PAIRS {
        publisher
            .publish(
                Pub::new(&format!("xs/{i}"), format!("r{i}").as_bytes())
                    .qos(1, 1)
                    .retain(),
            )
            .await;
    }
    for i in 0..PAIRS {
        let id = format!("xs-sub-{i}");
        let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4(&id).clean(false)).await;
        sub.subscribe(1, &[(&format!("xs/{i}"), 1)]).await;
        let p = sub.recv_publish().await;
        assert_eq!(p.payload, format!("r{i}").as_bytes(), "{id}");
        assert!(p.retain);
        sub.send(&wire::ack(wire::PUBACK, p.pkid)).await;
        sub.send(&wire::disconnect_v4()).await;
        sub.expect_closed(Duration::from_secs(5)).await;
    }
    for i in 0..PAIRS {
        publisher
            .publish(Pub::new(&format!("xs/{i}"), b"offline").qos(1, 2))
            .await;
    }
    for i in 0..PAIRS {
        let id = format!("xs-sub-{i}");
        let (mut sub, connack) = Raw::connect_ok(broker.addr, Connect::v4(&id).clean(false)).await;
        assert!(connack.session_present, "{id}");
        let p = sub.recv_publish().await;
        assert_eq!(p.payload, b"offline", "{id}");
    }
}
