//! Outgoing QoS 1 and QoS 2 messages between PUBLISH and their final
//! acknowledgement, keyed by packet id.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use super::queue::Outgoing;
use crate::protocol::QoS;

/// Where an outgoing flow stands.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Flight {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    AtLeastOnce(Outgoing),
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    ExactlyOnce(Outgoing),
    /// QoS 2 PUBREL sent, waiting for PUBCOMP; the message itself is no
    /// longer needed. Holds the flow's store key ([`Outgoing::seq`]).
    Released(u64),
}

/// A flow owed to the client again after a reconnect, named by the stage it
/// was in then: if the flow has moved on before its turn to be sent, the
/// resend is stale and skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resend {
    Publish(u16),
    Release(u16),
}

impl Resend {
    pub fn packet_id(self) -> u16 {
        match self {
            Resend::Publish(packet_id) | Resend::Release(packet_id) => packet_id,
        }
    }
}

/// What a PUBREC did to a flow.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum PubRecOutcome {
    /// Send PUBREL (again, if this PUBREC repeats an earlier one). Holds
    /// the message the flow no longer needs, on the first PUBREC.
    Release(Option<Outgoing>),
    /// The client refused the message (v5 error reason): the flow is over.
    Ended(Outgoing),
    Unknown,
}

/// The slots counted against the inflight window: the spec counts a QoS 2
/// message until PUBCOMP, not just until PUBREC (spec 4.9).
///
/// Nothing is allocated until the first QoS 1/2 message goes out: an idle
/// session, or one that only ever gets QoS 0, pays one pointer for this.
/// Once allocated it stays, since the packet id sequence must carry on.
#[derive(Debug, Default)]
pub(super) struct Inflight(Option<Box<Flows>>);

#[derive(Debug, Default)]
struct Flows {
    /// The sequence number orders resends after a reconnect the way the
    /// messages were first sent (spec 4.6); packet ids wrap, so they can't.
    flights: FxHashMap<u16, (u64, Flight)>,
    /// Flows owed again after a reconnect, in the order they started:
    /// there are some only if there are flows.
    resend: VecDeque<Resend>,
    last_id: u16,
    next_seq: u64,
}

