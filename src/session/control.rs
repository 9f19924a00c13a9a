//! Answers to the client (acks, SUBACK, UNSUBACK, PINGRESP, DISCONNECT)
//! and the tickets that hold them back until the shard says so.
//!
//! In a cluster, a QoS 1/2 PUBLISH may be acknowledged only once other
//! nodes have the message, and a SUBACK sent only once every live peer
//! routes the filter here. The session cannot know either, so for each it
//! hands the shard a [`Ticket`] with the action and places a barrier at the
//! current end of this queue: the answer queued next, and everything after
//! it, waits until that ticket and every earlier one are confirmed. MQTT
//! wants PUBACKs in the order the PUBLISHes came (3.1.1 §4.6), so answers
//! are released as a prefix, never one by one; confirmations may come in
//! any order (different peers answer), and are noted until the front
//! catches up.
//!
//! Positions are absolute packet counts (popped so far plus the queue's
//! length), so a barrier never moves when packets leave the front, and
//! each packet and ticket costs a push, a pop and an addition.

use std::collections::VecDeque;

use crate::protocol::Packet;

/// One thing a session waits for the shard to confirm: routing a client's
/// QoS 1/2 PUBLISH, or adding one filter of a SUBSCRIBE. Numbered per
/// session, increasing for its whole life, so a ticket from an earlier
/// connection is told apart from the current ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(u64);

impl Ticket {
    /// The `n`th ticket a session issues, for tests that compare actions.
    #[cfg(test)]
    pub(crate) const fn nth(n: u64) -> Ticket {
        Ticket(n)
    }
}

/// The control queue: packets that go out before any message, some held
/// behind barriers.
#[derive(Debug, Default)]
pub(super) struct Control {
    packets: VecDeque<Packet>,
    /// Allocated on the first ticket and kept: a session that never
    /// publishes at QoS 1/2 or subscribes pays a pointer, not the 48 bytes
    /// inline (every connection holds a session), and one that does
    /// allocates once, not per ticket.
    tickets: Option<Box<Tickets>>,
}

#[derive(Debug, Default)]
struct Tickets {
    /// Tickets not yet released, oldest first: `barriers[i]` is ticket
    /// `first + i`. Tickets are issued in order and released from the
    /// front, so the ones held are always consecutive and a lookup is a
    /// subtraction.
    barriers: VecDeque<Barrier>,
    /// The number of the ticket at the front of `barriers`, which is the
    /// next one issued when none is held.
    first: u64,
    /// Packets popped since this was allocated: the position of
    /// `packets[0]`, counted from the front of the queue at that moment.
    popped: u64,
}

#[derive(Debug, Clone, Copy)]
struct Barrier {
    /// Packets at this position and later wait for the ticket.
    position: u64,
    confirmed: bool,
}

impl Control {
    pub fn push_back(&mut self, packet: Packet) {
        self.packets.push_back(packet);
    }

    /// The next packet not held back by a barrier.
    pub fn pop_front(&mut self) -> Option<Packet> {
        let Some(tickets) = &mut self.tickets else {
            return self.packets.pop_front();
        };
        // Only an unconfirmed ticket stays at the front (see `confirm`).
        if tickets
            .barriers
            .front()
            .is_some_and(|barrier| barrier.position <= tickets.popped)
        {
            return None;
        }
        let packet = self.packets.pop_front()?;
        tickets.popped += 1;
        Some(packet)
    }

    /// A new ticket, with its barrier at the current end of the queue.
    pub fn hold(&mut self) -> Ticket {
        let tickets = self.tickets.get_or_insert_default();
        let ticket = Ticket(tickets.first + tickets.barriers.len() as u64);
        tickets.barriers.push_back(Barrier {
            position: tickets.popped + self.packets.len() as u64,
            confirmed: false,
        });
        ticket
    }

    /// Marks `ticket` confirmed and releases what the front of the
    /// barriers no longer holds. A ticket not held (already released, or
    /// dropped with an earlier connection) is ignored.
    pub fn confirm(&mut self, ticket: Ticket) {
        let Some(tickets) = &mut self.tickets else {
            return;
        };
        let Some(barrier) = ticket
            .0
            .checked_sub(tickets.first)
            .and_then(|index| usize::try_from(index).ok())
            .and_then(|index| tickets.barriers.get_mut(index))
        else {
            return;
        };
        barrier.confirmed = true;
        while tickets
            .barriers
            .front()
            .is_some_and(|barrier| barrier.confirmed)
        {
            tickets.barriers.pop_front();
            tickets.first += 1;
        }
    }

    /// Tickets whose answers are still held: not confirmed, or confirmed
    /// while an earlier one is not.
    /// Changes the reason code of the PUBACK or PUBREC held behind
    /// `ticket`: what it acknowledged could not be kept.
    pub fn refuse(&mut self, ticket: Ticket, reason: crate::protocol::ReasonCode) {
        if let Some(Packet::PubAck(answer) | Packet::PubRec(answer)) = self.answer_mut(ticket) {
            answer.reason = reason;
        }
    }

