//! The ownership raft ([`crate::cluster::ownership`]) in a running node:
//! its file opened before the cluster thread starts, the raft on the
//! cluster's tokio runtime (its disk work on the blocking pool), its
//! requests over the peers' QUIC links ([`super::raftnet`]), its members
//! chosen by the reconciler from gossip ([`reconcile`]), and its health
//! in the metrics and `/ready`.
//!
//! # Without a data dir
//!
//! The raft still runs, so a cluster without `--data-dir` still has
//! one owner per client id, but its file lives in a temporary dir
//! removed when the process exits, and the node takes a new raft id at
//! every start ([`ephemeral_raft_id`]): a voter that forgot its vote and
//! log must not count towards a majority under its old id. The leader
//! drops the old id as soon as the node is back under the new one. What
//! it costs: a restart of such a node is a membership change, and if a
//! majority of the voters restarts at once (all without data dirs) the
//! raft has lost its majority for good, and with it every grant; it
//! has to be formed anew, which this version does not do by itself
//! (stop every node, start them again).
//!
//! # Readiness
//!
//! A node whose raft was formed and that has no leader it can reach is
//! not ready (`/ready` answers 503): it can grant no ownership, so new
//! clients belong on the majority's side of a partition. "Reaches a
//! leader" is [`OwnershipStatus::has_quorum`]: a leader whose majority
//! acknowledged it within [`QUORUM_LEASE`], or a follower or learner
//! that took the leader's append-entries within it. It must be missing
//! for [`READY_GRACE`] first, so that a normal election (a leader gone:
//! an election timeout, then a vote) does not flap readiness.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::link::{Hello, LinkId};
use super::raftnet::{self, LeaderContact, QuicTransport, RaftLinks, RaftServer, Timeouts};
use super::{CLOSE_PROTOCOL, Cluster};
use crate::cluster::OwnershipStatus;
use crate::cluster::frame::ClusterMsg;
use crate::cluster::node::{ClaimResult, PreviousOwner};
use crate::cluster::ownership::raft::{ephemeral_raft_id, is_raft_id_of, raft_id};
use crate::cluster::ownership::reconcile::{
    self, Action, Member, RaftMember, RaftView, Reconciler, ReconcilerConfig,
};
use crate::cluster::ownership::{
    NodeId, Ownership, OwnershipConfig, OwnershipError, RaftStore, RaftStoreError,
    handle::CLAIM_TIMEOUT,
};
use crate::cluster::settings::ClusterSettings;
use crate::metrics::{OwnershipReadiness, Readiness};
use crate::shard::mesh::ShardMsg;

/// openraft's timing on a real network. A heartbeat every 150 ms is
/// also how long openraft lets an append-entries take (entries are
/// synced on the follower first); a follower that hears none for 0.75
/// to 1.5 s stands for election. A leader killed is replaced within
/// about 1 to 2 s, which a claim's 2 s ([`CLAIM_TIMEOUT`]) mostly rides
/// out.
const HEARTBEAT_MS: u64 = 150;
const ELECTION_MIN_MS: u64 = 750;
const ELECTION_MAX_MS: u64 = 1500;
/// How recent the last sign of a leader must be to count as having one.
pub const QUORUM_LEASE: Duration = Duration::from_millis(ELECTION_MAX_MS);
/// How long a formed raft may be without a reachable leader before the
/// node says it is not ready.
pub const READY_GRACE: Duration = Duration::from_secs(3);
/// How long a node must be without a reachable leader, and see no
/// majority of the voters alive, before it lets its stored sessions go
/// (`ShardMsg::Fence`). It must come before the majority can promote
/// their copies: gossip suspects a node after about a second of failed
/// probes and declares it down `cluster.suspect_timeout` later (3 s by
/// default), while this fires about 2.5 s after the last word from a
/// leader ([`QUORUM_LEASE`] and this).
const FENCE_AFTER: Duration = Duration::from_secs(1);
/// How long a membership change may take before it counts as failed and
/// is decided afresh.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a snapshot may take to cross, both ways: the table of
/// some million client ids is tens of megabytes.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a restarted node waits to apply the log it holds before it
/// reads who owns the sessions it restored.
const CATCH_UP: Duration = Duration::from_secs(10);
/// The reconciler's pauses: after a failed change, and after a change
/// (one tick, so the metrics it reads show the change).
const RETRY: Duration = Duration::from_secs(1);
const PAUSE: Duration = Duration::from_millis(100);

