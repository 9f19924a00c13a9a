use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::UserProperties;
use crate::protocol::properties::{
    self, Properties, Property, Value, emit, emit_user_properties, id, once,
};
use crate::protocol::wire::{Reader, field_len, put_field};
use crate::protocol::{DecodeError, EncodeError, ProtocolVersion, QoS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    /// 3.1.1 "Clean Session" / v5 "Clean Start".
    pub clean_start: bool,
    /// Seconds; 0 disables keep-alive.
    pub keep_alive: u16,
    /// May be empty: the server then assigns one (v5) or rejects it (3.1.1
    /// without clean session).
    pub client_id: ByteString,
    pub will: Option<LastWill>,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
    pub properties: ConnectProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    pub request_response_information: Option<bool>,
    pub request_problem_information: Option<bool>,
    pub user_properties: UserProperties,
    pub authentication_method: Option<ByteString>,
    pub authentication_data: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: WillProperties,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WillProperties {
    pub will_delay_interval: Option<u32>,
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<ByteString>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: UserProperties,
}

/// CONNECT flag bits (spec 3.1.2.3).
const RESERVED: u8 = 0x01;
const CLEAN_START: u8 = 0x02;
const WILL: u8 = 0x04;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD: u8 = 0x40;
const USERNAME: u8 = 0x80;

impl Connect {
    /// The protocol name and level come first and are checked first, so a
    /// client speaking an unsupported level gets its CONNACK even if the
    /// rest of its CONNECT means something else in its version.
    pub(crate) fn read(r: &mut Reader) -> Result<Connect, DecodeError> {
        let name = r.binary()?;
        let level = r.u8()?;
        let protocol = match (&name[..], level) {
            (b"MQIsdp", 3) => ProtocolVersion::V3_1,
            (b"MQTT", 4) => ProtocolVersion::V3_1_1,
            (b"MQTT", 5) => ProtocolVersion::V5,
            (b"MQIsdp" | b"MQTT", _) => return Err(DecodeError::UnsupportedProtocolLevel(level)),
            _ => return Err(DecodeError::InvalidProtocolName),
        };

        let flags = r.u8()?;
        if flags & RESERVED != 0 {
            return Err(DecodeError::ConnectReservedFlag);
        }
        let will_qos_bits = (flags >> WILL_QOS_SHIFT) & 0b11;
        let will_qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::InvalidQoS(will_qos_bits))?;
        let will_retain = flags & WILL_RETAIN != 0;
        if flags & WILL == 0 && (will_qos != QoS::AtMostOnce || will_retain) {
            return Err(DecodeError::Malformed(
                "will QoS or retain set without a will",
            ));
        }
        // MQTT-3.1.2-22; v5 dropped the rule so a password can carry a token.
        if flags & PASSWORD != 0 && flags & USERNAME == 0 && !protocol.is_v5() {
            return Err(DecodeError::Malformed("password without a user name"));
        }

        let keep_alive = r.u16()?;
        let properties: ConnectProperties = if protocol.is_v5() {
            properties::read(r)?
        } else {
            Default::default()
        };
        if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
            return Err(DecodeError::UnexpectedProperty(id::AUTHENTICATION_DATA));
        }
        let client_id = r.string()?;
        let will = if flags & WILL != 0 {
            let properties = if protocol.is_v5() {
                properties::read(r)?
            } else {
                WillProperties::default()
            };
            let topic = r.string()?;
            let payload = r.binary()?;
            Some(LastWill {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if flags & USERNAME != 0 {
            Some(r.string()?)
        } else {
            None
        };
        let password = if flags & PASSWORD != 0 {
            Some(r.binary()?)
        } else {
            None
        };
        Ok(Connect {
            protocol,
            clean_start: flags & CLEAN_START != 0,
            keep_alive,
            client_id,
            will,
            username,
            password,
            properties,
        })
    }

    /// Written at `self.protocol`, whatever the connection's version: a
    /// CONNECT is what chooses it.
    pub(crate) fn body_len(&self) -> Result<usize, EncodeError> {
        let v5 = self.protocol.is_v5();
        // Protocol name, level, flags, keep alive.
        let mut len = field_len(protocol_name(self.protocol))? + 1 + 1 + 2;
        if v5 {
            len += properties::encoded_len(&self.properties)?;
        }
        len += field_len(self.client_id.as_bytes())?;
        if let Some(will) = &self.will {
            if v5 {
                len += properties::encoded_len(&will.properties)?;
            }
            len += field_len(will.topic.as_bytes())? + field_len(&will.payload)?;
        }
        if let Some(username) = &self.username {
            len += field_len(username.as_bytes())?;
        }
        if let Some(password) = &self.password {
            len += field_len(password)?;
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, buf: &mut BytesMut) {
        let v5 = self.protocol.is_v5();
        put_field(buf, protocol_name(self.protocol));
        buf.put_u8(self.protocol.level());
        buf.put_u8(self.flags());
        buf.put_u16(self.keep_alive);
        if v5 {
            properties::write(&self.properties, buf);
        }
        put_field(buf, self.client_id.as_bytes());
        if let Some(will) = &self.will {
            if v5 {
                properties::write(&will.properties, buf);
            }
            put_field(buf, will.topic.as_bytes());
            put_field(buf, &will.payload);
        }
        if let Some(username) = &self.username {
            put_field(buf, username.as_bytes());
        }
        if let Some(password) = &self.password {
            put_field(buf, password);
        }
    }

    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.clean_start {
            flags |= CLEAN_START;
        }
        if let Some(will) = &self.will {
            flags |= WILL | ((will.qos as u8) << WILL_QOS_SHIFT);
            if will.retain {
                flags |= WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            flags |= USERNAME;
        }
        if self.password.is_some() {
            flags |= PASSWORD;
        }
        flags
    }
}

fn protocol_name(version: ProtocolVersion) -> &'static [u8] {
    match version {
        ProtocolVersion::V3_1 => b"MQIsdp",
        ProtocolVersion::V3_1_1 | ProtocolVersion::V5 => b"MQTT",
    }
}

impl Properties for ConnectProperties {
    fn accept(&mut self, id: u8, property: Property) -> Result<(), DecodeError> {
        match property {
            Property::SessionExpiryInterval(v) => once(&mut self.session_expiry_interval, id, v),
            Property::ReceiveMaximum(v) => once(&mut self.receive_maximum, id, v),
            Property::MaximumPacketSize(v) => once(&mut self.maximum_packet_size, id, v),
            Property::TopicAliasMaximum(v) => once(&mut self.topic_alias_maximum, id, v),
            Property::RequestResponseInformation(v) => {
                once(&mut self.request_response_information, id, v)
            }
            Property::RequestProblemInformation(v) => {
                once(&mut self.request_problem_information, id, v)
            }
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
        emit(
            f,
            id::MAXIMUM_PACKET_SIZE,
            self.maximum_packet_size.map(Value::Four),
        );
        emit(
            f,
            id::TOPIC_ALIAS_MAXIMUM,
            self.topic_alias_maximum.map(Value::Two),
        );
        emit(
            f,
            id::REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        emit(
            f,
            id::REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        emit_user_properties(f, &self.user_properties);
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

impl Properties for WillProperties {
    fn accept(&mut self, id: u8, property: Property) -> Result<(), DecodeError> {
        match property {
            Property::WillDelayInterval(v) => once(&mut self.will_delay_interval, id, v),
            Property::PayloadFormatIndicator(v) => once(&mut self.payload_format_indicator, id, v),
            Property::MessageExpiryInterval(v) => once(&mut self.message_expiry_interval, id, v),
            Property::ContentType(v) => once(&mut self.content_type, id, v),
            Property::ResponseTopic(v) => once(&mut self.response_topic, id, v),
            Property::CorrelationData(v) => once(&mut self.correlation_data, id, v),
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
            id::WILL_DELAY_INTERVAL,
            self.will_delay_interval.map(Value::Four),
        );
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
        emit(f, id::CONTENT_TYPE, self.content_type.as_ref());
        emit(f, id::RESPONSE_TOPIC, self.response_topic.as_ref());
        emit(f, id::CORRELATION_DATA, self.correlation_data.as_ref());
        emit_user_properties(f, &self.user_properties);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tests::{decode, roundtrip};
    use crate::protocol::{Packet, ProtocolVersion::*};

    /// A CONNECT from its variable header fields and the rest of its body.
    fn connect_bytes(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
        let mut body = vec![0x00, name.len() as u8];
        body.extend_from_slice(name);
        body.extend_from_slice(&[level, flags, 0x00, 0x3C]);
        body.extend_from_slice(rest);
        let mut bytes = vec![0x10, body.len() as u8];
        bytes.extend(body);
        bytes
    }

    fn minimal(protocol: ProtocolVersion) -> Connect {
        Connect {
            protocol,
            clean_start: true,
            keep_alive: 60,
            client_id: "client1".into(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        }
    }

    #[test]
    fn mosquitto_pub_connect_at_3_1_1() {
        // mosquitto_pub -V mqttv311 -i client1 -t t -m hi
        let wire = [
            0x10, 0x13, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x07,
            b'c', b'l', b'i', b'e', b'n', b't', b'1',
        ];
        let packet = Packet::Connect(Box::new(minimal(V3_1_1)));
        assert_eq!(roundtrip(&packet, V3_1_1), wire);
        // A CONNECT is read at its own level, whatever the caller expected.
        assert_eq!(decode(&wire, V5), Ok(packet));
    }

    #[test]
    fn mqisdp_connect_with_will_and_credentials() {
        let connect = Connect {
            will: Some(LastWill {
                topic: "w".into(),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: WillProperties::default(),
            }),
            username: Some("u".into()),
            password: Some(Bytes::from_static(b"p")),
            ..minimal(V3_1)
        };
        let rest = [
            0x00, 0x07, b'c', b'l', b'i', b'e', b'n', b't', b'1', 0x00, 0x01, b'w', 0x00, 0x03,
            b'b', b'y', b'e', 0x00, 0x01, b'u', 0x00, 0x01, b'p',
        ];
        let wire = connect_bytes(b"MQIsdp", 3, 0xEE, &rest);
        assert_eq!(roundtrip(&Packet::Connect(Box::new(connect)), V3_1), wire);
    }

    #[test]
    fn v5_connect_with_session_expiry() {
        let wire = [
            0x10, 0x13, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x05, 0x11,
            0x00, 0x00, 0x0E, 0x10, 0x00, 0x01, b'c',
        ];
        let connect = Connect {
            client_id: "c".into(),
            properties: ConnectProperties {
                session_expiry_interval: Some(3600),
                ..Default::default()
            },
            ..minimal(V5)
        };
        assert_eq!(roundtrip(&Packet::Connect(Box::new(connect)), V5), wire);
    }

    #[test]
    fn v5_connect_with_every_property_round_trips() {
        let connect = Connect {
            clean_start: false,
            will: Some(LastWill {
                topic: "will/topic".into(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::ExactlyOnce,
                retain: false,
                properties: WillProperties {
                    will_delay_interval: Some(30),
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(600),
                    content_type: Some("text/plain".into()),
                    response_topic: Some("reply".into()),
                    correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                    user_properties: vec![("a".into(), "b".into())],
                },
            }),
            username: None,
            // v5 allows a password without a user name.
            password: Some(Bytes::from_static(b"token")),
            properties: ConnectProperties {
                session_expiry_interval: Some(u32::MAX),
                receive_maximum: Some(20),
                maximum_packet_size: Some(1 << 20),
                topic_alias_maximum: Some(10),
                request_response_information: Some(true),
                request_problem_information: Some(false),
                user_properties: vec![("x".into(), "1".into()), ("x".into(), "2".into())],
                authentication_method: Some("SCRAM-SHA-1".into()),
                authentication_data: Some(Bytes::from_static(b"client-first")),
            },
            ..minimal(V5)
        };
        roundtrip(&Packet::Connect(Box::new(connect)), V5);
    }

    #[test]
    fn protocol_name_and_level_must_agree() {
        let rest = [0x00, 0x01, b'c'];
        for (name, level, error) in [
            (&b"MQTX"[..], 4, DecodeError::InvalidProtocolName),
            (b"MQTT", 6, DecodeError::UnsupportedProtocolLevel(6)),
            (b"MQTT", 3, DecodeError::UnsupportedProtocolLevel(3)),
            (b"MQIsdp", 4, DecodeError::UnsupportedProtocolLevel(4)),
        ] {
            assert_eq!(
                decode(&connect_bytes(name, level, 0x02, &rest), V5),
                Err(error)
            );
        }
        // The level is judged before the rest of the packet, which a future
        // version may lay out differently.
        let bare = [0x10, 0x07, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06];
        assert_eq!(
            decode(&bare, V5),
            Err(DecodeError::UnsupportedProtocolLevel(6))
        );
    }

    #[test]
    fn connect_flags_are_checked() {
        let rest = [0x00, 0x01, b'c'];
        let cases = [
            (0x03, DecodeError::ConnectReservedFlag),
            (0x1E, DecodeError::InvalidQoS(3)),
            (
                0x0A,
                DecodeError::Malformed("will QoS or retain set without a will"),
            ),
            (
                0x22,
                DecodeError::Malformed("will QoS or retain set without a will"),
            ),
            (0x42, DecodeError::Malformed("password without a user name")),
        ];
        for (flags, error) in cases {
            assert_eq!(
                decode(&connect_bytes(b"MQTT", 4, flags, &rest), V3_1_1),
                Err(error)
            );
        }
    }

    #[test]
    fn connect_body_must_match_its_flags() {
        // The username flag promises a field the packet does not have.
        let truncated = connect_bytes(b"MQTT", 4, 0x82, &[0x00, 0x01, b'c']);
        assert_eq!(decode(&truncated, V3_1_1), Err(DecodeError::Truncated));
        let trailing = connect_bytes(b"MQTT", 4, 0x02, &[0x00, 0x01, b'c', 0xFF]);
        assert_eq!(
            decode(&trailing, V3_1_1),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn authentication_data_needs_a_method() {
        let rest = [0x03, 0x16, 0x00, 0x00, 0x00, 0x01, b'c'];
        assert_eq!(
            decode(&connect_bytes(b"MQTT", 5, 0x02, &rest), V5),
            Err(DecodeError::UnexpectedProperty(id::AUTHENTICATION_DATA))
        );
        // A CONNACK property has no place in a CONNECT.
        let rest = [0x02, 0x24, 0x01, 0x00, 0x01, b'c'];
        assert_eq!(
            decode(&connect_bytes(b"MQTT", 5, 0x02, &rest), V5),
            Err(DecodeError::UnexpectedProperty(id::MAXIMUM_QOS))
        );
    }
}
