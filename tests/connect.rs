//! CONNECT / CONNACK: protocol versions, client identifiers, keep-alive.

mod common;

use common::raw::Raw;
use common::wire::{self, Connect, Prop};
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

#[tokio::test]
async fn v5_connect_is_accepted() {
    let broker = Broker::start(&[]);
    let (_raw, connack) = Raw::connect(broker.addr, Connect::v5("raw-v5")).await;
    assert_eq!(connack.code, 0, "{connack:?}");
    assert!(!connack.session_present);
    assert_eq!(
        connack.prop(wire::ASSIGNED_CLIENT_ID),
        None,
        "no assigned id when the client chose one"
    );
}

#[tokio::test]
async fn v5_empty_client_id_gets_assigned_identifier() {
    let broker = Broker::start(&[]);
    let (mut raw, connack) = Raw::connect(broker.addr, Connect::v5("")).await;
    assert_eq!(connack.code, 0, "{connack:?}");
    let Some(Prop::Str(id)) = connack.prop(wire::ASSIGNED_CLIENT_ID) else {
        panic!("CONNACK lacks Assigned Client Identifier: {connack:?}");
    };
    assert!(!id.is_empty());
    // The session works: round trip a message through it.
    assert_eq!(raw.subscribe(1, &[("assigned/t", 0)]).await, vec![0]);
    raw.publish(wire::Pub::new("assigned/t", b"hi")).await;
    let p = raw.recv_publish().await;
    assert_eq!(p.payload, b"hi");

    // Two empty-id clients get two different identifiers.
    let (_raw2, connack2) = Raw::connect(broker.addr, Connect::v5("")).await;
    let Some(Prop::Str(id2)) = connack2.prop(wire::ASSIGNED_CLIENT_ID) else {
        panic!("second CONNACK lacks Assigned Client Identifier: {connack2:?}");
    };
    assert_ne!(id, id2);
}

#[tokio::test]
async fn v4_empty_client_id_with_clean_session_is_accepted() {
    let broker = Broker::start(&[]);
    let (mut raw, connack) = Raw::connect(broker.addr, Connect::v4("").clean(true)).await;
    assert_eq!(connack.code, 0);
    assert!(!connack.session_present);
    raw.send(&wire::pingreq()).await;
    raw.recv_kind(wire::PINGRESP).await;
}

#[tokio::test]
async fn v4_empty_client_id_without_clean_session_is_rejected() {
    let broker = Broker::start(&[]);
    let (mut raw, connack) = Raw::connect(broker.addr, Connect::v4("").clean(false)).await;
    assert_eq!(connack.code, 0x02, "identifier rejected");
    assert!(!connack.session_present);
    raw.expect_closed(RECV_TIMEOUT).await;
}

#[tokio::test]
async fn first_packet_not_connect_closes_connection() {
    let broker = Broker::start(&[]);
    let mut raw = Raw::open(broker.addr, wire::V4).await;
    raw.send(&wire::pingreq()).await;
    let seen = raw.expect_closed(RECV_TIMEOUT).await;
    assert!(
        seen.iter().all(|p| p.kind() != wire::PINGRESP),
        "PINGREQ before CONNECT must not be answered: {seen:?}"
    );
}

#[tokio::test]
async fn keep_alive_expiry_closes_silent_client() {
    let broker = Broker::start(&[]);
    let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v4("ka-silent").keep_alive(2)).await;
    // Well inside 1.5 x 2 s the connection is still up...
    raw.expect_silence(Duration::from_millis(1500)).await;
    // ...and it is closed some time after 3 s without any packet.
    raw.expect_closed(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn keep_alive_expiry_sends_v5_disconnect_or_closes() {
    let broker = Broker::start(&[]);
    let (mut raw, _) =
        Raw::connect_ok(broker.addr, Connect::v5("ka-silent-v5").keep_alive(1)).await;
    let seen = raw.expect_closed(Duration::from_secs(10)).await;
    for p in &seen {
        // If the broker says why, the reason is Keep Alive timeout (0x8D).
        assert_eq!(p.kind(), wire::DISCONNECT, "unexpected {p:?}");
        assert_eq!(p.disconnect_reason(), 0x8D);
    }
}

#[tokio::test]
async fn pings_keep_the_connection_alive() {
    let broker = Broker::start(&[]);
    let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v4("ka-pinger").keep_alive(1)).await;
    // 4 s is well past 1.5 x keep-alive; each PINGREQ resets the timer.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        raw.send(&wire::pingreq()).await;
        raw.recv_kind(wire::PINGRESP).await;
    }
}

#[tokio::test]
async fn keep_alive_zero_disables_timeout() {
    let broker = Broker::start(&[]);
    let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v4("ka-zero").keep_alive(0)).await;
    raw.expect_silence(Duration::from_secs(3)).await;
    raw.send(&wire::pingreq()).await;
    raw.recv_kind(wire::PINGRESP).await;
}

