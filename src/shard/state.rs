//! Everything one shard owns: its sessions, its partition of the
//! subscription trie, its view of which other shards subscribe to what, its
//! replica of the retained store, and the shared subscription groups it
//! owns. Only the shard's own thread touches
//! it (`Rc<RefCell<_>>`, not `Send`); other shards reach it through the
//! mesh.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::BuildHasher;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use rustc_hash::{FxHashMap, FxHashSet};
use slab::Slab;
use tracing::{info, warn};

use super::ShardId;
use super::connection::{CloseReason, ConnHandle, Parking};
use super::deadline::Deadlines;
use super::limit::ConnectionLimit;
use super::mesh::{
    Batch, ClaimOutcome, Confirmation, Handoff, Mesh, ShardMsg, SharedMember, StoredReply, Way,
};
use super::notify::LocalNotify;
use crate::abuse::AbuseLimits;
use crate::abuse::flapping::Flapping;
use crate::auth::Authenticator;
use crate::message::Message;
use crate::metrics::{ShardMetrics, Snapshot};
use crate::protocol::{Connect, Packet, ReasonCode, SubscriptionOptions};
use crate::router::shared::{Group, Strategy, is_shared};
use crate::router::{RetainedStore, TopicTrie};
use crate::session::{
    DeliverOutcome, Delivery, DropReason, Session, SessionAction, SessionConfig, Ticket,
};
use crate::store::{Op, StoreHandle};
use client_ids::ClientIds;

mod acl;
mod client_ids;
mod commit;
mod fence;
mod groups;
mod handover;
mod moving;
mod orphans;
mod persist;
mod replicate;

/// Index of a session in its shard's slab; stable while the session lives.
pub type SessionKey = usize;

/// The key of a connection refused before it had a session: no slab entry
/// ever has it, so the connection is never taken for a session's current one.
const NO_SESSION: SessionKey = usize::MAX;

/// Bytes of encoded output a connection may hold before the shard stops
/// moving messages out of the session's queue: beyond this the socket is
/// slower than the publishers, and the bounded session queue, not this
/// buffer, absorbs (and drops) the surplus.
const OUTPUT_HIGH_WATER: usize = 64 * 1024;

/// Configuration every shard shares.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub session: SessionConfig,
    pub max_packet_size: usize,
    pub shared_strategy: Strategy,
    /// Shared by all shards: clones count against the same limit.
    pub connections: ConnectionLimit,
    /// A connection that has not delivered its CONNECT within this long
    /// is closed (slow-loris defence).
    pub connect_timeout: Duration,
    /// How long a plain-TCP connection may be idle before it parks
    /// (`connection::park`); `None`: it never does.
    pub park_after: Option<Duration>,
    /// Longer client ids are refused with Client Identifier not valid.
    pub max_client_id_length: usize,
    /// Who may connect; shared by all shards.
    pub auth: Arc<Authenticator>,
    /// The limits against abuse; the per-address table is shared by all
    /// shards.
    pub abuse: AbuseLimits,
}

/// A subscription as the local trie holds it.
#[derive(Debug, Clone, Copy)]
struct LocalSubscription {
    options: SubscriptionOptions,
    id: Option<u32>,
}

/// A session on its home shard. The filters it holds in the trie, and the
/// shared subscriptions (`$share/...`) it is a member of, are the
/// session's own ([`Session::subscriptions`]), so that ending it removes
/// exactly them; a second set here cost every slot 32 bytes, and a
/// subscriber a second table.
pub(super) struct SessionSlot {
    session: Session,
    conn: Option<Rc<ConnHandle>>,
    /// The fencing epoch this node holds the session under, in a cluster
    /// (0 on one node, and for a session restored from disk until it is
    /// claimed again): a hand-over asked under an older epoch is stale.
    epoch: u64,
}

/// The places a message matching one filter must go to. A later cluster
/// layer adds nodes beside shards.
#[derive(Debug, Default)]
struct Places {
    /// Shards (other than this one) with at least one subscriber.
    shards: Vec<ShardId>,
    /// Shared subscriptions on this filter with at least one member on
    /// some shard, this one included: the message goes to each group's
    /// owner once, whoever published it.
    groups: Vec<GroupPlace>,
}

#[derive(Debug)]
struct GroupPlace {
    share: ByteString,
    /// Shards with at least one member.
    shards: Vec<ShardId>,
}

/// Messages dropped on this shard, by reason; logged while non-zero and
/// exposed by the metrics layer.
#[derive(Debug, Default, Clone, Copy)]
pub struct DropCounters {
    pub queue_full: u64,
    pub expired: u64,
    /// Larger than the subscriber's v5 Maximum Packet Size.
    pub too_large: u64,
}

