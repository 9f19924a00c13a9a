//! Who votes in the ownership raft, decided from gossip: a sans-IO state
//! machine that the cluster runtime feeds the live members (gossip, and
//! what each one's link said of its raft) and this node's raft state, and
//! that answers with at most one change at a time ([`Action`]). It reads
//! no clock and touches no raft; every input carries `now`.
//!
//! # Forming the raft
//!
//! A node initializes the raft only when all of these hold:
//!
//! 1. its own raft holds no state (it never belonged to a raft);
//! 2. it sees at least `bootstrap_expect` live members, itself included,
//!    and knows of every one of them whether its raft holds state (from
//!    the `RaftMember` frame on its link); none does;
//! 3. its node name is the smallest among them;
//! 4. that view has held still for `settle`, so nodes that are still
//!    discovering each other do not each form a raft of their own.
//!
//! It then forms the raft with the first of them by name as voters (an
//! odd number, at most [`MAX_VOTERS`]); the leader adds the rest as below.
//! A node that finds any live member with state waits to be added instead:
//! a raft exists, and its leader will come for this node.
//!
//! # Growing, shrinking, replacing
//!
//! Only the leader changes the membership, one change at a time, and
//! never while a change is under way:
//!
//! 1. a live member that is not in the membership is added as a learner;
//! 2. the voters become the *desired* set, when it differs: the current
//!    voters that are not dead, then learners that are live, reachable
//!    and caught up with the leader's log, as many as make the largest
//!    odd number up to [`MAX_VOTERS`]. An even count is rounded down: 4
//!    voters survive one failure, as 3 do, and 2 none, as 1 does; the
//!    extra voter would only make every commit wait for one more node.
//!    When voters must go, the leader stays, then reachable voters, then
//!    by name; a voter left out stays on as a learner;
//! 3. learners that are dead are removed.
//!
//! A member is *dead* once gossip has not counted it live for longer than
//! `dead_after` (`cluster.peer_hold`, the time an unreachable peer's
//! routes are kept too), as this node has seen it: a leader elected later
//! starts its count when it first looks. A node restarted without a data
//! dir comes back under a new raft id (its raft forgot everything), and
//! the old id is dead as soon as the new one is heard of.
//!
//! A voter change is made only if a majority of the current voters and a
//! majority of the new ones are reachable (gossip holds them alive, not
//! suspect): openraft's joint consensus keeps the change safe whatever
//! happens, but a change that cannot commit would stall every claim
//! behind it until the nodes come back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use openraft::{BasicNode, RaftMetrics, ServerState};

use super::table::NodeId;

/// At most this many voters: 5 survive two failures, and more would make
/// each commit wait for more nodes without a use for it in a broker.
pub const MAX_VOTERS: usize = 5;

#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// Live members, this node included, that must be seen before a raft
    /// is formed (`cluster.bootstrap_expect`).
    pub bootstrap_expect: usize,
    /// How long a member must be gone before the leader removes it
    /// (`cluster.peer_hold`).
    pub dead_after: Duration,
    /// How long the view of the members must hold still before this node
    /// forms a raft.
    pub settle: Duration,
    /// The pause after a change failed, before the next is tried.
    pub retry: Duration,
    /// The pause after a change succeeded, so that the next decision
    /// reads the raft as the change left it.
    pub pause: Duration,
}

/// A live member other than this node, as gossip and its link see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// What its link said of its raft; `None` until it has.
    pub raft: Option<RaftMember>,
    /// Alive to gossip, not merely suspected.
    pub reachable: bool,
}

/// What a node says of its raft (the `RaftMember` frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftMember {
    pub id: NodeId,
    pub has_state: bool,
}

/// What this node's raft says of itself (its metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftView {
    /// It belongs, or belonged, to a raft.
    pub has_state: bool,
    pub is_leader: bool,
    /// The effective membership's voters and learners, with the node name
    /// each was added under.
    pub voters: BTreeMap<NodeId, String>,
    pub learners: BTreeMap<NodeId, String>,
    /// The membership is joint: a change is under way.
    pub changing: bool,
    /// Learners that have every entry the leader has committed.
    pub caught_up: BTreeSet<NodeId>,
}

/// One change for the runtime to make, and to report with
/// [`Reconciler::handle_done`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Form the raft with these voters.
    Initialize(BTreeMap<NodeId, BasicNode>),
    AddLearner {
        id: NodeId,
        name: String,
    },
    /// Make exactly these the voters; the others stay as learners.
    SetVoters(BTreeSet<NodeId>),
    RemoveLearners(BTreeSet<NodeId>),
}

