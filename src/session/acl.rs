//! The ACL as a session applies it to its client's PUBLISH and SUBSCRIBE
//! packets and to the messages routed to it. The shard gives a session its
//! [`SessionAcl`] at each CONNECT (the rules depend on the user name and
//! the client id); without an ACL configured the session holds none and
//! nothing here costs more than a test of `None`.
//!
//! Refusals follow Mosquitto where the spec leaves room:
//! - a PUBLISH to a topic the client may not write is not routed; a v5
//!   client is told Not authorized (0x87) on its PUBACK or PUBREC, a QoS 0
//!   PUBLISH is dropped, and a 3.1.1 client, whose acks carry no reason,
//!   gets its usual PUBACK or PUBREC so that its flow completes;
//! - a SUBSCRIBE filter no read line covers is refused with 0x87 (v5) or
//!   0x80 Failure (3.1.1, whose SUBACK has no other refusal).

use bytestring::ByteString;

use super::Session;
use super::connect::pub_response;
use crate::auth::acl::Access;
use crate::auth::acl_cache::{Denials, SessionAcl};
use crate::protocol::{Packet, QoS, ReasonCode};

impl Session {
    /// The rules of the client just connected, `None` without an ACL.
    pub fn set_acl(&mut self, acl: Option<SessionAcl>) {
        self.acl = acl.map(Box::new);
    }

    /// Whether a message on `topic` may be delivered to this session:
    /// `None` when the session has no rules (no ACL is configured, or the
    /// shard gave it none): the shard, which knows whether an ACL is
    /// configured, decides then.
    /// The shard counts the refusals.
    pub fn may_read(&mut self, topic: &ByteString) -> Option<bool> {
        Some(self.acl.as_mut()?.check(topic, Access::Read))
    }

    /// The PUBLISH and SUBSCRIBE refusals since the last call, for the
    /// shard's metrics.
    pub fn take_acl_denials(&mut self) -> Option<Denials> {
        self.acl.as_mut().map(|acl| acl.take_denied())
    }

    /// Whether the client may publish to `topic`; counts a refusal.
    pub(super) fn may_write(&mut self, topic: &ByteString) -> bool {
        let Some(acl) = self.acl.as_mut() else {
            return true;
        };
        let allowed = acl.check(topic, Access::Write);
        if !allowed {
            acl.denied.publish += 1;
        }
        allowed
    }

    /// Whether the client may subscribe to `filter` (a shared
    /// subscription's filter without its `$share/{group}/`); counts a
    /// refusal.
    pub(super) fn may_subscribe(&mut self, filter: &str) -> bool {
        let Some(acl) = self.acl.as_mut() else {
            return true;
        };
        let allowed = acl.may_subscribe(filter);
        if !allowed {
            acl.denied.subscribe += 1;
        }
        allowed
    }

