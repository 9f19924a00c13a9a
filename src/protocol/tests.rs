//! Codec-wide tests: the helpers the per-packet tests share, and the
//! property tests over every packet type and over arbitrary bytes.

use bytes::BytesMut;
use proptest::prelude::*;

use super::strategies::{self, version};
use super::*;

/// Writes `packet`, reads it back and checks both agree on the packet and on
/// its length. Returns the encoding for tests that also check the bytes.
pub(crate) fn roundtrip(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let written = packet.write(version, &mut buf).expect("packet encodes");
    assert_eq!(written, buf.len());
    let encoded = buf.to_vec();
    let header = check(&buf, written)
        .expect("header decodes")
        .expect("header complete");
    assert_eq!(header.frame_len(), written);
    // The maximum is exactly the packet's size: the limit is inclusive.
    let decoded = read(&mut buf, version, written)
        .expect("packet decodes")
        .expect("packet complete");
    assert_eq!(&decoded, packet);
    assert!(buf.is_empty(), "read consumed exactly one packet");
    encoded
}

/// Reads one complete packet from `bytes` with no size limit.
pub(crate) fn decode(bytes: &[u8], version: ProtocolVersion) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = read(&mut buf, version, usize::MAX)?.expect("complete packet");
    assert!(buf.is_empty());
    Ok(packet)
}

pub(crate) fn encode(packet: &Packet, version: ProtocolVersion) -> Result<Vec<u8>, EncodeError> {
    let mut buf = BytesMut::new();
    packet.write(version, &mut buf)?;
    Ok(buf.to_vec())
}

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

#[test]
fn pings_round_trip_at_every_version() {
    for version in VERSIONS {
        assert_eq!(roundtrip(&Packet::PingReq, version), [0xC0, 0x00]);
        assert_eq!(roundtrip(&Packet::PingResp, version), [0xD0, 0x00]);
    }
    assert_eq!(
        decode(&[0xC0, 0x01, 0x00], ProtocolVersion::V5),
        Err(DecodeError::TrailingBytes(1))
    );
}

#[test]
fn packets_are_read_one_at_a_time_from_a_shared_buffer() {
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "a".into(),
        packet_id: 7,
        properties: PublishProperties::default(),
        payload: bytes::Bytes::from_static(b"x"),
    });
    let mut buf = BytesMut::new();
    publish.write(ProtocolVersion::V5, &mut buf).unwrap();
    Packet::PingReq
        .write(ProtocolVersion::V5, &mut buf)
        .unwrap();
    buf.extend_from_slice(&[0x30]); // the start of a third packet
    let v5 = ProtocolVersion::V5;
    assert_eq!(read(&mut buf, v5, 1024), Ok(Some(publish)));
    assert_eq!(read(&mut buf, v5, 1024), Ok(Some(Packet::PingReq)));
    assert_eq!(read(&mut buf, v5, 1024), Ok(None));
    assert_eq!(&buf[..], [0x30]);
}

