//! The cluster's logic on one node, sans-IO: what this node tells its
//! peers, what it does with what they tell it, and when a client waiting on
//! the cluster gets its answer. No sockets, no clock: the runtime
//! ([`super::runtime`]) feeds it shard messages, peer frames, link events
//! and `now`, and carries out what it asks ([`NodeOutput`]).
//!
//! # Routes
//!
//! The node's filter set is the union of its shards' (a shard reports a
//! filter when it gains its first or loses its last subscriber; the node
//! counts shards, one level up). Each change bumps the node's *route
//! version*; a peer gets the whole set when its link comes up and then one
//! [`Frame::RouteDelta`] per turn with changes, each naming the version it
//! makes. A receiver that sees a version other than the next asks for the
//! whole set again, so a lost or reordered delta is repaired, not
//! silently missed. Acknowledgements carry the version applied.
//!
//! # Forwarding
//!
//! A message published on shard `s` that matches a peer's filters goes to
//! that peer once, on stream `s` (one ordered stream per source shard and
//! destination node keeps a publisher's order across the hop), numbered in
//! the stream's [`Outbox`] and kept there until acknowledged. The peer
//! takes each number once per sender incarnation ([`Inbound`]), delivers to
//! its shards and acknowledges cumulatively. With a data dir whose
//! durability makes acknowledgements wait (`stored_acks`), it acknowledges
//! a frame only once the shards it delivered to have committed what they
//! queued for stored sessions (`stored.rs`), so "the cluster has it"
//! survives the receiving node's crash too.
//!
//! # Waiting clients
//!
//! A shard asks the node to confirm a ticket ([`Confirmation`]) once
//! everything it sent so far has reached every *linked* peer: the
//! messages it forwarded (acknowledged on their streams) and its route
//! changes (acknowledged versions). That is what holds a QoS 1/2
//! publisher's PUBACK (`ack = "remote"`) and a SUBACK. A peer whose link is
//! down is not waited for: what is owed to it stays in its outbox, and the
//! waiters on it are released when the link drops. Route waits are
//! bounded by `route_ack_timeout`; forward waits are not, so a slow peer
//! slows a publisher through its Receive Maximum instead of losing data.

mod forwarding;
mod mirror;
mod orphans;
mod replication;
mod retained;
mod routes;
mod stored;
mod takeover;
mod waiters;

pub use takeover::{ClaimResult, HANDOVER_TIMEOUT, PreviousOwner};

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use rustc_hash::{FxHashMap, FxHashSet};
use slab::Slab;
use tracing::{info, warn};

use super::frame::ReplicaOp;
use super::outbox::{Inbound, Outbox, Seq};
use super::settings::AckMode;
use crate::message::Message;
use crate::metrics::histogram::Latency;
use crate::router::TopicTrie;
use crate::shard::ShardId;
use crate::shard::mesh::{Confirmation, ShardMsg};
use crate::store::OutboxOp;

/// A peer's index in the node's table of peers; stable while the peer is known.
pub type PeerKey = usize;

/// Bytes a stream may have sent and unacknowledged; past it the rest
/// waits in the outbox. Large enough for a full QUIC window of small
/// messages between acknowledgements on a LAN.
const STREAM_WINDOW: usize = 4 * 1024 * 1024;

/// How long a peer that left is remembered, its routes kept, so that what
/// is published for its sessions meanwhile reaches their new owners (see
/// [`Node::handle_peer_left`]): the promotions and the new owners' route
/// announcements take well under a second on a live cluster.
const LEAVE_HOLD: Duration = Duration::from_secs(10);

/// What the node is configured with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: ByteString,
    pub incarnation: u64,
    /// Local shards; the node itself is mesh place `shards`.
    pub shards: usize,
    pub ack: AckMode,
    pub route_ack_timeout: Duration,
    pub peer_buffer_bytes: usize,
    pub peer_hold: Duration,
    /// This node's shards have stores that acknowledgements wait for: a
    /// peer's messages are acknowledged once committed here.
    pub stored_acks: bool,
    /// The broker has a data dir: QoS 1/2 messages owed to peers are
    /// written there until acknowledged ([`NodeOutput::Store`]).
    pub durable_outboxes: bool,
    /// Nodes holding each stored session, this one included
    /// ([`replication`]); 1 keeps no copies.
    pub replication_factor: usize,
}

