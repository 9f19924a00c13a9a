//! A message waiting for this session, in the outbound queue or in flight.

use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;

use crate::message::Message;
use crate::protocol::{LazyPublishProperties, ProtocolVersion, Publish, PublishProperties, QoS};

/// One delivery as decided when the message reached the session: QoS,
/// RETAIN and subscription identifiers are per subscriber, so they are kept
/// beside the shared message rather than in it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Outgoing {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    /// Empty for clients below v5, which have no such property.
    pub subscription_ids: Vec<u32>,
    /// The shared subscription (`$share/{group}/{filter}`) this message was
    /// chosen for, so that it can go to another member of the group if
    /// this session goes away before acknowledging it.
    pub shared: Option<ByteString>,
    /// The key of its record in the store, from the session's journal;
    /// 0 when it has none (QoS 0, or a session that is not stored).
    pub seq: u64,
}

impl Outgoing {
    /// When the broker received the message, unless it goes out with
    /// RETAIN set: then it may come from the retained store, published
    /// any time ago, and its age is no latency of the broker's.
    pub fn latency_start(&self) -> Option<Instant> {
        (!self.retain).then_some(self.message.received_at)
    }

    /// The PUBLISH for this delivery. Built at send time, not at queue
    /// time, because the v5 Message Expiry Interval sent is what remains
    /// at that moment (spec 3.3.2.3.3).
    pub fn publish(
        &self,
        packet_id: u16,
        dup: bool,
        version: ProtocolVersion,
        now: Instant,
    ) -> Publish {
        // Built whole and boxed only if anything is set, so that a message
        // without properties goes out without an allocation at v5 too.
        let properties = if version.is_v5() {
            PublishProperties {
                message_expiry_interval: self.message.remaining_expiry_secs(now),
                topic_alias: None,
                subscription_identifiers: self.subscription_ids.clone(),
                ..(*self.message.properties).clone()
            }
            .into()
        } else {
            LazyPublishProperties::default()
        };
        Publish {
            dup,
            qos: self.qos,
            retain: self.retain,
            topic: self.message.topic.clone(),
            packet_id,
            properties,
            payload: self.message.payload.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    fn outgoing(expires_in: Option<Duration>, now: Instant) -> Outgoing {
        Outgoing {
            message: Arc::new(Message {
                topic: "a/b".into(),
                payload: Bytes::from_static(b"hi"),
                qos: QoS::ExactlyOnce,
                retain: true,
                properties: PublishProperties {
                    message_expiry_interval: expires_in.map(|d| d.as_secs() as u32),
                    content_type: Some(ByteString::from("text/plain")),
                    user_properties: vec![("k".into(), "v".into())],
                    ..PublishProperties::default()
                }
                .into(),
                publisher: "pub".into(),
                expires_at: expires_in.map(|d| now + d),
                received_at: now,
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![3, 7],
            shared: None,
            seq: 0,
        }
    }

    #[test]
    fn v5_publish_carries_properties_remaining_expiry_and_subscription_ids() {
        let now = Instant::now();
        let out = outgoing(Some(Duration::from_secs(60)), now);
        let publish = out.publish(
            9,
            true,
            ProtocolVersion::V5,
            now + Duration::from_millis(20_500),
        );
        assert!(publish.dup);
        assert_eq!(publish.packet_id, 9);
        assert_eq!(publish.qos, QoS::AtLeastOnce);
        assert!(!publish.retain);
        assert_eq!(publish.topic, "a/b");
        assert_eq!(publish.payload, Bytes::from_static(b"hi"));
        assert_eq!(publish.properties.message_expiry_interval, Some(40));
        assert_eq!(publish.properties.subscription_identifiers, vec![3, 7]);
        assert_eq!(
            publish.properties.content_type.as_deref(),
            Some("text/plain")
        );
        assert_eq!(publish.properties.user_properties.len(), 1);
    }

    #[test]
    fn v3_publish_has_no_properties() {
        let now = Instant::now();
        let out = outgoing(Some(Duration::from_secs(60)), now);
        let publish = out.publish(1, false, ProtocolVersion::V3_1_1, now);
        assert_eq!(publish.properties, LazyPublishProperties::default());
    }

    #[test]
    fn message_without_expiry_has_no_interval() {
        let now = Instant::now();
        let publish = outgoing(None, now).publish(1, false, ProtocolVersion::V5, now);
        assert_eq!(publish.properties.message_expiry_interval, None);
    }
}
