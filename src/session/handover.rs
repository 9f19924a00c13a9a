//! A session leaving this node for another, and arriving from one.
//!
//! When a client connects to another node than the one holding its
//! session, the session moves there: the node it leaves takes it apart
//! with [`Session::hand_over`] into a [`RestoredSession`], the same form a
//! restart reads back from the store, and the node it arrives on builds it
//! again with [`Session::adopt`]. Between the two it travels as the store's
//! records (`store::transfer`), so a session is one thing whether it
//! survives a restart or a move.
//!
//! A session that moves owes its client exactly what it owed before:
//! flows in flight are resent with DUP and their packet ids, released QoS
//! 2 flows get their PUBREL, queued messages follow, and incoming QoS 2 ids
//! still await their PUBREL, so nothing is delivered twice that QoS 2
//! forbids.

use std::sync::Arc;
use std::time::Instant;

use super::inflight::Flight;
use super::queue::Outgoing;
use super::{Change, RestoredMessage, RestoredSession, Session, SessionConfig};

use crate::message::Message;

impl Session {
    /// Takes the session apart to move it to another node, after its
    /// connection is gone ([`Session::handle_connection_lost`]): what it
    /// owes, in the order it is owed (flows in the order they started,
    /// then the queue), numbered afresh from 1, with its will and expiry.
    /// It owes nothing here afterwards: what its journal held is ended, so
    /// this node's store lets go of it, and its will goes with it, so it
    /// is published once, by whichever node holds the session when it is
    /// due.
    pub fn hand_over(&mut self) -> RestoredSession {
        let mut owed: Vec<RestoredMessage> = Vec::new();
        let mut next_seq = 0;
        let mut number = || {
            next_seq += 1;
            next_seq
        };
        for (packet_id, flight) in self.inflight.in_order() {
            owed.push(match flight {
                Flight::AtLeastOnce(outgoing) | Flight::ExactlyOnce(outgoing) => {
                    owed_message(outgoing, Some(packet_id), number())
                }
                Flight::Released(_) => RestoredMessage::release_owed(number(), packet_id),
            });
        }
        for outgoing in &self.queue {
            owed.push(owed_message(outgoing, None, number()));
        }
        let incoming_qos2 = self
            .incoming_qos2
            .as_ref()
            .map(|ids| {
                let mut ids: Vec<u16> = ids.iter().copied().collect();
                ids.sort_unstable();
                ids
            })
            .unwrap_or_default();
        let will = self
            .will
            .take()
            .map(|will| (will.last().clone(), will.due()));
        self.journal_end_all();
        for packet_id in &incoming_qos2 {
            self.journal(Change::Completed {
                packet_id: *packet_id,
            });
        }
        self.queue.clear();
        self.inflight.take_all();
        self.incoming_qos2 = None;
        RestoredSession {
            client_id: self.client_id.clone(),
            username: self.username().cloned(),
            protocol: self.protocol,
            session_expiry: self.session_expiry,
            connected: false,
            expires_at: self.expires_at.take(),
            will,
            messages: owed,
            incoming_qos2,
        }
    }

    /// A session moved here from another node, offline until the
    /// connection that asked for it attaches (session present, resends
    /// with DUP). With a store behind it, everything it owes is journaled
    /// as new, since this node's store has none of it yet.
    pub fn adopt(arrived: RestoredSession, config: &SessionConfig, now: Instant) -> Session {
        let stored = config.durable && arrived.session_expiry != 0;
        let mut session = Session::restore(arrived, config, now);
        if !stored {
            session.journal = None;
            return session;
        }
        let changes = session.owed_as_changes();
        for change in changes {
            session.journal(change);
        }
        session
    }

    /// The messages the session owes, queued or in flight.
    pub fn owed_messages(&self) -> Vec<&Arc<Message>> {
        let in_flight = self.inflight.in_order().into_iter();
        let sent = in_flight.filter_map(|(_, flight)| match flight {
            Flight::AtLeastOnce(outgoing) | Flight::ExactlyOnce(outgoing) => {
                Some(&outgoing.message)
            }
            Flight::Released(_) => None,
        });
        sent.chain(self.queue.iter().map(|outgoing| &outgoing.message))
            .collect()
    }

    /// Everything the session owes, as the journal changes that would have
    /// written it: each flow's message queued then sent (or, released,
    /// only its PUBREL owed), each queued message, each awaited QoS 2 id.
    pub(crate) fn owed_as_changes(&self) -> Vec<Change> {
        let mut changes = Vec::new();
        for (packet_id, flight) in self.inflight.in_order() {
            match flight {
                Flight::AtLeastOnce(outgoing) | Flight::ExactlyOnce(outgoing) => {
                    changes.push(Change::queued(outgoing));
                    changes.push(Change::Sent {
                        seq: outgoing.seq,
                        packet_id,
                    });
                }
                Flight::Released(seq) => changes.push(Change::ReleaseOwed {
                    seq: *seq,
                    packet_id,
                }),
            }
        }
        changes.extend(self.queue.iter().map(Change::queued));
        let awaited = self.incoming_qos2.iter().flat_map(|ids| ids.iter());
        changes.extend(awaited.map(|&packet_id| Change::Awaiting { packet_id }));
        changes
    }
}

