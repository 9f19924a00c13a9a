//! Claims and hand-overs: a client id's home shard asks to own the client
//! id before it answers a CONNECT; the runtime asks the ownership raft
//! ([`NodeOutput::Claim`]) and hands its answer back
//! ([`Node::handle_claim_result`]). If another node held the client id,
//! that node is asked for the session ([`Frame::TakeOver`], under the new
//! epoch) and answers with it archived ([`Frame::HandedOver`]); the shard
//! then adopts it and attaches the connection. The raft's work happens
//! once per CONNECT, never per message.
//!
//! A previous owner that cannot be asked (no link) or does not answer
//! within [`HANDOVER_TIMEOUT`] is taken to be gone: the claim is granted
//! without its session, which is then lost unless a replica holds it.
//! The epoch keeps that safe: whatever the old owner does later under its
//! older epoch is refused (its late hand-over is dropped here, and a
//! hand-over request to it under an older epoch than it holds is refused
//! by its shard).

use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use rustc_hash::FxHashMap;
use tracing::{info, warn};

use super::{Frame, Lane, Node, NodeOutput, PeerKey};
use crate::shard::mesh::{ClaimOutcome, ShardMsg};
use crate::shard::{ShardId, home_shard};

/// How long a new owner waits for the previous one to hand the session
/// over before it serves the client without it.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the ownership raft answered for a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimResult {
    /// This node owns the client id under `epoch`; `previous` is the node
    /// that held it before, if any did.
    Granted {
        epoch: u64,
        previous: Option<PreviousOwner>,
    },
    /// No majority confirmed it, or the answer was lost.
    Unavailable,
}

/// The node a client id was taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreviousOwner {
    Node(ByteString),
    /// Known only by its raft id: not linked now (dead, or restarted
    /// without a data dir under a new id), so nobody can be asked.
    Unlinked(u64),
}

/// A claim granted here, waiting for the previous owner's hand-over.
#[derive(Debug)]
struct AwaitedSession {
    shard: ShardId,
    token: u64,
    epoch: u64,
    from: PeerKey,
    deadline: Instant,
}

/// A hand-over a peer asked of a local shard, by the shard's token.
#[derive(Debug)]
struct AskedHandover {
    peer: PeerKey,
    incarnation: u64,
    request: u64,
}

#[derive(Debug, Default)]
pub(super) struct Takeovers {
    /// When each claim came from its shard, by (shard, token): the start
    /// of the takeover histogram's interval.
    started: FxHashMap<(ShardId, u64), Instant>,
    awaited: FxHashMap<u64, AwaitedSession>,
    asked: FxHashMap<u64, AskedHandover>,
    last_request: u64,
}

impl Node {
    /// Shard `shard` asks to own `client_id` (`ShardMsg::Claim`).
    pub(super) fn claim(
        &mut self,
        shard: ShardId,
        client_id: ByteString,
        token: u64,
        now: Instant,
    ) {
        self.takeovers.started.insert((shard, token), now);
        self.outputs.push_back(NodeOutput::Claim {
            shard,
            client_id,
            token,
        });
    }

    /// The ownership raft's answer to shard `shard`'s claim `token` of
    /// `client_id`.
    pub fn handle_claim_result(
        &mut self,
        shard: ShardId,
        token: u64,
        client_id: ByteString,
        result: ClaimResult,
        now: Instant,
    ) {
        let (epoch, previous) = match result {
            ClaimResult::Unavailable => {
                self.answer_claim(shard, token, ClaimOutcome::Unavailable, now);
                return;
            }
            ClaimResult::Granted { epoch, previous } => (epoch, previous),
        };
        self.counters.claims_granted += 1;
        let owner = match previous {
            Some(PreviousOwner::Node(owner)) if owner != self.config.node_id => Some(owner),
            Some(PreviousOwner::Unlinked(raft_id)) => Some(format!("raft id {raft_id}").into()),
            _ => None,
        };
        let fresh = ClaimOutcome::Owner {
            epoch,
            session: None,
        };
        let Some(owner) = owner else {
            self.answer_claim(shard, token, fresh, now);
            return;
        };
        let linked = self
            .peer_by_id
            .get(&owner)
            .copied()
            .filter(|&key| self.peers[key].linked);
        let Some(key) = linked else {
            warn!(client = %client_id, previous = %owner, epoch, "previous owner unreachable: its session is not handed over");
            self.counters.handovers_missed += 1;
            self.answer_claim(shard, token, fresh, now);
            return;
        };
        self.takeovers.last_request += 1;
        let request = self.takeovers.last_request;
        self.takeovers.awaited.insert(
            request,
            AwaitedSession {
                shard,
                token,
                epoch,
                from: key,
                deadline: now + HANDOVER_TIMEOUT,
            },
        );
        self.send(
            key,
            Lane::Control,
            Frame::TakeOver {
                client_id,
                epoch,
                request,
            },
        );
    }

