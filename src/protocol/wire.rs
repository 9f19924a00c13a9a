//! Fixed header, variable byte integers, strings and binary data: the
//! primitives every packet file builds on, and the dispatch from the fixed
//! header to the packet files.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::{
    Auth, ConnAck, Connect, DecodeError, Disconnect, EncodeError, FixedHeader, Packet, PacketType,
    ProtocolVersion, PubResponse, Publish, ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe,
};

/// The largest value a four-byte variable byte integer holds (spec 1.5.5),
/// so also the largest remaining length.
pub(crate) const MAX_VARINT: usize = 268_435_455;

/// Strings and binary data carry a 16-bit length prefix.
pub(crate) const MAX_FIELD_LEN: usize = u16::MAX as usize;

/// The fixed-header flags PUBREL, SUBSCRIBE and UNSUBSCRIBE must carry.
const FLAGS_0010: u8 = 0b0010;

pub(super) fn check(
    buf: &[u8],
    max_packet_size: usize,
) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = packet_type(first >> 4)?;
    let flags = first & 0x0f;
    check_flags(packet_type, flags)?;
    let (remaining_len, varint_len) = match decode_varint(&buf[1..]) {
        Varint::Complete { value, len } => (value, len),
        Varint::Incomplete => return Ok(None),
        Varint::Malformed => return Err(DecodeError::MalformedRemainingLength),
    };
    let header = FixedHeader {
        packet_type,
        flags,
        header_len: 1 + varint_len,
        remaining_len,
    };
    if header.frame_len() > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size: header.frame_len(),
            max: max_packet_size,
        });
    }
    Ok(Some(header))
}

pub(super) fn read(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = check(buf, max_packet_size)? else {
        return Ok(None);
    };
    if buf.len() < header.frame_len() {
        return Ok(None);
    }
    // Freezing the split-off frame is what makes every topic, payload and
    // string below a refcounted slice instead of a copy.
    let mut frame = buf.split_to(header.frame_len()).freeze();
    frame.advance(header.header_len);
    let mut r = Reader::new(frame);
    let packet = read_body(header, &mut r, version)?;
    r.finish()?;
    Ok(Some(packet))
}

fn read_body(
    header: FixedHeader,
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    use PacketType as T;
    let t = header.packet_type;
    Ok(match t {
        T::Connect => Packet::Connect(Box::new(Connect::read(r)?)),
        T::ConnAck => Packet::ConnAck(Box::new(ConnAck::read(r, version)?)),
        T::Publish => Packet::Publish(Publish::read(header.flags, r, version)?),
        T::PubAck => Packet::PubAck(PubResponse::read(t, r, version)?),
        T::PubRec => Packet::PubRec(PubResponse::read(t, r, version)?),
        T::PubRel => Packet::PubRel(PubResponse::read(t, r, version)?),
        T::PubComp => Packet::PubComp(PubResponse::read(t, r, version)?),
        T::Subscribe => Packet::Subscribe(Subscribe::read(r, version)?),
        T::SubAck => Packet::SubAck(Box::new(SubAck::read(r, version)?)),
        T::Unsubscribe => Packet::Unsubscribe(Unsubscribe::read(r, version)?),
        T::UnsubAck => Packet::UnsubAck(Box::new(UnsubAck::read(r, version)?)),
        T::PingReq => Packet::PingReq,
        T::PingResp => Packet::PingResp,
        T::Disconnect => Packet::Disconnect(Box::new(Disconnect::read(r, version)?)),
        T::Auth => Packet::Auth(Box::new(Auth::read(r, version)?)),
    })
}

pub(super) fn write(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<usize, EncodeError> {
    let remaining = body_len(packet, version)?;
    let total = 1 + varint_len(remaining) + remaining;
    if remaining > MAX_VARINT {
        // Sizes count the whole packet, as DecodeError::PacketTooLarge does.
        return Err(EncodeError::PacketTooLarge {
            size: total,
            max: 1 + varint_len(MAX_VARINT) + MAX_VARINT,
        });
    }
    let start = buf.len();
    buf.reserve(total);
    buf.put_u8(((packet.packet_type() as u8) << 4) | header_flags(packet));
    put_varint(buf, remaining);
    write_body(packet, version, buf);
    debug_assert_eq!(
        buf.len() - start,
        total,
        "body_len disagrees with write_body"
    );
    Ok(total)
}

/// The remaining length. Every field is length-checked here, so the writes
/// that follow cannot fail on a field and never need a second buffer.
fn body_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    match packet {
        Packet::Connect(connect) => connect.body_len(),
        Packet::ConnAck(connack) => connack.body_len(version),
        Packet::Publish(publish) => publish.body_len(version),
        Packet::PubAck(resp)
        | Packet::PubRec(resp)
        | Packet::PubRel(resp)
        | Packet::PubComp(resp) => resp.body_len(version),
        Packet::Subscribe(subscribe) => subscribe.body_len(version),
        Packet::SubAck(suback) => suback.body_len(version),
        Packet::Unsubscribe(unsubscribe) => unsubscribe.body_len(version),
        Packet::UnsubAck(unsuback) => unsuback.body_len(version),
        Packet::PingReq | Packet::PingResp => Ok(0),
        Packet::Disconnect(disconnect) => disconnect.body_len(version),
        Packet::Auth(auth) => auth.body_len(version),
    }
}

