//! The shard's side of shared subscriptions (see "Shared subscriptions"
//! in the [`crate::shard`] docs): this shard's members of each group, the
//! groups' routes, and, for the groups this shard owns, picking the member
//! each message goes to.

use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;

use super::{GroupPlace, LocalSubscription, SessionKey, ShardState};
use crate::message::Message;
use crate::router::shared;
use crate::session::Delivery;
use crate::shard::mesh::{ShardMsg, SharedMember, StoredReply};
use crate::shard::{ShardId, group_owner};

impl ShardState {
    /// The shard that keeps `share`'s member list and picks its members.
    pub(super) fn owner(&self, share: &str) -> ShardId {
        group_owner(share, self.mesh.shard_count())
    }

    fn member(&self, key: SessionKey) -> SharedMember {
        SharedMember {
            shard: self.id(),
            client_id: self.sessions[key].session.client_id().clone(),
        }
    }

    /// Adds a session to the shared subscription `share`: to this shard's
    /// members (the first one announces the group's route to every
    /// shard), and to the owner's member list.
    pub(super) fn join_group(
        &mut self,
        key: SessionKey,
        share: ByteString,
        subscription: LocalSubscription,
        now: Instant,
    ) {
        let members = self.shared_members.entry(share.clone()).or_default();
        let first_here = members.is_empty();
        members.insert(key, subscription);
        let me = self.id();
        if first_here {
            // Before the SUBACK leaves: a PUBLISH sent after it must find
            // the route on whichever shard reads it.
            self.mesh.push_others(|| ShardMsg::SharedRouteAdd {
                share: share.clone(),
                from: me,
            });
            self.add_group_route(share.clone(), me);
        }
        let msg = ShardMsg::SharedJoin {
            member: self.member(key),
            online: self.sessions[key].conn.is_some(),
            share: share.clone(),
        };
        self.send(self.owner(&share), msg, now);
    }

    /// Removes a session from the shared subscription `share`: the last
    /// member here withdraws the group's route from every shard, and the
    /// owner forgets the member.
    pub(super) fn leave_group(&mut self, key: SessionKey, share: &ByteString, now: Instant) {
        let me = self.id();
        let Some(members) = self.shared_members.get_mut(share) else {
            return;
        };
        if members.remove(&key).is_none() {
            return;
        }
        if members.is_empty() {
            self.shared_members.remove(share);
            self.mesh.push_others(|| ShardMsg::SharedRouteRemove {
                share: share.clone(),
                from: me,
            });
            self.remove_group_route(share, me);
        }
        let msg = ShardMsg::SharedLeave {
            share: share.clone(),
            member: self.member(key),
        };
        self.send(self.owner(share), msg, now);
    }

    /// Tells the owners of the session's groups that it gained or lost its
    /// connection.
    pub(super) fn set_online(&mut self, key: SessionKey, online: bool, now: Instant) {
        let shares: Vec<ByteString> = self.sessions[key]
            .session
            .subscriptions()
            .filter(|filter| shared::is_shared(filter))
            .cloned()
            .collect();
        for share in shares {
            let msg = ShardMsg::SharedJoin {
                share: share.clone(),
                member: self.member(key),
                online,
            };
            self.send(self.owner(&share), msg, now);
        }
    }

    /// Hands the shared messages the session has not acknowledged back to
    /// their groups' owners, to go to another member.
    pub(super) fn reroute_unacked(&mut self, key: SessionKey, now: Instant) {
        let unacked = self.sessions[key].session.take_shared_unacked();
        let client_id = self.sessions[key].session.client_id().clone();
        for (share, message) in unacked {
            self.send_back(share, message, client_id.clone(), None, now);
        }
    }

    /// Returns `message` to the owner of `share`, to pick a member other
    /// than `client_id` (homed here). `reply` is the answer still waiting
    /// for it to land, if any.
    pub(super) fn send_back(
        &mut self,
        share: ByteString,
        message: Arc<Message>,
        client_id: ByteString,
        reply: Option<StoredReply>,
        now: Instant,
    ) {
        let exclude = Some(SharedMember {
            shard: self.id(),
            client_id,
        });
        let owner = self.owner(&share);
        let msg = ShardMsg::SharedPublish {
            share,
            message,
            exclude,
            local_only: false,
            reply,
        };
        self.send(owner, msg, now);
    }

