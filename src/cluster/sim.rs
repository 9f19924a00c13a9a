//! A deterministic in-memory cluster for [`Node`]: several nodes joined by
//! links that keep each lane in order, interleave lanes by a seeded
//! generator, and can be cut and healed. Runs a partition scenario in
//! milliseconds; a failure prints its seed.
//!
//! The real transport (QUIC between `ringmq` processes) runs the same
//! scenarios in `tests/cluster.rs`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::node::{Frame, Lane, Node, NodeConfig, NodeOutput};
use super::settings::AckMode;
use crate::message::Message;
use crate::protocol::{LazyPublishProperties, QoS};
use crate::session::Ticket;
use crate::shard::mesh::{Confirmation, ShardMsg, StoredReply};
use crate::store::{OutboxOp, RestoredOutbox};

const SHARDS: usize = 2;

mod replication;
mod takeover;

struct SimNode {
    node: Node,
    incarnation: u64,
    /// What the node handed each of its shards.
    to_shards: Vec<Vec<ShardMsg>>,
    /// What it wrote to its outboxes on disk.
    stored: Vec<OutboxOp>,
    /// Claims it asked the ownership raft to make: shard, client id, token.
    claims: Vec<(usize, ByteString, u64)>,
    /// Promotions it asked for: the node gone, the client ids.
    promotions: Vec<(ByteString, Vec<ByteString>)>,
}

/// One direction of a link: its lanes, each in order.
type Lanes = Vec<(Lane, VecDeque<Frame>)>;

struct Sim {
    nodes: Vec<SimNode>,
    /// `links[a][b]`: whether a and b are connected.
    links: Vec<Vec<bool>>,
    /// Frames in flight from a to b, per lane: `in_flight[a][b]`.
    in_flight: Vec<Vec<Lanes>>,
    rng: StdRng,
    now: Instant,
    seed: u64,
}

impl SimNode {
    fn new(node: Node, incarnation: u64) -> SimNode {
        SimNode {
            node,
            incarnation,
            to_shards: (0..SHARDS).map(|_| Vec::new()).collect(),
            stored: Vec::new(),
            claims: Vec::new(),
            promotions: Vec::new(),
        }
    }
}

impl Sim {
    fn new(n: usize, seed: u64, ack: AckMode) -> Sim {
        Sim::with_stores(n, seed, ack, false)
    }

    fn with_stores(n: usize, seed: u64, ack: AckMode, stored_acks: bool) -> Sim {
        Sim::with_config(n, seed, |i| NodeConfig {
            stored_acks,
            ..config(i, 1, ack)
        })
    }

    /// A cluster whose node `i` runs with `config(i)`: with
    /// `stored_acks`, [`Sim::commit_store`] commits a node's shards' stores.
    fn with_config(n: usize, seed: u64, config: impl Fn(usize) -> NodeConfig) -> Sim {
        let now = Instant::now();
        let nodes = (0..n)
            .map(|i| SimNode::new(Node::new(config(i)), 1))
            .collect();
        let mut sim = Sim {
            nodes,
            links: vec![vec![false; n]; n],
            in_flight: (0..n)
                .map(|_| (0..n).map(|_| Vec::new()).collect())
                .collect(),
            rng: StdRng::seed_from_u64(seed),
            now,
            seed,
        };
        for a in 0..n {
            for b in (a + 1)..n {
                sim.connect(a, b);
            }
        }
        sim.settle();
        sim
    }

    fn connect(&mut self, a: usize, b: usize) {
        self.links[a][b] = true;
        self.links[b][a] = true;
        let (inc_a, inc_b) = (self.nodes[a].incarnation, self.nodes[b].incarnation);
        let now = self.now;
        self.nodes[a].node.handle_link_up(id(b), inc_b, now);
        self.nodes[b].node.handle_link_up(id(a), inc_a, now);
    }

    /// Cuts the link: frames in flight are lost, both ends see it drop.
    fn cut(&mut self, a: usize, b: usize) {
        self.links[a][b] = false;
        self.links[b][a] = false;
        self.in_flight[a][b].clear();
        self.in_flight[b][a].clear();
        let now = self.now;
        self.nodes[a].node.handle_link_down(&id(b), now);
        self.nodes[b].node.handle_link_down(&id(a), now);
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        let now = self.now;
        for node in &mut self.nodes {
            node.node.handle_timeout(now);
        }
    }

