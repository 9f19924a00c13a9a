//! Ownership rafts of 3 and 5 nodes through partitions and restarts, each
//! node's vote, log and snapshot in a redb file in a temporary dir of its
//! own. Every scenario is written once, over any [`TestNet`], and runs
//! twice (the `mem` and `quic` modules near the bottom):
//!
//! - over the in-memory transport ([`MemRouter`]), on tokio's paused
//!   clock: time moves only when every task waits, straight to the next
//!   timer, so elections and timeouts take no wall time and a test's
//!   outcome does not depend on how loaded the machine is. The disk
//!   writes run on tokio's blocking pool, and the clock does not move
//!   while one runs, so a slow sync cannot fire an election either;
//! - over the cluster's own QUIC transport ([`QuicNet`]): one endpoint
//!   per node on 127.0.0.1, mutual TLS, a connection per pair, a
//!   partition closing connections. Real sockets need the real clock, so
//!   these run in real time, with longer raft timeouts.
//!
//! One scenario (a lost answer) needs a link cut one way only, which
//! closing QUIC connections cannot do; it runs in memory only.
//! Conditions are awaited with a deadline ([`wait_for`]), never assumed
//! after a sleep.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{BasicNode, Raft, ServerState, SnapshotPolicy, StorageError};
use tokio::time::Instant;

use super::mem::MemRouter;
use super::quic_net::QuicNet;
use super::raft::LogStore;
use super::state_machine::{SharedApplied, StateMachine};
use super::*;
use crate::testing::TempDir;

/// How long a test waits for a condition (on the paused clock, or in
/// real time over QUIC).
const WAIT: Duration = Duration::from_secs(20);

/// What carries the scenarios: a [`Transport`] for every node of a test
/// cluster, whose links can be cut.
pub trait TestNet: Sized {
    type Link: Transport;

    /// How much later than its timeout a refused claim may return: next
    /// to none on the paused clock, some in real time.
    const SLACK: Duration;

    /// The network of nodes `1..=n`.
    fn build(n: NodeId) -> impl Future<Output = Arc<Self>>;

    /// The raft's timing on this network: heartbeat, election timeout
    /// (a range), claim timeout, in milliseconds.
    const TIMING: (u64, (u64, u64), u64);

    fn config() -> OwnershipConfig {
        let millis = Duration::from_millis;
        let (heartbeat, (min, max), claim) = Self::TIMING;
        OwnershipConfig::with_timing(millis(heartbeat), (millis(min), millis(max)), millis(claim))
    }

    /// What node `id` sends through.
    fn link(net: &Arc<Self>, id: NodeId) -> Arc<Self::Link>;

    /// Makes `raft` reachable as node `id`.
    fn add(&self, id: NodeId, raft: Raft<raft::TypeConfig>);

    /// Cuts every link between `side` and the nodes not in it.
    fn partition(&self, side: &[NodeId]);

    fn heal_all(&self) -> impl Future<Output = ()>;
}

impl TestNet for MemRouter {
    type Link = MemRouter;

    const SLACK: Duration = Duration::from_millis(50);
    const TIMING: (u64, (u64, u64), u64) = (50, (150, 300), 1000);

    async fn build(_: NodeId) -> Arc<MemRouter> {
        Arc::new(MemRouter::default())
    }

    /// One router for all: it knows who sends.
    fn link(net: &Arc<MemRouter>, _: NodeId) -> Arc<MemRouter> {
        net.clone()
    }

    fn add(&self, id: NodeId, raft: Raft<raft::TypeConfig>) {
        MemRouter::add(self, id, raft);
    }

    fn partition(&self, side: &[NodeId]) {
        MemRouter::partition(self, side);
    }

    async fn heal_all(&self) {
        MemRouter::heal_all(self);
    }
}

struct Cluster<N: TestNet> {
    router: Arc<N>,
    config: OwnershipConfig,
    /// Node `id` is `nodes[id - 1]`, its data dir `dirs[id - 1]`.
    nodes: Vec<Ownership<N::Link>>,
    dirs: Vec<TempDir>,
}