    /// The packet id of the PUBREC held behind `ticket`, if it is one.
    pub fn held_pubrec(&mut self, ticket: Ticket) -> Option<u16> {
        match self.answer_mut(ticket) {
            Some(Packet::PubRec(answer)) => Some(answer.packet_id),
            _ => None,
        }
    }

    fn answer_mut(&mut self, ticket: Ticket) -> Option<&mut Packet> {
        let tickets = self.tickets.as_ref()?;
        let position = ticket
            .0
            .checked_sub(tickets.first)
            .and_then(|index| usize::try_from(index).ok())
            .and_then(|index| tickets.barriers.get(index))
            .and_then(|barrier| barrier.position.checked_sub(tickets.popped))
            .and_then(|at| usize::try_from(at).ok())?;
        self.packets.get_mut(position)
    }

    pub fn unconfirmed(&self) -> usize {
        self.tickets
            .as_ref()
            .map_or(0, |tickets| tickets.barriers.len())
    }

    /// Packets queued, held ones included.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// The connection is gone: its answers and tickets with it. Ticket
    /// numbers go on from where they were, so a late confirmation of a
    /// dropped ticket finds nothing.
    pub fn clear(&mut self) {
        if let Some(tickets) = &mut self.tickets {
            tickets.popped += self.packets.len() as u64;
            tickets.drop_all();
        }
        self.packets.clear();
    }

    /// The connection is closing: answers still held would never be sent
    /// (the shard closes it once what is released has gone out), and a
    /// goodbye queued behind them would be lost with them. The client
    /// sends unacknowledged QoS 1/2 PUBLISHes again on its next
    /// connection; an incoming QoS 2 id stays awaiting PUBREL, so it is
    /// not routed twice.
    pub fn drop_held(&mut self) {
        let Some(tickets) = &mut self.tickets else {
            return;
        };
        if let Some(barrier) = tickets.barriers.front() {
            let kept = (barrier.position - tickets.popped) as usize;
            self.packets.truncate(kept);
            tickets.drop_all();
        }
    }

    /// Gives back the buffers when nothing is in them (see
    /// [`super::Session::handle_pingreq`]).
    pub fn release_buffers(&mut self) {
        if self.packets.is_empty() {
            self.packets = VecDeque::new();
        }
        if let Some(tickets) = &mut self.tickets
            && tickets.barriers.is_empty()
        {
            tickets.barriers = VecDeque::new();
        }
    }

    /// Confirms every ticket held, as a single-node shard has by the time
    /// it transmits.
    #[cfg(test)]
    pub fn confirm_all(&mut self) {
        if let Some(tickets) = &mut self.tickets {
            tickets.drop_all();
        }
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.packets.capacity()
    }
}

impl Tickets {
    fn drop_all(&mut self) {
        self.first += self.barriers.len() as u64;
        self.barriers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(control: &mut Control) -> Vec<Packet> {
        std::iter::from_fn(|| control.pop_front()).collect()
    }

    #[test]
    fn a_barrier_holds_what_comes_after_it_only() {
        let mut control = Control::default();
        control.push_back(Packet::PingResp);
        let ticket = control.hold();
        control.push_back(Packet::PingReq);
        assert_eq!(drain(&mut control), vec![Packet::PingResp]);
        assert_eq!(control.len(), 1);
        control.confirm(ticket);
        assert_eq!(drain(&mut control), vec![Packet::PingReq]);
        assert_eq!(control.unconfirmed(), 0);
    }

    #[test]
    fn out_of_order_confirmations_release_from_the_front() {
        let mut control = Control::default();
        let tickets: Vec<_> = (0..3)
            .map(|_| {
                let ticket = control.hold();
                control.push_back(Packet::PingResp);
                ticket
            })
            .collect();
        control.confirm(tickets[2]);
        control.confirm(tickets[1]);
        assert_eq!(drain(&mut control), vec![]);
        assert_eq!(control.unconfirmed(), 3);
        control.confirm(tickets[0]);
        assert_eq!(drain(&mut control).len(), 3);
        assert_eq!(control.unconfirmed(), 0);
        // Released tickets are forgotten: confirming again does nothing.
        control.confirm(tickets[0]);
        let next = control.hold();
        control.push_back(Packet::PingResp);
        control.confirm(tickets[2]);
        assert_eq!(drain(&mut control), vec![]);
        control.confirm(next);
        assert_eq!(drain(&mut control), vec![Packet::PingResp]);
    }

    #[test]
    fn dropping_held_answers_keeps_the_released_ones() {
        let mut control = Control::default();
        control.push_back(Packet::PingResp);
        let ticket = control.hold();
        control.push_back(Packet::PingReq);
        control.drop_held();
        control.push_back(Packet::PingReq);
        control.confirm(ticket);
        assert_eq!(drain(&mut control), vec![Packet::PingResp, Packet::PingReq]);
        assert_eq!(control.unconfirmed(), 0);
    }
}
