use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use super::UserProperties;
use crate::protocol::properties;
use crate::protocol::wire::Reader;
use crate::protocol::{DecodeError, EncodeError, PacketType, ProtocolVersion, ReasonCode};

/// PUBACK, PUBREC, PUBREL and PUBCOMP: a packet id and, in v5, a reason code
/// and properties. The shortened v5 forms (reason omitted when Success and no
/// properties) are accepted on read and produced on write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResponse {
    pub packet_id: u16,
    pub reason: ReasonCode,
    pub properties: PubResponseProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PubResponseProperties {
    pub reason_string: Option<ByteString>,
    pub user_properties: UserProperties,
}

/// Spec 3.4.2.1 and 3.5.2.1.
pub(crate) const PUBACK_PUBREC_REASONS: &[ReasonCode] = &[
    ReasonCode::Success,
    ReasonCode::NoMatchingSubscribers,
    ReasonCode::UnspecifiedError,
    ReasonCode::ImplementationSpecificError,
    ReasonCode::NotAuthorized,
    ReasonCode::TopicNameInvalid,
    ReasonCode::PacketIdentifierInUse,
    ReasonCode::QuotaExceeded,
    ReasonCode::PayloadFormatInvalid,
];

/// Spec 3.6.2.1 and 3.7.2.1.
pub(crate) const PUBREL_PUBCOMP_REASONS: &[ReasonCode] =
    &[ReasonCode::Success, ReasonCode::PacketIdentifierNotFound];

impl PubResponse {
    pub(crate) fn read(
        packet_type: PacketType,
        r: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<PubResponse, DecodeError> {
        let packet_id = r.packet_id()?;
        if !version.is_v5() {
            return Ok(PubResponse {
                packet_id,
                reason: ReasonCode::Success,
                properties: PubResponseProperties::default(),
            });
        }
        let valid = match packet_type {
            PacketType::PubAck | PacketType::PubRec => PUBACK_PUBREC_REASONS,
            _ => PUBREL_PUBCOMP_REASONS,
        };
        let (reason, properties) = properties::read_reason_tail(r, valid)?;
        Ok(PubResponse {
            packet_id,
            reason,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if !version.is_v5() {
            return Ok(2);
        }
        Ok(2 + properties::reason_tail_len(self.reason, &self.properties)?)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if version.is_v5() {
            properties::write_reason_tail(self.reason, &self.properties, buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::{decode, roundtrip};
    use crate::protocol::{Packet, ProtocolVersion::*};

    fn response(reason: ReasonCode) -> PubResponse {
        PubResponse {
            packet_id: 1,
            reason,
            properties: PubResponseProperties::default(),
        }
    }

    #[test]
    fn acknowledgements_are_two_bytes_before_v5() {
        let success = response(ReasonCode::Success);
        for version in [V3_1, V3_1_1] {
            assert_eq!(
                roundtrip(&Packet::PubAck(success.clone()), version),
                [0x40, 0x02, 0x00, 0x01]
            );
            assert_eq!(
                roundtrip(&Packet::PubRec(success.clone()), version),
                [0x50, 0x02, 0x00, 0x01]
            );
            assert_eq!(
                roundtrip(&Packet::PubRel(success.clone()), version),
                [0x62, 0x02, 0x00, 0x01]
            );
            assert_eq!(
                roundtrip(&Packet::PubComp(success.clone()), version),
                [0x70, 0x02, 0x00, 0x01]
            );
        }
        assert_eq!(
            decode(&[0x40, 0x03, 0x00, 0x01, 0x00], V3_1_1),
            Err(DecodeError::TrailingBytes(1))
        );
        assert_eq!(
            decode(&[0x40, 0x02, 0x00, 0x00], V3_1_1),
            Err(DecodeError::ZeroPacketId)
        );
    }

    #[test]
    fn v5_uses_the_short_forms() {
        let success = Packet::PubAck(response(ReasonCode::Success));
        assert_eq!(roundtrip(&success, V5), [0x40, 0x02, 0x00, 0x01]);
        let no_subscribers = Packet::PubAck(response(ReasonCode::NoMatchingSubscribers));
        assert_eq!(
            roundtrip(&no_subscribers, V5),
            [0x40, 0x03, 0x00, 0x01, 0x10]
        );
        // The long forms of the same packets read the same.
        assert_eq!(
            decode(&[0x40, 0x04, 0x00, 0x01, 0x00, 0x00], V5),
            Ok(success)
        );
        assert_eq!(
            decode(&[0x40, 0x04, 0x00, 0x01, 0x10, 0x00], V5),
            Ok(no_subscribers)
        );
        let with_reason_string = Packet::PubComp(PubResponse {
            properties: PubResponseProperties {
                reason_string: Some("gone".into()),
                user_properties: vec![("k".into(), "v".into())],
            },
            ..response(ReasonCode::PacketIdentifierNotFound)
        });
        roundtrip(&with_reason_string, V5);
    }

    #[test]
    fn reasons_must_fit_the_packet_type() {
        // No Matching Subscribers is a PUBACK/PUBREC code, not a PUBREL one.
        assert_eq!(
            decode(&[0x62, 0x03, 0x00, 0x01, 0x10], V5),
            Err(DecodeError::InvalidReasonCode(0x10))
        );
        assert_eq!(
            decode(&[0x50, 0x03, 0x00, 0x01, 0x92], V5),
            Err(DecodeError::InvalidReasonCode(0x92))
        );
        assert_eq!(
            decode(&[0x40, 0x03, 0x00, 0x01, 0x03], V5),
            Err(DecodeError::InvalidReasonCode(0x03))
        );
    }
}