pub struct ShardState {
    pub mesh: Mesh,
    config: Rc<ShardConfig>,
    sessions: Slab<SessionSlot>,
    /// Each session by its client id, holding the id once: the session's
    /// own ([`client_ids`]).
    by_client_id: ClientIds,
    subscriptions: TopicTrie<FxHashMap<SessionKey, LocalSubscription>>,
    /// This shard's members of each shared subscription, by share name.
    shared_members: FxHashMap<ByteString, FxHashMap<SessionKey, LocalSubscription>>,
    routes: TopicTrie<Places>,
    /// The shared subscription groups this shard owns
    /// ([`super::group_owner`]),
    /// by share name.
    groups: FxHashMap<ByteString, Group<SharedMember>>,
    /// State of the generator behind the random strategy.
    random: u64,
    retained: RetainedStore,
    /// Offline sessions' next will or expiry deadline. Entries go stale
    /// when a session reconnects; `tick` re-checks with the session.
    timers: BinaryHeap<Reverse<(Instant, SessionKey)>>,
    /// Connections' keep-alives, and time limits on handshakes and
    /// closing.
    pub deadlines: Deadlines,
    /// Idle connections without a task, and those that may become so.
    pub parking: Parking,
    /// Connections other shards handed over, waiting for a task.
    pub handoffs: Vec<Handoff>,
    pub draining: bool,
    /// Wakes the shard's inbox task when another task drained the inbox
    /// and left handoffs or a shutdown for it.
    pub wake: Rc<LocalNotify>,
    /// Connections being served, for the shutdown drain.
    connections: usize,
    pub drops: DropCounters,
    drops_logged: DropCounters,
    pub metrics: ShardMetrics,
    /// The client ids homed here and their recent CONNECTs, when flapping
    /// is detected.
    pub flapping: Option<Flapping>,
    next_conn_id: u64,
    /// Reused per publish: which shards to forward to.
    forward_to: Vec<bool>,
    /// Reused per publish: which shared subscriptions match.
    shared_to: Vec<ByteString>,
    /// Reused per publish: the local sessions that matched.
    matched: Vec<(SessionKey, Delivery)>,
    /// Subscriptions whose SUBACK waits for the cluster, and whose
    /// retained messages go out after it.
    pending_retained: FxHashMap<(SessionKey, Ticket), PendingRetained>,
    /// CONNECTs waiting for the cluster to make this node their client
    /// id's owner, by claim token.
    claims: FxHashMap<u64, handover::PendingClaim>,
    /// Client ids whose claim was granted and whose CONNECT has not
    /// attached yet (its task runs later): a later claim elsewhere may
    /// take the session meanwhile (`handover::Attaching`).
    attaching: FxHashMap<ByteString, handover::Attaching>,
    last_claim: u64,
    /// The shard's partition of the data dir, if the broker has one.
    store: Option<StoreHandle>,
    /// Tickets waiting for more than one thing (the cluster, stores), with
    /// how many are left, by session, connection and ticket.
    waits: FxHashMap<(SessionKey, u64, Ticket), u32>,
    /// Answers waiting for this shard's store, oldest epoch first.
    stored_waiters: VecDeque<persist::StoredWaiter>,
    /// Sessions whose own record is written at the end of the turn.
    dirty: FxHashSet<SessionKey>,
    /// Sessions restored at start-up, whose due wills and expiries wait
    /// until every shard has restored its routes.
    restored: Vec<SessionKey>,
    /// The replicas want every stored session whole at the next flush.
    replica_reset: bool,
    /// No replica is left to copy to: stored sessions' output waits
    /// (`ShardMsg::Unreplicated`).
    unreplicated: bool,
    /// Restored sessions whose connection the restart cut, waiting in a
    /// cluster for the ownership raft's word before that takes effect.
    cut_by_restart: Vec<SessionKey>,
    /// Stored sessions' output held until the store settles its epoch
    /// (`commit`).
    held: FxHashMap<SessionKey, commit::Held>,
    /// Sessions handed over to another node moments ago, still routed
    /// here (`moving`).
    moving: FxHashMap<SessionKey, moving::Moved>,
    /// The sessions `fence` let go, until the raft says who owns them:
    /// their wills and expiries wait for its word.
    fenced_sessions: FxHashSet<SessionKey>,
    /// Sessions taken over from another node, watching for its orphans.
    orphan_guards: FxHashMap<SessionKey, orphans::Seen>,
    /// Messages sent on to this node for a client id it is claiming,
    /// come before the session did (`orphans::hold_early`).
    early_orphans: FxHashMap<ByteString, Vec<(Arc<Message>, Way)>>,
}

/// Where [`ShardState::publish`] sent a message, for the answer's waits.
#[derive(Debug, Clone, Copy)]
struct Routed {
    /// To peer nodes (their acknowledgement is waited for by the caller).
    to_cluster: bool,
    /// Answers carried by the message to the shared groups it matched.
    relayed: u32,
}

/// A subscription's retained messages, owed once its SUBACK goes out.
struct PendingRetained {
    filter: ByteString,
    options: SubscriptionOptions,
    subscription_id: Option<u32>,
}

/// What a new connection gets from [`ShardState::attach`].
pub struct Attached {
    pub conn: Rc<ConnHandle>,
    pub keep_alive: Option<Duration>,
}

impl ShardState {
    pub fn new(mesh: Mesh, config: Rc<ShardConfig>) -> Rc<RefCell<ShardState>> {
        let shards = mesh.place_count();
        let random = RandomState::new().hash_one(mesh.me());
        let flapping = config.abuse.flapping.map(Flapping::new);
        Rc::new(RefCell::new(ShardState {
            mesh,
            config,
            sessions: Slab::new(),
            by_client_id: ClientIds::default(),
            subscriptions: TopicTrie::new(),
            shared_members: FxHashMap::default(),
            routes: TopicTrie::new(),
            groups: FxHashMap::default(),
            random,
            retained: RetainedStore::new(),
            timers: BinaryHeap::new(),
            deadlines: Deadlines::default(),
            parking: Parking::default(),
            handoffs: Vec::new(),
            draining: false,
            wake: Rc::default(),
            connections: 0,
            drops: DropCounters::default(),
            drops_logged: DropCounters::default(),
            metrics: ShardMetrics::default(),
            flapping,
            next_conn_id: 0,
            forward_to: vec![false; shards],
            shared_to: Vec::new(),
            matched: Vec::new(),
            pending_retained: FxHashMap::default(),
            claims: FxHashMap::default(),
            attaching: FxHashMap::default(),
            last_claim: 0,
            store: None,
            waits: FxHashMap::default(),
            stored_waiters: VecDeque::new(),
            dirty: FxHashSet::default(),
            restored: Vec::new(),
            replica_reset: false,
            unreplicated: false,
            cut_by_restart: Vec::new(),
            fenced_sessions: FxHashSet::default(),
            moving: FxHashMap::default(),
            held: FxHashMap::default(),
            orphan_guards: FxHashMap::default(),
            early_orphans: FxHashMap::default(),
        }))
    }

    pub fn id(&self) -> ShardId {
        self.mesh.me()
    }

    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    /// How long an idle connection waits before it parks, if it may park
    /// on this shard at all (`connection::park`).
    pub fn parking_delay(&self) -> Option<Duration> {
        self.config.park_after.filter(|_| self.parking.is_on())
    }