    /// `from` has a member of `share`: messages matching its filter are
    /// handed to the group's owner. Only well-formed names are announced.
    pub(super) fn add_group_route(&mut self, share: ByteString, from: ShardId) {
        let Some(name) = shared::parse(&share) else {
            return;
        };
        let groups = &mut self.routes.entry(name.filter).groups;
        match groups.iter_mut().find(|group| group.share == share) {
            Some(group) if !group.shards.contains(&from) => group.shards.push(from),
            Some(_) => {}
            None => groups.push(GroupPlace {
                share: share.clone(),
                shards: vec![from],
            }),
        }
    }

    pub(super) fn remove_group_route(&mut self, share: &ByteString, from: ShardId) {
        let Some(name) = shared::parse(share) else {
            return;
        };
        let Some(places) = self.routes.get_mut(name.filter) else {
            return;
        };
        if let Some(at) = places.groups.iter().position(|group| group.share == share) {
            let shards = &mut places.groups[at].shards;
            shards.retain(|&shard| shard != from);
            if shards.is_empty() {
                places.groups.swap_remove(at);
            }
        }
        if places.is_empty() {
            self.routes.remove(name.filter);
        }
    }

    /// As the owner of `share`: picks the member `message` goes to and
    /// sends it to that member's shard. In a cluster, each peer node with
    /// members is one more member here (its shard is the cluster's place,
    /// its client id the node id), so the pick is made once for the whole
    /// cluster; a message a peer's owner picked this node for
    /// (`local_only`) goes to a member here. A group with no member left
    /// drops the message, as a filter with no subscriber would, and
    /// answers `reply` at once.
    pub(super) fn pick_member(
        &mut self,
        share: ByteString,
        message: Arc<Message>,
        exclude: Option<&SharedMember>,
        local_only: bool,
        reply: Option<StoredReply>,
        now: Instant,
    ) {
        let random = shared::next_random(&mut self.random);
        let strategy = self.config.shared_strategy;
        let shards = self.mesh.shard_count();
        let admit = |member: &SharedMember| !local_only || member.shard < shards;
        let Some((member, online)) = self
            .groups
            .get_mut(&share)
            .and_then(|group| group.pick_among(strategy, random, exclude, &admit))
        else {
            self.answer_when_stored(reply);
            return;
        };
        let to = member.shard;
        let msg = ShardMsg::SharedDeliver {
            share,
            client_id: member.client_id.clone(),
            message,
            online,
            reply,
        };
        self.send(to, msg, now);
    }

    /// As the chosen member's shard: delivers a message a group picked
    /// this session for, or sends it back to the owner if the member has
    /// left or (unbeknown to the owner when it chose) gone offline; the
    /// owner has heard of either by then, since both went out first on the
    /// same queue.
    pub(super) fn deliver_shared(
        &mut self,
        share: ByteString,
        client_id: ByteString,
        message: Arc<Message>,
        online: bool,
        reply: Option<StoredReply>,
        now: Instant,
    ) {
        let member = (self.by_client_id.get(&self.sessions, &client_id)).and_then(|key| {
            let subscription = self.shared_members.get(&share)?.get(&key)?;
            Some((key, *subscription))
        });
        let Some((key, subscription)) =
            member.filter(|&(key, _)| !online || self.sessions[key].conn.is_some())
        else {
            self.send_back(share, message, client_id, reply, now);
            return;
        };
        let delivery = Delivery {
            granted_qos: subscription.options.qos,
            retain_as_published: subscription.options.retain_as_published,
            from_retained_store: false,
            subscription_ids: subscription.id.into_iter().collect(),
        };
        self.deliver(key, &message, delivery, Some(share), now);
        self.answer_when_stored(reply);
    }

    /// A relayed message has landed here (or nowhere): whoever waits for it
    /// hears once this shard's store holds what it changed, at once when
    /// there is nothing to wait for. Always through the mesh, never
    /// synchronously, so an answer relayed by its own shard is not
    /// released before that shard has counted the wait.
    fn answer_when_stored(&mut self, reply: Option<StoredReply>) {
        match reply {
            Some(StoredReply::Confirm(shard, confirmation)) => {
                self.confirm_stored(shard, confirmation)
            }
            Some(StoredReply::Reached(place, token)) => self.store_barrier(place, token),
            None => {}
        }
    }
}
