//! Cluster membership by gossip: who is in the cluster, who is suspected,
//! who is gone, and whether someone else claims our node id.
//!
//! # Why foca
//!
//! The SWIM protocol (random probes, indirect probes through other
//! members, suspicion before death, piggybacked gossip) comes from
//! [`foca`]. foca is sans-IO: it owns no socket, spawns no task and reads
//! no clock; it hands back "send these bytes to that member" and "call me
//! back in this long", so it fits a loop we drive ourselves, on our own
//! thread, and runs unchanged in a simulated network. chitchat, the other
//! candidate, needs tokio and owns its UDP socket; our packets travel as
//! QUIC datagrams over the cluster's mutually-authenticated connections
//! (so membership is authenticated by TLS), which chitchat cannot use.
//!
//! [`Membership`] wraps foca in the project's shape: inputs `handle_*`,
//! outputs `poll_*`, every call takes `now`, and the timers foca asks for
//! are kept here and fired by [`Membership::handle_timeout`].
//!
//! # Identities
//!
//! A [`NodeIdentity`] is `(node_id, addr, incarnation)`. foca keys its
//! member table by [`foca::Identity::addr`], which for us is the *node id*,
//! not the socket address: two identities with the same node id are the
//! same node, and the one with the higher `(incarnation, addr)` wins.
//! A restarted process starts with a higher incarnation (the runtime uses
//! the start time), so it replaces its previous identity everywhere it is
//! heard of, whatever address it now has, and the old one is reported as
//! [`MemberEvent::Replaced`] instead of lingering until probes fail. When
//! the cluster wrongly declares us down (a partition, a long pause) foca
//! calls [`foca::Identity::renew`], which bumps the incarnation, and we
//! rejoin as a new identity.
//!
//! # Restart or duplicate?
//!
//! Both look the same on paper: one node id, two identities. The
//! difference is that a restarted process's predecessor is dead, so it
//! stops sending. The rule, applied to packets received *directly* (never
//! to gossip about third parties), keyed by the transport address they
//! came from:
//!
//! > if two different source addresses claim the same node id, and both
//! > are heard from more than `duplicate_grace` after the later of them
//! > was first heard, two processes are alive: [`MemberEvent::DuplicateNodeId`].
//!
//! A dead predecessor's last packets are in flight for at most one network
//! delay, far shorter than the grace, so a restart never trips the rule.
//! Two live processes both keep talking (each keeps probing, and each is
//! told it is down and renews, over and over), so the rule trips within
//! about `duplicate_grace`. An address silent for longer than the grace
//! starts afresh when heard again, so a node that moves back to an old
//! address is not mistaken for a duplicate. When the node id is ours, the
//! runtime must refuse to go on.
//!
//! # Leaving vs dying
//!
//! foca spreads a graceful leave as "down", indistinguishable from death.
//! [`Membership::handle_leave`] therefore also sends a small `Leave`
//! notice to every member directly; a member that got it reports
//! [`MemberEvent::Left`], while a member that only hears the gossip (the
//! notice was lost) reports [`MemberEvent::Down`].
//!
//! # Wire format
//!
//! One tag byte, then:
//! * `0` a foca packet;
//! * `1` `Join`: "this is me", sent to a seed known only by address; the
//!   seed answers with a foca announce, after which foca takes over;
//! * `2` `Leave`: "I am leaving", a foca member record;
//! * `3` a foca packet from a node that is leaving: it carries the news of
//!   its own departure, which without the tag would read as a death.
//!
//! # Measured
//!
//! In the simulator (`sim.rs`; 5 nodes, 1–20 ms one-way delay, default
//! 500 ms probe interval and 3 s suspicion): a cluster joined through one
//! seed converges in about 0.25 s; a killed node is down on every other
//! node after 4.4 s typically and 5.4 s at worst over 40 seeds (the tests
//! assert under 6 probe intervals plus the suspicion, 6 s); 120 s at 20%
//! packet loss raise about 250 suspicions, all refuted, and no node goes
//! down; a 2|3 partition held for 15 s re-merges 5 to 10 s after it heals
//! (through `announce_down_interval`); a second process with a taken node
//! id is reported about 2.5 s after it starts.
//!
//! # A foca 2.0.0 quirk we work around
//!
//! With `notify_down_members`, foca sends `TurnUndead` ("you are down") to
//! a member when its suspicion timer fires, even when the member refuted
//! the suspicion in time (it checks that the member exists, not that the
//! down transition happened). The member then renews its identity, and
//! every refuted suspicion would become a spurious `Replaced`. We drop an
//! outgoing `TurnUndead` whose destination is still alive or suspect in
//! our own table; the legitimate ones (to a member we hold as down, or to
//! a superseded identity) still go out, and partitions still heal.

#[cfg(test)]
mod sim;

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use foca::{
    AccumulatingRuntime, Codec, Foca, Member, NoCustomBroadcast, OwnedNotification, PostcardCodec,
    State, Timer,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

const TAG_FOCA: u8 = 0;
const TAG_JOIN: u8 = 1;
const TAG_LEAVE: u8 = 2;
const TAG_FOCA_LEAVING: u8 = 3;

/// A node as membership knows it: a restarted node is a new incarnation,
/// so it is a new identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// Unique in the cluster; what foca keys members by.
    pub node_id: String,
    /// Where peers send this node's packets (its advertised QUIC address).
    pub addr: SocketAddr,
    /// Higher wins: the runtime starts it at the process start time so a
    /// restart outranks the previous run; `renew` adds one.
    pub incarnation: u64,
}

