//! Messages routed to the session, on their way to the client: the bounded
//! queue, the inflight window, and the client's acks for them.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use bytestring::ByteString;

use super::connect::pub_response;
use super::inflight::PubRecOutcome;
use super::queue::Outgoing;
use super::{Change, DeliverOutcome, Delivery, DropReason, Problem, QueueFullPolicy, Session};
use crate::message::Message;
use crate::protocol::{Packet, PubResponse, QoS, ReasonCode, UserProperties};

impl Session {
    pub(super) fn deliver(
        &mut self,
        message: &Arc<Message>,
        delivery: Delivery,
        shared: Option<ByteString>,
        now: Instant,
    ) -> DeliverOutcome {
        if message.is_expired(now) {
            return DeliverOutcome::Dropped(DropReason::Expired);
        }
        let qos = message.qos.min(delivery.granted_qos);
        let online = self.connected && !self.closing;
        if !online && qos == QoS::AtMostOnce {
            return DeliverOutcome::Skipped;
        }
        if self.queue.len() >= self.limits.max_queued_messages() {
            if online
                && qos != QoS::AtMostOnce
                && self.limits.queue_full == QueueFullPolicy::Disconnect
            {
                self.close(Some(Problem::new(
                    ReasonCode::QuotaExceeded,
                    format!(
                        "queue of {} messages is full",
                        self.limits.max_queued_messages
                    ),
                )));
            }
            return DeliverOutcome::Dropped(DropReason::QueueFull);
        }
        let v5 = self.protocol.is_v5();
        // Below v5 a subscription can't ask for Retain As Published, so
        // RETAIN is set only for messages from the retained store (3.3.1.3).
        let retain =
            delivery.from_retained_store || (v5 && delivery.retain_as_published && message.retain);
        let subscription_ids = if v5 {
            delivery.subscription_ids
        } else {
            Vec::new()
        };
        let outgoing = Outgoing {
            message: message.clone(),
            qos,
            retain,
            subscription_ids,
            shared,
            seq: self.queued_seq(qos),
        };
        self.journal_queued(&outgoing);
        self.queue.push_back(outgoing);
        DeliverOutcome::Queued
    }

    /// The next packet, with the connection's v5 extras applied: topic
    /// aliases on PUBLISH, and problem information only where the client
    /// takes it.
    pub(super) fn transmit(&mut self, now: Instant) -> Option<Packet> {
        let mut packet = self.next_packet(now)?;
        match &mut packet {
            Packet::Publish(publish) => self.outgoing_aliases.apply(publish),
            packet => self.fit_problem_information(packet),
        }
        Some(packet)
    }

    /// Takes the Reason String and User Properties off a packet when the
    /// client asked for no problem information (spec 3.1.2.11.7: PUBLISH,
    /// CONNACK and DISCONNECT are exempt), or when they would make it larger
    /// than the client's Maximum Packet Size: the packet still goes out,
    /// where the shard would drop it whole. Done here, on the way out, so no
    /// handler has to remember either rule.
    fn fit_problem_information(&self, packet: &mut Packet) {
        let Some((reason_string, user_properties)) = problem_information(packet) else {
            return;
        };
        if reason_string.is_none() && user_properties.is_empty() {
            return;
        }
        let exempt = matches!(packet, Packet::Disconnect(_));
        let withhold = (!self.problem_information && !exempt)
            || self.client_max_packet_size.is_some_and(|max| {
                // Only packets carrying problem information get here: errors,
                // not the hot path, so a trial encoding is cheap enough.
                let mut scratch = BytesMut::new();
                packet
                    .write(self.protocol, &mut scratch)
                    .map_or(true, |len| len > max.get() as usize)
            });
        if withhold && let Some((reason_string, user_properties)) = problem_information(packet) {
            *reason_string = None;
            user_properties.clear();
        }
    }