    /// Answers a PUBLISH the ACL refused, which is not routed (see the
    /// module doc).
    pub(super) fn refuse_publish(&mut self, qos: QoS, packet_id: u16) {
        let reason = if self.protocol.is_v5() {
            ReasonCode::NotAuthorized
        } else {
            ReasonCode::Success
        };
        let mut response = pub_response(packet_id, reason);
        if self.problem_information && reason.is_error() {
            response.properties.reason_string = Some("not authorized by the acl".into());
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.control.push_back(Packet::PubAck(response)),
            // No QoS 2 flow starts: a v5 client sends no PUBREL after an
            // error, and a 3.1.1 client's PUBREL for an id not awaited is
            // answered with PUBCOMP all the same.
            QoS::ExactlyOnce => self.control.push_back(Packet::PubRec(response)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::auth::acl::Acl;
    use crate::auth::acl_cache::AclHandle;
    use crate::protocol::{
        ProtocolVersion, Subscribe, SubscribeProperties, SubscriptionOptions, TopicSubscription,
    };
    use crate::session::SessionAction;
    use crate::session::testing::*;

    /// Anonymous client `c`: may write `out/#`, read `in/#` but not
    /// `in/secret`.
    fn limited(protocol: ProtocolVersion) -> (Session, std::time::Instant) {
        let (mut session, now) = connected(protocol);
        let acl = Acl::parse("topic write out/#\ntopic read in/#\ntopic deny in/secret\n")
            .expect("valid");
        let handle = Arc::new(AclHandle::new(PathBuf::from("/nonexistent/acl"), acl));
        session.set_acl(Some(SessionAcl::new(handle, None, "c".into())));
        (session, now)
    }

    fn routed(session: &mut Session) -> Vec<String> {
        actions(session)
            .into_iter()
            .filter_map(|action| match action {
                SessionAction::Publish { message, .. } => Some(message.topic.to_string()),
                _ => None,
            })
            .collect()
    }

    fn answers(session: &mut Session, now: std::time::Instant) -> Vec<(String, ReasonCode)> {
        transmit(session, now)
            .into_iter()
            .map(|packet| match packet {
                Packet::PubAck(ack) => ("puback".into(), ack.reason),
                Packet::PubRec(rec) => ("pubrec".into(), rec.reason),
                Packet::SubAck(suback) => {
                    (format!("suback {:?}", suback.reasons), ReasonCode::Success)
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_v5_publish_outside_the_acl_is_refused_with_not_authorized() {
        let (mut session, now) = limited(ProtocolVersion::V5);
        for (qos, id) in [
            (QoS::AtMostOnce, 0),
            (QoS::AtLeastOnce, 1),
            (QoS::ExactlyOnce, 2),
        ] {
            session
                .handle_packet(publish_in("in/x", qos, id), now)
                .expect("ok");
        }
        session
            .handle_packet(publish_in("out/x", QoS::AtLeastOnce, 3), now)
            .expect("ok");
        assert_eq!(routed(&mut session), ["out/x"]);
        assert_eq!(
            answers(&mut session, now),
            [
                ("puback".into(), ReasonCode::NotAuthorized),
                ("pubrec".into(), ReasonCode::NotAuthorized),
                ("puback".into(), ReasonCode::Success),
            ]
        );
        assert_eq!(session.take_acl_denials().map(|d| d.publish), Some(3));
    }

    #[test]
    fn a_3_1_1_publish_outside_the_acl_is_acknowledged_and_dropped() {
        let (mut session, now) = limited(ProtocolVersion::V3_1_1);
        session
            .handle_packet(publish_in("in/x", QoS::AtLeastOnce, 1), now)
            .expect("ok");
        session
            .handle_packet(publish_in("in/x", QoS::ExactlyOnce, 2), now)
            .expect("ok");
        assert!(routed(&mut session).is_empty());
        assert_eq!(
            answers(&mut session, now),
            [
                ("puback".into(), ReasonCode::Success),
                ("pubrec".into(), ReasonCode::Success),
            ]
        );
    }

    #[test]
    fn subscribe_filters_are_refused_one_by_one() {
        let (mut session, now) = limited(ProtocolVersion::V5);
        let filters = [
            "in/#",
            "in/secret",
            "out/x",
            "$share/g/in/a",
            "$share/g/out/a",
        ];
        let packet = Packet::Subscribe(Subscribe {
            packet_id: 3,
            filters: filters
                .iter()
                .map(|&filter| TopicSubscription {
                    filter: filter.into(),
                    options: SubscriptionOptions::default(),
                })
                .collect(),
            properties: SubscribeProperties::default(),
        });
        session.handle_packet(packet, now).expect("ok");
        let no = ReasonCode::NotAuthorized;
        let yes = ReasonCode::Success;
        assert_eq!(
            answers(&mut session, now),
            [(format!("suback {:?}", [yes, no, no, yes, no]), yes)]
        );
        assert_eq!(session.take_acl_denials().map(|d| d.subscribe), Some(3));
    }

    #[test]
    fn delivery_follows_the_read_rules_and_none_without_rules() {
        let (mut session, _) = limited(ProtocolVersion::V5);
        assert_eq!(session.may_read(&"in/a".into()), Some(true));
        assert_eq!(session.may_read(&"in/secret".into()), Some(false));
        assert_eq!(session.may_read(&"out/a".into()), Some(false));
        let (mut unruled, _) = connected(ProtocolVersion::V5);
        assert_eq!(unruled.may_read(&"in/a".into()), None);
    }
}
