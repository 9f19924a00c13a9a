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
        properties: LazyPublishProperties::default(),
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

/// Packets are moved by value from decoding through the session to
/// encoding, and at 264 bytes the `memmove`s were the broker's top
/// user-space symbol under QoS 1 load (7.3% of its CPU). With the rare
/// packets and the v5 PUBLISH properties boxed, a PUBLISH is the largest,
/// at 80 bytes. This catches a variant that grows it again; an upper bound,
/// and only where it was measured, since std's type sizes differ between
/// targets.
#[test]
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn a_packet_stays_small() {
    assert!(
        std::mem::size_of::<Packet>() <= 80,
        "Packet grew to {} bytes",
        std::mem::size_of::<Packet>()
    );
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
            E::InvalidSubscriptionOptions(0x03),
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

/// rumqttc's 3.1.1 encoder is an independent reading of the spec: every
/// packet both codecs can express must come out as the same bytes, and
/// rumqttc must read ours back.
mod against_rumqttc {
    use proptest::prelude::*;
    use rumqttc::mqttbytes::QoS as TheirQoS;
    use rumqttc::mqttbytes::v4 as theirs;

    use super::super::strategies;
    use super::*;

    fn qos(qos: QoS) -> TheirQoS {
        match qos {
            QoS::AtMostOnce => TheirQoS::AtMostOnce,
            QoS::AtLeastOnce => TheirQoS::AtLeastOnce,
            QoS::ExactlyOnce => TheirQoS::ExactlyOnce,
        }
    }

    /// `None` for what rumqttc cannot say: it treats an empty user name or
    /// password as absent and wants a password to be a string.
    fn convert(packet: &Packet) -> Option<theirs::Packet> {
        use theirs::Packet as P;
        Some(match packet {
            Packet::Connect(c) => {
                let login = match (&c.username, &c.password) {
                    (None, None) => None,
                    (Some(username), password) => {
                        let password = match password {
                            None => String::new(),
                            Some(p) if p.is_empty() => return None,
                            Some(p) => String::from_utf8(p.to_vec()).ok()?,
                        };
                        if username.is_empty() {
                            return None;
                        }
                        Some(theirs::Login::new(&**username, password))
                    }
                    (None, Some(_)) => return None,
                };
                // `new` is the only way to rumqttc's private protocol level.
                let mut connect = theirs::Connect::new(c.client_id.to_string());
                connect.keep_alive = c.keep_alive;
                connect.clean_session = c.clean_start;
                connect.last_will = c.will.as_ref().map(|w| theirs::LastWill {
                    topic: w.topic.to_string(),
                    message: w.payload.clone(),
                    qos: qos(w.qos),
                    retain: w.retain,
                });
                connect.login = login;
                P::Connect(connect)
            }
            Packet::ConnAck(c) => {
                use theirs::ConnectReturnCode as Code;
                let code = match c.reason {
                    ReasonCode::Success => Code::Success,
                    ReasonCode::UnsupportedProtocolVersion => Code::RefusedProtocolVersion,
                    ReasonCode::ClientIdentifierNotValid => Code::BadClientId,
                    ReasonCode::BadUserNameOrPassword => Code::BadUserNamePassword,
                    ReasonCode::NotAuthorized => Code::NotAuthorized,
                    _ => Code::ServiceUnavailable,
                };
                P::ConnAck(theirs::ConnAck::new(code, c.session_present))
            }
            Packet::Publish(p) => P::Publish(theirs::Publish {
                dup: p.dup,
                qos: qos(p.qos),
                retain: p.retain,
                topic: p.topic.to_string(),
                pkid: p.packet_id,
                payload: p.payload.clone(),
            }),
            Packet::PubAck(r) => P::PubAck(theirs::PubAck::new(r.packet_id)),
            Packet::PubRec(r) => P::PubRec(theirs::PubRec::new(r.packet_id)),
            Packet::PubRel(r) => P::PubRel(theirs::PubRel::new(r.packet_id)),
            Packet::PubComp(r) => P::PubComp(theirs::PubComp::new(r.packet_id)),
            Packet::Subscribe(s) => P::Subscribe(theirs::Subscribe {
                pkid: s.packet_id,
                filters: s
                    .filters
                    .iter()
                    .map(|f| theirs::SubscribeFilter::new(f.filter.to_string(), qos(f.options.qos)))
                    .collect(),
            }),
            Packet::SubAck(s) => P::SubAck(theirs::SubAck::new(
                s.packet_id,
                s.reasons
                    .iter()
                    .map(|reason| match reason {
                        ReasonCode::Success => {
                            theirs::SubscribeReasonCode::Success(TheirQoS::AtMostOnce)
                        }
                        ReasonCode::GrantedQoS1 => {
                            theirs::SubscribeReasonCode::Success(TheirQoS::AtLeastOnce)
                        }
                        ReasonCode::GrantedQoS2 => {
                            theirs::SubscribeReasonCode::Success(TheirQoS::ExactlyOnce)
                        }
                        _ => theirs::SubscribeReasonCode::Failure,
                    })
                    .collect(),
            )),
            Packet::Unsubscribe(u) => P::Unsubscribe(theirs::Unsubscribe {
                pkid: u.packet_id,
                topics: u.filters.iter().map(ToString::to_string).collect(),
            }),
            Packet::UnsubAck(u) => P::UnsubAck(theirs::UnsubAck::new(u.packet_id)),
            Packet::PingReq => P::PingReq,
            Packet::PingResp => P::PingResp,
            Packet::Disconnect(_) => P::Disconnect,
            Packet::Auth(_) => return None,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn same_bytes_as_rumqttc(packet in strategies::packet(ProtocolVersion::V3_1_1)) {
            let Some(their_packet) = convert(&packet) else {
                return Ok(());
            };
            let ours = encode(&packet, ProtocolVersion::V3_1_1).unwrap();
            let mut buf = BytesMut::new();
            their_packet.write(&mut buf, usize::MAX).unwrap();
            prop_assert_eq!(&ours[..], &buf[..]);
            let read_back = theirs::Packet::read(&mut BytesMut::from(&ours[..]), usize::MAX);
            // rumqttc refuses a SUBACK or SUBSCRIBE without entries, which
            // only our SUBACK allows; everything else must read back.
            if let Ok(read_back) = read_back {
                prop_assert_eq!(read_back, their_packet);
            } else {
                prop_assert!(matches!(&packet, Packet::SubAck(s) if s.reasons.is_empty()));
            }
        }
    }
}

/// rumqttc's v5 codec orders properties its own way, so the check is on
/// values: each codec reads what the other wrote.
mod against_rumqttc_v5 {
    use bytes::Bytes;
    use rumqttc::v5::mqttbytes::QoS as TheirQoS;
    use rumqttc::v5::mqttbytes::v5 as theirs;

    use super::*;

    fn both_ways(ours: Packet, their_packet: theirs::Packet) {
        let mut buf = BytesMut::new();
        their_packet.write(&mut buf, None).unwrap();
        assert_eq!(decode(&buf, ProtocolVersion::V5), Ok(ours.clone()));
        let mut buf = BytesMut::from(&encode(&ours, ProtocolVersion::V5).unwrap()[..]);
        assert_eq!(theirs::Packet::read(&mut buf, None).unwrap(), their_packet);
    }

    #[test]
    fn publish_with_properties() {
        let ours = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: 42,
            properties: PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                topic_alias: Some(2),
                response_topic: Some("reply".into()),
                correlation_data: Some(Bytes::from_static(b"id")),
                user_properties: vec![("k".into(), "v".into())],
                subscription_identifiers: vec![7],
                content_type: Some("text/plain".into()),
            }
            .into(),
            payload: Bytes::from_static(b"hello"),
        });
        let their_packet = theirs::Packet::Publish(theirs::Publish {
            dup: false,
            qos: TheirQoS::AtLeastOnce,
            retain: true,
            topic: Bytes::from_static(b"a/b"),
            pkid: 42,
            payload: Bytes::from_static(b"hello"),
            properties: Some(theirs::PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                topic_alias: Some(2),
                response_topic: Some("reply".into()),
                correlation_data: Some(Bytes::from_static(b"id")),
                user_properties: vec![("k".into(), "v".into())],
                subscription_identifiers: vec![7],
                content_type: Some("text/plain".into()),
            }),
        });
        both_ways(ours, their_packet);
    }

    #[test]
    fn connect_with_will_and_properties() {
        let ours = Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 30,
            client_id: "client".into(),
            will: Some(LastWill {
                topic: "will".into(),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: WillProperties {
                    will_delay_interval: Some(5),
                    content_type: Some("text/plain".into()),
                    ..Default::default()
                },
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"pass")),
            properties: ConnectProperties {
                session_expiry_interval: Some(3600),
                receive_maximum: Some(10),
                maximum_packet_size: Some(4096),
                topic_alias_maximum: Some(8),
                user_properties: vec![("k".into(), "v".into())],
                ..Default::default()
            },
        }));
        let their_packet = theirs::Packet::Connect(
            theirs::Connect {
                keep_alive: 30,
                client_id: "client".into(),
                clean_start: true,
                properties: Some(theirs::ConnectProperties {
                    session_expiry_interval: Some(3600),
                    receive_maximum: Some(10),
                    max_packet_size: Some(4096),
                    topic_alias_max: Some(8),
                    request_response_info: None,
                    request_problem_info: None,
                    user_properties: vec![("k".into(), "v".into())],
                    authentication_method: None,
                    authentication_data: None,
                }),
            },
            Some(theirs::LastWill {
                topic: Bytes::from_static(b"will"),
                message: Bytes::from_static(b"bye"),
                qos: TheirQoS::AtLeastOnce,
                retain: false,
                properties: Some(theirs::LastWillProperties {
                    delay_interval: Some(5),
                    payload_format_indicator: None,
                    message_expiry_interval: None,
                    content_type: Some("text/plain".into()),
                    response_topic: None,
                    correlation_data: None,
                    user_properties: Vec::new(),
                }),
            }),
            Some(theirs::Login {
                username: "user".into(),
                password: "pass".into(),
            }),
        );
        both_ways(ours, their_packet);
    }
}

