//! What one node owes another on one stream: the messages published on
//! one of its shards that match the peer's filters, numbered, kept until
//! the peer acknowledges them, and sent again from the first unacknowledged
//! one when a broken link comes back. The receiver drops numbers it has
//! already taken ([`Inbound`]), so a retransmission never delivers twice.

use std::collections::VecDeque;
use std::sync::Arc;

use bytestring::ByteString;

use crate::message::Message;
use crate::protocol::QoS;

/// Sequence number of a message on one stream; the first is 1, so 0 means
/// "nothing yet".
pub type Seq = u64;

/// One (source shard, destination node) stream's unacknowledged messages.
#[derive(Debug, Default)]
pub struct Outbox {
    /// The number the next pushed message gets, minus one.
    last_seq: Seq,
    /// Unacknowledged messages, oldest first, with consecutive numbers
    /// except where a full buffer dropped some.
    entries: VecDeque<Entry>,
    /// How many of `entries` (from the front) were sent on the current
    /// link; the rest wait for credit or a link.
    sent: usize,
    /// Bytes of `entries` not yet sent / sent and not yet acknowledged.
    unsent_bytes: usize,
    in_flight_bytes: usize,
    /// The highest number the peer acknowledged.
    acked: Seq,
}

#[derive(Debug)]
struct Entry {
    seq: Seq,
    message: Arc<Message>,
    bytes: usize,
    /// The shared subscription a group owner picked the peer for; `None`
    /// for a message matching the peer's own filters.
    share: Option<ByteString>,
}

/// What [`Outbox::poll_send`] hands out for one frame.
#[derive(Debug)]
pub struct Batch {
    pub first_seq: Seq,
    /// Set for a shared-subscription message, which travels alone.
    pub share: Option<ByteString>,
    pub messages: Vec<Arc<Message>>,
}

/// Why [`Outbox::drop_one`] dropped a message, for the per-peer counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    Qos0,
    Qos12,
}

impl Outbox {
    /// An empty outbox whose next message is numbered `last_seq + 1`.
    pub fn resuming_after(last_seq: Seq) -> Outbox {
        Outbox {
            last_seq,
            acked: last_seq,
            ..Outbox::default()
        }
    }

    /// Numbers `message` and queues it; returns its number.
    pub fn push(&mut self, message: Arc<Message>, share: Option<ByteString>) -> Seq {
        self.last_seq += 1;
        let bytes = approximate_size(&message);
        self.unsent_bytes += bytes;
        self.entries.push_back(Entry {
            seq: self.last_seq,
            message,
            bytes,
            share,
        });
        self.last_seq
    }

    /// The number of the last message pushed.
    /// The QoS 1/2 messages not acknowledged, oldest first, that matched
    /// the peer's own filters (not picked for a shared subscription).
    pub fn unacked_qos12(&self) -> impl Iterator<Item = &Arc<Message>> + '_ {
        (self.entries.iter())
            .filter(|entry| entry.share.is_none() && entry.message.qos != QoS::AtMostOnce)
            .map(|entry| &entry.message)
    }

    pub fn last_seq(&self) -> Seq {
        self.last_seq
    }

    pub fn acked(&self) -> Seq {
        self.acked
    }

    /// Bytes held, sent or not.
    pub fn bytes(&self) -> usize {
        self.unsent_bytes + self.in_flight_bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The peer has everything up to `seq`: forget it. Returns the bytes
    /// freed. An acknowledgement past what was sent (a confused peer) only
    /// forgets what was sent.
    pub fn handle_ack(&mut self, seq: Seq) -> usize {
        let mut freed = 0;
        while self.sent > 0 && self.entries.front().is_some_and(|entry| entry.seq <= seq) {
            if let Some(entry) = self.entries.pop_front() {
                self.in_flight_bytes -= entry.bytes;
                freed += entry.bytes;
                self.sent -= 1;
            }
        }
        self.acked = self.acked.max(seq.min(self.last_seq));
        freed
    }

    /// The link broke: everything unacknowledged goes again on the next.
    pub fn handle_link_lost(&mut self) {
        self.sent = 0;
        self.unsent_bytes += self.in_flight_bytes;
        self.in_flight_bytes = 0;
    }

    /// Takes the next messages to send while in-flight bytes stay under
    /// `window` (at least one if nothing is in flight, so a message larger
    /// than the window still goes), or `None` when nothing can go. A
    /// frame's numbers are consecutive, and a shared-subscription message
    /// goes alone.
    pub fn poll_send(&mut self, window: usize) -> Option<Batch> {
        let first = self.entries.get(self.sent)?;
        let (first_seq, share) = (first.seq, first.share.clone());
        // Most often everything unsent goes (the window is large): sized
        // for that, so the vector is not grown message by message; no more
        // than the window can take, each entry counting at least 64 bytes.
        let mut messages = Vec::with_capacity(if share.is_some() {
            1
        } else {
            (self.entries.len() - self.sent).min(window / 64 + 1)
        });
        let mut expected = first_seq;
        while let Some(entry) = self.entries.get(self.sent) {
            let fits = self.in_flight_bytes == 0 || self.in_flight_bytes + entry.bytes <= window;
            let joins = messages.is_empty() || (share.is_none() && entry.share.is_none());
            if entry.seq != expected || !fits || !joins {
                break;
            }
            messages.push(entry.message.clone());
            self.in_flight_bytes += entry.bytes;
            self.unsent_bytes -= entry.bytes;
            self.sent += 1;
            expected += 1;
        }
        (!messages.is_empty()).then_some(Batch {
            first_seq,
            share,
            messages,
        })
    }

    /// Drops the oldest unsent message of the given kind (QoS 0 when
    /// `qos0`, else QoS 1/2) to make room: its kind, bytes and number;
    /// `None` if there is none.
    pub fn drop_one(&mut self, qos0: bool) -> Option<(Dropped, usize, Seq)> {
        let position = self
            .entries
            .iter()
            .skip(self.sent)
            .position(|entry| (entry.message.qos == QoS::AtMostOnce) == qos0)?
            + self.sent;
        let entry = self.entries.remove(position)?;
        self.unsent_bytes -= entry.bytes;
        let kind = if qos0 { Dropped::Qos0 } else { Dropped::Qos12 };
        Some((kind, entry.bytes, entry.seq))
    }
}