fn owed_message(outgoing: &Outgoing, packet_id: Option<u16>, seq: u64) -> RestoredMessage {
    RestoredMessage {
        seq,
        message: Some(outgoing.message.clone()),
        qos: outgoing.qos,
        retain: outgoing.retain,
        subscription_ids: outgoing.subscription_ids.clone(),
        shared: outgoing.shared.clone(),
        packet_id,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::protocol::{Packet, ProtocolVersion, QoS};
    use crate::session::testing::*;
    use crate::store::transfer::{decode_session, encode_session};

    fn ack(packet_id: u16) -> crate::protocol::PubResponse {
        super::super::connect::pub_response(packet_id, crate::protocol::ReasonCode::Success)
    }

    /// A persistent v5 session that owes one of everything: `a` (QoS 1)
    /// sent as #1, `b` (QoS 2) sent as #2 and received (PUBREL owed), `c`
    /// (QoS 2) queued behind the window, an incoming QoS 2 #9 awaiting its
    /// PUBREL, and a will with a minute's delay; its connection just lost.
    fn owing_session() -> (Session, Instant) {
        let mut connect = persistent(ProtocolVersion::V5);
        connect.properties.receive_maximum = Some(2);
        let mut last = will("w");
        last.properties.will_delay_interval = Some(60);
        connect.will = Some(last);
        let (mut session, now) = connected_with(connect);
        for (topic, qos) in [
            ("a", QoS::AtLeastOnce),
            ("b", QoS::ExactlyOnce),
            ("c", QoS::ExactlyOnce),
        ] {
            session.handle_deliver(&message(topic, qos), delivery(qos), now);
        }
        transmit(&mut session, now);
        session.handle_packet(Packet::PubRec(ack(2)), now).unwrap();
        session
            .handle_packet(publish_in("in", QoS::ExactlyOnce, 9), now)
            .unwrap();
        transmit(&mut session, now);
        actions(&mut session);
        session.handle_connection_lost(now);
        (session, now)
    }

    #[test]
    fn a_session_moved_to_another_node_resumes_as_it_left() {
        let (mut leaving, now) = owing_session();
        kinds(&mut leaving);
        let handed = leaving.hand_over();
        // Nothing is owed on the node it left, and its store lets go.
        let mut ended = kinds(&mut leaving);
        ended.sort();
        assert_eq!(
            ended,
            ["completed #9", "ended 1", "ended 2 (released)", "ended 3"]
        );
        assert!(actions(&mut leaving).is_empty(), "no will goes out here");
        assert_eq!(leaving.poll_timeout(), None, "nothing left to time out");

        // It travels as the store's records, between wall clocks.
        let archive = encode_session(&handed, &[], now, SystemTime::now());
        let (arrived, subscriptions) =
            decode_session(&archive, now, SystemTime::now()).expect("decodes");
        assert!(subscriptions.is_empty());
        let mut adopted = Session::adopt(arrived.clone(), &config(), now);

        // The new node's store gets everything as new, and holds what a
        // restart there would resume from.
        assert_eq!(
            kinds(&mut adopted),
            [
                "queued 1 q1",
                "sent 1 #1",
                "release owed 2 #2",
                "queued 3 q2",
                "awaiting #9"
            ]
        );
        let mut store = StoreModel::default();
        store.apply(&mut Session::adopt(arrived, &config(), now));
        let stored = store.restored(false);
        let shape = |owed: &[crate::session::RestoredMessage]| -> Vec<(u64, bool, Option<u16>)> {
            owed.iter()
                .map(|m| (m.seq, m.message.is_some(), m.packet_id))
                .collect()
        };
        assert_eq!(shape(&stored.messages), shape(&handed.messages));
        assert_eq!(stored.incoming_qos2, [9]);

        // The will moved with its due time, which the move did not reset.
        let due = adopted.will().and_then(|(_, due)| due).expect("will due");
        let drift = due
            .checked_duration_since(now + Duration::from_secs(60))
            .unwrap_or_else(|| now + Duration::from_secs(60) - due);
        assert!(drift < Duration::from_millis(5), "due moved by {drift:?}");

        // The client comes back: session present, flows again with DUP and
        // their ids, PUBREL for the released one, then the queue.
        let connack =
            adopted.handle_connect(&persistent(ProtocolVersion::V5), false, &config(), now);
        assert!(connack.session_present);
        assert_resumes_owing_a_b_c_and_9(&mut adopted, now);
    }

    #[test]
    fn without_a_store_a_moved_session_journals_nothing() {
        let (mut leaving, now) = owing_session();
        let handed = leaving.hand_over();
        let mut memory = config();
        memory.durable = false;
        let mut adopted = Session::adopt(handed, &memory, now);
        assert!(!adopted.is_stored());
        assert!(kinds(&mut adopted).is_empty());
        adopted.handle_connect(&persistent(ProtocolVersion::V5), false, &memory, now);
        assert_eq!(transmit(&mut adopted, now).len(), 3);
    }

    #[test]
    fn an_archive_that_does_not_validate_is_an_error() {
        let (mut leaving, now) = owing_session();
        let handed = leaving.hand_over();
        let mut archive = encode_session(&handed, &[], now, SystemTime::now());
        let last = archive.len() - 1;
        archive[last] ^= 0xff;
        archive.truncate(archive.len() / 2);
        assert!(decode_session(&archive, now, SystemTime::now()).is_err());
    }
}