/// The hot path, measured: allocations made by this thread while a PUBLISH
/// is read or written. Counting per thread keeps tests running in parallel
/// out of each other's numbers.
mod allocations {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    use bytes::Bytes;

    use super::*;

    struct CountingAllocator;

    thread_local! {
        static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    }

    fn count() {
        // A const-initialised Cell has no destructor, so this never fails;
        // try_with only spares the allocator a panic path.
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }

    // SAFETY: every call is forwarded unchanged to the system allocator.
    unsafe impl GlobalAlloc for CountingAllocator {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count();
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count();
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: CountingAllocator = CountingAllocator;

    fn allocations_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let before = ALLOCATIONS.with(Cell::get);
        let result = f();
        (result, ALLOCATIONS.with(Cell::get) - before)
    }

    fn publish(properties: PublishProperties) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "sensors/kitchen/temperature".into(),
            packet_id: 1,
            properties: properties.into(),
            payload: Bytes::from_static(&[0x42; 256]),
        })
    }

    fn with_user_properties(user_properties: UserProperties) -> PublishProperties {
        PublishProperties {
            message_expiry_interval: Some(60),
            user_properties,
            ..Default::default()
        }
    }

    /// The first split of a fresh `BytesMut` allocates its shared header
    /// once; every packet after that is refcounting only.
    fn read_second(packet: &Packet, version: ProtocolVersion) -> (Packet, usize) {
        let mut buf = BytesMut::new();
        packet.write(version, &mut buf).unwrap();
        packet.write(version, &mut buf).unwrap();
        read(&mut buf, version, usize::MAX).unwrap().unwrap();
        let (decoded, allocations) =
            allocations_during(|| read(&mut buf, version, usize::MAX).unwrap().unwrap());
        (decoded, allocations)
    }

    #[test]
    fn reading_a_publish_without_properties_allocates_nothing() {
        for version in VERSIONS {
            let packet = publish(PublishProperties::default());
            let (decoded, allocations) = read_second(&packet, version);
            assert_eq!(decoded, packet);
            assert_eq!(allocations, 0, "{version:?}");
        }
        // Below v5 properties are never on the wire.
        let packet = publish(with_user_properties(vec![("k".into(), "v".into())]));
        for version in [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1] {
            assert_eq!(read_second(&packet, version).1, 0, "{version:?}");
        }
    }

    #[test]
    fn properties_cost_one_box_and_user_properties_one_vec() {
        let packet = publish(with_user_properties(Vec::new()));
        let (decoded, allocations) = read_second(&packet, ProtocolVersion::V5);
        assert_eq!(decoded, packet);
        assert_eq!(allocations, 1);

        let packet = publish(with_user_properties(vec![
            ("k".into(), "v".into()),
            ("k2".into(), "v2".into()),
        ]));
        let (decoded, allocations) = read_second(&packet, ProtocolVersion::V5);
        assert_eq!(decoded, packet);
        assert_eq!(allocations, 2);
    }

    #[test]
    fn writing_a_publish_allocates_nothing_when_the_buffer_has_room() {
        let packet = publish(with_user_properties(vec![("k".into(), "v".into())]));
        for version in VERSIONS {
            let mut buf = BytesMut::with_capacity(1024);
            let (written, allocations) =
                allocations_during(|| packet.write(version, &mut buf).unwrap());
            assert_eq!(written, buf.len());
            assert_eq!(allocations, 0, "{version:?}");
        }
    }
}