pub struct Reconciler {
    config: ReconcilerConfig,
    name: String,
    id: NodeId,
    /// The other live members, by name.
    members: BTreeMap<String, Member>,
    /// When `members` last changed.
    members_since: Instant,
    /// Members of the raft not live since then, by raft id.
    absent_since: BTreeMap<NodeId, Instant>,
    /// An action is out and not reported done.
    busy: bool,
    /// No action before then.
    not_before: Option<Instant>,
}

impl Reconciler {
    /// The reconciler of node `name`, whose raft id is `id`.
    pub fn new(config: ReconcilerConfig, name: &str, id: NodeId, now: Instant) -> Reconciler {
        Reconciler {
            config,
            name: name.to_owned(),
            id,
            members: BTreeMap::new(),
            members_since: now,
            absent_since: BTreeMap::new(),
            busy: false,
            not_before: None,
        }
    }

    /// The live members other than this node, as of `now`.
    pub fn handle_members(&mut self, members: impl IntoIterator<Item = Member>, now: Instant) {
        let members: BTreeMap<String, Member> = members
            .into_iter()
            .filter(|member| member.name != self.name)
            .map(|member| (member.name.clone(), member))
            .collect();
        if members != self.members {
            self.members = members;
            self.members_since = now;
        }
    }

    /// The last action is over; `ok` if it succeeded.
    pub fn handle_done(&mut self, ok: bool, now: Instant) {
        self.busy = false;
        let pause = if ok {
            self.config.pause
        } else {
            self.config.retry
        };
        self.not_before = Some(now + pause);
    }

    /// The next change to make, if any; none while one is out.
    pub fn poll_action(&mut self, raft: &RaftView, now: Instant) -> Option<Action> {
        self.track_absence(raft, now);
        if self.busy || self.not_before.is_some_and(|at| now < at) {
            return None;
        }
        let action = if raft.has_state {
            raft.is_leader.then(|| self.lead(raft, now)).flatten()
        } else {
            self.initialize(now)
        };
        self.busy = action.is_some();
        action
    }

    fn initialize(&self, now: Instant) -> Option<Action> {
        let seen = self.members.len() + 1;
        if seen < self.config.bootstrap_expect.max(1)
            || now.duration_since(self.members_since) < self.config.settle
        {
            return None;
        }
        let mut voters = vec![(self.name.clone(), self.id)];
        for member in self.members.values() {
            let raft = member.raft?;
            if raft.has_state || member.name < self.name {
                return None;
            }
            voters.push((member.name.clone(), raft.id));
        }
        voters.sort();
        voters.truncate(odd_at_most(voters.len().min(MAX_VOTERS)));
        Some(Action::Initialize(
            voters
                .into_iter()
                .map(|(name, id)| (id, BasicNode::new(name)))
                .collect(),
        ))
    }

    fn lead(&self, raft: &RaftView, now: Instant) -> Option<Action> {
        if raft.changing {
            return None;
        }
        let known = |id: &NodeId| raft.voters.contains_key(id) || raft.learners.contains_key(id);
        let newcomer = self.members.values().find_map(|member| {
            let raft = member.raft?;
            (!known(&raft.id)).then(|| Action::AddLearner {
                id: raft.id,
                name: member.name.clone(),
            })
        });
        if newcomer.is_some() {
            return newcomer;
        }
        let voters: BTreeSet<NodeId> = raft.voters.keys().copied().collect();
        let desired = self.desired_voters(raft, now);
        if !desired.is_empty()
            && desired != voters
            && self.has_reachable_majority(&voters, raft)
            && self.has_reachable_majority(&desired, raft)
        {
            return Some(Action::SetVoters(desired));
        }
        let dead: BTreeSet<NodeId> = raft
            .learners
            .iter()
            .filter(|&(&id, name)| !voters.contains(&id) && self.is_dead(id, name, now))
            .map(|(&id, _)| id)
            .collect();
        (!dead.is_empty()).then_some(Action::RemoveLearners(dead))
    }

