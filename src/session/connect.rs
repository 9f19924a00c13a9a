//! CONNECT (keep-alive, limits, will, resume) and DISCONNECT.

use std::num::NonZeroU32;
use std::time::Instant;

use super::alias::{IncomingAliases, OutgoingAliases};
use super::inflight::{Flight, Resend};
use super::will::Will;
use super::{Limits, Problem, Session, SessionConfig};
use crate::protocol::topic::valid_topic_name;
use crate::protocol::{
    ConnAck, ConnAckProperties, Connect, Disconnect, Packet, ProtocolVersion, PubResponse,
    PubResponseProperties, ReasonCode,
};

/// The keep-alive the client is held to. `u16::MAX` as the maximum means no
/// limit, so a client may then also ask for none (0).
fn negotiate_keep_alive(asked: u16, max: u16) -> u16 {
    if max == u16::MAX || (asked != 0 && asked <= max) {
        asked
    } else {
        max
    }
}

/// Seconds the session outlives the connection as CONNECT asks. 3.1.1 has
/// no interval: clean session 0 keeps the session for ever.
fn session_expiry(connect: &Connect) -> u32 {
    if connect.protocol.is_v5() {
        connect.properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    }
}

/// Why a CONNECT is refused, if it is.
fn refusal(connect: &Connect, config: &SessionConfig) -> Option<Problem> {
    if let Some(will) = &connect.will
        && !(valid_topic_name(&will.topic) && config.topics.admits(&will.topic))
    {
        return Some(Problem::new(
            ReasonCode::TopicNameInvalid,
            format!("invalid will topic {:?}", &*will.topic),
        ));
    }
    // No enhanced authentication method is supported: a server that does
    // not support the one named refuses with 0x8C (spec 4.12).
    if let Some(method) = &connect.properties.authentication_method {
        return Some(Problem::new(
            ReasonCode::BadAuthenticationMethod,
            format!("authentication method {:?} is not supported", &**method),
        ));
    }
    None
}

pub(super) fn pub_response(packet_id: u16, reason: ReasonCode) -> PubResponse {
    PubResponse {
        packet_id,
        reason,
        properties: PubResponseProperties::default(),
    }
}

impl Session {
    /// The CONNACK refusing `connect`, if it must be refused whatever the
    /// session: the shard asks before it takes over a connected session, so
    /// that a refused client cannot knock out the one already connected.
    pub fn refuse_connect(connect: &Connect, config: &SessionConfig) -> Option<ConnAck> {
        let problem = refusal(connect, config)?;
        // CONNACK may carry a Reason String whatever Request Problem
        // Information says (spec 3.1.2.11.7); 3.1.1 has no properties.
        let properties = if connect.protocol.is_v5() {
            ConnAckProperties {
                reason_string: Some(problem.detail.into()),
                ..ConnAckProperties::default()
            }
        } else {
            ConnAckProperties::default()
        };
        Some(ConnAck {
            session_present: false,
            reason: problem.reason,
            properties,
        })
    }

