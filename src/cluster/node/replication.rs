//! Replicated sessions, the owner's side: each local shard's stream of
//! store ops ([`ShardMsg::Replicate`]) goes to this node's replicas, and
//! the shard hears ([`ShardMsg::Replicated`]) once every replica holds an
//! epoch, which is what its acknowledgements wait for.
//!
//! # Who keeps the copies
//!
//! With `replication_factor` *n*, the *n - 1* nodes after this one, in
//! the order of node ids, among the peers that are linked and not
//! suspected: every node computes the same ring, so the copies spread
//! evenly, and a node that dies or is cut off is replaced by the next
//! at once, without waiting for `peer_hold`. When the replicas change
//! (or one comes back, and may have missed frames), every shard sends its
//! stored sessions whole (a reset) to the new set, and a node that is
//! no longer a replica is told to drop its copy.
//!
//! With no peer to copy to (counted in `replication_unmet`), the
//! acknowledgements wait until one is back and holds the shard's reset: a
//! PUBACK for a persistent session's message means a second node has it,
//! whatever happened to the cluster. This node is then cut off from every
//! peer, so in a minority (a cluster of two keeps no majority either),
//! where it lets its stored sessions go anyway (`ShardMsg::Fence`); its
//! publishers wait, or go to the majority's side with their unacknowledged
//! messages, instead of having them acknowledged on this node's disk alone
//! and lost with it. A node that has had no peer since it started (a
//! cluster of one, or one still looking for its seeds) acknowledges on
//! its own word: it is the whole cluster it knows.
//!
//! # Promotion
//!
//! When gossip says a node is down, each node that keeps copies of its
//! sessions takes them over: the ownership raft gives it
//! each client id that the dead node still holds (never one whose client
//! reconnected elsewhere meanwhile), and the copy becomes a session here,
//! offline, with its subscriptions routed. Messages published from then on
//! reach it here, its will goes out from here when due, and it expires
//! here; a client that reconnects anywhere takes it over from here.
//!
//! # Frames
//!
//! A shard's ops travel on its own lane ([`Lane::Stream`]), in order,
//! cut into frames of at most [`REPLICATE_FRAME_BYTES`]; only the last
//! frame of an epoch is acknowledged. The replica's side is
//! [`super::mirror`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytestring::ByteString;
use rustc_hash::FxHashMap;

use super::{Frame, Lane, Node, NodeOutput, PeerKey};
use crate::cluster::frame::ReplicaOp;
use crate::shard::ShardId;
use crate::shard::mesh::ShardMsg;
use crate::store::Op;
use crate::store::writer::stored_record;

/// The most op bytes (estimated) one `Replicate` frame carries: well
/// under the frame limit, and small enough that a reset does not hold
/// up the shard's forwarded messages on the same lane for long.
const REPLICATE_FRAME_BYTES: usize = 1024 * 1024;

#[derive(Default)]
pub(super) struct Replication {
    /// The peers that keep copies of this node's sessions.
    targets: Vec<PeerKey>,
    shards: Vec<ShardReplicas>,
}

#[derive(Default)]
struct ShardReplicas {
    /// The last epoch the shard handed over.
    sent: u64,
    /// The epoch each target acknowledged, for the targets that got the
    /// shard's reset since they became targets.
    acked: FxHashMap<PeerKey, u64>,
    /// The epoch last reported to the shard.
    reported: u64,
    /// When each epoch in flight left, for the replication lag.
    sent_at: std::collections::VecDeque<(u64, Instant)>,
}

