//! The node's routes: its own filters and shared subscriptions, counted
//! over its shards and announced to peers as versioned deltas, and the
//! peers' routes, kept in a trie (filters) and a map (shared
//! subscriptions) and told to the shards as one more place with
//! subscribers. See "Routes" in the parent module.

use bytestring::ByteString;

use super::{Frame, Lane, Node, NodeOutput, PeerKey};
use crate::router::shared::is_shared;
use crate::shard::mesh::{ShardMsg, SharedMember};
use crate::shard::{ShardId, group_owner};

impl Node {
    pub(super) fn local_route_add(&mut self, filter: ByteString, shard: ShardId) {
        let shards = self.local_filters.entry(filter.clone()).or_default();
        if shards.contains(&shard) {
            return;
        }
        shards.push(shard);
        let first = shards.len() == 1;
        let in_trie = self.local_trie.entry(&filter);
        if !in_trie.contains(&shard) {
            in_trie.push(shard);
        }
        if first && !self.pending_remove.remove(&filter) {
            self.pending_add.insert(filter);
        }
    }

    pub(super) fn local_route_remove(&mut self, filter: &ByteString, shard: ShardId) {
        let Some(shards) = self.local_filters.get_mut(filter) else {
            return;
        };
        shards.retain(|&s| s != shard);
        let last = shards.is_empty();
        if last {
            self.local_filters.remove(filter);
            self.local_trie.remove(filter);
            if !self.pending_add.remove(filter) {
                self.pending_remove.insert(filter.clone());
            }
        } else if let Some(in_trie) = self.local_trie.get_mut(filter) {
            in_trie.retain(|&s| s != shard);
        }
    }

    pub(super) fn local_group_add(&mut self, share: ByteString, shard: ShardId) {
        let shards = self.local_groups.entry(share.clone()).or_default();
        if shards.contains(&shard) {
            return;
        }
        shards.push(shard);
        if shards.len() == 1 && !self.pending_remove.remove(&share) {
            self.pending_add.insert(share);
        }
    }

    pub(super) fn local_group_remove(&mut self, share: &ByteString, shard: ShardId) {
        let Some(shards) = self.local_groups.get_mut(share) else {
            return;
        };
        shards.retain(|&s| s != shard);
        if shards.is_empty() {
            self.local_groups.remove(share);
            if !self.pending_add.remove(share) {
                self.pending_remove.insert(share.clone());
            }
        }
    }
    /// The route version that includes every change seen so far, sent or
    /// about to be.
    pub(super) fn target_route_version(&self) -> u64 {
        let pending = !self.pending_add.is_empty() || !self.pending_remove.is_empty();
        self.route_version + u64::from(pending)
    }
    /// Every filter and shared subscription this node has subscribers for.
    pub(super) fn local_names(&self) -> Vec<ByteString> {
        self.local_filters
            .keys()
            .chain(self.local_groups.keys())
            .cloned()
            .collect()
    }

    /// `filters` without the ones added since the last delta, plus the
    /// ones removed since: the set as of `route_version`.
    pub(super) fn sent_filters(&self, filters: Vec<ByteString>) -> Vec<ByteString> {
        filters
            .into_iter()
            .filter(|filter| !self.pending_add.contains(filter))
            .chain(self.pending_remove.iter().cloned())
            .collect()
    }

    pub(super) fn ack_routes(&mut self, key: PeerKey, version: u64) {
        self.send(key, Lane::Control, Frame::RoutesAck { version });
    }
    pub(super) fn add_peer_route(&mut self, key: PeerKey, filter: ByteString) {
        if !self.peers[key].filters.insert(filter.clone()) {
            return;
        }
        if is_shared(&filter) {
            self.add_peer_group(key, filter);
            return;
        }
        let peers = self.remote_trie.entry(&filter);
        let first_node = peers.is_empty();
        if !peers.contains(&key) {
            peers.push(key);
        }
        if first_node {
            let from = self.place();
            self.tell_every_shard(|| ShardMsg::RouteAdd {
                filter: filter.clone(),
                from,
            });
        }
    }

    pub(super) fn remove_peer_route(&mut self, key: PeerKey, filter: &ByteString) {
        if !self.peers[key].filters.remove(filter) {
            return;
        }
        if is_shared(filter) {
            self.remove_peer_group(key, filter);
            return;
        }
        let Some(peers) = self.remote_trie.get_mut(filter) else {
            return;
        };
        peers.retain(|&peer| peer != key);
        if peers.is_empty() {
            self.remote_trie.remove(filter);
            let from = self.place();
            self.tell_every_shard(|| ShardMsg::RouteRemove {
                filter: filter.clone(),
                from,
            });
        }
    }

    /// A peer has members of `share`: to the group's owner shard it is one
    /// more member (the cluster's place, named by its node id), and every
    /// shard routes the group's messages to that owner even with no local
    /// member.
    pub(super) fn add_peer_group(&mut self, key: PeerKey, share: ByteString) {
        let peers = self.remote_groups.entry(share.clone()).or_default();
        peers.push(key);
        let first_node = peers.len() == 1;
        let from = self.place();
        if first_node {
            self.tell_every_shard(|| ShardMsg::SharedRouteAdd {
                share: share.clone(),
                from,
            });
        }
        let member = self.peer_member(key);
        self.outputs.push_back(NodeOutput::ToShard {
            shard: group_owner(&share, self.config.shards),
            msg: ShardMsg::SharedJoin {
                share,
                member,
                online: true,
            },
        });
    }

    pub(super) fn remove_peer_group(&mut self, key: PeerKey, share: &ByteString) {
        let member = self.peer_member(key);
        self.outputs.push_back(NodeOutput::ToShard {
            shard: group_owner(share, self.config.shards),
            msg: ShardMsg::SharedLeave {
                share: share.clone(),
                member,
            },
        });
        let Some(peers) = self.remote_groups.get_mut(share) else {
            return;
        };
        peers.retain(|&peer| peer != key);
        if peers.is_empty() {
            self.remote_groups.remove(share);
            let from = self.place();
            self.tell_every_shard(|| ShardMsg::SharedRouteRemove {
                share: share.clone(),
                from,
            });
        }
    }

    /// How a peer node appears among a group's members.
    pub(super) fn peer_member(&self, key: PeerKey) -> SharedMember {
        SharedMember {
            shard: self.place(),
            client_id: self.peers[key].node_id.clone(),
        }
    }

    pub(super) fn clear_peer_routes(&mut self, key: PeerKey) {
        let filters: Vec<ByteString> = self.peers[key].filters.iter().cloned().collect();
        for filter in filters {
            self.remove_peer_route(key, &filter);
        }
        self.peers[key].version = 0;
    }
}