    pub(super) fn connect(
        &mut self,
        connect: &Connect,
        assigned_client_id: bool,
        config: &SessionConfig,
    ) -> ConnAck {
        // Checked before anything changes: a refused CONNECT must leave a
        // stored session as it was.
        if let Some(connack) = Session::refuse_connect(connect, config) {
            return connack;
        }

        let session_present = self.had_connection;
        self.had_connection = true;
        self.connected = true;
        self.closing = false;
        self.protocol = connect.protocol;
        self.limits = Limits::new(config);
        self.keep_alive = negotiate_keep_alive(connect.keep_alive, config.max_keepalive);
        self.session_expiry = session_expiry(connect);
        self.connected_with_zero_expiry = self.session_expiry == 0;
        self.update_journal(config);
        self.problem_information = connect
            .properties
            .request_problem_information
            .unwrap_or(true);
        // Aliases belong to the network connection (spec 3.3.2.3.4): each
        // CONNECT starts both tables empty, so a PUBLISH resent after a
        // reconnect names its topic in full. Below v5 both stay off.
        let v5 = connect.protocol.is_v5();
        let incoming_max = if v5 { config.topic_alias_maximum } else { 0 };
        let outgoing_max = match connect.properties.topic_alias_maximum {
            Some(max) if v5 && config.server_topic_aliases => max,
            _ => 0,
        };
        self.incoming_aliases = IncomingAliases::new(incoming_max);
        self.outgoing_aliases = OutgoingAliases::new(outgoing_max);
        let client_receive_maximum = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        // A zero would stall every QoS 1/2 delivery for good; the codec
        // rejects it, this keeps the window sane regardless.
        self.window = client_receive_maximum.min(config.max_inflight).max(1);
        self.client_max_packet_size =
            (connect.properties.maximum_packet_size).and_then(NonZeroU32::new);
        // A new connection cancels a will still waiting out its delay
        // (spec 3.1.3.2.2), and the session no longer runs toward expiry.
        self.will = connect.will.clone().map(|will| Box::new(Will::new(will)));
        self.expires_at = None;
        // Every unacknowledged outgoing flow is owed again (spec 4.4).
        self.inflight.schedule_resends();

        // Request Response Information gets no Response Information: the
        // broker has no response-topic convention (such as a per-client
        // prefix its authorization would allow) to point clients at, and
        // the spec lets the server send none (3.2.2.3.15). Maximum QoS is
        // left out because it is 2.
        let properties = if v5 {
            ConnAckProperties {
                receive_maximum: Some(config.max_inflight),
                topic_alias_maximum: (config.topic_alias_maximum != 0)
                    .then_some(config.topic_alias_maximum),
                maximum_packet_size: Some(config.max_packet_size),
                retain_available: Some(true),
                wildcard_subscription_available: Some(true),
                subscription_identifiers_available: Some(true),
                shared_subscription_available: Some(true),
                assigned_client_identifier: assigned_client_id.then(|| self.client_id.clone()),
                server_keep_alive: (self.keep_alive != connect.keep_alive)
                    .then_some(self.keep_alive),
                ..ConnAckProperties::default()
            }
        } else {
            ConnAckProperties::default()
        };
        ConnAck {
            session_present,
            reason: ReasonCode::Success,
            properties,
        }
    }

    /// The packet for a resend whose turn has come, built now so that it
    /// reflects acks that arrived since the reconnect.
    pub(super) fn resend_packet(&mut self, resend: Resend, now: Instant) -> Option<Packet> {
        match (resend, self.inflight.get(resend.packet_id())?) {
            (
                Resend::Publish(packet_id),
                Flight::AtLeastOnce(outgoing) | Flight::ExactlyOnce(outgoing),
            ) => {
                // As Mosquitto does: an expired message is not sent again,
                // and its slot is freed.
                if outgoing.message.is_expired(now) {
                    let flight = self.inflight.remove(packet_id);
                    self.journal_flight_ended(flight);
                    self.dropped_expired = self.dropped_expired.saturating_add(1);
                    return None;
                }
                Some(Packet::Publish(outgoing.publish(
                    packet_id,
                    true,
                    self.protocol,
                    now,
                )))
            }
            (Resend::Release(packet_id), Flight::Released(_)) => {
                Some(Packet::PubRel(pub_response(packet_id, ReasonCode::Success)))
            }
            // The flow moved on (a PUBREC came first): what it needs now
            // was queued when it moved.
            _ => None,
        }
    }

