//! Builders shared by the session's unit tests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{
    Change, Delivery, QueueFullPolicy, RestoredMessage, RestoredSession, Session, SessionAction,
    SessionConfig, Ticket,
};
use crate::message::Message;
use crate::protocol::topic::TopicLimits;
use crate::protocol::{
    Connect, ConnectProperties, Disconnect, DisconnectProperties, LastWill, LazyPublishProperties,
    Packet, ProtocolVersion, Publish, QoS, ReasonCode, WillProperties,
};

pub fn config() -> SessionConfig {
    SessionConfig {
        max_inflight: 10,
        max_queued_messages: 100,
        queue_full: QueueFullPolicy::Drop,
        max_keepalive: u16::MAX,
        max_packet_size: 1 << 20,
        topic_alias_maximum: 10,
        server_topic_aliases: true,
        topics: TopicLimits::PROTOCOL,
        max_subscriptions: usize::MAX,
        durable: true,
    }
}

/// Clean start, keep-alive 60 s, no will.
pub fn connect(protocol: ProtocolVersion) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: "c".into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

/// A session that outlives its connection: 3.1.1 clean session 0, v5 one
/// hour of expiry.
pub fn persistent(protocol: ProtocolVersion) -> Connect {
    let mut connect = connect(protocol);
    connect.clean_start = false;
    if protocol.is_v5() {
        connect.properties.session_expiry_interval = Some(3600);
    }
    connect
}

/// QoS 1 will on `will/<name>`.
pub fn will(name: &str) -> LastWill {
    LastWill {
        topic: format!("will/{name}").into(),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    }
}

pub fn connected(protocol: ProtocolVersion) -> (Session, Instant) {
    connected_with(connect(protocol))
}

pub fn connected_with(connect: Connect) -> (Session, Instant) {
    connected_with_config(connect, &config())
}

pub fn connected_with_config(connect: Connect, config: &SessionConfig) -> (Session, Instant) {
    let now = Instant::now();
    let mut session = Session::new("c".into(), now);
    let connack = session.handle_connect(&connect, false, config, now);
    assert_eq!(connack.reason, ReasonCode::Success);
    (session, now)
}

pub fn message(topic: &str, qos: QoS) -> Arc<Message> {
    Arc::new(Message {
        topic: topic.into(),
        payload: Bytes::from_static(b"payload"),
        qos,
        retain: false,
        properties: LazyPublishProperties::default(),
        publisher: "other".into(),
        expires_at: None,
        received_at: Instant::now(),
    })
}

pub fn expiring_message(topic: &str, qos: QoS, now: Instant, secs: u32) -> Arc<Message> {
    let mut message = Arc::unwrap_or_clone(message(topic, qos));
    message.properties.message_expiry_interval = Some(secs);
    message.expires_at = Some(now + Duration::from_secs(secs.into()));
    Arc::new(message)
}

pub fn delivery(granted_qos: QoS) -> Delivery {
    Delivery {
        granted_qos,
        ..Delivery::default()
    }
}

pub fn publish_in(topic: &str, qos: QoS, packet_id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: LazyPublishProperties::default(),
        payload: Bytes::from_static(b"in"),
    })
}

pub fn disconnect(reason: ReasonCode, session_expiry_interval: Option<u32>) -> Packet {
    Packet::Disconnect(Box::new(Disconnect {
        reason,
        properties: DisconnectProperties {
            session_expiry_interval,
            ..DisconnectProperties::default()
        },
    }))
}

/// Everything `poll_transmit` has to send once the shard has confirmed
/// every ticket, as a single-node shard has by the time it transmits: the
/// tests of what is answered need not carry tickets around.
pub fn transmit(session: &mut Session, now: Instant) -> Vec<Packet> {
    session.control.confirm_all();
    held_transmit(session, now)
}

/// Everything `poll_transmit` has to send right now, tickets as they are.
pub fn held_transmit(session: &mut Session, now: Instant) -> Vec<Packet> {
    std::iter::from_fn(|| session.poll_transmit(now)).collect()
}

pub fn publishes(packets: Vec<Packet>) -> Vec<Publish> {
    packets
        .into_iter()
        .map(|packet| match packet {
            Packet::Publish(publish) => publish,
            other => panic!("expected PUBLISH, got {other:?}"),
        })
        .collect()
}

pub fn actions(session: &mut Session) -> Vec<SessionAction> {
    std::iter::from_fn(|| session.poll_action()).collect()
}

