//! PUBLISH and PUBREL from the client: the receiving side of QoS 0, 1, 2.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::connect::pub_response;
use super::{Change, Problem, Session, SessionAction, Ticket};
use crate::message::Message;
use crate::protocol::topic::valid_topic_name;
use crate::protocol::{Packet, Publish, QoS, ReasonCode};

impl Session {
    pub(super) fn handle_publish(
        &mut self,
        mut publish: Publish,
        now: Instant,
    ) -> Result<(), Problem> {
        // Below v5 the codec reads no properties, so there is never an
        // alias to resolve.
        self.incoming_aliases.resolve(&mut publish)?;
        if !valid_topic_name(&publish.topic) || !self.limits.topics().admits(&publish.topic) {
            return Err(Problem::new(
                ReasonCode::TopicNameInvalid,
                format!("invalid topic name {:?}", &*publish.topic),
            ));
        }
        // Subscription identifiers are the server's to add (spec 3.3.4).
        if !publish.properties.subscription_identifiers.is_empty() {
            return Err(Problem::new(
                ReasonCode::ProtocolError,
                "a client PUBLISH may not carry a subscription identifier".into(),
            ));
        }
        let packet_id = publish.packet_id;
        if !self.may_write(&publish.topic) {
            self.refuse_publish(publish.qos, packet_id);
            return Ok(());
        }
        match publish.qos {
            QoS::AtMostOnce => self.route(publish, None, now),
            // Receive Maximum counts QoS 1 and 2 PUBLISH not yet answered
            // (spec 3.3.4): QoS 1 is answered once the shard confirms its
            // ticket, at once on a single node, so only QoS 2 awaiting PUBREL
            // is counted against it. A client that floods QoS 1 while its
            // answers are held is not read from (see `unanswered`).
            QoS::AtLeastOnce => {
                let ticket = self.control.hold();
                self.route(publish, Some(ticket), now);
                self.control
                    .push_back(Packet::PubAck(pub_response(packet_id, ReasonCode::Success)));
            }
            QoS::ExactlyOnce => {
                // A repeat of an id awaiting PUBREL is the client resending
                // a PUBLISH whose PUBREC it missed: answer, don't route.
                let awaiting = self.incoming_qos2.get_or_insert_default();
                if !awaiting.contains(&packet_id) {
                    // 3.1.1 has no Receive Maximum to exceed; the 16-bit id
                    // space bounds the set there.
                    if self.protocol.is_v5()
                        && awaiting.len() >= usize::from(self.limits.max_inflight)
                    {
                        return Err(Problem::new(
                            ReasonCode::ReceiveMaximumExceeded,
                            format!(
                                "more than {} QoS 2 messages awaiting PUBREL",
                                self.limits.max_inflight
                            ),
                        ));
                    }
                    awaiting.insert(packet_id);
                    self.journal(Change::Awaiting { packet_id });
                    let ticket = self.control.hold();
                    self.route(publish, Some(ticket), now);
                }
                // A repeat's PUBREC needs no ticket of its own: queued
                // after the first one's, it is held as long as that is.
                self.control
                    .push_back(Packet::PubRec(pub_response(packet_id, ReasonCode::Success)));
            }
        }
        Ok(())
    }

    /// Both answers are PUBCOMP: for an unknown id the client is still
    /// waiting for one, and v5 is told the id was not found.
    pub(super) fn handle_pubrel(&mut self, packet_id: u16) {
        let mut pubcomp = pub_response(packet_id, ReasonCode::Success);
        let awaited = self.end_incoming_qos2(packet_id);
        if !awaited && self.protocol.is_v5() {
            pubcomp.reason = ReasonCode::PacketIdentifierNotFound;
            pubcomp.properties.reason_string =
                Some(format!("packet id {packet_id} is not awaiting PUBREL").into());
        }
        self.control.push_back(Packet::PubComp(pubcomp));
    }

    /// The incoming QoS 2 flow of `packet_id` is over (PUBREL, or refused):
    /// the id may carry a new message. Returns whether it was awaited.
    pub(super) fn end_incoming_qos2(&mut self, packet_id: u16) -> bool {
        let awaited = self
            .incoming_qos2
            .as_mut()
            .is_some_and(|ids| ids.remove(&packet_id));
        if awaited {
            self.journal(Change::Completed { packet_id });
        }
        awaited
    }