/// What a message costs in an outbox: its bytes and a fixed overhead for
/// the bookkeeping, so that a flood of empty messages is bounded too.
fn approximate_size(message: &Message) -> usize {
    64 + message.topic.len() + message.payload.len()
}

/// What a node has taken from one peer incarnation's stream: messages
/// numbered at or below `last` are duplicates.
#[derive(Debug, Default, Clone, Copy)]
pub struct Inbound {
    last: Seq,
}

impl Inbound {
    /// Whether `seq` is new; if it is, it counts as taken.
    pub fn take(&mut self, seq: Seq) -> bool {
        if seq <= self.last {
            return false;
        }
        self.last = seq;
        true
    }

    pub fn last(&self) -> Seq {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;
    use bytestring::ByteString;

    use super::*;
    use crate::protocol::LazyPublishProperties;

    fn message(n: u32, qos: QoS) -> Arc<Message> {
        Arc::new(Message {
            topic: ByteString::from_static("t"),
            payload: Bytes::from(n.to_be_bytes().to_vec()),
            qos,
            retain: false,
            properties: LazyPublishProperties::default(),
            publisher: ByteString::from_static("p"),
            expires_at: None,
            received_at: Instant::now(),
        })
    }

    fn sent(outbox: &mut Outbox, window: usize) -> Option<(Seq, Vec<u32>)> {
        let batch = outbox.poll_send(window)?;
        Some((batch.first_seq, numbers(&batch.messages)))
    }

    fn numbers(batch: &[Arc<Message>]) -> Vec<u32> {
        batch
            .iter()
            .map(|m| u32::from_be_bytes(m.payload.as_ref().try_into().expect("4 bytes")))
            .collect()
    }

    #[test]
    fn sends_in_order_forgets_on_ack_and_resends_after_link_loss() {
        let mut outbox = Outbox::default();
        for n in 1..=5 {
            assert_eq!(
                outbox.push(message(n, QoS::AtLeastOnce), None),
                u64::from(n)
            );
        }
        assert_eq!(
            sent(&mut outbox, usize::MAX),
            Some((1, vec![1, 2, 3, 4, 5]))
        );
        assert!(outbox.poll_send(usize::MAX).is_none());
        outbox.handle_ack(2);
        assert_eq!(outbox.len(), 3);
        outbox.handle_link_lost();
        assert_eq!(
            sent(&mut outbox, usize::MAX),
            Some((3, vec![3, 4, 5])),
            "resend"
        );
        outbox.handle_ack(5);
        assert!(outbox.is_empty());
        assert_eq!(outbox.bytes(), 0);
    }

    #[test]
    fn window_limits_what_is_in_flight_but_one_always_goes() {
        let mut outbox = Outbox::default();
        for n in 1..=3 {
            outbox.push(message(n, QoS::AtLeastOnce), None);
        }
        assert_eq!(sent(&mut outbox, 1), Some((1, vec![1])), "one goes");
        assert!(outbox.poll_send(1).is_none(), "window full");
        outbox.handle_ack(1);
        assert_eq!(sent(&mut outbox, 1), Some((2, vec![2])));
    }

    #[test]
    fn drops_qos0_first_and_a_gap_splits_frames() {
        let mut outbox = Outbox::default();
        outbox.push(message(1, QoS::AtLeastOnce), None);
        outbox.push(message(2, QoS::AtMostOnce), None);
        outbox.push(message(3, QoS::AtLeastOnce), None);
        let before = outbox.bytes();
        let (kind, bytes, seq) = outbox.drop_one(true).expect("a QoS 0 message");
        assert_eq!((kind, seq), (Dropped::Qos0, 2));
        assert_eq!(outbox.bytes(), before - bytes);
        assert!(outbox.drop_one(true).is_none());
        assert_eq!(sent(&mut outbox, usize::MAX), Some((1, vec![1])));
        assert_eq!(
            sent(&mut outbox, usize::MAX),
            Some((3, vec![3])),
            "after the gap"
        );
        outbox.handle_ack(3);
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_shared_subscription_message_travels_alone() {
        let mut outbox = Outbox::default();
        outbox.push(message(1, QoS::AtLeastOnce), None);
        outbox.push(message(2, QoS::AtLeastOnce), Some("$share/g/t".into()));
        outbox.push(message(3, QoS::AtLeastOnce), None);
        outbox.push(message(4, QoS::AtLeastOnce), None);
        assert_eq!(sent(&mut outbox, usize::MAX), Some((1, vec![1])));
        let shared = outbox.poll_send(usize::MAX).expect("the shared message");
        assert_eq!(shared.share.as_deref(), Some("$share/g/t"));
        assert_eq!((shared.first_seq, numbers(&shared.messages)), (2, vec![2]));
        assert_eq!(sent(&mut outbox, usize::MAX), Some((3, vec![3, 4])));
    }

    #[test]
    fn inbound_takes_each_number_once() {
        let mut inbound = Inbound::default();
        assert!(inbound.take(1));
        assert!(inbound.take(2));
        assert!(!inbound.take(2));
        assert!(!inbound.take(1));
        assert!(inbound.take(5), "a gap (dropped at the sender) is accepted");
        assert_eq!(inbound.last(), 5);
    }
}
