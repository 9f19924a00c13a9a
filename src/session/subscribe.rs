//! SUBSCRIBE and UNSUBSCRIBE. The router holds the subscriptions that
//! match; the session keeps the filters only to answer the questions the
//! spec asks of "this session's" subscriptions.
//!
//! A shared subscription is kept and reported under its whole name
//! (`$share/{group}/{filter}`): that name is what UNSUBSCRIBE gives back,
//! and the shard parses it to find the group.

use bytestring::ByteString;

use super::{Problem, Session, SessionAction};
use crate::protocol::topic::valid_topic_filter;
use crate::protocol::{
    Packet, QoS, ReasonCode, RetainHandling, SubAck, SubAckProperties, Subscribe, UnsubAck,
    UnsubAckProperties, Unsubscribe,
};
use crate::router::shared;

fn granted(qos: QoS) -> ReasonCode {
    match qos {
        QoS::AtMostOnce => ReasonCode::Success,
        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
        QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
    }
}

/// A Reason String naming each refused filter and why, or `None` when all
/// were granted.
fn refusals(filters: &[ByteString], reasons: &[ReasonCode]) -> Option<ByteString> {
    let refused: Vec<String> = filters
        .iter()
        .zip(reasons)
        .filter(|(_, reason)| reason.is_error())
        .map(|(filter, reason)| {
            let why = match reason {
                ReasonCode::TopicFilterInvalid => "invalid topic filter",
                ReasonCode::SharedSubscriptionsNotSupported => "shared subscriptions not supported",
                ReasonCode::NotAuthorized => "not authorized by the acl",
                _ => "refused",
            };
            format!("{filter:?}: {why}")
        })
        .collect();
    (!refused.is_empty()).then(|| refused.join("; ").into())
}

impl Session {
    /// Each filter is answered on its own; the SUBACK is queued after the
    /// Subscribe actions, but as a control packet it still leaves before
    /// the retained messages those actions deliver.
    ///
    /// `Err` for a v5 SUBSCRIBE setting No Local on a shared subscription,
    /// a Protocol Error (spec 3.8.3.1) that refuses the whole packet.
    pub(super) fn handle_subscribe(&mut self, subscribe: Subscribe) -> Result<(), Problem> {
        if let Some(shared) = subscribe
            .filters
            .iter()
            .find(|s| s.options.no_local && shared::is_shared(&s.filter))
        {
            return Err(Problem::new(
                ReasonCode::ProtocolError,
                format!("no local on shared subscription {}", shared.filter),
            ));
        }
        let subscription_id = if self.protocol.is_v5() {
            subscribe.properties.subscription_identifier
        } else {
            None
        };
        // Kept for the Reason String (refcounted, not copied).
        let filters: Vec<_> = subscribe
            .filters
            .iter()
            .map(|subscription| subscription.filter.clone())
            .collect();
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        for subscription in subscribe.filters {
            let filter = subscription.filter;
            let options = subscription.options;
            let is_shared = shared::is_shared(&filter);
            let topics = self.limits.topics();
            // A shared subscription is checked on the filter it shares.
            let plain = if is_shared {
                shared::parse(&filter).map(|share| share.filter)
            } else {
                valid_topic_filter(&filter).then_some(&*filter)
            };
            let Some(plain) = plain.filter(|plain| topics.admits(plain)) else {
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            };
            if !self.may_subscribe(plain) {
                reasons.push(ReasonCode::NotAuthorized);
                continue;
            }
            // Replacing a subscription the session holds adds nothing.
            if self.subscriptions.len() >= self.limits.max_subscriptions()
                && !self.subscriptions.contains(&filter)
            {
                reasons.push(ReasonCode::QuotaExceeded);
                continue;
            }
            let is_new = self.subscriptions.insert(filter.clone());
            // A shared subscription gets no retained messages (spec 4.8.2).
            let send_retained = !is_shared
                && match options.retain_handling {
                    RetainHandling::OnSubscribe => true,
                    RetainHandling::OnNewSubscribe => is_new,
                    RetainHandling::DoNotSend => false,
                };
            reasons.push(granted(options.qos));
            // All barriers sit before the SUBACK, so it waits for every
            // filter's; a refused filter adds no route to wait for.
            let ticket = self.control.hold();
            self.actions.push_back(SessionAction::Subscribe {
                filter,
                options,
                subscription_id,
                send_retained,
                ticket,
            });
        }
        let properties = SubAckProperties {
            reason_string: refusals(&filters, &reasons),
            ..SubAckProperties::default()
        };
        self.control.push_back(Packet::SubAck(Box::new(SubAck {
            packet_id: subscribe.packet_id,
            reasons,
            properties,
        })));
        Ok(())
    }