    pub(super) fn handle_disconnect(&mut self, disconnect: &Disconnect) -> Result<(), Problem> {
        if let Some(expiry) = disconnect.properties.session_expiry_interval {
            if self.connected_with_zero_expiry && expiry != 0 {
                return Err(Problem::new(
                    ReasonCode::ProtocolError,
                    "DISCONNECT may not set a session expiry when CONNECT set 0".into(),
                ));
            }
            self.session_expiry = expiry;
        }
        if !(self.protocol == ProtocolVersion::V5
            && disconnect.reason == ReasonCode::DisconnectWithWillMessage)
        {
            self.will = None;
        }
        self.close(None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytestring::ByteString;

    use super::*;
    use crate::protocol::{DisconnectProperties, LastWill, QoS};
    use crate::session::testing::*;
    use crate::session::{QueueFullPolicy, SessionAction};

    #[test]
    fn keep_alive_rules() {
        assert_eq!(negotiate_keep_alive(0, u16::MAX), 0);
        assert_eq!(negotiate_keep_alive(60, u16::MAX), 60);
        assert_eq!(negotiate_keep_alive(u16::MAX, u16::MAX), u16::MAX);
        assert_eq!(negotiate_keep_alive(0, 120), 120);
        assert_eq!(negotiate_keep_alive(60, 120), 60);
        assert_eq!(negotiate_keep_alive(120, 120), 120);
        assert_eq!(negotiate_keep_alive(121, 120), 120);
    }

    #[test]
    fn v5_connack_advertises_limits() {
        let now = Instant::now();
        let mut session = Session::new("c".into(), now);
        let connack = session.handle_connect(&connect(ProtocolVersion::V5), false, &config(), now);
        assert_eq!(connack.reason, ReasonCode::Success);
        assert!(!connack.session_present);
        let p = connack.properties;
        assert_eq!(p.receive_maximum, Some(10));
        assert_eq!(p.maximum_packet_size, Some(1 << 20));
        assert_eq!(p.retain_available, Some(true));
        assert_eq!(p.wildcard_subscription_available, Some(true));
        assert_eq!(p.subscription_identifiers_available, Some(true));
        assert_eq!(p.shared_subscription_available, Some(true));
        assert_eq!(p.topic_alias_maximum, Some(10));
        assert_eq!(p.maximum_qos, None);
        assert_eq!(p.response_information, None);
        assert_eq!(p.reason_string, None);
        assert_eq!(p.assigned_client_identifier, None);
        assert_eq!(p.server_keep_alive, None);
        assert_eq!(session.keep_alive_timeout(), Some(Duration::from_secs(90)));
        assert!(session.is_connected());
        assert_eq!(session.protocol(), ProtocolVersion::V5);
    }

    #[test]
    fn topic_alias_maximum_zero_is_not_advertised() {
        let now = Instant::now();
        let mut session = Session::new("c".into(), now);
        let config = SessionConfig {
            topic_alias_maximum: 0,
            ..config()
        };
        let connack = session.handle_connect(&connect(ProtocolVersion::V5), false, &config, now);
        assert_eq!(connack.properties.topic_alias_maximum, None);
    }

    #[test]
    fn response_information_is_never_returned() {
        let now = Instant::now();
        let mut session = Session::new("c".into(), now);
        let mut packet = connect(ProtocolVersion::V5);
        packet.properties.request_response_information = Some(true);
        let connack = session.handle_connect(&packet, false, &config(), now);
        assert_eq!(connack.reason, ReasonCode::Success);
        assert_eq!(connack.properties.response_information, None);
    }

    #[test]
    fn authentication_method_is_refused_without_touching_the_session() {
        let (mut session, now) = connected_with(persistent(ProtocolVersion::V5));
        session.handle_connection_lost(now);
        let mut packet = persistent(ProtocolVersion::V5);
        packet.properties.authentication_method = Some("SCRAM-SHA-1".into());
        let connack = session.handle_connect(&packet, false, &config(), now);
        assert_eq!(connack.reason, ReasonCode::BadAuthenticationMethod);
        assert_eq!(
            connack.properties.reason_string.as_deref(),
            Some("authentication method \"SCRAM-SHA-1\" is not supported")
        );
        assert!(!connack.session_present);
        assert!(!session.is_connected());
        // Only the reason: a refusal advertises no limits.
        assert_eq!(connack.properties.receive_maximum, None);
        // Even a client asking for no problem information gets the string:
        // CONNACK is exempt (spec 3.1.2.11.7).
        packet.properties.request_problem_information = Some(false);
        let connack = session.handle_connect(&packet, false, &config(), now);
        assert!(connack.properties.reason_string.is_some());
    }

    #[test]
    fn refusal_below_v5_has_no_reason_string() {
        let now = Instant::now();
        let mut session = Session::new("c".into(), now);
        let mut packet = connect(ProtocolVersion::V3_1_1);
        packet.will = Some(LastWill {
            topic: "a/#".into(),
            ..will("w")
        });
        let connack = session.handle_connect(&packet, false, &config(), now);
        assert_eq!(connack.reason, ReasonCode::TopicNameInvalid);
        assert_eq!(connack.properties, ConnAckProperties::default());
    }

    #[test]
    fn assigned_client_id_is_returned() {
        let now = Instant::now();
        let mut session = Session::new("auto-1".into(), now);
        let connack = session.handle_connect(&connect(ProtocolVersion::V5), true, &config(), now);
        assert_eq!(
            connack.properties.assigned_client_identifier,
            Some(ByteString::from("auto-1"))
        );
    }

    #[test]
    fn v3_connack_has_no_properties() {
        let now = Instant::now();
        let mut session = Session::new("c".into(), now);
        let connack =
            session.handle_connect(&connect(ProtocolVersion::V3_1_1), false, &config(), now);
        assert_eq!(connack.properties, ConnAckProperties::default());
        assert_eq!(connack.reason, ReasonCode::Success);
    }

    #[test]
    fn v5_keep_alive_capped_and_announced() {
        let now = Instant::now();
        let config = SessionConfig {
            max_keepalive: 120,
            ..config()
        };
        for (asked, effective) in [(300, 120), (0, 120)] {
            let mut session = Session::new("c".into(), now);
            let mut packet = connect(ProtocolVersion::V5);
            packet.keep_alive = asked;
            let connack = session.handle_connect(&packet, false, &config, now);
            assert_eq!(connack.properties.server_keep_alive, Some(effective));
            assert_eq!(
                session.keep_alive_timeout(),
                Some(Duration::from_millis(u64::from(effective) * 1500))
            );
        }
        let mut session = Session::new("c".into(), now);
        let mut packet = connect(ProtocolVersion::V5);
        packet.keep_alive = 30;
        let connack = session.handle_connect(&packet, false, &config, now);
        assert_eq!(connack.properties.server_keep_alive, None);
        assert_eq!(session.keep_alive_timeout(), Some(Duration::from_secs(45)));
    }

    #[test]
    fn v3_keep_alive_silently_capped() {
        let now = Instant::now();
        let config = SessionConfig {
            max_keepalive: 120,
            ..config()
        };
        let mut session = Session::new("c".into(), now);
        let mut packet = connect(ProtocolVersion::V3_1_1);
        packet.keep_alive = 600;
        let connack = session.handle_connect(&packet, false, &config, now);
        assert_eq!(connack.properties.server_keep_alive, None);
        assert_eq!(session.keep_alive_timeout(), Some(Duration::from_secs(180)));
    }

    #[test]
    fn keep_alive_zero_allowed_without_limit() {
        let now = Instant::now();
        let mut session = Session::new("c".into(), now);
        let mut packet = connect(ProtocolVersion::V5);
        packet.keep_alive = 0;
        let connack = session.handle_connect(&packet, false, &config(), now);
        assert_eq!(connack.properties.server_keep_alive, None);
        assert_eq!(session.keep_alive_timeout(), None);
    }

    #[test]
    fn invalid_will_topic_refused_without_touching_the_session() {
        let now = Instant::now();
        let mut session = Session::new("c".into(), now);
        let mut packet = connect(ProtocolVersion::V5);
        packet.will = Some(LastWill {
            topic: "a/+".into(),
            ..will("w")
        });
        let connack = session.handle_connect(&packet, false, &config(), now);
        assert_eq!(connack.reason, ReasonCode::TopicNameInvalid);
        assert!(!connack.session_present);
        assert!(!session.is_connected());
        assert_eq!(session.poll_transmit(now), None);
    }

    #[test]
    fn will_topic_past_the_limits_refused() {
        let now = Instant::now();
        let config = SessionConfig {
            topics: crate::protocol::topic::TopicLimits {
                max_length: 100,
                max_levels: 2,
            },
            ..config()
        };
        let mut session = Session::new("c".into(), now);
        let mut packet = connect(ProtocolVersion::V5);
        packet.will = Some(LastWill {
            topic: "will/deep/topic".into(),
            ..will("w")
        });
        let connack = session.handle_connect(&packet, false, &config, now);
        assert_eq!(connack.reason, ReasonCode::TopicNameInvalid);
        assert!(!session.is_connected());
        // "will/w" is two levels.
        packet.will = Some(will("w"));
        let connack = session.handle_connect(&packet, false, &config, now);
        assert_eq!(connack.reason, ReasonCode::Success);
    }

    #[test]
    fn session_present_on_the_second_connection() {
        let (mut session, now) = connected(ProtocolVersion::V3_1_1);
        session.handle_connection_lost(now);
        let connack =
            session.handle_connect(&persistent(ProtocolVersion::V3_1_1), false, &config(), now);
        assert!(connack.session_present);
    }

    #[test]
    fn client_maximum_packet_size_kept() {
        let now = Instant::now();
        let mut session = Session::new("c".into(), now);
        let mut packet = connect(ProtocolVersion::V5);
        packet.properties.maximum_packet_size = Some(512);
        session.handle_connect(&packet, false, &config(), now);
        assert_eq!(session.client_max_packet_size(), Some(512));
    }

    #[test]
    fn resume_resends_unacknowledged_flows_with_dup_in_order() {
        let (mut session, now) = connected_with(persistent(ProtocolVersion::V5));
        for (topic, qos) in [
            ("q1", QoS::AtLeastOnce),
            ("q2a", QoS::ExactlyOnce),
            ("q2b", QoS::ExactlyOnce),
        ] {
            session.handle_deliver(&message(topic, qos), delivery(QoS::ExactlyOnce), now);
        }
        let sent = publishes(transmit(&mut session, now));
        assert_eq!(
            sent.iter().map(|p| p.packet_id).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(sent.iter().all(|p| !p.dup));
        // q2b received by the client: PUBREL is what is owed for it.
        session
            .handle_packet(Packet::PubRec(pub_response(3, ReasonCode::Success)), now)
            .unwrap();
        session.handle_connection_lost(now);
        assert_eq!(session.poll_transmit(now), None, "offline");

        let connack =
            session.handle_connect(&persistent(ProtocolVersion::V5), false, &config(), now);
        assert!(connack.session_present);
        let resent = transmit(&mut session, now);
        assert_eq!(resent.len(), 3);
        match &resent[..] {
            [Packet::Publish(a), Packet::Publish(b), Packet::PubRel(rel)] => {
                assert_eq!((a.packet_id, a.dup, a.topic.as_ref()), (1, true, "q1"));
                assert_eq!((b.packet_id, b.dup, b.topic.as_ref()), (2, true, "q2a"));
                assert_eq!(rel.packet_id, 3);
            }
            other => panic!("unexpected resend {other:?}"),
        }
    }

    #[test]
    fn resume_sends_resends_before_queued_messages() {
        let (mut session, now) = connected_with(persistent(ProtocolVersion::V5));
        session.handle_deliver(
            &message("first", QoS::AtLeastOnce),
            delivery(QoS::AtLeastOnce),
            now,
        );
        assert_eq!(transmit(&mut session, now).len(), 1);
        session.handle_connection_lost(now);
        session.handle_deliver(
            &message("second", QoS::AtLeastOnce),
            delivery(QoS::AtLeastOnce),
            now,
        );
        session.handle_connect(&persistent(ProtocolVersion::V5), false, &config(), now);
        let topics: Vec<_> = publishes(transmit(&mut session, now))
            .into_iter()
            .map(|p| (p.topic, p.dup))
            .collect();
        assert_eq!(
            topics,
            vec![("first".into(), true), ("second".into(), false)]
        );
    }

    #[test]
    fn expired_inflight_message_not_resent() {
        let (mut session, now) = connected_with(persistent(ProtocolVersion::V5));
        let short = expiring_message("short", QoS::AtLeastOnce, now, 5);
        session.handle_deliver(&short, delivery(QoS::AtLeastOnce), now);
        session.handle_deliver(
            &message("long", QoS::AtLeastOnce),
            delivery(QoS::AtLeastOnce),
            now,
        );
        assert_eq!(transmit(&mut session, now).len(), 2);
        session.handle_connection_lost(now);
        let later = now + Duration::from_secs(10);
        session.handle_connect(&persistent(ProtocolVersion::V5), false, &config(), later);
        let resent = publishes(transmit(&mut session, later));
        assert_eq!(resent.len(), 1);
        assert_eq!(resent[0].topic, "long");
        assert_eq!(session.take_dropped_expired(), 1);
        assert_eq!(
            session.inflight.len(),
            1,
            "the expired message's slot is free"
        );
    }

    #[test]
    fn incoming_qos2_state_survives_reconnect() {
        let (mut session, now) = connected_with(persistent(ProtocolVersion::V5));
        session
            .handle_packet(publish_in("t", QoS::ExactlyOnce, 7), now)
            .unwrap();
        assert_eq!(actions(&mut session).len(), 1);
        session.handle_connection_lost(now);
        session.handle_connect(&persistent(ProtocolVersion::V5), false, &config(), now);
        let mut again = publish_in("t", QoS::ExactlyOnce, 7);
        if let Packet::Publish(p) = &mut again {
            p.dup = true;
        }
        session.handle_packet(again, now).unwrap();
        assert!(actions(&mut session).is_empty(), "not routed twice");
        assert_eq!(
            transmit(&mut session, now),
            vec![Packet::PubRec(pub_response(7, ReasonCode::Success))]
        );
    }

    #[test]
    fn receive_maximum_caps_the_window() {
        let now = Instant::now();
        let mut session = Session::new("c".into(), now);
        let mut packet = connect(ProtocolVersion::V5);
        packet.properties.receive_maximum = Some(2);
        session.handle_connect(&packet, false, &config(), now);
        assert_eq!(session.window, 2);

        let mut session = Session::new("c".into(), now);
        packet.properties.receive_maximum = Some(500);
        session.handle_connect(&packet, false, &config(), now);
        assert_eq!(session.window, 10, "config max_inflight");

        let mut session = Session::new("c".into(), now);
        session.handle_connect(&connect(ProtocolVersion::V3_1_1), false, &config(), now);
        assert_eq!(session.window, 10);
    }

    #[test]
    fn disconnect_closes_without_a_packet() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        session
            .handle_packet(disconnect(ReasonCode::Success, None), now)
            .unwrap();
        assert_eq!(actions(&mut session), vec![SessionAction::Close]);
        assert_eq!(session.poll_transmit(now), None);
        // Anything read after DISCONNECT is ignored.
        session.handle_packet(Packet::PingReq, now).unwrap();
        assert_eq!(session.poll_transmit(now), None);
    }

    #[test]
    fn disconnect_can_change_session_expiry() {
        let (mut session, now) = connected_with(persistent(ProtocolVersion::V5));
        session
            .handle_packet(disconnect(ReasonCode::Success, Some(30)), now)
            .unwrap();
        session.handle_connection_lost(now);
        assert_eq!(session.poll_timeout(), Some(now + Duration::from_secs(30)));

        let (mut session, now) = connected_with(persistent(ProtocolVersion::V5));
        session
            .handle_packet(disconnect(ReasonCode::Success, Some(0)), now)
            .unwrap();
        actions(&mut session);
        session.handle_connection_lost(now);
        assert_eq!(actions(&mut session), vec![SessionAction::Expired]);
    }

    #[test]
    fn disconnect_may_not_extend_a_zero_expiry() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        let result = session.handle_packet(disconnect(ReasonCode::Success, Some(60)), now);
        assert_eq!(result, Err(ReasonCode::ProtocolError));
        assert_eq!(actions(&mut session), vec![SessionAction::Close]);
        assert_eq!(
            transmit(&mut session, now),
            vec![Packet::Disconnect(Box::new(Disconnect {
                reason: ReasonCode::ProtocolError,
                properties: DisconnectProperties {
                    reason_string: Some(
                        "DISCONNECT may not set a session expiry when CONNECT set 0".into()
                    ),
                    ..DisconnectProperties::default()
                },
            }))]
        );
    }

    #[test]
    fn a_second_connect_is_a_protocol_error() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        let result =
            session.handle_packet(Packet::Connect(Box::new(connect(ProtocolVersion::V5))), now);
        assert_eq!(result, Err(ReasonCode::ProtocolError));
        assert_eq!(actions(&mut session), vec![SessionAction::Close]);
        assert!(matches!(
            transmit(&mut session, now).as_slice(),
            [Packet::Disconnect(disconnect)] if disconnect.reason == ReasonCode::ProtocolError
        ));
    }