/// The raft's settings in a running node.
pub fn ownership_config() -> OwnershipConfig {
    let millis = Duration::from_millis;
    OwnershipConfig::with_timing(
        millis(HEARTBEAT_MS),
        (millis(ELECTION_MIN_MS), millis(ELECTION_MAX_MS)),
        CLAIM_TIMEOUT,
    )
}

/// Where the raft's file is, opened.
pub struct RaftHome {
    store: RaftStore,
    /// In the data dir: it outlives the process.
    durable: bool,
    temp: Option<TempDir>,
}

#[derive(Debug, thiserror::Error)]
pub enum RaftHomeError {
    #[error("cannot make a temporary dir for the ownership raft at {}: {error}", path.display())]
    TempDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] RaftStoreError),
}

impl RaftHome {
    /// Opens the raft's file in `settings.data_dir` (locked already by
    /// the data dir's open), or in a new temporary dir without one.
    pub fn open(settings: &ClusterSettings) -> Result<RaftHome, RaftHomeError> {
        if let Some(dir) = &settings.data_dir {
            return Ok(RaftHome {
                store: RaftStore::open(dir)?,
                durable: true,
                temp: None,
            });
        }
        let temp = TempDir::new(&settings.node_id)?;
        Ok(RaftHome {
            store: RaftStore::open(&temp.0)?,
            durable: false,
            temp: Some(temp),
        })
    }
}

/// A dir for one process's raft, removed when the cluster thread ends. A
/// kill -9 leaves it behind, under the dead process's id.
struct TempDir(PathBuf);

impl TempDir {
    fn new(node_id: &str) -> Result<TempDir, RaftHomeError> {
        let prefix = format!("ringmq-ownership-{node_id}-");
        remove_left_behind(&prefix);
        let path = std::env::temp_dir().join(format!("{prefix}{}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|error| RaftHomeError::TempDir {
            path: path.clone(),
            error,
        })?;
        Ok(TempDir(path))
    }
}

/// Removes the temporary raft dirs named `prefix` and a process id that
/// no process has any more (what a kill -9 of a node with this node id
/// left behind), and one under this process's id (an earlier process
/// that had it). A live process's dir (another node of a test, on this
/// machine) is left alone.
fn remove_left_behind(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|name| name.strip_prefix(prefix)) else {
            continue;
        };
        let gone = pid.parse::<u32>().is_ok_and(|pid| {
            pid == std::process::id() || !PathBuf::from(format!("/proc/{pid}")).exists()
        });
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How long a promotion is proposed again while the raft cannot confirm
/// it (an election after the leader died takes seconds), and how often.
const PROMOTE_PATIENCE: Duration = Duration::from_secs(60);
const PROMOTE_RETRY: Duration = Duration::from_millis(500);

/// A claim's outcome: the epoch granted and the raft id of the node that
/// held the client id before, or `Err` when no majority confirmed it.
pub(super) struct ClaimDone {
    pub shard: usize,
    pub token: u64,
    pub client_id: ByteString,
    pub outcome: Result<(u64, Option<NodeId>), ()>,
}