impl<N: TestNet> Cluster<N> {
    async fn start(n: NodeId, config: OwnershipConfig) -> Cluster<N> {
        let router = N::build(n).await;
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for id in 1..=n {
            let dir = TempDir::new(&format!("ownership-node-{id}"));
            let store = RaftStore::open(&create(&dir)).expect("store opens");
            nodes.push(start_node(id, &config, store, &router).await);
            dirs.push(dir);
        }
        let voters: BTreeMap<NodeId, BasicNode> = (1..=n)
            .map(|id| (id, BasicNode::new(format!("node-{id}"))))
            .collect();
        nodes[0].initialize(voters).await.expect("cluster forms");
        let cluster = Cluster {
            router,
            config,
            nodes,
            dirs,
        };
        cluster.leader_among(&cluster.ids()).await;
        cluster
    }

    /// Stops node `id` and starts it again on the files it left, once
    /// its predecessor has let go of them.
    async fn restart(&mut self, id: NodeId) {
        let index = (id - 1) as usize;
        self.nodes[index].shutdown().await;
        let dir = self.dirs[index].0.clone();
        let store = wait_for(
            "the stopped raft to let go of its file",
            || match RaftStore::open(&dir) {
                Ok(store) => Some(store),
                Err(RaftStoreError::InUse { .. }) => None,
                Err(error) => panic!("node {id}'s store does not open: {error}"),
            },
        )
        .await;
        self.nodes[index] = start_node(id, &self.config, store, &self.router).await;
    }

    fn ids(&self) -> Vec<NodeId> {
        (1..=self.nodes.len() as NodeId).collect()
    }

    fn node(&self, id: NodeId) -> &Ownership<N::Link> {
        &self.nodes[(id - 1) as usize]
    }

    fn metrics(&self, id: NodeId) -> openraft::RaftMetrics<NodeId, BasicNode> {
        self.node(id).raft().metrics().borrow().clone()
    }

    /// Waits until every node in `among` follows one leader, itself in
    /// `among`.
    async fn leader_among(&self, among: &[NodeId]) -> NodeId {
        wait_for("one leader", || {
            let leader = self.metrics(among[0]).current_leader?;
            let agreed = among
                .iter()
                .all(|&id| self.metrics(id).current_leader == Some(leader));
            let leads =
                among.contains(&leader) && self.metrics(leader).state == ServerState::Leader;
            (agreed && leads).then_some(leader)
        })
        .await
    }

    /// Waits until every node in `among` has applied what `leader` has.
    async fn caught_up(&self, leader: NodeId, among: &[NodeId]) {
        let target = self.metrics(leader).last_applied.map(|id| id.index);
        for &id in among {
            wait_for(&format!("node {id} to apply up to {target:?}"), || {
                let applied = self.metrics(id).last_applied.map(|id| id.index);
                (applied >= target).then_some(())
            })
            .await;
        }
    }

    async fn shutdown(self) {
        for node in &self.nodes {
            node.shutdown().await;
        }
    }
}

async fn start_node<N: TestNet>(
    id: NodeId,
    config: &OwnershipConfig,
    store: RaftStore,
    router: &Arc<N>,
) -> Ownership<N::Link> {
    let node = Ownership::start(id, config.clone(), store, N::link(router, id))
        .await
        .expect("raft starts");
    router.add(id, node.raft().clone());
    node
}

/// `dir`, created.
fn create(dir: &TempDir) -> std::path::PathBuf {
    std::fs::create_dir_all(&dir.0).expect("temp dir is writable");
    dir.0.clone()
}

