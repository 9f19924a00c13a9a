//! The shard's side of its store: turning sessions' journals and records
//! into writes, holding acknowledgements until what they promise is
//! committed, and putting restored sessions back at start-up.
//!
//! An acknowledgement (PUBACK, PUBREC) may wait for several things at
//! once: the cluster's peers, this shard's store, and the stores of the
//! other shards the message went to (each writes the queue entries of its
//! own subscribers). Each wait is counted per ticket; the answer goes out
//! when the count reaches zero, refused (v5 0x97 Quota exceeded, or the
//! connection closed for 3.1.1) if any store could not write.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytestring::ByteString;
use tracing::{info, warn};

use super::{LocalSubscription, SessionKey, SessionSlot, ShardState};
use crate::message::Message;
use crate::protocol::{ProtocolVersion, ReasonCode};
use crate::router::shared::is_shared;
use crate::session::{Change, Session, Ticket};
use crate::shard::ShardId;
use crate::shard::mesh::{Confirmation, ShardMsg};
use crate::store::record::{EntryRecord, FlightRecord, SessionRecord, SubscriptionRecord};
use crate::store::restore::RestoredSubscription;
use crate::store::restore::unix_ms;
use crate::store::transfer::will_record;
use crate::store::{Op, RestoredShard, StoreHandle};

/// Something waiting for this shard's store to commit an epoch.
pub(super) struct StoredWaiter {
    epoch: u64,
    waiter: Awaiting,
}

enum Awaiting {
    /// An answer held by one of this shard's sessions.
    Here(Confirmation),
    /// An answer held by another shard's session, whose message came here.
    Shard(ShardId, Confirmation),
    /// The cluster's acknowledgement to a peer of messages that came here.
    Cluster(ShardId, u64),
}

impl ShardState {
    pub fn attach_store(&mut self, store: StoreHandle) {
        self.store = Some(store);
    }

    /// Writes what is left and waits for the writer to finish.
    pub fn close_store(&mut self) {
        self.flush_store();
        self.store = None;
    }

    /// Puts the sessions of `restored` back, with their subscriptions
    /// (announced to the other shards and the cluster) and the retained
    /// messages of every partition. Wills and expiries due are left for
    /// [`ShardState::resume_restored`], once every shard has its routes.
    pub fn restore(
        &mut self,
        restored: RestoredShard,
        retained: &[std::sync::Arc<crate::message::Message>],
        now: Instant,
    ) {
        for message in retained {
            self.retained.apply(message.clone());
        }
        let count = restored.sessions.len();
        let mut cut = Vec::new();
        // In a cluster, a session whose connection the restart cut stays
        // as if connected until the ownership raft says it is still this
        // node's: another node may have taken it over from a copy, will
        // included, and a message arriving meanwhile must not set its will
        // off here.
        let clustered = self.mesh.cluster_place().is_some();
        for (mut session, subscriptions) in restored.sessions {
            let connected = session.connected;
            session.connected = connected && !clustered;
            let username = session.username.take();
            let session = Session::restore(session, &self.config.session, now);
            let key = self.insert_session(session, username, subscriptions, 0, now);
            self.restored.push(key);
            if connected {
                cut.push(key);
            }
        }
        if clustered {
            self.cut_by_restart.extend(cut.iter().copied());
        }
        if let Some(store) = &mut self.store {
            for key in restored.garbage {
                store.push(Op::Delete(key));
            }
        }
        if count > 0 {
            info!(shard = self.id(), sessions = count, "sessions restored");
            // Another node may have claimed some while this one was down.
            if let Some(place) = self.mesh.cluster_place() {
                let client_ids = (self.by_client_id.client_ids(&self.sessions).cloned()).collect();
                self.mesh.push(place, ShardMsg::CheckOwners { client_ids });
            }
        }
        self.flush();
        // The records of sessions whose connection the restart cut still
        // say connected, with their will and no expiry deadline: written
        // again once `resume_restored` has sent their wills, or the next
        // restart would send those wills again and start their expiry
        // over.
        self.dirty.extend(cut);
    }

    /// Puts a session that comes back (from disk, or from another node)
    /// on this shard, offline, held under `epoch`, its subscriptions
    /// routed.
    pub(super) fn insert_session(
        &mut self,
        session: Session,
        username: Option<ByteString>,
        subscriptions: Vec<RestoredSubscription>,
        epoch: u64,
        now: Instant,
    ) -> SessionKey {
        let key = self.sessions.insert(SessionSlot {
            session,
            conn: None,
            epoch,
        });
        self.by_client_id.insert(&self.sessions, key);
        self.set_acl(key, username);
        for subscription in subscriptions {
            (self.sessions[key].session).restore_subscription(subscription.filter.clone());
            self.subscribe(
                key,
                &subscription.filter,
                subscription.options,
                subscription.id,
                now,
            );
        }
        key
    }

