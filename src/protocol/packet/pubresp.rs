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
