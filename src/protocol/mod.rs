//! Sans-IO MQTT codec for protocol levels 3 (3.1), 4 (3.1.1) and 5 (5.0).
//!
//! The codec never touches a socket or a clock. Decoding is two steps, as in
//! rumqttd: [`check`] reads only the fixed header and enforces the maximum
//! packet size *before* the body is buffered, then [`read`] splits the whole
//! packet off the input buffer and parses it. Payloads, topics and binary
//! properties are `Bytes` slices of the input buffer, never copies, so a
//! PUBLISH read from a socket reaches every subscriber's shard by refcount.
//!
//! One packet type per file in [`packet`]; a packet that differs between
//! versions takes the negotiated [`ProtocolVersion`] when read or written.
//! `wire` holds the fixed header and the primitives, `properties` the one
//! generic v5 property reader and writer every packet's properties use.
//!
//! Writing computes the remaining length first, checking every field's
//! length on the way, then writes straight into the caller's buffer: no
//! second buffer, no allocation beyond growing it, nothing written on error.
//!
//! Where the spec leaves room, the codec decides:
//! - DUP on a QoS 0 PUBLISH is malformed at levels 4 and 5 (MQTT-3.3.1-2);
//!   MQTT 3.1 has no such rule and is not held to it.
//! - A CONNECT with a known protocol name ("MQIsdp", "MQTT") but the wrong
//!   level is [`DecodeError::UnsupportedProtocolLevel`], so the client gets
//!   its CONNACK 0x01 / 0x84; any other name is
//!   [`DecodeError::InvalidProtocolName`].
//! - Rules that need session state are the session's: topic name and filter
//!   syntax, topic alias 0 or above the maximum, a client sending a
//!   Subscription Identifier, AUTH flow order.

pub mod packet;
mod properties;
pub mod reason;
#[cfg(test)]
mod strategies;
#[cfg(test)]
pub(crate) mod tests;
pub mod topic;
mod wire;

pub use packet::*;
pub use reason::ReasonCode;

use bytes::BytesMut;

/// Protocol level negotiated by CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQIsdp, level 3.
    V3_1,
    /// MQTT 3.1.1, level 4.
    V3_1_1,
    /// MQTT 5.0, level 5.
    V5,
}

impl ProtocolVersion {
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }

    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V3_1 => 3,
            ProtocolVersion::V3_1_1 => 4,
            ProtocolVersion::V5 => 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// The control packet type from the high nibble of the first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    Connect = 1,
    ConnAck,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    PingReq,
    PingResp,
    Disconnect,
    Auth,
}

/// What [`check`] learns from the fixed header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    pub packet_type: PacketType,
    /// The low nibble of the first byte.
    pub flags: u8,
    /// Bytes of the fixed header itself (1 + the remaining-length varint).
    pub header_len: usize,
    /// The remaining length: variable header plus payload.
    pub remaining_len: usize,
}

impl FixedHeader {
    pub fn frame_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Every control packet. PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
///
/// Packets move by value from decoding through the session to encoding, so
/// the ones a connection sees once or seldom are boxed and a `Packet` is no
/// bigger than a PUBLISH (see `a_packet_stays_small`). SUBSCRIBE and
/// UNSUBSCRIBE are not: they fit already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(Box<ConnAck>),
    Publish(Publish),
    PubAck(PubResponse),
    PubRec(PubResponse),
    PubRel(PubResponse),
    PubComp(PubResponse),
    Subscribe(Subscribe),
    SubAck(Box<SubAck>),
    Unsubscribe(Unsubscribe),
    UnsubAck(Box<UnsubAck>),
    PingReq,
    PingResp,
    Disconnect(Box<Disconnect>),
    Auth(Box<Auth>),
}

