//! A deterministic simulator for [`Membership`]: N nodes, a virtual clock,
//! and a network that drops, delays (and so reorders) and partitions.
//! Everything random comes from one seed, so a failing run reproduces by
//! running again with the seed it printed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::{MemberEvent, Membership, MembershipConfig, NodeIdentity};

/// A packet in flight, ordered by delivery time then send order.
struct Flight {
    at: Instant,
    seq: u64,
    from: SocketAddr,
    to: SocketAddr,
    data: Bytes,
}

impl PartialEq for Flight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Flight {}
impl PartialOrd for Flight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Flight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

pub(super) struct Sim {
    pub seed: u64,
    rng: StdRng,
    pub start: Instant,
    pub now: Instant,
    pub config: MembershipConfig,
    /// `None`: not started yet, or killed.
    nodes: Vec<Option<Membership>>,
    /// What each slot calls itself (kept after a kill, for assertions).
    pub ids: Vec<NodeIdentity>,
    /// Every event each slot emitted, with its time since start.
    pub events: Vec<Vec<(Duration, MemberEvent)>>,
    flights: BinaryHeap<Reverse<Flight>>,
    seq: u64,
    /// Fraction of packets dropped.
    pub loss: f64,
    /// One-way delay, uniform in this range; overlapping ranges reorder.
    pub delay: (Duration, Duration),
    cut: HashSet<(SocketAddr, SocketAddr)>,
    pub sent: u64,
}

pub(super) fn addr(i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1 + i as u8), 7000))
}

impl Sim {
    pub fn new(seed: u64, config: MembershipConfig) -> Self {
        let start = Instant::now();
        Self {
            seed,
            rng: StdRng::seed_from_u64(seed),
            start,
            now: start,
            config,
            nodes: Vec::new(),
            ids: Vec::new(),
            events: Vec::new(),
            flights: BinaryHeap::new(),
            seq: 0,
            loss: 0.0,
            delay: (Duration::from_millis(1), Duration::from_millis(20)),
            cut: HashSet::new(),
            sent: 0,
        }
    }

    /// Adds slot `n` (not started) named `node{n}` at `addr(n)`.
    pub fn add(&mut self) -> usize {
        let n = self.nodes.len();
        self.nodes.push(None);
        self.ids.push(NodeIdentity {
            node_id: format!("node{n}"),
            addr: addr(n),
            incarnation: 1,
        });
        self.events.push(Vec::new());
        n
    }

    /// Starts (or restarts) slot `n` as `id`.
    pub fn start_as(&mut self, n: usize, id: NodeIdentity) {
        let rng_seed = self.rng.random::<u64>();
        let node = Membership::new(id.clone(), self.config.clone(), rng_seed, self.now)
            .unwrap_or_else(|e| panic!("seed {}: config: {e}", self.seed));
        self.ids[n] = id;
        self.nodes[n] = Some(node);
    }

    pub fn start(&mut self, n: usize) {
        let id = self.ids[n].clone();
        self.start_as(n, id);
    }

    /// `n` nodes, all started, each joining through slot 0.
    pub fn cluster(seed: u64, config: MembershipConfig, n: usize) -> Self {
        let mut sim = Self::new(seed, config);
        for i in 0..n {
            sim.add();
            sim.start(i);
        }
        for i in 1..n {
            sim.join(i, 0);
        }
        sim
    }

    pub fn join(&mut self, n: usize, seed_slot: usize) {
        let now = self.now;
        let seed = addr(seed_slot);
        if let Some(node) = self.nodes[n].as_mut() {
            node.handle_join(seed, now);
        }
    }

    pub fn kill(&mut self, n: usize) {
        self.nodes[n] = None;
    }

    pub fn leave(&mut self, n: usize) {
        let now = self.now;
        if let Some(node) = self.nodes[n].as_mut() {
            node.handle_leave(now);
        }
        self.collect();
    }