    /// Binds a connection whose CONNECT names a client id homed here to its
    /// session: resumes, takes over or starts one. The CONNACK (and, on
    /// resume, the redelivered messages) are already in the connection's
    /// output; a refused CONNECT leaves the connection closing.
    pub fn attach(
        &mut self,
        connect: &Connect,
        assigned_client_id: bool,
        fd: i32,
        epoch: u64,
        now: Instant,
    ) -> Attached {
        let version = connect.protocol;
        self.next_conn_id += 1;
        // Checked first: it counts this CONNECT as attached.
        let claimed = self.claimed_before_attach(&connect.client_id, epoch);
        // Refused before any session is touched: a CONNECT that fails must
        // not knock out the client already connected with that id.
        let refusal = Session::refuse_connect(connect, &self.config.session)
            .or_else(|| claimed.taken.then(|| handover::taken_meanwhile(connect)));
        if let Some(connack) = refusal {
            let conn = Rc::new(ConnHandle::new(self.next_conn_id, NO_SESSION, version, fd));
            let reason = connack.reason;
            conn.send(&Packet::ConnAck(Box::new(connack)));
            conn.close(CloseReason::Refused(reason));
            self.metrics.refused(reason);
            self.give_early_orphans(&connect.client_id, now);
            self.metrics.connect_latency.record(now.elapsed());
            return Attached {
                conn,
                keep_alive: None,
            };
        }
        let existing = self.by_client_id.get(&self.sessions, &connect.client_id);
        if let Some(key) = existing {
            // A will or an expiry due since the last tick happens first: a
            // session past its expiry is not resumed, even between ticks.
            let slot = &mut self.sessions[key];
            if slot.conn.is_none() && slot.session.poll_timeout().is_some_and(|at| at <= now) {
                slot.session.handle_timeout(now);
                self.run_actions(key, now);
            } else {
                self.take_over(key, now);
            }
        }
        // Taking over may have ended the old session (clean session 1).
        let mut key = self.by_client_id.get(&self.sessions, &connect.client_id);
        if connect.clean_start
            && let Some(old) = key.take()
        {
            // Ends it the way expiry would, so a will still in its delay
            // goes out now.
            self.sessions[old].session.handle_discard(now);
            self.run_actions(old, now);
        }
        let key = key.unwrap_or_else(|| {
            let session = Session::new(connect.client_id.clone(), now);
            let key = self.sessions.insert(SessionSlot {
                session,
                conn: None,
                epoch,
            });
            self.by_client_id.insert(&self.sessions, key);
            key
        });
        self.sessions[key].epoch = epoch;
        if claimed.missed && !self.orphan_guards.contains_key(&key) {
            self.guard_against_orphans(key, now);
        }

        let conn = Rc::new(ConnHandle::new(self.next_conn_id, key, version, fd));
        let slot = &mut self.sessions[key];
        let was_stored = slot.session.is_stored();
        let connack =
            slot.session
                .handle_connect(connect, assigned_client_id, &self.config.session, now);
        conn.send(&Packet::ConnAck(Box::new(connack)));
        let keep_alive = slot.session.keep_alive_timeout();
        slot.conn = Some(conn.clone());
        self.set_acl(key, connect.username.clone());
        let slot = &mut self.sessions[key];
        if was_stored && !slot.session.is_stored() {
            // Resumed by a CONNECT that no longer wants it kept.
            let client_id = slot.session.client_id().clone();
            self.session_removed(key, &client_id, true);
        }
        self.session_changed(key);
        self.set_online(key, true, now);
        self.give_early_orphans(&connect.client_id, now);
        self.run_actions(key, now);
        self.pump(key, now);
        // The groups' owners hear of the connection now, not at the next
        // packet or tick.
        self.flush();
        // `now` was read just before the call, after the CONNECT was
        // decoded (or handed over), so this is the handling time.
        self.metrics.connect_latency.record(now.elapsed());
        Attached { conn, keep_alive }
    }

    /// A second connection for a connected client id closes the first:
    /// v5 clients are told why (0x8E), and the old connection counts as
    /// lost, so its will follows the usual rules.
    fn take_over(&mut self, key: SessionKey, now: Instant) {
        let Some(old) = self.sessions[key].conn.take() else {
            return;
        };
        info!(client = %self.sessions[key].session.client_id(), "session taken over");
        old.disconnect(ReasonCode::SessionTakenOver);
        self.sessions[key].session.handle_connection_lost(now);
        self.run_actions(key, now);
        if self.sessions.contains(key) {
            self.session_changed(key);
        }
        self.schedule(key);
    }

    /// Packets read from a connection, in order. Stops at the first that
    /// closes the connection.
    pub fn handle_packets(
        &mut self,
        conn: &ConnHandle,
        packets: impl IntoIterator<Item = Packet>,
        now: Instant,
    ) {
        let key = conn.key;
        if !self.is_current(key, conn) {
            return;
        }
        for packet in packets {
            if let Packet::Disconnect(disconnect) = &packet {
                conn.note_close_reason(CloseReason::ClientDisconnect(disconnect.reason));
            }
            // The session has queued the Close action and, for v5, the
            // DISCONNECT that the Close action flushes first.
            if let Err(reason) = self.sessions[key].session.handle_packet(packet, now) {
                conn.note_close_reason(CloseReason::Server(reason));
            }
            self.count_acl_denials(key);
            self.run_actions(key, now);
            if conn.is_closing() || !self.is_current(key, conn) {
                break;
            }
        }
        self.flush();
        if self.is_current(key, conn) {
            self.pump(key, now);
        }
    }

    /// The peer sent bytes that do not decode: a v5 client is told why,
    /// then the connection closes (and counts as lost: the will goes out).
    pub fn handle_malformed(&mut self, conn: &ConnHandle, reason: ReasonCode) {
        conn.disconnect(reason);
    }

    /// The network connection has ended, for whatever reason.
    pub fn detach(&mut self, conn: &ConnHandle, now: Instant) {
        conn.close(CloseReason::ClientClosed);
        let key = conn.key;
        if !self.is_current(key, conn) {
            return;
        }
        self.sessions[key].conn = None;
        self.sessions[key].session.handle_connection_lost(now);
        self.run_actions(key, now);
        // A session that outlives its connection stays a member of its
        // groups, but new messages go to online members while there are
        // any, and what it had not acknowledged goes to one of them.
        if self.sessions.contains(key) {
            self.set_online(key, false, now);
            self.reroute_unacked(key, now);
            self.session_changed(key);
        }
        self.flush();
        self.schedule(key);
    }

    fn is_current(&self, key: SessionKey, conn: &ConnHandle) -> bool {
        self.sessions
            .get(key)
            .and_then(|slot| slot.conn.as_ref())
            .is_some_and(|current| current.id == conn.id)
    }

    fn schedule(&mut self, key: SessionKey) {
        if let Some(slot) = self.sessions.get(key)
            && let Some(at) = slot.session.poll_timeout()
        {
            self.timers.push(Reverse((at, key)));
        }
    }

    /// Fires due wills and session expiries.
    pub fn tick(&mut self, now: Instant) {
        while let Some(Reverse((at, key))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.end_moved(key, now) {
                continue;
            }
            let Some(slot) = self.sessions.get_mut(key) else {
                continue;
            };
            // Rescheduled when the raft answers (`unfence`).
            if self.fenced_sessions.contains(&key) {
                continue;
            }
            if slot.session.poll_timeout().is_some_and(|due| due <= now) {
                slot.session.handle_timeout(now);
                self.run_actions(key, now);
                if self.sessions.contains(key) {
                    // A will went out: the stored session has none now.
                    self.session_changed(key);
                }
                self.schedule(key);
            }
        }
        self.deadlines.expire(now);
        for conn in self.parking.due(now) {
            conn.ask_to_park();
        }
        self.flush();
        self.log_drops();
    }

    fn log_drops(&mut self) {
        let (now, then) = (self.drops, self.drops_logged);
        if (now.queue_full, now.expired, now.too_large)
            != (then.queue_full, then.expired, then.too_large)
        {
            warn!(
                shard = self.id(),
                queue_full = now.queue_full - then.queue_full,
                expired = now.expired - then.expired,
                too_large = now.too_large - then.too_large,
                "messages dropped"
            );
            self.drops_logged = now;
        }
    }

