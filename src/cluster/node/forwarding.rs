//! Messages across the hop: a published message to the peers whose
//! filters match (once per peer, on the source shard's stream, numbered in
//! its outbox, bounded), a shared-subscription message to the peer its
//! group owner picked, and, arriving, each number taken once and handed to
//! the shards. See "Forwarding" in the parent module.

use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;

use super::{Node, NodeOutput, PeerKey, is_node_local};
use crate::cluster::outbox::{Dropped, Seq};
use crate::message::Message;
use crate::protocol::QoS;
use crate::shard::mesh::{ShardMsg, StoredReply};
use crate::shard::{ShardId, group_owner};
use crate::store::{OutboxOp, RestoredOutbox};

impl Node {
    /// A local group owner picked peer `node_id` for `message`: it goes on
    /// the owner shard's stream, to be given to one member there. A peer
    /// forgotten meanwhile has left the owner's group already (its leave
    /// went first on the same queue), so the message goes back to be
    /// picked again. `reply`, the publisher's answer, waits for the peers
    /// as the publisher's own forwarded messages do.
    pub(super) fn forward_shared(
        &mut self,
        shard: ShardId,
        share: ByteString,
        node_id: &str,
        message: Arc<Message>,
        reply: Option<StoredReply>,
        now: Instant,
    ) {
        match self.peer_by_id.get(node_id) {
            Some(&key) => {
                self.push_to_peer(key, shard, message, Some(share));
                match reply {
                    Some(StoredReply::Confirm(publisher, confirmation)) => {
                        self.confirm_after(shard, publisher, confirmation, now)
                    }
                    // A peer's message is never sent out again (see
                    // `receive_shared`); were it, this node has it.
                    Some(StoredReply::Reached(_, token)) => self.handle_store_reached(token),
                    None => {}
                }
            }
            None => self.hand_to_group_owner(share, message, false, reply),
        }
    }

    /// Hands `message` to this node's owner of `share` to pick a member.
    fn hand_to_group_owner(
        &mut self,
        share: ByteString,
        message: Arc<Message>,
        local_only: bool,
        reply: Option<StoredReply>,
    ) {
        let owner = group_owner(&share, self.config.shards);
        self.outputs.push_back(NodeOutput::ToShard {
            shard: owner,
            msg: ShardMsg::SharedPublish {
                share,
                message,
                exclude: None,
                local_only,
                reply,
            },
        });
    }

    pub(super) fn forward(&mut self, shard: ShardId, message: Arc<Message>) {
        if is_node_local(&message) {
            return;
        }
        let mut matched = std::mem::take(&mut self.matched);
        self.remote_trie.for_each_match(&message.topic, |peers| {
            matched.extend_from_slice(peers);
        });
        matched.sort_unstable();
        matched.dedup();
        for &peer in &matched {
            // Before it is taken over, its outbox holds the message, and
            // goes to the new owners whole then (`orphan_outbox_of`).
            if self.peers[peer].taken_over && message.qos != QoS::AtMostOnce {
                self.orphan(peer, shard, &message);
            }
            self.push_to_peer(peer, shard, message.clone(), None);
        }
        matched.clear();
        self.matched = matched;
    }

    pub(super) fn push_to_peer(
        &mut self,
        key: PeerKey,
        shard: ShardId,
        message: Arc<Message>,
        share: Option<ByteString>,
    ) {
        let limit = self.config.peer_buffer_bytes;
        let peer = &mut self.peers[key];
        let Some(stream) = peer.streams.get_mut(shard) else {
            return;
        };
        let before = stream.outbox.bytes();
        let stored = self.config.durable_outboxes && message.qos != QoS::AtMostOnce;
        let seq = stream.outbox.push(message.clone(), share.clone());
        if stored {
            self.outputs.push_back(NodeOutput::Store(OutboxOp::Put {
                peer: peer.node_id.clone(),
                stream: shard as u32,
                seq,
                share,
                message,
            }));
        }
        let bytes = stream.outbox.bytes() - before;
        peer.buffered_bytes += bytes;
        peer.forwarded += 1;
        peer.forwarded_bytes += bytes as u64;
        self.counters.forwarded_messages += 1;
        // Past the bound, QoS 0 goes first, oldest first, from any stream;
        // then QoS 1/2.
        for qos0 in [true, false] {
            while peer.buffered_bytes > limit {
                let dropped = peer
                    .streams
                    .iter_mut()
                    .enumerate()
                    .find_map(|(index, stream)| Some((index, stream.outbox.drop_one(qos0)?)));
                let Some((index, (kind, bytes, seq))) = dropped else {
                    break;
                };
                peer.buffered_bytes -= bytes;
                match kind {
                    Dropped::Qos0 => {
                        peer.dropped_qos0 += 1;
                        self.counters.dropped_qos0 += 1;
                    }
                    Dropped::Qos12 => {
                        peer.dropped_qos12 += 1;
                        self.counters.dropped_qos12 += 1;
                        if self.config.durable_outboxes {
                            self.outputs.push_back(NodeOutput::Store(OutboxOp::Remove {
                                peer: peer.node_id.clone(),
                                stream: index as u32,
                                seq,
                            }));
                        }
                    }
                }
            }
        }
    }

