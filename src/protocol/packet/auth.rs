use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::UserProperties;
use crate::protocol::properties::{
    self, Properties, Property, Value, emit, emit_user_properties, id, once,
};
use crate::protocol::wire::Reader;
use crate::protocol::{DecodeError, EncodeError, PacketType, ProtocolVersion, ReasonCode};

/// v5 only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: AuthProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthProperties {
    pub authentication_method: Option<ByteString>,
    pub authentication_data: Option<Bytes>,
    pub reason_string: Option<ByteString>,
    pub user_properties: UserProperties,
}

/// Spec 3.15.2.1.
pub(crate) const AUTH_REASONS: &[ReasonCode] = &[
    ReasonCode::Success,
    ReasonCode::ContinueAuthentication,
    ReasonCode::ReAuthenticate,
];

impl Auth {
    /// Before v5 packet type 15 is reserved (3.1.1 section 2.2.1).
    pub(crate) fn read(r: &mut Reader, version: ProtocolVersion) -> Result<Auth, DecodeError> {
        if !version.is_v5() {
            return Err(DecodeError::Malformed("AUTH before MQTT 5"));
        }
        let (reason, properties) = properties::read_reason_tail(r, AUTH_REASONS)?;
        Ok(Auth { reason, properties })
    }

    /// Unlike DISCONNECT, the spec only lets AUTH drop the reason code and
    /// the property length together (spec 3.15.2.1), so there is no
    /// reason-only form.
    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if !version.is_v5() {
            return Err(EncodeError::NotInVersion(PacketType::Auth));
        }
        if self.is_short() {
            return Ok(0);
        }
        Ok(1 + properties::encoded_len(&self.properties)?)
    }

    pub(crate) fn write_body(&self, buf: &mut BytesMut) {
        if self.is_short() {
            return;
        }
        buf.put_u8(self.reason as u8);
        properties::write(&self.properties, buf)
    }

    fn is_short(&self) -> bool {
        self.reason == ReasonCode::Success && self.properties == AuthProperties::default()
    }
}

impl Properties for AuthProperties {
    fn accept(&mut self, id: u8, property: Property) -> Result<(), DecodeError> {
        match property {
            Property::AuthenticationMethod(v) => once(&mut self.authentication_method, id, v),
            Property::AuthenticationData(v) => once(&mut self.authentication_data, id, v),
            Property::ReasonString(v) => once(&mut self.reason_string, id, v),
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
            id::AUTHENTICATION_METHOD,
            self.authentication_method.as_ref(),
        );
        emit(
            f,
            id::AUTHENTICATION_DATA,
            self.authentication_data.as_ref(),
        );
        emit(f, id::REASON_STRING, self.reason_string.as_ref());
        emit_user_properties(f, &self.user_properties);
    }
}
