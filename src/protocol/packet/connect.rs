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
