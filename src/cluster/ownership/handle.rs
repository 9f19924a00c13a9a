//! [`Ownership`]: one node's handle on the ownership raft. Claims and
//! releases go through raft (to the leader, wherever it is); checks read
//! the table this node has applied.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use openraft::error::{ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft};
use tokio::time::Instant;
use tracing::debug;

use super::network::{ForwardReply, LinkDown, Network, Transport};
use super::raft::{LogStore, TypeConfig};
use super::reconcile::Action;
use super::state_machine::{SharedApplied, StateMachine};
use super::store::{RaftStore, RaftStoreError};
use super::table::{Answer, Command, Epoch, Grant, NodeId};
use super::wire::{RaftAnswer, RaftRequest};

/// How long a proposal may wait for a majority by default. A claim runs
/// while a client waits for its CONNACK: long enough to ride out most
/// leader elections (an election timeout of 0.75 to 1.5 s in a running
/// node, then a round trip), short enough that a node cut off from the
/// majority refuses the client soon.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(2);

/// Pauses between attempts while no leader answers: short first (an
/// election is usually over within one election timeout), longer later.
const RETRY_FIRST: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct OwnershipConfig {
    /// openraft's settings: timeouts, snapshot policy.
    pub raft: openraft::Config,
    /// How long [`Ownership::claim`] and [`Ownership::release`] wait for a
    /// majority before giving up.
    pub claim_timeout: Duration,
}

impl OwnershipConfig {
    /// The defaults with this timing: a heartbeat every `heartbeat`, an
    /// election after `election` (a random time in the range) without
    /// one, claims that wait `claim_timeout`.
    pub fn with_timing(
        heartbeat: Duration,
        election: (Duration, Duration),
        claim_timeout: Duration,
    ) -> OwnershipConfig {
        let millis = |d: Duration| d.as_millis() as u64;
        let defaults = OwnershipConfig::default();
        OwnershipConfig {
            raft: openraft::Config {
                heartbeat_interval: millis(heartbeat),
                election_timeout_min: millis(election.0),
                election_timeout_max: millis(election.1),
                ..defaults.raft
            },
            claim_timeout,
        }
    }
}