    fn next_packet(&mut self, now: Instant) -> Option<Packet> {
        if !self.connected {
            return None;
        }
        // Owed only while `control` was empty: nothing there came first.
        if std::mem::take(&mut self.pingresp_owed) {
            return Some(Packet::PingResp);
        }
        if let Some(packet) = self.control.pop_front() {
            return Some(packet);
        }
        if self.closing {
            return None;
        }
        while let Some(resend) = self.inflight.next_resend() {
            if let Some(packet) = self.resend_packet(resend, now) {
                return Some(packet);
            }
        }
        loop {
            let next = self.queue.front()?;
            if next.message.is_expired(now) {
                if let Some(expired) = self.queue.pop_front() {
                    self.journal_ended(&expired);
                }
                self.dropped_expired = self.dropped_expired.saturating_add(1);
                continue;
            }
            if next.qos == QoS::AtMostOnce {
                let outgoing = self.queue.pop_front()?;
                self.sent_received_at = outgoing.latency_start();
                return Some(Packet::Publish(outgoing.publish(
                    0,
                    false,
                    self.protocol,
                    now,
                )));
            }
            if self.inflight.len() >= usize::from(self.window) {
                return None;
            }
            let packet_id = self.inflight.next_free_id()?;
            let outgoing = self.queue.pop_front()?;
            self.sent_received_at = outgoing.latency_start();
            let publish = outgoing.publish(packet_id, false, self.protocol, now);
            if outgoing.seq != 0 {
                self.journal(Change::Sent {
                    seq: outgoing.seq,
                    packet_id,
                });
            }
            self.inflight.start(packet_id, outgoing);
            return Some(Packet::Publish(publish));
        }
    }

    pub(super) fn handle_pubrec(&mut self, pubrec: &PubResponse) {
        // 3.1.1 PUBREC has no reason code: it always accepts.
        let accepted = !(self.protocol.is_v5() && pubrec.reason.is_error());
        match self.inflight.pubrec(pubrec.packet_id, accepted) {
            PubRecOutcome::Release(first) => {
                if let Some(outgoing) = first
                    && outgoing.seq != 0
                {
                    self.journal(Change::Released {
                        seq: outgoing.seq,
                        packet_id: pubrec.packet_id,
                        message: outgoing.message,
                    });
                }
                self.control.push_back(Packet::PubRel(pub_response(
                    pubrec.packet_id,
                    ReasonCode::Success,
                )));
            }
            PubRecOutcome::Ended(outgoing) => self.journal_ended(&outgoing),
            PubRecOutcome::Unknown => {}
        }
    }
}

