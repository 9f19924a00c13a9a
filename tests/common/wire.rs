//! Hand-encoded MQTT packets and a small decoder.
//!
//! The black-box tests speak raw bytes for the cases where a client library
//! would hide what goes over the wire (flags such as DUP and RETAIN, reason
//! codes, property order, malformed input). Nothing here shares code with the
//! broker's codec: a bug in one must not be mirrored by the other.

/// Protocol level byte of MQTT 3.1.1.
pub const V4: u8 = 4;
/// Protocol level byte of MQTT 5.0.
pub const V5: u8 = 5;

// Packet types (high nibble of the fixed header).
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBACK: u8 = 9;
pub const UNSUBACK: u8 = 11;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

// MQTT 5 property identifiers.
pub const PAYLOAD_FORMAT: u8 = 0x01;
pub const MESSAGE_EXPIRY: u8 = 0x02;
pub const CONTENT_TYPE: u8 = 0x03;
pub const RESPONSE_TOPIC: u8 = 0x08;
pub const CORRELATION_DATA: u8 = 0x09;
pub const SUBSCRIPTION_ID: u8 = 0x0B;
pub const SESSION_EXPIRY: u8 = 0x11;
pub const ASSIGNED_CLIENT_ID: u8 = 0x12;
pub const SERVER_KEEP_ALIVE: u8 = 0x13;
pub const WILL_DELAY: u8 = 0x18;
pub const REASON_STRING: u8 = 0x1F;
pub const RECEIVE_MAXIMUM: u8 = 0x21;
pub const USER_PROPERTY: u8 = 0x26;
pub const MAX_PACKET_SIZE: u8 = 0x27;

// Subscription option bits (MQTT 5 SUBSCRIBE payload).
pub const NO_LOCAL: u8 = 0x04;
pub const RETAIN_AS_PUBLISHED: u8 = 0x08;
pub const RETAIN_HANDLING_NEW_ONLY: u8 = 0x10;
pub const RETAIN_HANDLING_NEVER: u8 = 0x20;

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bin(out, s.as_bytes());
}

fn put_bin(out: &mut Vec<u8>, b: &[u8]) {
    put_u16(
        out,
        u16::try_from(b.len()).expect("field longer than 65535"),
    );
    out.extend_from_slice(b);
}

fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if v == 0 {
            break;
        }
    }
}

/// Wraps a variable header + payload into a packet with its fixed header.
pub fn frame(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first_byte];
    put_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// An MQTT 5 property list, encoded in the order the builder calls came.
#[derive(Clone, Debug, Default)]
pub struct Props(Vec<u8>);

impl Props {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn byte(mut self, id: u8, v: u8) -> Self {
        self.0.push(id);
        self.0.push(v);
        self
    }
    pub fn u16(mut self, id: u8, v: u16) -> Self {
        self.0.push(id);
        put_u16(&mut self.0, v);
        self
    }
    pub fn u32(mut self, id: u8, v: u32) -> Self {
        self.0.push(id);
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn varint(mut self, id: u8, v: usize) -> Self {
        self.0.push(id);
        put_varint(&mut self.0, v);
        self
    }
    pub fn string(mut self, id: u8, v: &str) -> Self {
        self.0.push(id);
        put_str(&mut self.0, v);
        self
    }
    pub fn binary(mut self, id: u8, v: &[u8]) -> Self {
        self.0.push(id);
        put_bin(&mut self.0, v);
        self
    }
    pub fn user(mut self, key: &str, value: &str) -> Self {
        self.0.push(USER_PROPERTY);
        put_str(&mut self.0, key);
        put_str(&mut self.0, value);
        self
    }
    fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.0.len());
        out.extend_from_slice(&self.0);
    }
}

/// A will message carried in CONNECT.
#[derive(Clone, Debug)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub props: Props,
}

impl Will {
    pub fn new(topic: &str, payload: &[u8]) -> Self {
        Will {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
            qos: 0,
            retain: false,
            props: Props::new(),
        }
    }
    pub fn qos(mut self, qos: u8) -> Self {
        self.qos = qos;
        self
    }
    pub fn retain(mut self) -> Self {
        self.retain = true;
        self
    }
    pub fn props(mut self, props: Props) -> Self {
        self.props = props;
        self
    }
}