    /// Runs until no frame is in flight, delivering lanes in a seeded
    /// interleaving.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            self.collect_outputs();
            let mut pending = Vec::new();
            for a in 0..self.nodes.len() {
                for b in 0..self.nodes.len() {
                    for (lane_index, (_, frames)) in self.in_flight[a][b].iter().enumerate() {
                        if !frames.is_empty() {
                            pending.push((a, b, lane_index));
                        }
                    }
                }
            }
            if pending.is_empty() {
                return;
            }
            let (a, b, lane) = pending[self.rng.random_range(0..pending.len())];
            let frame = self.in_flight[a][b][lane]
                .1
                .pop_front()
                .expect("non-empty lane");
            self.nodes[b].node.handle_frame(&id(a), frame, self.now);
        }
        panic!("seed {}: the simulation did not settle", self.seed);
    }

    /// Delivers every frame in flight from `a` to `b`, nothing the other
    /// way.
    fn deliver_all(&mut self, a: usize, b: usize) {
        self.collect_outputs();
        for (_, frames) in std::mem::take(&mut self.in_flight[a][b]) {
            for frame in frames {
                self.nodes[b].node.handle_frame(&id(a), frame, self.now);
            }
        }
    }

    fn collect_outputs(&mut self) {
        for a in 0..self.nodes.len() {
            self.nodes[a].node.flush(self.now);
            while let Some(output) = self.nodes[a].node.poll_output() {
                match output {
                    NodeOutput::Send { peer, lane, frame } => {
                        let b = index(&peer);
                        if !self.links[a][b] {
                            continue;
                        }
                        let lanes = &mut self.in_flight[a][b];
                        match lanes.iter_mut().find(|(l, _)| *l == lane) {
                            Some((_, frames)) => frames.push_back(frame),
                            None => lanes.push((lane, VecDeque::from([frame]))),
                        }
                    }
                    NodeOutput::ToShard { shard, msg } => self.nodes[a].to_shards[shard].push(msg),
                    NodeOutput::Store(op) => self.nodes[a].stored.push(op),
                    NodeOutput::Claim {
                        shard,
                        client_id,
                        token,
                    } => self.nodes[a].claims.push((shard, client_id, token)),
                    NodeOutput::Promote { from, client_ids } => {
                        self.nodes[a].promotions.push((from, client_ids))
                    }
                    NodeOutput::Release { .. } | NodeOutput::CheckOwners { .. } => {}
                    NodeOutput::Disconnect { peer, reason } => {
                        panic!(
                            "seed {}: {} disconnected {peer}: {reason}",
                            self.seed,
                            id(a)
                        )
                    }
                }
            }
        }
    }

    fn shard_msg(&mut self, node: usize, shard: usize, msg: ShardMsg) {
        let now = self.now;
        self.nodes[node].node.handle_shard_msg(shard, msg, now);
    }

    fn subscribe(&mut self, node: usize, shard: usize, filter: &str) {
        self.shard_msg(
            node,
            shard,
            ShardMsg::RouteAdd {
                filter: filter.into(),
                from: shard,
            },
        );
    }

    fn unsubscribe(&mut self, node: usize, shard: usize, filter: &str) {
        self.shard_msg(
            node,
            shard,
            ShardMsg::RouteRemove {
                filter: filter.into(),
                from: shard,
            },
        );
    }

    /// Shard `shard` of node `node` commits its store: every barrier the
    /// node asked it for is passed.
    fn commit_store(&mut self, node: usize, shard: usize) {
        let mut tokens = Vec::new();
        self.nodes[node].to_shards[shard].retain(|msg| match msg {
            ShardMsg::StoreBarrier { token } => {
                tokens.push(*token);
                false
            }
            _ => true,
        });
        for token in tokens {
            self.shard_msg(node, shard, ShardMsg::StoreReached { token });
        }
    }

    /// Shard `shard` of node `node` gains its first member of `share`.
    fn join_group(&mut self, node: usize, shard: usize, share: &str) {
        self.shard_msg(
            node,
            shard,
            ShardMsg::SharedRouteAdd {
                share: share.into(),
                from: shard,
            },
        );
        self.settle();
    }

    /// Node `node`'s owner of `share` picks peer `peer` for message `n`.
    fn owner_picks(
        &mut self,
        node: usize,
        share: &str,
        peer: &str,
        n: u32,
        reply: Option<StoredReply>,
    ) {
        let owner = crate::shard::group_owner(share, SHARDS);
        let msg = ShardMsg::SharedDeliver {
            share: share.into(),
            client_id: peer.into(),
            message: message("jobs/a", n),
            online: true,
            reply,
        };
        self.shard_msg(node, owner, msg);
        self.settle();
    }

    fn publish(&mut self, node: usize, shard: usize, topic: &str, n: u32) {
        self.shard_msg(node, shard, ShardMsg::Publish(message(topic, n)));
    }

    /// The numbers of the messages node `node` handed its shards to
    /// deliver, in order, from all shards.
    fn delivered(&self, node: usize) -> Vec<u32> {
        self.nodes[node]
            .to_shards
            .iter()
            .flatten()
            .filter_map(|msg| match msg {
                ShardMsg::Publish(message) => Some(number(message)),
                _ => None,
            })
            .collect()
    }

    fn confirmed(&self, node: usize, shard: usize) -> Vec<Ticket> {
        self.nodes[node].to_shards[shard]
            .iter()
            .filter_map(|msg| match msg {
                ShardMsg::Confirm(c) => Some(c.ticket),
                _ => None,
            })
            .collect()
    }

    /// Whether node `node`'s shards were told that the cluster has
    /// subscribers for `filter` (and not told otherwise since).
    fn routes_to_cluster(&self, node: usize, filter: &str) -> bool {
        let mut present = false;
        for msg in &self.nodes[node].to_shards[0] {
            match msg {
                ShardMsg::RouteAdd { filter: f, .. } if f == filter => present = true,
                ShardMsg::RouteRemove { filter: f, .. } if f == filter => present = false,
                _ => {}
            }
        }
        present
    }
}

