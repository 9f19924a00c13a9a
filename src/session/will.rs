//! What happens once the connection is gone: the will (at once or after its
//! delay) and the end of the session (at once or after its expiry).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;

use super::{Session, SessionAction};
use crate::message::Message;
use crate::protocol::{LastWill, PublishProperties};

/// `now + secs`, or `None` (never) when that is past what `Instant` holds.
fn deadline(now: Instant, secs: u32) -> Option<Instant> {
    now.checked_add(Duration::from_secs(secs.into()))
}

/// A connection's will, and when it goes out once its delay has started.
#[derive(Debug)]
pub(super) struct Will {
    last: LastWill,
    /// Set when the connection is gone and the will has a delay; a will
    /// without one goes out at once.
    due: Option<Instant>,
}

impl Will {
    pub fn new(last: LastWill) -> Will {
        Will { last, due: None }
    }

    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    pub fn last(&self) -> &LastWill {
        &self.last
    }

    /// The time a restored will goes out, if its delay had started.
    pub fn set_due(&mut self, due: Option<Instant>) {
        self.due = due;
    }
}

impl Session {
    pub(super) fn connection_lost(&mut self, now: Instant) {
        if !self.connected {
            return;
        }
        self.connection_fenced();

        if let Some(will) = &mut self.will {
            let delay = will.last.properties.will_delay_interval.unwrap_or(0);
            if delay == 0 {
                self.publish_will(now);
            } else {
                will.due = deadline(now, delay);
                // A delay too long to represent can only end with the
                // session; without an expiry either, the will never fires.
            }
        }
        match self.session_expiry {
            0 => self.end(now),
            u32::MAX => {}
            secs => self.expires_at = deadline(now, secs),
        }
    }

    /// The connection ended because this node was cut off from the
    /// cluster's majority (`ShardState::fence`): the session is offline,
    /// but its will and expiry wait for the ownership raft's word on who
    /// holds it, as after a restart
    /// ([`Session::connection_cut_by_restart`]).
    pub fn connection_fenced(&mut self) {
        self.connected = false;
        self.closing = false;
        // Acks owed to the client are answered again when it resends;
        // resends owed to it are rebuilt from the inflight state on resume.
        self.control.clear();
        self.pingresp_owed = false;
        self.inflight.clear_resends();
    }

    pub(super) fn timeout(&mut self, now: Instant) {
        if self
            .will
            .as_ref()
            .and_then(|will| will.due)
            .is_some_and(|due| due <= now)
        {
            self.publish_will(now);
        }
        if self.expires_at.is_some_and(|at| at <= now) {
            self.end(now);
        }
    }

    /// The session is over. A will still waiting out its delay goes now:
    /// it is sent when the delay passes or the session ends, whichever
    /// comes first (spec 3.1.2.5).
    pub(super) fn end(&mut self, now: Instant) {
        self.publish_will(now);
        self.journal_end_all();
        self.expires_at = None;
        self.actions.push_back(SessionAction::Expired);
    }

    fn publish_will(&mut self, now: Instant) {
        if let Some(will) = self.will.take() {
            let message = will_message(will.last, self.client_id.clone(), now);
            // Nobody waits for an answer to a will.
            self.actions.push_back(SessionAction::Publish {
                message: Arc::new(message),
                ticket: None,
            });
        }
    }
}