impl NodeIdentity {
    /// The order that decides which of two identities with one node id is
    /// kept. The address breaks ties so the order is total and both sides
    /// of a conflict agree on the winner.
    fn rank(&self) -> (u64, SocketAddr) {
        (self.incarnation, self.addr)
    }
}

impl foca::Identity for NodeIdentity {
    // The node id, not the socket address: see the module doc.
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            node_id: self.node_id.clone(),
            addr: self.addr,
            incarnation: self.incarnation.checked_add(1)?,
        })
    }

    fn addr(&self) -> String {
        self.node_id.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.rank() > adversary.rank()
    }
}

/// Timing of the gossip protocol. Detection of a crashed node takes a few
/// probe intervals (until someone probes it) plus `suspect_timeout`.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// How often this node probes one random member.
    pub probe_interval: Duration,
    /// How long a direct probe waits before asking others to probe
    /// indirectly; must be below `probe_interval`.
    pub probe_rtt: Duration,
    /// How long a suspected member has to refute before it is down. This
    /// is what keeps one lost packet from evicting a node.
    pub suspect_timeout: Duration,
    /// How many members relay an indirect probe.
    pub indirect_probes: usize,
    /// How often pending updates are pushed to `gossip_fanout` members,
    /// on top of what rides on probes.
    pub gossip_interval: Duration,
    pub gossip_fanout: usize,
    /// How many times each update is sent; more survives more loss.
    pub max_transmissions: u8,
    /// How often we ask a random member for its member list, so a large
    /// cluster is learnt in full.
    pub announce_interval: Duration,
    /// How often we announce to members we believe down: this is what
    /// re-merges the two sides of a healed partition.
    pub announce_down_interval: Duration,
    /// How often seeds are contacted again while we have no member.
    pub rejoin_interval: Duration,
    /// See the module doc: how long two addresses may overlap before a
    /// shared node id counts as a duplicate. Longer than any network delay.
    pub duplicate_grace: Duration,
    /// Largest packet produced and accepted; leaves room for QUIC's
    /// datagram overhead under a 1200-byte path MTU.
    pub max_packet_size: usize,
}

impl MembershipConfig {
    /// Defaults derived from the two settings operators tune.
    pub fn new(probe_interval: Duration, suspect_timeout: Duration) -> Self {
        Self {
            probe_interval,
            probe_rtt: probe_interval * 2 / 5,
            suspect_timeout,
            indirect_probes: 3,
            gossip_interval: (probe_interval * 2 / 5).max(Duration::from_millis(1)),
            gossip_fanout: 3,
            max_transmissions: 8,
            announce_interval: probe_interval * 20,
            announce_down_interval: probe_interval * 10,
            rejoin_interval: probe_interval * 2,
            duplicate_grace: probe_interval * 4,
            max_packet_size: 1100,
        }
    }

    fn to_foca(&self) -> Result<foca::Config, MembershipError> {
        let nz = |n: usize, what: &'static str| {
            NonZeroUsize::new(n).ok_or(MembershipError::InvalidConfig(what))
        };
        if self.probe_rtt.is_zero() || self.probe_rtt >= self.probe_interval {
            return Err(MembershipError::InvalidConfig(
                "probe_rtt must be above zero and below probe_interval",
            ));
        }
        for (d, what) in [
            (self.suspect_timeout, "suspect_timeout is zero"),
            (self.gossip_interval, "gossip_interval is zero"),
            (self.announce_interval, "announce_interval is zero"),
            (
                self.announce_down_interval,
                "announce_down_interval is zero",
            ),
            (self.rejoin_interval, "rejoin_interval is zero"),
        ] {
            if d.is_zero() {
                return Err(MembershipError::InvalidConfig(what));
            }
        }
        let mut c = foca::Config::simple();
        c.probe_period = self.probe_interval;
        c.probe_rtt = self.probe_rtt;
        c.num_indirect_probes = nz(self.indirect_probes, "indirect_probes is zero")?;
        c.max_transmissions = NonZeroU8::new(self.max_transmissions)
            .ok_or(MembershipError::InvalidConfig("max_transmissions is zero"))?;
        c.suspect_to_down_after = self.suspect_timeout;
        // Renewed identities replace old ones in place, so the table stays
        // bounded by the number of node ids; a day of memory of the dead is
        // foca's default and keeps stale updates from resurrecting them.
        c.remove_down_after = Some(Duration::from_secs(24 * 3600));
        c.max_packet_size = nz(self.max_packet_size, "max_packet_size is zero")?;
        // Tells a member we declared down, so it renews and comes back
        // instead of talking into the void: needed to heal partitions.
        c.notify_down_members = true;
        c.periodic_announce = Some(foca::PeriodicParams {
            frequency: self.announce_interval,
            num_members: NonZeroUsize::MIN,
        });
        c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: self.announce_down_interval,
            num_members: nz(2, "")?,
        });
        c.periodic_gossip = Some(foca::PeriodicParams {
            frequency: self.gossip_interval,
            num_members: nz(self.gossip_fanout, "gossip_fanout is zero")?,
        });
        Ok(c)
    }
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_millis(3000))
    }
}