/// A frame for a peer, before encoding.
#[derive(Debug, Clone)]
pub enum Frame {
    Routes {
        version: u64,
        filters: Vec<ByteString>,
    },
    RouteDelta {
        version: u64,
        add: Vec<ByteString>,
        remove: Vec<ByteString>,
    },
    RoutesAck {
        version: u64,
    },
    RoutesResync,
    Publish {
        stream: u32,
        first_seq: Seq,
        messages: Vec<Arc<Message>>,
    },
    PublishAck {
        stream: u32,
        seq: Seq,
    },
    Retain {
        hlc: u64,
        origin: ByteString,
        message: Arc<Message>,
    },
    Leave,
    SharedPublish {
        stream: u32,
        seq: Seq,
        share: ByteString,
        message: Arc<Message>,
    },
    TakeOver {
        client_id: ByteString,
        epoch: u64,
        request: u64,
    },
    HandedOver {
        request: u64,
        session: Option<Bytes>,
    },
    Replicate {
        shard: u32,
        epoch: u64,
        reset: bool,
        complete: bool,
        /// Shared by the frames to each replica.
        ops: Arc<Vec<ReplicaOp>>,
    },
    Replicated {
        shard: u32,
        epoch: u64,
    },
    Recover {
        client_id: ByteString,
        request: u64,
    },
    Recovered {
        request: u64,
        session: Option<Bytes>,
    },
    Orphans {
        origin: ByteString,
        /// Empty: for the sessions the receiver took over from `origin`;
        /// else for these sessions of the receiver's, which it got from
        /// the sender's copies.
        client_ids: Vec<ByteString>,
        messages: Vec<Arc<Message>>,
        /// Sent on by `origin` itself from its stale copies of the
        /// sessions `client_ids`, after a partition (`orphans`).
        stale: bool,
    },
}

impl Frame {
    /// About the bytes the frame takes encoded, to size the buffer once:
    /// each message's strings and payload plus room for rkyv's layout.
    pub fn size_hint(&self) -> usize {
        let size = |m: &Message| 128 + m.topic.len() + m.payload.len() + m.publisher.len();
        match self {
            Frame::Publish { messages, .. } | Frame::Orphans { messages, .. } => {
                64 + messages.iter().map(|m| size(m)).sum::<usize>()
            }
            Frame::Retain { message, .. } | Frame::SharedPublish { message, .. } => {
                128 + size(message)
            }
            Frame::Routes { filters, .. } => {
                64 + filters.iter().map(|f| 16 + f.len()).sum::<usize>()
            }
            Frame::RouteDelta { add, remove, .. } => {
                64 + add
                    .iter()
                    .chain(remove)
                    .map(|f| 16 + f.len())
                    .sum::<usize>()
            }
            Frame::TakeOver { client_id, .. } => 160 + client_id.len(),
            Frame::HandedOver { session, .. } | Frame::Recovered { session, .. } => {
                160 + session.as_ref().map_or(0, Bytes::len)
            }
            Frame::Replicate { ops, .. } => {
                64 + ops.iter().map(replication::op_size).sum::<usize>()
            }
            Frame::Recover { client_id, .. } => 160 + client_id.len(),
            Frame::RoutesAck { .. }
            | Frame::RoutesResync
            | Frame::PublishAck { .. }
            | Frame::Replicated { .. }
            | Frame::Leave => 160,
        }
    }
}

/// Which ordered lane of the peer connection a frame travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Routes, acknowledgements, retained messages, leave.
    Control,
    /// Forwarded messages from one source shard.
    Stream(u32),
}

/// What the node asks of the runtime.
#[derive(Debug)]
pub enum NodeOutput {
    Send {
        peer: ByteString,
        lane: Lane,
        frame: Frame,
    },
    ToShard {
        shard: ShardId,
        msg: ShardMsg,
    },
    /// Close the link to this peer: it broke the protocol.
    Disconnect {
        peer: ByteString,
        reason: String,
    },
    /// A change to the outboxes on disk: committed before the answers to
    /// shards that follow it are delivered.
    Store(OutboxOp),
    /// Ask the ownership raft to make this node the owner of `client_id`
    /// for shard `shard`'s claim `token`; the answer goes to
    /// [`Node::handle_claim_result`].
    Claim {
        shard: ShardId,
        client_id: ByteString,
        token: u64,
    },
    /// Ask the ownership raft who owns each of `client_ids`, the sessions
    /// shard `shard` restored from disk, and tell it (`ShardMsg::Owners`).
    CheckOwners {
        shard: ShardId,
        client_ids: Vec<ByteString>,
    },
    /// Release `client_id`, held under `epoch`, in the ownership raft: its
    /// session ended here. A later claim elsewhere makes it a no-op.
    Release {
        client_id: ByteString,
        epoch: u64,
    },
    /// Make this node the owner of each of `client_ids` that node `from`
    /// (down) still owns in the ownership raft; each answer goes
    /// to [`Node::handle_promoted`].
    Promote {
        from: ByteString,
        client_ids: Vec<ByteString>,
    },
}