fn config(i: usize, incarnation: u64, ack: AckMode) -> NodeConfig {
    NodeConfig {
        node_id: id(i),
        incarnation,
        shards: SHARDS,
        ack,
        route_ack_timeout: Duration::from_secs(2),
        peer_buffer_bytes: 1 << 20,
        peer_hold: Duration::from_secs(300),
        stored_acks: false,
        durable_outboxes: false,
        replication_factor: 1,
    }
}

fn id(i: usize) -> ByteString {
    format!("n{i}").into()
}

fn index(id: &str) -> usize {
    id[1..].parse().expect("node ids are n<index>")
}

fn message(topic: &str, n: u32) -> Arc<Message> {
    Arc::new(Message {
        topic: topic.into(),
        payload: Bytes::from(n.to_be_bytes().to_vec()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: LazyPublishProperties::default(),
        publisher: "p".into(),
        expires_at: None,
        received_at: Instant::now(),
    })
}

fn number(message: &Message) -> u32 {
    u32::from_be_bytes(message.payload.as_ref().try_into().expect("4-byte payload"))
}

fn confirmation(ticket: u64) -> ShardMsg {
    ShardMsg::ConfirmAfter(Confirmation {
        key: 0,
        conn: 1,
        ticket: Ticket::nth(ticket),
    })
}

fn seeds() -> impl Iterator<Item = u64> {
    0..32
}

#[test]
fn a_publish_goes_only_to_nodes_with_a_matching_filter_once_per_node() {
    for seed in seeds() {
        let mut sim = Sim::new(3, seed, AckMode::Remote);
        // Overlapping filters on two shards of node 1, and on one shard:
        // still once per node, and once per shard.
        sim.subscribe(1, 0, "a/+");
        sim.subscribe(1, 0, "a/x");
        sim.subscribe(1, 1, "a/#");
        sim.subscribe(2, 0, "b/#");
        sim.settle();
        assert!(sim.routes_to_cluster(0, "a/+"), "seed {seed}");
        sim.publish(0, 0, "a/x", 7);
        sim.settle();
        assert_eq!(sim.delivered(1), vec![7, 7], "seed {seed}: once per shard");
        assert_eq!(sim.delivered(2), Vec::<u32>::new(), "seed {seed}");
        assert_eq!(
            sim.nodes[0].node.counters.forwarded_messages, 1,
            "seed {seed}"
        );
    }
}

#[test]
fn a_confirmation_waits_for_every_linked_peer_that_got_the_message() {
    for seed in seeds() {
        let mut sim = Sim::new(3, seed, AckMode::Remote);
        sim.subscribe(1, 0, "t");
        sim.subscribe(2, 0, "t");
        sim.settle();
        sim.publish(0, 1, "t", 1);
        sim.shard_msg(0, 1, confirmation(10));
        sim.collect_outputs();
        assert!(
            sim.confirmed(0, 1).is_empty(),
            "seed {seed}: confirmed before any ack"
        );
        sim.settle();
        assert_eq!(sim.confirmed(0, 1), vec![Ticket::nth(10)], "seed {seed}");
        // One frame to each of two peers, each acknowledged once.
        let round_trips = sim.nodes[0].node.counters.forward_ack_latency.count();
        assert_eq!(round_trips, 2, "seed {seed}");
    }
}

#[test]
fn with_stores_a_peer_acknowledges_in_order_once_its_stores_have_committed() {
    for seed in seeds() {
        let mut sim = Sim::with_stores(2, seed, AckMode::Remote, true);
        sim.subscribe(1, 0, "a");
        sim.subscribe(1, 1, "b");
        sim.settle();
        sim.publish(0, 1, "a", 1);
        sim.shard_msg(0, 1, confirmation(10));
        sim.settle();
        sim.publish(0, 1, "b", 2);
        sim.shard_msg(0, 1, confirmation(11));
        sim.settle();
        assert_eq!(sim.delivered(1), vec![1, 2], "seed {seed}");
        assert!(
            sim.confirmed(0, 1).is_empty(),
            "seed {seed}: before any commit"
        );
        // The second frame's store commits first: its acknowledgement
        // would cover the first, so it waits.
        sim.commit_store(1, 1);
        sim.settle();
        assert!(sim.confirmed(0, 1).is_empty(), "seed {seed}: out of order");
        sim.commit_store(1, 0);
        sim.settle();
        assert_eq!(
            sim.confirmed(0, 1),
            vec![Ticket::nth(10), Ticket::nth(11)],
            "seed {seed}"
        );
    }
}

#[test]
fn without_stores_to_wait_for_a_peer_acknowledges_on_receipt() {
    let mut sim = Sim::with_stores(2, 1, AckMode::Remote, false);
    sim.subscribe(1, 0, "a");
    sim.settle();
    sim.publish(0, 1, "a", 1);
    sim.shard_msg(0, 1, confirmation(10));
    sim.settle();
    assert_eq!(sim.confirmed(0, 1), vec![Ticket::nth(10)]);
    assert!(
        sim.nodes[1].to_shards[0]
            .iter()
            .all(|msg| !matches!(msg, ShardMsg::StoreBarrier { .. }))
    );
}

/// Node 0's outboxes on disk as its store would hold them after `ops`.
fn owed_on_disk(ops: &[OutboxOp]) -> Vec<RestoredOutbox> {
    let mut owed: Vec<(ByteString, u32, u64, Arc<Message>)> = Vec::new();
    for op in ops {
        match op {
            OutboxOp::Put {
                peer,
                stream,
                seq,
                message,
                ..
            } => owed.push((peer.clone(), *stream, *seq, message.clone())),
            OutboxOp::Ack {
                peer,
                stream,
                through,
            } => owed.retain(|(p, s, q, _)| !(p == peer && s == stream && q <= through)),
            OutboxOp::Remove { peer, stream, seq } => {
                owed.retain(|(p, s, q, _)| !(p == peer && s == stream && q == seq))
            }
            OutboxOp::Forget { peer } => owed.retain(|(p, ..)| p != peer),
            OutboxOp::Clear => owed.clear(),
        }
    }
    owed.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
    owed.into_iter()
        .map(|(peer, stream, _, message)| RestoredOutbox {
            peer,
            stream,
            share: None,
            message,
        })
        .collect()
}

#[test]
fn what_is_owed_to_an_unreachable_peer_is_on_disk_and_owed_again_after_a_restart() {
    for seed in seeds() {
        let durable = |i| NodeConfig {
            durable_outboxes: i == 0,
            ..config(i, 1, AckMode::Remote)
        };
        let mut sim = Sim::with_config(2, seed, durable);
        sim.subscribe(1, 0, "t");
        sim.settle();
        sim.publish(0, 0, "t", 1);
        sim.settle();
        // Delivered and acknowledged: nothing is owed any more.
        assert!(owed_on_disk(&sim.nodes[0].stored).is_empty(), "seed {seed}");
        sim.cut(0, 1);
        sim.publish(0, 0, "t", 2);
        sim.publish(0, 1, "t", 3);
        sim.shard_msg(
            0,
            0,
            ShardMsg::Publish({
                let mut m = (*message("t", 4)).clone();
                m.qos = QoS::AtMostOnce;
                Arc::new(m)
            }),
        );
        sim.collect_outputs();
        let owed = owed_on_disk(&sim.nodes[0].stored);
        assert_eq!(
            owed.iter().map(|o| number(&o.message)).collect::<Vec<_>>(),
            vec![2, 3],
            "seed {seed}: QoS 0 is not stored"
        );
        // Node 0 dies and comes back with what its disk holds.
        let config = NodeConfig {
            durable_outboxes: true,
            ..config(0, 2, AckMode::Remote)
        };
        sim.nodes[0] = SimNode::new(Node::new(config), 2);
        let now = sim.now;
        sim.nodes[0].node.restore_outboxes(owed, now);
        sim.connect(0, 1);
        sim.settle();
        // 2 and 3 came from two shards: two streams, each in order, not
        // ordered between them.
        let mut delivered = sim.delivered(1);
        delivered.sort_unstable();
        assert_eq!(delivered, vec![1, 2, 3], "seed {seed}");
        assert!(owed_on_disk(&sim.nodes[0].stored).is_empty(), "seed {seed}");
    }
}

#[test]
fn local_ack_mode_confirms_without_waiting_for_forwarded_messages() {
    let mut sim = Sim::new(2, 1, AckMode::Local);
    sim.subscribe(1, 0, "t");
    sim.settle();
    sim.publish(0, 0, "t", 1);
    sim.shard_msg(0, 0, confirmation(3));
    sim.collect_outputs();
    assert_eq!(sim.confirmed(0, 0), vec![Ticket::nth(3)]);
}

#[test]
fn a_subscription_is_confirmed_only_once_every_peer_has_the_route() {
    for seed in seeds() {
        let mut sim = Sim::new(3, seed, AckMode::Remote);
        sim.subscribe(2, 1, "new/topic");
        sim.shard_msg(2, 1, confirmation(5));
        sim.collect_outputs();
        assert!(sim.confirmed(2, 1).is_empty(), "seed {seed}");
        sim.settle();
        assert_eq!(sim.confirmed(2, 1), vec![Ticket::nth(5)], "seed {seed}");
        // Causality: by the time the SUBACK could go, both peers route to it.
        assert!(sim.routes_to_cluster(0, "new/topic"), "seed {seed}");
        assert!(sim.routes_to_cluster(1, "new/topic"), "seed {seed}");
    }
}

#[test]
fn a_route_wait_on_a_silent_peer_times_out_and_is_counted() {
    let mut sim = Sim::new(2, 3, AckMode::Remote);
    sim.subscribe(1, 0, "t");
    sim.shard_msg(1, 0, confirmation(1));
    // The delta is produced but never delivered: drop everything in flight.
    sim.collect_outputs();
    sim.in_flight[1][0].clear();
    sim.advance(Duration::from_secs(3));
    sim.collect_outputs();
    assert_eq!(sim.confirmed(1, 0), vec![Ticket::nth(1)]);
    assert_eq!(sim.nodes[1].node.counters.route_ack_timeouts, 1);
}

#[test]
fn a_partitioned_peer_gets_everything_once_and_in_order_after_the_heal() {
    for seed in seeds() {
        let mut sim = Sim::new(3, seed, AckMode::Remote);
        sim.subscribe(2, 0, "t/#");
        sim.settle();
        let mut expected = Vec::new();
        for n in 0..50 {
            sim.publish(0, 0, "t/a", n);
            expected.push(n);
            if n == 20 {
                // The peer takes what is on the wire, but its
                // acknowledgements are lost with the link: the heal
                // resends them, and only deduplication saves the count.
                sim.deliver_all(0, 2);
                sim.collect_outputs();
                sim.cut(0, 2);
            }
            if n % 7 == 0 {
                sim.settle();
            }
        }
        // Confirmations do not wait for the unreachable peer.
        sim.shard_msg(0, 0, confirmation(99));
        sim.settle();
        assert_eq!(sim.confirmed(0, 0), vec![Ticket::nth(99)], "seed {seed}");
        sim.advance(Duration::from_secs(10));
        sim.connect(0, 2);
        sim.settle();
        assert_eq!(
            sim.delivered(2),
            expected,
            "seed {seed}: lost, duplicated or reordered"
        );
    }
}

#[test]
fn a_lost_route_delta_is_repaired_by_a_resync() {
    let mut sim = Sim::new(2, 5, AckMode::Remote);
    sim.subscribe(1, 0, "a");
    sim.collect_outputs();
    // Lose the delta for "a" on the wire, keep the link.
    sim.in_flight[1][0].clear();
    sim.subscribe(1, 0, "b");
    sim.settle();
    assert!(
        sim.routes_to_cluster(0, "a"),
        "the resync brought the lost filter"
    );
    assert!(sim.routes_to_cluster(0, "b"));
}

#[test]
fn unsubscribing_withdraws_the_route_when_the_last_shard_leaves() {
    let mut sim = Sim::new(2, 7, AckMode::Remote);
    sim.subscribe(1, 0, "t");
    sim.subscribe(1, 1, "t");
    sim.settle();
    sim.unsubscribe(1, 0, "t");
    sim.settle();
    assert!(sim.routes_to_cluster(0, "t"), "shard 1 still subscribes");
    sim.unsubscribe(1, 1, "t");
    sim.settle();
    assert!(!sim.routes_to_cluster(0, "t"));
    sim.publish(0, 0, "t", 1);
    sim.settle();
    assert!(sim.delivered(1).is_empty());
}

#[test]
fn a_restarted_peer_loses_its_old_routes_and_takes_fresh_numbers() {
    let mut sim = Sim::new(2, 11, AckMode::Remote);
    sim.subscribe(1, 0, "t");
    sim.settle();
    sim.publish(0, 0, "t", 1);
    sim.settle();
    sim.cut(0, 1);
    // Node 1 restarts: new incarnation, no subscriptions.
    sim.nodes[1] = SimNode::new(Node::new(config(1, 2, AckMode::Remote)), 2);
    sim.connect(0, 1);
    sim.settle();
    assert!(
        !sim.routes_to_cluster(0, "t"),
        "the old incarnation's filter is withdrawn"
    );
    sim.subscribe(1, 0, "t");
    sim.settle();
    sim.publish(0, 0, "t", 2);
    sim.settle();
    assert_eq!(sim.delivered(1), vec![2]);
}

#[test]
fn a_peer_unreachable_past_the_hold_is_forgotten_and_a_leaving_one_at_once() {
    let mut sim = Sim::new(3, 13, AckMode::Remote);
    sim.subscribe(1, 0, "t");
    sim.subscribe(2, 0, "u");
    sim.settle();
    sim.cut(0, 1);
    sim.advance(Duration::from_secs(299));
    assert!(sim.nodes[0].node.knows("n1"));
    sim.advance(Duration::from_secs(2));
    assert!(!sim.nodes[0].node.knows("n1"));
    assert_eq!(sim.nodes[0].node.counters.peers_expired, 1);
    sim.collect_outputs();
    assert!(!sim.routes_to_cluster(0, "t"));
    sim.nodes[2].node.handle_leave();
    sim.settle();
    assert!(!sim.nodes[0].node.knows("n2"));
    assert!(!sim.routes_to_cluster(0, "u"));
}

/// Node 0 forgets node 1 (its `peer_hold` ran out) while node 1 still
/// holds node 0, as when node 1 is frozen (SIGSTOP) past node 0's hold:
/// node 1 sees the link drop only when it resumes. Node 0 must go on
/// numbering where it left off: numbering from 1 again, node 1, which took
/// numbers up to 10 from the same incarnation, dropped the new ones as
/// duplicates and acknowledged them (lost, their PUBACKs sent).
#[test]
fn a_peer_that_forgot_us_past_its_hold_still_delivers_after_the_link_returns() {
    let mut sim = Sim::new(2, 7, AckMode::Remote);
    sim.subscribe(1, 0, "t");
    sim.settle();
    for n in 0..10 {
        sim.publish(0, 0, "t", n);
    }
    sim.settle();
    sim.cut(0, 1);
    // Only node 0's hold runs out.
    let later = sim.now + Duration::from_secs(301);
    sim.nodes[0].node.handle_timeout(later);
    assert!(!sim.nodes[0].node.knows("n1"));
    assert!(sim.nodes[1].node.knows("n0"));
    sim.connect(0, 1);
    sim.settle();
    for n in 10..20 {
        sim.publish(0, 0, "t", n);
    }
    sim.settle();
    assert_eq!(sim.delivered(1), (0..20).collect::<Vec<_>>());
}

#[test]
fn a_full_outbox_drops_qos0_first_and_counts() {
    let mut sim = Sim::new(2, 17, AckMode::Remote);
    sim.subscribe(1, 0, "t");
    sim.settle();
    sim.cut(0, 1);
    let big = |n: u32, qos| {
        let mut payload = vec![0u8; 100_000];
        payload[..4].copy_from_slice(&n.to_be_bytes());
        Arc::new(Message {
            topic: "t".into(),
            payload: Bytes::from(payload),
            qos,
            retain: false,
            properties: LazyPublishProperties::default(),
            publisher: "p".into(),
            expires_at: None,
            received_at: Instant::now(),
        })
    };
    for n in 0..20 {
        let qos = if n % 2 == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        sim.shard_msg(0, 0, ShardMsg::Publish(big(n, qos)));
    }
    let stats = &sim.nodes[0].node.peer_stats()[0];
    assert!(
        stats.outbox_bytes <= 1 << 20,
        "bounded: {}",
        stats.outbox_bytes
    );
    assert_eq!(stats.dropped_qos0, 10, "every QoS 0 message went first");
    assert_eq!(stats.dropped_qos12, 0, "QoS 1 fits once QoS 0 is gone");
    sim.connect(0, 1);
    sim.settle();
    let delivered: Vec<u32> = sim.nodes[1].to_shards[0]
        .iter()
        .filter_map(|m| match m {
            ShardMsg::Publish(message) => Some(u32::from_be_bytes(
                message.payload[..4].try_into().expect("4 bytes"),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, vec![1, 3, 5, 7, 9, 11, 13, 15, 17, 19]);
}

#[test]
fn retained_messages_converge_last_writer_wins_after_a_partition() {
    let mut sim = Sim::new(2, 19, AckMode::Remote);
    sim.cut(0, 1);
    let retained = |n: u32| {
        let mut message = (*message("r", n)).clone();
        message.retain = true;
        Arc::new(message)
    };
    sim.shard_msg(0, 0, ShardMsg::Retain(retained(1)));
    std::thread::sleep(Duration::from_millis(2));
    sim.shard_msg(1, 0, ShardMsg::Retain(retained(2)));
    sim.connect(0, 1);
    sim.settle();
    let last_retained = |sim: &Sim, node: usize| {
        sim.nodes[node].to_shards[0]
            .iter()
            .filter_map(|m| match m {
                ShardMsg::Retain(message) => Some(number(message)),
                _ => None,
            })
            .last()
    };
    // Node 0 takes node 1's later write; node 1 keeps its own.
    assert_eq!(last_retained(&sim, 0), Some(2));
    assert_eq!(last_retained(&sim, 1), None);
}

#[test]
fn a_shared_group_member_on_a_peer_is_one_member_here_and_gets_messages_to_pass_on() {
    let mut sim = Sim::new(2, 23, AckMode::Remote);
    let share = "$share/g/jobs/+";
    sim.join_group(1, 1, share);
    // Node 0's shards route the group's messages to its owner, and the
    // owner counts node 1 as one member.
    let owner = crate::shard::group_owner(share, SHARDS);
    let joined = sim.nodes[0].to_shards[owner].iter().any(|msg| {
        matches!(msg, ShardMsg::SharedJoin { member, .. }
            if member.shard == SHARDS && member.client_id == "n1")
    });
    assert!(joined, "node 1 joined the owner's group as a member");
    for shard in 0..SHARDS {
        let routed = sim.nodes[0].to_shards[shard].iter().any(|msg| {
            matches!(msg, ShardMsg::SharedRouteAdd { share: s, from } if s == share && *from == SHARDS)
        });
        assert!(routed, "shard {shard} routes the group to the cluster");
    }
    // The owner picks node 1: the message crosses, numbered, and node 1's
    // owner gets it to give to a member of its own.
    sim.owner_picks(0, share, "n1", 42, None);
    let owner_there = crate::shard::group_owner(share, SHARDS);
    let handed: Vec<u32> = sim.nodes[1].to_shards[owner_there]
        .iter()
        .filter_map(|msg| match msg {
            ShardMsg::SharedPublish {
                message,
                local_only: true,
                ..
            } => Some(number(message)),
            _ => None,
        })
        .collect();
    assert_eq!(handed, vec![42]);
    // The last member there leaves: node 0's owner forgets node 1.
    sim.shard_msg(
        1,
        1,
        ShardMsg::SharedRouteRemove {
            share: share.into(),
            from: 1,
        },
    );
    sim.settle();
    let left = sim.nodes[0].to_shards[owner]
        .iter()
        .any(|msg| matches!(msg, ShardMsg::SharedLeave { member, .. } if member.client_id == "n1"));
    assert!(left);
}

#[test]
fn a_shared_message_relayed_to_a_peer_answers_its_publisher_once_stored_there() {
    let mut sim = Sim::with_stores(2, 31, AckMode::Remote, true);
    let share = "$share/g/jobs/+";
    sim.join_group(1, 1, share);
    // Node 0's owner picked node 1 for a message whose publisher is on
    // another shard than the owner: the answer goes to the publisher.
    let owner = crate::shard::group_owner(share, SHARDS);
    let publisher = (owner + 1) % SHARDS;
    let held = Confirmation {
        key: 3,
        conn: 1,
        ticket: Ticket::nth(5),
    };
    sim.owner_picks(
        0,
        share,
        "n1",
        42,
        Some(StoredReply::Confirm(publisher, held)),
    );
    // Node 1's owner gets the message with the wait for its landing.
    let owner_there = crate::shard::group_owner(share, SHARDS);
    let token = sim.nodes[1].to_shards[owner_there]
        .iter()
        .find_map(|msg| match msg {
            ShardMsg::SharedPublish {
                reply: Some(StoredReply::Reached(place, token)),
                ..
            } if *place == SHARDS => Some(*token),
            _ => None,
        })
        .expect("the message carries the acknowledgement's wait");
    assert!(sim.confirmed(0, publisher).is_empty(), "before the store");
    // Wherever it landed, that shard's store commits and says so.
    sim.shard_msg(
        1,
        (owner_there + 1) % SHARDS,
        ShardMsg::StoreReached { token },
    );
    sim.settle();
    assert_eq!(sim.confirmed(0, publisher), vec![Ticket::nth(5)]);
    assert!(sim.confirmed(0, owner).is_empty(), "not the owner's answer");
}

#[test]
fn a_suspected_peer_is_not_waited_for_but_still_gets_its_messages() {
    let mut sim = Sim::new(2, 29, AckMode::Remote);
    sim.subscribe(1, 0, "t");
    sim.settle();
    sim.publish(0, 0, "t", 1);
    sim.shard_msg(0, 0, confirmation(7));
    sim.collect_outputs();
    assert!(sim.confirmed(0, 0).is_empty());
    // A probe went unanswered: the publisher is released at once.
    let now = sim.now;
    sim.nodes[0].node.handle_peer_suspect("n1", now);
    sim.collect_outputs();
    assert_eq!(sim.confirmed(0, 0), vec![Ticket::nth(7)]);
    sim.publish(0, 0, "t", 2);
    sim.shard_msg(0, 0, confirmation(8));
    sim.collect_outputs();
    assert_eq!(sim.confirmed(0, 0), vec![Ticket::nth(7), Ticket::nth(8)]);
    // It was only slow: everything arrives, once.
    sim.nodes[0].node.handle_peer_alive("n1");
    sim.settle();
    assert_eq!(sim.delivered(1), vec![1, 2]);
}
