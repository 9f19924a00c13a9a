use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use super::UserProperties;
use crate::protocol::properties::{
    self, Properties, Property, Value, emit, emit_user_properties, id, once,
};
use crate::protocol::wire::{Reader, field_len, put_field};
use crate::protocol::{DecodeError, EncodeError, ProtocolVersion, QoS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    /// Never empty on a decoded packet (spec: protocol violation).
    pub filters: Vec<TopicSubscription>,
    pub properties: SubscribeProperties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSubscription {
    pub filter: ByteString,
    pub options: SubscriptionOptions,
}

/// The subscription options byte. At level 3/4 only `qos` is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    OnSubscribe = 0,
    /// Send them only if the subscription did not already exist.
    OnNewSubscribe = 1,
    DoNotSend = 2,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscribeProperties {
    /// 1..=268,435,455 when present.
    pub subscription_identifier: Option<u32>,
    pub user_properties: UserProperties,
}

impl Subscribe {
    pub(crate) fn read(r: &mut Reader, version: ProtocolVersion) -> Result<Subscribe, DecodeError> {
        let packet_id = r.packet_id()?;
        let properties = if version.is_v5() {
            properties::read(r)?
        } else {
            SubscribeProperties::default()
        };
        let mut filters = Vec::new();
        while r.remaining() > 0 {
            let filter = r.string()?;
            let options = SubscriptionOptions::from_byte(r.u8()?, version)?;
            filters.push(TopicSubscription { filter, options });
        }
        if filters.is_empty() {
            return Err(DecodeError::EmptySubscription);
        }
        Ok(Subscribe {
            packet_id,
            filters,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let mut len = 2;
        if version.is_v5() {
            len += properties::encoded_len(&self.properties)?;
        }
        for subscription in &self.filters {
            len += field_len(subscription.filter.as_bytes())? + 1;
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if version.is_v5() {
            properties::write(&self.properties, buf);
        }
        for subscription in &self.filters {
            put_field(buf, subscription.filter.as_bytes());
            buf.put_u8(subscription.options.to_byte(version));
        }
    }
}

impl SubscriptionOptions {
    /// Spec 3.8.3.1: reserved bits are malformed, checked before the fields
    /// they would otherwise be mistaken for.
    pub(crate) fn from_byte(
        byte: u8,
        version: ProtocolVersion,
    ) -> Result<SubscriptionOptions, DecodeError> {
        let reserved = if version.is_v5() {
            0b1100_0000
        } else {
            0b1111_1100
        };
        if byte & reserved != 0 {
            return Err(DecodeError::InvalidSubscriptionOptions(byte));
        }
        // Maximum QoS 3 is a Protocol Error (spec 3.8.3.1), unlike QoS 3 in
        // a fixed header, which is malformed: reported as options so that
        // it maps to 0x82.
        let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::InvalidSubscriptionOptions(byte))?;
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::OnSubscribe,
            1 => RetainHandling::OnNewSubscribe,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidSubscriptionOptions(byte)),
        };
        Ok(SubscriptionOptions {
            qos,
            no_local: byte & 0b0100 != 0,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling,
        })
    }

    pub(crate) fn to_byte(self, version: ProtocolVersion) -> u8 {
        let qos = self.qos as u8;
        if !version.is_v5() {
            return qos;
        }
        qos | (u8::from(self.no_local) << 2)
            | (u8::from(self.retain_as_published) << 3)
            | ((self.retain_handling as u8) << 4)
    }
}

impl Properties for SubscribeProperties {
    fn accept(&mut self, id: u8, property: Property) -> Result<(), DecodeError> {
        match property {
            Property::SubscriptionIdentifier(v) => once(&mut self.subscription_identifier, id, v),
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
            id::SUBSCRIPTION_IDENTIFIER,
            self.subscription_identifier.map(Value::Varint),
        );
        emit_user_properties(f, &self.user_properties);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::{decode, roundtrip};
    use crate::protocol::{Packet, ProtocolVersion::*};

    fn subscribe(options: SubscriptionOptions) -> Packet {
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![TopicSubscription {
                filter: "a/b".into(),
                options,
            }],
            properties: SubscribeProperties::default(),
        })
    }

    #[test]
    fn subscribe_bytes() {
        let at_least_once = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        };
        let wire = [0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'b', 0x01];
        assert_eq!(roundtrip(&subscribe(at_least_once), V3_1), wire);
        assert_eq!(roundtrip(&subscribe(at_least_once), V3_1_1), wire);

        let every_option = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        };
        let wire = [
            0x82, 0x09, 0x00, 0x01, 0x00, 0x00, 0x03, b'a', b'/', b'b', 0x2D,
        ];
        assert_eq!(roundtrip(&subscribe(every_option), V5), wire);
    }

    #[test]
    fn v5_subscribe_with_properties_round_trips() {
        let packet = Packet::Subscribe(Subscribe {
            packet_id: 9,
            filters: vec![
                TopicSubscription {
                    filter: "$share/g/a/+".into(),
                    options: SubscriptionOptions {
                        retain_handling: RetainHandling::OnNewSubscribe,
                        ..Default::default()
                    },
                },
                TopicSubscription {
                    filter: "#".into(),
                    options: SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        ..Default::default()
                    },
                },
            ],
            properties: SubscribeProperties {
                subscription_identifier: Some(268_435_455),
                user_properties: vec![("k".into(), "v".into())],
            },
        });
        roundtrip(&packet, V5);
    }

    fn with_options(options: u8, v5: bool) -> Vec<u8> {
        let mut bytes = vec![0x82, 0x06, 0x00, 0x01];
        if v5 {
            bytes[1] += 1;
            bytes.push(0x00);
        }
        bytes.extend_from_slice(&[0x00, 0x01, b'a', options]);
        bytes
    }

    #[test]
    fn subscription_options_are_checked() {
        let cases = [
            (0x40, V5, DecodeError::InvalidSubscriptionOptions(0x40)),
            (0x80, V5, DecodeError::InvalidSubscriptionOptions(0x80)),
            (0x30, V5, DecodeError::InvalidSubscriptionOptions(0x30)),
            (0x03, V5, DecodeError::InvalidSubscriptionOptions(0x03)),
            (0x04, V3_1_1, DecodeError::InvalidSubscriptionOptions(0x04)),
            (0x03, V3_1_1, DecodeError::InvalidSubscriptionOptions(0x03)),
        ];
        for (options, version, error) in cases {
            assert_eq!(
                decode(&with_options(options, version.is_v5()), version),
                Err(error),
                "{options:#x} at {version:?}"
            );
        }
    }

    #[test]
    fn subscribe_needs_an_id_and_a_filter() {
        assert_eq!(
            decode(&[0x82, 0x02, 0x00, 0x01], V3_1_1),
            Err(DecodeError::EmptySubscription)
        );
        assert_eq!(
            decode(&[0x82, 0x03, 0x00, 0x01, 0x00], V5),
            Err(DecodeError::EmptySubscription)
        );
        assert_eq!(
            decode(&[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00], V3_1_1),
            Err(DecodeError::ZeroPacketId)
        );
        // A filter without its options byte.
        assert_eq!(
            decode(&[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], V3_1_1),
            Err(DecodeError::Truncated)
        );
    }
}