    /// Carries out what a session asked for.
    fn run_actions(&mut self, key: SessionKey, now: Instant) {
        while let Some(action) = self
            .sessions
            .get_mut(key)
            .and_then(|slot| slot.session.poll_action())
        {
            match action {
                SessionAction::Publish { message, ticket } => {
                    self.metrics.received(&message);
                    if let Some(ticket) = ticket
                        && self.store.as_ref().is_some_and(StoreHandle::disk_full)
                    {
                        // Not routed: refused after routing, it would
                        // already be with its subscribers, and there again
                        // when its publisher sends it again.
                        self.sessions[key]
                            .session
                            .refuse_unrouted(ticket, ReasonCode::QuotaExceeded);
                        self.metrics.store_refusals += 1;
                        self.confirm_here(key, ticket);
                        continue;
                    }
                    let retain_owner = message
                        .retain
                        .then(|| super::group_owner(&message.topic, self.mesh.shard_count()));
                    let confirmation = ticket.and_then(|ticket| self.confirmation(key, ticket));
                    let routed = self.publish(message, confirmation, now);
                    if let Some(confirmation) = confirmation {
                        self.answer_when_safe(confirmation, routed, retain_owner);
                    }
                }
                SessionAction::Subscribe {
                    filter,
                    options,
                    subscription_id,
                    send_retained,
                    ticket,
                } => {
                    self.subscribe(key, &filter, options, subscription_id, now);
                    self.session_changed(key);
                    // The route is in place on this node; in a cluster the
                    // SUBACK waits until every live peer has the route, so
                    // that a message published anywhere after it arrives,
                    // and for a stored session until its record holds the
                    // subscription, so that a crash after the SUBACK does
                    // not forget it (and what is published to it since).
                    // Retained messages follow the SUBACK, as on one node
                    // without a store, where it is confirmed at once.
                    let in_cluster = self.confirm_after_cluster(key, ticket);
                    let waits = u32::from(in_cluster) + self.wait_for_session_record(key, ticket);
                    let deferred = waits > 0;
                    if deferred {
                        if let Some(conn) = self.sessions[key].conn.as_ref().map(|c| c.id) {
                            self.hold(key, conn, ticket, waits);
                        }
                    } else {
                        self.confirm_here(key, ticket);
                    }
                    if send_retained {
                        let retained = PendingRetained {
                            filter,
                            options,
                            subscription_id,
                        };
                        if deferred {
                            self.pending_retained.insert((key, ticket), retained);
                        } else {
                            self.send_retained(key, retained, now);
                        }
                    }
                }
                SessionAction::Unsubscribe { filter } => {
                    self.unsubscribe(key, &filter, now);
                    self.session_changed(key);
                }
                SessionAction::Close => {
                    self.pump(key, now);
                    if let Some(conn) = &self.sessions[key].conn {
                        conn.close(CloseReason::SessionLimit);
                    }
                }
                SessionAction::Expired => {
                    self.end_session(key, now);
                    return;
                }
            }
        }
        self.record_changes(key);
    }

    /// Sends the answer `ticket` holds once the message is safe: on one
    /// node without a store, once routed (now); in a cluster, once the
    /// peer nodes have it; with a store that acknowledgements wait for,
    /// once every shard that queued it for a stored session has committed.
    /// A message relayed to a shared subscription's owner is answered for
    /// by wherever it lands (`routed.relayed` answers to wait for).
    fn answer_when_safe(
        &mut self,
        confirmation: Confirmation,
        routed: Routed,
        retain_owner: Option<ShardId>,
    ) {
        let Confirmation { key, conn, ticket } = confirmation;
        let mut waits = u32::from(routed.to_cluster && self.confirm_after_cluster(key, ticket));
        waits += self.wait_for_stores(confirmation, retain_owner);
        waits += routed.relayed;
        if waits == 0 {
            self.confirm_here(key, ticket);
        } else {
            self.hold(key, conn, ticket, waits);
        }
    }

    /// What identifies `ticket`'s answer across shards: the session and
    /// its current connection. None for a session with no connection to
    /// answer on.
    fn confirmation(&self, key: SessionKey, ticket: Ticket) -> Option<Confirmation> {
        let conn = self.sessions.get(key)?.conn.as_ref()?.id;
        Some(Confirmation { key, conn, ticket })
    }

    /// Removes a session and every subscription it held. Messages shared
    /// groups chose it for and it had not acknowledged go to other members,
    /// after it has left the groups.
    fn end_session(&mut self, key: SessionKey, now: Instant) {
        let unacked = self.sessions[key].session.take_shared_unacked();
        let slot = self.remove_session(key, now);
        if let Some(place) = self.mesh.cluster_place()
            && slot.epoch != 0
        {
            let client_id = slot.session.client_id().clone();
            let epoch = slot.epoch;
            self.mesh
                .push(place, ShardMsg::Release { client_id, epoch });
        }
        if let Some(conn) = slot.conn {
            conn.close(CloseReason::Server(ReasonCode::Success));
        }
        for (share, message) in unacked {
            self.send_back(share, message, slot.session.client_id().clone(), None, now);
        }
    }

    /// Takes a session off this shard: what its journal still holds is
    /// written, its subscriptions go (routes and group memberships), and
    /// its records leave the store.
    fn remove_session(&mut self, key: SessionKey, now: Instant) -> SessionSlot {
        self.forget_stored(key);
        let filters = self.sessions[key].session.take_subscriptions();
        for filter in &filters {
            self.unsubscribe(key, filter, now);
        }
        self.by_client_id.remove(&self.sessions, key);
        let slot = self.sessions.remove(key);
        self.orphan_guards.remove(&key);
        self.held.remove(&key);
        slot
    }

    /// Writes what session `key`'s journal still holds, then takes its
    /// records out of the store: it is leaving this shard.
    fn forget_stored(&mut self, key: SessionKey) {
        self.record_changes(key);
        let session = &mut self.sessions[key].session;
        let was_stored = session.is_stored();
        session.stop_journal();
        let client_id = session.client_id().clone();
        self.session_removed(key, &client_id, was_stored);
    }