/// What changed in the cluster, in the order we learnt it. Each identity
/// goes `Joined`, then any number of `Suspect`/`Alive`, then at most one of
/// `Down`, `Left` or `Replaced`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// A member we did not know is up.
    Joined(NodeIdentity),
    /// It missed a probe; it is still a member until `suspect_timeout`.
    Suspect(NodeIdentity),
    /// It refuted the suspicion.
    Alive(NodeIdentity),
    /// It stopped answering (or we heard so) and is out.
    Down(NodeIdentity),
    /// It told us it was leaving.
    Left(NodeIdentity),
    /// The same node came back as a newer identity (restart, or rejoin after
    /// being declared down): `old` is gone, `new` is a member.
    Replaced {
        old: NodeIdentity,
        new: NodeIdentity,
    },
    /// Two live processes claim `theirs.node_id`: `theirs` just spoke,
    /// `other` is the other address still speaking. If the node id is ours
    /// the runtime must refuse to run.
    DuplicateNodeId {
        theirs: NodeIdentity,
        other: SocketAddr,
    },
    /// We are part of a cluster (first join, or again after being alone or
    /// renewing our identity).
    JoinedCluster,
    /// Every member we knew is gone; seeds are contacted again.
    Isolated,
    /// The cluster declared us down (a partition, a pause, or a node with
    /// our node id); we go on as this new identity and rejoin.
    Renewed(NodeIdentity),
}

/// For the `ringmq_cluster_members{state}` gauge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberCounts {
    pub alive: usize,
    pub suspect: usize,
    pub down: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("empty membership packet")]
    Empty,
    #[error("unknown membership packet tag {0}")]
    UnknownTag(u8),
    #[error("membership packet of {0} bytes is too large")]
    TooLarge(usize),
    #[error("malformed membership packet")]
    Malformed,
    #[error("invalid membership config: {0}")]
    InvalidConfig(&'static str),
    #[error(transparent)]
    Foca(#[from] foca::Error),
}

/// A timer foca asked for, ordered by due time, then foca's own order
/// (an indirect probe before the next probe), then submission.
#[derive(Debug)]
struct Pending {
    due: Instant,
    seq: u64,
    timer: Timer<NodeIdentity>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, &self.timer, self.seq).cmp(&(other.due, &other.timer, other.seq))
    }
}

/// When we have heard from one source address claiming a node id.
#[derive(Debug, Clone, Copy)]
struct Heard {
    first: Instant,
    last: Instant,
}

/// Our last report about a node id, to turn foca's table into events.
#[derive(Debug)]
struct Seen {
    id: NodeIdentity,
    state: State,
    generation: u64,
}

type FocaInstance = Foca<NodeIdentity, PostcardCodec, StdRng, NoCustomBroadcast>;

/// The membership state machine of one node. Sans-IO: feed it packets and
/// time, drain packets, timers and events.
pub struct Membership {
    foca: FocaInstance,
    runtime: AccumulatingRuntime<NodeIdentity>,
    config: MembershipConfig,
    /// When this process started: our own address has been "heard" since.
    started: Instant,
    seeds: Vec<SocketAddr>,
    next_rejoin: Option<Instant>,
    /// Whether foca is connected: it has a live member *and* our current
    /// identity has been heard of. After a renewal foca keeps its member
    /// table but is disconnected until someone talks to the new identity;
    /// if nobody does (it lost a conflict), only the seeds can bring it
    /// back, so this, not the member count, decides when to call them.
    connected: bool,
    left: bool,
    timers: BinaryHeap<Reverse<Pending>>,
    timer_seq: u64,
    transmits: VecDeque<(SocketAddr, Bytes)>,
    events: VecDeque<MemberEvent>,
    view: HashMap<String, Seen>,
    generation: u64,
    /// Identities that told us they leave, by node id.
    leavers: HashMap<String, NodeIdentity>,
    /// Source addresses heard per node id, for duplicate detection.
    heard: HashMap<String, HashMap<SocketAddr, Heard>>,
    /// `(node id, lower addr, higher addr)` already reported.
    duplicates: HashSet<(String, SocketAddr, SocketAddr)>,
}

impl Membership {
    pub fn new(
        me: NodeIdentity,
        config: MembershipConfig,
        rng_seed: u64,
        now: Instant,
    ) -> Result<Self, MembershipError> {
        let foca = Foca::new(
            me,
            config.to_foca()?,
            StdRng::seed_from_u64(rng_seed),
            PostcardCodec,
        );
        Ok(Self {
            foca,
            runtime: AccumulatingRuntime::new(),
            config,
            started: now,
            seeds: Vec::new(),
            next_rejoin: None,
            connected: false,
            left: false,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            view: HashMap::new(),
            generation: 0,
            leavers: HashMap::new(),
            heard: HashMap::new(),
            duplicates: HashSet::new(),
        })
    }

    /// Our current identity (it changes when we renew after being declared
    /// down).
    pub fn identity(&self) -> &NodeIdentity {
        self.foca.identity()
    }

    /// Whether we know at least one live member.
    pub fn is_joined(&self) -> bool {
        !self.left && self.connected && self.foca.num_members() > 0
    }

    /// Announce ourselves to a seed known only by address; repeated every
    /// `rejoin_interval` while we have no member.
    pub fn handle_join(&mut self, seed: SocketAddr, now: Instant) {
        if seed == self.identity().addr || self.left {
            return;
        }
        if !self.seeds.contains(&seed) {
            self.seeds.push(seed);
        }
        self.send_join(seed);
        self.next_rejoin = Some(now + self.config.rejoin_interval);
    }

