//! Between the broker's [`Message`] and the wire's [`WireMessage`].

use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;

use super::encode::remaining_ms;
use super::{ArchivedWireMessage, FrameError, UserProperty, WireMessage};
use crate::message::Message;
use crate::protocol::topic::valid_topic_name;
use crate::protocol::{LazyPublishProperties, PublishProperties, QoS};

/// An owned [`WireMessage`] for `message`, expiry being what remains at
/// `now`. Copies the payload: the hot path is
/// [`encode_publish`](super::encode_publish), which does not.
pub fn message_to_wire(message: &Message, now: Instant) -> WireMessage {
    let p = &*message.properties;
    WireMessage {
        topic: message.topic.to_string(),
        payload: message.payload.to_vec(),
        qos: message.qos as u8,
        retain: message.retain,
        publisher: message.publisher.to_string(),
        expiry_ms: remaining_ms(message.expires_at, now),
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type.as_ref().map(ToString::to_string),
        response_topic: p.response_topic.as_ref().map(ToString::to_string),
        correlation_data: p.correlation_data.as_ref().map(|d| d.to_vec()),
        user_properties: p
            .user_properties
            .iter()
            .map(|(key, value)| UserProperty {
                key: key.to_string(),
                value: value.to_string(),
            })
            .collect(),
    }
}

/// The broker's [`Message`] for `wire`, an archived message inside `frame`.
///
/// Payload, correlation data and every string are slices of `frame`, not
/// copies: one message kept alive keeps the whole frame's buffer alive, so
/// a long-lived holder of a message from a large batch (the retained store,
/// an offline session's queue) may want its own copy.
///
/// `wire` must lie inside `frame` (it is refused otherwise). The topic must
/// be a valid topic name and `qos` 0 to 2: the peer is another broker, but
/// its bytes are checked as a client's would be. Strings are already known
/// to be UTF-8 (rkyv's validation checks them).
pub fn wire_to_message(
    frame: &Bytes,
    wire: &ArchivedWireMessage,
    now: Instant,
) -> Result<Message, FrameError> {
    let topic = wire.topic.as_str();
    if !valid_topic_name(topic) {
        return Err(FrameError::BadTopic);
    }
    let qos = QoS::from_u8(wire.qos).ok_or(FrameError::BadQos(wire.qos))?;
    let remaining = wire
        .expiry_ms
        .as_ref()
        .map(|ms| Duration::from_millis(ms.to_native()));
    // Most messages carry no property: skip building and comparing an
    // empty set (the comparison was 4% of a receiving node's CPU).
    let bare = remaining.is_none()
        && wire.payload_format_indicator.is_none()
        && wire.response_topic.is_none()
        && wire.correlation_data.is_none()
        && wire.user_properties.is_empty()
        && wire.content_type.is_none();
    let properties = if bare {
        LazyPublishProperties::default()
    } else {
        properties(frame, wire, remaining)?
    };
    Ok(Message {
        topic: string(frame, topic)?,
        payload: slice(frame, wire.payload.as_slice())?,
        qos,
        retain: wire.retain,
        properties,
        publisher: string(frame, wire.publisher.as_str())?,
        // Too far in the future to represent is as good as never.
        expires_at: remaining.and_then(|left| now.checked_add(left)),
        received_at: now,
    })
}

/// The v5 properties `wire` carries, read from `frame`.
fn properties(
    frame: &Bytes,
    wire: &ArchivedWireMessage,
    remaining: Option<Duration>,
) -> Result<LazyPublishProperties, FrameError> {
    let properties = PublishProperties {
        payload_format_indicator: wire.payload_format_indicator.as_ref().copied(),
        // The interval as this node received it, kept consistent with
        // `expires_at`, which is what the interval sent is derived from.
        message_expiry_interval: remaining.map(|left| {
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        }),
        topic_alias: None,
        response_topic: wire
            .response_topic
            .as_ref()
            .map(|s| string(frame, s.as_str()))
            .transpose()?,
        correlation_data: wire
            .correlation_data
            .as_ref()
            .map(|d| slice(frame, d.as_slice()))
            .transpose()?,
        user_properties: wire
            .user_properties
            .iter()
            .map(|p| {
                Ok((
                    string(frame, p.key.as_str())?,
                    string(frame, p.value.as_str())?,
                ))
            })
            .collect::<Result<_, FrameError>>()?,
        subscription_identifiers: Vec::new(),
        content_type: wire
            .content_type
            .as_ref()
            .map(|s| string(frame, s.as_str()))
            .transpose()?,
    };
    Ok(properties.into())
}

/// `part` as a slice of `frame`, without copying; `Bytes::slice_ref`
/// would panic on a `part` from elsewhere, so the range is checked first.
fn slice(frame: &Bytes, part: &[u8]) -> Result<Bytes, FrameError> {
    if part.is_empty() {
        return Ok(Bytes::new());
    }
    let start = frame.as_ptr() as usize;
    let at = part.as_ptr() as usize;
    let inside = at >= start && at - start + part.len() <= frame.len();
    if !inside {
        return Err(FrameError::NotInFrame);
    }
    Ok(frame.slice_ref(part))
}

fn string(frame: &Bytes, part: &str) -> Result<ByteString, FrameError> {
    // Checks UTF-8 again, which rkyv has done: the price of no `unsafe`,
    // a pass over short strings (the payload is not a string).
    ByteString::try_from(slice(frame, part.as_bytes())?)
        .map_err(|_| FrameError::Invalid("string is not UTF-8".into()))
}