/// The Reason String and User Properties of a packet the session sends,
/// for the kinds that have them.
fn problem_information(
    packet: &mut Packet,
) -> Option<(&mut Option<ByteString>, &mut UserProperties)> {
    Some(match packet {
        Packet::PubAck(ack) | Packet::PubRec(ack) | Packet::PubRel(ack) | Packet::PubComp(ack) => (
            &mut ack.properties.reason_string,
            &mut ack.properties.user_properties,
        ),
        Packet::SubAck(suback) => (
            &mut suback.properties.reason_string,
            &mut suback.properties.user_properties,
        ),
        Packet::UnsubAck(unsuback) => (
            &mut unsuback.properties.reason_string,
            &mut unsuback.properties.user_properties,
        ),
        Packet::Auth(auth) => (
            &mut auth.properties.reason_string,
            &mut auth.properties.user_properties,
        ),
        Packet::Disconnect(disconnect) => (
            &mut disconnect.properties.reason_string,
            &mut disconnect.properties.user_properties,
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::protocol::{Disconnect, ProtocolVersion, Publish};
    use crate::session::testing::*;
    use crate::session::{SessionAction, SessionConfig};

    fn ack(packet_id: u16) -> PubResponse {
        pub_response(packet_id, ReasonCode::Success)
    }

    fn with_config(config: SessionConfig, connect: crate::protocol::Connect) -> (Session, Instant) {
        let now = Instant::now();
        let mut session = Session::new("c".into(), now);
        session.handle_connect(&connect, false, &config, now);
        (session, now)
    }

    fn aliasing(max: u16) -> crate::protocol::Connect {
        let mut connect = persistent(ProtocolVersion::V5);
        connect.properties.topic_alias_maximum = Some(max);
        connect
    }

    fn topics_and_aliases(packets: Vec<Packet>) -> Vec<(String, Option<u16>)> {
        publishes(packets)
            .into_iter()
            .map(|p| (p.topic.to_string(), p.properties.topic_alias))
            .collect()
    }

    #[test]
    fn outgoing_topic_aliases_up_to_the_client_maximum() {
        let (mut session, now) = connected_with(aliasing(2));
        for topic in ["a", "a", "b", "c", "b", "c"] {
            session.handle_deliver(
                &message(topic, QoS::AtMostOnce),
                delivery(QoS::AtMostOnce),
                now,
            );
        }
        assert_eq!(
            topics_and_aliases(transmit(&mut session, now)),
            vec![
                ("a".into(), Some(1)),
                ("".into(), Some(1)),
                ("b".into(), Some(2)),
                ("c".into(), None),
                ("".into(), Some(2)),
                ("c".into(), None),
            ]
        );
    }

    #[test]
    fn no_outgoing_aliases_unless_the_client_and_config_allow() {
        let m = message("a", QoS::AtMostOnce);
        // The client did not send a Topic Alias Maximum.
        let (mut session, now) = connected(ProtocolVersion::V5);
        session.handle_deliver(&m, delivery(QoS::AtMostOnce), now);
        session.handle_deliver(&m, delivery(QoS::AtMostOnce), now);
        assert!(
            topics_and_aliases(transmit(&mut session, now))
                .iter()
                .all(|(topic, alias)| topic == "a" && alias.is_none())
        );
        // The broker is configured not to.
        let config = SessionConfig {
            server_topic_aliases: false,
            ..config()
        };
        let (mut session, now) = with_config(config, aliasing(5));
        session.handle_deliver(&m, delivery(QoS::AtMostOnce), now);
        session.handle_deliver(&m, delivery(QoS::AtMostOnce), now);
        assert!(
            topics_and_aliases(transmit(&mut session, now))
                .iter()
                .all(|(topic, alias)| topic == "a" && alias.is_none())
        );
    }

    #[test]
    fn resend_after_reconnect_names_its_topic_again() {
        let (mut session, now) = connected_with(aliasing(5));
        let m = message("a", QoS::AtLeastOnce);
        session.handle_deliver(&m, delivery(QoS::AtLeastOnce), now);
        session.handle_deliver(&m, delivery(QoS::AtLeastOnce), now);
        assert_eq!(
            topics_and_aliases(transmit(&mut session, now)),
            vec![("a".into(), Some(1)), ("".into(), Some(1))]
        );
        session.handle_connection_lost(now);
        session.handle_connect(&aliasing(5), false, &config(), now);
        let resent = publishes(transmit(&mut session, now));
        assert!(resent.iter().all(|p| p.dup));
        assert_eq!(
            topics_and_aliases(resent.into_iter().map(Packet::Publish).collect()),
            vec![("a".into(), Some(1)), ("".into(), Some(1))]
        );
        // A client that no longer takes aliases gets full topics.
        session.handle_connection_lost(now);
        session.handle_connect(&persistent(ProtocolVersion::V5), false, &config(), now);
        assert_eq!(
            topics_and_aliases(transmit(&mut session, now)),
            vec![("a".into(), None), ("a".into(), None)]
        );
    }

    #[test]
    fn discarded_announcement_is_made_again() {
        let (mut session, now) = connected_with(aliasing(5));
        let m = message("a", QoS::AtLeastOnce);
        session.handle_deliver(&m, delivery(QoS::AtLeastOnce), now);
        let sent = publishes(transmit(&mut session, now));
        assert_eq!(
            (sent[0].topic.as_ref(), sent[0].properties.topic_alias),
            ("a", Some(1))
        );
        session.discard_publish(&sent[0]);
        assert_eq!(session.inflight.len(), 0);
        session.handle_deliver(&m, delivery(QoS::AtLeastOnce), now);
        assert_eq!(
            topics_and_aliases(transmit(&mut session, now)),
            vec![("a".into(), Some(1))]
        );
    }

    #[test]
    fn problem_information_withheld_on_acks_but_not_on_disconnect() {
        let config = SessionConfig {
            max_queued_messages: 1,
            queue_full: QueueFullPolicy::Disconnect,
            ..config()
        };
        let mut quiet = connect(ProtocolVersion::V5);
        quiet.properties.request_problem_information = Some(false);
        let (mut session, now) = with_config(config, quiet);
        let mut pubcomp = ack(3);
        pubcomp.properties.reason_string = Some("why".into());
        pubcomp.properties.user_properties = vec![("k".into(), "v".into())];
        let mut packet = Packet::PubComp(pubcomp);
        session.fit_problem_information(&mut packet);
        assert_eq!(packet, Packet::PubComp(ack(3)));

        let m = message("t", QoS::AtLeastOnce);
        session.handle_deliver(&m, delivery(QoS::AtLeastOnce), now);
        session.handle_deliver(&m, delivery(QoS::AtLeastOnce), now);
        match transmit(&mut session, now).as_slice() {
            [Packet::Disconnect(disconnect)] => assert_eq!(
                disconnect.properties.reason_string.as_deref(),
                Some("queue of 1 messages is full")
            ),
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
    }

    #[test]
    fn problem_information_dropped_rather_than_exceed_the_client_maximum() {
        let mut small = connect(ProtocolVersion::V5);
        small.properties.maximum_packet_size = Some(20);
        let (mut session, now) = connected_with(small);
        session.handle_packet(topic_alias_99(), now).unwrap_err();
        assert_eq!(
            transmit(&mut session, now),
            vec![Packet::Disconnect(Box::new(Disconnect {
                reason: ReasonCode::TopicAliasInvalid,
                properties: Default::default(),
            }))]
        );

        let (mut session, now) = connected(ProtocolVersion::V5);
        session.handle_packet(topic_alias_99(), now).unwrap_err();
        match transmit(&mut session, now).as_slice() {
            [Packet::Disconnect(disconnect)] => {
                assert!(disconnect.properties.reason_string.is_some())
            }
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
    }

    fn topic_alias_99() -> Packet {
        let mut packet = publish_in("t", QoS::AtMostOnce, 0);
        if let Packet::Publish(publish) = &mut packet {
            publish.properties.topic_alias = Some(99);
        }
        packet
    }

    #[test]
    fn qos1_outgoing_flow() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        let outcome = session.handle_deliver(
            &message("t", QoS::AtLeastOnce),
            delivery(QoS::AtLeastOnce),
            now,
        );
        assert_eq!(outcome, DeliverOutcome::Queued);
        let sent = publishes(transmit(&mut session, now));
        assert_eq!(sent.len(), 1);
        assert_eq!(
            (sent[0].qos, sent[0].packet_id, sent[0].dup),
            (QoS::AtLeastOnce, 1, false)
        );
        assert_eq!(session.inflight.len(), 1);
        session.handle_packet(Packet::PubAck(ack(1)), now).unwrap();
        assert_eq!(session.inflight.len(), 0);
        assert_eq!(transmit(&mut session, now), vec![]);
    }

    #[test]
    fn qos2_outgoing_flow() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        session.handle_deliver(
            &message("t", QoS::ExactlyOnce),
            delivery(QoS::ExactlyOnce),
            now,
        );
        let sent = publishes(transmit(&mut session, now));
        assert_eq!((sent[0].qos, sent[0].packet_id), (QoS::ExactlyOnce, 1));
        session.handle_packet(Packet::PubRec(ack(1)), now).unwrap();
        assert_eq!(transmit(&mut session, now), vec![Packet::PubRel(ack(1))]);
        assert_eq!(session.inflight.len(), 1, "held until PUBCOMP");
        session.handle_packet(Packet::PubComp(ack(1)), now).unwrap();
        assert_eq!(session.inflight.len(), 0);
    }

    #[test]
    fn refused_pubrec_ends_the_flow_without_pubrel() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        session.handle_deliver(
            &message("t", QoS::ExactlyOnce),
            delivery(QoS::ExactlyOnce),
            now,
        );
        transmit(&mut session, now);
        session
            .handle_packet(
                Packet::PubRec(pub_response(1, ReasonCode::NotAuthorized)),
                now,
            )
            .unwrap();
        assert_eq!(transmit(&mut session, now), vec![]);
        assert_eq!(session.inflight.len(), 0);
    }

    #[test]
    fn acks_for_unknown_ids_are_ignored() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        for packet in [
            Packet::PubAck(ack(9)),
            Packet::PubRec(ack(9)),
            Packet::PubComp(ack(9)),
        ] {
            assert_eq!(session.handle_packet(packet, now), Ok(()));
        }
        assert_eq!(transmit(&mut session, now), vec![]);
        assert!(actions(&mut session).is_empty());
    }

    #[test]
    fn qos_is_the_lower_of_message_and_subscription() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        session.handle_deliver(
            &message("a", QoS::ExactlyOnce),
            delivery(QoS::AtLeastOnce),
            now,
        );
        session.handle_deliver(
            &message("b", QoS::AtMostOnce),
            delivery(QoS::ExactlyOnce),
            now,
        );
        let sent = publishes(transmit(&mut session, now));
        assert_eq!(sent[0].qos, QoS::AtLeastOnce);
        assert_eq!((sent[1].qos, sent[1].packet_id), (QoS::AtMostOnce, 0));
    }

    #[test]
    fn inflight_window_respects_receive_maximum() {
        let mut connect = connect(ProtocolVersion::V5);
        connect.properties.receive_maximum = Some(2);
        let (mut session, now) = connected_with(connect);
        for i in 0..4 {
            session.handle_deliver(
                &message(&format!("m{i}"), QoS::AtLeastOnce),
                delivery(QoS::AtLeastOnce),
                now,
            );
        }
        let sent = publishes(transmit(&mut session, now));
        assert_eq!(
            sent.iter().map(|p| p.packet_id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        session.handle_packet(Packet::PubAck(ack(1)), now).unwrap();
        let sent = publishes(transmit(&mut session, now));
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].topic.as_ref(), sent[0].packet_id), ("m2", 3));
    }

    #[test]
    fn discarded_publish_frees_its_slot() {
        let mut connect = connect(ProtocolVersion::V5);
        connect.properties.receive_maximum = Some(1);
        let (mut session, now) = connected_with(connect);
        session.handle_deliver(
            &message("big", QoS::AtLeastOnce),
            delivery(QoS::AtLeastOnce),
            now,
        );
        session.handle_deliver(
            &message("small", QoS::AtLeastOnce),
            delivery(QoS::AtLeastOnce),
            now,
        );
        let sent = publishes(transmit(&mut session, now));
        assert_eq!(sent.len(), 1);
        session.discard_publish(&sent[0]);
        let sent = publishes(transmit(&mut session, now));
        assert_eq!(sent[0].topic, "small");
    }

    #[test]
    fn qos0_does_not_overtake_a_waiting_qos1() {
        let mut connect = connect(ProtocolVersion::V5);
        connect.properties.receive_maximum = Some(1);
        let (mut session, now) = connected_with(connect);
        session.handle_deliver(
            &message("a", QoS::AtLeastOnce),
            delivery(QoS::AtLeastOnce),
            now,
        );
        session.handle_deliver(
            &message("b", QoS::AtLeastOnce),
            delivery(QoS::AtLeastOnce),
            now,
        );
        session.handle_deliver(
            &message("c", QoS::AtMostOnce),
            delivery(QoS::AtMostOnce),
            now,
        );
        let topics = |packets: Vec<Packet>| {
            publishes(packets)
                .into_iter()
                .map(|p| p.topic)
                .collect::<Vec<_>>()
        };
        assert_eq!(topics(transmit(&mut session, now)), vec!["a"]);
        session.handle_packet(Packet::PubAck(ack(1)), now).unwrap();
        assert_eq!(topics(transmit(&mut session, now)), vec!["b", "c"]);
    }

    #[test]
    fn queue_bound_drops_qos0_past_the_limit() {
        let config = SessionConfig {
            max_queued_messages: 2,
            ..config()
        };
        let (mut session, now) = with_config(config, connect(ProtocolVersion::V5));
        let m = message("t", QoS::AtMostOnce);
        assert_eq!(
            session.handle_deliver(&m, delivery(QoS::AtMostOnce), now),
            DeliverOutcome::Queued
        );
        assert_eq!(
            session.handle_deliver(&m, delivery(QoS::AtMostOnce), now),
            DeliverOutcome::Queued
        );
        assert_eq!(
            session.handle_deliver(&m, delivery(QoS::AtMostOnce), now),
            DeliverOutcome::Dropped(DropReason::QueueFull)
        );
        assert!(actions(&mut session).is_empty());
        assert_eq!(transmit(&mut session, now).len(), 2);
        assert_eq!(
            session.handle_deliver(&m, delivery(QoS::AtMostOnce), now),
            DeliverOutcome::Queued
        );
    }

    #[test]
    fn queue_bound_excludes_inflight_messages() {
        let config = SessionConfig {
            max_queued_messages: 1,
            ..config()
        };
        let (mut session, now) = with_config(config, connect(ProtocolVersion::V5));
        let m = message("t", QoS::AtLeastOnce);
        for _ in 0..5 {
            assert_eq!(
                session.handle_deliver(&m, delivery(QoS::AtLeastOnce), now),
                DeliverOutcome::Queued
            );
            assert_eq!(transmit(&mut session, now).len(), 1);
        }
        assert_eq!(session.inflight.len(), 5);
    }

    #[test]
    fn queue_full_qos1_with_drop_policy() {
        let config = SessionConfig {
            max_queued_messages: 1,
            ..config()
        };
        let (mut session, now) = with_config(config, connect(ProtocolVersion::V5));
        let m = message("t", QoS::AtLeastOnce);
        session.handle_deliver(&m, delivery(QoS::AtLeastOnce), now);
        assert_eq!(
            session.handle_deliver(&m, delivery(QoS::AtLeastOnce), now),
            DeliverOutcome::Dropped(DropReason::QueueFull)
        );
        assert!(actions(&mut session).is_empty());
        assert_eq!(transmit(&mut session, now).len(), 1);
    }

    #[test]
    fn queue_full_qos1_with_disconnect_policy() {
        let config = SessionConfig {
            max_queued_messages: 1,
            queue_full: QueueFullPolicy::Disconnect,
            ..config()
        };
        let (mut session, now) = with_config(config, connect(ProtocolVersion::V5));
        let m = message("t", QoS::AtLeastOnce);
        session.handle_deliver(&m, delivery(QoS::AtLeastOnce), now);
        // QoS 0 past the limit is just dropped, whatever the policy.
        assert_eq!(
            session.handle_deliver(&m, delivery(QoS::AtMostOnce), now),
            DeliverOutcome::Dropped(DropReason::QueueFull)
        );
        assert!(actions(&mut session).is_empty());
        assert_eq!(
            session.handle_deliver(&m, delivery(QoS::AtLeastOnce), now),
            DeliverOutcome::Dropped(DropReason::QueueFull)
        );
        assert_eq!(actions(&mut session), vec![SessionAction::Close]);
        // Only the DISCONNECT goes out: the queued message stays for the
        // next connection.
        assert!(matches!(
            transmit(&mut session, now).as_slice(),
            [Packet::Disconnect(disconnect)] if disconnect.reason == ReasonCode::QuotaExceeded
        ));
        // A delivery after Close is treated as for an offline session.
        assert_eq!(
            session.handle_deliver(&m, delivery(QoS::AtMostOnce), now),
            DeliverOutcome::Skipped
        );
        assert!(actions(&mut session).is_empty(), "one Close only");
    }

    #[test]
    fn queue_full_disconnect_policy_v3_closes_silently() {
        let config = SessionConfig {
            max_queued_messages: 0,
            queue_full: QueueFullPolicy::Disconnect,
            ..config()
        };
        let (mut session, now) = with_config(config, connect(ProtocolVersion::V3_1_1));
        let m = message("t", QoS::AtLeastOnce);
        assert_eq!(
            session.handle_deliver(&m, delivery(QoS::AtLeastOnce), now),
            DeliverOutcome::Dropped(DropReason::QueueFull)
        );
        assert_eq!(actions(&mut session), vec![SessionAction::Close]);
        assert_eq!(transmit(&mut session, now), vec![]);
    }

    #[test]
    fn offline_session_queues_qos1_and_skips_qos0() {
        let (mut session, now) = connected_with(persistent(ProtocolVersion::V3_1_1));
        session.handle_connection_lost(now);
        assert_eq!(
            session.handle_deliver(
                &message("a", QoS::AtMostOnce),
                delivery(QoS::ExactlyOnce),
                now
            ),
            DeliverOutcome::Skipped
        );
        assert_eq!(
            session.handle_deliver(
                &message("b", QoS::ExactlyOnce),
                delivery(QoS::AtMostOnce),
                now
            ),
            DeliverOutcome::Skipped,
            "downgraded to QoS 0"
        );
        assert_eq!(
            session.handle_deliver(
                &message("c", QoS::AtLeastOnce),
                delivery(QoS::AtLeastOnce),
                now
            ),
            DeliverOutcome::Queued
        );
        assert_eq!(session.poll_transmit(now), None);
        session.handle_connect(&persistent(ProtocolVersion::V3_1_1), false, &config(), now);
        let sent = publishes(transmit(&mut session, now));
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].topic, "c");
    }

    #[test]
    fn offline_queue_is_bounded() {
        let config = SessionConfig {
            max_queued_messages: 2,
            queue_full: QueueFullPolicy::Disconnect,
            ..config()
        };
        let (mut session, now) = with_config(config, persistent(ProtocolVersion::V5));
        session.handle_connection_lost(now);
        let m = message("t", QoS::AtLeastOnce);
        session.handle_deliver(&m, delivery(QoS::AtLeastOnce), now);
        session.handle_deliver(&m, delivery(QoS::AtLeastOnce), now);
        assert_eq!(
            session.handle_deliver(&m, delivery(QoS::AtLeastOnce), now),
            DeliverOutcome::Dropped(DropReason::QueueFull)
        );
        assert!(actions(&mut session).is_empty());
    }

    #[test]
    fn expired_message_is_not_delivered() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        let m = expiring_message("t", QoS::AtLeastOnce, now, 5);
        assert_eq!(
            session.handle_deliver(&m, delivery(QoS::AtLeastOnce), now + Duration::from_secs(5)),
            DeliverOutcome::Dropped(DropReason::Expired)
        );
    }

    #[test]
    fn message_expiring_in_the_queue_is_dropped_and_counted() {
        let (mut session, now) = connected_with(persistent(ProtocolVersion::V5));
        session.handle_connection_lost(now);
        let short = expiring_message("short", QoS::AtLeastOnce, now, 5);
        let long = expiring_message("long", QoS::AtLeastOnce, now, 100);
        session.handle_deliver(&short, delivery(QoS::AtLeastOnce), now);
        session.handle_deliver(&long, delivery(QoS::AtLeastOnce), now);
        let later = now + Duration::from_secs(30);
        session.handle_connect(&persistent(ProtocolVersion::V5), false, &config(), later);
        let sent = publishes(transmit(&mut session, later));
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].topic, "long");
        assert_eq!(sent[0].properties.message_expiry_interval, Some(70));
        assert_eq!(session.take_dropped_expired(), 1);
        assert_eq!(session.take_dropped_expired(), 0);
    }

    fn retain_flag(protocol: ProtocolVersion, retain: bool, rap: bool, from_store: bool) -> bool {
        let (mut session, now) = connected(protocol);
        let mut m = Arc::unwrap_or_clone(message("t", QoS::AtMostOnce));
        m.retain = retain;
        let delivery = Delivery {
            granted_qos: QoS::AtMostOnce,
            retain_as_published: rap,
            from_retained_store: from_store,
            subscription_ids: vec![],
        };
        session.handle_deliver(&Arc::new(m), delivery, now);
        publishes(transmit(&mut session, now))[0].retain
    }

    #[test]
    fn retain_as_published() {
        use ProtocolVersion::*;
        assert!(!retain_flag(V5, true, false, false));
        assert!(retain_flag(V5, true, true, false));
        assert!(!retain_flag(V5, false, true, false));
        assert!(retain_flag(V5, true, false, true));
        assert!(!retain_flag(V3_1_1, true, true, false));
        assert!(retain_flag(V3_1_1, true, false, true));
    }

    fn sent_with_ids(protocol: ProtocolVersion) -> Publish {
        let (mut session, now) = connected(protocol);
        let delivery = Delivery {
            granted_qos: QoS::AtLeastOnce,
            subscription_ids: vec![1, 5],
            ..Delivery::default()
        };
        session.handle_deliver(&message("t", QoS::AtLeastOnce), delivery, now);
        publishes(transmit(&mut session, now)).remove(0)
    }

    #[test]
    fn subscription_ids_carried_for_v5_only() {
        assert_eq!(
            sent_with_ids(ProtocolVersion::V5)
                .properties
                .subscription_identifiers,
            vec![1, 5]
        );
        assert!(
            sent_with_ids(ProtocolVersion::V3_1_1)
                .properties
                .subscription_identifiers
                .is_empty()
        );
    }

    #[derive(Debug, Clone)]
    enum Step {
        Deliver(u8, u8),
        Ack(usize),
        Transmit,
        Reconnect,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u8..3, 0u8..3).prop_map(|(m, g)| Step::Deliver(m, g)),
            4 => any::<usize>().prop_map(Step::Ack),
            3 => Just(Step::Transmit),
            1 => Just(Step::Reconnect),
        ]
    }

    proptest! {
        /// Whatever is delivered and acked, and however often the client
        /// reconnects, the window is never exceeded, a packet id in use is
        /// never given to a new message, and nothing is lost: every QoS 1/2
        /// message is either queued, in flight or completed.
        #[test]
        fn window_and_packet_ids_hold(steps in proptest::collection::vec(step(), 1..300), receive_max in 1u16..6) {
            let mut connect = persistent(ProtocolVersion::V5);
            connect.properties.receive_maximum = Some(receive_max);
            let (mut session, now) = connected_with(connect.clone());
            let mut in_use: HashSet<u16> = HashSet::new();
            let mut awaiting_pubcomp: HashSet<u16> = HashSet::new();
            let mut accepted = 0usize;
            let mut completed = 0usize;
            for step in steps {
                match step {
                    Step::Deliver(m, g) => {
                        let qos = QoS::from_u8(m).unwrap();
                        let granted = QoS::from_u8(g).unwrap();
                        let outcome = session.handle_deliver(&message("t", qos), delivery(granted), now);
                        if qos.min(granted) != QoS::AtMostOnce && outcome == DeliverOutcome::Queued {
                            accepted += 1;
                        }
                    }
                    Step::Ack(i) => {
                        let mut ids: Vec<u16> = in_use.iter().copied().collect();
                        ids.sort_unstable();
                        if let Some(&id) = ids.get(i % ids.len().max(1)) {
                            if awaiting_pubcomp.remove(&id) {
                                session.handle_packet(Packet::PubComp(ack(id)), now).unwrap();
                                in_use.remove(&id);
                                completed += 1;
                            } else {
                                match session.inflight.get(id) {
                                    Some(crate::session::inflight::Flight::AtLeastOnce(_)) => {
                                        session.handle_packet(Packet::PubAck(ack(id)), now).unwrap();
                                        in_use.remove(&id);
                                        completed += 1;
                                    }
                                    _ => {
                                        session.handle_packet(Packet::PubRec(ack(id)), now).unwrap();
                                        awaiting_pubcomp.insert(id);
                                    }
                                }
                            }
                        }
                    }
                    Step::Transmit => {
                        for packet in transmit(&mut session, now) {
                            if let Packet::Publish(p) = packet && p.qos != QoS::AtMostOnce {
                                if p.dup {
                                    prop_assert!(in_use.contains(&p.packet_id));
                                } else {
                                    prop_assert!(in_use.insert(p.packet_id), "id {} reused", p.packet_id);
                                }
                            }
                        }
                    }
                    Step::Reconnect => {
                        session.handle_connection_lost(now);
                        session.handle_connect(&connect, false, &config(), now);
                    }
                }
                prop_assert!(session.inflight.len() <= usize::from(receive_max));
                prop_assert_eq!(session.inflight.len(), in_use.len());
                let queued = session.queue.iter().filter(|o| o.qos != QoS::AtMostOnce).count();
                prop_assert_eq!(accepted, queued + session.inflight.len() + completed);
            }
        }
    }
}