/// Drains the actions as a shard that has not confirmed anything yet, and
/// returns their tickets in order.
pub fn tickets(session: &mut Session) -> Vec<Ticket> {
    actions(session)
        .into_iter()
        .filter_map(|action| match action {
            SessionAction::Publish { ticket, .. } => ticket,
            SessionAction::Subscribe { ticket, .. } => Some(ticket),
            _ => None,
        })
        .collect()
}

/// The journal's changes since the last call, one line each.
pub fn kinds(session: &mut Session) -> Vec<String> {
    session
        .drain_changes()
        .map(|change| match change {
            Change::Queued { seq, qos, .. } => format!("queued {seq} q{}", qos as u8),
            Change::Sent { seq, packet_id } => format!("sent {seq} #{packet_id}"),
            Change::Released { seq, packet_id, .. } => format!("released {seq} #{packet_id}"),
            Change::ReleaseOwed { seq, packet_id } => format!("release owed {seq} #{packet_id}"),
            Change::Ended { seq, message } => {
                format!(
                    "ended {seq}{}",
                    if message.is_some() { "" } else { " (released)" }
                )
            }
            Change::Awaiting { packet_id } => format!("awaiting #{packet_id}"),
            Change::Completed { packet_id } => format!("completed #{packet_id}"),
        })
        .collect()
}

/// What a resumed session sent: topic (or PUBREL), packet id and DUP.
pub fn resent(sent: Vec<Packet>) -> Vec<(String, u16, bool)> {
    sent.iter()
        .map(|packet| match packet {
            Packet::Publish(Publish {
                topic,
                packet_id,
                dup,
                ..
            }) => (topic.to_string(), *packet_id, *dup),
            Packet::PubRel(rel) => ("PUBREL".into(), rel.packet_id, false),
            other => (format!("{other:?}"), 0, false),
        })
        .collect()
}

/// A store as the shard keeps it, by sequence: what the journal says,
/// applied in order.
#[derive(Default)]
pub struct StoreModel {
    pub owed: BTreeMap<u64, RestoredMessage>,
    pub incoming: Vec<u16>,
}

impl StoreModel {
    pub fn apply(&mut self, session: &mut Session) {
        for change in session.drain_changes() {
            match change {
                Change::Queued {
                    seq,
                    message,
                    qos,
                    retain,
                    subscription_ids,
                    shared,
                } => {
                    self.owed.insert(
                        seq,
                        RestoredMessage {
                            seq,
                            message: Some(message),
                            qos,
                            retain,
                            subscription_ids,
                            shared,
                            packet_id: None,
                        },
                    );
                }
                Change::Sent { seq, packet_id } => {
                    self.owed.get_mut(&seq).unwrap().packet_id = Some(packet_id)
                }
                Change::Released { seq, .. } => self.owed.get_mut(&seq).unwrap().message = None,
                Change::ReleaseOwed { seq, packet_id } => {
                    let owed = RestoredMessage::release_owed(seq, packet_id);
                    self.owed.insert(seq, owed);
                }
                Change::Ended { seq, .. } => {
                    self.owed.remove(&seq);
                }
                Change::Awaiting { packet_id } => self.incoming.push(packet_id),
                Change::Completed { packet_id } => self.incoming.retain(|&id| id != packet_id),
            }
        }
    }

    pub fn restored(&self, connected: bool) -> RestoredSession {
        RestoredSession {
            client_id: "c".into(),
            username: None,
            protocol: ProtocolVersion::V5,
            session_expiry: 3600,
            connected,
            expires_at: None,
            will: None,
            messages: self.owed.values().cloned().collect(),
            incoming_qos2: self.incoming.clone(),
        }
    }
}

/// A resumed session (restarted or moved) that owed `a` (QoS 1, #1), `b`
/// (QoS 2 released, #2), `c` (queued) and awaited incoming QoS 2 #9 sends
/// `a` again with DUP, PUBREL #2, then `c` as #3, and does not route a
/// resent #9 again.
pub fn assert_resumes_owing_a_b_c_and_9(session: &mut Session, now: Instant) {
    assert_eq!(
        resent(transmit(session, now)),
        [
            ("a".to_string(), 1, true),
            ("PUBREL".to_string(), 2, false),
            ("c".to_string(), 3, false),
        ]
    );
    session
        .handle_packet(publish_in("in", QoS::ExactlyOnce, 9), now)
        .unwrap();
    assert!(actions(session).is_empty(), "incoming #9 routed twice");
}