/// Polls `probe` on the paused clock until it answers, or fails the test
/// after [`WAIT`].
async fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn a_later_claim_fences_the_earlier_epoch_on_every_node<N: TestNet>() {
    let cluster = Cluster::<N>::start(3, N::config()).await;
    let (b, c) = (2, 3);

    let by_b = cluster.node(b).claim("c").await.expect("B claims");
    assert_eq!(
        by_b,
        Claimed {
            epoch: 1,
            previous: None
        }
    );
    let by_c = cluster.node(c).claim("c").await.expect("C claims");
    assert_eq!(
        by_c,
        Claimed {
            epoch: 2,
            previous: Some(Grant { node: b, epoch: 1 })
        }
    );

    let leader = cluster.leader_among(&cluster.ids()).await;
    cluster.caught_up(leader, &cluster.ids()).await;
    for node in &cluster.nodes {
        assert!(!node.check("c", b, 1), "node {} takes B's epoch", node.id());
        assert!(
            node.check("c", c, 2),
            "node {} refuses C's epoch",
            node.id()
        );
        assert_eq!(node.owner("c"), Some(Grant { node: c, epoch: 2 }));
        assert_eq!(node.owned_by(c), vec![(ByteString::from("c"), 2)]);
        assert!(node.owned_by(b).is_empty());
    }
    cluster.shutdown().await;
}

async fn a_leader_cut_off_from_the_majority_cannot_claim<N: TestNet>() {
    let cluster = Cluster::<N>::start(3, N::config()).await;
    let all = cluster.ids();
    let old = cluster.leader_among(&all).await;
    let first = cluster.node(old).claim("c").await.expect("leader claims");
    cluster.caught_up(old, &all).await;

    cluster.router.partition(&[old]);
    let majority: Vec<NodeId> = all.iter().copied().filter(|&id| id != old).collect();
    let started = Instant::now();
    let refused = cluster.node(old).claim("c").await;
    assert!(
        matches!(refused, Err(OwnershipError::NoQuorum(_))),
        "{refused:?}"
    );
    assert!(started.elapsed() <= N::config().claim_timeout + N::SLACK);

    let new_leader = cluster.leader_among(&majority).await;
    let taker = majority[0];
    let taken = cluster
        .node(taker)
        .claim("c")
        .await
        .expect("majority claims");
    assert_eq!(
        taken,
        Claimed {
            epoch: first.epoch + 1,
            previous: Some(Grant {
                node: old,
                epoch: first.epoch
            })
        },
        "the refused claim was never applied"
    );
    // Cut off, the old leader cannot know yet: the fencing happens where
    // the new grant is known, which is why a cut-off node may not claim.
    assert!(cluster.node(old).check("c", old, first.epoch));

    cluster.router.heal_all().await;
    // Back, the old leader reads the table as the majority has it once a
    // barrier of its own went through the leader and was applied here.
    let within = N::config().claim_timeout * 4;
    cluster
        .node(old)
        .catch_up(within)
        .await
        .expect("the old leader catches up");
    assert_eq!(
        cluster.node(old).owner("c"),
        Some(Grant {
            node: taker,
            epoch: taken.epoch
        })
    );
    cluster.caught_up(new_leader, &all).await;
    for &id in &all {
        let node = cluster.node(id);
        assert!(
            !node.check("c", old, first.epoch),
            "node {id} takes the stale epoch"
        );
        assert!(node.check("c", taker, taken.epoch));
    }
    cluster.shutdown().await;
}

async fn five_nodes_keep_granting_with_a_minority_cut_off<N: TestNet>() {
    let cluster = Cluster::<N>::start(5, N::config()).await;
    let all = cluster.ids();
    let leader = cluster.leader_among(&all).await;
    let minority: Vec<NodeId> = all
        .iter()
        .copied()
        .filter(|&id| id != leader)
        .take(2)
        .collect();
    let majority: Vec<NodeId> = all
        .iter()
        .copied()
        .filter(|id| !minority.contains(id))
        .collect();
    let first = cluster.node(minority[0]).claim("c").await.expect("claims");
    cluster.caught_up(leader, &all).await;

    cluster.router.partition(&minority);
    for &id in &minority {
        let refused = cluster.node(id).claim("c").await;
        assert!(
            matches!(refused, Err(OwnershipError::NoQuorum(_))),
            "node {id}: {refused:?}"
        );
    }
    let taker = *majority
        .iter()
        .find(|&&id| id != leader)
        .expect("a follower");
    let taken = cluster
        .node(taker)
        .claim("c")
        .await
        .expect("majority claims");
    assert_eq!(
        taken.previous,
        Some(Grant {
            node: minority[0],
            epoch: first.epoch
        })
    );

    cluster.router.heal_all().await;
    let leader = cluster.leader_among(&all).await;
    cluster.caught_up(leader, &all).await;
    for &id in &all {
        assert!(!cluster.node(id).check("c", minority[0], first.epoch));
        assert_eq!(
            cluster.node(id).owner("c"),
            Some(Grant {
                node: taker,
                epoch: taken.epoch
            })
        );
    }
    cluster.shutdown().await;
}