    fn route(&mut self, publish: Publish, ticket: Option<Ticket>, now: Instant) {
        let properties = publish.properties;
        // An interval too large for `Instant` is as good as none.
        let expires_at = properties
            .message_expiry_interval
            .and_then(|secs| now.checked_add(Duration::from_secs(secs.into())));
        let message = Message {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties,
            publisher: self.client_id.clone(),
            expires_at,
            received_at: now,
        };
        self.actions.push_back(SessionAction::Publish {
            message: Arc::new(message),
            ticket,
        });
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::{ProtocolVersion, PublishProperties};
    use crate::session::SessionConfig;
    use crate::session::testing::*;

    fn routed(session: &mut Session) -> Vec<Arc<Message>> {
        actions(session)
            .into_iter()
            .map(|action| match action {
                SessionAction::Publish { message, .. } => message,
                other => panic!("expected Publish, got {other:?}"),
            })
            .collect()
    }

    fn disconnect_reason(session: &mut Session, now: Instant) -> Option<ReasonCode> {
        transmit(session, now)
            .into_iter()
            .find_map(|packet| match packet {
                Packet::Disconnect(disconnect) => Some(disconnect.reason),
                _ => None,
            })
    }

    #[test]
    fn qos0_is_routed_without_an_answer() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        session
            .handle_packet(publish_in("a/b", QoS::AtMostOnce, 0), now)
            .unwrap();
        let messages = routed(&mut session);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].topic, "a/b");
        assert_eq!(messages[0].payload, Bytes::from_static(b"in"));
        assert_eq!(messages[0].publisher, "c");
        assert_eq!(messages[0].qos, QoS::AtMostOnce);
        assert_eq!(transmit(&mut session, now), vec![]);
    }

    #[test]
    fn message_built_from_publish() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "t".into(),
            packet_id: 4,
            properties: PublishProperties {
                message_expiry_interval: Some(30),
                response_topic: Some("reply".into()),
                user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
                ..PublishProperties::default()
            }
            .into(),
            payload: Bytes::from_static(b"x"),
        };
        session
            .handle_packet(Packet::Publish(publish), now)
            .unwrap();
        let message = routed(&mut session).pop().unwrap();
        assert!(message.retain);
        assert_eq!(message.qos, QoS::AtLeastOnce);
        assert_eq!(message.expires_at, Some(now + Duration::from_secs(30)));
        assert_eq!(message.properties.message_expiry_interval, Some(30));
        assert_eq!(message.properties.response_topic.as_deref(), Some("reply"));
        assert_eq!(message.properties.user_properties.len(), 2);
        assert!(message.properties.subscription_identifiers.is_empty());
        assert_eq!(message.properties.topic_alias, None);
    }

    #[test]
    fn qos1_is_routed_and_acknowledged() {
        let (mut session, now) = connected(ProtocolVersion::V3_1_1);
        session
            .handle_packet(publish_in("t", QoS::AtLeastOnce, 12), now)
            .unwrap();
        assert_eq!(routed(&mut session).len(), 1);
        assert_eq!(
            transmit(&mut session, now),
            vec![Packet::PubAck(pub_response(12, ReasonCode::Success))]
        );
    }

    #[test]
    fn qos2_flow_routes_exactly_once() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        session
            .handle_packet(publish_in("t", QoS::ExactlyOnce, 5), now)
            .unwrap();
        assert_eq!(routed(&mut session).len(), 1);
        assert_eq!(
            transmit(&mut session, now),
            vec![Packet::PubRec(pub_response(5, ReasonCode::Success))]
        );
        // The PUBREC was lost; the client sends the PUBLISH again.
        session
            .handle_packet(publish_in("t", QoS::ExactlyOnce, 5), now)
            .unwrap();
        assert!(routed(&mut session).is_empty());
        assert_eq!(
            transmit(&mut session, now),
            vec![Packet::PubRec(pub_response(5, ReasonCode::Success))]
        );
        session
            .handle_packet(Packet::PubRel(pub_response(5, ReasonCode::Success)), now)
            .unwrap();
        assert_eq!(
            transmit(&mut session, now),
            vec![Packet::PubComp(pub_response(5, ReasonCode::Success))]
        );
        // The flow is over: the id may carry a new message.
        session
            .handle_packet(publish_in("t", QoS::ExactlyOnce, 5), now)
            .unwrap();
        assert_eq!(routed(&mut session).len(), 1);
    }

    /// The ticket of the one PUBLISH `session` just asked to route.
    fn ticket_routed(session: &mut Session) -> crate::session::Ticket {
        match actions(session).as_slice() {
            [
                SessionAction::Publish {
                    ticket: Some(ticket),
                    ..
                },
            ] => *ticket,
            other => panic!("expected one Publish with a ticket, got {other:?}"),
        }
    }

    #[test]
    fn a_qos2_publish_refused_ends_its_flow_for_v5_and_unrouted_for_all() {
        // v5, refused after routing: the client may use the id again for
        // another message, which must not be taken for a resend.
        let (mut session, now) = connected(ProtocolVersion::V5);
        session
            .handle_packet(publish_in("t", QoS::ExactlyOnce, 5), now)
            .unwrap();
        let ticket = ticket_routed(&mut session);
        session.refuse(ticket, ReasonCode::QuotaExceeded);
        session.confirm(ticket);
        assert_eq!(
            transmit(&mut session, now),
            vec![Packet::PubRec(pub_response(5, ReasonCode::QuotaExceeded))]
        );
        session
            .handle_packet(publish_in("t", QoS::ExactlyOnce, 5), now)
            .unwrap();
        assert_eq!(routed(&mut session).len(), 1);

        // 3.1.1, refused after routing: the connection closes and the same
        // message comes again with the same id, answered without routing.
        let (mut session, now) = connected(ProtocolVersion::V3_1_1);
        session
            .handle_packet(publish_in("t", QoS::ExactlyOnce, 6), now)
            .unwrap();
        let ticket = ticket_routed(&mut session);
        session.refuse(ticket, ReasonCode::QuotaExceeded);
        assert!(
            session
                .incoming_qos2
                .as_ref()
                .is_some_and(|ids| ids.contains(&6))
        );

        // 3.1.1, refused before routing: nothing went out, so the resend
        // must be routed.
        let (mut session, now) = connected(ProtocolVersion::V3_1_1);
        session
            .handle_packet(publish_in("t", QoS::ExactlyOnce, 7), now)
            .unwrap();
        let ticket = ticket_routed(&mut session);
        session.refuse_unrouted(ticket, ReasonCode::QuotaExceeded);
        assert!(
            !session
                .incoming_qos2
                .as_ref()
                .is_some_and(|ids| ids.contains(&7))
        );
    }

    #[test]
    fn pubrel_for_unknown_id() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        session
            .handle_packet(Packet::PubRel(pub_response(77, ReasonCode::Success)), now)
            .unwrap();
        let mut expected = pub_response(77, ReasonCode::PacketIdentifierNotFound);
        expected.properties.reason_string = Some("packet id 77 is not awaiting PUBREL".into());
        assert_eq!(transmit(&mut session, now), vec![Packet::PubComp(expected)]);

        // Request Problem Information 0: the reason code, not the string.
        let mut quiet = connect(ProtocolVersion::V5);
        quiet.properties.request_problem_information = Some(false);
        let (mut session, now) = connected_with(quiet);
        session
            .handle_packet(Packet::PubRel(pub_response(77, ReasonCode::Success)), now)
            .unwrap();
        assert_eq!(
            transmit(&mut session, now),
            vec![Packet::PubComp(pub_response(
                77,
                ReasonCode::PacketIdentifierNotFound
            ))]
        );

        let (mut session, now) = connected(ProtocolVersion::V3_1_1);
        session
            .handle_packet(Packet::PubRel(pub_response(77, ReasonCode::Success)), now)
            .unwrap();
        assert_eq!(
            transmit(&mut session, now),
            vec![Packet::PubComp(pub_response(77, ReasonCode::Success))]
        );
    }

    #[test]
    fn too_many_incoming_qos2_exceeds_receive_maximum() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        for id in 1..=10 {
            session
                .handle_packet(publish_in("t", QoS::ExactlyOnce, id), now)
                .unwrap();
        }
        // A repeat of a known id is not a new message.
        session
            .handle_packet(publish_in("t", QoS::ExactlyOnce, 3), now)
            .unwrap();
        let result = session.handle_packet(publish_in("t", QoS::ExactlyOnce, 11), now);
        assert_eq!(result, Err(ReasonCode::ReceiveMaximumExceeded));
        assert_eq!(routed_count(&mut session), 10);
        assert_eq!(
            disconnect_reason(&mut session, now),
            Some(ReasonCode::ReceiveMaximumExceeded)
        );
    }

    fn routed_count(session: &mut Session) -> usize {
        actions(session)
            .iter()
            .filter(|action| matches!(action, SessionAction::Publish { .. }))
            .count()
    }

    #[test]
    fn v3_has_no_incoming_qos2_limit_below_the_id_space() {
        let (mut session, now) = connected(ProtocolVersion::V3_1_1);
        for id in 1..=50 {
            session
                .handle_packet(publish_in("t", QoS::ExactlyOnce, id), now)
                .unwrap();
        }
        assert_eq!(routed(&mut session).len(), 50);
    }

    #[test]
    fn invalid_topic_name_closes() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        let result = session.handle_packet(publish_in("a/#", QoS::AtMostOnce, 0), now);
        assert_eq!(result, Err(ReasonCode::TopicNameInvalid));
        assert_eq!(actions(&mut session), vec![SessionAction::Close]);
        assert_eq!(
            disconnect_reason(&mut session, now),
            Some(ReasonCode::TopicNameInvalid)
        );
    }

    #[test]
    fn topic_past_the_limits_is_invalid() {
        let config = crate::session::SessionConfig {
            topics: crate::protocol::topic::TopicLimits {
                max_length: 5,
                max_levels: 2,
            },
            ..config()
        };
        for (topic, ok) in [("a/b", true), ("a/b/c", false), ("abcdef", false)] {
            let (mut session, now) = connected_with_config(connect(ProtocolVersion::V5), &config);
            let result = session.handle_packet(publish_in(topic, QoS::AtMostOnce, 0), now);
            if ok {
                assert_eq!(result, Ok(()), "{topic}");
                assert_eq!(routed(&mut session).len(), 1);
            } else {
                assert_eq!(result, Err(ReasonCode::TopicNameInvalid), "{topic}");
                assert_eq!(actions(&mut session), vec![SessionAction::Close]);
            }
        }
    }

    fn aliased(topic: &str, alias: u16) -> Packet {
        let mut packet = publish_in(topic, QoS::AtMostOnce, 0);
        if let Packet::Publish(publish) = &mut packet {
            publish.properties.topic_alias = Some(alias);
        }
        packet
    }

    fn disconnect_reason_string(session: &mut Session, now: Instant) -> Option<String> {
        transmit(session, now)
            .into_iter()
            .find_map(|packet| match packet {
                Packet::Disconnect(disconnect) => {
                    disconnect.properties.reason_string.map(|s| s.to_string())
                }
                _ => None,
            })
    }

    #[test]
    fn topic_alias_binds_and_resolves_and_is_not_routed() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        session.handle_packet(aliased("a/b", 1), now).unwrap();
        session.handle_packet(aliased("", 1), now).unwrap();
        session.handle_packet(aliased("c", 1), now).unwrap();
        session.handle_packet(aliased("", 1), now).unwrap();
        session.handle_packet(aliased("max", 10), now).unwrap();
        session.handle_packet(aliased("", 10), now).unwrap();
        let messages = routed(&mut session);
        let topics: Vec<_> = messages.iter().map(|m| m.topic.to_string()).collect();
        assert_eq!(topics, vec!["a/b", "a/b", "c", "c", "max", "max"]);
        assert!(messages.iter().all(|m| m.properties.topic_alias.is_none()));
    }

    #[test]
    fn topic_alias_above_maximum_is_invalid() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        assert_eq!(
            session.handle_packet(aliased("t", 11), now),
            Err(ReasonCode::TopicAliasInvalid)
        );
        assert_eq!(actions(&mut session), vec![SessionAction::Close]);
        assert_eq!(
            disconnect_reason_string(&mut session, now).as_deref(),
            Some("topic alias 11 exceeds maximum 10")
        );

        let (mut session, now) = connected(ProtocolVersion::V5);
        assert_eq!(
            session.handle_packet(aliased("t", 0), now),
            Err(ReasonCode::TopicAliasInvalid)
        );
    }

    #[test]
    fn topic_alias_maximum_zero_accepts_none() {
        let now = Instant::now();
        let mut session = Session::new("c".into(), now);
        let config = SessionConfig {
            topic_alias_maximum: 0,
            ..config()
        };
        session.handle_connect(&connect(ProtocolVersion::V5), false, &config, now);
        assert_eq!(
            session.handle_packet(aliased("t", 1), now),
            Err(ReasonCode::TopicAliasInvalid)
        );
        assert_eq!(
            disconnect_reason(&mut session, now),
            Some(ReasonCode::TopicAliasInvalid)
        );
    }

    #[test]
    fn unknown_topic_alias_is_a_protocol_error() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        assert_eq!(
            session.handle_packet(aliased("", 1), now),
            Err(ReasonCode::ProtocolError)
        );
        assert_eq!(
            disconnect_reason(&mut session, now),
            Some(ReasonCode::ProtocolError)
        );
    }

    #[test]
    fn topic_aliases_reset_on_a_new_connection() {
        let (mut session, now) = connected_with(persistent(ProtocolVersion::V5));
        session.handle_packet(aliased("a", 1), now).unwrap();
        session.handle_connection_lost(now);
        session.handle_connect(&persistent(ProtocolVersion::V5), false, &config(), now);
        assert_eq!(
            session.handle_packet(aliased("", 1), now),
            Err(ReasonCode::ProtocolError)
        );
    }

    #[test]
    fn aliased_invalid_topic_is_refused_and_not_bound() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        assert_eq!(
            session.handle_packet(aliased("a/+", 1), now),
            Err(ReasonCode::TopicNameInvalid)
        );
        assert_eq!(
            disconnect_reason_string(&mut session, now).as_deref(),
            Some("invalid topic name \"a/+\"")
        );
    }

    #[test]
    fn subscription_identifier_from_the_client_is_a_protocol_error() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        let mut packet = publish_in("t", QoS::AtMostOnce, 0);
        if let Packet::Publish(publish) = &mut packet {
            publish.properties.subscription_identifiers = vec![1];
        }
        assert_eq!(
            session.handle_packet(packet, now),
            Err(ReasonCode::ProtocolError)
        );
        assert_eq!(actions(&mut session), vec![SessionAction::Close]);
    }

    #[test]
    fn message_expiry_too_large_for_instant_never_expires() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        let mut packet = publish_in("t", QoS::AtMostOnce, 0);
        if let Packet::Publish(publish) = &mut packet {
            publish.properties.message_expiry_interval = Some(u32::MAX);
        }
        session.handle_packet(packet, now).unwrap();
        assert_eq!(routed(&mut session).len(), 1);
    }

    #[test]
    fn auth_is_a_protocol_error() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        let auth = Packet::Auth(Box::new(crate::protocol::Auth {
            reason: ReasonCode::ContinueAuthentication,
            properties: Default::default(),
        }));
        assert_eq!(
            session.handle_packet(auth, now),
            Err(ReasonCode::ProtocolError)
        );
        assert_eq!(
            disconnect_reason_string(&mut session, now).as_deref(),
            Some("unexpected AUTH packet")
        );
    }

    #[test]
    fn server_packets_from_the_client_are_protocol_errors() {
        for packet in [
            Packet::PingResp,
            Packet::SubAck(Box::new(crate::protocol::SubAck {
                packet_id: 1,
                reasons: vec![],
                properties: Default::default(),
            })),
            Packet::UnsubAck(Box::new(crate::protocol::UnsubAck {
                packet_id: 1,
                reasons: vec![],
                properties: Default::default(),
            })),
            Packet::ConnAck(Box::new(crate::protocol::ConnAck {
                session_present: false,
                reason: ReasonCode::Success,
                properties: Default::default(),
            })),
        ] {
            let (mut session, now) = connected(ProtocolVersion::V5);
            assert_eq!(
                session.handle_packet(packet, now),
                Err(ReasonCode::ProtocolError)
            );
        }
    }

    #[test]
    fn pingreq_answered() {
        let (mut session, now) = connected(ProtocolVersion::V3_1);
        session.handle_packet(Packet::PingReq, now).unwrap();
        assert_eq!(transmit(&mut session, now), vec![Packet::PingResp]);
    }

    #[test]
    fn pingreq_gives_back_buffers_and_keeps_the_answer_order() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        session
            .handle_packet(publish_in("t", QoS::AtLeastOnce, 1), now)
            .unwrap();
        actions(&mut session);
        transmit(&mut session, now);
        assert!(session.control.capacity() > 0, "the PUBACK left a buffer");
        assert!(session.actions.capacity() > 0, "the route left a buffer");

        // Idle now: the PINGREQ frees both and is answered all the same.
        session.handle_packet(Packet::PingReq, now).unwrap();
        assert_eq!(session.control.capacity(), 0);
        assert_eq!(session.actions.capacity(), 0);
        assert_eq!(session.unanswered(), 1);
        assert_eq!(transmit(&mut session, now), vec![Packet::PingResp]);
        assert_eq!(session.control.capacity(), 0);

        // Answers queued around it go out in the order they were asked.
        session.handle_packet(Packet::PingReq, now).unwrap();
        session
            .handle_packet(publish_in("t", QoS::AtLeastOnce, 2), now)
            .unwrap();
        session.handle_packet(Packet::PingReq, now).unwrap();
        assert_eq!(session.unanswered(), 3);
        assert_eq!(
            transmit(&mut session, now),
            vec![
                Packet::PingResp,
                Packet::PubAck(pub_response(2, ReasonCode::Success)),
                Packet::PingResp
            ]
        );
    }

    fn puback(packet_id: u16) -> Packet {
        Packet::PubAck(pub_response(packet_id, ReasonCode::Success))
    }

    #[test]
    fn a_held_puback_goes_out_only_once_confirmed() {
        let (mut session, now) = connected(ProtocolVersion::V3_1_1);
        session
            .handle_packet(publish_in("t", QoS::AtLeastOnce, 12), now)
            .unwrap();
        let tickets = tickets(&mut session);
        assert_eq!(tickets.len(), 1);
        assert_eq!(session.unconfirmed(), 1);
        // Held answers count against the shard's bound on reading.
        assert_eq!(session.unanswered(), 1);
        assert_eq!(held_transmit(&mut session, now), vec![]);
        session.confirm(tickets[0]);
        assert_eq!(session.unconfirmed(), 0);
        assert_eq!(held_transmit(&mut session, now), vec![puback(12)]);
        // Confirming again changes nothing.
        session.confirm(tickets[0]);
        assert_eq!(held_transmit(&mut session, now), vec![]);
    }

    #[test]
    fn pubacks_confirmed_out_of_order_go_out_in_order_once_the_first_is() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        for id in [1, 2] {
            session
                .handle_packet(publish_in("t", QoS::AtLeastOnce, id), now)
                .unwrap();
        }
        let tickets = tickets(&mut session);
        assert_eq!(tickets.len(), 2);
        assert_ne!(tickets[0], tickets[1]);
        session.confirm(tickets[1]);
        assert_eq!(held_transmit(&mut session, now), vec![]);
        assert_eq!(session.unconfirmed(), 2, "the second waits for the first");
        session.confirm(tickets[0]);
        assert_eq!(session.unconfirmed(), 0);
        assert_eq!(held_transmit(&mut session, now), vec![puback(1), puback(2)]);
    }

    #[test]
    fn answers_asked_for_after_a_held_one_wait_too() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        // A PINGRESP asked for before the PUBLISH is not held.
        session.handle_packet(Packet::PingReq, now).unwrap();
        session
            .handle_packet(publish_in("t", QoS::AtLeastOnce, 1), now)
            .unwrap();
        session.handle_packet(Packet::PingReq, now).unwrap();
        session
            .handle_packet(publish_in("t", QoS::AtMostOnce, 0), now)
            .unwrap();
        session.handle_packet(Packet::PingReq, now).unwrap();
        let tickets = tickets(&mut session);
        assert_eq!(tickets.len(), 1, "QoS 0 has no ticket");
        assert_eq!(session.unanswered(), 4);
        assert_eq!(held_transmit(&mut session, now), vec![Packet::PingResp]);
        session.confirm(tickets[0]);
        assert_eq!(
            held_transmit(&mut session, now),
            vec![puback(1), Packet::PingResp, Packet::PingResp]
        );
    }

    #[test]
    fn deliveries_to_the_client_are_not_held() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        session
            .handle_packet(publish_in("t", QoS::AtLeastOnce, 1), now)
            .unwrap();
        let tickets = tickets(&mut session);
        session.handle_deliver(
            &message("a", QoS::AtMostOnce),
            delivery(QoS::AtMostOnce),
            now,
        );
        session.handle_deliver(
            &message("b", QoS::AtLeastOnce),
            delivery(QoS::AtLeastOnce),
            now,
        );
        let sent = publishes(held_transmit(&mut session, now));
        let topics: Vec<_> = sent.iter().map(|p| p.topic.to_string()).collect();
        assert_eq!(topics, vec!["a", "b"]);
        session.confirm(tickets[0]);
        assert_eq!(held_transmit(&mut session, now), vec![puback(1)]);
    }

    #[test]
    fn a_held_pubrec_is_not_routed_again_for_a_repeat() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        let pubrec = Packet::PubRec(pub_response(5, ReasonCode::Success));
        session
            .handle_packet(publish_in("t", QoS::ExactlyOnce, 5), now)
            .unwrap();
        // The client gave up waiting and sends it again.
        session
            .handle_packet(publish_in("t", QoS::ExactlyOnce, 5), now)
            .unwrap();
        let actions = actions(&mut session);
        let [
            SessionAction::Publish {
                ticket: Some(ticket),
                ..
            },
        ] = actions.as_slice()
        else {
            panic!("expected one route with a ticket, got {actions:?}");
        };
        assert_eq!(session.unconfirmed(), 1);
        assert_eq!(held_transmit(&mut session, now), vec![]);
        session.confirm(*ticket);
        assert_eq!(
            held_transmit(&mut session, now),
            vec![pubrec.clone(), pubrec]
        );
        // PUBREL needs nothing from the shard.
        session
            .handle_packet(Packet::PubRel(pub_response(5, ReasonCode::Success)), now)
            .unwrap();
        assert_eq!(
            held_transmit(&mut session, now),
            vec![Packet::PubComp(pub_response(5, ReasonCode::Success))]
        );
    }

    #[test]
    fn a_confirmation_from_an_earlier_connection_is_ignored() {
        let (mut session, now) = connected_with(persistent(ProtocolVersion::V5));
        session
            .handle_packet(publish_in("t", QoS::AtLeastOnce, 1), now)
            .unwrap();
        let old = tickets(&mut session);
        session.handle_connection_lost(now);
        assert_eq!(session.unconfirmed(), 0);
        assert_eq!(session.unanswered(), 0);
        session.handle_connect(&persistent(ProtocolVersion::V5), false, &config(), now);
        // The client resends what was not acknowledged.
        session
            .handle_packet(publish_in("t", QoS::AtLeastOnce, 1), now)
            .unwrap();
        let new = tickets(&mut session);
        assert_ne!(old, new);
        session.confirm(old[0]);
        assert_eq!(held_transmit(&mut session, now), vec![]);
        assert_eq!(session.unconfirmed(), 1);
        session.confirm(new[0]);
        assert_eq!(held_transmit(&mut session, now), vec![puback(1)]);
    }

    #[test]
    fn closing_drops_held_answers_so_the_disconnect_goes_out() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        session.handle_packet(Packet::PingReq, now).unwrap();
        session
            .handle_packet(publish_in("t", QoS::AtLeastOnce, 1), now)
            .unwrap();
        let tickets = tickets(&mut session);
        let result = session.handle_packet(publish_in("a/#", QoS::AtMostOnce, 0), now);
        assert_eq!(result, Err(ReasonCode::TopicNameInvalid));
        assert_eq!(session.unconfirmed(), 0);
        session.confirm(tickets[0]);
        let sent = held_transmit(&mut session, now);
        assert!(
            matches!(sent.as_slice(), [Packet::PingResp, Packet::Disconnect(_)]),
            "{sent:?}"
        );
    }

    #[test]
    fn pingresp_owed_is_dropped_with_the_connection() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        session.handle_packet(Packet::PingReq, now).unwrap();
        session.handle_connection_lost(now);
        assert_eq!(session.unanswered(), 0);
        session.handle_connect(&connect(ProtocolVersion::V5), false, &config(), now);
        assert_eq!(transmit(&mut session, now), vec![]);
    }
}