    /// Routes a message published on this shard: to other shards that have
    /// a subscriber, to local subscribers, and to every replica of the
    /// retained store.
    /// `confirmation`, the publisher's answer if it waits for one, travels
    /// with the message to each shared group it matches (see
    /// [`StoredReply`]) when there is somewhere it must be safe first.
    fn publish(
        &mut self,
        message: Arc<Message>,
        confirmation: Option<Confirmation>,
        now: Instant,
    ) -> Routed {
        // Route and retained updates from other shards that happened before
        // this PUBLISH was read must be seen before routing it.
        self.drain_inbox(now);
        let me = self.id();
        self.forward_to.fill(false);
        let forward_to = &mut self.forward_to;
        let mut shared_to = std::mem::take(&mut self.shared_to);
        self.routes.for_each_match(&message.topic, |places| {
            for &shard in &places.shards {
                forward_to[shard] = true;
            }
            shared_to.extend(places.groups.iter().map(|group| group.share.clone()));
        });
        let mut forwarded = false;
        for shard in 0..self.forward_to.len() {
            if self.forward_to[shard] && shard != me {
                self.mesh.push(shard, ShardMsg::Publish(message.clone()));
                forwarded = true;
            }
        }
        let to_cluster = self
            .mesh
            .cluster_place()
            .is_some_and(|place| self.forward_to[place]);
        if message.retain {
            self.retain(message.clone());
            self.mesh.push_others(|| ShardMsg::Retain(message.clone()));
        }
        let local = self.deliver_local(&message, now);
        // A retained message with no subscriber is kept, not dropped.
        if !forwarded && local == 0 && shared_to.is_empty() && !message.retain {
            self.metrics.no_subscribers += 1;
        }
        // Only the publisher's shard hands a message to a group, so each
        // group sees it once however many shards hold members.
        let reply = confirmation
            .filter(|_| self.store.is_some() || self.mesh.cluster_place().is_some())
            .map(|confirmation| StoredReply::Confirm(me, confirmation));
        let mut relayed = 0;
        for share in shared_to.drain(..) {
            let owner = self.owner(&share);
            let msg = ShardMsg::SharedPublish {
                share,
                message: message.clone(),
                exclude: None,
                local_only: false,
                reply,
            };
            self.send(owner, msg, now);
            relayed += u32::from(reply.is_some());
        }
        self.shared_to = shared_to;
        Routed {
            to_cluster,
            relayed,
        }
    }

    /// Delivers to this shard's sessions, once per session however many of
    /// its subscriptions match (at the highest granted QoS, with every
    /// matching subscription identifier). Returns the number of sessions.
    fn deliver_local(&mut self, message: &Arc<Message>, now: Instant) -> usize {
        self.deliver_matching(message, None, now)
    }

    /// [`ShardState::deliver_local`], to session `only` alone if given.
    fn deliver_matching(
        &mut self,
        message: &Arc<Message>,
        only: Option<SessionKey>,
        now: Instant,
    ) -> usize {
        let mut matched = std::mem::take(&mut self.matched);
        let sessions = &self.sessions;
        self.subscriptions
            .for_each_match(&message.topic, |subscribers| {
                for (&key, subscription) in subscribers {
                    if only.is_some_and(|only| only != key) {
                        continue;
                    }
                    let options = subscription.options;
                    if options.no_local && sessions[key].session.client_id() == &message.publisher {
                        continue;
                    }
                    matched.push((
                        key,
                        Delivery {
                            granted_qos: options.qos,
                            retain_as_published: options.retain_as_published,
                            from_retained_store: false,
                            subscription_ids: subscription.id.into_iter().collect(),
                        },
                    ));
                }
            });
        if matched.len() > 1 {
            merge_overlapping(&mut matched);
        }
        let sessions = matched.len();
        for (key, delivery) in matched.drain(..) {
            self.deliver(key, message, delivery, None, now);
        }
        self.matched = matched;
        sessions
    }

    /// `shared` names the shared subscription that chose this session, if
    /// one did.
    fn deliver(
        &mut self,
        key: SessionKey,
        message: &Arc<Message>,
        delivery: Delivery,
        shared: Option<ByteString>,
        now: Instant,
    ) {
        if !self.moving.is_empty() && self.send_on_moved(key, message) {
            return;
        }
        if !self.may_deliver(key, message) {
            return;
        }
        if !self.orphan_guards.is_empty() && !self.ordinary_delivery(key, message, now) {
            return;
        }
        let session = &mut self.sessions[key].session;
        let outcome = match shared {
            Some(share) => session.handle_deliver_shared(message, delivery, share, now),
            None => session.handle_deliver(message, delivery, now),
        };
        match outcome {
            DeliverOutcome::Queued => {}
            DeliverOutcome::Skipped => return,
            DeliverOutcome::Dropped(DropReason::QueueFull) => self.drops.queue_full += 1,
            DeliverOutcome::Dropped(DropReason::Expired) => self.drops.expired += 1,
        }
        // A full queue under the disconnect policy asks to close.
        self.run_actions(key, now);
        self.pump(key, now);
        self.record_changes(key);
    }

    /// Applies a retained message (or its removal) to this shard's
    /// replica, and stores it if this shard's partition holds its topic.
    fn retain(&mut self, message: Arc<Message>) {
        if let Some(store) = &mut self.store
            && super::group_owner(&message.topic, self.mesh.shard_count()) == self.mesh.me()
        {
            store.push(Op::Retained(message.clone()));
        }
        self.retained.apply(message);
    }

    /// Asks the cluster to confirm `ticket` once everything this shard
    /// sent it so far has reached the peer nodes. False, and nothing
    /// asked, when there is no cluster or no connection to answer on.
    fn confirm_after_cluster(&mut self, key: SessionKey, ticket: Ticket) -> bool {
        let (Some(place), Some(conn)) = (
            self.mesh.cluster_place(),
            self.sessions.get(key).and_then(|slot| slot.conn.as_ref()),
        ) else {
            return false;
        };
        let confirmation = Confirmation {
            key,
            conn: conn.id,
            ticket,
        };
        self.mesh.push(place, ShardMsg::ConfirmAfter(confirmation));
        true
    }

    /// What `ticket` waited for is done here, in the same turn as the
    /// action that carried it: the caller pumps once its batch is done.
    fn confirm_here(&mut self, key: SessionKey, ticket: Ticket) {
        if let Some(slot) = self.sessions.get_mut(key) {
            slot.session.confirm(ticket);
        }
    }

    /// What `ticket` waited for is done, some time after the action that
    /// carried it (the cluster's peers have acknowledged): the answers it
    /// held go out. `conn` is the id of the connection that was current
    /// when the action was carried out; a ticket of a connection since
    /// gone, or of a session since ended (whose slot another may now use),
    /// is ignored, and the session ignores tickets it no longer holds.
    pub fn confirm(&mut self, key: SessionKey, conn: u64, ticket: Ticket, now: Instant) {
        if !self.release_wait(key, conn, ticket) {
            return;
        }
        let retained = self.pending_retained.remove(&(key, ticket));
        let Some(slot) = self.sessions.get_mut(key) else {
            return;
        };
        if slot.conn.as_ref().is_none_or(|current| current.id != conn) {
            return;
        }
        slot.session.confirm(ticket);
        if let Some(retained) = retained {
            self.send_retained(key, retained, now);
        }
        self.pump(key, now);
    }