    /// The filters this session holds, shared ones under their whole
    /// name. The shard routes exactly these: it keeps no set of its own,
    /// so that a session carries its filters once.
    pub fn subscriptions(&self) -> impl Iterator<Item = &ByteString> + '_ {
        self.subscriptions.iter()
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// A subscription the session held before it came back (from the
    /// store, or from another node), which the shard routes again.
    pub fn restore_subscription(&mut self, filter: ByteString) {
        self.subscriptions.insert(filter);
    }

    /// Empties the session's filters, for the shard to remove their routes
    /// as the session leaves.
    pub fn take_subscriptions(&mut self) -> Vec<ByteString> {
        self.subscriptions.drain().collect()
    }

    pub(super) fn handle_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        for filter in unsubscribe.filters {
            if self.subscriptions.remove(&filter) {
                reasons.push(ReasonCode::Success);
                self.actions
                    .push_back(SessionAction::Unsubscribe { filter });
            } else {
                reasons.push(ReasonCode::NoSubscriptionExisted);
            }
        }
        // 3.1.1 UNSUBACK has no reason codes.
        if !self.protocol.is_v5() {
            reasons.clear();
        }
        self.control.push_back(Packet::UnsubAck(Box::new(UnsubAck {
            packet_id: unsubscribe.packet_id,
            reasons,
            properties: UnsubAckProperties::default(),
        })));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytestring::ByteString;

    use super::*;
    use crate::protocol::topic::TopicLimits;
    use crate::protocol::{
        ProtocolVersion, SubscribeProperties, SubscriptionOptions, TopicSubscription,
    };
    use crate::session::testing::*;
    use crate::session::{SessionConfig, Ticket};

    fn subscribe(filters: &[(&str, SubscriptionOptions)], id: Option<u32>) -> Packet {
        Packet::Subscribe(Subscribe {
            packet_id: 3,
            filters: filters
                .iter()
                .map(|&(filter, options)| TopicSubscription {
                    filter: filter.into(),
                    options,
                })
                .collect(),
            properties: SubscribeProperties {
                subscription_identifier: id,
                ..SubscribeProperties::default()
            },
        })
    }