    /// Second step of a restart, once every shard has restored its
    /// subscriptions: wills of sessions whose connection the restart cut,
    /// and expiries that passed while the broker was down.
    ///
    /// In a cluster these wait for the ownership raft's word
    /// ([`ShardState::settle_restored`]): another node may have taken some
    /// of the sessions over from a copy while this one was down, and sent
    /// their wills already.
    pub fn resume_restored(&mut self, now: Instant) {
        self.drain_inbox(now);
        if self.mesh.cluster_place().is_none() {
            self.resume_restored_now(now);
        }
    }

    pub(super) fn resume_restored_now(&mut self, now: Instant) {
        for key in std::mem::take(&mut self.cut_by_restart) {
            if let Some(slot) = self.sessions.get_mut(key) {
                slot.session.connection_cut_by_restart(now);
            }
        }
        for key in std::mem::take(&mut self.restored) {
            // Due now, not at the first tick: a client connecting at once
            // must not resume a session that expired while the broker was
            // down.
            let fired = match self.sessions.get_mut(key) {
                Some(slot) if slot.session.poll_timeout().is_some_and(|at| at <= now) => {
                    slot.session.handle_timeout(now);
                    true
                }
                _ => false,
            };
            self.run_actions(key, now);
            if fired && self.sessions.contains(key) {
                // A will went out: the stored session has none now.
                self.session_changed(key);
            }
            self.schedule(key);
        }
        self.flush();
    }

    /// Writes what the session's journal holds.
    pub(super) fn record_changes(&mut self, key: SessionKey) {
        let (Some(store), Some(slot)) = (&mut self.store, self.sessions.get_mut(key)) else {
            return;
        };
        let client_id = slot.session.client_id().clone();
        for change in slot.session.drain_changes() {
            let change =
                match added_record(&client_id, change, |message| Some(store.refer(message))) {
                    Ok(Some(op)) => {
                        store.push(op);
                        continue;
                    }
                    Ok(None) => continue,
                    Err(change) => change,
                };
            let op = match change {
                Change::Released {
                    seq,
                    packet_id,
                    message,
                } => {
                    store.release(&message);
                    store.push(Op::RemoveEntry {
                        client_id: client_id.clone(),
                        seq,
                        flight: false,
                    });
                    Op::Flight {
                        client_id: client_id.clone(),
                        seq,
                        flight: FlightRecord {
                            packet_id,
                            released: true,
                        },
                    }
                }
                Change::Ended { seq, message } => match message {
                    Some(message) => {
                        store.release(&message);
                        Op::RemoveEntry {
                            client_id: client_id.clone(),
                            seq,
                            flight: true,
                        }
                    }
                    None => Op::RemoveFlight {
                        client_id: client_id.clone(),
                        seq,
                    },
                },
                Change::Completed { packet_id } => Op::RemoveIncomingQos2 {
                    client_id: client_id.clone(),
                    packet_id,
                },
                Change::Queued { .. }
                | Change::Sent { .. }
                | Change::ReleaseOwed { .. }
                | Change::Awaiting { .. } => continue,
            };
            store.push(op);
        }
    }

    /// The session's own record must be written again (connection,
    /// subscriptions or will changed); written once per turn at most.
    pub(super) fn session_changed(&mut self, key: SessionKey) {
        if self.store.is_some() {
            self.record_changes(key);
            self.dirty.insert(key);
        }
    }

    /// The session ended: its records go.
    pub(super) fn session_removed(
        &mut self,
        key: SessionKey,
        client_id: &ByteString,
        was_stored: bool,
    ) {
        self.dirty.remove(&key);
        if let Some(store) = &mut self.store
            && was_stored
        {
            store.push(Op::RemoveSession(client_id.clone()));
        }
    }

    /// Hands the turn's writes to the store: session records last, so they
    /// reflect the turn's end.
    pub(super) fn flush_store(&mut self) {
        if self.store.is_none() {
            return;
        }
        let now = Instant::now();
        let wall = SystemTime::now();
        for key in std::mem::take(&mut self.dirty) {
            let Some(slot) = self.sessions.get(key) else {
                continue;
            };
            if !slot.session.is_stored() {
                continue;
            }
            let record = self.session_record(key, now, wall);
            if let Some(store) = &mut self.store {
                store.push(Op::Session(Box::new(record)));
            }
        }
        self.replicate_turn();
        if let Some(store) = &mut self.store {
            store.flush();
        }
    }

