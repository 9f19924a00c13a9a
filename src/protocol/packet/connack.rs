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