/// CONNECT, built field by field.
#[derive(Clone, Debug)]
pub struct Connect {
    pub version: u8,
    pub client_id: String,
    pub clean: bool,
    pub keep_alive: u16,
    pub props: Props,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

impl Connect {
    pub fn new(version: u8, client_id: &str) -> Self {
        Connect {
            version,
            client_id: client_id.to_owned(),
            clean: true,
            keep_alive: 60,
            props: Props::new(),
            will: None,
            username: None,
            password: None,
        }
    }
    pub fn v4(client_id: &str) -> Self {
        Self::new(V4, client_id)
    }
    pub fn v5(client_id: &str) -> Self {
        Self::new(V5, client_id)
    }
    pub fn clean(mut self, clean: bool) -> Self {
        self.clean = clean;
        self
    }
    pub fn keep_alive(mut self, secs: u16) -> Self {
        self.keep_alive = secs;
        self
    }
    pub fn props(mut self, props: Props) -> Self {
        self.props = props;
        self
    }
    pub fn will(mut self, will: Will) -> Self {
        self.will = Some(will);
        self
    }
    pub fn username(mut self, username: &str) -> Self {
        self.username = Some(username.to_owned());
        self
    }
    pub fn password(mut self, password: &[u8]) -> Self {
        self.password = Some(password.to_vec());
        self
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        put_str(&mut body, "MQTT");
        body.push(self.version);
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        body.push(flags);
        put_u16(&mut body, self.keep_alive);
        if self.version == V5 {
            self.props.encode(&mut body);
        }
        put_str(&mut body, &self.client_id);
        if let Some(w) = &self.will {
            if self.version == V5 {
                w.props.encode(&mut body);
            }
            put_str(&mut body, &w.topic);
            put_bin(&mut body, &w.payload);
        }
        if let Some(username) = &self.username {
            put_str(&mut body, username);
        }
        if let Some(password) = &self.password {
            put_bin(&mut body, password);
        }
        frame(0x10, &body)
    }
}

/// PUBLISH, built field by field.
#[derive(Clone, Debug)]
pub struct Pub {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    pub props: Props,
}

impl Pub {
    pub fn new(topic: &str, payload: &[u8]) -> Self {
        Pub {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
            qos: 0,
            retain: false,
            dup: false,
            pkid: 0,
            props: Props::new(),
        }
    }
    /// Sets QoS and, for QoS 1/2, the packet identifier.
    pub fn qos(mut self, qos: u8, pkid: u16) -> Self {
        self.qos = qos;
        self.pkid = pkid;
        self
    }
    pub fn retain(mut self) -> Self {
        self.retain = true;
        self
    }
    pub fn dup(mut self) -> Self {
        self.dup = true;
        self
    }
    pub fn props(mut self, props: Props) -> Self {
        self.props = props;
        self
    }
    pub fn encode(&self, version: u8) -> Vec<u8> {
        let mut body = Vec::new();
        put_str(&mut body, &self.topic);
        if self.qos > 0 {
            put_u16(&mut body, self.pkid);
        }
        if version == V5 {
            self.props.encode(&mut body);
        }
        body.extend_from_slice(&self.payload);
        let mut first = 0x30 | (self.qos << 1);
        if self.retain {
            first |= 0x01;
        }
        if self.dup {
            first |= 0x08;
        }
        frame(first, &body)
    }
}

/// SUBSCRIBE with one options byte per filter (for 3.1.1 only the QoS bits
/// are legal).
pub fn subscribe(version: u8, pkid: u16, filters: &[(&str, u8)], props: Props) -> Vec<u8> {
    let mut body = Vec::new();
    put_u16(&mut body, pkid);
    if version == V5 {
        props.encode(&mut body);
    }
    for (filter, options) in filters {
        put_str(&mut body, filter);
        body.push(*options);
    }
    frame(0x82, &body)
}

pub fn unsubscribe(version: u8, pkid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = Vec::new();
    put_u16(&mut body, pkid);
    if version == V5 {
        Props::new().encode(&mut body);
    }
    for filter in filters {
        put_str(&mut body, filter);
    }
    frame(0xA2, &body)
}

/// PUBACK / PUBREC / PUBREL / PUBCOMP with success (the two-byte form is
/// valid in both 3.1.1 and 5.0).
pub fn ack(kind: u8, pkid: u16) -> Vec<u8> {
    let flags = if kind == PUBREL { 0x02 } else { 0x00 };
    frame((kind << 4) | flags, &pkid.to_be_bytes())
}

pub fn pingreq() -> Vec<u8> {
    vec![0xC0, 0x00]
}

pub fn disconnect_v4() -> Vec<u8> {
    vec![0xE0, 0x00]
}

pub fn disconnect_v5(reason: u8, props: Props) -> Vec<u8> {
    let mut body = vec![reason];
    props.encode(&mut body);
    frame(0xE0, &body)
}

/// A decoded property value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prop {
    Byte(u8),
    U16(u16),
    U32(u32),
    Varint(u32),
    Str(String),
    Bin(Vec<u8>),
    Pair(String, String),
}