    /// Adds the subscription to this shard's trie (and tells the other
    /// shards of a filter new here), or joins the shared group.
    fn subscribe(
        &mut self,
        key: SessionKey,
        filter: &ByteString,
        options: SubscriptionOptions,
        id: Option<u32>,
        now: Instant,
    ) {
        if is_shared(filter) {
            // The session only reports well-formed share names, and a
            // shared subscription gets no retained messages (spec 4.8.2).
            self.join_group(key, filter.clone(), LocalSubscription { options, id }, now);
            return;
        }
        let subscribers = self.subscriptions.entry(filter);
        let first_here = subscribers.is_empty();
        subscribers.insert(key, LocalSubscription { options, id });
        if first_here {
            let me = self.id();
            self.mesh.push_others(|| ShardMsg::RouteAdd {
                filter: filter.clone(),
                from: me,
            });
        }
    }

    /// Delivers the retained messages matching a subscription just made.
    fn send_retained(&mut self, key: SessionKey, subscription: PendingRetained, now: Instant) {
        let PendingRetained {
            filter,
            options,
            subscription_id: id,
        } = subscription;
        // Retained messages published on other shards before this
        // SUBSCRIBE was read are in the inbox.
        self.drain_inbox(now);
        let mut retained = Vec::new();
        self.retained
            .for_each_match(&filter, |message| retained.push(message.clone()));
        for message in retained {
            let delivery = Delivery {
                granted_qos: options.qos,
                retain_as_published: options.retain_as_published,
                from_retained_store: true,
                subscription_ids: id.into_iter().collect(),
            };
            self.deliver(key, &message, delivery, None, now);
        }
    }

    /// The session has already let go of `filter` (UNSUBSCRIBE, or
    /// [`Session::take_subscriptions`] as it leaves).
    fn unsubscribe(&mut self, key: SessionKey, filter: &ByteString, now: Instant) {
        if is_shared(filter) {
            self.leave_group(key, filter, now);
            return;
        }
        let Some(subscribers) = self.subscriptions.get_mut(filter) else {
            return;
        };
        if subscribers.remove(&key).is_some() && subscribers.is_empty() {
            self.subscriptions.remove(filter);
            let me = self.id();
            self.mesh.push_others(|| ShardMsg::RouteRemove {
                filter: filter.clone(),
                from: me,
            });
        }
    }

    /// Moves packets from the session into the connection's output, up to
    /// the high-water mark, and wakes the writer.
    pub fn pump(&mut self, key: SessionKey, now: Instant) {
        let Some(conn_id) = (self.sessions.get(key))
            .and_then(|slot| slot.conn.as_ref())
            .map(|conn| conn.id)
        else {
            return;
        };
        let commits = self.commits_output(key, conn_id);
        let Some(slot) = self.sessions.get_mut(key) else {
            return;
        };
        let Some(conn) = &slot.conn else {
            return;
        };
        if self.unreplicated && slot.session.is_stored() {
            return;
        }
        let limit = slot
            .session
            .client_max_packet_size()
            .map_or(usize::MAX, |max| max as usize);
        // The clock is read here, once per call, rather than using `now`:
        // `now` was read when the batch began, often the very instant the
        // PUBLISH was stamped with, which would make every same-turn
        // delivery look instantaneous.
        let mut encoded_at = None;
        while conn.buffered() + commit::held_bytes(&self.held, key) < OUTPUT_HIGH_WATER {
            let Some(packet) = slot.session.poll_transmit(now) else {
                break;
            };
            let fits = Self::send_or_hold(&mut self.held, key, conn, commits, &packet, limit);
            let Packet::Publish(publish) = &packet else {
                continue;
            };
            if fits {
                self.metrics.sent(publish.qos, publish.payload.len());
                // Observed when encoded into the output, not when the
                // kernel takes the bytes: the writer flushes the whole
                // output at its next wake-up, within the same turn of the
                // loop unless the socket is full, and per-message stamps
                // there would cost a queue beside the buffer.
                if let Some(received_at) = slot.session.take_sent_received_at() {
                    let encoded_at = *encoded_at.get_or_insert_with(Instant::now);
                    self.metrics
                        .publish_latency
                        .record(encoded_at.saturating_duration_since(received_at));
                }
            } else {
                // Spec 3.1.2.11.4: a message the client cannot take is
                // discarded as if delivered.
                slot.session.discard_publish(publish);
                self.drops.too_large += 1;
            }
        }
        self.drops.expired += u64::from(slot.session.take_dropped_expired());
        self.record_changes(key);
        if commits {
            self.seal_held(key);
        }
    }

    /// Answers to the client on `conn` that did not fit in its output yet.
    pub fn unanswered(&self, conn: &ConnHandle) -> usize {
        if self.is_current(conn.key, conn) {
            self.sessions[conn.key].session.unanswered()
        } else {
            0
        }
    }

    /// Called by a connection's writer after a write completed: there may
    /// be room for more of the session's queue.
    pub fn on_written(&mut self, conn: &ConnHandle, now: Instant) {
        if self.is_current(conn.key, conn) {
            self.pump(conn.key, now);
        }
    }

    /// Applies every batch waiting in the inbox, without blocking.
    pub fn drain_inbox(&mut self, now: Instant) {
        while let Some(batch) = self.mesh.try_recv() {
            self.apply_batch(batch, now);
        }
    }

    pub fn apply_batch(&mut self, batch: Batch, now: Instant) {
        self.metrics
            .hop_latency
            .record(now.saturating_duration_since(batch.sent_at));
        for msg in batch.messages {
            match msg {
                ShardMsg::ConfirmStored(confirmation) => {
                    self.confirm_stored(batch.from, confirmation)
                }
                ShardMsg::StoreBarrier { token } => self.store_barrier(batch.from, token),
                msg => self.apply(msg, now),
            }
        }
    }