fn write_body(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) {
    match packet {
        Packet::Connect(connect) => connect.write_body(buf),
        Packet::ConnAck(connack) => connack.write_body(version, buf),
        Packet::Publish(publish) => publish.write_body(version, buf),
        Packet::PubAck(resp)
        | Packet::PubRec(resp)
        | Packet::PubRel(resp)
        | Packet::PubComp(resp) => resp.write_body(version, buf),
        Packet::Subscribe(subscribe) => subscribe.write_body(version, buf),
        Packet::SubAck(suback) => suback.write_body(version, buf),
        Packet::Unsubscribe(unsubscribe) => unsubscribe.write_body(version, buf),
        Packet::UnsubAck(unsuback) => unsuback.write_body(version, buf),
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(disconnect) => disconnect.write_body(version, buf),
        Packet::Auth(auth) => auth.write_body(buf),
    }
}

fn header_flags(packet: &Packet) -> u8 {
    match packet {
        Packet::Publish(publish) => {
            (u8::from(publish.dup) << 3) | ((publish.qos as u8) << 1) | u8::from(publish.retain)
        }
        Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => FLAGS_0010,
        _ => 0,
    }
}

fn packet_type(nibble: u8) -> Result<PacketType, DecodeError> {
    use PacketType as T;
    Ok(match nibble {
        1 => T::Connect,
        2 => T::ConnAck,
        3 => T::Publish,
        4 => T::PubAck,
        5 => T::PubRec,
        6 => T::PubRel,
        7 => T::PubComp,
        8 => T::Subscribe,
        9 => T::SubAck,
        10 => T::Unsubscribe,
        11 => T::UnsubAck,
        12 => T::PingReq,
        13 => T::PingResp,
        14 => T::Disconnect,
        15 => T::Auth,
        _ => return Err(DecodeError::ReservedPacketType),
    })
}

/// Spec 2.1.3. PUBLISH QoS 3 is caught here, before the body is buffered;
/// DUP on QoS 0 depends on the version and is left to the PUBLISH reader.
fn check_flags(packet_type: PacketType, flags: u8) -> Result<(), DecodeError> {
    let expected = match packet_type {
        PacketType::Publish => {
            let qos = (flags >> 1) & 0b11;
            return if qos == 3 {
                Err(DecodeError::InvalidQoS(qos))
            } else {
                Ok(())
            };
        }
        PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => FLAGS_0010,
        _ => 0,
    };
    if flags == expected {
        Ok(())
    } else {
        Err(DecodeError::InvalidHeaderFlags { packet_type, flags })
    }
}

enum Varint {
    Complete {
        value: usize,
        len: usize,
    },
    Incomplete,
    /// A fourth byte still has the continuation bit: no need to wait for a
    /// fifth to know the integer is malformed.
    Malformed,
}

fn decode_varint(buf: &[u8]) -> Varint {
    let mut value = 0;
    for (i, &byte) in buf.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Varint::Complete { value, len: i + 1 };
        }
    }
    if buf.len() >= 4 {
        Varint::Malformed
    } else {
        Varint::Incomplete
    }
}

pub(crate) fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// `value` must be at most [`MAX_VARINT`]; lengths are checked before any
/// byte is written.
pub(crate) fn put_varint(buf: &mut BytesMut, mut value: usize) {
    debug_assert!(value <= MAX_VARINT);
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            buf.put_u8(byte);
            return;
        }
        buf.put_u8(byte | 0x80);
    }
}

/// The encoded size of a string or binary field: its 2-byte length prefix
/// plus the bytes.
pub(crate) fn field_len(field: &[u8]) -> Result<usize, EncodeError> {
    if field.len() > MAX_FIELD_LEN {
        return Err(EncodeError::FieldTooLong);
    }
    Ok(2 + field.len())
}