/// In memory only: it needs a link cut one way.
#[tokio::test(start_paused = true)]
async fn a_claim_whose_answer_was_lost_is_not_repeated() {
    let cluster = Cluster::<MemRouter>::start(3, MemRouter::config()).await;
    let all = cluster.ids();
    let leader = cluster.leader_among(&all).await;
    let follower = *all.iter().find(|&&id| id != leader).expect("a follower");

    // The claim reaches the leader and commits; the answer is lost.
    cluster.router.cut_one_way(leader, follower);
    let lost = cluster.node(follower).claim("c").await;
    assert!(matches!(lost, Err(OwnershipError::Unconfirmed)), "{lost:?}");
    let granted = Grant {
        node: follower,
        epoch: 1,
    };
    assert_eq!(
        cluster.node(leader).owner("c"),
        Some(granted),
        "granted once, not again by a retry"
    );

    // Harmless: the follower does not serve under an epoch it never
    // learnt, and its next claim supersedes the grant.
    cluster.router.heal_all();
    let leader = cluster.leader_among(&all).await;
    let again = cluster.node(follower).claim("c").await.expect("claims");
    assert_eq!(
        again,
        Claimed {
            epoch: 2,
            previous: Some(granted)
        }
    );
    cluster.caught_up(leader, &all).await;
    cluster.shutdown().await;
}

async fn racing_claims_leave_one_owner<N: TestNet>() {
    let cluster = Cluster::<N>::start(3, N::config()).await;
    let (b, c) = (2, 3);
    let (by_b, by_c) = tokio::join!(cluster.node(b).claim("c"), cluster.node(c).claim("c"));
    let (by_b, by_c) = (by_b.expect("B claims"), by_c.expect("C claims"));
    assert_ne!(by_b.epoch, by_c.epoch);
    let (winner, won, lost) = if by_b.epoch > by_c.epoch {
        (
            b,
            by_b,
            Grant {
                node: c,
                epoch: by_c.epoch,
            },
        )
    } else {
        (
            c,
            by_c,
            Grant {
                node: b,
                epoch: by_b.epoch,
            },
        )
    };
    assert_eq!(
        won.previous,
        Some(lost),
        "the later claim replaced the earlier"
    );

    let leader = cluster.leader_among(&cluster.ids()).await;
    cluster.caught_up(leader, &cluster.ids()).await;
    for node in &cluster.nodes {
        assert_eq!(
            node.owner("c"),
            Some(Grant {
                node: winner,
                epoch: won.epoch
            })
        );
        assert!(!node.check("c", lost.node, lost.epoch));
    }
    cluster.shutdown().await;
}

async fn a_release_applies_only_under_the_current_epoch<N: TestNet>() {
    let cluster = Cluster::<N>::start(3, N::config()).await;
    let first = cluster.node(2).claim("c").await.expect("claims");
    let second = cluster.node(3).claim("c").await.expect("claims");
    assert!(
        !cluster
            .node(2)
            .release("c", first.epoch)
            .await
            .expect("proposed")
    );
    assert!(
        cluster
            .node(3)
            .release("c", second.epoch)
            .await
            .expect("proposed")
    );

    let leader = cluster.leader_among(&cluster.ids()).await;
    cluster.caught_up(leader, &cluster.ids()).await;
    for node in &cluster.nodes {
        assert_eq!(node.owner("c"), None);
        assert!(!node.check("c", 3, second.epoch));
    }
    let again = cluster.node(2).claim("c").await.expect("claims");
    assert_eq!(
        again,
        Claimed {
            epoch: second.epoch + 1,
            previous: None
        }
    );
    cluster.shutdown().await;
}