/// Counters the metrics layer reads.
#[derive(Debug, Default, Clone)]
pub struct NodeCounters {
    pub forwarded_messages: u64,
    pub received_messages: u64,
    pub duplicates_dropped: u64,
    pub dropped_qos0: u64,
    pub dropped_qos12: u64,
    pub route_ack_timeouts: u64,
    pub peers_expired: u64,
    /// Claims of a client id the ownership raft granted to this node.
    pub claims_granted: u64,
    /// Sessions this node handed over to a node that took them over.
    pub sessions_handed_over: u64,
    /// Claims granted without the previous owner's session: it could not
    /// be asked, or did not answer in time, and no copy was found.
    pub handovers_missed: u64,
    /// Sessions taken over from a copy, their owner unreachable.
    pub sessions_recovered: u64,
    /// Sessions whose copies this node took over when their owner went
    /// down.
    pub sessions_promoted: u64,
    /// Times the replicas were chosen and no peer was there to keep a
    /// copy: acknowledgements then waited for this node alone.
    pub replication_unmet: u64,
    /// From a claim's arrival at the node to its grant's answer to the
    /// shard: the raft's commit, and the previous owner's hand-over.
    pub claim_latency: Latency,
    /// From a Publish frame leaving to its acknowledgement: the hop there,
    /// the peer handing the messages to its shards, and the hop back.
    pub forward_ack_latency: Latency,
}

/// Per-peer figures for metrics.
#[derive(Debug, Clone)]
pub struct PeerStats {
    pub node_id: ByteString,
    pub linked: bool,
    pub outbox_messages: usize,
    pub outbox_bytes: usize,
    pub forwarded: u64,
    /// Topic and payload bytes of the messages queued for the peer, plus a
    /// fixed per-message overhead (what the outbox bound counts).
    pub forwarded_bytes: u64,
    pub dropped_qos0: u64,
    pub dropped_qos12: u64,
    /// QUIC's round-trip estimate, while linked; the runtime fills it in.
    pub rtt: Option<Duration>,
}

struct Peer {
    node_id: ByteString,
    /// The incarnation its last link announced; 0 before any.
    incarnation: u64,
    linked: bool,
    /// When its link went down, for `peer_hold`.
    unlinked_since: Option<Instant>,
    /// Gossip suspects it, or says it is down: not waited for.
    suspected: bool,
    /// Gossip says it is down.
    down: bool,
    /// When it left the cluster, if it did: forgotten [`LEAVE_HOLD`] later.
    left_at: Option<Instant>,
    /// Down, and its link here ended too: its sessions were taken over,
    /// and what is published for it goes to their new owners as well
    /// (`orphans`).
    taken_over: bool,
    /// Its filters, as applied, and the version they are at.
    filters: FxHashSet<ByteString>,
    version: u64,
    /// Our route version it has acknowledged (on the current link).
    acked_version: u64,
    route_waiters: VecDeque<(u64, WaiterKey)>,
    /// One per local shard.
    streams: Vec<Stream>,
    buffered_bytes: usize,
    /// What it sent us, per (its incarnation, its stream).
    inbound: FxHashMap<(u64, u32), Inbound>,
    forwarded: u64,
    forwarded_bytes: u64,
    dropped_qos0: u64,
    dropped_qos12: u64,
    /// The drop counts last logged, so drops are logged once per tick
    /// with what changed, not once per message.
    drops_logged: (u64, u64),
}

#[derive(Default)]
struct Stream {
    outbox: Outbox,
    /// Confirmations waiting for this number to be acknowledged.
    waiters: VecDeque<(Seq, WaiterKey)>,
    /// The last number of each frame in flight and when it left, for the
    /// forward round-trip histogram.
    sent_at: VecDeque<(Seq, Instant)>,
}

type WaiterKey = usize;

struct Waiter {
    /// The shard holding the answer: the one whose stream it waits on, or
    /// for a message a group owner relayed, the publisher's shard.
    reply_to: ShardId,
    confirmation: Confirmation,
    /// Peers (streams or route versions) still to acknowledge.
    pending: u32,
}

/// A retained message as the node knows it, with its last-writer-wins
/// stamp.
struct RetainedEntry {
    hlc: u64,
    origin: ByteString,
    message: Arc<Message>,
}

