//! Self-tests of the test harness, so that a failing black-box test points
//! at the broker and not at our own encoder, decoder or log parser. These
//! do not start the broker.

mod common;

use common::wire::{self, Connect, Props, Pub, Will};
use common::{parse_listening, strip_ansi};
use proptest::prelude::*;

#[test]
fn parses_listening_line() {
    let line = "2026-01-01T00:00:00.000Z  INFO ringmq::shard: listening addr=127.0.0.1:41234";
    assert_eq!(
        parse_listening(line),
        Some("127.0.0.1:41234".parse().unwrap())
    );
    let quoted = "INFO listening addr=\"127.0.0.1:5\" shard=0";
    assert_eq!(
        parse_listening(quoted),
        Some("127.0.0.1:5".parse().unwrap())
    );
    let coloured =
        "\u{1b}[32m INFO\u{1b}[0m listening \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:9";
    assert_eq!(
        parse_listening(&strip_ansi(coloured)),
        Some("127.0.0.1:9".parse().unwrap())
    );
    assert_eq!(parse_listening("INFO starting cores=2"), None);
}

#[test]
fn connect_v4_matches_the_spec_example_bytes() {
    // MQTT 3.1.1 section 3.1: protocol name, level 4, flags, keep-alive.
    let bytes = Connect::v4("id").keep_alive(10).encode();
    assert_eq!(
        bytes,
        [
            0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, 2, b'i', b'd'
        ]
    );
}

#[test]
fn connect_v5_with_will_and_properties_layout() {
    let bytes = Connect::v5("c")
        .clean(false)
        .props(Props::new().u32(wire::SESSION_EXPIRY, 1))
        .will(
            Will::new("w", b"p")
                .qos(1)
                .retain()
                .props(Props::new().u32(wire::WILL_DELAY, 2)),
        )
        .encode();
    let body = &bytes[2..];
    assert_eq!(&body[..7], b"\0\x04MQTT\x05");
    assert_eq!(
        body[7],
        0x04 | (1 << 3) | 0x20,
        "will, will QoS 1, will retain"
    );
    assert_eq!(&body[10..16], [5, 0x11, 0, 0, 0, 1], "connect properties");
    assert_eq!(&body[16..19], [0, 1, b'c']);
    assert_eq!(&body[19..25], [5, 0x18, 0, 0, 0, 2], "will properties");
    assert_eq!(&body[25..], [0, 1, b'w', 0, 1, b'p']);
}

proptest! {
    #[test]
    fn publish_round_trips_through_our_decoder(
        topic in "[a-z/]{1,40}",
        payload in prop::collection::vec(any::<u8>(), 0..70_000),
        qos in 0u8..3,
        pkid in 1u16..,
        retain in any::<bool>(),
        dup in any::<bool>(),
        v5 in any::<bool>(),
        user in prop::collection::vec(("[a-z]{0,5}", "[a-z]{0,5}"), 0..3),
    ) {
        let version = if v5 { wire::V5 } else { wire::V4 };
        let mut p = Pub::new(&topic, &payload).qos(qos, pkid);
        if retain { p = p.retain(); }
        if dup { p = p.dup(); }
        let mut props = Props::new();
        for (k, v) in &user { props = props.user(k, v); }
        p = p.props(props);
        let mut buf = p.encode(version);
        buf.extend_from_slice(&wire::pingreq());
        let decoded = wire::take_packet(&mut buf).unwrap().publish(version);
        prop_assert_eq!(&decoded.topic, &topic);
        prop_assert_eq!(&decoded.payload, &payload);
        prop_assert_eq!(decoded.qos, qos);
        prop_assert_eq!(decoded.pkid, if qos > 0 { pkid } else { 0 });
        prop_assert_eq!(decoded.retain, retain);
        prop_assert_eq!(decoded.dup, dup);
        if v5 {
            prop_assert_eq!(decoded.user_props(), user.clone());
        }
        // The next packet is intact after a multi-byte remaining length.
        prop_assert_eq!(wire::take_packet(&mut buf).unwrap().kind(), 12);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn incomplete_packets_are_not_taken(len in 0usize..300, cut in 0usize..300) {
        let full = wire::frame(0x30, &vec![7u8; len]);
        let cut = cut.min(full.len().saturating_sub(1));
        let mut partial = full[..cut].to_vec();
        prop_assert_eq!(wire::take_packet(&mut partial), None);
        prop_assert_eq!(partial.len(), cut, "nothing consumed");
    }
}
