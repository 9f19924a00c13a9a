//! Replicated sessions between simulated nodes: a shard's store ops reach
//! its replica, acknowledgements wait for the replica, the replicas are
//! chosen again when a node goes, and a node claiming a client id whose
//! owner is gone gets the session from a copy.

use std::time::{Instant, SystemTime};

use super::takeover::CLIENT;
use super::{Sim, config, id, message};
use crate::cluster::node::{ClaimResult, NodeConfig, PreviousOwner};
use crate::cluster::settings::AckMode;
use crate::shard::mesh::{ClaimOutcome, ShardMsg};
use crate::store::Op;
use crate::store::record::{EntryRecord, SessionRecord};
use crate::store::transfer::decode_session;

fn replicated(n: usize, seed: u64) -> Sim {
    Sim::with_config(n, seed, |i| NodeConfig {
        stored_acks: true,
        replication_factor: 2,
        ..config(i, 1, AckMode::Remote)
    })
}

/// [`CLIENT`]'s session with one queued message, numbered `n`, as a
/// shard's store writes it.
fn session_ops(n: u32) -> Vec<Op> {
    vec![
        Op::Session(Box::new(SessionRecord {
            client_id: CLIENT.to_owned(),
            username: None,
            protocol: 5,
            session_expiry: 3600,
            connected: true,
            expires_at_ms: None,
            subscriptions: Vec::new(),
            will: None,
        })),
        Op::Message {
            id: u64::from(n),
            message: message("t", n),
        },
        Op::Entry {
            client_id: CLIENT.into(),
            seq: u64::from(n),
            entry: EntryRecord {
                message: u64::from(n),
                qos: 1,
                retain: false,
                subscription_ids: Vec::new(),
                shared: None,
            },
        },
    ]
}

impl Sim {
    /// What shard `shard` of `node` heard of its replicas: resets asked
    /// for, and the epochs reported held.
    fn replica_news(&self, node: usize, shard: usize) -> (usize, Vec<u64>) {
        let msgs = &self.nodes[node].to_shards[shard];
        let resets = (msgs.iter())
            .filter(|msg| matches!(msg, ShardMsg::ReplicaReset))
            .count();
        let held = (msgs.iter())
            .filter_map(|msg| match msg {
                ShardMsg::Replicated { through } => Some(*through),
                _ => None,
            })
            .collect();
        (resets, held)
    }

    fn replicate(&mut self, node: usize, epoch: u64, reset: bool, ops: Vec<Op>) {
        self.shard_msg(node, 0, ShardMsg::Replicate { epoch, reset, ops });
        self.settle();
    }
}

/// The messages `outcome`'s session owes, by number.
fn owed_numbers(outcome: &ClaimOutcome) -> Vec<u32> {
    let ClaimOutcome::Owner {
        session: Some(archive),
        ..
    } = outcome
    else {
        panic!("no session in {outcome:?}");
    };
    let (session, _) =
        decode_session(archive, Instant::now(), SystemTime::now()).expect("a valid archive");
    (session.messages.iter())
        .filter_map(|owed| owed.message.as_ref())
        .map(|message| super::number(message))
        .collect()
}

fn unlinked_owner(epoch: u64) -> ClaimResult {
    ClaimResult::Granted {
        epoch,
        previous: Some(PreviousOwner::Unlinked(1)),
    }
}

#[test]
fn an_epoch_is_reported_held_once_the_replica_has_it() {
    let mut sim = replicated(3, 11);
    // Each node copies to the next by id: n0 to n1, and every shard is
    // asked for its sessions whole.
    assert_eq!(sim.nodes[0].node.replica_names(), [id(1)]);
    assert_eq!(sim.nodes[2].node.replica_names(), [id(0)]);
    assert_eq!(sim.replica_news(0, 0), (1, vec![]));
    sim.replicate(0, 1, true, session_ops(1));
    assert_eq!(sim.replica_news(0, 0).1, [1]);
    assert_eq!(sim.nodes[1].node.session_copies(), 1);
    assert_eq!(sim.nodes[2].node.session_copies(), 0);
    // A frame cut off on its way is not reported held.
    sim.shard_msg(
        0,
        0,
        ShardMsg::Replicate {
            epoch: 2,
            reset: false,
            ops: session_ops(2)[1..].to_vec(),
        },
    );
    sim.collect_outputs();
    sim.cut(0, 1);
    sim.settle();
    assert_eq!(sim.replica_news(0, 0).1, [1], "epoch 2 never reached n1");
}

#[test]
fn losing_a_replica_picks_the_next_node_and_waits_for_its_reset() {
    let mut sim = replicated(3, 12);
    sim.replicate(0, 1, true, session_ops(1));
    sim.cut(0, 1);
    sim.settle();
    assert_eq!(sim.nodes[0].node.replica_names(), [id(2)]);
    let (resets, held) = sim.replica_news(0, 0);
    assert_eq!((resets, held.as_slice()), (2, &[1][..]));
    // Changes before the reset reaches the shard are in that reset.
    sim.replicate(0, 2, false, session_ops(2)[1..].to_vec());
    assert_eq!(sim.replica_news(0, 0).1, [1]);
    let mut whole = session_ops(1);
    whole.extend_from_slice(&session_ops(2)[1..]);
    sim.replicate(0, 3, true, whole);
    assert_eq!(sim.replica_news(0, 0).1, [1, 3]);
    assert_eq!(sim.nodes[2].node.session_copies(), 1);
}