async fn a_node_behind_the_purged_log_catches_up_from_a_snapshot<N: TestNet>() {
    let mut config = N::config();
    config.raft.snapshot_policy = SnapshotPolicy::LogsSinceLast(4);
    config.raft.max_in_snapshot_log_to_keep = 0;
    config.raft.purge_batch_size = 1;
    let cluster = Cluster::<N>::start(3, config).await;
    let all = cluster.ids();
    let leader = cluster.leader_among(&all).await;
    let behind = *all.iter().find(|&&id| id != leader).expect("a follower");
    cluster.router.partition(&[behind]);

    let mut granted = Vec::new();
    for i in 0..12 {
        let client_id = format!("c{i}");
        let claimed = cluster
            .node(leader)
            .claim(&client_id)
            .await
            .expect("claims");
        granted.push((client_id, claimed.epoch));
    }
    // Whichever node leads after the heal, the entries the cut node lacks
    // are gone from its log: only a snapshot can bring the cut node up.
    let behind_at = cluster.metrics(behind).last_applied.map(|id| id.index);
    for id in all.iter().copied().filter(|&id| id != behind) {
        wait_for(&format!("node {id} to purge past the cut node"), || {
            let purged = cluster.metrics(id).purged.map(|id| id.index);
            (purged > behind_at).then_some(())
        })
        .await;
    }

    cluster.router.heal_all().await;
    cluster.caught_up(leader, &all).await;
    let snapshot = cluster.metrics(behind).snapshot.map(|id| id.index);
    assert!(snapshot > behind_at, "caught up through a snapshot");
    for (client_id, epoch) in &granted {
        assert_eq!(
            cluster.node(behind).owner(client_id),
            Some(Grant {
                node: leader,
                epoch: *epoch
            })
        );
    }
    cluster.shutdown().await;
}

