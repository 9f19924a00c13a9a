//! Claims and hand-overs between simulated nodes: node 1 claims a client
//! id node 0 held, node 0's shard hands the session over, node 1's shard
//! gets it with the new epoch; and every way that can fail.

use std::time::Duration;

use bytestring::ByteString;

use super::{SHARDS, Sim, id};
use crate::cluster::node::{ClaimResult, HANDOVER_TIMEOUT, PreviousOwner};
use crate::cluster::settings::AckMode;
use crate::shard::home_shard;
use crate::shard::mesh::{ClaimOutcome, ShardMsg};

pub(super) const CLIENT: &str = "c";

impl Sim {
    /// Shard 0 of `node` claims [`CLIENT`] under token 7; the raft answers
    /// `result`.
    pub(super) fn claim(&mut self, node: usize, result: ClaimResult) {
        self.shard_msg(
            node,
            0,
            ShardMsg::Claim {
                client_id: CLIENT.into(),
                token: 7,
            },
        );
        self.settle();
        let claims = std::mem::take(&mut self.nodes[node].claims);
        assert_eq!(claims, [(0, ByteString::from(CLIENT), 7)]);
        let now = self.now;
        (self.nodes[node].node).handle_claim_result(0, 7, CLIENT.into(), result, now);
        self.settle();
    }

    /// What shard 0 of `node` was told of claim 7.
    pub(super) fn claimed(&self, node: usize) -> Vec<ClaimOutcome> {
        self.nodes[node].to_shards[0]
            .iter()
            .filter_map(|msg| match msg {
                ShardMsg::Claimed { token: 7, outcome } => Some(outcome.clone()),
                _ => None,
            })
            .collect()
    }

    /// The hand-over `node`'s home shard of [`CLIENT`] was asked for:
    /// epoch and token.
    fn asked_to_hand_over(&self, node: usize) -> Option<(u64, u64)> {
        self.nodes[node].to_shards[home_shard(CLIENT, SHARDS)]
            .iter()
            .find_map(|msg| match msg {
                ShardMsg::HandOver {
                    client_id,
                    epoch,
                    token,
                } if client_id == CLIENT => Some((*epoch, *token)),
                _ => None,
            })
    }

    fn hand_over(&mut self, node: usize, token: u64, session: Option<Vec<u8>>) {
        let shard = home_shard(CLIENT, SHARDS);
        self.shard_msg(node, shard, ShardMsg::HandedOver { token, session });
        self.settle();
    }
}

fn granted(epoch: u64, previous: Option<usize>) -> ClaimResult {
    ClaimResult::Granted {
        epoch,
        previous: previous.map(|node| PreviousOwner::Node(id(node))),
    }
}

fn owner(epoch: u64, session: Option<&[u8]>) -> ClaimOutcome {
    ClaimOutcome::Owner {
        epoch,
        session: session.map(<[u8]>::to_vec),
        missed: false,
    }
}

/// Owner under `epoch` with no session from a previous owner that could
/// not be asked.
fn missed(epoch: u64) -> ClaimOutcome {
    ClaimOutcome::Owner {
        epoch,
        session: None,
        missed: true,
    }
}

#[test]
fn a_session_held_by_another_node_is_handed_over_under_the_new_epoch() {
    let mut sim = Sim::new(2, 1, AckMode::Remote);
    sim.claim(1, granted(5, Some(0)));
    assert!(sim.claimed(1).is_empty(), "waits for the hand-over");
    let (epoch, token) = sim.asked_to_hand_over(0).expect("node 0 is asked");
    assert_eq!(epoch, 5);
    sim.advance(Duration::from_millis(30));
    sim.hand_over(0, token, Some(b"archive".to_vec()));
    assert_eq!(sim.claimed(1), [owner(5, Some(b"archive"))]);
    assert_eq!(sim.nodes[0].node.counters.sessions_handed_over, 1);
    // Timed from the claim's arrival to the answer, hand-over included.
    let latency = &sim.nodes[1].node.counters.claim_latency;
    assert_eq!(latency.count(), 1);
    assert!(latency.buckets().sum >= 0.03, "{:?}", latency.buckets().sum);
}

#[test]
fn a_first_claim_or_one_of_this_nodes_own_session_asks_nobody() {
    let mut sim = Sim::new(2, 2, AckMode::Remote);
    sim.claim(1, granted(1, None));
    assert_eq!(sim.claimed(1), [owner(1, None)]);
    let mut sim = Sim::new(2, 3, AckMode::Remote);
    sim.claim(1, granted(2, Some(1)));
    assert_eq!(sim.claimed(1), [owner(2, None)]);
    assert_eq!(sim.asked_to_hand_over(0), None);
}

