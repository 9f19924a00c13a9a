//! The retained store across the cluster: each node keeps an index of
//! every retained message with its last-writer-wins stamp (hybrid logical
//! clock, then origin node), sends local changes to its peers, takes a
//! peer's only when newer, and sends the whole index when a link comes up
//! (anti-entropy after a partition).

use std::sync::Arc;

use bytestring::ByteString;

use super::{Frame, Node, RetainedEntry, is_node_local};
use crate::message::Message;
use crate::shard::mesh::ShardMsg;

impl Node {
    pub(super) fn local_retain(&mut self, message: Arc<Message>) {
        if is_node_local(&message) {
            return;
        }
        let hlc = self.tick_hlc(0);
        let origin = self.config.node_id.clone();
        self.store_retained(hlc, origin.clone(), message.clone());
        self.tell_every_linked_peer(|| Frame::Retain {
            hlc,
            origin: origin.clone(),
            message: message.clone(),
        });
    }

    pub(super) fn store_retained(&mut self, hlc: u64, origin: ByteString, message: Arc<Message>) {
        self.retained.insert(
            message.topic.clone(),
            RetainedEntry {
                hlc,
                origin,
                message,
            },
        );
    }

    /// Advances the hybrid logical clock past the wall clock and `seen`.
    pub(super) fn tick_hlc(&mut self, seen: u64) -> u64 {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64)
            << 16;
        self.hlc = (self.hlc + 1).max(wall).max(seen + 1);
        self.hlc
    }

    pub(super) fn receive_retain(&mut self, hlc: u64, origin: ByteString, message: Arc<Message>) {
        self.tick_hlc(hlc);
        let newer = self
            .retained
            .get(&message.topic)
            .is_none_or(|entry| (hlc, &origin) > (entry.hlc, &entry.origin));
        if !newer {
            return;
        }
        self.store_retained(hlc, origin, message.clone());
        self.tell_every_shard(|| ShardMsg::Retain(message.clone()));
    }
}