    pub fn node(&self, n: usize) -> &Membership {
        match &self.nodes[n] {
            Some(node) => node,
            None => panic!("seed {}: node {n} is not running", self.seed),
        }
    }

    pub fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&n| self.nodes[n].is_some())
    }

    pub fn cut(&mut self, a: usize, b: usize) {
        self.cut
            .insert((addr(a).min(addr(b)), addr(a).max(addr(b))));
    }

    pub fn heal(&mut self, a: usize, b: usize) {
        self.cut
            .remove(&(addr(a).min(addr(b)), addr(a).max(addr(b))));
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until, |_| false);
    }

    /// Runs until `done` holds (true) or `deadline` passes (false).
    pub fn run_until(&mut self, deadline: Instant, mut done: impl FnMut(&Sim) -> bool) -> bool {
        loop {
            self.collect();
            if done(self) {
                return true;
            }
            let next_flight = self.flights.peek().map(|Reverse(f)| f.at);
            let next_timer = self
                .nodes
                .iter()
                .flatten()
                .filter_map(|n| n.poll_timeout())
                .min();
            let next = match (next_flight, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => deadline,
                },
            };
            if next > deadline {
                self.now = deadline;
                return done(self);
            }
            self.now = self.now.max(next);
            let now = self.now;
            while self.flights.peek().is_some_and(|Reverse(f)| f.at <= now) {
                let Some(Reverse(f)) = self.flights.pop() else {
                    break;
                };
                if self.cut.contains(&(f.from.min(f.to), f.from.max(f.to))) {
                    continue;
                }
                let target = self
                    .nodes
                    .iter_mut()
                    .flatten()
                    .find(|n| n.identity().addr == f.to);
                if let Some(node) = target {
                    // Errors are dropped packets, as the runtime would.
                    let _ = node.handle_data(f.from, &f.data, now);
                }
            }
            for node in self.nodes.iter_mut().flatten() {
                if node.poll_timeout().is_some_and(|t| t <= now) {
                    node.handle_timeout(now);
                }
            }
        }
    }

    /// Moves packets from nodes into the network and records events.
    fn collect(&mut self) {
        let now = self.now;
        let elapsed = self.elapsed();
        for i in 0..self.nodes.len() {
            let Some(node) = self.nodes[i].as_mut() else {
                continue;
            };
            let from = node.identity().addr;
            while let Some(event) = node.poll_event() {
                self.events[i].push((elapsed, event));
            }
            while let Some((to, data)) = node.poll_transmit() {
                self.sent += 1;
                if self.rng.random::<f64>() < self.loss {
                    continue;
                }
                let (lo, hi) = self.delay;
                let micros = self
                    .rng
                    .random_range(lo.as_micros() as u64..=hi.as_micros() as u64);
                self.seq += 1;
                self.flights.push(Reverse(Flight {
                    at: now + Duration::from_micros(micros),
                    seq: self.seq,
                    from,
                    to,
                    data,
                }));
            }
        }
    }

    /// Whether every running node sees exactly the other running nodes
    /// (their current identities) as alive.
    pub fn converged(&self) -> bool {
        let live: Vec<usize> = self.live().collect();
        live.iter().all(|&i| {
            let node = self.node(i);
            let mut seen: Vec<NodeIdentity> = node.members().cloned().collect();
            seen.sort_by(|a, b| a.node_id.cmp(&b.node_id));
            let mut want: Vec<NodeIdentity> = live
                .iter()
                .filter(|&&j| j != i)
                .map(|&j| self.node(j).identity().clone())
                .collect();
            want.sort_by(|a, b| a.node_id.cmp(&b.node_id));
            node.counts().suspect == 0 && seen == want
        })
    }

    /// The first time slot `n` emitted an event matching `f`.
    pub fn first_event(
        &self,
        n: usize,
        f: impl Fn(&MemberEvent) -> bool,
    ) -> Option<(Duration, MemberEvent)> {
        self.events[n].iter().find(|(_, e)| f(e)).cloned()
    }
}
