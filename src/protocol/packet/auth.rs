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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::{decode, encode, roundtrip};
    use crate::protocol::{Packet, ProtocolVersion::*};

    fn auth(reason: ReasonCode) -> Packet {
        Packet::Auth(Box::new(Auth {
            reason,
            properties: AuthProperties::default(),
        }))
    }

    #[test]
    fn auth_forms() {
        assert_eq!(roundtrip(&auth(ReasonCode::Success), V5), [0xF0, 0x00]);
        let continue_auth = auth(ReasonCode::ContinueAuthentication);
        assert_eq!(roundtrip(&continue_auth, V5), [0xF0, 0x02, 0x18, 0x00]);
        // Read leniently, like DISCONNECT's reason-only form.
        assert_eq!(decode(&[0xF0, 0x01, 0x18], V5), Ok(continue_auth));
        assert_eq!(
            decode(&[0xF0, 0x01, 0x01], V5),
            Err(DecodeError::InvalidReasonCode(0x01))
        );
        let with_properties = Packet::Auth(Box::new(Auth {
            reason: ReasonCode::ReAuthenticate,
            properties: AuthProperties {
                authentication_method: Some("SCRAM-SHA-1".into()),
                authentication_data: Some(Bytes::from_static(b"client-final")),
                reason_string: Some("again".into()),
                user_properties: vec![("k".into(), "v".into())],
            },
        }));
        roundtrip(&with_properties, V5);
    }

    #[test]
    fn auth_does_not_exist_before_v5() {
        for version in [V3_1, V3_1_1] {
            assert_eq!(
                decode(&[0xF0, 0x00], version),
                Err(DecodeError::Malformed("AUTH before MQTT 5"))
            );
            assert_eq!(
                encode(&auth(ReasonCode::Success), version),
                Err(EncodeError::NotInVersion(PacketType::Auth))
            );
        }
    }
}