pub struct Node {
    config: NodeConfig,
    /// Which local shards hold each filter.
    local_filters: FxHashMap<ByteString, Vec<ShardId>>,
    /// The same, searchable by topic, to deliver what peers send.
    local_trie: TopicTrie<Vec<ShardId>>,
    /// Which local shards hold members of each shared subscription
    /// (`$share/{group}/{filter}`); announced to peers with the filters.
    local_groups: FxHashMap<ByteString, Vec<ShardId>>,
    /// Which peers hold members of each shared subscription.
    remote_groups: FxHashMap<ByteString, Vec<PeerKey>>,
    /// The last number of each stream to a peer this node forgot (past
    /// `peer_hold`, or after it left). Numbers must never start again
    /// within this incarnation: the peer may not have forgotten us (it was
    /// frozen, or its own hold is longer) and would take the new messages
    /// for repeats of ones it already has.
    retired_streams: FxHashMap<ByteString, Vec<Seq>>,
    route_version: u64,
    /// Changes since the last delta went out.
    pending_add: FxHashSet<ByteString>,
    pending_remove: FxHashSet<ByteString>,
    peers: Slab<Peer>,
    peer_by_id: FxHashMap<ByteString, PeerKey>,
    /// Which peers hold each filter.
    remote_trie: TopicTrie<Vec<PeerKey>>,
    retained: FxHashMap<ByteString, RetainedEntry>,
    /// Hybrid logical clock: wall-clock milliseconds, shifted left 16 bits,
    /// plus a counter, never going backwards.
    hlc: u64,
    waiters: Slab<Waiter>,
    /// Route waiters' deadlines in order (the timeout is one constant).
    waiter_deadlines: VecDeque<(Instant, WaiterKey)>,
    /// Reused per message: the peers (to forward) or local shards (to
    /// deliver) it matched.
    matched: Vec<usize>,
    outputs: VecDeque<NodeOutput>,
    /// Acknowledgements to peers waiting for local stores, per stream.
    unstored_acks: FxHashMap<stored::AckStream, stored::UnstoredQueue>,
    /// Which stream each outstanding store barrier belongs to.
    store_tokens: FxHashMap<u64, stored::AckStream>,
    last_store_token: u64,
    takeovers: takeover::Takeovers,
    replication: replication::Replication,
    /// Copies of other nodes' sessions kept here.
    mirrors: mirror::Mirrors,
    orphans: orphans::Orphans,
    pub counters: NodeCounters,
}

/// `$SYS` topics describe the node that publishes them: each node keeps
/// its own, and they are neither forwarded nor replicated (two nodes'
/// `$SYS/broker/uptime` would otherwise overwrite each other).
fn is_node_local(message: &Message) -> bool {
    message.topic.starts_with("$SYS/")
}

impl Node {
    pub fn new(config: NodeConfig) -> Node {
        Node {
            config,
            local_filters: FxHashMap::default(),
            local_trie: TopicTrie::new(),
            local_groups: FxHashMap::default(),
            remote_groups: FxHashMap::default(),
            retired_streams: FxHashMap::default(),
            route_version: 0,
            pending_add: FxHashSet::default(),
            pending_remove: FxHashSet::default(),
            peers: Slab::new(),
            peer_by_id: FxHashMap::default(),
            remote_trie: TopicTrie::new(),
            retained: FxHashMap::default(),
            hlc: 0,
            waiters: Slab::new(),
            waiter_deadlines: VecDeque::new(),
            matched: Vec::new(),
            outputs: VecDeque::new(),
            unstored_acks: FxHashMap::default(),
            store_tokens: FxHashMap::default(),
            last_store_token: 0,
            takeovers: takeover::Takeovers::default(),
            replication: replication::Replication::default(),
            mirrors: mirror::Mirrors::default(),
            orphans: orphans::Orphans::default(),
            counters: NodeCounters::default(),
        }
    }

    pub fn node_id(&self) -> &ByteString {
        &self.config.node_id
    }

    /// The mesh place the node occupies, after the shards.
    pub fn place(&self) -> ShardId {
        self.config.shards
    }

    // ---- from the shards ----

    /// A message a local shard sent to the cluster.
    pub fn handle_shard_msg(&mut self, from: ShardId, msg: ShardMsg, now: Instant) {
        match msg {
            ShardMsg::RouteAdd { filter, from } => self.local_route_add(filter, from),
            ShardMsg::RouteRemove { filter, from } => self.local_route_remove(&filter, from),
            ShardMsg::Publish(message) => self.forward(from, message),
            ShardMsg::Retain(message) => self.local_retain(message),
            ShardMsg::ConfirmAfter(confirmation) => {
                self.confirm_after(from, from, confirmation, now)
            }
            ShardMsg::StoreReached { token } => self.handle_store_reached(token),
            ShardMsg::SharedRouteAdd { share, from } => self.local_group_add(share, from),
            ShardMsg::SharedRouteRemove { share, from } => self.local_group_remove(&share, from),
            ShardMsg::SharedDeliver {
                share,
                client_id,
                message,
                reply,
                ..
            } => self.forward_shared(from, share, &client_id, message, reply, now),
            ShardMsg::Claim { client_id, token } => self.claim(from, client_id, token, now),
            ShardMsg::CheckOwners { client_ids } => {
                self.outputs.push_back(NodeOutput::CheckOwners {
                    shard: from,
                    client_ids,
                })
            }
            ShardMsg::Release { client_id, epoch } => self
                .outputs
                .push_back(NodeOutput::Release { client_id, epoch }),
            ShardMsg::HandedOver { token, session } => self.handed_over(token, session),
            ShardMsg::Replicate { epoch, reset, ops } => {
                self.replicate(from, epoch, reset, ops, now)
            }
            ShardMsg::Stale {
                client_id,
                messages,
            } => self.send_stale(from, client_id, messages),
            other => warn!(shard = from, msg = ?other, "unexpected message for the cluster"),
        }
    }