    fn qos(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        }
    }

    fn retain_handling(retain_handling: RetainHandling) -> SubscriptionOptions {
        SubscriptionOptions {
            retain_handling,
            ..SubscriptionOptions::default()
        }
    }

    fn unsubscribe(filters: &[&str]) -> Packet {
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 8,
            filters: filters.iter().map(|&f| ByteString::from(f)).collect(),
            properties: Default::default(),
        })
    }

    fn suback_reasons(session: &mut Session, now: Instant) -> Vec<ReasonCode> {
        match transmit(session, now).as_slice() {
            [Packet::SubAck(suback)] => {
                assert_eq!(suback.packet_id, 3);
                suback.reasons.clone()
            }
            other => panic!("expected one SUBACK, got {other:?}"),
        }
    }

    fn send_retained(session: &mut Session) -> Vec<bool> {
        actions(session)
            .into_iter()
            .map(|action| match action {
                SessionAction::Subscribe { send_retained, .. } => send_retained,
                other => panic!("expected Subscribe, got {other:?}"),
            })
            .collect()
    }

    fn suback_reason_string(session: &mut Session, now: Instant) -> Option<String> {
        match transmit(session, now).as_slice() {
            [Packet::SubAck(suback)] => suback
                .properties
                .reason_string
                .as_ref()
                .map(|s| s.to_string()),
            other => panic!("expected one SUBACK, got {other:?}"),
        }
    }

    #[test]
    fn refused_filters_are_named_in_the_reason_string() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        let packet = subscribe(
            &[
                ("a/#/b", qos(QoS::AtMostOnce)),
                ("ok", qos(QoS::AtMostOnce)),
            ],
            None,
        );
        session.handle_packet(packet, now).unwrap();
        assert_eq!(
            suback_reason_string(&mut session, now).as_deref(),
            Some("\"a/#/b\": invalid topic filter")
        );

        let packet = subscribe(&[("ok", qos(QoS::AtMostOnce))], None);
        session.handle_packet(packet, now).unwrap();
        assert_eq!(suback_reason_string(&mut session, now), None);
    }

    #[test]
    fn no_reason_string_when_the_client_asked_for_no_problem_information() {
        let mut quiet = connect(ProtocolVersion::V5);
        quiet.properties.request_problem_information = Some(false);
        let (mut session, now) = connected_with(quiet);
        let packet = subscribe(&[("a/#/b", qos(QoS::AtMostOnce))], None);
        session.handle_packet(packet, now).unwrap();
        assert_eq!(suback_reason_string(&mut session, now), None);
    }

    #[test]
    fn granted_qos_and_failures_per_filter() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        let packet = subscribe(
            &[
                ("a/+", qos(QoS::AtMostOnce)),
                ("a/#/b", qos(QoS::AtLeastOnce)),
                ("$share/g/a", qos(QoS::AtLeastOnce)),
                ("$share/g", qos(QoS::AtLeastOnce)),
                ("b/#", qos(QoS::AtLeastOnce)),
                ("c", qos(QoS::ExactlyOnce)),
            ],
            Some(42),
        );
        session.handle_packet(packet, now).unwrap();
        assert_eq!(
            suback_reasons(&mut session, now),
            vec![
                ReasonCode::Success,
                ReasonCode::TopicFilterInvalid,
                ReasonCode::GrantedQoS1,
                ReasonCode::TopicFilterInvalid,
                ReasonCode::GrantedQoS1,
                ReasonCode::GrantedQoS2,
            ]
        );
        assert_eq!(
            actions(&mut session),
            vec![
                SessionAction::Subscribe {
                    filter: "a/+".into(),
                    options: qos(QoS::AtMostOnce),
                    subscription_id: Some(42),
                    send_retained: true,
                    ticket: Ticket::nth(0),
                },
                SessionAction::Subscribe {
                    filter: "$share/g/a".into(),
                    options: qos(QoS::AtLeastOnce),
                    subscription_id: Some(42),
                    send_retained: false,
                    ticket: Ticket::nth(1),
                },
                SessionAction::Subscribe {
                    filter: "b/#".into(),
                    options: qos(QoS::AtLeastOnce),
                    subscription_id: Some(42),
                    send_retained: true,
                    ticket: Ticket::nth(2),
                },
                SessionAction::Subscribe {
                    filter: "c".into(),
                    options: qos(QoS::ExactlyOnce),
                    subscription_id: Some(42),
                    send_retained: true,
                    ticket: Ticket::nth(3),
                },
            ]
        );
    }

    #[test]
    fn filters_past_the_topic_limits_are_invalid() {
        let config = SessionConfig {
            topics: TopicLimits {
                max_length: 8,
                max_levels: 3,
            },
            ..config()
        };
        let (mut session, now) = connected_with_config(connect(ProtocolVersion::V5), &config);
        let packet = subscribe(
            &[
                ("a/b/c", qos(QoS::AtMostOnce)),
                ("a/b/c/d", qos(QoS::AtMostOnce)),
                ("abcdefghi", qos(QoS::AtMostOnce)),
                ("+/+/#", qos(QoS::AtMostOnce)),
            ],
            None,
        );
        session.handle_packet(packet, now).unwrap();
        assert_eq!(
            suback_reasons(&mut session, now),
            vec![
                ReasonCode::Success,
                ReasonCode::TopicFilterInvalid,
                ReasonCode::TopicFilterInvalid,
                ReasonCode::Success,
            ]
        );
    }

    #[test]
    fn subscriptions_past_the_limit_exceed_the_quota() {
        let config = SessionConfig {
            max_subscriptions: 2,
            ..config()
        };
        let (mut session, now) = connected_with_config(connect(ProtocolVersion::V5), &config);
        let packet = subscribe(
            &[
                ("a", qos(QoS::AtMostOnce)),
                ("b", qos(QoS::AtMostOnce)),
                ("c", qos(QoS::AtMostOnce)),
                // Replacing one held is not a new subscription.
                ("a", qos(QoS::AtLeastOnce)),
            ],
            None,
        );
        session.handle_packet(packet, now).unwrap();
        assert_eq!(
            suback_reasons(&mut session, now),
            vec![
                ReasonCode::Success,
                ReasonCode::Success,
                ReasonCode::QuotaExceeded,
                ReasonCode::GrantedQoS1,
            ]
        );
        assert_eq!(actions(&mut session).len(), 3);
        // Unsubscribing frees a place.
        session.handle_packet(unsubscribe(&["b"]), now).unwrap();
        transmit(&mut session, now);
        actions(&mut session);
        session
            .handle_packet(subscribe(&[("c", qos(QoS::AtMostOnce))], None), now)
            .unwrap();
        assert_eq!(suback_reasons(&mut session, now), vec![ReasonCode::Success]);
    }

    #[test]
    fn suback_waits_for_every_filter_s_ticket() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        let packet = subscribe(
            &[
                ("a", qos(QoS::AtLeastOnce)),
                ("a/#/b", qos(QoS::AtMostOnce)),
                ("$share/g/c", qos(QoS::AtMostOnce)),
            ],
            None,
        );
        session.handle_packet(packet, now).unwrap();
        session.handle_packet(unsubscribe(&["x"]), now).unwrap();
        let tickets = tickets(&mut session);
        assert_eq!(tickets.len(), 2, "one per filter subscribed");
        assert_eq!(session.unconfirmed(), 2);
        assert_eq!(held_transmit(&mut session, now), vec![]);
        session.confirm(tickets[1]);
        assert_eq!(held_transmit(&mut session, now), vec![]);
        session.confirm(tickets[0]);
        let sent = held_transmit(&mut session, now);
        assert!(
            matches!(sent.as_slice(), [Packet::SubAck(_), Packet::UnsubAck(_)]),
            "{sent:?}"
        );
    }

    #[test]
    fn a_suback_refusing_every_filter_waits_for_nothing() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        session
            .handle_packet(subscribe(&[("a/#/b", qos(QoS::AtMostOnce))], None), now)
            .unwrap();
        assert_eq!(tickets(&mut session), vec![]);
        assert!(matches!(
            held_transmit(&mut session, now).as_slice(),
            [Packet::SubAck(_)]
        ));
    }

    #[test]
    fn v3_gets_no_subscription_id() {
        let (mut session, now) = connected(ProtocolVersion::V3_1_1);
        session
            .handle_packet(subscribe(&[("a", qos(QoS::AtLeastOnce))], Some(42)), now)
            .unwrap();
        assert!(matches!(
            actions(&mut session).as_slice(),
            [SessionAction::Subscribe {
                subscription_id: None,
                ..
            }]
        ));
        assert_eq!(
            suback_reasons(&mut session, now),
            vec![ReasonCode::GrantedQoS1]
        );
    }

    #[test]
    fn v3_failures_are_errors_for_the_codec_to_write_as_0x80() {
        let (mut session, now) = connected(ProtocolVersion::V3_1_1);
        let packet = subscribe(
            &[
                ("$share//a", qos(QoS::AtLeastOnce)),
                ("a+", qos(QoS::AtLeastOnce)),
            ],
            None,
        );
        session.handle_packet(packet, now).unwrap();
        assert!(actions(&mut session).is_empty());
        assert!(
            suback_reasons(&mut session, now)
                .iter()
                .all(|r| r.is_error())
        );
    }

    #[test]
    fn retain_handling_0_always_sends() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        let packet = subscribe(&[("a", retain_handling(RetainHandling::OnSubscribe))], None);
        session.handle_packet(packet.clone(), now).unwrap();
        session.handle_packet(packet, now).unwrap();
        assert_eq!(send_retained(&mut session), vec![true, true]);
    }

    #[test]
    fn retain_handling_1_sends_for_new_subscriptions_only() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        let packet = subscribe(
            &[("a", retain_handling(RetainHandling::OnNewSubscribe))],
            None,
        );
        session.handle_packet(packet.clone(), now).unwrap();
        session.handle_packet(packet.clone(), now).unwrap();
        session.handle_packet(unsubscribe(&["a"]), now).unwrap();
        actions(&mut session);
        session.handle_packet(packet, now).unwrap();
        assert_eq!(send_retained(&mut session), vec![true]);
    }

    #[test]
    fn retain_handling_1_for_a_subscription_kept_across_reconnect() {
        let (mut session, now) = connected_with(persistent(ProtocolVersion::V5));
        let packet = subscribe(
            &[("a", retain_handling(RetainHandling::OnNewSubscribe))],
            None,
        );
        session.handle_packet(packet.clone(), now).unwrap();
        assert_eq!(send_retained(&mut session), vec![true]);
        session.handle_connection_lost(now);
        session.handle_connect(&persistent(ProtocolVersion::V5), false, &config(), now);
        session.handle_packet(packet, now).unwrap();
        assert_eq!(send_retained(&mut session), vec![false]);
    }

    #[test]
    fn retain_handling_2_never_sends() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        let packet = subscribe(&[("a", retain_handling(RetainHandling::DoNotSend))], None);
        session.handle_packet(packet, now).unwrap();
        assert_eq!(send_retained(&mut session), vec![false]);
    }

    #[test]
    fn unsubscribe_reasons() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        session
            .handle_packet(subscribe(&[("a", qos(QoS::AtMostOnce))], None), now)
            .unwrap();
        transmit(&mut session, now);
        actions(&mut session);
        session
            .handle_packet(unsubscribe(&["a", "b", "a"]), now)
            .unwrap();
        assert_eq!(
            actions(&mut session),
            vec![SessionAction::Unsubscribe { filter: "a".into() }]
        );
        assert_eq!(
            transmit(&mut session, now),
            vec![Packet::UnsubAck(Box::new(UnsubAck {
                packet_id: 8,
                reasons: vec![
                    ReasonCode::Success,
                    ReasonCode::NoSubscriptionExisted,
                    ReasonCode::NoSubscriptionExisted
                ],
                properties: UnsubAckProperties::default(),
            }))]
        );
    }

    #[test]
    fn v3_unsuback_has_no_reasons() {
        let (mut session, now) = connected(ProtocolVersion::V3_1_1);
        session
            .handle_packet(subscribe(&[("a", qos(QoS::AtMostOnce))], None), now)
            .unwrap();
        transmit(&mut session, now);
        actions(&mut session);
        session.handle_packet(unsubscribe(&["a"]), now).unwrap();
        assert_eq!(
            actions(&mut session),
            vec![SessionAction::Unsubscribe { filter: "a".into() }]
        );
        assert!(matches!(
            transmit(&mut session, now).as_slice(),
            [Packet::UnsubAck(unsuback)] if unsuback.packet_id == 8 && unsuback.reasons.is_empty()
        ));
    }

    #[test]
    fn suback_goes_out_before_retained_messages_delivered_after_it() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        session
            .handle_packet(subscribe(&[("a", qos(QoS::AtLeastOnce))], None), now)
            .unwrap();
        // What the shard does on the Subscribe action.
        assert_eq!(send_retained(&mut session), vec![true]);
        let mut retained = delivery(QoS::AtLeastOnce);
        retained.from_retained_store = true;
        session.handle_deliver(&message("a", QoS::AtLeastOnce), retained, now);
        let sent = transmit(&mut session, now);
        assert!(matches!(sent.as_slice(), [Packet::SubAck(_), Packet::Publish(p)] if p.retain));
    }

    #[test]
    fn shared_subscriptions_get_no_retained_messages_and_unsubscribe_alone() {
        let (mut session, now) = connected(ProtocolVersion::V3_1_1);
        let packet = subscribe(
            &[
                ("$share/g/a", retain_handling(RetainHandling::OnSubscribe)),
                ("a", retain_handling(RetainHandling::OnSubscribe)),
            ],
            None,
        );
        session.handle_packet(packet, now).unwrap();
        assert_eq!(send_retained(&mut session), vec![false, true]);
        transmit(&mut session, now);
        session
            .handle_packet(unsubscribe(&["$share/g/a"]), now)
            .unwrap();
        assert_eq!(
            actions(&mut session),
            vec![SessionAction::Unsubscribe {
                filter: "$share/g/a".into()
            }]
        );
    }

    #[test]
    fn no_local_on_a_shared_subscription_is_a_protocol_error() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        let no_local = SubscriptionOptions {
            no_local: true,
            ..SubscriptionOptions::default()
        };
        let packet = subscribe(
            &[("a", qos(QoS::AtMostOnce)), ("$share/g/a", no_local)],
            None,
        );
        assert_eq!(
            session.handle_packet(packet, now),
            Err(ReasonCode::ProtocolError)
        );
        assert_eq!(actions(&mut session), vec![SessionAction::Close]);
        let sent = transmit(&mut session, now);
        assert!(
            matches!(sent.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::ProtocolError),
            "{sent:?}"
        );
    }
}
