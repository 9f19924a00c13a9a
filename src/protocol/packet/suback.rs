use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use super::UserProperties;
use crate::protocol::properties;
use crate::protocol::wire::Reader;
use crate::protocol::{DecodeError, EncodeError, ProtocolVersion, ReasonCode};

/// One reason code per filter, in the SUBSCRIBE's order. At level 3/4 the
/// granted QoS codes are written as-is and any error as 0x80.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub reasons: Vec<ReasonCode>,
    pub properties: SubAckProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubAckProperties {
    pub reason_string: Option<ByteString>,
    pub user_properties: UserProperties,
}

/// Spec 3.9.3.
pub(crate) const SUBACK_REASONS: &[ReasonCode] = &[
    ReasonCode::Success,
    ReasonCode::GrantedQoS1,
    ReasonCode::GrantedQoS2,
    ReasonCode::UnspecifiedError,
    ReasonCode::ImplementationSpecificError,
    ReasonCode::NotAuthorized,
    ReasonCode::TopicFilterInvalid,
    ReasonCode::PacketIdentifierInUse,
    ReasonCode::QuotaExceeded,
    ReasonCode::SharedSubscriptionsNotSupported,
    ReasonCode::SubscriptionIdentifiersNotSupported,
    ReasonCode::WildcardSubscriptionsNotSupported,
];

/// What 3.1.1 can say: the granted QoS, or 0x80 for any failure.
pub(crate) const V3_SUBACK_REASONS: &[ReasonCode] = &[
    ReasonCode::Success,
    ReasonCode::GrantedQoS1,
    ReasonCode::GrantedQoS2,
    ReasonCode::UnspecifiedError,
];

impl SubAck {
    pub(crate) fn read(r: &mut Reader, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
        let packet_id = r.packet_id()?;
        let (properties, valid) = if version.is_v5() {
            (properties::read(r)?, SUBACK_REASONS)
        } else {
            (SubAckProperties::default(), V3_SUBACK_REASONS)
        };
        let mut reasons = Vec::with_capacity(r.remaining());
        while r.remaining() > 0 {
            reasons.push(r.reason_code(valid)?);
        }
        Ok(SubAck {
            packet_id,
            reasons,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let properties_len = if version.is_v5() {
            properties::encoded_len(&self.properties)?
        } else {
            0
        };
        Ok(2 + properties_len + self.reasons.len())
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if version.is_v5() {
            properties::write(&self.properties, buf);
            buf.extend(self.reasons.iter().map(|&reason| reason as u8));
        } else {
            buf.extend(self.reasons.iter().map(|&reason| match reason {
                ReasonCode::Success | ReasonCode::GrantedQoS1 | ReasonCode::GrantedQoS2 => {
                    reason as u8
                }
                _ => ReasonCode::UnspecifiedError as u8,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::{decode, encode, roundtrip};
    use crate::protocol::{Packet, ProtocolVersion::*};

    fn suback(reasons: Vec<ReasonCode>) -> Packet {
        Packet::SubAck(Box::new(SubAck {
            packet_id: 1,
            reasons,
            properties: SubAckProperties::default(),
        }))
    }

    #[test]
    fn v3_suback_bytes() {
        let packet = suback(vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError,
        ]);
        let wire = [0x90, 0x05, 0x00, 0x01, 0x00, 0x02, 0x80];
        assert_eq!(roundtrip(&packet, V3_1_1), wire);
        assert_eq!(roundtrip(&packet, V3_1), wire);
        // 3.1.1 has one failure code for every v5 reason.
        assert_eq!(
            encode(&suback(vec![ReasonCode::NotAuthorized]), V3_1_1),
            Ok(vec![0x90, 0x03, 0x00, 0x01, 0x80])
        );
        assert_eq!(
            decode(&[0x90, 0x03, 0x00, 0x01, 0x03], V3_1_1),
            Err(DecodeError::InvalidReasonCode(0x03))
        );
        assert_eq!(
            decode(&[0x90, 0x03, 0x00, 0x01, 0x87], V3_1_1),
            Err(DecodeError::InvalidReasonCode(0x87))
        );
    }

    #[test]
    fn v5_suback_bytes() {
        let packet = suback(vec![ReasonCode::GrantedQoS1, ReasonCode::NotAuthorized]);
        assert_eq!(
            roundtrip(&packet, V5),
            [0x90, 0x05, 0x00, 0x01, 0x00, 0x01, 0x87]
        );
        assert_eq!(
            decode(&[0x90, 0x04, 0x00, 0x01, 0x00, 0x11], V5),
            Err(DecodeError::InvalidReasonCode(0x11))
        );
        let with_properties = Packet::SubAck(Box::new(SubAck {
            packet_id: 2,
            reasons: vec![ReasonCode::SharedSubscriptionsNotSupported],
            properties: SubAckProperties {
                reason_string: Some("no shared subscriptions".into()),
                user_properties: vec![("k".into(), "v".into())],
            },
        }));
        roundtrip(&with_properties, V5);
    }
}
