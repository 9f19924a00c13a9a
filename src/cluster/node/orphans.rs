//! Messages owed to a node that died: they go to the nodes that took its
//! sessions over, not to a dead outbox.
//!
//! A publisher's node acknowledges a message owed to a peer it suspects
//! without waiting for that peer (`handle_peer_suspect`), and keeps it in
//! the peer's outbox. When gossip says the peer is down, its sessions are
//! promoted on the nodes that keep their copies (`replication`); this node
//! then sends the QoS 1/2 messages the dead node never acknowledged, and
//! those published for it since, to the live nodes ([`Frame::Orphans`]),
//! and those that took its sessions over hand each to the promoted
//! sessions whose subscriptions match, and to no other session: the
//! promoted node's own subscribers got the message directly, if it matched
//! them. A node holds orphans until its own promotions of the dead node's
//! sessions are answered, so that the sessions exist when they arrive.
//!
//! A message the dead node had queued and replicated, but whose
//! acknowledgement it never sent, arrives twice: the shard gives it to a
//! session only if the session does not still owe an identical one
//! (`deliver_orphan`).

use std::sync::Arc;

use bytestring::ByteString;
use rustc_hash::{FxHashMap, FxHashSet};

use super::{Frame, Lane, Node, NodeOutput, PeerKey};
use crate::message::Message;
use crate::shard::mesh::{ShardMsg, Way};
use crate::shard::{ShardId, home_shard};

#[derive(Default)]
pub(super) struct Orphans {
    by_origin: FxHashMap<ByteString, Origin>,
    /// Published here this turn for a peer that is down, by peer and
    /// source shard: sent at the end of the turn, one frame each.
    pending: FxHashMap<(PeerKey, ShardId), Vec<Arc<Message>>>,
}

/// What is known here of a node that died.
#[derive(Default)]
struct Origin {
    /// Gossip said it is down here, and its copies were promoted.
    down: bool,
    /// Client ids whose promotion is not answered yet.
    promoting: FxHashSet<ByteString>,
    /// Client ids taken over from its copies here: by a promotion or a
    /// claim here (`None`), or by a claim on a peer given the copy.
    adopted: Vec<(ByteString, Option<PeerKey>)>,
    /// Orphans waiting for the promotions.
    held: Vec<Arc<Message>>,
}

impl Node {
    /// `origin` is down: the QoS 1/2 messages it never acknowledged go to
    /// the nodes that keep copies of its sessions (this one, maybe).
    pub(super) fn orphan_outbox_of(&mut self, origin: &str) {
        let Some(&key) = self.peer_by_id.get(origin) else {
            return;
        };
        let origin = self.peers[key].node_id.clone();
        for shard in 0..self.config.shards {
            let messages: Vec<Arc<Message>> = (self.peers[key].streams[shard].outbox)
                .unacked_qos12()
                .cloned()
                .collect();
            if !messages.is_empty() {
                self.send_orphans(&origin, shard, messages);
            }
        }
    }

    /// `message`, published here for peer `key`, which is down, goes to
    /// the nodes that took its sessions over too, at the end of the turn.
    pub(super) fn orphan(&mut self, key: PeerKey, shard: ShardId, message: &Arc<Message>) {
        let pending = self.orphans.pending.entry((key, shard)).or_default();
        pending.push(message.clone());
    }

    /// Sends the turn's orphans.
    pub(super) fn flush_orphans(&mut self) {
        if self.orphans.pending.is_empty() {
            return;
        }
        for ((key, shard), messages) in std::mem::take(&mut self.orphans.pending) {
            let Some(peer) = self.peers.get(key) else {
                continue;
            };
            let origin = peer.node_id.clone();
            self.send_orphans(&origin, shard, messages);
        }
    }

    /// Hands `messages`, owed to `origin` on shard stream `shard`, to the
    /// nodes that keep copies of its sessions.
    ///
    /// To every linked peer and this node: which of them keep copies was
    /// decided by the dead node's view of the cluster, which need not be
    /// this one's (a peer it suspected then was skipped). A node with no
    /// session taken over from `origin` drops them once it too has seen
    /// `origin` down. The cost, extra copies of the messages published for
    /// a dead node until it is forgotten, falls in a failure only.
    fn send_orphans(&mut self, origin: &ByteString, shard: ShardId, messages: Vec<Arc<Message>>) {
        let peers: Vec<PeerKey> = (self.peers.iter())
            .filter(|(_, peer)| peer.linked && peer.node_id != *origin)
            .map(|(key, _)| key)
            .collect();
        for peer in peers {
            let frame = Frame::Orphans {
                origin: origin.clone(),
                client_ids: Vec::new(),
                messages: messages.clone(),
                stale: false,
            };
            self.send(peer, Lane::Stream(shard as u32), frame);
        }
        self.receive_orphans(origin.clone(), Vec::new(), messages, false);
    }