fn will_message(will: LastWill, publisher: ByteString, now: Instant) -> Message {
    let p = will.properties;
    let expires_at = p
        .message_expiry_interval
        .and_then(|secs| deadline(now, secs));
    Message {
        topic: will.topic,
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        properties: PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            topic_alias: None,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
            subscription_identifiers: Vec::new(),
            content_type: p.content_type,
        }
        .into(),
        publisher,
        expires_at,
        received_at: now,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::{Connect, ProtocolVersion, QoS, ReasonCode, WillProperties};
    use crate::session::testing::*;

    fn with_will(
        protocol: ProtocolVersion,
        delay: Option<u32>,
        session_expiry: Option<u32>,
    ) -> Connect {
        let mut connect = connect(protocol);
        let mut will = will("w");
        will.properties.will_delay_interval = delay;
        connect.will = Some(will);
        connect.properties.session_expiry_interval = session_expiry;
        connect
    }

    fn published_wills(session: &mut Session) -> Vec<Arc<Message>> {
        actions(session)
            .into_iter()
            .filter_map(|action| match action {
                SessionAction::Publish { message, .. } => Some(message),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn will_message_carries_the_will_properties() {
        let now = Instant::now();
        let will = LastWill {
            topic: "status/c".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval: Some(5),
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                content_type: Some("text/plain".into()),
                response_topic: Some("r".into()),
                correlation_data: Some(Bytes::from_static(b"id")),
                user_properties: vec![("k".into(), "v".into())],
            },
        };
        let message = will_message(will, "c".into(), now);
        assert_eq!(message.topic, "status/c");
        assert_eq!(message.payload, Bytes::from_static(b"offline"));
        assert_eq!(message.qos, QoS::ExactlyOnce);
        assert!(message.retain);
        assert_eq!(message.publisher, "c");
        assert_eq!(message.expires_at, Some(now + Duration::from_secs(60)));
        let p = &message.properties;
        assert_eq!(p.payload_format_indicator, Some(1));
        assert_eq!(p.message_expiry_interval, Some(60));
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.response_topic.as_deref(), Some("r"));
        assert_eq!(p.correlation_data, Some(Bytes::from_static(b"id")));
        assert_eq!(p.user_properties, vec![("k".into(), "v".into())]);
    }

    #[test]
    fn abnormal_close_publishes_the_will() {
        let (mut session, now) = connected_with(with_will(ProtocolVersion::V3_1_1, None, None));
        session.handle_connection_lost(now);
        let acts = actions(&mut session);
        assert!(
            matches!(&acts[..], [SessionAction::Publish { message: m, .. }, SessionAction::Expired] if m.topic == "will/w")
        );
        assert!(!session.is_connected());
    }

    #[test]
    fn protocol_error_close_publishes_the_will() {
        let (mut session, now) = connected_with(with_will(ProtocolVersion::V5, None, Some(60)));
        assert!(session.handle_packet(Packet::PingResp, now).is_err());
        session.handle_connection_lost(now);
        assert_eq!(published_wills(&mut session).len(), 1);
    }

    use crate::protocol::Packet;

    #[test]
    fn normal_disconnect_discards_the_will() {
        for protocol in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            let (mut session, now) = connected_with(with_will(protocol, None, None));
            session
                .handle_packet(disconnect(ReasonCode::Success, None), now)
                .unwrap();
            session.handle_connection_lost(now);
            assert_eq!(
                actions(&mut session),
                vec![SessionAction::Close, SessionAction::Expired]
            );
        }
    }

    #[test]
    fn disconnect_with_will_message_publishes_it() {
        let (mut session, now) = connected_with(with_will(ProtocolVersion::V5, None, Some(60)));
        session
            .handle_packet(disconnect(ReasonCode::DisconnectWithWillMessage, None), now)
            .unwrap();
        session.handle_connection_lost(now);
        let wills = published_wills(&mut session);
        assert_eq!(wills.len(), 1);
        assert_eq!(wills[0].topic, "will/w");
        assert_eq!(session.poll_timeout(), Some(now + Duration::from_secs(60)));
    }

    #[test]
    fn delayed_will_goes_out_when_the_delay_passes() {
        let (mut session, now) =
            connected_with(with_will(ProtocolVersion::V5, Some(10), Some(100)));
        session.handle_connection_lost(now);
        assert!(actions(&mut session).is_empty());
        assert_eq!(session.poll_timeout(), Some(now + Duration::from_secs(10)));
        session.handle_timeout(now + Duration::from_secs(9));
        assert!(actions(&mut session).is_empty());
        session.handle_timeout(now + Duration::from_secs(10));
        assert_eq!(published_wills(&mut session).len(), 1);
        assert_eq!(session.poll_timeout(), Some(now + Duration::from_secs(100)));
        session.handle_timeout(now + Duration::from_secs(100));
        assert_eq!(actions(&mut session), vec![SessionAction::Expired]);
        assert_eq!(session.poll_timeout(), None);
    }

    #[test]
    fn reconnect_cancels_a_delayed_will() {
        let connect = with_will(ProtocolVersion::V5, Some(10), Some(100));
        let (mut session, now) = connected_with(connect.clone());
        session.handle_connection_lost(now);
        let later = now + Duration::from_secs(5);
        let mut again = connect;
        again.will = None;
        let connack = session.handle_connect(&again, false, &config(), later);
        assert!(connack.session_present);
        assert_eq!(session.poll_timeout(), None);
        session.handle_timeout(now + Duration::from_secs(200));
        assert!(actions(&mut session).is_empty());
        // The new connection had no will: losing it publishes nothing.
        session.handle_connection_lost(later);
        assert!(published_wills(&mut session).is_empty());
    }

    #[test]
    fn will_goes_out_at_session_end_if_sooner() {
        let (mut session, now) = connected_with(with_will(ProtocolVersion::V5, Some(60), Some(20)));
        session.handle_connection_lost(now);
        assert_eq!(session.poll_timeout(), Some(now + Duration::from_secs(20)));
        session.handle_timeout(now + Duration::from_secs(20));
        let acts = actions(&mut session);
        assert!(matches!(
            &acts[..],
            [SessionAction::Publish { .. }, SessionAction::Expired]
        ));
        assert_eq!(session.poll_timeout(), None);
    }

    #[test]
    fn delayed_will_of_a_session_ending_now_goes_now() {
        let (mut session, now) = connected_with(with_will(ProtocolVersion::V5, Some(60), None));
        session.handle_connection_lost(now);
        let acts = actions(&mut session);
        assert!(matches!(
            &acts[..],
            [SessionAction::Publish { .. }, SessionAction::Expired]
        ));
    }

    #[test]
    fn discarding_the_session_publishes_a_delayed_will() {
        let (mut session, now) =
            connected_with(with_will(ProtocolVersion::V5, Some(60), Some(600)));
        session.handle_connection_lost(now);
        assert!(actions(&mut session).is_empty());
        session.handle_discard(now + Duration::from_secs(1));
        let acts = actions(&mut session);
        assert!(
            matches!(&acts[..], [SessionAction::Publish { message: m, .. }, SessionAction::Expired] if m.topic == "will/w")
        );
        assert_eq!(session.poll_timeout(), None);
    }

    #[test]
    fn v3_clean_session_0_never_expires() {
        let (mut session, now) = connected_with(persistent(ProtocolVersion::V3_1_1));
        session.handle_connection_lost(now);
        assert!(actions(&mut session).is_empty());
        assert_eq!(session.poll_timeout(), None);
    }

    #[test]
    fn v5_session_expiry_max_never_expires() {
        let mut connect = persistent(ProtocolVersion::V5);
        connect.properties.session_expiry_interval = Some(u32::MAX);
        let (mut session, now) = connected_with(connect);
        session.handle_connection_lost(now);
        assert_eq!(session.poll_timeout(), None);
    }

    #[test]
    fn session_expires_after_its_interval() {
        let (mut session, now) = connected_with(persistent(ProtocolVersion::V5));
        session.handle_connection_lost(now);
        assert_eq!(
            session.poll_timeout(),
            Some(now + Duration::from_secs(3600))
        );
        session.handle_timeout(now + Duration::from_secs(3599));
        assert!(actions(&mut session).is_empty());
        session.handle_timeout(now + Duration::from_secs(3600));
        assert_eq!(actions(&mut session), vec![SessionAction::Expired]);
    }

    #[test]
    fn reconnect_stops_expiry() {
        let (mut session, now) = connected_with(persistent(ProtocolVersion::V5));
        session.handle_connection_lost(now);
        session.handle_connect(&persistent(ProtocolVersion::V5), false, &config(), now);
        assert_eq!(session.poll_timeout(), None);
    }

    #[test]
    fn connection_lost_twice_is_harmless() {
        let (mut session, now) = connected_with(with_will(ProtocolVersion::V5, None, Some(60)));
        session.handle_connection_lost(now);
        session.handle_connection_lost(now);
        assert_eq!(published_wills(&mut session).len(), 1);
    }
}