    /// A link to `node_id` (incarnation `incarnation`) is up and has
    /// exchanged hellos.
    pub fn handle_link_up(&mut self, node_id: ByteString, incarnation: u64, now: Instant) {
        let key = self.peer_key_or_insert(&node_id);
        let restarted = {
            let peer = &self.peers[key];
            peer.incarnation != 0 && peer.incarnation != incarnation
        };
        if restarted {
            info!(peer = %node_id, "peer restarted: forgetting its routes");
            self.clear_peer_routes(key);
            self.mirrors.forget_origin(&node_id);
            self.forget_orphans_of(&node_id);
            self.forget_stored_acks(key);
            let peer = &mut self.peers[key];
            peer.inbound.retain(|&(inc, _), _| inc == incarnation);
        }
        let _ = now;
        let version = self.route_version;
        let filters = self.sent_filters(self.local_names());
        let peer = &mut self.peers[key];
        peer.incarnation = incarnation;
        peer.linked = true;
        peer.suspected = false;
        peer.down = false;
        peer.taken_over = false;
        peer.left_at = None;
        peer.unlinked_since = None;
        peer.acked_version = 0;
        self.outputs.push_back(NodeOutput::Send {
            peer: node_id.clone(),
            lane: Lane::Control,
            frame: Frame::Routes { version, filters },
        });
        // Anti-entropy for the retained store: the peer keeps what is
        // newer on its side.
        for entry in self.retained.values() {
            self.outputs.push_back(NodeOutput::Send {
                peer: node_id.clone(),
                lane: Lane::Control,
                frame: Frame::Retain {
                    hlc: entry.hlc,
                    origin: entry.origin.clone(),
                    message: entry.message.clone(),
                },
            });
        }
        self.retarget_replicas();
    }

    fn peer_key_or_insert(&mut self, node_id: &ByteString) -> PeerKey {
        if let Some(&key) = self.peer_by_id.get(node_id) {
            return key;
        }
        let retired = self.retired_streams.remove(node_id).unwrap_or_default();
        let streams = (0..self.config.shards)
            .map(|shard| Stream {
                outbox: Outbox::resuming_after(retired.get(shard).copied().unwrap_or(0)),
                ..Stream::default()
            })
            .collect();
        let key = self.peers.insert(Peer {
            node_id: node_id.clone(),
            incarnation: 0,
            linked: false,
            unlinked_since: None,
            suspected: false,
            down: false,
            taken_over: false,
            left_at: None,
            filters: FxHashSet::default(),
            version: 0,
            acked_version: 0,
            route_waiters: VecDeque::new(),
            streams,
            buffered_bytes: 0,
            inbound: FxHashMap::default(),
            forwarded: 0,
            forwarded_bytes: 0,
            dropped_qos0: 0,
            dropped_qos12: 0,
            drops_logged: (0, 0),
        });
        self.peer_by_id.insert(node_id.clone(), key);
        key
    }

    /// The link to `node_id` is gone. Its routes and what is owed to it
    /// stay for `peer_hold`; nobody waits for it meanwhile.
    pub fn handle_link_down(&mut self, node_id: &str, now: Instant) {
        let Some(&key) = self.peer_by_id.get(node_id) else {
            return;
        };
        let peer = &mut self.peers[key];
        if !peer.linked {
            return;
        }
        peer.linked = false;
        peer.unlinked_since = Some(now);
        for stream in &mut peer.streams {
            stream.outbox.handle_link_lost();
            stream.sent_at.clear();
        }
        self.release_waiters(key);
        self.give_up_handovers_from(key, now);
        self.retarget_replicas();
        self.take_over_if_gone(key);
    }

    /// Gossip suspects `node_id` (a probe went unanswered), or says it is
    /// down: nobody waits for it any more, though its link may linger
    /// until QUIC's idle timeout. What is owed to it stays in its outbox
    /// and goes on being sent while the link lasts. This takes a silent
    /// peer's toll on publishers from the idle timeout down to the first
    /// missed probe.
    pub fn handle_peer_suspect(&mut self, node_id: &str, now: Instant) {
        if let Some(&key) = self.peer_by_id.get(node_id) {
            self.peers[key].suspected = true;
            self.release_waiters(key);
            // Likely dead: a session awaited from it comes from a copy.
            self.give_up_handovers_from(key, now);
            self.retarget_replicas();
        }
    }