impl Node {
    /// Shard `shard` hands over what its store commits as `epoch`.
    pub(super) fn replicate(
        &mut self,
        shard: ShardId,
        epoch: u64,
        reset: bool,
        ops: Vec<Op>,
        now: Instant,
    ) {
        let targets = self.replication.targets.clone();
        let replicas = self.shard_replicas(shard);
        replicas.sent = epoch;
        if targets.is_empty() {
            // On its own word only while it knows no peer (module docs);
            // otherwise a replica's reset settles it when one is back.
            self.report_replicated(shard);
            return;
        }
        if reset {
            replicas.acked = targets.iter().map(|&target| (target, 0)).collect();
        }
        let started: Vec<PeerKey> = (targets.iter())
            .filter(|target| replicas.acked.contains_key(target))
            .copied()
            .collect();
        if started.is_empty() {
            // A reset is on its way from the shard; these changes are in it.
            return;
        }
        replicas.sent_at.push_back((epoch, now));
        let wall = SystemTime::now();
        let ops: Vec<ReplicaOp> = (ops.iter())
            .filter_map(|op| replica_op(op, now, wall))
            .collect();
        let frames = frames_of(shard, epoch, reset, ops);
        for target in started {
            for frame in &frames {
                self.send(target, Lane::Stream(shard as u32), frame.clone());
            }
        }
    }

    /// Peer `key`'s copy of shard `shard` holds everything up to `epoch`.
    pub(super) fn receive_replicated(&mut self, key: PeerKey, shard: u32, epoch: u64) {
        let shard = shard as ShardId;
        let Some(replicas) = self.replication.shards.get_mut(shard) else {
            return;
        };
        if let Some(acked) = replicas.acked.get_mut(&key) {
            *acked = (*acked).max(epoch);
            self.report_replicated(shard);
        }
    }

    /// Tells shard `shard` how far every replica has got, if further than
    /// it last heard.
    fn report_replicated(&mut self, shard: ShardId) {
        let targets = &self.replication.targets;
        let Some(replicas) = self.replication.shards.get_mut(shard) else {
            return;
        };
        let through = if targets.is_empty() {
            if !self.peers.is_empty() || !self.retired_streams.is_empty() {
                return;
            }
            replicas.sent
        } else {
            let acked = targets.iter().map(|target| replicas.acked.get(target));
            match acked.min() {
                Some(Some(&through)) => through,
                _ => return,
            }
        };
        while replicas.sent_at.front().is_some_and(|&(e, _)| e <= through) {
            replicas.sent_at.pop_front();
        }
        if through > replicas.reported {
            replicas.reported = through;
            self.outputs.push_back(NodeOutput::ToShard {
                shard,
                msg: ShardMsg::Replicated { through },
            });
        }
    }

    fn shard_replicas(&mut self, shard: ShardId) -> &mut ShardReplicas {
        let shards = &mut self.replication.shards;
        if shards.len() <= shard {
            shards.resize_with(shard + 1, ShardReplicas::default);
        }
        &mut shards[shard]
    }

    /// Chooses the replicas again after a peer came, went, or changed
    /// standing; see the module documentation.
    pub(super) fn retarget_replicas(&mut self) {
        let wanted = self.config.replication_factor.saturating_sub(1);
        if wanted == 0 {
            return;
        }
        let mut ring: Vec<(&str, Option<PeerKey>)> = (self.peers.iter())
            .filter(|(_, peer)| peer.linked && !peer.suspected)
            .map(|(key, peer)| (&*peer.node_id, Some(key)))
            .collect();
        ring.push((&self.config.node_id, None));
        ring.sort_unstable();
        let me = ring.iter().position(|(_, key)| key.is_none()).unwrap_or(0);
        let targets: Vec<PeerKey> = (ring.iter().cycle().skip(me + 1))
            .take(ring.len() - 1)
            .filter_map(|(_, key)| *key)
            .take(wanted)
            .collect();
        if targets == self.replication.targets {
            return;
        }
        let dropped: Vec<PeerKey> = (self.replication.targets.iter())
            .filter(|old| !targets.contains(old) && self.peers.get(**old).is_some_and(|p| p.linked))
            .copied()
            .collect();
        for key in dropped {
            for shard in 0..self.config.shards {
                let frame = Frame::Replicate {
                    shard: shard as u32,
                    epoch: 0,
                    reset: true,
                    complete: false,
                    ops: Arc::new(Vec::new()),
                };
                self.send(key, Lane::Stream(shard as u32), frame);
            }
        }
        let names: Vec<&str> = targets
            .iter()
            .map(|&key| &*self.peers[key].node_id)
            .collect();
        tracing::info!(replicas = ?names, "session replicas chosen");
        self.replication.targets = targets;
        // Before the report below: with no replica it lets acknowledgements
        // go on this node's word alone, but not a QoS 2 PUBLISH held for
        // its copy (`ShardState::release_held`).
        if !self.replication.targets.is_empty() {
            self.tell_every_shard(|| ShardMsg::ReplicaReset);
        } else {
            self.counters.replication_unmet += 1;
            self.tell_every_shard(|| ShardMsg::Unreplicated);
        }
        for shard in 0..self.config.shards {
            let replicas = self.shard_replicas(shard);
            replicas.acked.clear();
            replicas.sent_at.clear();
            self.report_replicated(shard);
        }
    }

