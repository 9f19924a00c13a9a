//! The application message as it travels from a publishing session through
//! the router to subscribing sessions, on this shard, on another shard, and
//! later on another node.

use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;

use crate::protocol::{LazyPublishProperties, QoS};

/// Shared by `Arc` once routed: one allocation per PUBLISH, whatever the
/// number of subscribers, and the payload is a refcounted slice of the
/// buffer the publisher's bytes were read into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    /// The QoS it was published with; each subscriber gets at most its
    /// granted QoS.
    pub qos: QoS,
    pub retain: bool,
    /// Forwarded unchanged, except that `topic_alias` is always `None` and
    /// `subscription_identifiers` empty: both are per-connection.
    /// `message_expiry_interval` is the value as published; the remaining
    /// interval is derived from `expires_at` when the message is sent.
    pub properties: LazyPublishProperties,
    /// Client id of the publisher, for v5 No Local.
    pub publisher: ByteString,
    /// From the Message Expiry Interval, if any.
    pub expires_at: Option<Instant>,
    /// When the broker decoded the PUBLISH (or made the will or `$SYS`
    /// message): the start of the publish latency the metrics report.
    pub received_at: Instant,
}

impl Message {
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Whole seconds left before expiry, rounded up so a message that is
    /// still valid never goes out with 0 (spec 3.3.2.3.3).
    pub fn remaining_expiry_secs(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }
}