/// Why bytes could not be decoded. Each maps to the v5 reason code the
/// server closes the connection with ([`DecodeError::reason_code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge { size: usize, max: usize },
    #[error("malformed remaining length")]
    MalformedRemainingLength,
    #[error("reserved packet type 0")]
    ReservedPacketType,
    #[error("invalid fixed header flags {flags:#x} for {packet_type:?}")]
    InvalidHeaderFlags { packet_type: PacketType, flags: u8 },
    #[error("invalid protocol name")]
    InvalidProtocolName,
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    #[error("reserved bit set in CONNECT flags")]
    ConnectReservedFlag,
    #[error("invalid QoS {0}")]
    InvalidQoS(u8),
    #[error("packet ended early")]
    Truncated,
    #[error("{0} trailing bytes after the packet")]
    TrailingBytes(usize),
    #[error("invalid UTF-8 string")]
    InvalidUtf8,
    #[error("string contains U+0000")]
    NullCharacter,
    #[error("invalid property identifier {0:#x}")]
    InvalidPropertyId(u8),
    #[error("property {0:#x} not allowed here or repeated")]
    UnexpectedProperty(u8),
    #[error("invalid property value for {0:#x}")]
    InvalidPropertyValue(u8),
    #[error("invalid reason code {0:#x}")]
    InvalidReasonCode(u8),
    #[error("packet identifier 0")]
    ZeroPacketId,
    #[error("SUBSCRIBE or UNSUBSCRIBE with no topic filters")]
    EmptySubscription,
    #[error("invalid subscription options {0:#x}")]
    InvalidSubscriptionOptions(u8),
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

impl DecodeError {
    /// The v5 reason code for the DISCONNECT (or CONNACK) that closes the
    /// connection. The spec calls a wrong value or a repeated property a
    /// Protocol Error, and bytes that cannot be parsed a Malformed Packet.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError as E;
        match self {
            E::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            // Spec 3.1.2.1 also allows 0x84 for a wrong protocol name.
            E::UnsupportedProtocolLevel(_) | E::InvalidProtocolName => {
                ReasonCode::UnsupportedProtocolVersion
            }
            E::UnexpectedProperty(_)
            | E::InvalidPropertyValue(_)
            | E::ZeroPacketId
            | E::EmptySubscription => ReasonCode::ProtocolError,
            // Retain Handling 3 and Maximum QoS 3 are Protocol Errors;
            // reserved bits (the only other cause, and the only one with
            // bit 6 or 7) are malformed.
            E::InvalidSubscriptionOptions(options) if options & 0xC0 == 0 => {
                ReasonCode::ProtocolError
            }
            E::MalformedRemainingLength
            | E::ReservedPacketType
            | E::InvalidHeaderFlags { .. }
            | E::ConnectReservedFlag
            | E::InvalidQoS(_)
            | E::Truncated
            | E::TrailingBytes(_)
            | E::InvalidUtf8
            | E::NullCharacter
            | E::InvalidPropertyId(_)
            | E::InvalidReasonCode(_)
            | E::InvalidSubscriptionOptions(_)
            | E::Malformed(_) => ReasonCode::MalformedPacket,
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("packet of {size} bytes exceeds the limit of {max}")]
    PacketTooLarge { size: usize, max: usize },
    #[error("string or binary field longer than 65535 bytes")]
    FieldTooLong,
    #[error("{0:?} does not exist in this protocol version")]
    NotInVersion(PacketType),
}

/// Reads the fixed header at the start of `buf`.
///
/// `Ok(None)` means more bytes are needed. Fails as soon as the remaining
/// length says the packet will exceed `max_packet_size` (the whole packet,
/// fixed header included, as MQTT 5 counts it), so an oversized body is
/// never buffered.
pub fn check(buf: &[u8], max_packet_size: usize) -> Result<Option<FixedHeader>, DecodeError> {
    wire::check(buf, max_packet_size)
}

/// Splits one complete packet off the front of `buf` and parses it.
///
/// `Ok(None)` leaves `buf` untouched and means more bytes are needed.
/// CONNECT carries its own protocol level, so `version` is what the
/// connection negotiated and is ignored for CONNECT itself.
pub fn read(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    wire::read(buf, version, max_packet_size)
}

impl Packet {
    /// Appends the encoded packet to `buf`, returning the bytes written.
    ///
    /// The length is computed before anything is written, so `buf` grows at
    /// most once and is left unchanged on error. CONNECT is written at its own
    /// `protocol`, not `version`. In v5 the short forms are used whenever they
    /// say the same thing.
    pub fn write(
        &self,
        version: ProtocolVersion,
        buf: &mut BytesMut,
    ) -> Result<usize, EncodeError> {
        wire::write(self, version, buf)
    }

    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }
}