    /// The session's subscriptions, shared ones included, with their
    /// options and identifiers.
    pub(super) fn subscriptions_of(
        &self,
        key: SessionKey,
    ) -> impl Iterator<Item = (&ByteString, LocalSubscription)> + '_ {
        let session = &self.sessions[key].session;
        session.subscriptions().filter_map(move |filter| {
            let subscribers = if is_shared(filter) {
                self.shared_members.get(filter)
            } else {
                self.subscriptions.get(filter)
            };
            Some((filter, *subscribers?.get(&key)?))
        })
    }

    pub(super) fn session_record(
        &self,
        key: SessionKey,
        now: Instant,
        wall: SystemTime,
    ) -> SessionRecord {
        let slot = &self.sessions[key];
        let session = &slot.session;
        let subscriptions = self
            .subscriptions_of(key)
            .map(
                |(filter, LocalSubscription { options, id })| SubscriptionRecord {
                    filter: filter.to_string(),
                    options: options.to_byte(ProtocolVersion::V5),
                    id,
                },
            )
            .collect();
        let will = session.will().map(|(last, due)| {
            let due_ms = due.map(|at| unix_ms(at, now, wall));
            will_record(last, due_ms, session.client_id().clone(), now)
        });
        SessionRecord {
            client_id: session.client_id().to_string(),
            username: session.username().map(ToString::to_string),
            protocol: session.protocol().level(),
            session_expiry: session.session_expiry(),
            connected: slot.conn.is_some(),
            expires_at_ms: session.expires_at().map(|at| unix_ms(at, now, wall)),
            subscriptions,
            will,
        }
    }

    /// Counts `waits` more things `ticket` waits for.
    pub(super) fn hold(&mut self, key: SessionKey, conn: u64, ticket: Ticket, waits: u32) {
        if waits > 0 {
            *self.waits.entry((key, conn, ticket)).or_default() += waits;
        }
    }

    /// One wait of `ticket` is over: true when none is left.
    pub(super) fn release_wait(&mut self, key: SessionKey, conn: u64, ticket: Ticket) -> bool {
        match self.waits.get_mut(&(key, conn, ticket)) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                self.waits.remove(&(key, conn, ticket));
                true
            }
            None => true,
        }
    }

    /// Waits for the stores that the message just routed wrote to: this
    /// shard's, if it wrote anything not yet committed, every other shard
    /// the message went to (`forward_to`, as [`ShardState::publish`] left
    /// it), and the shard storing its topic's retained message. Returns the
    /// number of waits; none without a store. With `durability = none`
    /// each store answers at once unless its writer is far behind.
    pub(super) fn wait_for_stores(
        &mut self,
        confirmation: Confirmation,
        retain_owner: Option<ShardId>,
    ) -> u32 {
        let Some(store) = &self.store else {
            return 0;
        };
        let mut waits = 0;
        if let Some(epoch) = store.barrier() {
            self.stored_waiters.push_back(StoredWaiter {
                epoch,
                waiter: Awaiting::Here(confirmation),
            });
            waits += 1;
        }
        let me = self.id();
        for shard in 0..self.mesh.shard_count() {
            if shard != me && (self.forward_to[shard] || retain_owner == Some(shard)) {
                self.mesh.push(shard, ShardMsg::ConfirmStored(confirmation));
                waits += 1;
            }
        }
        waits
    }

    /// Waits for the record of `key`'s session, written at this turn's
    /// flush, if the session is stored and acknowledgements wait for the
    /// store. Returns the number of waits.
    pub(super) fn wait_for_session_record(&mut self, key: SessionKey, ticket: Ticket) -> u32 {
        let (Some(store), Some(slot)) = (&self.store, self.sessions.get(key)) else {
            return 0;
        };
        let (Some(epoch), Some(conn)) = (store.turn_epoch(), slot.conn.as_ref()) else {
            return 0;
        };
        if !slot.session.is_stored() {
            return 0;
        }
        let confirmation = Confirmation {
            key,
            conn: conn.id,
            ticket,
        };
        self.stored_waiters.push_back(StoredWaiter {
            epoch,
            waiter: Awaiting::Here(confirmation),
        });
        1
    }

    /// Another shard asks to hear when what it sent here is committed.
    pub(super) fn confirm_stored(&mut self, from: ShardId, confirmation: Confirmation) {
        match self.store.as_ref().and_then(StoreHandle::barrier) {
            Some(epoch) => self.stored_waiters.push_back(StoredWaiter {
                epoch,
                waiter: Awaiting::Shard(from, confirmation),
            }),
            None => self.mesh.push(from, ShardMsg::Confirm(confirmation)),
        }
    }

    /// The cluster asks to hear when the messages peers sent here are
    /// committed.
    pub(super) fn store_barrier(&mut self, from: ShardId, token: u64) {
        match self.store.as_ref().and_then(StoreHandle::barrier) {
            Some(epoch) => self.stored_waiters.push_back(StoredWaiter {
                epoch,
                waiter: Awaiting::Cluster(from, token),
            }),
            None => self.mesh.push(from, ShardMsg::StoreReached { token }),
        }
    }

    /// The writer reports: answers waiting for epochs up to `through` go
    /// out, refused if the write failed; with replicated sessions, those
    /// the replicas hold too.
    pub(super) fn stored(&mut self, through: u64, ok: bool, now: Instant) {
        if !ok {
            self.metrics.store_failures += 1;
            warn!(
                shard = self.id(),
                "store write failed: acknowledgements waiting for it are refused"
            );
            self.answer_stored(through, false, now);
            return;
        }
        let Some(store) = &mut self.store else {
            return;
        };
        store.committed(through);
        let settled = store.settled();
        self.answer_stored(settled, true, now);
    }

    /// The replicas hold every epoch up to `through`.
    pub(super) fn replicated(&mut self, through: u64, now: Instant) {
        let Some(store) = &mut self.store else {
            return;
        };
        store.replicated(through);
        let settled = store.settled();
        self.answer_stored(settled, true, now);
    }

    /// Answers the waiters for epochs up to `through`: confirmed if `ok`,
    /// else refused.
    fn answer_stored(&mut self, through: u64, ok: bool, now: Instant) {
        // A failed write is refused to publishers, but what it held for
        // clients goes out all the same: the disk can no longer promise
        // anything either way, and the client would otherwise wait for
        // space to come back.
        self.release_held(through);
        while self
            .stored_waiters
            .front()
            .is_some_and(|waiter| waiter.epoch <= through)
        {
            let Some(waiter) = self.stored_waiters.pop_front() else {
                break;
            };
            match (waiter.waiter, ok) {
                (Awaiting::Here(c), true) => self.confirm(c.key, c.conn, c.ticket, now),
                (Awaiting::Here(c), false) => self.refuse(c, now),
                (Awaiting::Shard(shard, c), true) => self.mesh.push(shard, ShardMsg::Confirm(c)),
                (Awaiting::Shard(shard, c), false) => {
                    self.mesh.push(shard, ShardMsg::StoreRefused(c))
                }
                // The peer cannot be told the write failed: it is answered
                // as taken, and the failure is logged and counted here.
                (Awaiting::Cluster(place, token), _) => {
                    self.mesh.push(place, ShardMsg::StoreReached { token })
                }
            }
        }
    }

    /// A store could not keep what `confirmation`'s answer promises: the
    /// answer says so, and goes out once its other waits are over.
    pub(super) fn refuse(&mut self, confirmation: Confirmation, now: Instant) {
        let Confirmation { key, conn, ticket } = confirmation;
        let Some(slot) = self.sessions.get_mut(key) else {
            return;
        };
        if slot.conn.as_ref().is_none_or(|current| current.id != conn) {
            return;
        }
        slot.session.refuse(ticket, ReasonCode::QuotaExceeded);
        self.run_actions(key, now);
        self.confirm(key, conn, ticket, now);
    }
}

