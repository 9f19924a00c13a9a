//! v5 properties (spec 2.2.2).
//!
//! One generic reader turns `id, value` pairs into typed [`Property`] values
//! and checks the values the spec constrains; each packet's properties struct
//! only says which properties it takes ([`Properties::accept`]) and lists the
//! ones it has ([`Properties::visit`]). Length and writing both walk that one
//! list, so they cannot disagree.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::wire::{MAX_FIELD_LEN, MAX_VARINT, Reader, put_field, put_varint, varint_len};
use super::{
    DecodeError, EncodeError, PubResponseProperties, QoS, ReasonCode, SubAckProperties,
    UnsubAckProperties, UserProperties,
};

/// Property identifiers (spec 2.2.2.2).
pub(crate) mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// One decoded property, its value already checked against the spec.
#[derive(Debug)]
pub(crate) enum Property {
    PayloadFormatIndicator(u8),
    MessageExpiryInterval(u32),
    ContentType(ByteString),
    ResponseTopic(ByteString),
    CorrelationData(Bytes),
    SubscriptionIdentifier(u32),
    SessionExpiryInterval(u32),
    AssignedClientIdentifier(ByteString),
    ServerKeepAlive(u16),
    AuthenticationMethod(ByteString),
    AuthenticationData(Bytes),
    RequestProblemInformation(bool),
    WillDelayInterval(u32),
    RequestResponseInformation(bool),
    ResponseInformation(ByteString),
    ServerReference(ByteString),
    ReasonString(ByteString),
    ReceiveMaximum(u16),
    TopicAliasMaximum(u16),
    TopicAlias(u16),
    MaximumQoS(QoS),
    RetainAvailable(bool),
    /// A User Property: key and value.
    User(ByteString, ByteString),
    MaximumPacketSize(u32),
    WildcardSubscriptionAvailable(bool),
    SubscriptionIdentifierAvailable(bool),
    SharedSubscriptionAvailable(bool),
}

impl Property {
    fn read(id: u8, r: &mut Reader) -> Result<Property, DecodeError> {
        use Property as P;
        use id::*;
        Ok(match id {
            PAYLOAD_FORMAT_INDICATOR => P::PayloadFormatIndicator(u8::from(flag(id, r)?)),
            MESSAGE_EXPIRY_INTERVAL => P::MessageExpiryInterval(r.u32()?),
            CONTENT_TYPE => P::ContentType(r.string()?),
            RESPONSE_TOPIC => P::ResponseTopic(r.string()?),
            CORRELATION_DATA => P::CorrelationData(r.binary()?),
            SUBSCRIPTION_IDENTIFIER => match r.varint()? {
                0 => return Err(DecodeError::InvalidPropertyValue(id)),
                // A varint holds at most 28 bits, so this always fits.
                value => P::SubscriptionIdentifier(value as u32),
            },
            SESSION_EXPIRY_INTERVAL => P::SessionExpiryInterval(r.u32()?),
            ASSIGNED_CLIENT_IDENTIFIER => P::AssignedClientIdentifier(r.string()?),
            SERVER_KEEP_ALIVE => P::ServerKeepAlive(r.u16()?),
            AUTHENTICATION_METHOD => P::AuthenticationMethod(r.string()?),
            AUTHENTICATION_DATA => P::AuthenticationData(r.binary()?),
            REQUEST_PROBLEM_INFORMATION => P::RequestProblemInformation(flag(id, r)?),
            WILL_DELAY_INTERVAL => P::WillDelayInterval(r.u32()?),
            REQUEST_RESPONSE_INFORMATION => P::RequestResponseInformation(flag(id, r)?),
            RESPONSE_INFORMATION => P::ResponseInformation(r.string()?),
            SERVER_REFERENCE => P::ServerReference(r.string()?),
            REASON_STRING => P::ReasonString(r.string()?),
            RECEIVE_MAXIMUM => match r.u16()? {
                0 => return Err(DecodeError::InvalidPropertyValue(id)),
                value => P::ReceiveMaximum(value),
            },
            TOPIC_ALIAS_MAXIMUM => P::TopicAliasMaximum(r.u16()?),
            // Alias 0 and aliases above the negotiated maximum are the
            // session's to reject: it knows the maximum.
            TOPIC_ALIAS => P::TopicAlias(r.u16()?),
            MAXIMUM_QOS => P::MaximumQoS(if flag(id, r)? {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            }),
            RETAIN_AVAILABLE => P::RetainAvailable(flag(id, r)?),
            USER_PROPERTY => P::User(r.string()?, r.string()?),
            MAXIMUM_PACKET_SIZE => match r.u32()? {
                0 => return Err(DecodeError::InvalidPropertyValue(id)),
                value => P::MaximumPacketSize(value),
            },
            WILDCARD_SUBSCRIPTION_AVAILABLE => P::WildcardSubscriptionAvailable(flag(id, r)?),
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => P::SubscriptionIdentifierAvailable(flag(id, r)?),
            SHARED_SUBSCRIPTION_AVAILABLE => P::SharedSubscriptionAvailable(flag(id, r)?),
            _ => return Err(DecodeError::InvalidPropertyId(id)),
        })
    }
}

