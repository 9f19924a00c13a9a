//! Sessions moving between nodes, on the client id's home shard: a CONNECT
//! waits for the cluster to make this node the client id's owner (a
//! fencing epoch, see `cluster::ownership`) and for the previous owner to
//! hand the session over; the node a client left hands its session over
//! whole. What travels, and why it resumes as it left, is in
//! `session::handover`.

use std::time::{Instant, SystemTime};

use bytestring::ByteString;
use tokio::sync::oneshot;
use tracing::info;

use super::{SessionKey, ShardState};
use crate::protocol::{ConnAck, ConnAckProperties, Connect, ReasonCode};
use crate::session::Session;
use crate::shard::mesh::{ClaimOutcome, ShardMsg, Way};
use crate::store::record::RecordError;
use crate::store::restore::RestoredSubscription;
use crate::store::transfer::{decode_session, encode_session};

/// A CONNECT waiting for its claim's answer.
pub(super) struct PendingClaim {
    client_id: ByteString,
    answer: oneshot::Sender<ClaimOutcome>,
}

/// Granted claims of one client id whose CONNECTs have not attached yet.
/// The session a claim brought is adopted when the answer comes, and the
/// CONNECT attaches when its task next runs; a later claim on another node
/// may take the session in between, and the CONNECT must then not start a
/// fresh one under its stale epoch.
#[derive(Default)]
pub(super) struct Attaching {
    /// How many CONNECTs: a client may try again before its first task ran.
    connects: u32,
    /// The latest epoch under which another node asked for the session
    /// since (0: none yet).
    asked_under: u64,
    /// The previous owner could not be asked (`ClaimOutcome::Owner`):
    /// the session, fresh, watches for what that owner sends on later.
    missed: bool,
}

/// What became of a CONNECT's claim between its grant and its attach.
#[derive(Default)]
pub(super) struct Claimed {
    /// Another node asked for the session under a later epoch meanwhile.
    pub taken: bool,
    /// The previous owner could not be asked for the session.
    pub missed: bool,
}

/// The CONNACK for a CONNECT whose session another node took between the
/// claim's answer and the attach: as if it had waited for the session a
/// moment longer (Server unavailable; the client comes back and claims
/// again).
pub(super) fn taken_meanwhile(connect: &Connect) -> ConnAck {
    let properties = if connect.protocol.is_v5() {
        ConnAckProperties {
            reason_string: Some("the session was taken over by a later connection".into()),
            ..ConnAckProperties::default()
        }
    } else {
        ConnAckProperties::default()
    };
    ConnAck {
        session_present: false,
        reason: ReasonCode::ServerUnavailable,
        properties,
    }
}

impl ShardState {
    /// Asks the cluster to make this node the owner of `connect`'s client
    /// id before the CONNECT is answered. `None` when there is no cluster
    /// to ask, or the CONNECT is refused anyway: a refused CONNECT must not
    /// take the session from the node that has it.
    pub fn claim(&mut self, connect: &Connect) -> Option<oneshot::Receiver<ClaimOutcome>> {
        let place = self.mesh.cluster_place()?;
        if Session::refuse_connect(connect, &self.config.session).is_some() {
            return None;
        }
        self.last_claim += 1;
        let token = self.last_claim;
        let (answer, answered) = oneshot::channel();
        let client_id = connect.client_id.clone();
        self.claims.insert(
            token,
            PendingClaim {
                client_id: client_id.clone(),
                answer,
            },
        );
        self.mesh.push(place, ShardMsg::Claim { client_id, token });
        self.flush();
        Some(answered)
    }

    /// Gives a claim's answer to its CONNECT; a granted one is counted as
    /// attaching until the CONNECT's task runs.
    pub(super) fn answer_claim(&mut self, token: u64, outcome: ClaimOutcome, now: Instant) {
        let Some(pending) = self.claims.remove(&token) else {
            return;
        };
        let missed = match outcome {
            ClaimOutcome::Owner { missed, .. } => Some(missed),
            ClaimOutcome::Unavailable => None,
        };
        // A CONNECT whose client gave up meanwhile dropped the receiver.
        if pending.answer.send(outcome).is_ok()
            && let Some(missed) = missed
        {
            let attaching = self.attaching.entry(pending.client_id.clone()).or_default();
            attaching.connects += 1;
            attaching.missed |= missed;
        }
        // Refused, or its client gave up: what came early goes to the
        // session adopted, or is dropped with the claim.
        self.give_early_orphans(&pending.client_id, now);
    }

