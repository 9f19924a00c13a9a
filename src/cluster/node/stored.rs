//! Acknowledgements of forwarded messages that wait for this node's
//! stores: with a data dir whose durability makes acknowledgements wait,
//! a peer hears "taken" for a message only once every local shard it went
//! to has committed what it queued for stored sessions, so the peer's
//! publisher is answered for a message that survives this node's crash.
//!
//! Acknowledgements are cumulative per stream, so they leave in the order
//! the frames came, each once the stores of its frame and of every earlier
//! one on the stream have committed.

use std::collections::VecDeque;

use super::{Frame, Lane, Node, PeerKey};
use crate::cluster::outbox::Seq;
use crate::shard::ShardId;
use crate::shard::mesh::ShardMsg;

/// One frame's acknowledgement, waiting for `waiting` shards' stores.
#[derive(Debug)]
pub(super) struct UnstoredAck {
    token: u64,
    seq: Seq,
    waiting: usize,
}

/// The stream an acknowledgement is for: which peer, in which life.
pub(super) type AckStream = (PeerKey, u64, u32);

impl Node {
    /// Acknowledges `seq` on `stream` of peer `key` once the stores of
    /// `shards` (the local shards the frame's messages went to) have
    /// committed them; at once without a store to wait for.
    pub(super) fn ack_when_stored(
        &mut self,
        key: PeerKey,
        stream: u32,
        seq: Seq,
        shards: &[ShardId],
    ) {
        let lane = (key, self.peers[key].incarnation, stream);
        let earlier = self.unstored_acks.get(&lane).is_some_and(|q| !q.is_empty());
        match self.queue_stored_ack(key, stream, seq, shards.len()) {
            Some(token) => {
                for &shard in shards {
                    self.outputs.push_back(super::NodeOutput::ToShard {
                        shard,
                        msg: ShardMsg::StoreBarrier { token },
                    });
                }
            }
            None if earlier => {
                self.push_unstored(lane, seq, 0);
            }
            None => self.send(key, Lane::Control, Frame::PublishAck { stream, seq }),
        }
        self.release_stored_acks(lane);
    }

    /// Queues the acknowledgement of `seq` to wait for `waiting` stores'
    /// `StoreReached` under the returned token; None, and nothing queued,
    /// when acknowledgements do not wait for stores or nothing was stored.
    pub(super) fn queue_stored_ack(
        &mut self,
        key: PeerKey,
        stream: u32,
        seq: Seq,
        waiting: usize,
    ) -> Option<u64> {
        if !self.config.stored_acks || waiting == 0 {
            return None;
        }
        let lane = (key, self.peers[key].incarnation, stream);
        let token = self.push_unstored(lane, seq, waiting);
        self.store_tokens.insert(token, lane);
        Some(token)
    }

    /// Queues `seq`'s acknowledgement behind the earlier ones of `lane`,
    /// to wait for `waiting` stores (acknowledgements leave in order).
    fn push_unstored(&mut self, lane: AckStream, seq: Seq, waiting: usize) -> u64 {
        self.last_store_token += 1;
        let token = self.last_store_token;
        self.unstored_acks
            .entry(lane)
            .or_default()
            .push_back(UnstoredAck {
                token,
                seq,
                waiting,
            });
        token
    }

    /// A shard's store has committed everything up to the barrier `token`.
    pub(super) fn handle_store_reached(&mut self, token: u64) {
        let Some(lane) = self.store_tokens.get(&token).copied() else {
            return;
        };
        if let Some(ack) = self
            .unstored_acks
            .get_mut(&lane)
            .and_then(|queue| queue.iter_mut().find(|ack| ack.token == token))
        {
            ack.waiting = ack.waiting.saturating_sub(1);
            if ack.waiting == 0 {
                self.store_tokens.remove(&token);
            }
        }
        self.release_stored_acks(lane);
    }

    /// Sends the acknowledgement of the longest run of committed frames at
    /// the front of `lane`'s queue.
    fn release_stored_acks(&mut self, lane: AckStream) {
        let Some(queue) = self.unstored_acks.get_mut(&lane) else {
            return;
        };
        let mut done = None;
        while queue.front().is_some_and(|ack| ack.waiting == 0) {
            done = queue.pop_front().map(|ack| ack.seq);
        }
        let empty = queue.is_empty();
        if empty {
            self.unstored_acks.remove(&lane);
        }
        let (key, incarnation, stream) = lane;
        if let Some(seq) = done
            && self
                .peers
                .get(key)
                .is_some_and(|peer| peer.incarnation == incarnation)
        {
            self.send(key, Lane::Control, Frame::PublishAck { stream, seq });
        }
    }

    /// The peer restarted or was forgotten: acknowledgements owed to its
    /// earlier life are dropped with it.
    pub(super) fn forget_stored_acks(&mut self, key: PeerKey) {
        let tokens = &mut self.store_tokens;
        self.unstored_acks.retain(|&(peer, _, _), queue| {
            if peer == key {
                for ack in queue.iter() {
                    tokens.remove(&ack.token);
                }
            }
            peer != key
        });
    }
}

/// Kept per stream, oldest first.
pub(super) type UnstoredQueue = VecDeque<UnstoredAck>;