/// Writes a string or binary field whose length [`field_len`] accepted.
pub(crate) fn put_field(buf: &mut BytesMut, field: &[u8]) {
    debug_assert!(field.len() <= MAX_FIELD_LEN);
    buf.put_u16(field.len() as u16);
    buf.put_slice(field);
}

/// A cursor over one packet's body. Every read is bounds-checked against the
/// body, so a lying length can only produce an error, never a panic or a read
/// into the next packet.
pub(crate) struct Reader {
    bytes: Bytes,
}

impl Reader {
    pub(crate) fn new(bytes: Bytes) -> Reader {
        Reader { bytes }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn need(&self, len: usize) -> Result<(), DecodeError> {
        if self.bytes.len() < len {
            Err(DecodeError::Truncated)
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.bytes.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.bytes.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.bytes.get_u32())
    }

    /// Spec 2.2.1: every packet that has an identifier needs a non-zero one.
    pub(crate) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::ZeroPacketId),
            id => Ok(id),
        }
    }

    pub(crate) fn varint(&mut self) -> Result<usize, DecodeError> {
        match decode_varint(&self.bytes) {
            Varint::Complete { value, len } => {
                self.bytes.advance(len);
                Ok(value)
            }
            Varint::Incomplete => Err(DecodeError::Truncated),
            Varint::Malformed => Err(DecodeError::Malformed(
                "variable byte integer longer than 4 bytes",
            )),
        }
    }

    /// Binary data (spec 1.5.6) as a slice of the packet.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16()?);
        self.need(len)?;
        Ok(self.bytes.split_to(len))
    }

    /// A UTF-8 string (spec 1.5.4) as a slice of the packet. In valid UTF-8 a
    /// zero byte can only be U+0000, so a byte search finds it.
    pub(crate) fn string(&mut self) -> Result<ByteString, DecodeError> {
        let bytes = self.binary()?;
        if bytes.contains(&0) {
            return Err(DecodeError::NullCharacter);
        }
        ByteString::try_from(bytes).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// A v5 reason code, which must be one of `valid` for this packet type.
    pub(crate) fn reason_code(&mut self, valid: &[ReasonCode]) -> Result<ReasonCode, DecodeError> {
        let byte = self.u8()?;
        ReasonCode::from_u8(byte)
            .filter(|reason| valid.contains(reason))
            .ok_or(DecodeError::InvalidReasonCode(byte))
    }

    /// The rest of the body, for PUBLISH payloads. Taking the handle rather
    /// than slicing it saves a refcount increment and decrement per PUBLISH.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.bytes)
    }

    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.bytes.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use super::*;
    use crate::protocol::tests::{decode, encode};
    use crate::protocol::{LazyPublishProperties, PublishProperties, QoS, check, read};

    #[test]
    fn check_waits_for_the_whole_fixed_header() {
        assert_eq!(check(&[], 100), Ok(None));
        assert_eq!(check(&[0x30], 100), Ok(None));
        assert_eq!(check(&[0x30, 0x80], 1000), Ok(None));
        assert_eq!(
            check(&[0x30, 0x80, 0x01], 1000),
            Ok(Some(FixedHeader {
                packet_type: PacketType::Publish,
                flags: 0,
                header_len: 3,
                remaining_len: 128,
            }))
        );
    }

    #[test]
    fn the_fourth_length_byte_must_end_the_integer() {
        let largest = [0x30, 0xFF, 0xFF, 0xFF, 0x7F];
        let header = check(&largest, usize::MAX).unwrap().unwrap();
        assert_eq!(header.remaining_len, MAX_VARINT);
        // Known malformed without waiting for a fifth byte.
        assert_eq!(
            check(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF], usize::MAX),
            Err(DecodeError::MalformedRemainingLength)
        );
    }

    #[test]
    fn the_size_limit_counts_the_fixed_header_and_needs_no_body() {
        // 2 header bytes + 10 remaining.
        assert!(check(&[0x30, 0x0A], 12).unwrap().is_some());
        assert_eq!(
            check(&[0x30, 0x0A], 11),
            Err(DecodeError::PacketTooLarge { size: 12, max: 11 })
        );
    }

    #[test]
    fn reserved_type_and_flags_are_rejected() {
        assert_eq!(
            check(&[0x00, 0x00], 10),
            Err(DecodeError::ReservedPacketType)
        );
        for (first, packet_type) in [
            (0x60, PacketType::PubRel),
            (0x80, PacketType::Subscribe),
            (0xA0, PacketType::Unsubscribe),
            (0x41, PacketType::PubAck),
            (0xC2, PacketType::PingReq),
            (0x18, PacketType::Connect),
        ] {
            assert_eq!(
                check(&[first, 0x00], 10),
                Err(DecodeError::InvalidHeaderFlags {
                    packet_type,
                    flags: first & 0x0F,
                }),
            );
        }
        for first in [0x62, 0x82, 0xA2, 0x3F & !0x06] {
            assert!(check(&[first, 0x00], 10).is_ok(), "{first:#x}");
        }
        assert_eq!(check(&[0x36, 0x00], 10), Err(DecodeError::InvalidQoS(3)));
    }

    #[test]
    fn varints_use_the_fewest_bytes() {
        for (value, len) in [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (2_097_151, 3),
            (2_097_152, 4),
            (MAX_VARINT, 4),
        ] {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, value);
            assert_eq!(buf.len(), len, "{value}");
            assert_eq!(varint_len(value), len, "{value}");
            let mut r = Reader::new(buf.freeze());
            assert_eq!(r.varint(), Ok(value));
        }
    }

    fn publish_with_topic(topic: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0x30, 2 + topic.len() as u8, 0x00, topic.len() as u8];
        bytes.extend_from_slice(topic);
        bytes
    }

    #[test]
    fn strings_must_be_utf8_without_nul() {
        let v5 = ProtocolVersion::V5;
        assert_eq!(
            decode(&publish_with_topic(b"\xC3\x28"), ProtocolVersion::V3_1_1),
            Err(DecodeError::InvalidUtf8)
        );
        // UTF-16 surrogates are not UTF-8 either (spec 1.5.4).
        assert_eq!(
            decode(
                &publish_with_topic(b"\xED\xA0\x80"),
                ProtocolVersion::V3_1_1
            ),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(
            decode(&publish_with_topic(b"a\0b"), ProtocolVersion::V3_1_1),
            Err(DecodeError::NullCharacter)
        );
        // The string's length says 3 but only 1 byte follows.
        assert_eq!(
            decode(&[0x30, 0x03, 0x00, 0x03, b'a'], v5),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn decoded_fields_are_slices_of_the_read_buffer() {
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "sensors/1".into(),
            packet_id: 0,
            properties: LazyPublishProperties::default(),
            payload: Bytes::from_static(b"21.5"),
        });
        let mut buf = BytesMut::from(&encode(&packet, ProtocolVersion::V3_1_1).unwrap()[..]);
        let range = buf.as_ptr_range();
        let Some(Packet::Publish(publish)) =
            read(&mut buf, ProtocolVersion::V3_1_1, usize::MAX).unwrap()
        else {
            panic!("not a PUBLISH");
        };
        assert!(range.contains(&publish.topic.as_ptr()));
        assert!(range.contains(&publish.payload.as_ptr()));
    }

    #[test]
    fn writing_a_publish_only_grows_the_buffer() {
        let packet = Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "t".into(),
            packet_id: 1,
            properties: PublishProperties {
                user_properties: vec![("k".into(), "v".into())],
                subscription_identifiers: vec![1, 300],
                ..Default::default()
            }
            .into(),
            payload: Bytes::from(vec![7; 1000]),
        });
        let mut buf = BytesMut::with_capacity(2048);
        let start = buf.as_ptr();
        let written = packet.write(ProtocolVersion::V5, &mut buf).unwrap();
        assert_eq!(buf.len(), written);
        assert_eq!(
            buf.as_ptr(),
            start,
            "no reallocation when capacity suffices"
        );
        assert_eq!(buf.capacity(), 2048);
    }

    #[test]
    fn fields_and_packets_too_long_to_encode_are_refused() {
        let mut publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "x".repeat(65_536).into(),
            packet_id: 0,
            properties: LazyPublishProperties::default(),
            payload: Bytes::new(),
        };
        let mut buf = BytesMut::from(&b"earlier"[..]);
        let packet = Packet::Publish(publish.clone());
        assert_eq!(
            packet.write(ProtocolVersion::V3_1_1, &mut buf),
            Err(EncodeError::FieldTooLong)
        );
        assert_eq!(&buf[..], b"earlier", "a refused packet writes nothing");

        publish.topic = "x".repeat(65_535).into();
        assert!(encode(&Packet::Publish(publish.clone()), ProtocolVersion::V3_1_1).is_ok());

        // Zeroed pages: the payload is measured, never touched.
        publish.payload = Bytes::from(vec![0; MAX_VARINT]);
        assert_eq!(
            encode(&Packet::Publish(publish), ProtocolVersion::V3_1_1),
            Err(EncodeError::PacketTooLarge {
                size: 5 + MAX_VARINT + 65_537,
                max: 5 + MAX_VARINT,
            })
        );
    }
}
