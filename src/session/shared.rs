//! Messages a shared subscription group chose this session for.
//!
//! The group picked this session and no other member, so a message it has
//! not acknowledged must not be stranded here when the session goes away
//! (or goes offline): the shard takes those messages back and hands them
//! to another member (spec 4.8.2 "If the Client's Session terminates
//! before the Client reconnects, the Server SHOULD send the Application
//! Message to another Client that is subscribed to the same Shared
//! Subscription"). Messages the client has received (a QoS 2 flow past
//! PUBREC) stay: their PUBREL still belongs to this session.

use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;

use super::{DeliverOutcome, Delivery, Session};
use crate::message::Message;

impl Session {
    /// A message routed to this session by the shared subscription `share`
    /// (`$share/{group}/{filter}`): like [`Session::handle_deliver`], but
    /// the message remembers its group until the client has it.
    pub fn handle_deliver_shared(
        &mut self,
        message: &Arc<Message>,
        delivery: Delivery,
        share: ByteString,
        now: Instant,
    ) -> DeliverOutcome {
        self.deliver(message, delivery, Some(share), now)
    }

    /// Takes back every message from a shared subscription that the client
    /// has not received: queued ones and those sent but not acknowledged
    /// (PUBACK or PUBREC), oldest first, each with its share name. The
    /// packet ids of the flows are freed; a resend already scheduled for
    /// one of them is skipped as stale.
    pub fn take_shared_unacked(&mut self) -> Vec<(ByteString, Arc<Message>)> {
        let sent = self
            .inflight
            .take_unreceived(|outgoing| outgoing.shared.is_some());
        let mut taken = Vec::with_capacity(sent.len());
        let mut keep = std::collections::VecDeque::with_capacity(self.queue.len());
        let queued = std::mem::take(&mut self.queue);
        for outgoing in sent.into_iter().chain(queued) {
            match &outgoing.shared {
                Some(share) => {
                    self.journal_ended(&outgoing);
                    taken.push((share.clone(), outgoing.message));
                }
                None => keep.push_back(outgoing),
            }
        }
        self.queue = keep;
        taken
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::protocol::{Packet, ProtocolVersion, PubResponse, QoS, ReasonCode};
    use crate::session::testing::*;

    fn share() -> ByteString {
        ByteString::from_static("$share/g/t")
    }

    fn ack(packet_id: u16) -> PubResponse {
        super::super::connect::pub_response(packet_id, ReasonCode::Success)
    }

    fn deliver_shared(session: &mut Session, topic: &str, qos: QoS, now: Instant) {
        let outcome =
            session.handle_deliver_shared(&message(topic, qos), delivery(qos), share(), now);
        assert_eq!(outcome, DeliverOutcome::Queued);
    }

    #[test]
    fn unacknowledged_shared_messages_are_taken_back_in_order() {
        let mut connect = connect(ProtocolVersion::V5);
        connect.properties.receive_maximum = Some(3);
        let (mut session, now) = connected_with(connect);
        deliver_shared(&mut session, "acked", QoS::AtLeastOnce, now);
        deliver_shared(&mut session, "sent", QoS::AtLeastOnce, now);
        session.handle_deliver(
            &message("plain", QoS::AtLeastOnce),
            delivery(QoS::AtLeastOnce),
            now,
        );
        deliver_shared(&mut session, "queued", QoS::AtLeastOnce, now);
        let sent = publishes(transmit(&mut session, now));
        assert_eq!(sent.len(), 3, "window of 3: the last one waits");
        session
            .handle_packet(Packet::PubAck(ack(sent[0].packet_id)), now)
            .unwrap();

        let taken = session.take_shared_unacked();
        let topics: Vec<_> = taken.iter().map(|(_, m)| m.topic.to_string()).collect();
        assert_eq!(topics, ["sent", "queued"]);
        assert!(taken.iter().all(|(s, _)| *s == share()));
        // The ordinary subscription's message is still this session's.
        assert_eq!(session.inflight.len(), 1);
        assert!(session.take_shared_unacked().is_empty());
    }

    #[test]
    fn received_qos2_flows_stay_with_the_session() {
        let (mut session, now) = connected(ProtocolVersion::V5);
        deliver_shared(&mut session, "a", QoS::ExactlyOnce, now);
        deliver_shared(&mut session, "b", QoS::ExactlyOnce, now);
        let sent = publishes(transmit(&mut session, now));
        session
            .handle_packet(Packet::PubRec(ack(sent[0].packet_id)), now)
            .unwrap();
        let taken = session.take_shared_unacked();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].1.topic, "b");
        assert_eq!(session.inflight.len(), 1, "PUBREL still owed");
    }

    #[test]
    fn taken_flows_are_not_resent_after_a_reconnect() {
        let (mut session, now) = connected_with(persistent(ProtocolVersion::V5));
        deliver_shared(&mut session, "a", QoS::AtLeastOnce, now);
        assert_eq!(publishes(transmit(&mut session, now)).len(), 1);
        session.handle_connection_lost(now);
        assert_eq!(session.take_shared_unacked().len(), 1);
        session.handle_connect(&persistent(ProtocolVersion::V5), false, &config(), now);
        let resent: Vec<_> = transmit(&mut session, now)
            .into_iter()
            .filter(|p| matches!(p, Packet::Publish(_)))
            .collect();
        assert!(resent.is_empty(), "{resent:?}");
    }
}