#[test]
fn with_no_peer_left_acknowledgements_wait_for_a_replica_to_come_back() {
    let mut sim = replicated(2, 13);
    sim.replicate(0, 1, true, session_ops(1));
    assert_eq!(sim.replica_news(0, 0).1, [1]);
    sim.cut(0, 1);
    sim.settle();
    assert!(sim.nodes[0].node.replica_names().is_empty());
    assert_eq!(sim.nodes[0].node.counters.replication_unmet, 1);
    sim.replicate(0, 2, false, session_ops(2)[1..].to_vec());
    assert_eq!(
        sim.replica_news(0, 0).1,
        [1],
        "epoch 2 is on this node's disk alone: not acknowledged"
    );
    sim.connect(0, 1);
    sim.settle();
    assert_eq!(sim.nodes[0].node.replica_names(), [id(1)]);
    let mut whole = session_ops(1);
    whole.extend_from_slice(&session_ops(2)[1..]);
    sim.replicate(0, 3, true, whole);
    assert_eq!(sim.replica_news(0, 0).1, [1, 3], "the reset settles it");
}

#[test]
fn a_node_that_never_had_a_peer_acknowledges_on_its_own_word() {
    let mut sim = replicated(1, 16);
    sim.replicate(0, 1, false, session_ops(1));
    assert_eq!(sim.replica_news(0, 0).1, [1]);
}

#[test]
fn a_claim_whose_owner_is_gone_gets_the_copy_kept_here() {
    let mut sim = replicated(3, 14);
    sim.replicate(0, 1, true, session_ops(1));
    sim.replicate(0, 2, false, session_ops(2)[1..].to_vec());
    sim.cut(0, 1);
    sim.cut(0, 2);
    sim.settle();
    sim.claim(1, unlinked_owner(9));
    let claimed = sim.claimed(1);
    assert_eq!(claimed.len(), 1);
    assert_eq!(owed_numbers(&claimed[0]), [1, 2]);
    assert_eq!(sim.nodes[1].node.counters.sessions_recovered, 1);
    assert_eq!(
        sim.nodes[1].node.session_copies(),
        0,
        "the copy is given up"
    );
}

#[test]
fn a_claim_whose_owner_is_gone_gets_a_peers_copy() {
    let mut sim = replicated(3, 15);
    sim.replicate(0, 1, true, session_ops(1));
    sim.cut(0, 1);
    sim.cut(0, 2);
    sim.settle();
    // n2 keeps no copy of n0's sessions: n1 does, and gives it up.
    sim.claim(2, unlinked_owner(9));
    let claimed = sim.claimed(2);
    assert_eq!(claimed.len(), 1);
    assert_eq!(owed_numbers(&claimed[0]), [1]);
    assert_eq!(sim.nodes[2].node.counters.sessions_recovered, 1);
    assert_eq!(sim.nodes[1].node.session_copies(), 0);
    assert_eq!(sim.nodes[2].node.counters.handovers_missed, 0);
}

#[test]
fn a_restarted_owner_drops_the_copies_of_its_last_life() {
    let mut sim = replicated(2, 16);
    sim.replicate(0, 1, true, session_ops(1));
    assert_eq!(sim.nodes[1].node.session_copies(), 1);
    sim.cut(0, 1);
    sim.nodes[0].incarnation = 2;
    sim.connect(0, 1);
    sim.settle();
    assert_eq!(sim.nodes[1].node.session_copies(), 0);
}

#[test]
fn the_copies_of_a_node_gone_down_are_promoted_unless_their_client_moved_on() {
    let mut sim = replicated(3, 17);
    sim.replicate(0, 1, true, session_ops(1));
    sim.cut(0, 1);
    sim.cut(0, 2);
    sim.settle();
    assert!(
        sim.nodes[1].promotions.is_empty(),
        "a lost link alone promotes nothing"
    );
    let now = sim.now;
    sim.nodes[1].node.handle_peer_down(&id(0), now);
    let now = sim.now;
    sim.nodes[2].node.handle_peer_down(&id(0), now);
    sim.settle();
    assert_eq!(sim.nodes[1].promotions, [(id(0), vec![CLIENT.into()])]);
    assert!(
        sim.nodes[2].promotions.is_empty(),
        "n2 keeps no copy of n0's"
    );

    sim.nodes[1].node.handle_promoted(CLIENT.into(), Some(12));
    sim.settle();
    let home = crate::shard::home_shard(CLIENT, super::SHARDS);
    let adopted: Vec<u64> = (sim.nodes[1].to_shards[home].iter())
        .filter_map(|msg| match msg {
            ShardMsg::Adopt { epoch, session } => {
                let outcome = ClaimOutcome::Owner {
                    epoch: *epoch,
                    session: Some(session.clone()),
                    missed: false,
                };
                assert_eq!(owed_numbers(&outcome), [1]);
                Some(*epoch)
            }
            _ => None,
        })
        .collect();
    assert_eq!(adopted, [12]);
    assert_eq!(sim.nodes[1].node.counters.sessions_promoted, 1);
    assert_eq!(sim.nodes[1].node.session_copies(), 0);

    // Refused (the client reconnected elsewhere first): the copy is stale.
    let mut sim = replicated(3, 18);
    sim.replicate(0, 1, true, session_ops(1));
    let now = sim.now;
    sim.nodes[1].node.handle_peer_down(&id(0), now);
    sim.nodes[1].node.handle_promoted(CLIENT.into(), None);
    sim.settle();
    assert_eq!(sim.nodes[1].node.session_copies(), 0);
    assert_eq!(sim.nodes[1].node.counters.sessions_promoted, 0);
}