    /// Peer `key` took `client_id` over under `epoch`: the client id's
    /// home shard here hands the session over.
    pub(super) fn receive_take_over(
        &mut self,
        key: PeerKey,
        client_id: ByteString,
        epoch: u64,
        request: u64,
    ) {
        self.takeovers.last_request += 1;
        let token = self.takeovers.last_request;
        let incarnation = self.peers[key].incarnation;
        self.takeovers.asked.insert(
            token,
            AskedHandover {
                peer: key,
                incarnation,
                request,
            },
        );
        let shard = home_shard(&client_id, self.config.shards);
        self.outputs.push_back(NodeOutput::ToShard {
            shard,
            msg: ShardMsg::HandOver {
                client_id,
                epoch,
                token,
            },
        });
    }

    /// A local shard answers the hand-over `token` (`ShardMsg::HandedOver`).
    pub(super) fn handed_over(&mut self, token: u64, session: Option<Vec<u8>>) {
        let Some(asked) = self.takeovers.asked.remove(&token) else {
            return;
        };
        // A peer that restarted since asked for nothing any more.
        let same_life = self
            .peers
            .get(asked.peer)
            .is_some_and(|peer| peer.incarnation == asked.incarnation);
        if same_life {
            self.counters.sessions_handed_over += u64::from(session.is_some());
            let frame = Frame::HandedOver {
                request: asked.request,
                session: session.map(Bytes::from),
            };
            self.send(asked.peer, Lane::Control, frame);
        }
    }

    /// Peer `key` answered the take-over `request`.
    pub(super) fn receive_handed_over(
        &mut self,
        key: PeerKey,
        request: u64,
        session: Option<Bytes>,
        now: Instant,
    ) {
        let Some(awaited) = self.takeovers.awaited.remove(&request) else {
            // Given up on already: the client has a fresh session by now,
            // and this one, under an older epoch, must not come back.
            info!(request, "a hand-over arrived after its wait ended; dropped");
            return;
        };
        if awaited.from != key {
            self.takeovers.awaited.insert(request, awaited);
            return;
        }
        let session = session.map(|bytes| bytes.to_vec());
        let outcome = ClaimOutcome::Owner {
            epoch: awaited.epoch,
            session,
        };
        self.answer_claim(awaited.shard, awaited.token, outcome, now);
    }

    /// Hand-overs awaited from `key` end without a session: its link is
    /// gone, and with it whatever it was sending.
    pub(super) fn give_up_handovers_from(&mut self, key: PeerKey, now: Instant) {
        self.give_up_handovers(|awaited| awaited.from == key, now);
    }

    /// Hand-overs awaited past their deadline end without a session.
    pub(super) fn expire_handovers(&mut self, now: Instant) {
        self.give_up_handovers(|awaited| awaited.deadline <= now, now);
    }

    fn give_up_handovers(&mut self, give_up: impl Fn(&AwaitedSession) -> bool, now: Instant) {
        let ended: Vec<u64> = (self.takeovers.awaited.iter())
            .filter(|(_, awaited)| give_up(awaited))
            .map(|(&request, _)| request)
            .collect();
        for request in ended {
            if let Some(awaited) = self.takeovers.awaited.remove(&request) {
                warn!(
                    epoch = awaited.epoch,
                    "previous owner did not hand its session over"
                );
                self.counters.handovers_missed += 1;
                let outcome = ClaimOutcome::Owner {
                    epoch: awaited.epoch,
                    session: None,
                };
                self.answer_claim(awaited.shard, awaited.token, outcome, now);
            }
        }
    }

    /// Answers the claim, and times it from its arrival here when it was
    /// granted: the raft's commit plus the previous owner's hand-over.
    fn answer_claim(&mut self, shard: ShardId, token: u64, outcome: ClaimOutcome, now: Instant) {
        if let Some(started) = self.takeovers.started.remove(&(shard, token))
            && matches!(outcome, ClaimOutcome::Owner { .. })
        {
            self.counters
                .claim_latency
                .record(now.duration_since(started));
        }
        self.outputs.push_back(NodeOutput::ToShard {
            shard,
            msg: ShardMsg::Claimed { token, outcome },
        });
    }
}
