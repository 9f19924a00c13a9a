//! What a stored session reports to the store, and how it comes back.
//!
//! A session with a store behind it (the broker has a data dir, and the
//! session outlives its connection) keeps a [`Journal`]: every change to
//! the messages it owes the client (queued, sent with a packet id,
//! released, done) and to the incoming QoS 2 ids it awaits PUBREL for is
//! appended as a [`Change`], which the shard drains into the store after
//! each action. The journal is what a restart replays from, so it records
//! outcomes, never intentions: a message is `Queued` once it is in the
//! queue, `Sent` once it has a packet id. Its own state (expiry, will,
//! subscriptions) the shard writes whole whenever it changes: it changes on
//! connect, subscribe and disconnect, not per message.
//!
//! QoS 0 messages are never journaled: the spec lets them be lost, and an
//! offline session does not even queue them.

use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;

use super::inflight::Flight;
use super::queue::Outgoing;
use super::will::Will;
use super::{Limits, Session, SessionConfig};
use crate::message::Message;
use crate::protocol::{LastWill, ProtocolVersion, QoS};

/// One change to a stored session's messages, in the order it happened.
/// `seq` is the message's key within the session, increasing with every
/// message queued.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Queued {
        seq: u64,
        message: Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
        shared: Option<ByteString>,
    },
    /// Sent with this packet id: after a restart it is sent again with
    /// DUP and the same id.
    Sent { seq: u64, packet_id: u16 },
    /// The client's PUBREC came: from now on only PUBREL is owed, and the
    /// message is no longer needed.
    Released {
        seq: u64,
        packet_id: u16,
        message: Arc<Message>,
    },
    /// A flow already released (its PUBREC came) arrived from another
    /// node with its session: only its PUBREL is owed.
    ReleaseOwed { seq: u64, packet_id: u16 },
    /// Acknowledged, refused, expired or taken back: nothing is owed.
    /// `message` is the one it held, `None` for a released flow.
    Ended {
        seq: u64,
        message: Option<Arc<Message>>,
    },
    /// An incoming QoS 2 PUBLISH was routed; its id awaits PUBREL.
    Awaiting { packet_id: u16 },
    /// PUBREL came for it.
    Completed { packet_id: u16 },
}

