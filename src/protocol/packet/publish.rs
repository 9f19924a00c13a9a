use std::fmt;
use std::ops::{Deref, DerefMut};

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::UserProperties;
use crate::protocol::properties::{
    self, Properties, Property, Value, emit, emit_user_properties, id, once,
};
use crate::protocol::wire::{Reader, field_len, put_field};
use crate::protocol::{DecodeError, EncodeError, ProtocolVersion, QoS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty in v5 when a topic alias stands in for it.
    pub topic: ByteString,
    /// 0 for QoS 0 (not on the wire); non-zero otherwise.
    pub packet_id: u16,
    pub properties: LazyPublishProperties,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishProperties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub topic_alias: Option<u16>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: UserProperties,
    /// Server to client only; one per matching subscription.
    pub subscription_identifiers: Vec<u32>,
    pub content_type: Option<ByteString>,
}

/// The properties nobody set, for [`LazyPublishProperties`] to read as.
static NO_PUBLISH_PROPERTIES: PublishProperties = PublishProperties {
    payload_format_indicator: None,
    message_expiry_interval: None,
    topic_alias: None,
    response_topic: None,
    correlation_data: None,
    user_properties: Vec::new(),
    subscription_identifiers: Vec::new(),
    content_type: None,
};

/// [`PublishProperties`] at the cost of one pointer while they are empty,
/// as they always are below v5 and almost always are on the hot path.
///
/// Inline, the 160 bytes of properties made a `Publish` 232 bytes and every
/// `Packet` 264; moving packets by value (decode, `handle_packet`,
/// `poll_transmit`, the control queue) was the broker's top user-space
/// symbol in a QoS 1 profile, `memmove` at 7.3% of its CPU.
///
/// Reads go through `Deref`, to a shared empty value when there are none.
/// The first mutable access allocates, so code on the hot path that may
/// find nothing to change uses [`LazyPublishProperties::get_mut`] instead.
/// Equality compares contents: empty and boxed-but-empty are equal.
#[derive(Clone, Default)]
pub struct LazyPublishProperties(Option<Box<PublishProperties>>);

impl LazyPublishProperties {
    /// The properties, if any were ever set; never allocates.
    pub fn get_mut(&mut self) -> Option<&mut PublishProperties> {
        self.0.as_deref_mut()
    }
}

impl From<PublishProperties> for LazyPublishProperties {
    /// Allocates only for properties that are not all empty.
    fn from(properties: PublishProperties) -> Self {
        if properties == NO_PUBLISH_PROPERTIES {
            LazyPublishProperties(None)
        } else {
            LazyPublishProperties(Some(Box::new(properties)))
        }
    }
}

impl Deref for LazyPublishProperties {
    type Target = PublishProperties;

    fn deref(&self) -> &PublishProperties {
        self.0.as_deref().unwrap_or(&NO_PUBLISH_PROPERTIES)
    }
}

impl DerefMut for LazyPublishProperties {
    fn deref_mut(&mut self) -> &mut PublishProperties {
        self.0.get_or_insert_default()
    }
}

