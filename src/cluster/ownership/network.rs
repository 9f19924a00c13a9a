//! How the ownership raft reaches other nodes: one [`Transport`] trait for
//! whatever carries the messages (the in-memory router in tests; the
//! cluster's QUIC link later), and the openraft network glue over it.
//!
//! A transport carries raft's three RPCs and one of ours: a command
//! forwarded to the node believed to lead ([`Transport::forward`]),
//! because only the leader can propose and a client may connect anywhere.
//! Each call answers in two layers: the outer `Result` says whether the
//! exchange happened at all ([`LinkDown`]), the inner one is what the peer
//! answered. A lost exchange says whether the request went out: raft does
//! not care (its RPCs are safe to repeat), but a forwarded claim must not
//! be repeated once it may have been proposed (see
//! [`super::Ownership::claim`]).

use std::future::Future;
use std::sync::Arc;

use openraft::error::{
    ClientWriteError, Fatal, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, Raft, RaftNetwork, RaftNetworkFactory, Snapshot, Vote};

use super::raft::TypeConfig;
use super::table::{Answer, Command, NodeId};

/// The request or its reply did not get through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkDown {
    /// Nothing went out: the peer never saw the request.
    #[error("no link from node {from} to node {to}")]
    NotSent { from: NodeId, to: NodeId },
    /// The request may have reached the peer and been acted on, but no
    /// answer came back.
    #[error("no answer from node {to} to node {from}")]
    NoReply { from: NodeId, to: NodeId },
}

/// An exchange with a peer: whether it happened ([`LinkDown`] if not),
/// then what the peer answered.
pub type Reply<T, E> = Result<Result<T, E>, LinkDown>;

/// What a node answers to a forwarded command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardReply {
    /// Committed and applied; what applying it answered.
    Applied(Answer),
    /// The receiver does not lead; it names the leader if it knows one.
    NotLeader(Option<NodeId>),
    /// The receiver's raft has stopped.
    Stopped,
}

/// The messages between ownership rafts, from `from` to `to`. The
/// implementation delivers each request to `to`'s [`Raft`] (for
/// `forward`, through [`serve_forward`]) and brings its answer back.
pub trait Transport: Send + Sync + 'static {
    fn append_entries(
        &self,
        from: NodeId,
        to: NodeId,
        request: AppendEntriesRequest<TypeConfig>,
    ) -> impl Future<Output = Reply<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> + Send;

    fn vote(
        &self,
        from: NodeId,
        to: NodeId,
        request: VoteRequest<NodeId>,
    ) -> impl Future<Output = Reply<VoteResponse<NodeId>, RaftError<NodeId>>> + Send;

    /// A whole snapshot, for a follower whose next entries were purged.
    fn full_snapshot(
        &self,
        from: NodeId,
        to: NodeId,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
    ) -> impl Future<Output = Reply<SnapshotResponse<NodeId>, Fatal<NodeId>>> + Send;

    fn forward(
        &self,
        from: NodeId,
        to: NodeId,
        command: Command,
    ) -> impl Future<Output = Result<ForwardReply, LinkDown>> + Send;
}

/// The receiving end of [`Transport::forward`]: proposes `command` here,
/// which commits only if this node leads.
pub async fn serve_forward(raft: &Raft<TypeConfig>, command: Command) -> ForwardReply {
    match raft.client_write(command).await {
        Ok(written) => ForwardReply::Applied(written.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to))) => {
            ForwardReply::NotLeader(to.leader_id)
        }
        // A membership error answers only a membership change, which is
        // never forwarded; a fatal error means this raft is gone.
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(_)))
        | Err(RaftError::Fatal(_)) => ForwardReply::Stopped,
    }
}

/// openraft's network factory: one [`Peer`] per node this one replicates
/// to, all over the same transport.
pub struct Network<T> {
    from: NodeId,
    transport: Arc<T>,
}

impl<T> Network<T> {
    pub fn new(from: NodeId, transport: Arc<T>) -> Network<T> {
        Network { from, transport }
    }
}

/// The way from this node to one peer.
pub struct Peer<T> {
    from: NodeId,
    to: NodeId,
    transport: Arc<T>,
}

impl<T: Transport> RaftNetworkFactory<TypeConfig> for Network<T> {
    type Network = Peer<T>;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Peer<T> {
        Peer {
            from: self.from,
            to: target,
            transport: self.transport.clone(),
        }
    }
}

type RpcResult<T> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId>>>;

impl<T> Peer<T> {
    /// A lost exchange is `Unreachable`, which makes openraft back off
    /// before retrying instead of spinning on a cut link.
    #[expect(
        clippy::result_large_err,
        reason = "the error type is openraft's, the one RaftNetwork returns"
    )]
    fn rpc_result<R>(&self, reply: Reply<R, RaftError<NodeId>>) -> RpcResult<R> {
        match reply {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(RPCError::RemoteError(RemoteError::new(self.to, error))),
            Err(down) => Err(RPCError::Unreachable(Unreachable::new(&down))),
        }
    }
}

impl<T: Transport> RaftNetwork<TypeConfig> for Peer<T> {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let reply = self
            .transport
            .append_entries(self.from, self.to, request)
            .await;
        self.rpc_result(reply)
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let reply = self.transport.vote(self.from, self.to, request).await;
        self.rpc_result(reply)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let send = self
            .transport
            .full_snapshot(self.from, self.to, vote, snapshot);
        // openraft cancels a transfer it no longer needs (this node stopped
        // leading, the follower caught up another way).
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            reply = send => match reply {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(fatal)) => Err(StreamingError::RemoteError(RemoteError::new(self.to, fatal))),
                Err(down) => Err(StreamingError::Unreachable(Unreachable::new(&down))),
            },
        }
    }
}