impl Change {
    /// `outgoing`, just queued.
    pub(super) fn queued(outgoing: &Outgoing) -> Change {
        Change::Queued {
            seq: outgoing.seq,
            message: outgoing.message.clone(),
            qos: outgoing.qos,
            retain: outgoing.retain,
            subscription_ids: outgoing.subscription_ids.clone(),
            shared: outgoing.shared.clone(),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Journal {
    /// The last `seq` handed out.
    last_seq: u64,
    changes: Vec<Change>,
}

/// A stored message as the store read it back, in `seq` order.
#[derive(Debug, Clone)]
pub struct RestoredMessage {
    pub seq: u64,
    /// `None` once released: only PUBREL is owed.
    pub message: Option<Arc<Message>>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    pub shared: Option<ByteString>,
    /// Set once sent.
    pub packet_id: Option<u16>,
}

impl RestoredMessage {
    /// A QoS 2 flow whose PUBREC came: only its PUBREL is owed.
    pub fn release_owed(seq: u64, packet_id: u16) -> RestoredMessage {
        RestoredMessage {
            seq,
            message: None,
            qos: QoS::ExactlyOnce,
            retain: false,
            subscription_ids: Vec::new(),
            shared: None,
            packet_id: Some(packet_id),
        }
    }
}

/// A stored session as the store read it back, clocks already turned
/// into this run's `Instant`s.
#[derive(Debug, Clone)]
pub struct RestoredSession {
    pub client_id: ByteString,
    /// The user name its last client connected with.
    pub username: Option<ByteString>,
    pub protocol: ProtocolVersion,
    pub session_expiry: u32,
    /// It had a connection when the broker stopped: that connection is
    /// lost now, with what that means for its will and expiry.
    pub connected: bool,
    pub expires_at: Option<Instant>,
    /// The will, and when it goes out if its delay had started.
    pub will: Option<(LastWill, Option<Instant>)>,
    pub messages: Vec<RestoredMessage>,
    pub incoming_qos2: Vec<u16>,
}

impl Journal {
    fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }
}

impl Session {
    /// Whether this session writes a journal: the broker stores sessions
    /// and this one outlives its connection.
    pub fn is_stored(&self) -> bool {
        self.journal.is_some()
    }

    /// Stops the journal: the session is no longer this node's to store
    /// (handed over, its records removed).
    pub fn stop_journal(&mut self) {
        self.journal = None;
    }

    /// The changes since the last call, oldest first.
    pub fn drain_changes(&mut self) -> impl Iterator<Item = Change> + '_ {
        self.journal
            .iter_mut()
            .flat_map(|journal| journal.changes.drain(..))
    }

    /// The user name its rules were made for (`None` without an ACL): it
    /// is kept with the session, as what the session may read depends on
    /// it while it is offline, restored or taken over too.
    pub fn username(&self) -> Option<&ByteString> {
        self.acl.as_ref()?.user()
    }

    /// Seconds the session outlives its connection (`u32::MAX`: never).
    pub fn session_expiry(&self) -> u32 {
        self.session_expiry
    }

    /// When an offline session ends.
    pub fn expires_at(&self) -> Option<Instant> {
        self.expires_at
    }

    /// The will, and when it goes out if its delay has started.
    pub fn will(&self) -> Option<(&LastWill, Option<Instant>)> {
        self.will.as_ref().map(|will| (will.last(), will.due()))
    }

    /// A session as stored before a restart: offline, its messages queued
    /// or in flight as they were, with session present on its next
    /// CONNECT. One that was connected loses that connection now, so its
    /// will and expiry take their course from `now`.
    pub fn restore(restored: RestoredSession, config: &SessionConfig, now: Instant) -> Session {
        let mut session = Session::new(restored.client_id, now);
        session.protocol = restored.protocol;
        session.limits = Limits::new(config);
        session.had_connection = true;
        session.session_expiry = restored.session_expiry;
        session.connected_with_zero_expiry = false;
        session.expires_at = restored.expires_at;
        session.will = restored.will.map(|(last, due)| {
            let mut will = Will::new(last);
            will.set_due(due);
            Box::new(will)
        });
        let mut journal = Journal::default();
        for stored in restored.messages {
            journal.last_seq = journal.last_seq.max(stored.seq);
            let Some(message) = stored.message else {
                if let Some(packet_id) = stored.packet_id {
                    session
                        .inflight
                        .resume(packet_id, Flight::Released(stored.seq));
                }
                continue;
            };
            let outgoing = Outgoing {
                message,
                qos: stored.qos,
                retain: stored.retain,
                subscription_ids: stored.subscription_ids,
                shared: stored.shared,
                seq: stored.seq,
            };
            match stored.packet_id {
                Some(packet_id) => session.inflight.start(packet_id, outgoing),
                None => session.queue.push_back(outgoing),
            }
        }
        if !restored.incoming_qos2.is_empty() {
            session.incoming_qos2 = Some(Box::new(restored.incoming_qos2.into_iter().collect()));
        }
        session.journal = Some(Box::new(journal));
        if restored.connected {
            session.connected = true;
            session.connection_lost(now);
        }
        session
    }

    /// A session restored offline whose connection the restart cut, once
    /// the cluster has confirmed it is still this node's: its will and
    /// expiry take their course from `now`, as [`Session::restore`] starts
    /// them at once on a single node.
    pub fn connection_cut_by_restart(&mut self, now: Instant) {
        self.connected = true;
        self.connection_lost(now);
    }

    /// Starts or stops the journal as the session's lifetime now asks
    /// (called on CONNECT): stored only if it outlives its connection.
    pub(super) fn update_journal(&mut self, config: &SessionConfig) {
        let stored = config.durable && self.session_expiry != 0;
        match (stored, self.journal.is_some()) {
            (true, false) => self.journal = Some(Box::default()),
            (false, true) => self.journal = None,
            _ => {}
        }
    }

    pub(super) fn journal(&mut self, change: Change) {
        if let Some(journal) = &mut self.journal {
            journal.changes.push(change);
        }
    }

    /// The store key for a message about to be queued at `qos`: 0 (none)
    /// unless it is stored.
    pub(super) fn queued_seq(&mut self, qos: QoS) -> u64 {
        match &mut self.journal {
            Some(journal) if qos != QoS::AtMostOnce => journal.next_seq(),
            _ => 0,
        }
    }

    /// Records that `outgoing`, just queued, is stored.
    pub(super) fn journal_queued(&mut self, outgoing: &Outgoing) {
        if outgoing.seq != 0 {
            self.journal(Change::queued(outgoing));
        }
    }

    /// Records the end of a flow or of a queued message, if it was stored.
    pub(super) fn journal_ended(&mut self, outgoing: &Outgoing) {
        if outgoing.seq != 0 {
            self.journal(Change::Ended {
                seq: outgoing.seq,
                message: Some(outgoing.message.clone()),
            });
        }
    }

    /// [`Session::journal_ended`] for a flow the inflight set gave back.
    pub(super) fn journal_flight_ended(&mut self, flight: Option<Flight>) {
        match flight {
            Some(Flight::AtLeastOnce(outgoing) | Flight::ExactlyOnce(outgoing)) => {
                self.journal_ended(&outgoing)
            }
            Some(Flight::Released(seq)) if seq != 0 => {
                self.journal(Change::Ended { seq, message: None })
            }
            _ => {}
        }
    }

    /// The session is over: everything it still owed is ended, so the
    /// shard lets go of the stored messages it held.
    pub(super) fn journal_end_all(&mut self) {
        if self.journal.is_none() {
            return;
        }
        let queued: Vec<Outgoing> = self.queue.drain(..).collect();
        for outgoing in &queued {
            self.journal_ended(outgoing);
        }
        for flight in self.inflight.take_all() {
            self.journal_flight_ended(Some(flight));
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::protocol::{Packet, PubResponse, ReasonCode};
    use crate::session::SessionAction;
    use crate::session::testing::*;

    fn ack(packet_id: u16) -> PubResponse {
        super::super::connect::pub_response(packet_id, ReasonCode::Success)
    }

    #[test]
    fn a_clean_session_keeps_no_journal() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        assert!(!session.is_stored());
        session.handle_deliver(
            &message("t", QoS::AtLeastOnce),
            delivery(QoS::AtLeastOnce),
            now,
        );
        transmit(&mut session, now);
        assert_eq!(kinds(&mut session), Vec::<String>::new());
    }

    #[test]
    fn without_a_store_no_session_keeps_a_journal() {
        let config = SessionConfig {
            durable: false,
            ..config()
        };
        let (session, _) = connected_with_config(persistent(ProtocolVersion::V5), &config);
        assert!(!session.is_stored());
    }

    #[test]
    fn each_message_is_journaled_from_queue_to_its_last_ack() {
        let (mut session, now) = connected_with(persistent(ProtocolVersion::V5));
        assert!(session.is_stored());
        session.handle_deliver(
            &message("a", QoS::AtLeastOnce),
            delivery(QoS::AtLeastOnce),
            now,
        );
        session.handle_deliver(
            &message("b", QoS::ExactlyOnce),
            delivery(QoS::ExactlyOnce),
            now,
        );
        // QoS 0 may be lost: never stored.
        session.handle_deliver(
            &message("c", QoS::AtMostOnce),
            delivery(QoS::AtMostOnce),
            now,
        );
        assert_eq!(kinds(&mut session), ["queued 1 q1", "queued 2 q2"]);
        assert_eq!(publishes(transmit(&mut session, now)).len(), 3);
        assert_eq!(kinds(&mut session), ["sent 1 #1", "sent 2 #2"]);
        session.handle_packet(Packet::PubAck(ack(1)), now).unwrap();
        session.handle_packet(Packet::PubRec(ack(2)), now).unwrap();
        assert_eq!(kinds(&mut session), ["ended 1", "released 2 #2"]);
        // A repeated PUBREC changes nothing stored.
        session.handle_packet(Packet::PubRec(ack(2)), now).unwrap();
        session.handle_packet(Packet::PubComp(ack(2)), now).unwrap();
        assert_eq!(kinds(&mut session), ["ended 2 (released)"]);
    }

    #[test]
    fn incoming_qos2_ids_are_journaled_until_pubrel() {
        let (mut session, now) = connected_with(persistent(ProtocolVersion::V5));
        session
            .handle_packet(publish_in("t", QoS::ExactlyOnce, 7), now)
            .unwrap();
        // The client's resend of the same id is not a new one.
        session
            .handle_packet(publish_in("t", QoS::ExactlyOnce, 7), now)
            .unwrap();
        session.handle_packet(Packet::PubRel(ack(7)), now).unwrap();
        session.handle_packet(Packet::PubRel(ack(7)), now).unwrap();
        assert_eq!(kinds(&mut session), ["awaiting #7", "completed #7"]);
    }

    #[test]
    fn an_ending_session_ends_everything_it_held() {
        let (mut session, now) = connected_with(persistent(ProtocolVersion::V5));
        session.handle_deliver(
            &message("a", QoS::AtLeastOnce),
            delivery(QoS::AtLeastOnce),
            now,
        );
        transmit(&mut session, now);
        session.handle_deliver(
            &message("b", QoS::AtLeastOnce),
            delivery(QoS::AtLeastOnce),
            now,
        );
        session.drain_changes().for_each(drop);
        session.handle_discard(now);
        let mut ended = kinds(&mut session);
        ended.sort();
        assert_eq!(ended, ["ended 1", "ended 2"]);
    }

    #[test]
    fn what_the_journal_kept_resumes_as_the_session_left_it() {
        let (mut session, now) = connected_with(persistent(ProtocolVersion::V5));
        let mut model = StoreModel::default();
        for (topic, qos) in [
            ("a", QoS::AtLeastOnce),
            ("b", QoS::ExactlyOnce),
            ("c", QoS::ExactlyOnce),
        ] {
            session.handle_deliver(&message(topic, qos), delivery(qos), now);
        }
        // a and b go out; b's PUBREC comes; c waits in the queue.
        let mut connect = persistent(ProtocolVersion::V5);
        connect.properties.receive_maximum = Some(2);
        session.handle_connection_lost(now);
        session.handle_connect(&connect, false, &config(), now);
        transmit(&mut session, now);
        session.handle_packet(Packet::PubRec(ack(2)), now).unwrap();
        session
            .handle_packet(publish_in("in", QoS::ExactlyOnce, 9), now)
            .unwrap();
        model.apply(&mut session);

        // The broker stops; the session comes back from the model.
        let mut restored = Session::restore(model.restored(false), &config(), now);
        assert!(restored.is_stored());
        let connack =
            restored.handle_connect(&persistent(ProtocolVersion::V5), false, &config(), now);
        assert!(connack.session_present);
        assert_resumes_owing_a_b_c_and_9(&mut restored, now);
        // c was sent (seq 3); new messages take sequence numbers after the
        // stored ones.
        assert_eq!(kinds(&mut restored), ["sent 3 #3"]);
        restored.handle_deliver(
            &message("d", QoS::AtLeastOnce),
            delivery(QoS::AtLeastOnce),
            now,
        );
        assert_eq!(kinds(&mut restored), ["queued 4 q1"]);
    }

    #[test]
    fn a_session_connected_when_the_broker_stopped_loses_that_connection_now() {
        let now = Instant::now();
        let mut restored = StoreModel::default().restored(true);
        restored.will = Some((will("w"), None));
        let mut session = Session::restore(restored, &config(), now);
        assert!(!session.is_connected());
        match actions(&mut session).as_slice() {
            [
                SessionAction::Publish {
                    message,
                    ticket: None,
                },
            ] => assert_eq!(message.topic, "will/w"),
            other => panic!("expected the will, got {other:?}"),
        }
        assert_eq!(
            session.expires_at(),
            Some(now + std::time::Duration::from_secs(3600))
        );
    }
}