#[test]
fn a_peer_said_down_while_its_link_here_lives_is_taken_over_only_once_the_link_ends() {
    let mut sim = replicated(3, 23);
    sim.replicate(0, 1, true, session_ops(1));
    // Gossip carries a cut-off node's stale word that n0 is down, while
    // n1 still hears from n0: nothing is taken over.
    let now = sim.now;
    sim.nodes[1].node.handle_peer_down(&id(0), now);
    sim.settle();
    assert!(sim.nodes[1].promotions.is_empty());
    assert_eq!(sim.nodes[1].node.session_copies(), 1);
    // n0 really is gone: its link here ends too.
    sim.cut(0, 1);
    sim.cut(0, 2);
    sim.settle();
    assert_eq!(sim.nodes[1].promotions, [(id(0), vec![CLIENT.into()])]);
}

#[test]
fn what_is_published_for_a_node_that_left_reaches_the_sessions_promoted_from_it() {
    let mut sim = replicated(3, 29);
    sim.subscribe(0, 0, "t");
    sim.settle();
    sim.replicate(0, 1, true, session_ops(1));
    let now = sim.now;
    sim.nodes[1].node.handle_peer_left(&id(0), now);
    let now = sim.now;
    sim.nodes[2].node.handle_peer_left(&id(0), now);
    sim.cut(0, 1);
    sim.cut(0, 2);
    sim.settle();
    assert_eq!(sim.nodes[1].promotions, [(id(0), vec![CLIENT.into()])]);
    // Published on n2 after n0 left, before n1 announces the session's
    // route: n2 still routes it n0's way, and sends it on as an orphan.
    sim.publish(2, 1, "t", 7);
    sim.settle();
    sim.nodes[1].node.handle_promoted(CLIENT.into(), Some(12));
    sim.settle();
    let home = crate::shard::home_shard(CLIENT, super::SHARDS);
    let orphans: Vec<u32> = (sim.nodes[1].to_shards[home].iter())
        .filter_map(|msg| match msg {
            ShardMsg::Orphan {
                client_id, message, ..
            } if client_id == CLIENT => Some(super::number(message)),
            _ => None,
        })
        .collect();
    assert_eq!(orphans, [7]);
}

#[test]
fn what_a_dead_node_never_acknowledged_goes_to_the_sessions_promoted_from_it() {
    let mut sim = replicated(3, 19);
    sim.subscribe(0, 0, "t");
    sim.settle();
    sim.replicate(0, 1, true, session_ops(1));
    sim.cut(0, 1);
    sim.cut(0, 2);
    sim.settle();
    // Published on n2 for n0's subscriber after n0 died: owed to n0.
    sim.publish(2, 1, "t", 7);
    sim.settle();
    let now = sim.now;
    sim.nodes[2].node.handle_peer_down(&id(0), now);
    let now = sim.now;
    sim.nodes[1].node.handle_peer_down(&id(0), now);
    sim.settle();
    let home = crate::shard::home_shard(CLIENT, super::SHARDS);
    let orphans = |sim: &Sim| -> Vec<u32> {
        (sim.nodes[1].to_shards[home].iter())
            .filter_map(|msg| match msg {
                ShardMsg::Orphan {
                    client_id, message, ..
                } if client_id == CLIENT => Some(super::number(message)),
                _ => None,
            })
            .collect()
    };
    assert!(
        orphans(&sim).is_empty(),
        "held until the promotion is answered"
    );
    sim.nodes[1].node.handle_promoted(CLIENT.into(), Some(12));
    sim.settle();
    assert_eq!(orphans(&sim), [7]);
    let adopted_first = sim.nodes[1].to_shards[home]
        .iter()
        .position(|msg| matches!(msg, ShardMsg::Adopt { .. }))
        < sim.nodes[1].to_shards[home]
            .iter()
            .position(|msg| matches!(msg, ShardMsg::Orphan { .. }));
    assert!(adopted_first, "the session exists when its orphan arrives");
    // n2, which keeps no copy of n0's, delivers none itself.
    assert!(
        (sim.nodes[2].to_shards.iter().flatten())
            .all(|msg| !matches!(msg, ShardMsg::Orphan { .. }))
    );
}