/// The raft's side of the cluster runtime.
pub(super) struct RaftSide {
    name: String,
    id: NodeId,
    config: OwnershipConfig,
    /// Until [`RaftSide::start`] hands it to the raft.
    store: Option<RaftStore>,
    ownership: Option<Arc<Ownership<QuicTransport>>>,
    links: watch::Sender<RaftLinks>,
    server: watch::Sender<Option<RaftServer>>,
    contact: LeaderContact,
    reconciler: Reconciler,
    /// What each linked peer said of its raft.
    peers: FxHashMap<ByteString, RaftMember>,
    /// What this node last told its peers of its state.
    announced: bool,
    done_tx: mpsc::UnboundedSender<bool>,
    /// Each change's outcome, for the main loop to hand back.
    pub(super) done_rx: mpsc::UnboundedReceiver<bool>,
    /// Restored sessions waiting for the raft to say who owns them, per
    /// shard; asked once the raft has a leader.
    unchecked: Vec<(usize, Vec<ByteString>)>,
    owners_tx: mpsc::UnboundedSender<(usize, ShardMsg)>,
    /// The answers (`ShardMsg::Owners`), for the main loop to deliver.
    pub(super) owners_rx: mpsc::UnboundedReceiver<(usize, ShardMsg)>,
    claims_tx: mpsc::UnboundedSender<ClaimDone>,
    /// Each claim's outcome, for the main loop to hand the node.
    pub(super) claims_rx: mpsc::UnboundedReceiver<ClaimDone>,
    promoted_tx: mpsc::UnboundedSender<(ByteString, Result<Option<u64>, ()>)>,
    /// Each promotion's outcome, for the main loop to hand the node:
    /// `Err` when the raft never confirmed it.
    pub(super) promoted_rx: mpsc::UnboundedReceiver<(ByteString, Result<Option<u64>, ()>)>,
    /// Since when no leader has been reachable, while the raft is formed.
    lost_since: Option<Instant>,
    /// Since when this node has been in a minority: no reachable leader,
    /// and no majority of the voters alive by gossip.
    minority_since: Option<Instant>,
    /// Whether the shards were told to let their stored sessions go in
    /// this spell in the minority.
    fenced: bool,
    /// Set when `fenced` is, until the runtime tells the shards.
    fence_pending: bool,
    status: Option<OwnershipStatus>,
    _temp: Option<TempDir>,
}

impl RaftSide {
    pub(super) fn new(
        settings: &ClusterSettings,
        home: RaftHome,
        incarnation: u64,
        now: Instant,
    ) -> RaftSide {
        let id = if home.durable {
            raft_id(&settings.node_id)
        } else {
            ephemeral_raft_id(&settings.node_id, incarnation)
        };
        let reconciler = Reconciler::new(
            ReconcilerConfig {
                bootstrap_expect: settings.bootstrap_expect,
                dead_after: settings.peer_hold,
                // Gossip spreads a change within a few probes.
                settle: (settings.probe_interval * 4).max(Duration::from_secs(1)),
                retry: RETRY,
                pause: PAUSE,
            },
            &settings.node_id,
            id,
            now,
        );
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (claims_tx, claims_rx) = mpsc::unbounded_channel();
        let (owners_tx, owners_rx) = mpsc::unbounded_channel();
        let (promoted_tx, promoted_rx) = mpsc::unbounded_channel();
        RaftSide {
            name: settings.node_id.clone(),
            id,
            config: ownership_config(),
            store: Some(home.store),
            ownership: None,
            links: watch::Sender::new(RaftLinks::default()),
            server: watch::Sender::new(None),
            contact: LeaderContact::new(now),
            reconciler,
            peers: FxHashMap::default(),
            announced: false,
            done_tx,
            done_rx,
            unchecked: Vec::new(),
            owners_tx,
            owners_rx,
            claims_tx,
            claims_rx,
            promoted_tx,
            promoted_rx,
            lost_since: None,
            minority_since: None,
            fenced: false,
            fence_pending: false,
            status: None,
            _temp: home.temp,
        }
    }