    /// Gossip hears from `node_id` again (refuted, or back up).
    pub fn handle_peer_alive(&mut self, node_id: &str) {
        if let Some(&key) = self.peer_by_id.get(node_id)
            && std::mem::take(&mut self.peers[key].suspected)
        {
            self.peers[key].down = false;
            self.peers[key].taken_over = false;
            self.retarget_replicas();
        }
    }

    /// A frame from a linked peer.
    pub fn handle_frame(&mut self, node_id: &str, frame: Frame, now: Instant) {
        let Some(&key) = self.peer_by_id.get(node_id) else {
            return;
        };
        match frame {
            Frame::Routes { version, filters } => {
                self.clear_peer_routes(key);
                for filter in filters {
                    self.add_peer_route(key, filter);
                }
                self.peers[key].version = version;
                self.ack_routes(key, version);
            }
            Frame::RouteDelta {
                version,
                add,
                remove,
            } => {
                let known = self.peers[key].version;
                if version <= known {
                    // A repeat: it has been applied already.
                    self.ack_routes(key, known);
                } else if version == known + 1 {
                    for filter in add {
                        self.add_peer_route(key, filter);
                    }
                    for filter in remove {
                        self.remove_peer_route(key, &filter);
                    }
                    self.peers[key].version = version;
                    self.ack_routes(key, version);
                } else {
                    warn!(
                        peer = node_id,
                        known, version, "route delta out of order: resync"
                    );
                    self.send(key, Lane::Control, Frame::RoutesResync);
                }
            }
            Frame::RoutesAck { version } => {
                let peer = &mut self.peers[key];
                peer.acked_version = peer.acked_version.max(version);
                let mut released = Vec::new();
                while let Some(&(wanted, waiter)) = peer.route_waiters.front() {
                    if wanted > peer.acked_version {
                        break;
                    }
                    peer.route_waiters.pop_front();
                    released.push(waiter);
                }
                for waiter in released {
                    self.settle(waiter);
                }
            }
            Frame::RoutesResync => {
                let filters = self.local_names();
                // Pending changes go out in the next delta, numbered after
                // this: the full set must not include them.
                let filters = self.sent_filters(filters);
                let version = self.route_version;
                self.send(key, Lane::Control, Frame::Routes { version, filters });
            }
            Frame::Publish {
                stream,
                first_seq,
                messages,
            } => self.receive_publish(key, stream, first_seq, messages),
            Frame::PublishAck { stream, seq } => {
                let peer = &mut self.peers[key];
                let Some(out) = peer.streams.get_mut(stream as usize) else {
                    let reason = format!("acknowledgement for unknown stream {stream}");
                    self.disconnect(key, reason);
                    return;
                };
                let freed = out.outbox.handle_ack(seq);
                peer.buffered_bytes -= freed;
                if self.config.durable_outboxes && freed > 0 {
                    self.outputs.push_back(NodeOutput::Store(OutboxOp::Ack {
                        peer: peer.node_id.clone(),
                        stream,
                        through: seq,
                    }));
                }
                while let Some(&(last, sent)) = out.sent_at.front() {
                    if last > seq {
                        break;
                    }
                    out.sent_at.pop_front();
                    self.counters
                        .forward_ack_latency
                        .record(now.saturating_duration_since(sent));
                }
                let mut released = Vec::new();
                while let Some(&(wanted, waiter)) = out.waiters.front() {
                    if wanted > seq {
                        break;
                    }
                    out.waiters.pop_front();
                    released.push(waiter);
                }
                for waiter in released {
                    self.settle(waiter);
                }
            }
            Frame::Retain {
                hlc,
                origin,
                message,
            } => self.receive_retain(hlc, origin, message),
            Frame::Leave => {
                info!(peer = node_id, "peer left the cluster");
                self.handle_peer_left(node_id, now);
            }
            Frame::SharedPublish {
                stream,
                seq,
                share,
                message,
            } => self.receive_shared(key, stream, seq, share, message),
            Frame::TakeOver {
                client_id,
                epoch,
                request,
            } => self.receive_take_over(key, client_id, epoch, request),
            Frame::HandedOver { request, session } | Frame::Recovered { request, session } => {
                self.receive_handed_over(key, request, session, now)
            }
            Frame::Replicate {
                shard,
                epoch,
                reset,
                complete,
                ops,
            } => self.receive_replicate(key, shard, epoch, reset, complete, ops),
            Frame::Replicated { shard, epoch } => self.receive_replicated(key, shard, epoch),
            Frame::Orphans {
                origin,
                client_ids,
                messages,
                stale,
            } => self.receive_orphans(origin, client_ids, messages, stale),
            Frame::Recover { client_id, request } => {
                let session = self.mirrors.take(&client_id).map(|(origin, session)| {
                    // Its orphans go on to the node that has it now.
                    self.taken_over_from(&origin, client_id.clone(), Some(key));
                    Bytes::from(session)
                });
                self.send(key, Lane::Control, Frame::Recovered { request, session });
            }
        }
    }