#[tokio::test]
async fn v5_server_keep_alive_caps_client_request() {
    let broker = Broker::start(&["--max-keepalive", "10"]);
    let (_raw, connack) =
        Raw::connect_ok(broker.addr, Connect::v5("ska-high").keep_alive(100)).await;
    assert_eq!(
        connack.prop(wire::SERVER_KEEP_ALIVE),
        Some(&Prop::U16(10)),
        "{connack:?}"
    );
    // A request within the limit is not overridden (absent or the same).
    let (_raw, connack) = Raw::connect_ok(broker.addr, Connect::v5("ska-low").keep_alive(5)).await;
    match connack.prop(wire::SERVER_KEEP_ALIVE) {
        None | Some(Prop::U16(5)) => {}
        other => panic!("client asked 5 s within limit, got {other:?}"),
    }
}

#[tokio::test]
async fn v5_server_keep_alive_is_enforced() {
    let broker = Broker::start(&["--max-keepalive", "1"]);
    let (mut raw, connack) =
        Raw::connect_ok(broker.addr, Connect::v5("ska-enforced").keep_alive(600)).await;
    assert_eq!(connack.prop(wire::SERVER_KEEP_ALIVE), Some(&Prop::U16(1)));
    // The broker must time out on its own 1 s, not the 600 s asked for.
    raw.expect_closed(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn second_connect_is_a_protocol_violation() {
    let broker = Broker::start(&[]);
    let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v4("double-connect")).await;
    raw.send(&Connect::v4("double-connect").encode()).await;
    let seen = raw.expect_closed(RECV_TIMEOUT).await;
    assert!(
        seen.iter().all(|p| p.kind() != wire::CONNACK),
        "second CONNECT must not be acknowledged: {seen:?}"
    );
}

#[tokio::test]
async fn rumqttc_v4_and_v5_clients_talk_to_each_other() {
    use common::clients::{v4, v5};
    let broker = Broker::start(&[]);
    let mut sub4 = v4::Client::simple(broker.addr, "lib-sub-v4").await;
    sub4.subscribe("lib/mixed", v4::QoS::AtLeastOnce).await;
    let mut sub5 = v5::Client::simple(broker.addr, "lib-sub-v5").await;
    sub5.subscribe("lib/mixed", v5::QoS::AtLeastOnce).await;

    let mut pub5 = v5::Client::simple(broker.addr, "lib-pub-v5").await;
    pub5.publish("lib/mixed", v5::QoS::AtLeastOnce, false, b"from v5")
        .await;
    let mut pub4 = v4::Client::simple(broker.addr, "lib-pub-v4").await;
    pub4.publish("lib/mixed", v4::QoS::AtLeastOnce, false, b"from v4")
        .await;

    for expected in [&b"from v5"[..], b"from v4"] {
        let p = sub4.next_publish().await;
        assert_eq!(p.topic, "lib/mixed");
        assert_eq!(&p.payload[..], expected);
        let p = sub5.next_publish().await;
        assert_eq!(&p.topic[..], b"lib/mixed");
        assert_eq!(&p.payload[..], expected);
    }
    sub4.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn unsupported_protocol_level_is_refused() {
    let broker = Broker::start(&[]);
    let mut connect = Connect::v4("level-3");
    connect.version = 3; // MQIsdp-era level under the "MQTT" name
    let mut raw = Raw::open(broker.addr, wire::V4).await;
    raw.send(&connect.encode()).await;
    let seen = raw.expect_closed(RECV_TIMEOUT).await;
    // Either a CONNACK 0x01 (unacceptable protocol version) then close, or
    // a plain close.
    for p in &seen {
        assert_eq!(p.kind(), wire::CONNACK);
        assert_eq!(p.connack(wire::V4).code, 0x01, "{p:?}");
    }
}

#[tokio::test]
async fn connect_with_reserved_flag_bit_is_closed_without_connack() {
    let broker = Broker::start(&[]);
    let mut bytes = Connect::v4("reserved-bit").encode();
    // Fixed header (2) + protocol name (2 + 4) + level (1): the flags byte.
    assert_eq!(&bytes[4..8], b"MQTT");
    bytes[9] |= 0x01;
    let mut raw = Raw::open(broker.addr, wire::V4).await;
    raw.send(&bytes).await;
    let seen = raw.expect_closed(RECV_TIMEOUT).await;
    assert!(
        seen.is_empty(),
        "a malformed CONNECT gets no CONNACK: {seen:?}"
    );
}

#[tokio::test]
async fn connect_with_wrong_protocol_name_is_refused() {
    let broker = Broker::start(&[]);
    let mut bytes = Connect::v4("wrong-name").encode();
    bytes[4..8].copy_from_slice(b"MQTX");
    let mut raw = Raw::open(broker.addr, wire::V4).await;
    raw.send(&bytes).await;
    let seen = raw.expect_closed(RECV_TIMEOUT).await;
    assert!(
        seen.iter()
            .all(|p| p.kind() != wire::CONNACK || p.connack(wire::V4).code != 0),
        "a wrong protocol name must not be accepted: {seen:?}"
    );
}