    /// Starts the raft on its file: on a file an earlier run left, it
    /// comes back as the member it was before this returns. A raft that
    /// cannot start is logged, and the node says it is not ready.
    pub(super) async fn start(&mut self, readiness: &Readiness) {
        let Some(store) = self.store.take() else {
            return;
        };
        let path = store.path().to_owned();
        // From the file: openraft's metrics show it only once its core
        // has started, and a peer must not hear "no state" meanwhile.
        let had_state = store
            .run(|store| Ok(store.log_state()?.last_log_id.is_some()))
            .await
            .unwrap_or(false);
        let transport = Arc::new(QuicTransport::new(self.links.subscribe(), self.timeouts()));
        match Ownership::start(self.id, self.config.clone(), store, transport).await {
            Ok(ownership) => {
                self.server.send_replace(Some(RaftServer {
                    raft: ownership.raft().clone(),
                    contact: self.contact.clone(),
                }));
                self.announced = had_state;
                info!(
                    node = %self.name,
                    raft_id = self.id,
                    file = %path.display(),
                    member = self.announced,
                    "ownership raft started"
                );
                self.ownership = Some(Arc::new(ownership));
            }
            Err(error) => {
                error!(node = %self.name, %error, file = %path.display(), "the ownership raft cannot start");
                readiness.set_ownership(OwnershipReadiness::Stopped);
            }
        }
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            rpc: Duration::from_secs(5),
            forward: self.config.claim_timeout,
            snapshot: SNAPSHOT_TIMEOUT,
        }
    }

    /// Tells a peer who this node is in the raft.
    pub(super) fn member_frame(&self) -> ClusterMsg {
        ClusterMsg::RaftMember {
            raft_id: self.id,
            has_state: self.announced,
        }
    }

    /// What answers the peers' requests; `serve` follows it.
    pub(super) fn server(&self) -> watch::Receiver<Option<RaftServer>> {
        self.server.subscribe()
    }

    /// The raft ids a peer named `peer` may speak as.
    pub(super) fn senders(peer: &str, incarnation: u64) -> Vec<NodeId> {
        vec![raft_id(peer), ephemeral_raft_id(peer, incarnation)]
    }

    /// A peer's `RaftMember`; an error is a raft id that is not the
    /// peer's, which breaks the protocol.
    pub(super) fn handle_member(
        &mut self,
        peer: &ByteString,
        incarnation: u64,
        member: RaftMember,
    ) -> Result<(), String> {
        if !is_raft_id_of(member.id, peer, incarnation) {
            return Err(format!("raft id {} is not node {peer}'s", member.id));
        }
        self.peers.insert(peer.clone(), member);
        Ok(())
    }

    /// Asks the raft to make this node the owner of `client_id`, for
    /// shard `shard`'s claim `token`, on a task of its own: a claim waits
    /// for a commit on a majority (or [`CLAIM_TIMEOUT`]), and the loop
    /// goes on meanwhile. The outcome comes back on `claims_rx`; the node
    /// it took the client id from is a raft id, named by
    /// [`RaftSide::name_of`] when the outcome is handled.
    pub(super) fn claim(&self, shard: usize, client_id: ByteString, token: u64) {
        let claims = self.claims_tx.clone();
        let Some(ownership) = self.ownership.clone() else {
            let _ = claims.send(ClaimDone {
                shard,
                token,
                client_id,
                outcome: Err(()),
            });
            return;
        };
        tokio::spawn(async move {
            let outcome = match ownership.claim(&client_id).await {
                Ok(claimed) => Ok((claimed.epoch, claimed.previous.map(|grant| grant.node))),
                Err(error) => {
                    warn!(client = %client_id, %error, "claim of a client id failed");
                    Err(())
                }
            };
            let _ = claims.send(ClaimDone {
                shard,
                token,
                client_id,
                outcome,
            });
        });
    }

    /// Asks the raft, on a task, to give this node each of `client_ids`
    /// that node `from` still owns. A node that keeps copies of sessions
    /// has a data dir, so `from`'s raft id is the one its name gives. A
    /// promotion the raft cannot confirm is left: the copy stays, for a
    /// reconnecting client's claim to recover.
    pub(super) fn promote(&self, from: &str, client_ids: Vec<ByteString>) {
        let Some(ownership) = self.ownership.clone() else {
            return;
        };
        let promoted = self.promoted_tx.clone();
        let from_id = raft_id(from);
        tokio::spawn(async move {
            for client_id in client_ids {
                // The dead node may have led the raft: proposals fail until
                // a new leader is elected, and are proposed again.
                let deadline = Instant::now() + PROMOTE_PATIENCE;
                loop {
                    match ownership.promote(&client_id, from_id).await {
                        Ok(epoch) => {
                            let _ = promoted.send((client_id, Ok(epoch)));
                            break;
                        }
                        Err(error) if Instant::now() >= deadline => {
                            warn!(client = %client_id, %error, "promotion of a session copy failed; the copy is kept for its client's claim");
                            let _ = promoted.send((client_id, Err(())));
                            break;
                        }
                        Err(error) => {
                            debug!(client = %client_id, %error, "promotion of a session copy not confirmed yet");
                            tokio::time::sleep(PROMOTE_RETRY).await;
                        }
                    }
                }
            }
        });
    }

    /// Shard `shard` restored the sessions of `client_ids` from disk: who
    /// owns them is asked once the raft has a leader
    /// ([`RaftSide::ask_owners`]).
    pub(super) fn check_owners(&mut self, shard: usize, client_ids: Vec<ByteString>) {
        self.unchecked.push((shard, client_ids));
    }

    /// Asks, on a task, who owns the restored or fenced sessions, once
    /// this node has a leader it can reach and has caught up with the
    /// majority's table ([`Ownership::catch_up`]): a node back from a
    /// partition must see the claims made on the other side, or it would
    /// send the wills of sessions served there. A session this node
    /// claimed since is not touched (`settle_restored`). Tried again
    /// until the raft answers: until then the sessions stay as they are,
    /// their wills and expiries held.
    fn ask_owners(&mut self) {
        let has_leader = self.status.is_some_and(|status| status.has_quorum);
        if self.unchecked.is_empty() || !has_leader {
            return;
        }
        let Some(ownership) = self.ownership.clone() else {
            return;
        };
        let unchecked = std::mem::take(&mut self.unchecked);
        let owners = self.owners_tx.clone();
        let me = self.id;
        tokio::spawn(async move {
            loop {
                match ownership.catch_up(CATCH_UP).await {
                    Ok(()) => break,
                    Err(OwnershipError::Stopped) => return,
                    Err(error) => {
                        warn!(%error, "the ownership table did not catch up yet; asking again");
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
            for (shard, client_ids) in unchecked {
                let mut here = Vec::new();
                let mut elsewhere = Vec::new();
                for client_id in client_ids {
                    match ownership.owner(&client_id) {
                        Some(grant) if grant.node == me => here.push((client_id, grant.epoch)),
                        Some(_) => elsewhere.push(client_id),
                        // Never claimed, or released: nobody else has it.
                        None => {}
                    }
                }
                let _ = owners.send((shard, ShardMsg::Owners { here, elsewhere }));
            }
        });
    }

    /// Releases `client_id`, held under `epoch`: its session ended here.
    /// Best effort, on a task: a release that fails leaves an entry a
    /// later claim replaces.
    pub(super) fn release(&self, client_id: ByteString, epoch: u64) {
        let Some(ownership) = self.ownership.clone() else {
            return;
        };
        tokio::spawn(async move {
            if let Err(error) = ownership.release(&client_id, epoch).await {
                debug!(client = %client_id, epoch, %error, "release of a client id failed");
            }
        });
    }

    /// The node name of raft id `id`: this node, or a linked peer that said
    /// it is `id`. None for a node not linked now (dead, or restarted
    /// without a data dir under a new id): there is nobody to ask for a
    /// session then.
    pub(super) fn name_of(&self, id: NodeId) -> Option<ByteString> {
        if id == self.id {
            return Some(ByteString::from(self.name.as_str()));
        }
        (self.peers.iter())
            .find(|(_, member)| member.id == id)
            .map(|(name, _)| name.clone())
    }

    /// A peer's link went down: what it said belonged to that link.
    pub(super) fn handle_link_down(&mut self, peer: &ByteString) {
        self.peers.remove(peer);
    }

    /// The raft id of each linked peer that said which it is.
    pub(super) fn peer_id(&self, peer: &ByteString) -> Option<NodeId> {
        self.peers.get(peer).map(|member| member.id)
    }

    pub(super) fn publish_links(&self, links: RaftLinks) {
        self.links.send_replace(links);
    }

    pub(super) fn status(&self) -> Option<OwnershipStatus> {
        self.status
    }

    pub(super) fn handle_done(&mut self, ok: bool, now: Instant) {
        self.reconciler.handle_done(ok, now);
    }

    /// Every tick: the members as gossip has them (`(name, alive)`, this
    /// node left out), then the reconciler's next change, the health for
    /// the metrics and `/ready`. Returns the frame to tell every peer
    /// when this node's raft has just gained state.
    pub(super) fn tick<'a>(
        &mut self,
        members: impl Iterator<Item = (&'a str, bool)>,
        readiness: &Readiness,
        now: Instant,
    ) -> Option<ClusterMsg> {
        let ownership = self.ownership.clone()?;
        let members: Vec<Member> = members
            .map(|(name, alive)| Member {
                name: name.to_owned(),
                raft: self.peers.get(name).copied(),
                reachable: alive,
            })
            .collect();
        let alive = members.iter().filter(|member| member.reachable).count();
        self.reconciler.handle_members(members, now);
        let metrics = ownership.raft().metrics().borrow().clone();
        let view = reconcile::view_of(&metrics);
        if let Some(action) = self.reconciler.poll_action(&view, now) {
            self.spawn_change(&ownership, action, &view);
        }
        let has_quorum = if view.is_leader {
            let alone = view.voters.len() == 1 && view.voters.contains_key(&self.id);
            alone
                || metrics
                    .millis_since_quorum_ack
                    .is_some_and(|millis| Duration::from_millis(millis) <= QUORUM_LEASE)
        } else {
            metrics.current_leader.is_some()
                && self
                    .contact
                    .since(now)
                    .is_some_and(|since| since <= QUORUM_LEASE)
        };
        self.status = Some(OwnershipStatus {
            is_leader: view.is_leader,
            voters: view.voters.len(),
            term: metrics.current_term,
            has_quorum,
        });
        // A raft does not lose its state; a view that says so is metrics
        // not caught up yet.
        let gained = view.has_state && !self.announced;
        self.announced |= view.has_state;
        self.update_readiness(self.announced, has_quorum, readiness, now);
        let minority = self.announced && !has_quorum && (alive + 1) * 2 <= view.voters.len();
        if !minority {
            self.minority_since = None;
            self.fenced = false;
        } else if now.duration_since(*self.minority_since.get_or_insert(now)) >= FENCE_AFTER
            && !self.fenced
        {
            warn!(node = %self.name, alive, voters = view.voters.len(), "in a minority of the cluster: letting go of the stored sessions the majority may take over");
            self.fenced = true;
            self.fence_pending = true;
        }
        self.ask_owners();
        gained.then(|| self.member_frame())
    }

    fn update_readiness(
        &mut self,
        formed: bool,
        has_quorum: bool,
        readiness: &Readiness,
        now: Instant,
    ) {
        if !formed || has_quorum {
            if self
                .lost_since
                .take()
                .is_some_and(|since| now.duration_since(since) >= READY_GRACE)
            {
                info!(node = %self.name, "the ownership raft has a reachable leader again");
            }
            readiness.set_ownership(OwnershipReadiness::Ready);
            return;
        }
        let since = *self.lost_since.get_or_insert(now);
        let lost = now.duration_since(since);
        if lost >= READY_GRACE {
            if lost < READY_GRACE + super::TICK {
                warn!(node = %self.name, "no reachable leader of the ownership raft: not ready until one is back");
            }
            readiness.set_ownership(OwnershipReadiness::NoLeader);
        }
    }

    fn spawn_change(
        &self,
        ownership: &Arc<Ownership<QuicTransport>>,
        action: Action,
        view: &RaftView,
    ) {
        let named = |ids: &BTreeSet<NodeId>| -> Vec<String> {
            let mut names: Vec<String> = ids
                .iter()
                .map(
                    |id| match view.voters.get(id).or_else(|| view.learners.get(id)) {
                        Some(name) => format!("{name} ({id})"),
                        None => id.to_string(),
                    },
                )
                .collect();
            names.sort();
            names
        };
        let node = &self.name;
        match &action {
            Action::Initialize(voters) => {
                let mut names: Vec<&str> = voters.values().map(|node| node.addr.as_str()).collect();
                names.sort();
                info!(%node, voters = ?names, "forming the ownership raft");
            }
            Action::AddLearner { id, name } => {
                info!(%node, learner = %name, raft_id = id, "ownership raft: adding a learner");
            }
            Action::SetVoters(voters) => {
                info!(%node, voters = ?named(voters), "ownership raft: changing the voters");
            }
            Action::RemoveLearners(learners) => {
                info!(%node, learners = ?named(learners), "ownership raft: removing learners gone for good");
            }
        }
        let ownership = ownership.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let changed = tokio::time::timeout(CHANGE_TIMEOUT, ownership.change(action)).await;
            let ok = match changed {
                Ok(Ok(())) => true,
                Ok(Err(error)) => {
                    warn!(%error, "ownership raft membership change failed; deciding again");
                    false
                }
                Err(_) => {
                    warn!("ownership raft membership change timed out; deciding again");
                    false
                }
            };
            let _ = done.send(ok);
        });
    }

    /// Stops the raft (on leaving): its file is let go of when the last
    /// clone of the store is dropped.
    pub(super) async fn shutdown(&mut self) {
        self.server.send_replace(None);
        if let Some(ownership) = self.ownership.take() {
            ownership.shutdown().await;
        }
    }
}

