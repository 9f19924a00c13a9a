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