    /// What came on shard `shard` for `client_id`'s session, which another
    /// node holds now (taken over while this one was cut off, or handed
    /// over moments ago): to every linked peer, for that session alone; a
    /// node without the session drops them, the one with it gives it each
    /// message it did not get another way.
    pub(super) fn send_stale(
        &mut self,
        shard: ShardId,
        client_id: ByteString,
        messages: Vec<Arc<Message>>,
    ) {
        let peers: Vec<PeerKey> = (self.peers.iter())
            .filter(|(_, peer)| peer.linked)
            .map(|(key, _)| key)
            .collect();
        for peer in peers {
            let frame = Frame::Orphans {
                origin: self.config.node_id.clone(),
                client_ids: vec![client_id.clone()],
                messages: messages.clone(),
                stale: true,
            };
            self.send(peer, Lane::Stream(shard as u32), frame);
        }
    }

    /// Orphans of `origin` from a publisher's node (or this one), for the
    /// sessions taken over from its copies here; or, with `client_ids`,
    /// from the node that gave these sessions' copies to this one.
    pub(super) fn receive_orphans(
        &mut self,
        origin: ByteString,
        client_ids: Vec<ByteString>,
        messages: Vec<Arc<Message>>,
        stale: bool,
    ) {
        if !client_ids.is_empty() {
            let way = if stale { Way::Stale } else { Way::Orphan };
            for message in messages {
                for client_id in &client_ids {
                    self.orphan_to_shard(client_id, &message, way);
                }
            }
            return;
        }
        let entry = self.orphans.by_origin.entry(origin.clone()).or_default();
        entry.held.extend(messages);
        self.deliver_orphans(&origin);
    }

    /// The copy of `client_id`'s session, kept for `origin`, was taken
    /// over here (`to` is `None`) or given to peer `to`: orphans of
    /// `origin` go to it.
    pub(super) fn taken_over_from(
        &mut self,
        origin: &str,
        client_id: ByteString,
        to: Option<PeerKey>,
    ) {
        let entry = self.orphans.by_origin.entry(origin.into()).or_default();
        entry.adopted.push((client_id, to));
        self.deliver_orphans(origin);
    }

    fn orphan_to_shard(&mut self, client_id: &ByteString, message: &Arc<Message>, way: Way) {
        self.outputs.push_back(NodeOutput::ToShard {
            shard: home_shard(client_id, self.config.shards),
            msg: ShardMsg::Orphan {
                client_id: client_id.clone(),
                message: message.clone(),
                way,
            },
        });
    }

    /// `origin`'s copies are being promoted: orphans wait for the answers.
    pub(super) fn promoting(&mut self, origin: &str, client_ids: &[ByteString]) {
        let entry = self.orphans.by_origin.entry(origin.into()).or_default();
        entry.down = true;
        entry.promoting.extend(client_ids.iter().cloned());
        self.deliver_orphans(origin);
    }

    /// The promotion of `client_id` is answered (`adopted`: it is a
    /// session here now) or given up.
    pub(super) fn promotion_answered(&mut self, client_id: &ByteString, adopted: bool) {
        let origin = (self.orphans.by_origin.iter())
            .find(|(_, entry)| entry.promoting.contains(client_id))
            .map(|(origin, _)| origin.clone());
        let Some(origin) = origin else {
            return;
        };
        if let Some(entry) = self.orphans.by_origin.get_mut(&origin) {
            entry.promoting.remove(client_id);
            if adopted {
                entry.adopted.push((client_id.clone(), None));
            }
        }
        self.deliver_orphans(&origin);
    }

    /// `origin` is back: nothing of its last life is owed any more.
    pub(super) fn forget_orphans_of(&mut self, origin: &str) {
        self.orphans.by_origin.remove(origin);
    }

    /// Hands the held orphans of `origin` to its promoted sessions, once
    /// every promotion is answered.
    fn deliver_orphans(&mut self, origin: &str) {
        let Some(entry) = self.orphans.by_origin.get_mut(origin) else {
            return;
        };
        if !entry.down || !entry.promoting.is_empty() || entry.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut entry.held);
        let adopted = entry.adopted.clone();
        let mut given: FxHashMap<PeerKey, Vec<ByteString>> = FxHashMap::default();
        for (client_id, to) in &adopted {
            match to {
                None => {
                    for message in &held {
                        self.orphan_to_shard(client_id, message, Way::Orphan);
                    }
                }
                Some(peer) => given.entry(*peer).or_default().push(client_id.clone()),
            }
        }
        for (peer, client_ids) in given {
            if self.peers.get(peer).is_some_and(|p| p.linked) {
                let frame = Frame::Orphans {
                    origin: origin.into(),
                    client_ids,
                    messages: held.clone(),
                    stale: false,
                };
                self.send(peer, Lane::Control, frame);
            }
        }
    }
}