    /// A packet from a peer. An error means the packet was bad and dropped;
    /// the state is intact.
    pub fn handle_data(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> Result<(), MembershipError> {
        if data.len() > self.config.max_packet_size + 1 {
            return Err(MembershipError::TooLarge(data.len()));
        }
        let (&tag, body) = data.split_first().ok_or(MembershipError::Empty)?;
        let result = match tag {
            TAG_FOCA => self.handle_foca(from, body, false, now),
            TAG_FOCA_LEAVING => self.handle_foca(from, body, true, now),
            TAG_JOIN => self.handle_join_request(from, body, now),
            TAG_LEAVE => self.handle_leave_notice(from, body, now),
            other => Err(MembershipError::UnknownTag(other)),
        };
        self.after_call(now);
        result
    }

    /// Fires every due timer.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Only what is due now: a timer foca submits while we run is for a
        // later call, so a zero delay cannot spin here.
        let mut due = Vec::new();
        while self.timers.peek().is_some_and(|Reverse(p)| p.due <= now) {
            if let Some(Reverse(p)) = self.timers.pop() {
                due.push(p.timer);
            }
        }
        for timer in due {
            if let Err(e) = self.foca.handle_timer(timer, &mut self.runtime) {
                // Late timers (a stalled loop) make foca complain about an
                // incomplete probe; it recovers by itself.
                debug!(error = %e, "membership timer");
            }
            self.drain_runtime(now);
        }
        if let Some(at) = self.next_rejoin
            && at <= now
        {
            self.next_rejoin = None;
            if !self.is_joined() && !self.left && !self.seeds.is_empty() {
                for seed in self.seeds.clone() {
                    self.send_join(seed);
                }
                self.next_rejoin = Some(now + self.config.rejoin_interval);
            }
        }
        self.after_call(now);
    }