#[test]
fn a_previous_owner_known_only_by_its_raft_id_is_missed() {
    let mut sim = Sim::new(2, 8, AckMode::Remote);
    let previous = Some(PreviousOwner::Unlinked(77));
    sim.claim(1, ClaimResult::Granted { epoch: 6, previous });
    assert_eq!(sim.claimed(1), [missed(6)]);
    assert_eq!(sim.nodes[1].node.counters.handovers_missed, 1);
}

#[test]
fn no_majority_refuses_the_claim() {
    let mut sim = Sim::new(2, 4, AckMode::Remote);
    sim.claim(1, ClaimResult::Unavailable);
    assert_eq!(sim.claimed(1), [ClaimOutcome::Unavailable]);
    assert_eq!(
        sim.nodes[1].node.counters.claim_latency.count(),
        0,
        "not a takeover"
    );
}

#[test]
fn an_unreachable_previous_owner_is_not_waited_for() {
    let mut sim = Sim::new(2, 5, AckMode::Remote);
    sim.cut(0, 1);
    sim.claim(1, granted(3, Some(0)));
    assert_eq!(sim.claimed(1), [missed(3)]);
    assert_eq!(sim.nodes[1].node.counters.handovers_missed, 1);
}

#[test]
fn a_link_lost_while_waiting_ends_the_wait_without_the_session() {
    let mut sim = Sim::new(2, 6, AckMode::Remote);
    sim.claim(1, granted(3, Some(0)));
    assert!(sim.asked_to_hand_over(0).is_some());
    sim.cut(0, 1);
    sim.settle();
    assert_eq!(sim.claimed(1), [missed(3)]);
}

#[test]
fn a_hand_over_after_the_wait_ended_is_dropped() {
    let mut sim = Sim::new(2, 7, AckMode::Remote);
    sim.claim(1, granted(4, Some(0)));
    let (_, token) = sim.asked_to_hand_over(0).expect("asked");
    sim.advance(HANDOVER_TIMEOUT + Duration::from_millis(1));
    sim.settle();
    assert_eq!(sim.claimed(1), [missed(4)]);
    // The old owner answers late: the client already has a fresh session,
    // which the late one must not replace.
    sim.hand_over(0, token, Some(b"late".to_vec()));
    assert_eq!(sim.claimed(1), [missed(4)]);
}

#[test]
fn a_claim_superseded_while_it_waits_passes_the_session_on_to_the_later_one() {
    let mut sim = Sim::new(3, 9, AckMode::Remote);
    sim.claim(1, granted(4, Some(0)));
    let (_, token) = sim.asked_to_hand_over(0).expect("node 0 is asked");
    // Node 2 claims too, later, while node 1 still waits: node 1 is the
    // previous owner it asks.
    sim.claim(2, granted(5, Some(1)));
    assert!(sim.claimed(2).is_empty(), "waits for node 1");
    assert_eq!(
        sim.asked_to_hand_over(1),
        None,
        "node 1's shard has nothing to hand over yet"
    );
    sim.hand_over(0, token, Some(b"archive".to_vec()));
    assert_eq!(sim.claimed(2), [owner(5, Some(b"archive"))]);
    assert_eq!(sim.claimed(1), [ClaimOutcome::Unavailable]);
}

#[test]
fn a_take_over_asked_while_this_nodes_claim_is_unanswered_waits_for_the_answer() {
    let mut sim = Sim::new(3, 11, AckMode::Remote);
    // Node 1's claim is in the raft, granted maybe, not answered yet.
    let claim = ShardMsg::Claim {
        client_id: CLIENT.into(),
        token: 7,
    };
    sim.shard_msg(1, 0, claim);
    sim.settle();
    let _ = std::mem::take(&mut sim.nodes[1].claims);
    // Node 2's later claim asks node 1, which the raft names the owner.
    sim.claim(2, granted(5, Some(1)));
    assert_eq!(
        sim.asked_to_hand_over(1),
        None,
        "node 1's shard has nothing to hand over yet: the ask waits"
    );
    let now = sim.now;
    (sim.nodes[1].node).handle_claim_result(0, 7, CLIENT.into(), granted(4, Some(0)), now);
    sim.settle();
    let (_, token) = sim.asked_to_hand_over(0).expect("node 0 is asked");
    sim.hand_over(0, token, Some(b"archive".to_vec()));
    assert_eq!(sim.claimed(2), [owner(5, Some(b"archive"))]);
    assert_eq!(sim.claimed(1), [ClaimOutcome::Unavailable]);
}