    /// Owes again what the last run of this node owed its peers and had
    /// not delivered: each message on its stream, numbered afresh (this is
    /// a new incarnation, so peers start its streams over). A peer that
    /// never comes back is forgotten after the hold, as any other.
    pub fn restore_outboxes(&mut self, owed: Vec<RestoredOutbox>, now: std::time::Instant) {
        if owed.is_empty() {
            return;
        }
        // The old numbers go: the entries are written again as pushed.
        self.outputs.push_back(NodeOutput::Store(OutboxOp::Clear));
        for entry in owed {
            let key = self.peer_key_or_insert(&entry.peer);
            let peer = &mut self.peers[key];
            if !peer.linked && peer.unlinked_since.is_none() {
                peer.unlinked_since = Some(now);
            }
            let stream = entry.stream as usize % self.config.shards;
            self.push_to_peer(key, stream, entry.message, entry.share);
        }
    }

    pub(super) fn receive_publish(
        &mut self,
        key: PeerKey,
        stream: u32,
        first_seq: Seq,
        messages: Vec<Arc<Message>>,
    ) {
        let peer = &mut self.peers[key];
        let inbound = peer.inbound.entry((peer.incarnation, stream)).or_default();
        let mut shards = std::mem::take(&mut self.matched);
        let mut touched = Vec::new();
        for (seq, message) in (first_seq..).zip(messages) {
            if !inbound.take(seq) {
                self.counters.duplicates_dropped += 1;
                continue;
            }
            self.counters.received_messages += 1;
            if self.config.shards == 1 {
                // The one shard matches the topic against its own
                // subscriptions anyway (and drops a message none match):
                // matching here as well was 3% of a node's CPU in
                // cross-node pairs at QoS 0 with one shard per node.
                shards.push(0);
            } else {
                // Once per shard, however many of its filters match.
                self.local_trie
                    .for_each_match(&message.topic, |matched| shards.extend_from_slice(matched));
                shards.sort_unstable();
                shards.dedup();
            }
            for &shard in &shards {
                self.outputs.push_back(NodeOutput::ToShard {
                    shard,
                    msg: ShardMsg::Publish(message.clone()),
                });
                // Only kept when acknowledgements wait for the stores: a
                // frame's worth of pushes is no cost to pay for nothing.
                if self.config.stored_acks && !touched.contains(&shard) {
                    touched.push(shard);
                }
            }
            shards.clear();
        }
        self.matched = shards;
        let acked = inbound.last();
        self.ack_when_stored(key, stream, acked, &touched);
    }

    /// A message a peer's group owner picked this node for: this node's
    /// owner of the group gives it to one of its members.
    pub(super) fn receive_shared(
        &mut self,
        key: PeerKey,
        stream: u32,
        seq: Seq,
        share: ByteString,
        message: Arc<Message>,
    ) {
        let peer = &mut self.peers[key];
        let inbound = peer.inbound.entry((peer.incarnation, stream)).or_default();
        let fresh = inbound.take(seq);
        let acked = inbound.last();
        if !fresh {
            self.counters.duplicates_dropped += 1;
            self.ack_when_stored(key, stream, acked, &[]);
            return;
        }
        self.counters.received_messages += 1;
        // The acknowledgement waits for the store of whichever shard the
        // owner picks a member on: the message carries the wait there.
        let reply = self
            .queue_stored_ack(key, stream, acked, 1)
            .map(|token| StoredReply::Reached(self.config.shards, token));
        self.hand_to_group_owner(share, message, true, reply);
        if reply.is_none() {
            self.ack_when_stored(key, stream, acked, &[]);
        }
    }
}
