//! Claims and hand-overs: a client id's home shard asks to own the client
//! id before it answers a CONNECT; the runtime asks the ownership raft
//! ([`NodeOutput::Claim`]) and hands its answer back
//! ([`Node::handle_claim_result`]). If another node held the client id,
//! that node is asked for the session ([`Frame::TakeOver`], under the new
//! epoch) and answers with it archived ([`Frame::HandedOver`]); the shard
//! then adopts it and attaches the connection. The raft's work happens
//! once per CONNECT, never per message.
//!
//! A previous owner that cannot be asked (no link) is taken to be gone:
//! the session then comes from a copy ([`Frame::Recover`], answered by
//! [`Frame::Recovered`]) kept here or by a peer (`replication`), and
//! without one the claim is granted with a fresh session, as it is when
//! the previous owner does not answer within [`HANDOVER_TIMEOUT`].
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

/// A claim the raft granted here, until its session (or the lack of one)
/// is settled.
#[derive(Debug)]
struct Granted {
    shard: ShardId,
    token: u64,
    client_id: ByteString,
    epoch: u64,
    /// A later claim elsewhere took the client id over while this one
    /// waited for the session: whatever comes goes on there.
    superseded: Option<AskedHandover>,
}

/// A claim granted here, waiting for the previous owner's hand-over, or
/// for a copy of the session from the peers that may keep one.
#[derive(Debug)]
struct AwaitedSession {
    claim: Granted,
    /// The previous owner, or the peers asked for a copy, until each has
    /// answered without one.
    from: Vec<PeerKey>,
    /// Asked for a copy (the previous owner unreachable): none found
    /// counts as a missed hand-over.
    recovering: bool,
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
    /// Claims of each client id sent to the raft and not answered yet.
    in_flight: FxHashMap<ByteString, u32>,
    /// A peer's take-over of a client id whose claim here was still in
    /// flight when it came, under its epoch: the claim's answer decides
    /// whether the session goes on to that peer.
    early_asks: FxHashMap<ByteString, (u64, AskedHandover)>,
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
        *self
            .takeovers
            .in_flight
            .entry(client_id.clone())
            .or_default() += 1;
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
        if let Some(count) = self.takeovers.in_flight.get_mut(&client_id) {
            *count -= 1;
            if *count == 0 {
                self.takeovers.in_flight.remove(&client_id);
            }
        }
        let early = if self.takeovers.in_flight.contains_key(&client_id) {
            None
        } else {
            self.takeovers.early_asks.remove(&client_id)
        };
        let (epoch, previous) = match result {
            ClaimResult::Unavailable => {
                if let Some((_, asked)) = early {
                    self.answer_to_asker(asked, None);
                }
                self.answer_claim(shard, token, ClaimOutcome::Unavailable, now);
                return;
            }
            ClaimResult::Granted { epoch, previous } => (epoch, previous),
        };
        // A later claim elsewhere asked for the session before this one's
        // answer came: it is superseded, and the session goes on there.
        let superseded = match early {
            Some((asked_epoch, asked)) if asked_epoch > epoch => Some(asked),
            Some((_, asked)) => {
                self.answer_to_asker(asked, None);
                None
            }
            None => None,
        };
        self.counters.claims_granted += 1;
        let owner = match previous {
            Some(PreviousOwner::Node(owner)) if owner != self.config.node_id => Some(owner),
            Some(PreviousOwner::Unlinked(raft_id)) => Some(format!("raft id {raft_id}").into()),
            _ => None,
        };
        let claim = Granted {
            shard,
            token,
            client_id,
            epoch,
            superseded,
        };
        let Some(owner) = owner else {
            self.settle_claim(claim, None, false, now);
            return;
        };
        // A suspected owner is likely dead: its session is taken from a
        // copy at once rather than after QUIC's idle timeout.
        let linked = (self.peer_by_id.get(&owner).copied())
            .filter(|&key| self.peers[key].linked && !self.peers[key].suspected);
        match linked {
            Some(key) => {
                let client_id = claim.client_id.clone();
                let frame = |request| Frame::TakeOver {
                    client_id: client_id.clone(),
                    epoch,
                    request,
                };
                self.await_session(claim, vec![key], false, frame, now);
            }
            None => self.recover(claim, &owner, now),
        }
    }

    /// The previous owner of `client_id` cannot be asked: its session
    /// comes from a copy, this node's own or a peer's, if one is kept
    /// (`replication`); every holder gives its copy up.
    fn recover(&mut self, claim: Granted, owner: &str, now: Instant) {
        let client_id = claim.client_id.clone();
        let here = self.mirrors.take(&client_id).map(|(origin, session)| {
            self.taken_over_from(&origin, client_id.clone(), None);
            session
        });
        let peers: Vec<PeerKey> = (self.peers.iter())
            .filter(|(_, peer)| peer.linked && !peer.suspected)
            .map(|(key, _)| key)
            .collect();
        if here.is_some() || peers.is_empty() {
            // Other copies (with more than one replica) are dropped all the
            // same; their answers find no claim waiting.
            for &key in &peers {
                let frame = Frame::Recover {
                    client_id: client_id.clone(),
                    request: 0,
                };
                self.send(key, Lane::Control, frame);
            }
            if here.is_none() {
                self.settle_missed(claim, owner, now);
                return;
            }
            info!(client = %client_id, previous = %owner, epoch = claim.epoch, "session taken over from a copy kept here");
            self.counters.sessions_recovered += 1;
            self.settle_claim(claim, here, false, now);
            return;
        }
        let frame = |request| Frame::Recover {
            client_id: client_id.clone(),
            request,
        };
        self.await_session(claim, peers, true, frame, now);
    }

    /// Asks `from` for the session (the frame `ask` makes, under a new
    /// request number) and waits for it.
    fn await_session(
        &mut self,
        claim: Granted,
        from: Vec<PeerKey>,
        recovering: bool,
        ask: impl Fn(u64) -> Frame,
        now: Instant,
    ) {
        self.takeovers.last_request += 1;
        let request = self.takeovers.last_request;
        for &key in &from {
            self.send(key, Lane::Control, ask(request));
        }
        self.takeovers.awaited.insert(
            request,
            AwaitedSession {
                claim,
                from,
                recovering,
                deadline: now + HANDOVER_TIMEOUT,
            },
        );
    }

    /// The claim's session is settled: `session` (or none) goes to the
    /// shard that claimed it, or, if a later claim elsewhere superseded
    /// this one meanwhile, on to that node, and the CONNECT here is
    /// refused (Server unavailable: its client is being served elsewhere).
    fn settle_claim(
        &mut self,
        claim: Granted,
        session: Option<Vec<u8>>,
        missed: bool,
        now: Instant,
    ) {
        let Granted {
            shard,
            token,
            client_id,
            epoch,
            superseded,
        } = claim;
        let Some(next) = superseded else {
            let outcome = ClaimOutcome::Owner {
                epoch,
                session,
                missed,
            };
            self.answer_claim(shard, token, outcome, now);
            return;
        };
        info!(client = %client_id, epoch, "claim superseded while it waited: its session goes on to the later claim");
        self.answer_to_asker(next, session);
        self.answer_claim(shard, token, ClaimOutcome::Unavailable, now);
    }

    /// The previous owner could not be asked and no copy of its session
    /// came: the client starts afresh here, watching for what that owner
    /// sends on if it comes back.
    fn settle_missed(&mut self, claim: Granted, owner: &str, now: Instant) {
        warn!(client = %claim.client_id, previous = %owner, epoch = claim.epoch, "previous owner unreachable and no copy: its session is not handed over");
        self.counters.handovers_missed += 1;
        self.settle_claim(claim, None, true, now);
    }

    /// Answers peer `asked`'s take-over with `session`, unless the peer
    /// restarted since (it asked for nothing any more).
    fn answer_to_asker(&mut self, asked: AskedHandover, session: Option<Vec<u8>>) {
        let same_life =
            (self.peers.get(asked.peer)).is_some_and(|peer| peer.incarnation == asked.incarnation);
        if same_life {
            self.counters.sessions_handed_over += u64::from(session.is_some());
            let frame = Frame::HandedOver {
                request: asked.request,
                session: session.map(Bytes::from),
            };
            self.send(asked.peer, Lane::Control, frame);
        }
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
        let incarnation = self.peers[key].incarnation;
        let asked = AskedHandover {
            peer: key,
            incarnation,
            request,
        };
        // This node's own claim of the client id, older, may still wait
        // for the session: it goes on to the later claim when it comes.
        let waiting = (self.takeovers.awaited.values_mut())
            .find(|awaited| awaited.claim.client_id == client_id && awaited.claim.epoch < epoch);
        if let Some(awaited) = waiting {
            awaited.claim.superseded = Some(asked);
            return;
        }
        // Its claim here is granted, maybe, but not answered yet: it has no
        // session to hand over, or not yet.
        if self.takeovers.in_flight.contains_key(&client_id) {
            if let Some((_, older)) = self.takeovers.early_asks.insert(client_id, (epoch, asked)) {
                self.answer_to_asker(older, None);
            }
            return;
        }
        self.takeovers.last_request += 1;
        let token = self.takeovers.last_request;
        self.takeovers.asked.insert(token, asked);
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
        if let Some(asked) = self.takeovers.asked.remove(&token) {
            self.answer_to_asker(asked, session);
        }
    }

    /// Peer `key` answered the take-over or recovery `request`.
    pub(super) fn receive_handed_over(
        &mut self,
        key: PeerKey,
        request: u64,
        session: Option<Bytes>,
        now: Instant,
    ) {
        let Some(mut awaited) = self.takeovers.awaited.remove(&request) else {
            // Given up on already: the client has a fresh session by now,
            // and this one, under an older epoch, must not come back.
            if session.is_some() {
                info!(request, "a hand-over arrived after its wait ended; dropped");
            }
            return;
        };
        let Some(position) = awaited.from.iter().position(|&from| from == key) else {
            self.takeovers.awaited.insert(request, awaited);
            return;
        };
        if session.is_none() && awaited.recovering {
            awaited.from.swap_remove(position);
            if !awaited.from.is_empty() {
                self.takeovers.awaited.insert(request, awaited);
                return;
            }
            self.settle_missed(awaited.claim, "the previous owner, unreachable", now);
            return;
        }
        if session.is_some() && awaited.recovering {
            self.counters.sessions_recovered += 1;
        }
        let session = session.map(|bytes| bytes.to_vec());
        self.settle_claim(awaited.claim, session, false, now);
    }

    /// Hand-overs awaited from `key` end without a session: its link is
    /// gone, and with it whatever it was sending.
    pub(super) fn give_up_handovers_from(&mut self, key: PeerKey, now: Instant) {
        for awaited in self.takeovers.awaited.values_mut() {
            awaited.from.retain(|&from| from != key);
        }
        self.give_up_handovers(|awaited| awaited.from.is_empty(), now);
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
                if !awaited.recovering {
                    // Gone or silent: its session may be kept by a replica.
                    self.recover(awaited.claim, "the previous owner, silent", now);
                    continue;
                }
                self.settle_missed(awaited.claim, "the previous owner, silent", now);
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