    /// Forgets a peer: its routes, what was owed to it, and who waited on it.
    fn remove_peer(&mut self, key: PeerKey, now: Instant) {
        self.give_up_handovers_from(key, now);
        self.forget_stored_acks(key);
        self.clear_peer_routes(key);
        let mut peer = self.peers.remove(key);
        if self.config.durable_outboxes {
            self.outputs.push_back(NodeOutput::Store(OutboxOp::Forget {
                peer: peer.node_id.clone(),
            }));
        }
        self.peer_by_id.remove(&peer.node_id);
        let last_seqs = peer.streams.iter().map(|s| s.outbox.last_seq()).collect();
        self.retired_streams.insert(peer.node_id.clone(), last_seqs);
        let mut released: Vec<WaiterKey> = Vec::new();
        for stream in &mut peer.streams {
            released.extend(stream.waiters.drain(..).map(|(_, waiter)| waiter));
        }
        released.extend(peer.route_waiters.drain(..).map(|(_, waiter)| waiter));
        for waiter in released {
            self.settle(waiter);
        }
        self.retarget_replicas();
    }

    /// Queues a message for each local shard.
    fn tell_every_shard(&mut self, make: impl Fn() -> ShardMsg) {
        for shard in 0..self.config.shards {
            self.outputs
                .push_back(NodeOutput::ToShard { shard, msg: make() });
        }
    }

    /// Queues a control frame for each peer whose link is up (the others
    /// get the current state when their link comes back).
    fn tell_every_linked_peer(&mut self, make: impl Fn() -> Frame) {
        for (_, peer) in self.peers.iter().filter(|(_, peer)| peer.linked) {
            self.outputs.push_back(NodeOutput::Send {
                peer: peer.node_id.clone(),
                lane: Lane::Control,
                frame: make(),
            });
        }
    }

    fn send(&mut self, key: PeerKey, lane: Lane, frame: Frame) {
        self.outputs.push_back(NodeOutput::Send {
            peer: self.peers[key].node_id.clone(),
            lane,
            frame,
        });
    }

    fn disconnect(&mut self, key: PeerKey, reason: String) {
        self.outputs.push_back(NodeOutput::Disconnect {
            peer: self.peers[key].node_id.clone(),
            reason,
        });
    }

    /// A peer that left gracefully (gossip said so). It left once its
    /// replicas held its sessions whole: they take them over now, and
    /// what it was owed and never acknowledged follows them. Without
    /// copies it is forgotten at once; with them, its routes stay for
    /// [`LEAVE_HOLD`], as a dead peer's do for `peer_hold`, so that what
    /// is published for its sessions before their new owners' routes
    /// reach this node goes on to those owners as orphans.
    pub fn handle_peer_left(&mut self, node_id: &str, now: Instant) {
        let Some(&key) = self.peer_by_id.get(node_id) else {
            self.take_over_from(node_id);
            return;
        };
        if !self.replicates() {
            self.take_over_from(node_id);
            self.remove_peer(key, now);
            return;
        }
        self.handle_peer_suspect(node_id, now);
        let peer = &mut self.peers[key];
        peer.down = true;
        peer.taken_over = true;
        peer.left_at = Some(now);
        self.take_over_from(node_id);
    }

    /// Gossip says `node_id` is down (suspected past the suspect timeout):
    /// as suspected, and the sessions this node keeps copies of are taken
    /// over here ([`replication`], "Promotion").
    ///
    /// Only once this node's own link to it has ended too: gossip may
    /// carry another node's stale word, as when a node cut off from the
    /// rest declared them all down and the partition heals, and a node
    /// that still hears from the peer must not take its sessions.
    pub fn handle_peer_down(&mut self, node_id: &str, now: Instant) {
        self.handle_peer_suspect(node_id, now);
        let Some(&key) = self.peer_by_id.get(node_id) else {
            self.take_over_from(node_id);
            return;
        };
        self.peers[key].down = true;
        self.take_over_if_gone(key);
    }

    /// Takes peer `key`'s sessions over once it is both down by gossip
    /// and unlinked here, the first time.
    fn take_over_if_gone(&mut self, key: PeerKey) {
        let peer = &mut self.peers[key];
        if peer.down && !peer.linked && !peer.taken_over {
            peer.taken_over = true;
            let node_id = peer.node_id.clone();
            self.take_over_from(&node_id);
        }
    }

    /// `node_id` is gone: its sessions copied here are promoted, and what
    /// it was owed goes to their new owners.
    fn take_over_from(&mut self, node_id: &str) {
        self.promote_copies_of(node_id);
        self.orphan_outbox_of(node_id);
    }