/// A byte the spec allows only as 0 or 1.
fn flag(id: u8, r: &mut Reader) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidPropertyValue(id)),
    }
}

/// A property value as written, borrowed from the properties struct.
pub(crate) enum Value<'a> {
    Byte(u8),
    Two(u16),
    Four(u32),
    Varint(u32),
    Str(&'a str),
    Binary(&'a [u8]),
    Pair(&'a str, &'a str),
}

impl From<bool> for Value<'_> {
    fn from(value: bool) -> Self {
        Value::Byte(u8::from(value))
    }
}

impl From<QoS> for Value<'_> {
    fn from(value: QoS) -> Self {
        Value::Byte(value as u8)
    }
}

impl<'a> From<&'a ByteString> for Value<'a> {
    fn from(value: &'a ByteString) -> Self {
        Value::Str(value)
    }
}

impl<'a> From<&'a Bytes> for Value<'a> {
    fn from(value: &'a Bytes) -> Self {
        Value::Binary(value)
    }
}

/// The properties one packet (or a CONNECT's will) may carry.
pub(crate) trait Properties: Default {
    /// Takes one decoded property; anything this packet does not allow, or a
    /// repeat of a single-valued property, is a [`DecodeError::UnexpectedProperty`].
    fn accept(&mut self, id: u8, property: Property) -> Result<(), DecodeError>;

    /// Hands every present property to `f`, in the order they are written.
    fn visit<'a>(&'a self, f: &mut impl FnMut(u8, Value<'a>));
}

/// Stores a single-valued property, refusing a second one (spec: "It is a
/// Protocol Error to include ... more than once").
pub(crate) fn once<T>(slot: &mut Option<T>, id: u8, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::UnexpectedProperty(id));
    }
    *slot = Some(value);
    Ok(())
}