/// The record `change` adds, for the changes that add one (`Err` gives
/// the others back): a queued message's entry, a flight, an awaited QoS 2
/// id. `message_id` names a queued message in the partition; `Ok(None)`
/// when it has none.
pub(super) fn added_record(
    client_id: &ByteString,
    change: Change,
    message_id: impl FnOnce(&Arc<Message>) -> Option<u64>,
) -> Result<Option<Op>, Change> {
    let op = match change {
        Change::Queued {
            seq,
            message,
            qos,
            retain,
            subscription_ids,
            shared,
        } => {
            let Some(id) = message_id(&message) else {
                return Ok(None);
            };
            Op::Entry {
                client_id: client_id.clone(),
                seq,
                entry: EntryRecord {
                    message: id,
                    qos: qos as u8,
                    retain,
                    subscription_ids,
                    shared: shared.map(|s| s.to_string()),
                },
            }
        }
        Change::Sent { seq, packet_id } => Op::Flight {
            client_id: client_id.clone(),
            seq,
            flight: FlightRecord {
                packet_id,
                released: false,
            },
        },
        Change::ReleaseOwed { seq, packet_id } => Op::Flight {
            client_id: client_id.clone(),
            seq,
            flight: FlightRecord {
                packet_id,
                released: true,
            },
        },
        Change::Awaiting { packet_id } => Op::IncomingQos2 {
            client_id: client_id.clone(),
            packet_id,
        },
        other => return Err(other),
    };
    Ok(Some(op))
}
