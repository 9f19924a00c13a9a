use bytes::BytesMut;
use bytestring::ByteString;

use super::UserProperties;
use crate::protocol::properties::{
    self, Properties, Property, Value, emit, emit_user_properties, id, once,
};
use crate::protocol::wire::Reader;
use crate::protocol::{DecodeError, EncodeError, ProtocolVersion, ReasonCode};

/// At level 3/4 DISCONNECT has no body; `reason` reads as Success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: DisconnectProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DisconnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub reason_string: Option<ByteString>,
    pub user_properties: UserProperties,
    pub server_reference: Option<ByteString>,
}

/// Spec 3.14.2.1.
pub(crate) const DISCONNECT_REASONS: &[ReasonCode] = &[
    ReasonCode::Success,
    ReasonCode::DisconnectWithWillMessage,
    ReasonCode::UnspecifiedError,
    ReasonCode::MalformedPacket,
    ReasonCode::ProtocolError,
    ReasonCode::ImplementationSpecificError,
    ReasonCode::NotAuthorized,
    ReasonCode::ServerBusy,
    ReasonCode::ServerShuttingDown,
    ReasonCode::KeepAliveTimeout,
    ReasonCode::SessionTakenOver,
    ReasonCode::TopicFilterInvalid,
    ReasonCode::TopicNameInvalid,
    ReasonCode::ReceiveMaximumExceeded,
    ReasonCode::TopicAliasInvalid,
    ReasonCode::PacketTooLarge,
    ReasonCode::MessageRateTooHigh,
    ReasonCode::QuotaExceeded,
    ReasonCode::AdministrativeAction,
    ReasonCode::PayloadFormatInvalid,
    ReasonCode::RetainNotSupported,
    ReasonCode::QoSNotSupported,
    ReasonCode::UseAnotherServer,
    ReasonCode::ServerMoved,
    ReasonCode::SharedSubscriptionsNotSupported,
    ReasonCode::ConnectionRateExceeded,
    ReasonCode::MaximumConnectTime,
    ReasonCode::SubscriptionIdentifiersNotSupported,
    ReasonCode::WildcardSubscriptionsNotSupported,
];

impl Disconnect {
    /// Level 3/4 bodies are empty; anything left over fails as trailing bytes.
    pub(crate) fn read(
        r: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Disconnect, DecodeError> {
        let (reason, properties) = if version.is_v5() {
            properties::read_reason_tail(r, DISCONNECT_REASONS)?
        } else {
            (ReasonCode::Success, DisconnectProperties::default())
        };
        Ok(Disconnect { reason, properties })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if !version.is_v5() {
            return Ok(0);
        }
        properties::reason_tail_len(self.reason, &self.properties)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        if version.is_v5() {
            properties::write_reason_tail(self.reason, &self.properties, buf);
        }
    }
}

impl Properties for DisconnectProperties {
    fn accept(&mut self, id: u8, property: Property) -> Result<(), DecodeError> {
        match property {
            Property::SessionExpiryInterval(v) => once(&mut self.session_expiry_interval, id, v),
            Property::ReasonString(v) => once(&mut self.reason_string, id, v),
            Property::ServerReference(v) => once(&mut self.server_reference, id, v),
            Property::User(k, v) => {
                self.user_properties.push((k, v));
                Ok(())
            }
            _ => Err(DecodeError::UnexpectedProperty(id)),
        }
    }

    fn visit<'a>(&'a self, f: &mut impl FnMut(u8, Value<'a>)) {
        emit(
            f,
            id::SESSION_EXPIRY_INTERVAL,
            self.session_expiry_interval.map(Value::Four),
        );
        emit(f, id::REASON_STRING, self.reason_string.as_ref());
        emit_user_properties(f, &self.user_properties);
        emit(f, id::SERVER_REFERENCE, self.server_reference.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::{decode, roundtrip};
    use crate::protocol::{Packet, ProtocolVersion::*};

    fn disconnect(reason: ReasonCode) -> Packet {
        Packet::Disconnect(Box::new(Disconnect {
            reason,
            properties: DisconnectProperties::default(),
        }))
    }

    #[test]
    fn disconnect_has_no_body_before_v5() {
        for version in [V3_1, V3_1_1] {
            assert_eq!(
                roundtrip(&disconnect(ReasonCode::Success), version),
                [0xE0, 0x00]
            );
            assert_eq!(
                decode(&[0xE0, 0x01, 0x00], version),
                Err(DecodeError::TrailingBytes(1))
            );
        }
    }

    #[test]
    fn v5_disconnect_forms() {
        assert_eq!(
            roundtrip(&disconnect(ReasonCode::Success), V5),
            [0xE0, 0x00]
        );
        let taken_over = disconnect(ReasonCode::SessionTakenOver);
        assert_eq!(roundtrip(&taken_over, V5), [0xE0, 0x01, 0x8E]);
        assert_eq!(decode(&[0xE0, 0x02, 0x8E, 0x00], V5), Ok(taken_over));
        assert_eq!(
            decode(&[0xE0, 0x01, 0x01], V5),
            Err(DecodeError::InvalidReasonCode(0x01))
        );
        let with_properties = Packet::Disconnect(Box::new(Disconnect {
            reason: ReasonCode::UseAnotherServer,
            properties: DisconnectProperties {
                session_expiry_interval: Some(0),
                reason_string: Some("moving".into()),
                user_properties: vec![("k".into(), "v".into())],
                server_reference: Some("other:1883".into()),
            },
        }));
        roundtrip(&with_properties, V5);
        roundtrip(&disconnect(ReasonCode::DisconnectWithWillMessage), V5);
    }
}