impl Inflight {
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |flows| flows.flights.len())
    }

    /// The next free packet id after the last one handed out, wrapping
    /// from 65535 to 1. `None` only when all 65535 are in flight.
    pub fn next_free_id(&self) -> Option<u16> {
        let Some(flows) = &self.0 else {
            return Some(1);
        };
        let mut id = flows.last_id;
        for _ in 0..u16::MAX {
            id = id.checked_add(1).unwrap_or(1);
            if !flows.flights.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// Records a PUBLISH sent with `packet_id` (from [`Inflight::next_free_id`]).
    pub fn start(&mut self, packet_id: u16, outgoing: Outgoing) {
        let flight = if outgoing.qos == QoS::ExactlyOnce {
            Flight::ExactlyOnce(outgoing)
        } else {
            Flight::AtLeastOnce(outgoing)
        };
        self.resume(packet_id, flight);
    }

    /// Puts back a flow read from the store, in the order they started.
    pub fn resume(&mut self, packet_id: u16, flight: Flight) {
        let flows = self.0.get_or_insert_default();
        flows.last_id = packet_id;
        flows.flights.insert(packet_id, (flows.next_seq, flight));
        flows.next_seq += 1;
    }

    /// Ends a QoS 1 flow, returning it. An unknown id, or one in another
    /// state, is ignored: a late or confused ack is no reason to drop the
    /// client.
    pub fn puback(&mut self, packet_id: u16) -> Option<Flight> {
        match self.get(packet_id) {
            Some(Flight::AtLeastOnce(_)) => self.remove(packet_id),
            _ => None,
        }
    }

    pub fn pubrec(&mut self, packet_id: u16, accepted: bool) -> PubRecOutcome {
        let Some(flows) = &mut self.0 else {
            return PubRecOutcome::Unknown;
        };
        let Some((_, flight)) = flows.flights.get_mut(&packet_id) else {
            return PubRecOutcome::Unknown;
        };
        match flight {
            Flight::ExactlyOnce(_) if !accepted => match flows.flights.remove(&packet_id) {
                Some((_, Flight::ExactlyOnce(outgoing))) => PubRecOutcome::Ended(outgoing),
                _ => PubRecOutcome::Unknown,
            },
            Flight::ExactlyOnce(outgoing) => {
                let seq = outgoing.seq;
                match std::mem::replace(flight, Flight::Released(seq)) {
                    Flight::ExactlyOnce(outgoing) => PubRecOutcome::Release(Some(outgoing)),
                    _ => PubRecOutcome::Release(None),
                }
            }
            Flight::Released(_) => PubRecOutcome::Release(None),
            Flight::AtLeastOnce(_) => PubRecOutcome::Unknown,
        }
    }

    /// Ends a QoS 2 flow whose PUBREL was sent, returning it.
    pub fn pubcomp(&mut self, packet_id: u16) -> Option<Flight> {
        match self.get(packet_id) {
            Some(Flight::Released(_)) => self.remove(packet_id),
            _ => None,
        }
    }

    pub fn get(&self, packet_id: u16) -> Option<&Flight> {
        let (_, flight) = self.0.as_ref()?.flights.get(&packet_id)?;
        Some(flight)
    }

    pub fn remove(&mut self, packet_id: u16) -> Option<Flight> {
        let (_, flight) = self.0.as_mut()?.flights.remove(&packet_id)?;
        Some(flight)
    }

    /// Ends every flow whose message has not been received by the client
    /// (PUBLISH sent, no PUBACK or PUBREC yet) and that `take` selects,
    /// returning those messages in the order they were first sent.
    pub fn take_unreceived(&mut self, take: impl Fn(&Outgoing) -> bool) -> Vec<Outgoing> {
        let Some(flows) = &mut self.0 else {
            return Vec::new();
        };
        let mut ids: Vec<(u64, u16)> = flows
            .flights
            .iter()
            .filter(|(_, (_, flight))| match flight {
                Flight::AtLeastOnce(outgoing) | Flight::ExactlyOnce(outgoing) => take(outgoing),
                Flight::Released(_) => false,
            })
            .map(|(&id, &(seq, _))| (seq, id))
            .collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|(_, id)| match flows.flights.remove(&id) {
                Some((_, Flight::AtLeastOnce(outgoing) | Flight::ExactlyOnce(outgoing))) => {
                    Some(outgoing)
                }
                _ => None,
            })
            .collect()
    }

    /// Ends every flow, returning them (for the journal of a session that
    /// ends).
    pub fn take_all(&mut self) -> Vec<Flight> {
        self.0
            .as_mut()
            .map(|flows| {
                flows
                    .flights
                    .drain()
                    .map(|(_, (_, flight))| flight)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every flow, in the order it started (spec 4.6): PUBLISH again (with
    /// DUP) for messages not acknowledged, PUBREL for those received.
    pub fn resends(&self) -> Vec<Resend> {
        self.in_order()
            .into_iter()
            .map(|(id, flight)| match flight {
                Flight::Released(_) => Resend::Release(id),
                Flight::AtLeastOnce(_) | Flight::ExactlyOnce(_) => Resend::Publish(id),
            })
            .collect()
    }

    /// Every flow with its packet id, in the order it started.
    pub fn in_order(&self) -> Vec<(u16, &Flight)> {
        let Some(flows) = &self.0 else {
            return Vec::new();
        };
        let mut flights: Vec<_> = flows
            .flights
            .iter()
            .map(|(&id, (seq, flight))| (*seq, id, flight))
            .collect();
        flights.sort_unstable_by_key(|&(seq, _, _)| seq);
        flights
            .into_iter()
            .map(|(_, id, flight)| (id, flight))
            .collect()
    }

    /// A new connection is owed every flow again (spec 4.4), replacing
    /// what the last one was still owed; [`Inflight::next_resend`] hands
    /// them out.
    pub fn schedule_resends(&mut self) {
        let resend = self.resends().into();
        if let Some(flows) = &mut self.0 {
            flows.resend = resend;
        }
    }

    /// The next flow owed again since the reconnect. It may have moved on
    /// since (an ack came first), or ended.
    pub fn next_resend(&mut self) -> Option<Resend> {
        self.0.as_mut()?.resend.pop_front()
    }

    /// The connection is gone: what it was owed is rebuilt on resume.
    pub fn clear_resends(&mut self) {
        if let Some(flows) = &mut self.0 {
            flows.resend.clear();
        }
    }

    /// Starts the packet id sequence after `last_id`, for tests of its
    /// wrap.
    #[cfg(test)]
    fn after(last_id: u16) -> Inflight {
        Inflight(Some(Box::new(Flows {
            last_id,
            ..Flows::default()
        })))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::message::Message;
    use crate::protocol::LazyPublishProperties;

    fn outgoing(qos: QoS) -> Outgoing {
        Outgoing {
            message: Arc::new(Message {
                topic: "t".into(),
                payload: Default::default(),
                qos,
                retain: false,
                properties: LazyPublishProperties::default(),
                publisher: "p".into(),
                expires_at: None,
                received_at: std::time::Instant::now(),
            }),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
            shared: None,
            seq: 0,
        }
    }

    fn send(inflight: &mut Inflight, qos: QoS) -> u16 {
        let id = inflight.next_free_id().expect("free id");
        inflight.start(id, outgoing(qos));
        id
    }

    #[test]
    fn ids_start_at_one_and_increase() {
        let mut inflight = Inflight::default();
        assert_eq!(send(&mut inflight, QoS::AtLeastOnce), 1);
        assert_eq!(send(&mut inflight, QoS::AtLeastOnce), 2);
        inflight.puback(1);
        // A freed id is not reused straight away: a late ack for it would
        // otherwise hit the wrong message.
        assert_eq!(send(&mut inflight, QoS::AtLeastOnce), 3);
    }

    #[test]
    fn ids_wrap_past_65535_and_skip_ids_in_use() {
        let mut inflight = Inflight::default();
        assert_eq!(send(&mut inflight, QoS::AtLeastOnce), 1);
        inflight.0.as_mut().expect("allocated by the send").last_id = 65_534;
        assert_eq!(send(&mut inflight, QoS::AtLeastOnce), 65_535);
        // 1 is still in flight, so the wrap lands on 2.
        assert_eq!(send(&mut inflight, QoS::AtLeastOnce), 2);
        assert_eq!(inflight.len(), 3);
    }

    #[test]
    fn no_id_when_all_are_in_flight() {
        let mut inflight = Inflight::default();
        for _ in 0..u16::MAX {
            send(&mut inflight, QoS::AtLeastOnce);
        }
        assert_eq!(inflight.next_free_id(), None);
        inflight.puback(40_000);
        assert_eq!(inflight.next_free_id(), Some(40_000));
    }

    #[test]
    fn qos1_ends_on_puback_only() {
        let mut inflight = Inflight::default();
        let id = send(&mut inflight, QoS::AtLeastOnce);
        assert_eq!(inflight.pubrec(id, true), PubRecOutcome::Unknown);
        inflight.pubcomp(id);
        assert_eq!(inflight.len(), 1);
        inflight.puback(id);
        assert_eq!(inflight.len(), 0);
    }

    #[test]
    fn qos2_holds_its_slot_until_pubcomp() {
        let mut inflight = Inflight::default();
        let id = send(&mut inflight, QoS::ExactlyOnce);
        inflight.puback(id);
        inflight.pubcomp(id);
        assert_eq!(inflight.len(), 1);
        assert!(matches!(
            inflight.pubrec(id, true),
            PubRecOutcome::Release(Some(_))
        ));
        assert_eq!(inflight.get(id), Some(&Flight::Released(0)));
        assert_eq!(inflight.resends(), vec![Resend::Release(id)]);
        assert_eq!(
            inflight.pubrec(id, true),
            PubRecOutcome::Release(None),
            "repeated PUBREC"
        );
        assert_eq!(inflight.len(), 1);
        inflight.pubcomp(id);
        assert_eq!(inflight.len(), 0);
    }

    #[test]
    fn refused_pubrec_ends_the_flow() {
        let mut inflight = Inflight::default();
        let id = send(&mut inflight, QoS::ExactlyOnce);
        assert!(matches!(
            inflight.pubrec(id, false),
            PubRecOutcome::Ended(_)
        ));
        assert_eq!(inflight.len(), 0);
        assert_eq!(inflight.pubrec(id, true), PubRecOutcome::Unknown);
    }

    #[test]
    fn send_order_survives_id_wrap() {
        let mut inflight = Inflight::after(65_534);
        let ids: Vec<u16> = (0..3)
            .map(|_| send(&mut inflight, QoS::AtLeastOnce))
            .collect();
        assert_eq!(ids, vec![65_535, 1, 2]);
        let order: Vec<Resend> = ids.iter().map(|&id| Resend::Publish(id)).collect();
        assert_eq!(inflight.resends(), order);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Send(bool),
        PubAck(usize),
        PubRec(usize, bool),
        PubComp(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<bool>().prop_map(Op::Send),
            any::<usize>().prop_map(Op::PubAck),
            (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| Op::PubRec(i, ok)),
            any::<usize>().prop_map(Op::PubComp),
        ]
    }

    proptest! {
        /// Acks for any id in any order never make an id in use be handed
        /// out again, and the tracked set always matches a model.
        #[test]
        fn ids_in_use_are_never_reused(ops in proptest::collection::vec(op(), 1..400), start in any::<u16>()) {
            let mut inflight = Inflight::after(start);
            let mut model: HashSet<u16> = HashSet::new();
            for op in ops {
                let pick = |i: usize| -> u16 {
                    let mut ids: Vec<u16> = model.iter().copied().collect();
                    ids.sort_unstable();
                    if ids.is_empty() { (i % 65_535) as u16 + 1 } else { ids[i % ids.len()] }
                };
                match op {
                    Op::Send(qos2) => {
                        let id = inflight.next_free_id().expect("far from 65535 in flight");
                        prop_assert!(id != 0);
                        prop_assert!(model.insert(id), "id {} handed out while in use", id);
                        inflight.start(id, outgoing(if qos2 { QoS::ExactlyOnce } else { QoS::AtLeastOnce }));
                    }
                    Op::PubAck(i) => {
                        let id = pick(i);
                        if let Some(Flight::AtLeastOnce(_)) = inflight.get(id) {
                            model.remove(&id);
                        }
                        inflight.puback(id);
                    }
                    Op::PubRec(i, ok) => {
                        let id = pick(i);
                        if matches!(inflight.pubrec(id, ok), PubRecOutcome::Ended(_)) {
                            model.remove(&id);
                        }
                    }
                    Op::PubComp(i) => {
                        let id = pick(i);
                        if let Some(Flight::Released(_)) = inflight.get(id) {
                            model.remove(&id);
                        }
                        inflight.pubcomp(id);
                    }
                }
                prop_assert_eq!(inflight.len(), model.len());
            }
        }
    }
}