/// The raft's part in the cluster's handling of links and ticks.
impl Cluster {
    /// A link is up: the peer hears who this node is in the raft, and its
    /// raft requests are answered.
    pub(super) fn raft_link_up(&mut self, link: LinkId, hello: &Hello) {
        let frame = self.raft.member_frame();
        self.send_control(&hello.node_id, &frame);
        if let Some(connection) = self
            .links
            .get(&link)
            .and_then(|link| link.connection.clone())
        {
            tokio::spawn(raftnet::serve(
                connection,
                hello.node_id.to_string(),
                RaftSide::senders(&hello.node_id, hello.incarnation),
                self.raft.server(),
                SNAPSHOT_TIMEOUT,
            ));
        }
    }

    /// A peer's `RaftMember` frame.
    pub(super) fn raft_member(
        &mut self,
        link: LinkId,
        peer: &ByteString,
        raft_id: NodeId,
        has_state: bool,
        now: Instant,
    ) {
        let incarnation = self
            .links
            .get(&link)
            .and_then(|link| link.hello.as_ref())
            .map_or(0, |hello| hello.incarnation);
        let member = RaftMember {
            id: raft_id,
            has_state,
        };
        match self.raft.handle_member(peer, incarnation, member) {
            Ok(()) => self.publish_raft_links(),
            Err(reason) => {
                warn!(%peer, %reason, "malformed raft frame from a peer: closing its link");
                self.close_link(link, CLOSE_PROTOCOL, &reason, now);
            }
        }
    }

