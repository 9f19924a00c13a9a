//! Packets do not arrive the way they were written: TCP splits and joins
//! them. The broker must reassemble a packet cut across reads and must
//! separate packets that share one.

mod common;

use std::time::Duration;

use common::Broker;
use common::raw::Raw;
use common::wire::{self, Connect, Pub};

#[tokio::test]
async fn a_publish_cut_across_many_reads_arrives_whole() {
    let broker = Broker::start(&[]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4("frag-sub")).await;
    sub.subscribe(1, &[("frag/t", 1)]).await;

    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("frag-pub")).await;
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let bytes = Pub::new("frag/t", &payload).qos(1, 7).encode(wire::V4);
    // Cut inside the fixed header, inside the topic and inside the payload,
    // pausing so that each piece is a read of its own on the broker.
    for piece in [
        &bytes[..1],
        &bytes[1..4],
        &bytes[4..9],
        &bytes[9..5000],
        &bytes[5000..],
    ] {
        publisher.send(piece).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(publisher.recv_kind(wire::PUBACK).await.kind(), wire::PUBACK);
    let received = sub.recv_publish().await;
    assert_eq!(received.topic, "frag/t");
    assert_eq!(received.payload, payload);
}

#[tokio::test]
async fn many_publishes_in_one_write_with_a_partial_tail_all_arrive_in_order() {
    let broker = Broker::start(&[]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4("batch-sub")).await;
    sub.subscribe(1, &[("batch/t", 0)]).await;

    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("batch-pub")).await;
    let mut bytes = Vec::new();
    for n in 0..2_000u32 {
        bytes.extend(Pub::new("batch/t", &n.to_be_bytes()).encode(wire::V4));
    }
    // Everything but the last three bytes, then the rest.
    let cut = bytes.len() - 3;
    publisher.send(&bytes[..cut]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    publisher.send(&bytes[cut..]).await;

    for n in 0..2_000u32 {
        let received = sub.recv_publish().await;
        assert_eq!(
            received.payload,
            n.to_be_bytes(),
            "message {n} out of order or corrupted"
        );
    }
}