    /// A frame of replicated ops from peer `key`, for its shard `shard`.
    pub(super) fn receive_replicate(
        &mut self,
        key: PeerKey,
        shard: u32,
        epoch: u64,
        reset: bool,
        complete: bool,
        ops: Arc<Vec<ReplicaOp>>,
    ) {
        let origin = self.peers[key].node_id.clone();
        // Decoded for this node alone: taken, not copied.
        let ops = Arc::try_unwrap(ops).unwrap_or_else(|shared| (*shared).clone());
        self.mirrors.apply(&origin, shard, reset, ops);
        if complete {
            self.send(key, Lane::Control, Frame::Replicated { shard, epoch });
        }
    }

    /// Each replica, with how long the oldest epoch it has not
    /// acknowledged has waited, over every shard (zero when it has
    /// everything).
    pub fn replication_lag(&self, now: Instant) -> Vec<(bytestring::ByteString, Duration)> {
        let lag = |target: PeerKey| {
            (self.replication.shards.iter())
                .filter_map(|replicas| {
                    let acked = replicas.acked.get(&target).copied().unwrap_or(0);
                    let (_, sent) = replicas.sent_at.iter().find(|(e, _)| *e > acked)?;
                    Some(now.saturating_duration_since(*sent))
                })
                .max()
                .unwrap_or_default()
        };
        (self.replication.targets.iter())
            .filter_map(|&key| Some((self.peers.get(key)?.node_id.clone(), lag(key))))
            .collect()
    }

    /// The peers keeping copies of this node's sessions.
    #[cfg(test)]
    pub fn replica_names(&self) -> Vec<bytestring::ByteString> {
        self.replication_lag(Instant::now())
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    }

    /// `origin` is down: the sessions copied from it are asked of the
    /// ownership raft.
    pub(super) fn promote_copies_of(&mut self, origin: &str) {
        let client_ids = self.mirrors.client_ids_of(origin);
        self.promoting(origin, &client_ids);
        if !client_ids.is_empty() {
            tracing::info!(
                peer = origin,
                sessions = client_ids.len(),
                "taking over the sessions copied from a node that is gone"
            );
            self.outputs.push_back(NodeOutput::Promote {
                from: origin.into(),
                client_ids,
            });
        }
    }

    /// The ownership raft's answer to the promotion of `client_id`: this
    /// node owns it under `epoch`, and its home shard adopts the copy; or
    /// (`None`) the client id had moved on, and the copy is stale.
    pub fn handle_promoted(&mut self, client_id: ByteString, epoch: Option<u64>) {
        let session = self.mirrors.take(&client_id).map(|(_, session)| session);
        let (Some(session), Some(epoch)) = (session, epoch) else {
            self.promotion_answered(&client_id, false);
            return;
        };
        self.counters.sessions_promoted += 1;
        let shard = crate::shard::home_shard(&client_id, self.config.shards);
        self.outputs.push_back(NodeOutput::ToShard {
            shard,
            msg: ShardMsg::Adopt { session, epoch },
        });
        self.promotion_answered(&client_id, true);
    }

    /// The raft could not confirm the promotion of `client_id`: its copy
    /// stays, for its client's claim to recover.
    pub fn handle_promotion_failed(&mut self, client_id: ByteString) {
        self.promotion_answered(&client_id, false);
    }

    /// This node is in a minority of the cluster, where the majority may
    /// promote the copies of its sessions: the shards let their stored
    /// sessions go (`ShardMsg::Fence`). Without copies nothing can be
    /// promoted, and the sessions stay served where they are.
    pub fn fence_sessions(&mut self) {
        if self.replicates() {
            self.tell_every_shard(|| ShardMsg::Fence);
        }
    }

