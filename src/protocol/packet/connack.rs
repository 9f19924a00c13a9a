use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::UserProperties;
use crate::protocol::properties::{
    self, Properties, Property, Value, emit, emit_user_properties, id, once,
};
use crate::protocol::wire::Reader;
use crate::protocol::{DecodeError, EncodeError, ProtocolVersion, QoS, ReasonCode};

/// At level 3/4 `reason` is written as the 3.1.1 return code: Success 0,
/// UnsupportedProtocolVersion 1, ClientIdentifierNotValid 2,
/// ServerUnavailable 3, BadUserNameOrPassword 4, NotAuthorized 5; any other
/// error code is written as 3 (server unavailable).
///
/// MQTT 3.1 has no session-present flag: at level 3 it is written as 0 and
/// reads as `false`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub reason: ReasonCode,
    pub properties: ConnAckProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAckProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_qos: Option<QoS>,
    pub retain_available: Option<bool>,
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_identifier: Option<ByteString>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<ByteString>,
    pub user_properties: UserProperties,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifiers_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
    pub server_keep_alive: Option<u16>,
    pub response_information: Option<ByteString>,
    pub server_reference: Option<ByteString>,
    pub authentication_method: Option<ByteString>,
    pub authentication_data: Option<Bytes>,
}

/// Spec 3.2.2.2.
pub(crate) const CONNACK_REASONS: &[ReasonCode] = &[
    ReasonCode::Success,
    ReasonCode::UnspecifiedError,
    ReasonCode::MalformedPacket,
    ReasonCode::ProtocolError,
    ReasonCode::ImplementationSpecificError,
    ReasonCode::UnsupportedProtocolVersion,
    ReasonCode::ClientIdentifierNotValid,
    ReasonCode::BadUserNameOrPassword,
    ReasonCode::NotAuthorized,
    ReasonCode::ServerUnavailable,
    ReasonCode::ServerBusy,
    ReasonCode::Banned,
    ReasonCode::BadAuthenticationMethod,
    ReasonCode::TopicNameInvalid,
    ReasonCode::PacketTooLarge,
    ReasonCode::QuotaExceeded,
    ReasonCode::PayloadFormatInvalid,
    ReasonCode::RetainNotSupported,
    ReasonCode::QoSNotSupported,
    ReasonCode::UseAnotherServer,
    ReasonCode::ServerMoved,
    ReasonCode::ConnectionRateExceeded,
];

/// The 3.1.1 return codes, indexed by their wire value.
pub(crate) const RETURN_CODES: [ReasonCode; 6] = [
    ReasonCode::Success,
    ReasonCode::UnsupportedProtocolVersion,
    ReasonCode::ClientIdentifierNotValid,
    ReasonCode::ServerUnavailable,
    ReasonCode::BadUserNameOrPassword,
    ReasonCode::NotAuthorized,
];

const SERVER_UNAVAILABLE: u8 = 3;