/// One whole packet as read off the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub first_byte: u8,
    pub body: Vec<u8>,
}

/// A decoded PUBLISH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    pub props: Vec<(u8, Prop)>,
    pub payload: Vec<u8>,
}

impl Publish {
    pub fn prop(&self, id: u8) -> Option<&Prop> {
        find(&self.props, id)
    }
    pub fn user_props(&self) -> Vec<(String, String)> {
        user_props(&self.props)
    }
}

/// A decoded CONNACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connack {
    pub session_present: bool,
    pub code: u8,
    pub props: Vec<(u8, Prop)>,
}

impl Connack {
    pub fn prop(&self, id: u8) -> Option<&Prop> {
        find(&self.props, id)
    }
}

pub fn find(props: &[(u8, Prop)], id: u8) -> Option<&Prop> {
    props.iter().find(|(i, _)| *i == id).map(|(_, p)| p)
}

pub fn user_props(props: &[(u8, Prop)]) -> Vec<(String, String)> {
    props
        .iter()
        .filter_map(|(_, p)| match p {
            Prop::Pair(k, v) => Some((k.clone(), v.clone())),
            _ => None,
        })
        .collect()
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        assert!(
            self.pos + n <= self.buf.len(),
            "packet body too short: need {n} bytes at {} of {:?}",
            self.pos,
            self.buf
        );
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        s
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn varint(&mut self) -> u32 {
        let mut value = 0u32;
        for shift in 0..4 {
            let b = self.u8();
            value |= u32::from(b & 0x7F) << (7 * shift);
            if b & 0x80 == 0 {
                return value;
            }
        }
        panic!("malformed variable byte integer from broker");
    }
    fn bin(&mut self) -> Vec<u8> {
        let n = self.u16() as usize;
        self.take(n).to_vec()
    }
    fn string(&mut self) -> String {
        String::from_utf8(self.bin()).expect("broker sent a non-UTF-8 string")
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn props(&mut self) -> Vec<(u8, Prop)> {
        let len = self.varint() as usize;
        let mut inner = Reader::new(self.take(len));
        let mut out = Vec::new();
        while inner.remaining() > 0 {
            let id = inner.u8();
            let value = match id {
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => Prop::Byte(inner.u8()),
                0x13 | 0x21 | 0x22 | 0x23 => Prop::U16(inner.u16()),
                0x02 | 0x11 | 0x18 | 0x27 => Prop::U32(inner.u32()),
                0x0B => Prop::Varint(inner.varint()),
                0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => Prop::Str(inner.string()),
                0x09 | 0x16 => Prop::Bin(inner.bin()),
                0x26 => Prop::Pair(inner.string(), inner.string()),
                other => panic!("broker sent unknown property id {other:#04x}"),
            };
            out.push((id, value));
        }
        out
    }
}

impl Packet {
    /// Packet type: the high nibble of the first byte.
    pub fn kind(&self) -> u8 {
        self.first_byte >> 4
    }

    pub fn connack(&self, version: u8) -> Connack {
        assert_eq!(self.kind(), CONNACK, "expected CONNACK, got {self:?}");
        let mut r = Reader::new(&self.body);
        let flags = r.u8();
        let code = r.u8();
        let props = if version == V5 { r.props() } else { Vec::new() };
        Connack {
            session_present: flags & 0x01 == 1,
            code,
            props,
        }
    }

    pub fn publish(&self, version: u8) -> Publish {
        assert_eq!(self.kind(), PUBLISH, "expected PUBLISH, got {self:?}");
        let qos = (self.first_byte >> 1) & 0x03;
        let mut r = Reader::new(&self.body);
        let topic = r.string();
        let pkid = if qos > 0 { r.u16() } else { 0 };
        let props = if version == V5 { r.props() } else { Vec::new() };
        Publish {
            topic,
            qos,
            retain: self.first_byte & 0x01 == 1,
            dup: self.first_byte & 0x08 != 0,
            pkid,
            props,
            payload: r.rest().to_vec(),
        }
    }

    /// SUBACK / UNSUBACK: packet id and one return/reason code per filter.
    pub fn suback(&self, version: u8) -> (u16, Vec<u8>) {
        assert!(
            self.kind() == SUBACK || self.kind() == UNSUBACK,
            "expected SUBACK/UNSUBACK, got {self:?}"
        );
        let mut r = Reader::new(&self.body);
        let pkid = r.u16();
        if version == V5 {
            r.props();
        }
        (pkid, r.rest().to_vec())
    }

    /// PUBACK / PUBREC / PUBREL / PUBCOMP: packet id and reason code
    /// (0 when the broker used the short form).
    pub fn ack(&self) -> (u16, u8) {
        let mut r = Reader::new(&self.body);
        let pkid = r.u16();
        let reason = if r.remaining() > 0 { r.u8() } else { 0 };
        (pkid, reason)
    }

    /// MQTT 5 DISCONNECT reason code (0 when the body is empty).
    pub fn disconnect_reason(&self) -> u8 {
        assert_eq!(self.kind(), DISCONNECT, "expected DISCONNECT, got {self:?}");
        self.body.first().copied().unwrap_or(0)
    }
}

/// Splits one complete packet off the front of `buf`, if there is one.
pub fn take_packet(buf: &mut Vec<u8>) -> Option<Packet> {
    if buf.len() < 2 {
        return None;
    }
    let mut len = 0usize;
    let mut i = 1;
    loop {
        if i >= buf.len() {
            return None;
        }
        let b = buf[i];
        len |= ((b & 0x7F) as usize) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        assert!(i <= 4, "malformed remaining length from broker");
    }
    if buf.len() < i + len {
        return None;
    }
    let packet = Packet {
        first_byte: buf[0],
        body: buf[i..i + len].to_vec(),
    };
    buf.drain(..i + len);
    Some(packet)
}

// More MQTT 5 property identifiers, for the CONNACK limits and topic aliases.
pub const AUTHENTICATION_METHOD: u8 = 0x15;
pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub const RESPONSE_INFORMATION: u8 = 0x1A;
pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub const TOPIC_ALIAS: u8 = 0x23;
pub const MAXIMUM_QOS: u8 = 0x24;
pub const RETAIN_AVAILABLE: u8 = 0x25;
pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub const SUBSCRIPTION_IDS_AVAILABLE: u8 = 0x29;
pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

impl Packet {
    /// MQTT 5 DISCONNECT properties (none when the body stops early).
    pub fn disconnect_props(&self) -> Vec<(u8, Prop)> {
        assert_eq!(self.kind(), DISCONNECT, "expected DISCONNECT, got {self:?}");
        let mut r = Reader::new(&self.body);
        if r.remaining() < 2 {
            return Vec::new();
        }
        r.u8();
        r.props()
    }

    /// MQTT 5 SUBACK / UNSUBACK properties.
    pub fn suback_props(&self) -> Vec<(u8, Prop)> {
        assert!(
            self.kind() == SUBACK || self.kind() == UNSUBACK,
            "expected SUBACK/UNSUBACK, got {self:?}"
        );
        let mut r = Reader::new(&self.body);
        r.u16();
        r.props()
    }
}