    fn apply(&mut self, msg: ShardMsg, now: Instant) {
        match msg {
            ShardMsg::Publish(message) => {
                self.deliver_local(&message, now);
            }
            ShardMsg::Retain(message) => self.retain(message),
            ShardMsg::RouteAdd { filter, from } => {
                let shards = &mut self.routes.entry(&filter).shards;
                if !shards.contains(&from) {
                    shards.push(from);
                }
            }
            ShardMsg::RouteRemove { filter, from } => {
                if let Some(places) = self.routes.get_mut(&filter) {
                    places.shards.retain(|&shard| shard != from);
                    if places.is_empty() {
                        self.routes.remove(&filter);
                    }
                }
            }
            ShardMsg::SharedRouteAdd { share, from } => self.add_group_route(share, from),
            ShardMsg::SharedRouteRemove { share, from } => self.remove_group_route(&share, from),
            ShardMsg::SharedJoin {
                share,
                member,
                online,
            } => self.groups.entry(share).or_default().join(member, online),
            ShardMsg::SharedLeave { share, member } => {
                if let Some(group) = self.groups.get_mut(&share)
                    && group.leave(&member)
                    && group.is_empty()
                {
                    self.groups.remove(&share);
                }
            }
            ShardMsg::SharedPublish {
                share,
                message,
                exclude,
                local_only,
                reply,
            } => self.pick_member(share, message, exclude.as_ref(), local_only, reply, now),
            ShardMsg::SharedDeliver {
                share,
                client_id,
                message,
                online,
                reply,
            } => self.deliver_shared(share, client_id, message, online, reply, now),
            ShardMsg::Handoff(handoff) => {
                self.handoffs.push(*handoff);
                self.wake.notify();
            }
            ShardMsg::Shutdown => {
                self.draining = true;
                self.wake.notify();
            }
            ShardMsg::Scrape(reply) => {
                // The scraper gave up on a shard this late; nothing to do.
                let _ = reply.send(self.snapshot());
            }
            ShardMsg::Sys(messages) => {
                for message in messages {
                    self.publish(message, None, now);
                }
            }
            ShardMsg::Confirm(confirmation) => self.confirm(
                confirmation.key,
                confirmation.conn,
                confirmation.ticket,
                now,
            ),
            ShardMsg::StoreRefused(confirmation) => self.refuse(confirmation, now),
            ShardMsg::Stored { through, ok } => self.stored(through, ok, now),
            ShardMsg::Replicated { through } => self.replicated(through, now),
            ShardMsg::ReplicaReset => {
                self.replica_reset = true;
                self.replicas_back(now);
            }
            ShardMsg::Unreplicated => self.unreplicated = true,
            ShardMsg::Orphan {
                client_id,
                message,
                way,
            } => self.deliver_orphan(&client_id, &message, way, now),
            ShardMsg::Adopt { session, epoch } => {
                if let Err(error) = self.adopt(&session, epoch, now) {
                    warn!(shard = self.id(), %error, "a session copy taken over does not read back; dropped");
                }
            }
            ShardMsg::Claimed { token, outcome } => {
                // The session handed over (or recovered from a copy) is
                // adopted at once, in order with what the cluster sends
                // after it (its orphans); the CONNECT attaches to it when
                // its task runs. A CONNECT whose client gave up meanwhile
                // drops the receiver; the session stays, offline.
                let outcome = match outcome {
                    ClaimOutcome::Owner {
                        epoch,
                        session: Some(archive),
                        missed,
                    } => {
                        if let Err(error) = self.adopt(&archive, epoch, now) {
                            // From a peer: a session that does not decode
                            // is lost to this client, never a reason to
                            // refuse it.
                            warn!(shard = self.id(), %error, "handed-over session unreadable; the client starts afresh");
                        }
                        ClaimOutcome::Owner {
                            epoch,
                            session: None,
                            missed,
                        }
                    }
                    other => other,
                };
                self.answer_claim(token, outcome, now);
            }
            ShardMsg::Owners { here, elsewhere } => self.settle_restored(here, elsewhere, now),
            ShardMsg::Fence => self.fence(now),
            ShardMsg::HandOver {
                client_id,
                epoch,
                token,
            } => {
                let session = self.hand_over(&client_id, epoch, now);
                if let Some(place) = self.mesh.cluster_place() {
                    self.mesh
                        .push(place, ShardMsg::HandedOver { token, session });
                }
            }
            // Only the cluster's place is asked to confirm after the
            // cluster; `ConfirmStored` needs its sender, which
            // `apply_batch` knows.
            ShardMsg::ConfirmAfter(_)
            | ShardMsg::ConfirmStored(_)
            | ShardMsg::StoreBarrier { .. }
            | ShardMsg::StoreReached { .. }
            | ShardMsg::Claim { .. }
            | ShardMsg::CheckOwners { .. }
            | ShardMsg::Release { .. }
            | ShardMsg::HandedOver { .. }
            | ShardMsg::Replicate { .. }
            | ShardMsg::Stale { .. }
            | ShardMsg::Drained => {}
        }
    }

    /// Queues `msg` for shard `to`, or, when that is this shard, acts on it
    /// now: a group owned here needs no trip through the inbox, and acting
    /// at once keeps it in order with what this shard sends elsewhere.
    fn send(&mut self, to: ShardId, msg: ShardMsg, now: Instant) {
        if to == self.id() {
            self.apply(msg, now);
        } else {
            self.mesh.push(to, msg);
        }
    }

    /// Hands the turn's writes to the store and its messages to the mesh.
    pub fn flush(&mut self) {
        if !self.moving.is_empty() {
            self.flush_moved();
        }
        self.flush_store();
        self.mesh.flush();
    }

    /// Tells every v5 client the server is going away and closes every
    /// connection.
    pub fn disconnect_all(&mut self) {
        for (_, slot) in &mut self.sessions {
            if let Some(conn) = slot.conn.take() {
                conn.disconnect(ReasonCode::ServerShuttingDown);
            }
        }
    }

    pub fn connection_opened(&mut self) {
        self.connections += 1;
        self.metrics.connections_total += 1;
    }

    pub fn connection_closed(&mut self) {
        self.connections -= 1;
    }

    pub fn live_connections(&self) -> usize {
        self.connections
    }

    /// This shard's gauges now and a copy of its counters, for a scrape.
    /// Walks the sessions: a scrape is rare, a counter kept up to date on
    /// every connect and disconnect would be paid all the time.
    fn snapshot(&self) -> Snapshot {
        let online = self
            .sessions
            .iter()
            .filter(|(_, slot)| slot.conn.is_some())
            .count();
        let subscriptions = self
            .sessions
            .iter()
            .map(|(_, slot)| slot.session.subscription_count())
            .sum::<usize>();
        Snapshot {
            shard: self.id(),
            connections: self.connections as u64,
            sessions_online: online as u64,
            sessions_offline: (self.sessions.len() - online - self.moving.len()) as u64,
            subscriptions: subscriptions as u64,
            retained: self.retained.len() as u64,
            inbox_depth: self.mesh.inbox_depth() as u64,
            cross_shard_sent: self.mesh.sent_to_others(),
            dropped_queue_full: self.drops.queue_full,
            dropped_expired: self.drops.expired,
            dropped_too_large: self.drops.too_large,
            parked: self.parking.len() as u64,
            metrics: self.metrics.clone(),
        }
    }
}

impl Places {
    fn is_empty(&self) -> bool {
        self.shards.is_empty() && self.groups.is_empty()
    }
}