    /// See the module docs, rule 2.
    fn desired_voters(&self, raft: &RaftView, now: Instant) -> BTreeSet<NodeId> {
        let mut healthy: Vec<(bool, bool, &str, NodeId)> = raft
            .voters
            .iter()
            .filter(|&(&id, name)| !self.is_dead(id, name, now))
            .map(|(&id, name)| {
                (
                    id != self.id,
                    !self.is_reachable(id, name),
                    name.as_str(),
                    id,
                )
            })
            .collect();
        healthy.sort();
        let mut ready: Vec<(&str, NodeId)> = raft
            .learners
            .iter()
            .filter(|&(&id, name)| {
                raft.caught_up.contains(&id)
                    && self.is_reachable(id, name)
                    && !raft.voters.contains_key(&id)
            })
            .map(|(&id, name)| (name.as_str(), id))
            .collect();
        ready.sort();
        let target = odd_at_most((healthy.len() + ready.len()).min(MAX_VOTERS));
        healthy
            .into_iter()
            .map(|(_, _, _, id)| id)
            .chain(ready.into_iter().map(|(_, id)| id))
            .take(target)
            .collect()
    }

    /// Whether more than half of `voters` are reachable now.
    fn has_reachable_majority(&self, voters: &BTreeSet<NodeId>, raft: &RaftView) -> bool {
        let name = |id: &NodeId| raft.voters.get(id).or_else(|| raft.learners.get(id));
        let reachable = voters
            .iter()
            .filter(|&&id| name(&id).is_some_and(|name| self.is_reachable(id, name)))
            .count();
        reachable * 2 > voters.len()
    }

    /// The live member named `name`, if it is raft node `id` (or has not
    /// said which it is yet).
    fn live(&self, id: NodeId, name: &str) -> Option<&Member> {
        self.members
            .get(name)
            .filter(|member| member.raft.is_none_or(|raft| raft.id == id))
    }

    fn is_reachable(&self, id: NodeId, name: &str) -> bool {
        id == self.id || self.live(id, name).is_some_and(|member| member.reachable)
    }

    /// Gone for longer than `dead_after`, or replaced by a new life of the
    /// same node under another raft id.
    fn is_dead(&self, id: NodeId, name: &str, now: Instant) -> bool {
        if id == self.id {
            return false;
        }
        let replaced = self
            .members
            .get(name)
            .and_then(|member| member.raft)
            .is_some_and(|raft| raft.id != id);
        let gone_too_long = self
            .absent_since
            .get(&id)
            .is_some_and(|&since| now.duration_since(since) >= self.config.dead_after);
        replaced || gone_too_long
    }

    fn track_absence(&mut self, raft: &RaftView, now: Instant) {
        let in_raft: Vec<(NodeId, &String)> = raft
            .voters
            .iter()
            .chain(&raft.learners)
            .map(|(&id, name)| (id, name))
            .collect();
        let absent: Vec<NodeId> = in_raft
            .iter()
            .filter(|&&(id, name)| id != self.id && self.live(id, name).is_none())
            .map(|&(id, _)| id)
            .collect();
        self.absent_since.retain(|id, _| absent.contains(id));
        for id in absent {
            self.absent_since.entry(id).or_insert(now);
        }
    }
}

/// What `metrics` say of this node's raft, for the reconciler.
pub fn view_of(metrics: &RaftMetrics<NodeId, BasicNode>) -> RaftView {
    let membership = metrics.membership_config.membership();
    let named = |ids: &mut dyn Iterator<Item = NodeId>| -> BTreeMap<NodeId, String> {
        ids.map(|id| {
            let name = membership.get_node(&id).map(|node| node.addr.clone());
            (id, name.unwrap_or_default())
        })
        .collect()
    };
    let voters = named(&mut membership.voter_ids());
    let learners = named(&mut membership.learner_ids());
    let committed = metrics.last_applied.map(|id| id.index);
    let caught_up = metrics
        .replication
        .iter()
        .flatten()
        .filter(|&(id, matched)| {
            learners.contains_key(id) && matched.map(|id| id.index) >= committed
        })
        .map(|(&id, _)| id)
        .collect();
    RaftView {
        has_state: metrics.last_log_index.is_some()
            || metrics.snapshot.is_some()
            || !voters.is_empty(),
        is_leader: metrics.state == ServerState::Leader,
        voters,
        learners,
        changing: membership.get_joint_config().len() > 1,
        caught_up,
    }
}

/// `n` if odd, else one less (but at least 1).
fn odd_at_most(n: usize) -> usize {
    if n.is_multiple_of(2) {
        n.saturating_sub(1).max(1)
    } else {
        n
    }
}

#[cfg(test)]
mod tests;
