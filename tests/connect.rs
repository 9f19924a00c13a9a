//! CONNECT / CONNACK: protocol versions, client identifiers, keep-alive.

mod common;

use common::raw::Raw;
use common::wire::{self, Connect, Prop, Props};
use common::{Broker, QUIET, RECV_TIMEOUT};
use std::time::Duration;

#[tokio::test]
async fn v4_connect_gets_exact_connack_bytes() {
    let broker = Broker::start(&[]);
    let mut raw = Raw::open(broker.addr, wire::V4).await;
    // CONNECT, protocol "MQTT" level 4, clean session, keep-alive 60, id "raw-v4".
    raw.send(&[
        0x10, 0x12, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x06, b'r',
        b'a', b'w', b'-', b'v', b'4',
    ])
    .await;
    let p = raw.recv().await;
    assert_eq!(p.first_byte, 0x20, "CONNACK fixed header");
    assert_eq!(p.body, vec![0x00, 0x00], "session present 0, return code 0");
}