    /// A CONNECT of `client_id` waits here for its claim's answer, or for
    /// its task to attach after it.
    pub(super) fn claiming(&self, client_id: &str) -> bool {
        self.attaching.contains_key(client_id)
            || (self.claims.values()).any(|pending| pending.client_id == client_id)
    }

    /// A CONNECT granted `client_id` under `epoch` (0: no cluster)
    /// attaches now: what became of its claim meanwhile. Taken if another
    /// node asked for the session under a later epoch since the grant
    /// (then the session is gone on, or on its way).
    pub(super) fn claimed_before_attach(&mut self, client_id: &str, epoch: u64) -> Claimed {
        let Some(attaching) = self.attaching.get_mut(client_id).filter(|_| epoch > 0) else {
            return Claimed::default();
        };
        attaching.connects -= 1;
        let claimed = Claimed {
            taken: attaching.asked_under > epoch,
            missed: attaching.missed,
        };
        if attaching.connects == 0 {
            self.attaching.remove(client_id);
        }
        claimed
    }

    /// Another node holds `client_id` under `epoch` now: the connection
    /// here, if any, is closed (v5: Session taken over, 0x8E) and counts
    /// as lost, so a will without delay goes out here as it would on one
    /// node; then the session leaves this shard whole (routes, group
    /// memberships, stored records) and comes back archived for the new
    /// owner. `None` when there is no session here, it ended with its
    /// connection, or this shard holds it under `epoch` or a later one
    /// (the request is older than the claim that gave it here).
    pub(super) fn hand_over(
        &mut self,
        client_id: &str,
        epoch: u64,
        now: Instant,
    ) -> Option<Vec<u8>> {
        if let Some(attaching) = self.attaching.get_mut(client_id) {
            attaching.asked_under = attaching.asked_under.max(epoch);
        }
        let key = self.by_client_id.get(&self.sessions, client_id)?;
        if self.sessions[key].epoch >= epoch {
            info!(client = %client_id, epoch, held = self.sessions[key].epoch, "stale hand-over refused");
            return None;
        }
        self.take_over(key, now);
        if self.by_client_id.get(&self.sessions, client_id) != Some(key) {
            return None;
        }
        let subscriptions: Vec<RestoredSubscription> = self
            .subscriptions_of(key)
            .map(|(filter, subscription)| RestoredSubscription {
                filter: filter.clone(),
                options: subscription.options,
                id: subscription.id,
            })
            .collect();
        let session = self.sessions[key].session.hand_over();
        self.forget_stored(key);
        self.keep_moved(key, now);
        self.flush();
        info!(client = %client_id, epoch, "session handed over to another node");
        Some(encode_session(
            &session,
            &subscriptions,
            now,
            SystemTime::now(),
        ))
    }

    /// A session another node handed over arrives, for the connection
    /// about to attach here: it replaces whatever this shard held under
    /// its client id (left from before an earlier move, superseded since,
    /// so dropped without its will), its subscriptions routed, and with a
    /// store, everything it owes written as new.
    pub fn adopt(&mut self, archive: &[u8], epoch: u64, now: Instant) -> Result<(), RecordError> {
        let (mut arrived, subscriptions) = decode_session(archive, now, SystemTime::now())?;
        if let Some(stale) = self.by_client_id.get(&self.sessions, &arrived.client_id) {
            self.drop_stale(stale, now);
        }
        let username = arrived.username.take();
        let client_id = arrived.client_id.clone();
        // Back here before an earlier move's stub ended: the stub goes,
        // and what it had not sent on is this session's.
        let pending = self.end_stubs_of(&client_id, now);
        let session = Session::adopt(arrived, &self.config.session, now);
        let key = self.insert_session(session, username, subscriptions, epoch, now);
        self.guard_against_orphans(key, now);
        for message in &pending {
            self.deliver_orphan(&client_id, message, Way::Stale, now);
        }
        self.give_early_orphans(&client_id, now);
        // A copy taken over from a node that died with the client
        // connected has its will due now (without a delay).
        self.run_actions(key, now);
        self.session_changed(key);
        self.schedule(key);
        self.flush();
        Ok(())
    }