    /// A claim's outcome, for the node: which node the session is to be
    /// asked of, by name.
    pub(super) fn handle_claim_done(&mut self, done: ClaimDone) {
        let result = match done.outcome {
            Ok((epoch, previous)) => {
                let previous = previous.map(|id| match self.raft.name_of(id) {
                    Some(name) => PreviousOwner::Node(name),
                    None => PreviousOwner::Unlinked(id),
                });
                ClaimResult::Granted { epoch, previous }
            }
            Err(()) => ClaimResult::Unavailable,
        };
        let now = Instant::now();
        (self.node).handle_claim_result(done.shard, done.token, done.client_id, result, now);
    }

    pub(super) fn raft_link_down(&mut self, peer: &ByteString) {
        self.raft.handle_link_down(peer);
        self.publish_raft_links();
    }

    pub(super) fn raft_tick(&mut self, now: Instant) {
        let members = self
            .membership
            .live_members()
            .map(|(member, alive)| (member.node_id.as_str(), alive));
        let announce = self.raft.tick(members, &self.readiness, now);
        if std::mem::take(&mut self.raft.fence_pending) {
            self.node.fence_sessions();
        }
        if let Some(frame) = announce {
            let peers: Vec<ByteString> = self.by_node.keys().cloned().collect();
            for peer in &peers {
                self.send_control(peer, &frame);
            }
        }
    }

    /// The connection to each linked peer that said its raft id, for the
    /// transport.
    fn publish_raft_links(&self) {
        let links = self
            .linked()
            .filter_map(|(peer, connection)| Some((self.raft.peer_id(peer)?, connection.clone())))
            .collect();
        self.raft.publish_links(Arc::new(links));
    }
}
