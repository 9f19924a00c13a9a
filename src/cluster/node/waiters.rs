//! Clients waiting on the cluster: a confirmation (a held PUBACK, PUBREC
//! or SUBACK) waits for every reachable peer to acknowledge what the shard
//! sent before it, and is released when they have, or when they stop
//! being reachable. See "Waiting clients" in the parent module.

use std::time::Instant;

use super::{Node, NodeOutput, Peer, PeerKey, Waiter, WaiterKey};
use crate::cluster::settings::AckMode;
use crate::shard::ShardId;
use crate::shard::mesh::{Confirmation, ShardMsg};

impl Node {
    pub(super) fn confirm_after(
        &mut self,
        shard: ShardId,
        reply_to: ShardId,
        confirmation: Confirmation,
        now: Instant,
    ) {
        let target_version = self.target_route_version();
        let waiter = self.waiters.insert(Waiter {
            reply_to,
            confirmation,
            pending: 0,
        });
        let mut pending = 0;
        let mut route_wait = false;
        let reachable = |peer: &&mut Peer| peer.linked && !peer.suspected;
        for (_, peer) in self.peers.iter_mut().filter(|(_, peer)| reachable(peer)) {
            if let Some(stream) = peer.streams.get_mut(shard)
                && self.config.ack == AckMode::Remote
                && stream.outbox.acked() < stream.outbox.last_seq()
            {
                stream.waiters.push_back((stream.outbox.last_seq(), waiter));
                pending += 1;
            }
            if peer.acked_version < target_version {
                peer.route_waiters.push_back((target_version, waiter));
                pending += 1;
                route_wait = true;
            }
        }
        if pending == 0 {
            let waiter = self.waiters.remove(waiter);
            self.release(waiter);
        } else {
            self.waiters[waiter].pending = pending;
            if route_wait {
                self.waiter_deadlines
                    .push_back((now + self.config.route_ack_timeout, waiter));
            }
        }
    }

    pub(super) fn release(&mut self, waiter: Waiter) {
        self.outputs.push_back(NodeOutput::ToShard {
            shard: waiter.reply_to,
            msg: ShardMsg::Confirm(waiter.confirmation),
        });
    }

    /// One of a waiter's peers has acknowledged (or gone away).
    pub(super) fn settle(&mut self, key: WaiterKey) {
        let Some(waiter) = self.waiters.get_mut(key) else {
            return;
        };
        waiter.pending = waiter.pending.saturating_sub(1);
        if waiter.pending == 0 {
            let waiter = self.waiters.remove(key);
            self.release(waiter);
        }
    }

    // ---- from the peers ----

    /// Releases everyone waiting for peer `key` to acknowledge something.
    pub(super) fn release_waiters(&mut self, key: PeerKey) {
        let peer = &mut self.peers[key];
        let mut released = Vec::new();
        for stream in &mut peer.streams {
            released.extend(stream.waiters.drain(..).map(|(_, waiter)| waiter));
        }
        released.extend(peer.route_waiters.drain(..).map(|(_, waiter)| waiter));
        for waiter in released {
            self.settle(waiter);
        }
    }
}