    #[test]
    fn v3_protocol_error_closes_without_disconnect() {
        let (mut session, now) = connected(ProtocolVersion::V3_1_1);
        let result = session.handle_packet(Packet::PingResp, now);
        assert_eq!(result, Err(ReasonCode::ProtocolError));
        assert_eq!(actions(&mut session), vec![SessionAction::Close]);
        assert_eq!(session.poll_transmit(now), None);
    }

    #[test]
    fn resend_skipped_when_the_flow_moved_on_first() {
        let (mut session, now) = connected_with(persistent(ProtocolVersion::V5));
        session.handle_deliver(
            &message("q1", QoS::AtLeastOnce),
            delivery(QoS::AtLeastOnce),
            now,
        );
        session.handle_deliver(
            &message("q2", QoS::ExactlyOnce),
            delivery(QoS::ExactlyOnce),
            now,
        );
        assert_eq!(transmit(&mut session, now).len(), 2);
        session.handle_connection_lost(now);
        session.handle_connect(&persistent(ProtocolVersion::V5), false, &config(), now);
        // Acks for the first connection's messages arrive before the
        // resends have gone out.
        session
            .handle_packet(Packet::PubAck(pub_response(1, ReasonCode::Success)), now)
            .unwrap();
        session
            .handle_packet(Packet::PubRec(pub_response(2, ReasonCode::Success)), now)
            .unwrap();
        assert_eq!(
            transmit(&mut session, now),
            vec![Packet::PubRel(pub_response(2, ReasonCode::Success))]
        );
    }

    #[test]
    fn queue_full_disconnect_policy_applies_once_online_again() {
        let config = SessionConfig {
            max_queued_messages: 1,
            queue_full: QueueFullPolicy::Disconnect,
            ..config()
        };
        let now = Instant::now();
        let mut session = Session::new("c".into(), now);
        session.handle_connect(&persistent(ProtocolVersion::V5), false, &config, now);
        session.handle_connection_lost(now);
        let m = message("b", QoS::AtLeastOnce);
        session.handle_deliver(&m, delivery(QoS::AtLeastOnce), now);
        // Offline the policy has no connection to close.
        session.handle_deliver(&m, delivery(QoS::AtLeastOnce), now);
        assert!(actions(&mut session).is_empty());
        session.handle_connect(&persistent(ProtocolVersion::V5), false, &config, now);
        session.handle_deliver(&m, delivery(QoS::AtLeastOnce), now);
        assert_eq!(actions(&mut session), vec![SessionAction::Close]);
    }
}