/// A voter stopped and started again on the files it left is the member
/// it was: before it hears from anyone, its vote, its log and its table
/// (the last snapshot, then the committed log after it) are back. The
/// leader is the one restarted, whose vote (for itself) matters most; it
/// comes back cut off, so the others elect a new leader and grant a claim
/// meanwhile, and once it rejoins, every epoch handed out is above all
/// the earlier ones.
async fn a_restarted_voter_keeps_its_vote_log_and_table<N: TestNet>() {
    let mut config = N::config();
    // Snapshots and purges only when the test asks.
    config.raft.snapshot_policy = SnapshotPolicy::Never;
    let mut cluster = Cluster::<N>::start(3, config).await;
    let all = cluster.ids();
    let restarted = cluster.leader_among(&all).await;
    let others: Vec<NodeId> = all.iter().copied().filter(|&id| id != restarted).collect();
    let client_ids: Vec<String> = (0..4).map(|i| format!("c{i}")).collect();
    let mut last_epoch = 0;
    let mut claim_round = async |cluster: &Cluster<N>, rounds: usize| {
        for i in 0..rounds {
            let node = all[i % all.len()];
            let claimed = cluster
                .node(node)
                .claim(&client_ids[i % client_ids.len()])
                .await
                .expect("claims");
            assert!(claimed.epoch > last_epoch);
            last_epoch = claimed.epoch;
        }
    };

    // Part of the log in a snapshot, purged; part after it.
    claim_round(&cluster, 6).await;
    cluster.caught_up(restarted, &all).await;
    let raft = cluster.node(restarted).raft();
    raft.trigger().snapshot().await.expect("snapshot triggered");
    let snapshot = wait_for("the snapshot", || cluster.metrics(restarted).snapshot).await;
    raft.trigger()
        .purge_log(snapshot.index)
        .await
        .expect("purge triggered");
    wait_for("the purge", || {
        (cluster.metrics(restarted).purged == Some(snapshot)).then_some(())
    })
    .await;
    claim_round(&cluster, 3).await;
    cluster.caught_up(restarted, &all).await;
    let before = cluster.metrics(restarted);
    assert!(
        before.last_applied > Some(snapshot),
        "entries after the snapshot"
    );
    let owners: Vec<Option<Grant>> = client_ids
        .iter()
        .map(|client_id| cluster.node(restarted).owner(client_id))
        .collect();

    cluster.router.partition(&[restarted]);
    cluster.restart(restarted).await;
    let after = wait_for("the restarted node's first metrics", || {
        let metrics = cluster.metrics(restarted);
        (metrics.last_log_index.is_some()).then_some(metrics)
    })
    .await;
    assert_eq!(after.vote, before.vote, "the vote is back");
    assert_eq!(after.state, ServerState::Leader, "leads in its term again");
    assert_eq!(
        after.last_log_index, before.last_log_index,
        "the log is back"
    );
    assert_eq!(after.purged, Some(snapshot));
    assert_eq!(after.snapshot, Some(snapshot));
    assert_eq!(
        after.last_applied, before.last_applied,
        "the log re-applied"
    );
    for (client_id, owner) in client_ids.iter().zip(&owners) {
        assert_eq!(cluster.node(restarted).owner(client_id), *owner);
    }

    // Cut off, it cannot grant; the others can, above every earlier epoch.
    let refused = cluster.node(restarted).claim("c0").await;
    assert!(
        matches!(refused, Err(OwnershipError::NoQuorum(_))),
        "{refused:?}"
    );
    cluster.leader_among(&others).await;
    let taken = cluster.node(others[0]).claim("c0").await.expect("claims");
    assert!(taken.epoch > last_epoch, "no epoch handed out twice");

    cluster.router.heal_all().await;
    let leader = cluster.leader_among(&all).await;
    cluster.caught_up(leader, &all).await;
    let grant = Grant {
        node: others[0],
        epoch: taken.epoch,
    };
    assert_eq!(cluster.node(restarted).owner("c0"), Some(grant));
    let again = cluster.node(restarted).claim("c0").await.expect("claims");
    assert_eq!(
        again,
        Claimed {
            epoch: taken.epoch + 1,
            previous: Some(grant)
        }
    );
    cluster.shutdown().await;
}

/// Each scenario as a test on each network.
macro_rules! on_every_network {
    ($($scenario:ident),* $(,)?) => {
        mod mem {
            use super::MemRouter;
            $(
                #[tokio::test(start_paused = true)]
                async fn $scenario() {
                    super::$scenario::<MemRouter>().await;
                }
            )*
        }

        mod quic {
            use super::QuicNet;
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario::<QuicNet>().await;
                }
            )*
        }
    };
}

on_every_network!(
    a_later_claim_fences_the_earlier_epoch_on_every_node,
    a_leader_cut_off_from_the_majority_cannot_claim,
    five_nodes_keep_granting_with_a_minority_cut_off,
    racing_claims_leave_one_owner,
    a_release_applies_only_under_the_current_epoch,
    a_node_behind_the_purged_log_catches_up_from_a_snapshot,
    a_restarted_voter_keeps_its_vote_log_and_table,
);

/// A fresh store in a temp dir of its own for each of the suite's tests.
struct Stores;

impl StoreBuilder<raft::TypeConfig, LogStore, StateMachine, TempDir> for Stores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = TempDir::new("ownership-suite");
        let store = RaftStore::open(&create(&dir)).expect("store opens");
        let state_machine = StateMachine::open(store.clone(), SharedApplied::default())
            .await
            .expect("state machine opens");
        Ok((dir, LogStore::new(store), state_machine))
    }
}

/// openraft's own checks of a log store and state machine.
#[test]
fn the_stores_pass_openrafts_suite() {
    Suite::<raft::TypeConfig, LogStore, StateMachine, Stores, TempDir>::test_all(Stores)
        .expect("suite passes");
}