/// Visits an optional property.
pub(crate) fn emit<'a, T: Into<Value<'a>>>(
    f: &mut impl FnMut(u8, Value<'a>),
    id: u8,
    value: Option<T>,
) {
    if let Some(value) = value {
        f(id, value.into());
    }
}

pub(crate) fn emit_user_properties<'a>(
    f: &mut impl FnMut(u8, Value<'a>),
    pairs: &'a UserProperties,
) {
    for (key, value) in pairs {
        f(id::USER_PROPERTY, Value::Pair(key, value));
    }
}

/// Reads a property length and the properties it covers.
pub(crate) fn read<P: Properties>(r: &mut Reader) -> Result<P, DecodeError> {
    let len = r.varint()?;
    if len > r.remaining() {
        return Err(DecodeError::Truncated);
    }
    let mut properties = P::default();
    // Tracking the end instead of splitting off a sub-buffer keeps the common
    // empty case free of refcount traffic.
    let end = r.remaining() - len;
    while r.remaining() > end {
        let id = r.u8()?;
        let property = Property::read(id, r)?;
        properties.accept(id, property)?;
    }
    if r.remaining() != end {
        return Err(DecodeError::Malformed(
            "property runs past the property length",
        ));
    }
    Ok(properties)
}

/// Walks the properties once for their length after the property length,
/// and whether every value fits its length prefix or, for a subscription
/// identifier, its variable byte integer.
fn measure<P: Properties>(properties: &P) -> (usize, bool) {
    let mut len = 0;
    let mut fits = true;
    properties.visit(&mut |_, value| {
        let (value_len, value_fits) = match value {
            Value::Byte(_) => (1, true),
            Value::Two(_) => (2, true),
            Value::Four(_) => (4, true),
            Value::Varint(v) => (varint_len(v as usize), v as usize <= MAX_VARINT),
            Value::Str(s) => (2 + s.len(), s.len() <= MAX_FIELD_LEN),
            Value::Binary(b) => (2 + b.len(), b.len() <= MAX_FIELD_LEN),
            Value::Pair(k, v) => (4 + k.len() + v.len(), k.len().max(v.len()) <= MAX_FIELD_LEN),
        };
        len += 1 + value_len;
        fits &= value_fits;
    });
    (len, fits)
}

/// The bytes the properties take after the property length. Checking every
/// field here is what lets [`write()`] be infallible.
pub(crate) fn content_len<P: Properties>(properties: &P) -> Result<usize, EncodeError> {
    match measure(properties) {
        (len, true) => Ok(len),
        (_, false) => Err(EncodeError::FieldTooLong),
    }
}

/// The property length plus the properties.
pub(crate) fn encoded_len<P: Properties>(properties: &P) -> Result<usize, EncodeError> {
    let len = content_len(properties)?;
    Ok(varint_len(len) + len)
}

/// Writes properties whose [`encoded_len`] was accepted.
pub(crate) fn write<P: Properties>(properties: &P, buf: &mut BytesMut) {
    put_varint(buf, measure(properties).0);
    properties.visit(&mut |id, value| {
        buf.put_u8(id);
        match value {
            Value::Byte(v) => buf.put_u8(v),
            Value::Two(v) => buf.put_u16(v),
            Value::Four(v) => buf.put_u32(v),
            Value::Varint(v) => put_varint(buf, v as usize),
            Value::Str(s) => put_field(buf, s.as_bytes()),
            Value::Binary(b) => put_field(buf, b),
            Value::Pair(k, v) => {
                put_field(buf, k.as_bytes());
                put_field(buf, v.as_bytes());
            }
        }
    });
}

/// The v5 tail of PUBACK to PUBCOMP, DISCONNECT and AUTH: a reason code then
/// properties, where the packet may end before either (spec 3.4.2.1,
/// 3.14.2.1): no reason means Success, no property length means none.
pub(crate) fn read_reason_tail<P: Properties>(
    r: &mut Reader,
    valid: &[ReasonCode],
) -> Result<(ReasonCode, P), DecodeError> {
    if r.remaining() == 0 {
        return Ok((ReasonCode::Success, P::default()));
    }
    let reason = r.reason_code(valid)?;
    if r.remaining() == 0 {
        return Ok((reason, P::default()));
    }
    Ok((reason, read(r)?))
}

/// The shortest form [`read_reason_tail`] reads back as the same values.
pub(crate) fn reason_tail_len<P: Properties>(
    reason: ReasonCode,
    properties: &P,
) -> Result<usize, EncodeError> {
    Ok(match content_len(properties)? {
        0 if reason == ReasonCode::Success => 0,
        0 => 1,
        len => 1 + varint_len(len) + len,
    })
}

/// Writes a tail whose [`reason_tail_len`] was accepted.
pub(crate) fn write_reason_tail<P: Properties>(
    reason: ReasonCode,
    properties: &P,
    buf: &mut BytesMut,
) {
    match measure(properties).0 {
        0 if reason == ReasonCode::Success => {}
        0 => buf.put_u8(reason as u8),
        _ => {
            buf.put_u8(reason as u8);
            write(properties, buf);
        }
    }
}

/// The acknowledgements (PUBACK to PUBCOMP, SUBACK, UNSUBACK) all carry the
/// same two properties in structs of their own.
macro_rules! reason_properties {
    ($($properties:ty),*) => {$(
        impl Properties for $properties {
            fn accept(&mut self, id: u8, property: Property) -> Result<(), DecodeError> {
                match property {
                    Property::ReasonString(v) => once(&mut self.reason_string, id, v),
                    Property::User(k, v) => {
                        self.user_properties.push((k, v));
                        Ok(())
                    }
                    _ => Err(DecodeError::UnexpectedProperty(id)),
                }
            }

            fn visit<'a>(&'a self, f: &mut impl FnMut(u8, Value<'a>)) {
                emit(f, id::REASON_STRING, self.reason_string.as_ref());
                emit_user_properties(f, &self.user_properties);
            }
        }
    )*};
}

reason_properties!(PubResponseProperties, SubAckProperties, UnsubAckProperties);

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::tests::encode;
    use crate::protocol::{
        ConnAckProperties, Packet, ProtocolVersion, PublishProperties, SubscribeProperties,
        UnsubAck,
    };

    fn parse<P: Properties>(bytes: &'static [u8]) -> Result<P, DecodeError> {
        let mut r = Reader::new(Bytes::from_static(bytes));
        let properties = read(&mut r)?;
        r.finish()?;
        Ok(properties)
    }

    #[test]
    fn unknown_identifiers_are_malformed() {
        for id in [0x00, 0x04, 0x2B, 0x7F, 0x80] {
            let bytes: &'static [u8] = Box::leak(Box::new([0x02, id, 0x00]));
            assert_eq!(
                parse::<ConnAckProperties>(bytes),
                Err(DecodeError::InvalidPropertyId(id))
            );
        }
    }

    #[test]
    fn a_property_must_belong_to_the_packet_and_appear_once() {
        assert_eq!(
            parse::<SubscribeProperties>(&[0x03, 0x23, 0x00, 0x01]),
            Err(DecodeError::UnexpectedProperty(id::TOPIC_ALIAS))
        );
        assert_eq!(
            parse::<PubResponseProperties>(&[0x06, 0x1F, 0x00, 0x00, 0x1F, 0x00, 0x00]),
            Err(DecodeError::UnexpectedProperty(id::REASON_STRING))
        );
        assert_eq!(
            parse::<SubscribeProperties>(&[0x04, 0x0B, 0x01, 0x0B, 0x02]),
            Err(DecodeError::UnexpectedProperty(id::SUBSCRIPTION_IDENTIFIER))
        );
    }

    #[test]
    fn user_properties_and_publish_subscription_identifiers_repeat_in_order() {
        let properties = parse::<PublishProperties>(&[
            0x12, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'2', 0x0B, 0x05, 0x26, 0x00, 0x01, b'k',
            0x00, 0x01, b'1', 0x0B, 0x01,
        ])
        .unwrap();
        assert_eq!(
            properties.user_properties,
            [("k".into(), "2".into()), ("k".into(), "1".into())]
        );
        assert_eq!(properties.subscription_identifiers, [5, 1]);
    }

    #[test]
    fn values_the_spec_forbids_are_refused() {
        let cases: [(&'static [u8], u8); 7] = [
            (&[0x03, 0x21, 0x00, 0x00], id::RECEIVE_MAXIMUM),
            (
                &[0x05, 0x27, 0x00, 0x00, 0x00, 0x00],
                id::MAXIMUM_PACKET_SIZE,
            ),
            (&[0x02, 0x24, 0x02], id::MAXIMUM_QOS),
            (&[0x02, 0x25, 0x02], id::RETAIN_AVAILABLE),
            (&[0x02, 0x28, 0xFF], id::WILDCARD_SUBSCRIPTION_AVAILABLE),
            (&[0x02, 0x29, 0x02], id::SUBSCRIPTION_IDENTIFIER_AVAILABLE),
            (&[0x02, 0x2A, 0x02], id::SHARED_SUBSCRIPTION_AVAILABLE),
        ];
        for (bytes, id) in cases {
            assert_eq!(
                parse::<ConnAckProperties>(bytes),
                Err(DecodeError::InvalidPropertyValue(id))
            );
        }
        assert_eq!(
            parse::<PublishProperties>(&[0x02, 0x01, 0x02]),
            Err(DecodeError::InvalidPropertyValue(
                id::PAYLOAD_FORMAT_INDICATOR
            ))
        );
        assert_eq!(
            parse::<PublishProperties>(&[0x02, 0x0B, 0x00]),
            Err(DecodeError::InvalidPropertyValue(
                id::SUBSCRIPTION_IDENTIFIER
            ))
        );
    }

    #[test]
    fn properties_stay_within_their_length() {
        // Receive Maximum needs two bytes; the property length gives it one.
        assert_eq!(
            parse::<ConnAckProperties>(&[0x02, 0x21, 0x00, 0x05]),
            Err(DecodeError::Malformed(
                "property runs past the property length"
            ))
        );
        assert_eq!(
            parse::<ConnAckProperties>(&[0x05, 0x21, 0x00]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            parse::<ConnAckProperties>(&[0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(DecodeError::Malformed(
                "variable byte integer longer than 4 bytes"
            ))
        );
    }

    #[test]
    fn values_too_long_for_their_encoding_are_refused() {
        let v5 = ProtocolVersion::V5;
        let mut unsuback = UnsubAck {
            packet_id: 1,
            reasons: Vec::new(),
            properties: Default::default(),
        };
        unsuback.properties.user_properties = vec![("k".into(), "v".repeat(65_536).into())];
        assert_eq!(
            encode(&Packet::UnsubAck(Box::new(unsuback)), v5),
            Err(EncodeError::FieldTooLong)
        );
        let mut publish = crate::protocol::Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            packet_id: 0,
            properties: Default::default(),
            payload: Bytes::new(),
        };
        publish.properties.subscription_identifiers = vec![MAX_VARINT as u32 + 1];
        assert_eq!(
            encode(&Packet::Publish(publish), v5),
            Err(EncodeError::FieldTooLong)
        );
    }
}