    /// The ownership raft's word on the sessions restored from disk: those
    /// still owned here take their epoch; a copy of one claimed elsewhere
    /// meanwhile is stale and dropped, without its will (its client is
    /// with its new owner). A session claimed here since the restart (its
    /// client came back) has an epoch already and is left alone.
    pub(super) fn settle_restored(
        &mut self,
        here: Vec<(ByteString, u64)>,
        elsewhere: Vec<ByteString>,
        now: Instant,
    ) {
        for (client_id, epoch) in here {
            if let Some(key) = self.by_client_id.get(&self.sessions, &client_id)
                && self.sessions[key].epoch == 0
            {
                self.sessions[key].epoch = epoch;
            }
        }
        let mut dropped = 0;
        for client_id in elsewhere {
            if let Some(key) = self.by_client_id.get(&self.sessions, &client_id)
                && self.sessions[key].epoch == 0
            {
                self.drop_stale(key, now);
                dropped += 1;
            }
        }
        if dropped > 0 {
            info!(
                shard = self.id(),
                sessions = dropped,
                "restored sessions claimed by other nodes meanwhile dropped"
            );
        }
        // The rest are this node's: their wills and expiries take their
        // course (`resume_restored`).
        self.resume_restored_now(now);
        self.unfence();
    }

    /// A session this node no longer owns: its connection, if any, is
    /// told it was taken over, and nothing it held goes out.
    fn drop_stale(&mut self, key: SessionKey, now: Instant) {
        self.send_on_stale(key);
        if let Some(conn) = self.sessions[key].conn.take() {
            conn.disconnect(ReasonCode::SessionTakenOver);
        }
        self.sessions[key].session.hand_over();
        self.remove_session(key, now);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;

    use crate::protocol::{
        Connect, Packet, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions,
        TopicSubscription, Unsubscribe,
    };
    use crate::shard::connection::CloseReason;
    use crate::shard::mesh::{ClaimOutcome, ShardMsg};

    fn persistent() -> Connect {
        let mut connect = super::super::tests::connect_v5("c");
        connect.properties.session_expiry_interval = Some(3600);
        connect
    }

    fn publish(topic: &str) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.into(),
            packet_id: 1,
            properties: Default::default(),
            payload: Bytes::from_static(b"x"),
        })
    }

    /// "c", persistent, attached under epoch 4 and subscribed to "t" at
    /// QoS 1.
    fn subscribed_to_t(
        state: &mut super::ShardState,
        now: Instant,
    ) -> std::rc::Rc<crate::shard::connection::ConnHandle> {
        let conn = state.attach(&persistent(), false, -1, 4, now).conn;
        let subscribe = Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![TopicSubscription {
                filter: "t".into(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            }],
            properties: Default::default(),
        });
        state.handle_packets(&conn, [subscribe], now);
        conn
    }

    #[test]
    fn a_session_handed_over_leaves_whole_and_resumes_on_the_other_node() {
        let now = Instant::now();
        let leaving = super::super::tests::shard();
        let mut leaving = leaving.borrow_mut();
        let conn = subscribed_to_t(&mut leaving, now);
        // A publisher on the same node; the message is in flight to "c".
        let publisher = {
            let mut connect = persistent();
            connect.client_id = "p".into();
            connect.clean_start = true;
            leaving.attach(&connect, false, -1, 4, now).conn
        };
        leaving.handle_packets(&publisher, [publish("t")], now);

        // A hand-over asked under the epoch the session is held under, or
        // an older one, is stale.
        assert_eq!(leaving.hand_over("c", 4, now), None);
        assert!(!conn.is_closing());

        let archive = leaving.hand_over("c", 5, now).expect("the session");
        assert_eq!(
            conn.close_reason(),
            Some(CloseReason::Server(ReasonCode::SessionTakenOver))
        );
        assert_eq!(leaving.by_client_id.get(&leaving.sessions, "c"), None);
        assert!(
            leaving.subscriptions.get("t").is_some(),
            "its route stays while the move spreads"
        );
        leaving.tick(now + super::super::moving::MOVE_HOLD);
        assert!(leaving.subscriptions.get("t").is_none(), "then it leaves");

        let arriving = super::super::tests::shard();
        let mut arriving = arriving.borrow_mut();
        arriving.adopt(&archive, 5, now).expect("adopted");
        assert!(arriving.subscriptions.get("t").is_some(), "routed here");
        let resumed = arriving.attach(&persistent(), false, -1, 5, now).conn;
        match resumed.take_packets().as_slice() {
            [Packet::ConnAck(connack), Packet::Publish(again)] => {
                assert!(connack.session_present);
                assert!(again.dup, "sent before the move: DUP");
                assert_eq!((again.topic.as_ref(), again.packet_id), ("t", 1));
            }
            other => panic!("expected CONNACK and the PUBLISH again, got {other:?}"),
        }
        let key = arriving.by_client_id.get(&arriving.sessions, "c").unwrap();
        assert_eq!(arriving.sessions[key].epoch, 5);
        // Held under 5 now: a stale request for 5 changes nothing.
        assert_eq!(arriving.hand_over("c", 5, now), None);

        // The session knows the filter it brought: its UNSUBSCRIBE finds
        // it, and takes the route away.
        let unsubscribe = Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            filters: vec!["t".into()],
            properties: Default::default(),
        });
        arriving.handle_packets(&resumed, [unsubscribe], now);
        match resumed.take_packets().as_slice() {
            [Packet::UnsubAck(unsuback)] => assert_eq!(unsuback.reasons, [ReasonCode::Success]),
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
        assert!(arriving.subscriptions.get("t").is_none(), "route removed");
    }

    /// A message from "p" on "t".
    fn message_on_t(
        payload: &'static [u8],
        qos: QoS,
        now: Instant,
    ) -> std::sync::Arc<crate::message::Message> {
        std::sync::Arc::new(crate::message::Message {
            topic: "t".into(),
            payload: Bytes::from_static(payload),
            qos,
            retain: false,
            properties: Default::default(),
            publisher: "p".into(),
            expires_at: None,
            received_at: now,
        })
    }

    /// `message`, sent on to "c" by a node that held its session.
    fn stale_for_c(message: std::sync::Arc<crate::message::Message>) -> ShardMsg {
        ShardMsg::Orphan {
            client_id: "c".into(),
            message,
            way: crate::shard::mesh::Way::Stale,
        }
    }

    /// Everything the shard sent the cluster's place so far.
    fn sent_to_cluster(
        inbox: &crossbeam_channel::Receiver<crate::shard::mesh::Batch>,
    ) -> Vec<ShardMsg> {
        inbox.try_iter().flat_map(|batch| batch.messages).collect()
    }

    /// A persistent CONNECT of "c" claims its client id, and the cluster
    /// grants it under `epoch`, with no session handed over.
    fn claim_answered(
        state: &mut super::ShardState,
        inbox: &crossbeam_channel::Receiver<crate::shard::mesh::Batch>,
        epoch: u64,
        missed: bool,
    ) {
        let mut answered = state.claim(&persistent()).expect("claimed in a cluster");
        let token = match sent_to_cluster(inbox).as_slice() {
            [.., ShardMsg::Claim { token, .. }] => *token,
            other => panic!("expected the claim, got {other:?}"),
        };
        let outcome = ClaimOutcome::Owner {
            epoch,
            session: None,
            missed,
        };
        state.apply(ShardMsg::Claimed { token, outcome }, Instant::now());
        assert!(answered.try_recv().is_ok(), "answered");
    }

    #[test]
    fn a_connect_waits_for_its_claim_and_an_ended_session_is_released() {
        let now = Instant::now();
        let (state, inbox) = super::super::tests::clustered(true);
        let inbox = inbox.expect("a cluster place");
        let mut state = state.borrow_mut();
        let mut connect = persistent();
        connect.properties.session_expiry_interval = Some(0);
        let mut answered = state.claim(&connect).expect("claimed in a cluster");
        let token = match sent_to_cluster(&inbox).as_slice() {
            [ShardMsg::Claim { client_id, token }] if client_id == "c" => *token,
            other => panic!("expected the claim, got {other:?}"),
        };
        assert!(answered.try_recv().is_err(), "not answered yet");
        let outcome = ClaimOutcome::Owner {
            epoch: 3,
            session: None,
            missed: false,
        };
        state.apply(
            ShardMsg::Claimed {
                token,
                outcome: outcome.clone(),
            },
            now,
        );
        assert_eq!(answered.try_recv(), Ok(outcome));

        // A hand-over asked under an older epoch is refused, and says so.
        let conn = state.attach(&connect, false, -1, 3, now).conn;
        let stale = ShardMsg::HandOver {
            client_id: "c".into(),
            epoch: 2,
            token: 9,
        };
        state.apply(stale, now);
        state.flush();
        match sent_to_cluster(&inbox).as_slice() {
            [
                ShardMsg::HandedOver {
                    token: 9,
                    session: None,
                },
            ] => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(!conn.is_closing());

        // The session ends with its connection (expiry 0): released.
        state.detach(&conn, now);
        let released = sent_to_cluster(&inbox);
        assert!(
            released.iter().any(|msg| matches!(msg,
                ShardMsg::Release { client_id, epoch: 3 } if client_id == "c")),
            "{released:?}"
        );
    }

    #[test]
    fn a_session_taken_between_the_grant_and_the_attach_is_not_started_afresh() {
        let now = Instant::now();
        let (state, inbox) = super::super::tests::clustered(true);
        let inbox = inbox.expect("a cluster place");
        let mut state = state.borrow_mut();
        // Granted under 3, and a later claim elsewhere (5) asks for the
        // session before the CONNECT's task ran.
        claim_answered(&mut state, &inbox, 3, false);
        let later = ShardMsg::HandOver {
            client_id: "c".into(),
            epoch: 5,
            token: 9,
        };
        state.apply(later, now);
        let conn = state.attach(&persistent(), false, -1, 3, now).conn;
        match conn.take_packets().as_slice() {
            [Packet::ConnAck(connack)] => {
                assert_eq!(connack.reason, ReasonCode::ServerUnavailable);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(
            state.by_client_id.get(&state.sessions, "c"),
            None,
            "no fresh session"
        );
        assert!(state.attaching.is_empty());

        // The next CONNECT's grant has no later ask: it attaches.
        claim_answered(&mut state, &inbox, 6, false);
        let conn = state.attach(&persistent(), false, -1, 6, now).conn;
        match conn.take_packets().as_slice() {
            [Packet::ConnAck(connack)] => assert_eq!(connack.reason, ReasonCode::Success),
            other => panic!("expected a CONNACK, got {other:?}"),
        }
    }

    #[test]
    fn a_session_started_afresh_over_an_unreachable_owner_gives_its_later_copies_once() {
        let now = Instant::now();
        let (state, inbox) = super::super::tests::clustered(true);
        let inbox = inbox.expect("a cluster place");
        let mut state = state.borrow_mut();
        claim_answered(&mut state, &inbox, 3, true);
        let conn = state.attach(&persistent(), false, -1, 3, now).conn;
        let subscribe = Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![TopicSubscription {
                filter: "t".into(),
                options: SubscriptionOptions::default(),
            }],
            properties: Default::default(),
        });
        state.handle_packets(&conn, [subscribe], now);
        let message = message_on_t(b"x", QoS::AtMostOnce, now);
        state.deliver_matching(&message, None, now);
        // The unreachable owner's copy got it too, and sends it on after
        // the heal; and one it alone got.
        state.apply(stale_for_c(message), now);
        state.apply(stale_for_c(message_on_t(b"y", QoS::AtMostOnce, now)), now);
        let payloads: Vec<Bytes> = (conn.take_packets().into_iter())
            .filter_map(|packet| match packet {
                Packet::Publish(publish) => Some(publish.payload),
                _ => None,
            })
            .collect();
        assert_eq!(payloads, [&b"x"[..], &b"y"[..]]);
    }

    #[test]
    fn messages_sent_on_before_the_session_arrives_wait_for_it() {
        let now = Instant::now();
        let leaving = super::super::tests::shard();
        let mut leaving = leaving.borrow_mut();
        subscribed_to_t(&mut leaving, now);
        let archive = leaving.hand_over("c", 5, now).expect("the session");

        let (arriving, inbox) = super::super::tests::clustered(true);
        let inbox = inbox.expect("a cluster place");
        let mut arriving = arriving.borrow_mut();
        let mut answered = arriving.claim(&persistent()).expect("claimed in a cluster");
        let token = match sent_to_cluster(&inbox).as_slice() {
            [.., ShardMsg::Claim { token, .. }] => *token,
            other => panic!("expected the claim, got {other:?}"),
        };
        // The old owner's stub sent this on, and it overtook the hand-over.
        let early = message_on_t(b"early", QoS::AtLeastOnce, now);
        arriving.apply(stale_for_c(early), now);
        let outcome = ClaimOutcome::Owner {
            epoch: 5,
            session: Some(archive),
            missed: false,
        };
        arriving.apply(ShardMsg::Claimed { token, outcome }, now);
        assert!(answered.try_recv().is_ok(), "answered");
        let resumed = arriving.attach(&persistent(), false, -1, 5, now).conn;
        match resumed.take_packets().as_slice() {
            [Packet::ConnAck(connack), Packet::Publish(early)] => {
                assert!(connack.session_present);
                assert_eq!(early.payload, &b"early"[..]);
            }
            other => panic!("expected CONNACK and the early message, got {other:?}"),
        }
    }

    #[test]
    fn a_refused_connect_claims_nothing() {
        let (state, _inbox) = super::super::tests::clustered(true);
        let mut connect = persistent();
        connect.protocol = crate::protocol::ProtocolVersion::V5;
        connect.client_id = "".into();
        connect.clean_start = false;
        // An authentication method ringmq does not support: refused.
        connect.properties.authentication_method = Some("SCRAM".into());
        assert!(state.borrow_mut().claim(&connect).is_none());
    }
}