    /// Time passes: route waits time out, long-unreachable peers are
    /// forgotten.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_handovers(now);
        while let Some(&(deadline, waiter)) = self.waiter_deadlines.front() {
            if deadline > now {
                break;
            }
            self.waiter_deadlines.pop_front();
            if let Some(entry) = self.waiters.get(waiter)
                && entry.pending > 0
            {
                // The waiter may have been released and its key reused by
                // a waiter with no deadline of its own; releasing that one
                // early only shortens one wait, and is counted.
                self.counters.route_ack_timeouts += 1;
                warn!(
                    timeout_ms = self.config.route_ack_timeout.as_millis() as u64,
                    "peers did not acknowledge a route in time"
                );
                let waiter = self.waiters.remove(waiter);
                self.release(waiter);
            }
        }
        for (_, peer) in &mut self.peers {
            let (qos0, qos12) = (peer.dropped_qos0, peer.dropped_qos12);
            if (qos0, qos12) != peer.drops_logged {
                warn!(
                    peer = %peer.node_id,
                    qos0 = qos0 - peer.drops_logged.0,
                    qos12 = qos12 - peer.drops_logged.1,
                    limit_bytes = self.config.peer_buffer_bytes,
                    "outbox full: messages for the peer dropped"
                );
                peer.drops_logged = (qos0, qos12);
            }
        }
        let left: Vec<PeerKey> = (self.peers.iter())
            .filter(|(_, peer)| {
                !peer.linked
                    && (peer.left_at)
                        .is_some_and(|at| now.saturating_duration_since(at) >= LEAVE_HOLD)
            })
            .map(|(key, _)| key)
            .collect();
        for key in left {
            self.remove_peer(key, now);
        }
        let hold = self.config.peer_hold;
        let expired: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, peer)| {
                peer.unlinked_since
                    .is_some_and(|since| now.saturating_duration_since(since) >= hold)
            })
            .map(|(key, _)| key)
            .collect();
        for key in expired {
            let peer = &self.peers[key];
            warn!(
                peer = %peer.node_id,
                hold_secs = hold.as_secs(),
                outbox_messages = peer.streams.iter().map(|s| s.outbox.len()).sum::<usize>(),
                "peer unreachable past the hold: dropping its routes and outbox"
            );
            self.counters.peers_expired += 1;
            self.remove_peer(key, now);
        }
    }

    /// Ends a turn: route changes go out as one delta, outboxes send what
    /// their windows allow.
    pub fn flush(&mut self, now: Instant) {
        self.flush_orphans();
        if !self.pending_add.is_empty() || !self.pending_remove.is_empty() {
            self.route_version += 1;
            let add: Vec<ByteString> = self.pending_add.drain().collect();
            let remove: Vec<ByteString> = self.pending_remove.drain().collect();
            let version = self.route_version;
            self.tell_every_linked_peer(|| Frame::RouteDelta {
                version,
                add: add.clone(),
                remove: remove.clone(),
            });
        }
        for (_, peer) in self.peers.iter_mut().filter(|(_, peer)| peer.linked) {
            for (index, stream) in peer.streams.iter_mut().enumerate() {
                while let Some(batch) = stream.outbox.poll_send(STREAM_WINDOW) {
                    let last = batch.first_seq + batch.messages.len() as u64 - 1;
                    stream.sent_at.push_back((last, now));
                    let stream = index as u32;
                    let frame = match (batch.share, batch.messages.first()) {
                        (Some(share), Some(message)) => Frame::SharedPublish {
                            stream,
                            seq: batch.first_seq,
                            share,
                            message: message.clone(),
                        },
                        _ => Frame::Publish {
                            stream,
                            first_seq: batch.first_seq,
                            messages: batch.messages,
                        },
                    };
                    self.outputs.push_back(NodeOutput::Send {
                        peer: peer.node_id.clone(),
                        lane: Lane::Stream(stream),
                        frame,
                    });
                }
            }
        }
    }

    /// Leaving the cluster: every linked peer is told.
    pub fn handle_leave(&mut self) {
        self.tell_every_linked_peer(|| Frame::Leave);
    }

    pub fn poll_output(&mut self) -> Option<NodeOutput> {
        self.outputs.pop_front()
    }

    /// Whether `node_id` is a peer this node has heard from and not yet
    /// forgotten.
    pub fn knows(&self, node_id: &str) -> bool {
        self.peer_by_id.contains_key(node_id)
    }

    pub fn peer_stats(&self) -> Vec<PeerStats> {
        self.peers
            .iter()
            .map(|(_, peer)| PeerStats {
                node_id: peer.node_id.clone(),
                linked: peer.linked,
                outbox_messages: peer.streams.iter().map(|s| s.outbox.len()).sum(),
                outbox_bytes: peer.buffered_bytes,
                forwarded: peer.forwarded,
                forwarded_bytes: peer.forwarded_bytes,
                dropped_qos0: peer.dropped_qos0,
                dropped_qos12: peer.dropped_qos12,
                rtt: None,
            })
            .collect()
    }
}