impl Default for OwnershipConfig {
    fn default() -> OwnershipConfig {
        OwnershipConfig {
            raft: openraft::Config {
                cluster_name: "ringmq-ownership".into(),
                ..openraft::Config::default()
            },
            claim_timeout: CLAIM_TIMEOUT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    /// No majority confirmed the change in time: this node is cut off from
    /// the majority, or the cluster has none. The change may still commit
    /// later (it reached a leader that then lost its majority, or the
    /// reply was lost): a claimer that got this error does not own the
    /// client id, and a grant it never heard of is harmless, since the
    /// next claim supersedes it.
    #[error("no majority confirmed the change within {0:?}")]
    NoQuorum(Duration),
    /// The leader may have taken the change, but its answer was lost.
    /// Not retried: a claim repeated now could commit after a newer
    /// claim from another node and take the session back out of order.
    /// As with `NoQuorum`, this node does not own the client id; the
    /// client's next connect claims afresh.
    #[error("the leader's answer was lost; the change may or may not have committed")]
    Unconfirmed,
    #[error("the ownership raft has stopped")]
    Stopped,
    #[error("invalid ownership raft settings: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("cannot form the ownership raft: {0}")]
    Initialize(String),
    #[error("cannot change the ownership raft's members: {0}")]
    Membership(String),
    #[error(transparent)]
    Store(#[from] RaftStoreError),
    /// openraft could not start on the stored state (it found the log,
    /// vote and snapshot inconsistent, or could not read them).
    #[error("the ownership raft cannot start: {0}")]
    Start(#[from] Fatal<NodeId>),
}

/// A granted claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    /// The epoch this node now serves the session under.
    pub epoch: Epoch,
    /// Who held the client id before, to ask for its session.
    pub previous: Option<Grant>,
}

/// One node's member of the ownership raft.
pub struct Ownership<T> {
    id: NodeId,
    raft: Raft<TypeConfig>,
    applied: SharedApplied,
    transport: Arc<T>,
    claim_timeout: Duration,
}

impl<T: Transport> Ownership<T> {
    /// Starts this node's raft on what `store` holds, and receives
    /// through `transport` whatever the transport delivers to
    /// [`Ownership::raft`]. On a new store the log is empty, and the node
    /// joins a cluster when one node calls [`Ownership::initialize`]
    /// naming it. On a store a previous run left, the node is the member
    /// it was: same vote, same log, and its table rebuilt from the last
    /// snapshot and the committed log after it before this returns.
    pub async fn start(
        id: NodeId,
        config: OwnershipConfig,
        store: RaftStore,
        transport: Arc<T>,
    ) -> Result<Ownership<T>, OwnershipError> {
        let raft_config = Arc::new(config.raft.validate()?);
        let applied = SharedApplied::default();
        let state_machine = StateMachine::open(store.clone(), applied.clone()).await?;
        let raft = Raft::new(
            id,
            raft_config,
            Network::new(id, transport.clone()),
            LogStore::new(store),
            state_machine,
        )
        .await?;
        Ok(Ownership {
            id,
            raft,
            applied,
            transport,
            claim_timeout: config.claim_timeout,
        })
    }

    /// Forms the cluster with these voters. Called once, on one node;
    /// calling it on a node that already belongs to a cluster is a no-op.
    pub async fn initialize(
        &self,
        voters: BTreeMap<NodeId, BasicNode>,
    ) -> Result<(), OwnershipError> {
        match self.raft.initialize(voters).await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(error) => Err(OwnershipError::Initialize(error.to_string())),
        }
    }

    /// Makes the membership change the reconciler decided. Only a leader
    /// can (the reconciler asks only then); a change that finds this node
    /// no longer leading fails, and is decided afresh.
    pub async fn change(&self, action: Action) -> Result<(), OwnershipError> {
        let changed = match action {
            Action::Initialize(voters) => return self.initialize(voters).await,
            // Not blocking: the reconciler promotes a learner only once
            // it has caught up, which it reads in the metrics.
            Action::AddLearner { id, name } => {
                self.raft.add_learner(id, BasicNode::new(name), false).await
            }
            // Voters left out stay as learners: still replicated to, and
            // promoted again if needed.
            Action::SetVoters(voters) => {
                self.raft
                    .change_membership(ChangeMembers::ReplaceAllVoters(voters), true)
                    .await
            }
            Action::RemoveLearners(learners) => {
                self.raft
                    .change_membership(ChangeMembers::RemoveNodes(learners), false)
                    .await
            }
        };
        changed
            .map(drop)
            .map_err(|error| OwnershipError::Membership(error.to_string()))
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The raft itself: what a transport hands incoming requests to.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Makes this node the owner of `client_id` under a new epoch, once a
    /// majority has committed it. Fails with [`OwnershipError::NoQuorum`]
    /// when no majority answers within the claim timeout, and with
    /// [`OwnershipError::Unconfirmed`] when the leader's answer was lost;
    /// either way this node must not serve the session.
    pub async fn claim(&self, client_id: &str) -> Result<Claimed, OwnershipError> {
        let command = Command::Claim {
            client_id: ByteString::from(client_id),
            node: self.id,
        };
        match self.propose(command).await? {
            Answer::Claimed { epoch, previous } => Ok(Claimed { epoch, previous }),
            // A claim is always answered `Claimed` by the table.
            Answer::Released(_)
            | Answer::Promoted(_)
            | Answer::Nothing
            | Answer::Barrier { .. } => Err(OwnershipError::Stopped),
        }
    }

    /// Gives `client_id` up if this node still holds it under `epoch`;
    /// false if the grant had already moved on. Fails as
    /// [`Ownership::claim`] does; a release left unconfirmed is harmless
    /// (the next claim supersedes the grant anyway) but the session's
    /// state must be kept until one is confirmed.
    pub async fn release(&self, client_id: &str, epoch: Epoch) -> Result<bool, OwnershipError> {
        let command = Command::Release {
            client_id: ByteString::from(client_id),
            node: self.id,
            epoch,
        };
        match self.propose(command).await? {
            Answer::Released(released) => Ok(released),
            Answer::Claimed { .. }
            | Answer::Promoted(_)
            | Answer::Nothing
            | Answer::Barrier { .. } => Err(OwnershipError::Stopped),
        }
    }

    /// Makes this node the owner of `client_id` if node `from` still holds
    /// it; the new epoch, or `None` if it had moved on. Fails as
    /// [`Ownership::claim`] does.
    pub async fn promote(
        &self,
        client_id: &str,
        from: NodeId,
    ) -> Result<Option<Epoch>, OwnershipError> {
        let command = Command::Promote {
            client_id: ByteString::from(client_id),
            from,
            node: self.id,
        };
        match self.propose(command).await? {
            Answer::Promoted(epoch) => Ok(epoch),
            Answer::Claimed { .. }
            | Answer::Released(_)
            | Answer::Nothing
            | Answer::Barrier { .. } => Err(OwnershipError::Stopped),
        }
    }

    /// Waits until this node has applied everything the majority had
    /// committed when this was called, so that [`Ownership::owner`] is as
    /// fresh as the leader's: a barrier entry goes through the leader, and
    /// this node waits to apply it. Fails as [`Ownership::claim`] does, or
    /// when this node does not apply the barrier within `within`.
    pub async fn catch_up(&self, within: Duration) -> Result<(), OwnershipError> {
        let index = match self.propose(Command::Barrier { node: self.id }).await? {
            Answer::Barrier { index } => index,
            Answer::Claimed { .. }
            | Answer::Released(_)
            | Answer::Promoted(_)
            | Answer::Nothing => {
                return Err(OwnershipError::Stopped);
            }
        };
        let wait = self.raft.wait(Some(within));
        match wait.applied_index_at_least(Some(index), "barrier").await {
            Ok(_) => Ok(()),
            Err(_) => Err(OwnershipError::Unconfirmed),
        }
    }

    /// Whether `node` holds `client_id` under `epoch` in the table this
    /// node has applied. As fresh as this node's log: a node cut off from
    /// the majority may still say yes to a grant the majority has since
    /// replaced, which is why a cut-off node cannot claim (it cannot hand
    /// out a newer grant) and why the check belongs to every node that
    /// receives state written under an epoch, the new owner's included.
    pub fn check(&self, client_id: &str, node: NodeId, epoch: Epoch) -> bool {
        self.applied.lock().table.check(client_id, node, epoch)
    }

    pub fn owner(&self, client_id: &str) -> Option<Grant> {
        self.applied.lock().table.owner(client_id)
    }

    /// The client ids `node` owns, as far as this node has applied.
    pub fn owned_by(&self, node: NodeId) -> Vec<(ByteString, Epoch)> {
        self.applied.lock().table.owned_by(node)
    }

    pub async fn shutdown(&self) {
        if let Err(error) = self.raft.shutdown().await {
            debug!(node = self.id, %error, "ownership raft stopped with an error");
        }
    }

    /// Proposes `command` until it commits, bounded by the claim timeout.
    async fn propose(&self, command: Command) -> Result<Answer, OwnershipError> {
        let deadline = Instant::now() + self.claim_timeout;
        match tokio::time::timeout_at(deadline, self.propose_until_applied(command)).await {
            Ok(answer) => answer,
            Err(_) => Err(OwnershipError::NoQuorum(self.claim_timeout)),
        }
    }

    /// Here if this node leads, else at the leader it knows of; again
    /// after a pause while there is none or it cannot be reached.
    ///
    /// Retried only when the command was certainly not proposed: this
    /// node or the one it asked does not lead, or the request never went
    /// out. Once it may have been proposed (the answer was lost, or the
    /// leader's raft stopped on the way) the outcome is
    /// [`OwnershipError::Unconfirmed`], never a second proposal.
    ///
    /// One case stays ambiguous: openraft answers "not the leader" both
    /// before appending and when a new leader's log wipes out the appended
    /// entry. A wiped-out entry is not committed then, and would commit
    /// later only if a node still holding it won an election before the
    /// new leader committed anything: a double failure, after which the
    /// retry grants this node a second epoch.
    async fn propose_until_applied(&self, command: Command) -> Result<Answer, OwnershipError> {
        let mut pause = RETRY_FIRST;
        loop {
            let leader = match self.raft.client_write(command.clone()).await {
                Ok(written) => return Ok(written.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to))) => to.leader_id,
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(_)))
                | Err(RaftError::Fatal(_)) => return Err(OwnershipError::Stopped),
            };
            if let Some(leader) = leader.filter(|&leader| leader != self.id) {
                let forward = RaftRequest::Forward(command.clone());
                match self.transport.send(self.id, leader, forward).await {
                    Ok(RaftAnswer::Forward(ForwardReply::Applied(answer))) => return Ok(answer),
                    Ok(RaftAnswer::Forward(ForwardReply::NotLeader(_)))
                    | Err(LinkDown::NotSent { .. }) => {
                        debug!(node = self.id, leader, "proposal not taken, retrying");
                    }
                    // Stopped on the way, lost, or not an answer to it.
                    Ok(_) | Err(LinkDown::NoReply { .. }) => {
                        return Err(OwnershipError::Unconfirmed);
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }
}