    /// Graceful leave (SIGTERM): tells every member, then stops taking part.
    pub fn handle_leave(&mut self, now: Instant) {
        if self.left {
            return;
        }
        let me = self.identity().clone();
        let mut notice = BytesMut::new();
        notice.put_u8(TAG_LEAVE);
        let mut body = Vec::new();
        match PostcardCodec.encode_member(&Member::down(me), &mut body) {
            Ok(()) => {
                notice.extend_from_slice(&body);
                let notice = notice.freeze();
                let addrs: Vec<SocketAddr> =
                    self.foca.iter_members().map(|m| m.id().addr).collect();
                for addr in addrs {
                    self.transmits.push_back((addr, notice.clone()));
                }
            }
            Err(e) => warn!(error = %e, "cannot encode leave notice"),
        }
        // Set first, so the packets foca sends now are tagged as leaving.
        self.left = true;
        if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
            warn!(error = %e, "leaving the cluster");
        }
        self.next_rejoin = None;
        self.drain_runtime(now);
        self.timers.clear();
    }

    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Bytes)> {
        self.transmits.pop_front()
    }

    /// The earliest instant [`Self::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let foca = self.timers.peek().map(|Reverse(p)| p.due);
        match (foca, self.next_rejoin) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn poll_event(&mut self) -> Option<MemberEvent> {
        self.events.pop_front()
    }

    pub fn counts(&self) -> MemberCounts {
        let mut counts = MemberCounts::default();
        for m in self.foca.iter_membership_state() {
            match m.state() {
                State::Alive => counts.alive += 1,
                State::Suspect => counts.suspect += 1,
                State::Down => counts.down += 1,
            }
        }
        counts
    }

    /// Members taking part in the cluster: alive, and suspected ones (which
    /// are members until they are declared down).
    pub fn members(&self) -> impl Iterator<Item = &NodeIdentity> {
        self.foca.iter_members().map(|m| m.id())
    }

    /// [`Self::members`], each with whether it is alive (`true`) or only
    /// suspected (`false`).
    pub fn live_members(&self) -> impl Iterator<Item = (&NodeIdentity, bool)> {
        self.foca
            .iter_membership_state()
            .filter(|m| m.state() != State::Down)
            .map(|m| (m.id(), m.state() == State::Alive))
    }

    fn handle_foca(
        &mut self,
        from: SocketAddr,
        body: &[u8],
        leaving: bool,
        now: Instant,
    ) -> Result<(), MembershipError> {
        // Decoded once here as well, to learn who speaks before foca does.
        let header = PostcardCodec
            .decode_header(body)
            .map_err(|_| MembershipError::Malformed)?;
        if !self.note_heard(&header.src, from, now) {
            return Ok(());
        }
        if leaving {
            self.leavers
                .insert(header.src.node_id.clone(), header.src.clone());
        }
        let announce = header.message == foca::Message::Announce;
        let was_joined = self.foca.num_members() > 0;
        self.foca.handle_data(body, &mut self.runtime)?;
        self.drain_runtime(now);
        // A seed answering our Join announces itself to us; ask it back
        // so its reply (a feed) brings the whole member list at once.
        if announce && !was_joined && self.seeds.contains(&from) {
            let _ = self.foca.announce(header.src, &mut self.runtime);
            self.drain_runtime(now);
        }
        Ok(())
    }

    fn handle_join_request(
        &mut self,
        from: SocketAddr,
        body: &[u8],
        now: Instant,
    ) -> Result<(), MembershipError> {
        let member = decode_member(body)?;
        let joiner = member.id().clone();
        if !self.note_heard(&joiner, from, now) || self.left {
            return Ok(());
        }
        // foca's announce is addressed to an identity, which the joiner
        // could not know of us; we know its identity now, so we announce
        // to it and foca's handshake takes over.
        self.foca.announce(joiner, &mut self.runtime)?;
        self.drain_runtime(now);
        Ok(())
    }

    fn handle_leave_notice(
        &mut self,
        from: SocketAddr,
        body: &[u8],
        now: Instant,
    ) -> Result<(), MembershipError> {
        let member = decode_member(body)?;
        let leaver = member.id().clone();
        // Only a node announces its own leave.
        if member.state() != State::Down || leaver.addr != from {
            return Err(MembershipError::Malformed);
        }
        if !self.note_heard(&leaver, from, now) {
            return Ok(());
        }
        self.leavers.insert(leaver.node_id.clone(), leaver.clone());
        self.foca.apply_many(
            std::iter::once(Member::down(leaver)),
            true,
            &mut self.runtime,
        )?;
        self.drain_runtime(now);
        Ok(())
    }

    /// Records a packet from `id` arriving from `from`, and applies the
    /// duplicate rule of the module doc. Returns whether the packet should
    /// be processed: packets claiming our own node id never are.
    fn note_heard(&mut self, id: &NodeIdentity, from: SocketAddr, now: Instant) -> bool {
        let grace = self.config.duplicate_grace;
        let me = self.foca.identity().clone();
        let ours = id.node_id == me.node_id;
        let addrs = self.heard.entry(id.node_id.clone()).or_default();
        let entry = addrs.entry(from).or_insert(Heard {
            first: now,
            last: now,
        });
        if now.saturating_duration_since(entry.last) > grace {
            entry.first = now;
        }
        entry.last = now;
        let mine = Heard {
            first: self.started,
            last: now,
        };
        let this = *entry;
        let others = addrs
            .iter()
            .filter(|(a, _)| **a != from)
            .map(|(a, h)| (*a, *h))
            .chain(ours.then_some((me.addr, mine)))
            .filter(|(a, _)| *a != from)
            .collect::<Vec<_>>();
        for (other, h) in others {
            let since = this.first.max(h.first) + grace;
            if now >= since && h.last >= since {
                let key = (id.node_id.clone(), from.min(other), from.max(other));
                if self.duplicates.insert(key) {
                    warn!(node_id = %id.node_id, a = %from, b = %other, "two live nodes share a node id");
                    self.events.push_back(MemberEvent::DuplicateNodeId {
                        theirs: id.clone(),
                        other,
                    });
                }
            }
        }
        // Another process with our node id: foca would only say "from
        // ourselves"; the rule above is what reports it.
        !ours
    }

    fn send_join(&mut self, to: SocketAddr) {
        let mut body = Vec::new();
        match PostcardCodec.encode_member(&Member::alive(self.identity().clone()), &mut body) {
            Ok(()) => {
                let mut packet = BytesMut::with_capacity(body.len() + 1);
                packet.put_u8(TAG_JOIN);
                packet.extend_from_slice(&body);
                self.transmits.push_back((to, packet.freeze()));
            }
            Err(e) => warn!(error = %e, "cannot encode join"),
        }
    }

    /// Moves what foca produced into our queues.
    fn drain_runtime(&mut self, now: Instant) {
        loop {
            while let Some((to, data)) = self.runtime.to_send() {
                if self.is_spurious_turn_undead(&to, &data) {
                    continue;
                }
                let mut packet = BytesMut::with_capacity(data.len() + 1);
                packet.put_u8(if self.left {
                    TAG_FOCA_LEAVING
                } else {
                    TAG_FOCA
                });
                packet.extend_from_slice(&data);
                self.transmits.push_back((to.addr, packet.freeze()));
            }
            while let Some((after, timer)) = self.runtime.to_schedule() {
                self.timer_seq += 1;
                self.timers.push(Reverse(Pending {
                    due: now + after,
                    seq: self.timer_seq,
                    timer,
                }));
            }
            let mut announce = false;
            while let Some(note) = self.runtime.to_notify() {
                match note {
                    OwnedNotification::Active => {
                        info!("joined the cluster");
                        self.connected = true;
                        self.events.push_back(MemberEvent::JoinedCluster);
                        announce = true;
                    }
                    OwnedNotification::Idle if !self.left => {
                        info!("no live member left; contacting seeds");
                        self.connected = false;
                        self.events.push_back(MemberEvent::Isolated);
                        self.next_rejoin = Some(now);
                    }
                    OwnedNotification::Rejoin(id) => {
                        info!(incarnation = id.incarnation, "declared down, rejoining");
                        self.connected = false;
                        self.next_rejoin = Some(now + self.config.rejoin_interval);
                        self.events.push_back(MemberEvent::Renewed(id));
                    }
                    OwnedNotification::Defunct => {
                        self.connected = false;
                        if !self.left {
                            warn!("declared down and cannot renew identity");
                        }
                    }
                    _ => {}
                }
            }
            if !announce {
                break;
            }
            // Becoming part of a cluster: ask a couple of members for their
            // lists rather than wait for periodic announces.
            let targets: Vec<NodeIdentity> = self
                .foca
                .iter_members()
                .take(2)
                .map(|m| m.id().clone())
                .collect();
            for t in targets {
                let _ = self.foca.announce(t, &mut self.runtime);
            }
        }
    }

    /// See the module doc: a "you are down" to a member we hold as active.
    fn is_spurious_turn_undead(&self, to: &NodeIdentity, data: &[u8]) -> bool {
        let Ok(header) = Codec::<NodeIdentity>::decode_header(&mut PostcardCodec, data) else {
            return false;
        };
        header.message == foca::Message::TurnUndead
            && self
                .foca
                .iter_membership_state()
                .any(|m| m.id() == to && m.state() != State::Down)
    }

    /// Turns changes in foca's member table into events.
    fn after_call(&mut self, now: Instant) {
        let _ = now;
        self.generation += 1;
        let generation = self.generation;
        let mut events = Vec::new();
        for m in self.foca.iter_membership_state() {
            let id = m.id();
            let state = m.state();
            let Some(seen) = self.view.get_mut(&id.node_id) else {
                if state != State::Down {
                    events.push(MemberEvent::Joined(id.clone()));
                }
                self.view.insert(
                    id.node_id.clone(),
                    Seen {
                        id: id.clone(),
                        state,
                        generation,
                    },
                );
                continue;
            };
            seen.generation = generation;
            let was_active = seen.state != State::Down;
            let is_active = state != State::Down;
            if seen.id != *id {
                let old = std::mem::replace(&mut seen.id, id.clone());
                match (was_active, is_active) {
                    (true, true) => events.push(MemberEvent::Replaced {
                        old,
                        new: id.clone(),
                    }),
                    (true, false) => events.push(gone(&self.leavers, old)),
                    (false, true) => events.push(MemberEvent::Joined(id.clone())),
                    (false, false) => {}
                }
            } else {
                match (seen.state, state) {
                    (State::Alive, State::Suspect) => events.push(MemberEvent::Suspect(id.clone())),
                    (State::Suspect, State::Alive) => events.push(MemberEvent::Alive(id.clone())),
                    (State::Alive | State::Suspect, State::Down) => {
                        events.push(gone(&self.leavers, id.clone()))
                    }
                    _ => {}
                }
            }
            seen.state = state;
        }
        // Forgotten by foca (down for `remove_down_after`).
        self.view.retain(|_, s| s.generation == generation);
        self.events.extend(events);
    }
}