    /// Whether this node's sessions have copies on other nodes (as its
    /// peers' have here: every node has the same setting). The factor is
    /// 1 here without a data dir.
    pub(super) fn replicates(&self) -> bool {
        self.config.replication_factor > 1
    }

    /// Whether every replica holds every epoch the shards handed over.
    pub fn replicas_hold_everything(&self) -> bool {
        let targets = &self.replication.targets;
        targets.is_empty()
            || (self.replication.shards.iter()).all(|replicas| replicas.reported >= replicas.sent)
    }

    /// How many sessions of other nodes this node keeps copies of.
    pub fn session_copies(&self) -> usize {
        self.mirrors.sessions()
    }
}

/// `ops` cut into frames of about [`REPLICATE_FRAME_BYTES`]: the first
/// carries `reset`, the last is `complete` (one frame, possibly empty,
/// when there are few).
fn frames_of(shard: ShardId, epoch: u64, reset: bool, ops: Vec<ReplicaOp>) -> Vec<Frame> {
    let mut chunks: Vec<Vec<ReplicaOp>> = vec![Vec::new()];
    let mut bytes = 0;
    for op in ops {
        let size = op_size(&op);
        if bytes + size > REPLICATE_FRAME_BYTES && !chunks.last().is_some_and(Vec::is_empty) {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(chunk) = chunks.last_mut() {
            chunk.push(op);
        }
    }
    let last = chunks.len() - 1;
    (chunks.into_iter().enumerate())
        .map(|(i, ops)| Frame::Replicate {
            shard: shard as u32,
            epoch,
            reset: reset && i == 0,
            complete: i == last,
            ops: Arc::new(ops),
        })
        .collect()
}

/// About the bytes `op` takes archived.
pub(super) fn op_size(op: &ReplicaOp) -> usize {
    match op {
        ReplicaOp::Message { message, .. } => {
            128 + message.message.topic.len() + message.message.payload.len()
        }
        ReplicaOp::Session(record) => {
            256 + (record.subscriptions.iter())
                .map(|s| 32 + s.filter.len())
                .sum::<usize>()
                + (record.will.as_ref()).map_or(0, |will| will.message.payload.len())
        }
        _ => 96,
    }
}

/// The replicated form of a store op; `None` for what is not replicated.
fn replica_op(op: &Op, now: Instant, wall: SystemTime) -> Option<ReplicaOp> {
    let op = match op {
        Op::Session(record) => ReplicaOp::Session((**record).clone()),
        Op::RemoveSession(client_id) => ReplicaOp::RemoveSession(client_id.to_string()),
        Op::Message { id, message } => ReplicaOp::Message {
            id: *id,
            message: stored_record(message, now, wall),
        },
        Op::RemoveMessage(id) => ReplicaOp::RemoveMessage(*id),
        Op::Entry {
            client_id,
            seq,
            entry,
        } => ReplicaOp::Entry {
            client_id: client_id.to_string(),
            seq: *seq,
            entry: entry.clone(),
        },
        Op::Flight {
            client_id,
            seq,
            flight,
        } => ReplicaOp::Flight {
            client_id: client_id.to_string(),
            seq: *seq,
            flight: *flight,
        },
        Op::RemoveEntry {
            client_id,
            seq,
            flight,
        } => ReplicaOp::RemoveEntry {
            client_id: client_id.to_string(),
            seq: *seq,
            flight: *flight,
        },
        Op::RemoveFlight { client_id, seq } => ReplicaOp::RemoveFlight {
            client_id: client_id.to_string(),
            seq: *seq,
        },
        Op::IncomingQos2 {
            client_id,
            packet_id,
        } => ReplicaOp::IncomingQos2 {
            client_id: client_id.to_string(),
            packet_id: *packet_id,
        },
        Op::RemoveIncomingQos2 {
            client_id,
            packet_id,
        } => ReplicaOp::RemoveIncomingQos2 {
            client_id: client_id.to_string(),
            packet_id: *packet_id,
        },
        Op::Retained(_) | Op::Delete(_) => return None,
    };
    Some(op)
}
