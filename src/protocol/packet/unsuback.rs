use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use super::UserProperties;
use crate::protocol::properties;
use crate::protocol::wire::Reader;
use crate::protocol::{DecodeError, EncodeError, ProtocolVersion, ReasonCode};

/// At level 3/4 UNSUBACK carries only the packet id; `reasons` is then
/// empty on read and ignored on write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub reasons: Vec<ReasonCode>,
    pub properties: UnsubAckProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubAckProperties {
    pub reason_string: Option<ByteString>,
    pub user_properties: UserProperties,
}

/// Spec 3.11.3.
pub(crate) const UNSUBACK_REASONS: &[ReasonCode] = &[
    ReasonCode::Success,
    ReasonCode::NoSubscriptionExisted,
    ReasonCode::UnspecifiedError,
    ReasonCode::ImplementationSpecificError,
    ReasonCode::NotAuthorized,
    ReasonCode::TopicFilterInvalid,
    ReasonCode::PacketIdentifierInUse,
];

impl UnsubAck {
    pub(crate) fn read(r: &mut Reader, version: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
        let packet_id = r.packet_id()?;
        let mut unsuback = UnsubAck {
            packet_id,
            reasons: Vec::new(),
            properties: UnsubAckProperties::default(),
        };
        if version.is_v5() {
            unsuback.properties = properties::read(r)?;
            unsuback.reasons.reserve_exact(r.remaining());
            while r.remaining() > 0 {
                unsuback.reasons.push(r.reason_code(UNSUBACK_REASONS)?);
            }
        }
        Ok(unsuback)
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if !version.is_v5() {
            return Ok(2);
        }
        Ok(2 + properties::encoded_len(&self.properties)? + self.reasons.len())
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if version.is_v5() {
            properties::write(&self.properties, buf);
            buf.extend(self.reasons.iter().map(|&reason| reason as u8));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::{decode, encode, roundtrip};
    use crate::protocol::{Packet, ProtocolVersion::*};

    #[test]
    fn unsuback_bytes() {
        let v3 = Packet::UnsubAck(Box::new(UnsubAck {
            packet_id: 1,
            reasons: Vec::new(),
            properties: UnsubAckProperties::default(),
        }));
        for version in [V3_1, V3_1_1] {
            assert_eq!(roundtrip(&v3, version), [0xB0, 0x02, 0x00, 0x01]);
        }
        assert_eq!(
            decode(&[0xB0, 0x03, 0x00, 0x01, 0x00], V3_1_1),
            Err(DecodeError::TrailingBytes(1))
        );

        let v5 = Packet::UnsubAck(Box::new(UnsubAck {
            packet_id: 1,
            reasons: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
            properties: UnsubAckProperties::default(),
        }));
        assert_eq!(
            roundtrip(&v5, V5),
            [0xB0, 0x05, 0x00, 0x01, 0x00, 0x00, 0x11]
        );
        // Before v5 the reasons have nowhere to go.
        assert_eq!(encode(&v5, V3_1_1), Ok(vec![0xB0, 0x02, 0x00, 0x01]));
        assert_eq!(
            decode(&[0xB0, 0x04, 0x00, 0x01, 0x00, 0x10], V5),
            Err(DecodeError::InvalidReasonCode(0x10))
        );
    }

    #[test]
    fn v5_unsuback_with_properties_round_trips() {
        let packet = Packet::UnsubAck(Box::new(UnsubAck {
            packet_id: 4,
            reasons: vec![ReasonCode::TopicFilterInvalid],
            properties: UnsubAckProperties {
                reason_string: Some("bad filter".into()),
                user_properties: vec![("k".into(), "v".into())],
            },
        }));
        roundtrip(&packet, V5);
    }
}