/// `Left` if it told us so, `Down` otherwise.
fn gone(leavers: &HashMap<String, NodeIdentity>, id: NodeIdentity) -> MemberEvent {
    if leavers.get(&id.node_id) == Some(&id) {
        MemberEvent::Left(id)
    } else {
        MemberEvent::Down(id)
    }
}

fn decode_member(body: &[u8]) -> Result<Member<NodeIdentity>, MembershipError> {
    let mut buf = body;
    let member: Member<NodeIdentity> = PostcardCodec
        .decode_member(&mut buf)
        .map_err(|_| MembershipError::Malformed)?;
    if !buf.is_empty() {
        return Err(MembershipError::Malformed);
    }
    Ok(member)
}

#[cfg(test)]
mod tests {
    use super::sim::{Sim, addr};
    use super::*;

    /// The seeds each scenario runs with; `MEMBERSHIP_SEED=n` runs just n.
    fn seeds() -> Vec<u64> {
        match std::env::var("MEMBERSHIP_SEED") {
            Ok(s) => vec![s.parse().expect("MEMBERSHIP_SEED is a number")],
            Err(_) => (1..=8).collect(),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A converged five-node cluster joined through node 0.
    fn five(seed: u64) -> Sim {
        eprintln!("seed {seed} (rerun with MEMBERSHIP_SEED={seed})");
        let mut sim = Sim::cluster(seed, MembershipConfig::default(), 5);
        let deadline = sim.now + secs(10);
        assert!(
            sim.run_until(deadline, Sim::converged),
            "seed {seed}: no convergence"
        );
        sim
    }

    fn is_gone(e: &MemberEvent, node_id: &str) -> bool {
        matches!(e, MemberEvent::Down(id) | MemberEvent::Left(id) if id.node_id == node_id)
            || matches!(e, MemberEvent::Replaced { old, .. } if old.node_id == node_id)
    }

    #[test]
    fn five_nodes_join_via_one_seed() {
        for seed in seeds() {
            let sim = five(seed);
            for n in 0..5 {
                assert_eq!(sim.node(n).counts().alive, 4, "seed {seed}");
                assert!(sim.node(n).is_joined(), "seed {seed}");
                assert!(
                    sim.first_event(n, |e| *e == MemberEvent::JoinedCluster)
                        .is_some(),
                    "seed {seed}"
                );
                let joined = sim.events[n]
                    .iter()
                    .filter(|(_, e)| matches!(e, MemberEvent::Joined(_)))
                    .count();
                assert_eq!(joined, 4, "seed {seed}: node {n} {:?}", sim.events[n]);
            }
            eprintln!("seed {seed}: converged after {:?}", sim.elapsed());
        }
    }

    #[test]
    fn killed_node_is_down_everywhere_within_bound() {
        let config = MembershipConfig::default();
        // Until some member probes it (each probes one member per interval,
        // so within a few intervals), one interval for that probe to fail,
        // the suspicion, then gossip to the rest.
        let bound = config.probe_interval * 6 + config.suspect_timeout;
        let mut worst = Duration::ZERO;
        for seed in seeds() {
            let mut sim = five(seed);
            sim.run_for(secs(5));
            let killed_at = sim.elapsed();
            sim.kill(4);
            let deadline = sim.now + secs(20);
            let all_down = |s: &Sim| {
                (0..4).all(|n| {
                    s.first_event(
                        n,
                        |e| matches!(e, MemberEvent::Down(id) if id.node_id == "node4"),
                    )
                    .is_some()
                })
            };
            assert!(
                sim.run_until(deadline, all_down),
                "seed {seed}: not detected"
            );
            for n in 0..4 {
                let (at, _) = sim
                    .first_event(n, |e| is_gone(e, "node4"))
                    .unwrap_or_else(|| panic!("seed {seed}"));
                let took = at - killed_at;
                worst = worst.max(took);
                assert!(took < bound, "seed {seed}: node {n} took {took:?}");
                assert_eq!(sim.node(n).counts().alive, 3, "seed {seed}");
            }
        }
        eprintln!("worst detection time {worst:?} (bound {bound:?})");
    }

    #[test]
    fn packet_loss_does_not_evict_live_nodes() {
        for seed in seeds().into_iter().take(4) {
            let mut sim = five(seed);
            let before: Vec<usize> = sim.events.iter().map(Vec::len).collect();
            sim.loss = 0.2;
            sim.run_for(secs(120));
            let mut suspicions = 0;
            for (n, (events, &skip)) in sim.events.iter().zip(&before).enumerate() {
                for (at, e) in &events[skip..] {
                    assert!(
                        !matches!(
                            e,
                            MemberEvent::Down(_)
                                | MemberEvent::Left(_)
                                | MemberEvent::Replaced { .. }
                                | MemberEvent::DuplicateNodeId { .. }
                        ),
                        "seed {seed}: node {n} at {at:?}: {e:?}"
                    );
                    suspicions += usize::from(matches!(e, MemberEvent::Suspect(_)));
                }
            }
            sim.loss = 0.0;
            let deadline = sim.now + secs(10);
            assert!(sim.run_until(deadline, Sim::converged), "seed {seed}");
            eprintln!("seed {seed}: {suspicions} suspicions refuted under 20% loss");
        }
    }

    #[test]
    fn graceful_leave_is_left_not_down() {
        for seed in seeds() {
            let mut sim = five(seed);
            sim.leave(3);
            assert!(!sim.node(3).is_joined(), "seed {seed}");
            sim.run_for(secs(1));
            sim.kill(3);
            sim.run_for(secs(10));
            for n in [0, 1, 2, 4] {
                let gone: Vec<_> = sim.events[n]
                    .iter()
                    .filter(|(_, e)| is_gone(e, "node3"))
                    .collect();
                assert_eq!(gone.len(), 1, "seed {seed}: node {n}: {gone:?}");
                assert!(
                    matches!(gone[0].1, MemberEvent::Left(_)),
                    "seed {seed}: {gone:?}"
                );
                assert_eq!(sim.node(n).counts().alive, 3, "seed {seed}");
            }
        }
    }

    fn restart(seed: u64, new_addr: SocketAddr, after: Duration) {
        let mut sim = five(seed);
        let old = sim.ids[3].clone();
        sim.kill(3);
        sim.run_for(after);
        let new = NodeIdentity {
            addr: new_addr,
            incarnation: old.incarnation + 1000,
            ..old.clone()
        };
        sim.start_as(3, new.clone());
        sim.join(3, 0);
        let deadline = sim.now + secs(15);
        assert!(sim.run_until(deadline, Sim::converged), "seed {seed}");
        sim.run_for(secs(10));
        assert!(sim.converged(), "seed {seed}");
        for n in [0, 1, 2, 4] {
            let node = sim.node(n);
            assert!(node.members().any(|m| *m == new), "seed {seed}");
            assert!(!node.members().any(|m| *m == old), "seed {seed}");
            let counts = node.counts();
            assert_eq!((counts.alive, counts.suspect), (4, 0), "seed {seed}");
            // The old incarnation was reported gone exactly once, and the
            // new one as a member.
            let gone = sim.events[n]
                .iter()
                .filter(|(_, e)| is_gone(e, "node3"))
                .count();
            assert_eq!(gone, 1, "seed {seed}: node {n}: {:?}", sim.events[n]);
            let up = sim.first_event(n, |e| {
                matches!(e, MemberEvent::Joined(id) | MemberEvent::Replaced { new: id, .. } if *id == new)
            });
            assert!(up.is_some(), "seed {seed}: node {n}: {:?}", sim.events[n]);
        }
        for n in sim.live().collect::<Vec<_>>() {
            assert!(
                sim.first_event(n, |e| matches!(e, MemberEvent::DuplicateNodeId { .. }))
                    .is_none(),
                "seed {seed}: restart taken for a duplicate"
            );
        }
    }

    #[test]
    fn restart_same_addr_replaces_old_incarnation() {
        for seed in seeds() {
            restart(seed, addr(3), Duration::from_millis(300));
        }
    }

    #[test]
    fn restart_new_addr_replaces_old_incarnation() {
        for seed in seeds() {
            restart(seed, addr(9), Duration::from_millis(300));
        }
    }

    #[test]
    fn restart_after_detection_joins_again() {
        for seed in seeds().into_iter().take(3) {
            restart(seed, addr(3), secs(8));
        }
    }

    #[test]
    fn duplicate_node_id_is_reported() {
        for seed in seeds() {
            let mut sim = five(seed);
            // A second process configured as node1, elsewhere, started later.
            let slot = sim.add();
            let dup = NodeIdentity {
                addr: addr(slot),
                incarnation: 2,
                ..sim.ids[1].clone()
            };
            sim.start_as(slot, dup);
            sim.join(slot, 0);
            let deadline = sim.now + secs(15);
            let reported = |s: &Sim| {
                s.live().any(|n| {
                    s.first_event(n, |e| matches!(e, MemberEvent::DuplicateNodeId { theirs, .. } if theirs.node_id == "node1")).is_some()
                })
            };
            assert!(sim.run_until(deadline, reported), "seed {seed}");
            let who: Vec<usize> = sim
                .live()
                .filter(|&n| {
                    sim.first_event(n, |e| matches!(e, MemberEvent::DuplicateNodeId { .. }))
                        .is_some()
                })
                .collect();
            eprintln!(
                "seed {seed}: duplicate seen by {who:?} after {:?}",
                sim.elapsed()
            );
        }
    }

    #[test]
    fn partition_longer_than_down_timeout_heals() {
        for seed in seeds() {
            let mut sim = five(seed);
            for a in [0, 1] {
                for b in [2, 3, 4] {
                    sim.cut(a, b);
                }
            }
            sim.run_for(secs(15));
            assert_eq!(sim.node(0).counts().alive, 1, "seed {seed}");
            assert_eq!(sim.node(4).counts().alive, 2, "seed {seed}");
            for a in [0, 1] {
                for b in [2, 3, 4] {
                    sim.heal(a, b);
                }
            }
            let healed_at = sim.elapsed();
            let deadline = sim.now + secs(60);
            assert!(
                sim.run_until(deadline, Sim::converged),
                "seed {seed}: {:?}",
                (0..5).map(|n| sim.node(n).counts()).collect::<Vec<_>>()
            );
            eprintln!("seed {seed}: healed in {:?}", sim.elapsed() - healed_at);
            sim.run_for(secs(10));
            assert!(sim.converged(), "seed {seed}: flapping after heal");
        }
    }

    #[test]
    fn node_started_before_its_seed_joins_later() {
        for seed in seeds() {
            eprintln!("seed {seed}");
            let mut sim = Sim::new(seed, MembershipConfig::default());
            sim.add();
            sim.add();
            sim.start(1);
            sim.join(1, 0);
            sim.run_for(secs(5));
            assert!(!sim.node(1).is_joined(), "seed {seed}");
            sim.start(0);
            let deadline = sim.now + secs(5);
            assert!(sim.run_until(deadline, Sim::converged), "seed {seed}");
            assert!(sim.node(0).is_joined() && sim.node(1).is_joined());
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let now = Instant::now();
        let me = NodeIdentity {
            node_id: "a".into(),
            addr: addr(0),
            incarnation: 1,
        };
        let mut m = Membership::new(me, MembershipConfig::default(), 1, now).expect("config");
        let from = addr(1);
        assert!(matches!(
            m.handle_data(from, &[], now),
            Err(MembershipError::Empty)
        ));
        assert!(matches!(
            m.handle_data(from, &[9, 1, 2], now),
            Err(MembershipError::UnknownTag(9))
        ));
        let mut rng = StdRng::seed_from_u64(7);
        for len in 0..2000 {
            let mut data = vec![0u8; len % 300];
            rand::RngExt::fill(&mut rng, &mut data[..]);
            if let Some(first) = data.first_mut() {
                *first %= 3;
            }
            let _ = m.handle_data(from, &data, now);
        }
        assert_eq!(m.counts().alive + m.counts().suspect, m.members().count());
    }

    #[test]
    fn join_envelope_round_trips() {
        let id = NodeIdentity {
            node_id: "node-7".into(),
            addr: addr(7),
            incarnation: 1_700_000_000_000,
        };
        let mut body = Vec::new();
        PostcardCodec
            .encode_member(&Member::alive(id.clone()), &mut body)
            .expect("encode");
        let decoded = decode_member(&body).expect("decode");
        assert_eq!(decoded.id(), &id);
        let mut longer = body.clone();
        longer.push(0);
        assert!(decode_member(&longer).is_err());
        assert!(decode_member(&body[..body.len() - 1]).is_err());
    }

    #[test]
    fn renewed_identity_wins_the_conflict() {
        use foca::Identity;
        let id = NodeIdentity {
            node_id: "n".into(),
            addr: addr(1),
            incarnation: 5,
        };
        let renewed = id.renew().expect("renew");
        assert!(renewed.win_addr_conflict(&id));
        assert!(!id.win_addr_conflict(&renewed));
        let elsewhere = NodeIdentity {
            addr: addr(2),
            ..id.clone()
        };
        // Equal incarnations: exactly one side wins.
        assert_ne!(
            elsewhere.win_addr_conflict(&id),
            id.win_addr_conflict(&elsewhere)
        );
        let last = NodeIdentity {
            incarnation: u64::MAX,
            ..id
        };
        assert_eq!(last.renew(), None);
    }

    #[test]
    fn invalid_config_is_rejected() {
        let mut c = MembershipConfig::default();
        c.probe_rtt = c.probe_interval;
        let me = NodeIdentity {
            node_id: "a".into(),
            addr: addr(0),
            incarnation: 1,
        };
        assert!(matches!(
            Membership::new(me, c, 1, Instant::now()),
            Err(MembershipError::InvalidConfig(_))
        ));
    }
}