impl ConnAck {
    pub(crate) fn read(r: &mut Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
        let flags = r.u8()?;
        let session_present = match version {
            ProtocolVersion::V3_1 => false,
            _ if flags & !1 != 0 => {
                return Err(DecodeError::Malformed("reserved CONNACK flags set"));
            }
            _ => flags == 1,
        };
        if !version.is_v5() {
            let code = r.u8()?;
            let reason = *RETURN_CODES
                .get(usize::from(code))
                .ok_or(DecodeError::InvalidReasonCode(code))?;
            return Ok(ConnAck {
                session_present,
                reason,
                properties: ConnAckProperties::default(),
            });
        }
        Ok(ConnAck {
            session_present,
            reason: r.reason_code(CONNACK_REASONS)?,
            properties: properties::read(r)?,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if !version.is_v5() {
            return Ok(2);
        }
        Ok(2 + properties::encoded_len(&self.properties)?)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u8(u8::from(
            self.session_present && version != ProtocolVersion::V3_1,
        ));
        if version.is_v5() {
            buf.put_u8(self.reason as u8);
            properties::write(&self.properties, buf);
        } else {
            let code = RETURN_CODES
                .iter()
                .position(|&reason| reason == self.reason);
            buf.put_u8(code.map_or(SERVER_UNAVAILABLE, |code| code as u8));
        }
    }
}

impl Properties for ConnAckProperties {
    fn accept(&mut self, id: u8, property: Property) -> Result<(), DecodeError> {
        match property {
            Property::SessionExpiryInterval(v) => once(&mut self.session_expiry_interval, id, v),
            Property::ReceiveMaximum(v) => once(&mut self.receive_maximum, id, v),
            Property::MaximumQoS(v) => once(&mut self.maximum_qos, id, v),
            Property::RetainAvailable(v) => once(&mut self.retain_available, id, v),
            Property::MaximumPacketSize(v) => once(&mut self.maximum_packet_size, id, v),
            Property::AssignedClientIdentifier(v) => {
                once(&mut self.assigned_client_identifier, id, v)
            }
            Property::TopicAliasMaximum(v) => once(&mut self.topic_alias_maximum, id, v),
            Property::ReasonString(v) => once(&mut self.reason_string, id, v),
            Property::WildcardSubscriptionAvailable(v) => {
                once(&mut self.wildcard_subscription_available, id, v)
            }
            Property::SubscriptionIdentifierAvailable(v) => {
                once(&mut self.subscription_identifiers_available, id, v)
            }
            Property::SharedSubscriptionAvailable(v) => {
                once(&mut self.shared_subscription_available, id, v)
            }
            Property::ServerKeepAlive(v) => once(&mut self.server_keep_alive, id, v),
            Property::ResponseInformation(v) => once(&mut self.response_information, id, v),
            Property::ServerReference(v) => once(&mut self.server_reference, id, v),
            Property::AuthenticationMethod(v) => once(&mut self.authentication_method, id, v),
            Property::AuthenticationData(v) => once(&mut self.authentication_data, id, v),
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
        emit(f, id::RECEIVE_MAXIMUM, self.receive_maximum.map(Value::Two));
        emit(f, id::MAXIMUM_QOS, self.maximum_qos);
        emit(f, id::RETAIN_AVAILABLE, self.retain_available);
        emit(
            f,
            id::MAXIMUM_PACKET_SIZE,
            self.maximum_packet_size.map(Value::Four),
        );
        emit(
            f,
            id::ASSIGNED_CLIENT_IDENTIFIER,
            self.assigned_client_identifier.as_ref(),
        );
        emit(
            f,
            id::TOPIC_ALIAS_MAXIMUM,
            self.topic_alias_maximum.map(Value::Two),
        );
        emit(f, id::REASON_STRING, self.reason_string.as_ref());
        emit_user_properties(f, &self.user_properties);
        emit(
            f,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        emit(
            f,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        );
        emit(
            f,
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        emit(
            f,
            id::SERVER_KEEP_ALIVE,
            self.server_keep_alive.map(Value::Two),
        );
        emit(
            f,
            id::RESPONSE_INFORMATION,
            self.response_information.as_ref(),
        );
        emit(f, id::SERVER_REFERENCE, self.server_reference.as_ref());
        emit(
            f,
            id::AUTHENTICATION_METHOD,
            self.authentication_method.as_ref(),
        );
        emit(
            f,
            id::AUTHENTICATION_DATA,
            self.authentication_data.as_ref(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::{decode, encode, roundtrip};
    use crate::protocol::{Packet, ProtocolVersion::*};

    fn connack(session_present: bool, reason: ReasonCode) -> Packet {
        Packet::ConnAck(Box::new(ConnAck {
            session_present,
            reason,
            properties: ConnAckProperties::default(),
        }))
    }

    #[test]
    fn v3_connack_bytes() {
        assert_eq!(
            roundtrip(&connack(true, ReasonCode::Success), V3_1_1),
            [0x20, 0x02, 0x01, 0x00]
        );
        assert_eq!(
            roundtrip(&connack(false, ReasonCode::NotAuthorized), V3_1_1),
            [0x20, 0x02, 0x00, 0x05]
        );
        assert_eq!(
            roundtrip(&connack(false, ReasonCode::BadUserNameOrPassword), V3_1),
            [0x20, 0x02, 0x00, 0x04]
        );
        // 3.1 has no session-present flag to set.
        assert_eq!(
            encode(&connack(true, ReasonCode::Success), V3_1),
            Ok(vec![0x20, 0x02, 0x00, 0x00])
        );
    }

    #[test]
    fn v5_reasons_map_onto_3_1_1_return_codes() {
        for (reason, code) in [
            (ReasonCode::Success, 0),
            (ReasonCode::UnsupportedProtocolVersion, 1),
            (ReasonCode::ClientIdentifierNotValid, 2),
            (ReasonCode::ServerUnavailable, 3),
            (ReasonCode::BadUserNameOrPassword, 4),
            (ReasonCode::NotAuthorized, 5),
            (ReasonCode::Banned, 3),
            (ReasonCode::ServerBusy, 3),
        ] {
            assert_eq!(
                encode(&connack(false, reason), V3_1_1),
                Ok(vec![0x20, 0x02, 0x00, code]),
                "{reason:?}"
            );
        }
        assert_eq!(
            decode(&[0x20, 0x02, 0x00, 0x06], V3_1_1),
            Err(DecodeError::InvalidReasonCode(6))
        );
    }

    #[test]
    fn v5_connack_bytes() {
        // The short answer to a v5 client on an unsupported level.
        assert_eq!(
            roundtrip(&connack(false, ReasonCode::UnsupportedProtocolVersion), V5),
            [0x20, 0x03, 0x00, 0x84, 0x00]
        );
        assert_eq!(
            decode(&[0x20, 0x03, 0x00, 0x04, 0x00], V5),
            Err(DecodeError::InvalidReasonCode(0x04))
        );
        assert_eq!(
            decode(&[0x20, 0x03, 0x02, 0x00, 0x00], V5),
            Err(DecodeError::Malformed("reserved CONNACK flags set"))
        );
    }

    #[test]
    fn v5_connack_with_every_property_round_trips() {
        let packet = Packet::ConnAck(Box::new(ConnAck {
            session_present: true,
            reason: ReasonCode::Success,
            properties: ConnAckProperties {
                session_expiry_interval: Some(0),
                receive_maximum: Some(100),
                maximum_qos: Some(QoS::AtLeastOnce),
                retain_available: Some(false),
                maximum_packet_size: Some(65_536),
                assigned_client_identifier: Some("auto-1".into()),
                topic_alias_maximum: Some(16),
                reason_string: Some("welcome".into()),
                user_properties: vec![("node".into(), "a".into())],
                wildcard_subscription_available: Some(true),
                subscription_identifiers_available: Some(true),
                shared_subscription_available: Some(false),
                server_keep_alive: Some(30),
                response_information: Some("resp/".into()),
                server_reference: Some("other:1883".into()),
                authentication_method: Some("SCRAM-SHA-1".into()),
                authentication_data: Some(Bytes::from_static(b"server-first")),
            },
        }));
        roundtrip(&packet, V5);
    }
}