/// Folds the deliveries of one session into one: highest granted QoS,
/// retain-as-published if any subscription asks, every identifier.
fn merge_overlapping(matched: &mut Vec<(SessionKey, Delivery)>) {
    matched.sort_by_key(|(key, _)| *key);
    matched.dedup_by(|(key, later), (kept_key, kept)| {
        if key != kept_key {
            return false;
        }
        kept.granted_qos = kept.granted_qos.max(later.granted_qos);
        kept.retain_as_published |= later.retain_as_published;
        kept.subscription_ids.append(&mut later.subscription_ids);
        true
    });
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::topic::TopicLimits;
    use crate::protocol::{ConnectProperties, ProtocolVersion, Publish, QoS};
    use crate::session::QueueFullPolicy;
    use crate::shard::mesh::MeshHandle;

    /// What every session costs its shard beside its connection's task:
    /// the slot, and while connected the `ConnHandle` in its `Rc` (two
    /// counts, 16 bytes). `SessionSlot` 336 -> 328 with `Session` 320 ->
    /// 312 (`session::tests::an_idle_session_stays_small`); `ConnHandle`
    /// 104. The task and the whole per-connection total are held in
    /// `connection::tests::what_a_connection_holds_stays_small`. Upper
    /// bounds, and only where they were measured: std's type sizes differ
    /// between targets.
    #[test]
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    fn what_a_session_holds_on_its_shard_stays_small() {
        use std::mem::size_of;
        let slot = size_of::<SessionSlot>();
        let handle = size_of::<ConnHandle>();
        assert!(slot <= 328, "session slot grew to {slot} bytes");
        assert!(handle <= 104, "ConnHandle grew to {handle} bytes");
        let connected = slot + 16 + handle;
        assert!(
            connected <= 448,
            "a connected session holds {connected} bytes"
        );
    }

    pub(super) fn shard() -> Rc<RefCell<ShardState>> {
        clustered(false).0
    }

    /// A one-shard node, in a cluster if `cluster`: then also the cluster
    /// place's inbox, to see what the shard asks of the cluster.
    pub(super) fn clustered(
        cluster: bool,
    ) -> (
        Rc<RefCell<ShardState>>,
        Option<crossbeam_channel::Receiver<Batch>>,
    ) {
        let (handle, mut inboxes) = MeshHandle::build(1, cluster);
        let mesh = handle.attach(0, inboxes.remove(0));
        let cluster_inbox = inboxes.pop();
        let config = ShardConfig {
            session: SessionConfig {
                max_inflight: 10,
                max_queued_messages: 100,
                queue_full: QueueFullPolicy::Drop,
                max_keepalive: u16::MAX,
                max_packet_size: 1 << 20,
                topic_alias_maximum: 10,
                server_topic_aliases: true,
                topics: TopicLimits::PROTOCOL,
                max_subscriptions: usize::MAX,
                durable: false,
            },
            max_packet_size: 1 << 20,
            shared_strategy: Strategy::default(),
            connections: ConnectionLimit::new(10),
            connect_timeout: Duration::from_secs(10),
            park_after: None,
            max_client_id_length: 64,
            auth: Arc::default(),
            abuse: AbuseLimits::default(),
        };
        (ShardState::new(mesh, Rc::new(config)), cluster_inbox)
    }

    /// A v5 CONNECT for `client_id` that keeps its session (clean start
    /// 0), no keep-alive, no will.
    pub(super) fn connect_v5(client_id: &str) -> Connect {
        Connect {
            protocol: ProtocolVersion::V5,
            clean_start: false,
            keep_alive: 0,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        }
    }

    fn qos1_publish(packet_id: u16) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t".into(),
            packet_id,
            properties: Default::default(),
            payload: Bytes::from_static(b"x"),
        })
    }

    /// A 3.1.1 PUBACK is four bytes in the connection's output.
    const PUBACK_LEN: usize = 4;

    #[test]
    fn a_session_past_its_expiry_is_not_resumed_between_ticks() {
        let state = shard();
        let mut state = state.borrow_mut();
        let now = Instant::now();
        let mut connect = connect_v5("c");
        connect.properties.session_expiry_interval = Some(1);
        let conn = state.attach(&connect, false, -1, 0, now).conn;
        let subscribe = Packet::Subscribe(crate::protocol::Subscribe {
            packet_id: 1,
            filters: vec![crate::protocol::TopicSubscription {
                filter: "t".into(),
                options: SubscriptionOptions::default(),
            }],
            properties: Default::default(),
        });
        state.handle_packets(&conn, [subscribe], now);
        state.detach(&conn, now);
        // Within its expiry it resumes, subscription and all; the deadline
        // runs again from this second connection's end.
        let at = now + Duration::from_millis(500);
        let conn = state.attach(&connect, false, -1, 0, at).conn;
        assert_eq!(state.sessions[conn.key].session.subscription_count(), 1);
        state.detach(&conn, at);
        // Just past it, before any tick has ended it, a new one starts.
        let later = at + Duration::from_millis(1100);
        let conn = state.attach(&connect, false, -1, 0, later).conn;
        assert!(
            state.sessions[conn.key].session.subscription_count() == 0,
            "resumed an expired session"
        );
        assert_eq!(state.sessions.len(), 1);
    }

    #[test]
    fn a_late_confirmation_releases_the_answer_on_the_current_connection_only() {
        let state = shard();
        let mut state = state.borrow_mut();
        let now = Instant::now();
        let connect = Connect {
            protocol: ProtocolVersion::V3_1_1,
            clean_start: true,
            keep_alive: 0,
            client_id: "c".into(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        };
        // No socket: nothing here writes, the output only fills.
        let conn = state.attach(&connect, false, -1, 0, now).conn;
        let key = conn.key;

        // On one node the answer goes out in the same turn.
        let before = conn.buffered();
        state.handle_packets(&conn, [qos1_publish(1)], now);
        assert_eq!(conn.buffered(), before + PUBACK_LEN);

        // The session's side of `handle_packets`, with the ticket left
        // for later as the cluster will leave it.
        let before = conn.buffered();
        let session = &mut state.sessions[key].session;
        session.handle_packet(qos1_publish(2), now).unwrap();
        let Some(SessionAction::Publish {
            ticket: Some(ticket),
            ..
        }) = session.poll_action()
        else {
            panic!("expected a route with a ticket");
        };
        state.pump(key, now);
        assert_eq!(conn.buffered(), before, "held");
        state.confirm(key, conn.id + 1, ticket, now);
        assert_eq!(conn.buffered(), before, "another connection's ticket");
        state.confirm(key, conn.id, ticket, now);
        assert_eq!(conn.buffered(), before + PUBACK_LEN);
    }

    fn delivery(qos: QoS, ids: &[u32]) -> Delivery {
        Delivery {
            granted_qos: qos,
            retain_as_published: false,
            from_retained_store: false,
            subscription_ids: ids.to_vec(),
        }
    }

    #[test]
    fn overlapping_subscriptions_make_one_delivery_at_the_highest_qos() {
        let mut matched = vec![
            (3, delivery(QoS::AtMostOnce, &[1])),
            (1, delivery(QoS::AtLeastOnce, &[])),
            (3, delivery(QoS::ExactlyOnce, &[2])),
        ];
        merge_overlapping(&mut matched);
        assert_eq!(matched.len(), 2);
        assert_eq!(matched[0].0, 1);
        assert_eq!(matched[1].0, 3);
        assert_eq!(matched[1].1.granted_qos, QoS::ExactlyOnce);
        let mut ids = matched[1].1.subscription_ids.clone();
        ids.sort();
        assert_eq!(ids, vec![1, 2]);
    }
}