#[test]
fn reason_codes_follow_the_spec_wording() {
    use DecodeError as E;
    let cases = [
        (
            E::PacketTooLarge { size: 9, max: 8 },
            ReasonCode::PacketTooLarge,
        ),
        (
            E::UnsupportedProtocolLevel(6),
            ReasonCode::UnsupportedProtocolVersion,
        ),
        (
            E::InvalidProtocolName,
            ReasonCode::UnsupportedProtocolVersion,
        ),
        (E::UnexpectedProperty(0x26), ReasonCode::ProtocolError),
        (E::InvalidPropertyValue(0x21), ReasonCode::ProtocolError),
        (E::ZeroPacketId, ReasonCode::ProtocolError),
        (E::EmptySubscription, ReasonCode::ProtocolError),
        (
            E::InvalidSubscriptionOptions(0x30),
            ReasonCode::ProtocolError,
        ),
        (
            E::InvalidSubscriptionOptions(0x40),
            ReasonCode::MalformedPacket,
        ),
        (E::MalformedRemainingLength, ReasonCode::MalformedPacket),
        (E::ReservedPacketType, ReasonCode::MalformedPacket),
        (E::ConnectReservedFlag, ReasonCode::MalformedPacket),
        (E::InvalidQoS(3), ReasonCode::MalformedPacket),
        (E::Truncated, ReasonCode::MalformedPacket),
        (E::TrailingBytes(1), ReasonCode::MalformedPacket),
        (E::InvalidUtf8, ReasonCode::MalformedPacket),
        (E::NullCharacter, ReasonCode::MalformedPacket),
        (E::InvalidPropertyId(0), ReasonCode::MalformedPacket),
        (E::InvalidReasonCode(3), ReasonCode::MalformedPacket),
        (E::Malformed("x"), ReasonCode::MalformedPacket),
        (
            E::InvalidHeaderFlags {
                packet_type: PacketType::PubRel,
                flags: 0,
            },
            ReasonCode::MalformedPacket,
        ),
    ];
    for (error, reason) in cases {
        assert_eq!(error.reason_code(), reason, "{error}");
    }
}

fn version_and_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|version| (Just(version), strategies::packet(version)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_packet_round_trips((version, packet) in version_and_packet()) {
        roundtrip(&packet, version);
    }

    #[test]
    fn a_prefix_of_a_packet_is_incomplete(
        (version, packet) in version_and_packet(),
        cut in any::<prop::sample::Index>(),
    ) {
        let encoded = encode(&packet, version).unwrap();
        let prefix = &encoded[..cut.index(encoded.len())];
        let mut buf = BytesMut::from(prefix);
        prop_assert_eq!(read(&mut buf, version, usize::MAX), Ok(None));
        prop_assert_eq!(&buf[..], prefix, "an incomplete read leaves the buffer alone");
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..128),
        version in version(),
        max in 0..256usize,
    ) {
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = read(&mut buf, version, max);
    }

    /// Random bytes rarely get past the fixed header; corrupting one byte of
    /// a valid packet reaches deep into every packet reader.
    #[test]
    fn corrupted_packets_never_panic(
        (version, packet) in version_and_packet(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        read_as in version(),
    ) {
        let mut encoded = encode(&packet, version).unwrap();
        let i = at.index(encoded.len());
        encoded[i] = byte;
        let mut buf = BytesMut::from(&encoded[..]);
        let _ = read(&mut buf, read_as, usize::MAX);
    }

    #[test]
    fn five_byte_remaining_lengths_are_rejected(
        first in 0x30u8..=0x3F,
        continued in prop::collection::vec(0x80u8..=0xFF, 4),
        rest in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut bytes = vec![first & 0xF9]; // any PUBLISH flags but QoS 3
        bytes.extend(continued);
        bytes.extend(rest);
        prop_assert_eq!(check(&bytes, usize::MAX), Err(DecodeError::MalformedRemainingLength));
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert_eq!(
            read(&mut buf, ProtocolVersion::V5, usize::MAX),
            Err(DecodeError::MalformedRemainingLength)
        );
    }

    #[test]
    fn oversized_packets_are_rejected_from_the_header_alone(
        remaining in 0..=wire::MAX_VARINT,
        max in 0..=wire::MAX_VARINT,
    ) {
        let mut header = BytesMut::from(&[0x30][..]);
        wire::put_varint(&mut header, remaining);
        let size = header.len() + remaining;
        let expected = if size > max {
            Err(DecodeError::PacketTooLarge { size, max })
        } else {
            Ok(Some(FixedHeader {
                packet_type: PacketType::Publish,
                flags: 0,
                header_len: header.len(),
                remaining_len: remaining,
            }))
        };
        prop_assert_eq!(check(&header, max), expected.clone());
        if size > max {
            prop_assert_eq!(read(&mut header, ProtocolVersion::V5, max).map(|_| ()), Err(DecodeError::PacketTooLarge { size, max }));
        }
    }
}
