use bytes::{BufMut, BytesMut};
use bytestring::ByteString;

use super::UserProperties;
use crate::protocol::properties::{self, Properties, Property, Value, emit_user_properties};
use crate::protocol::wire::{Reader, field_len, put_field};
use crate::protocol::{DecodeError, EncodeError, ProtocolVersion};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    /// Never empty on a decoded packet.
    pub filters: Vec<ByteString>,
    pub properties: UnsubscribeProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubscribeProperties {
    pub user_properties: UserProperties,
}

impl Unsubscribe {
    pub(crate) fn read(
        r: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Unsubscribe, DecodeError> {
        let packet_id = r.packet_id()?;
        let properties = if version.is_v5() {
            properties::read(r)?
        } else {
            UnsubscribeProperties::default()
        };
        let mut filters = Vec::new();
        while r.remaining() > 0 {
            filters.push(r.string()?);
        }
        if filters.is_empty() {
            return Err(DecodeError::EmptySubscription);
        }
        Ok(Unsubscribe {
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
        for filter in &self.filters {
            len += field_len(filter.as_bytes())?;
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if version.is_v5() {
            properties::write(&self.properties, buf);
        }
        for filter in &self.filters {
            put_field(buf, filter.as_bytes());
        }
    }
}

impl Properties for UnsubscribeProperties {
    fn accept(&mut self, id: u8, property: Property) -> Result<(), DecodeError> {
        match property {
            Property::User(k, v) => {
                self.user_properties.push((k, v));
                Ok(())
            }
            _ => Err(DecodeError::UnexpectedProperty(id)),
        }
    }

    fn visit<'a>(&'a self, f: &mut impl FnMut(u8, Value<'a>)) {
        emit_user_properties(f, &self.user_properties);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::{decode, roundtrip};
    use crate::protocol::{Packet, ProtocolVersion::*};

    #[test]
    fn unsubscribe_bytes() {
        let packet = Packet::Unsubscribe(Unsubscribe {
            packet_id: 1,
            filters: vec!["a".into()],
            properties: UnsubscribeProperties::default(),
        });
        for version in [V3_1, V3_1_1] {
            assert_eq!(
                roundtrip(&packet, version),
                [0xA2, 0x05, 0x00, 0x01, 0x00, 0x01, b'a']
            );
        }
        assert_eq!(
            roundtrip(&packet, V5),
            [0xA2, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a']
        );
        let with_properties = Packet::Unsubscribe(Unsubscribe {
            packet_id: 3,
            filters: vec!["a/+".into(), "b/#".into()],
            properties: UnsubscribeProperties {
                user_properties: vec![("k".into(), "v".into())],
            },
        });
        roundtrip(&with_properties, V5);
    }

    #[test]
    fn unsubscribe_needs_a_filter() {
        assert_eq!(
            decode(&[0xA2, 0x02, 0x00, 0x01], V3_1_1),
            Err(DecodeError::EmptySubscription)
        );
        assert_eq!(
            decode(&[0xA2, 0x03, 0x00, 0x01, 0x00], V5),
            Err(DecodeError::EmptySubscription)
        );
        assert_eq!(
            decode(&[0xA2, 0x05, 0x00, 0x00, 0x00, 0x01, b'a'], V3_1_1),
            Err(DecodeError::ZeroPacketId)
        );
    }
}