impl PartialEq for LazyPublishProperties {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for LazyPublishProperties {}

impl fmt::Debug for LazyPublishProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl Publish {
    /// The hot path: a PUBLISH without properties (every one below v5)
    /// decodes without allocating; topic and payload are slices of the frame.
    // Inlining lets the caller build the PUBLISH in place instead of moving
    // it through each return: ~15% of a 256-byte PUBLISH read, measured
    // when it was a 232-byte struct.
    #[inline]
    pub(crate) fn read(
        flags: u8,
        r: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Publish, DecodeError> {
        let dup = flags & 0b1000 != 0;
        let qos_bits = (flags >> 1) & 0b11;
        let qos = QoS::from_u8(qos_bits).ok_or(DecodeError::InvalidQoS(qos_bits))?;
        // MQTT-3.3.1-2 (3.1.1 and 5.0). MQTT 3.1 has no such rule, and old
        // clients are not refused for it.
        if dup && qos == QoS::AtMostOnce && version != ProtocolVersion::V3_1 {
            return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"));
        }
        let topic = r.string()?;
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            r.packet_id()?
        };
        let properties = if version.is_v5() {
            properties::read(r)?
        } else {
            LazyPublishProperties::default()
        };
        Ok(Publish {
            dup,
            qos,
            retain: flags & 0b0001 != 0,
            topic,
            packet_id,
            properties,
            payload: r.rest(),
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let mut len = field_len(self.topic.as_bytes())? + self.payload.len();
        if self.qos != QoS::AtMostOnce {
            len += 2;
        }
        if version.is_v5() {
            len += properties::encoded_len(&self.properties)?;
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        put_field(buf, self.topic.as_bytes());
        if self.qos != QoS::AtMostOnce {
            buf.put_u16(self.packet_id);
        }
        if version.is_v5() {
            properties::write(&self.properties, buf);
        }
        buf.put_slice(&self.payload);
    }
}

impl Properties for PublishProperties {
    fn accept(&mut self, id: u8, property: Property) -> Result<(), DecodeError> {
        match property {
            Property::PayloadFormatIndicator(v) => once(&mut self.payload_format_indicator, id, v),
            Property::MessageExpiryInterval(v) => once(&mut self.message_expiry_interval, id, v),
            Property::TopicAlias(v) => once(&mut self.topic_alias, id, v),
            Property::ResponseTopic(v) => once(&mut self.response_topic, id, v),
            Property::CorrelationData(v) => once(&mut self.correlation_data, id, v),
            Property::ContentType(v) => once(&mut self.content_type, id, v),
            Property::SubscriptionIdentifier(v) => {
                self.subscription_identifiers.push(v);
                Ok(())
            }
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
            id::PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator.map(Value::Byte),
        );
        emit(
            f,
            id::MESSAGE_EXPIRY_INTERVAL,
            self.message_expiry_interval.map(Value::Four),
        );
        emit(f, id::TOPIC_ALIAS, self.topic_alias.map(Value::Two));
        emit(f, id::RESPONSE_TOPIC, self.response_topic.as_ref());
        emit(f, id::CORRELATION_DATA, self.correlation_data.as_ref());
        emit_user_properties(f, &self.user_properties);
        for &subscription_identifier in &self.subscription_identifiers {
            f(
                id::SUBSCRIPTION_IDENTIFIER,
                Value::Varint(subscription_identifier),
            );
        }
        emit(f, id::CONTENT_TYPE, self.content_type.as_ref());
    }
}

/// Decoding through this allocates on the first property read, so an empty
/// property length allocates nothing.
impl Properties for LazyPublishProperties {
    fn accept(&mut self, id: u8, property: Property) -> Result<(), DecodeError> {
        (**self).accept(id, property)
    }

    fn visit<'a>(&'a self, f: &mut impl FnMut(u8, Value<'a>)) {
        if let Some(properties) = &self.0 {
            properties.visit(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::{decode, roundtrip};
    use crate::protocol::{Packet, ProtocolVersion::*};

    fn publish(qos: QoS, packet_id: u16, payload: &'static [u8]) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: "a/b".into(),
            packet_id,
            properties: LazyPublishProperties::default(),
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn publish_bytes_at_every_version() {
        let qos1 = Packet::Publish(publish(QoS::AtLeastOnce, 10, b"hi"));
        let wire = [
            0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i',
        ];
        assert_eq!(roundtrip(&qos1, V3_1), wire);
        assert_eq!(roundtrip(&qos1, V3_1_1), wire);

        let retained = Packet::Publish(Publish {
            retain: true,
            ..publish(QoS::AtMostOnce, 0, b"hi")
        });
        let wire = [0x31, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'];
        assert_eq!(roundtrip(&retained, V3_1_1), wire);

        // v5 adds an empty property length before the payload.
        let wire = [0x31, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0x00, b'h', b'i'];
        assert_eq!(roundtrip(&retained, V5), wire);

        let dup = Packet::Publish(Publish {
            dup: true,
            ..publish(QoS::ExactlyOnce, 1, b"")
        });
        assert_eq!(roundtrip(&dup, V5)[0], 0x3C);
    }

    #[test]
    fn v5_publish_with_every_property_round_trips() {
        let packet = Packet::Publish(Publish {
            // A topic alias may stand in for the topic.
            topic: "".into(),
            properties: PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                topic_alias: Some(3),
                response_topic: Some("reply/to".into()),
                correlation_data: Some(Bytes::from_static(b"\xFF\x00")),
                user_properties: vec![("b".into(), "2".into()), ("a".into(), "1".into())],
                subscription_identifiers: vec![1, 268_435_455],
                content_type: Some("application/json".into()),
            }
            .into(),
            ..publish(QoS::AtLeastOnce, 65_535, b"{}")
        });
        roundtrip(&packet, V5);
    }

    #[test]
    fn properties_compare_by_contents_however_stored() {
        let mut touched = LazyPublishProperties::default();
        touched.user_properties.clear();
        assert!(touched.get_mut().is_some(), "mutable access allocates");
        assert_eq!(touched, LazyPublishProperties::default());
        assert_eq!(
            LazyPublishProperties::from(PublishProperties::default()).get_mut(),
            None,
            "empty properties are not boxed"
        );
        touched.topic_alias = Some(1);
        assert_ne!(touched, LazyPublishProperties::default());
    }

    #[test]
    fn publish_rules() {
        assert_eq!(
            decode(&[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00], V3_1_1),
            Err(DecodeError::ZeroPacketId)
        );
        let dup_at_most_once = [0x38, 0x03, 0x00, 0x01, b'a'];
        for version in [V3_1_1, V5] {
            assert_eq!(
                decode(&dup_at_most_once, version),
                Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"))
            );
        }
        let Ok(Packet::Publish(old)) = decode(&dup_at_most_once, V3_1) else {
            panic!("3.1 tolerates DUP on QoS 0");
        };
        assert!(old.dup);
        // Session Expiry belongs to CONNECT, CONNACK and DISCONNECT.
        assert_eq!(
            decode(
                &[
                    0x30, 0x09, 0x00, 0x01, b'a', 0x05, 0x11, 0x00, 0x00, 0x00, 0x01
                ],
                V5
            ),
            Err(DecodeError::UnexpectedProperty(id::SESSION_EXPIRY_INTERVAL))
        );
    }
}
