//! How the ownership raft reaches other nodes: one [`Transport`] trait for
//! whatever carries the messages (the in-memory router in tests; the
//! cluster's QUIC links, `cluster/runtime/raftnet.rs`), the receiving
//! end ([`answer`]), and the openraft network glue over them.
//!
//! A transport carries raft's three RPCs and one of ours, all as one
//! [`RaftRequest`]: a command forwarded to the node believed to lead
//! ([`RaftRequest::Forward`]), because only the leader can propose and a
//! client may connect anywhere. An exchange answers in two layers: the
//! outer `Result` says whether it happened at all ([`LinkDown`]), the
//! [`RaftAnswer`] is what the peer answered. A lost exchange says whether
//! the request went out: raft does not care (its RPCs are safe to
//! repeat), but a forwarded claim must not be repeated once it may have
//! been proposed (see [`super::Ownership::claim`]).

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
use super::wire::{RaftAnswer, RaftRequest};

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

/// What a node answers to a forwarded command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ForwardReply {
    /// Committed and applied; what applying it answered.
    Applied(Answer),
    /// The receiver does not lead; it names the leader if it knows one.
    NotLeader(Option<NodeId>),
    /// The receiver's raft has stopped.
    Stopped,
}

/// The messages between ownership rafts, from `from` to `to`. The
/// implementation delivers each request to `to`'s [`Raft`], which
/// [`answer`]s it, and brings the answer back; an answer of another kind
/// than the request counts as none.
pub trait Transport: Send + Sync + 'static {
    fn send(
        &self,
        from: NodeId,
        to: NodeId,
        request: RaftRequest,
    ) -> impl Future<Output = Result<RaftAnswer, LinkDown>> + Send;
}

/// The receiving end of a [`Transport`]: what `raft` answers `request`.
/// A forwarded command is proposed here, and commits only if this node
/// leads.
pub async fn answer(raft: &Raft<TypeConfig>, request: RaftRequest) -> RaftAnswer {
    match request {
        RaftRequest::AppendEntries(request) => {
            RaftAnswer::AppendEntries(raft.append_entries(request).await)
        }
        RaftRequest::Vote(request) => RaftAnswer::Vote(raft.vote(request).await),
        RaftRequest::Snapshot { vote, meta, table } => {
            let snapshot = Snapshot {
                meta,
                snapshot: Box::new(table),
            };
            RaftAnswer::Snapshot(raft.install_full_snapshot(vote, snapshot).await)
        }
        RaftRequest::Forward(command) => RaftAnswer::Forward(serve_forward(raft, command).await),
    }
}

async fn serve_forward(raft: &Raft<TypeConfig>, command: Command) -> ForwardReply {
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

/// Takes the answer of kind `$kind` out of a [`RaftAnswer`], if that is
/// the kind that came back.
macro_rules! answer_of {
    ($kind:ident) => {
        |answer| match answer {
            RaftAnswer::$kind(answer) => Some(answer),
            _ => None,
        }
    };
}

type RpcResult<T> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId>>>;

impl<T: Transport> Peer<T> {
    /// A lost exchange is `Unreachable`, which makes openraft back off
    /// before retrying instead of spinning on a cut link.
    #[expect(
        clippy::result_large_err,
        reason = "the error type is openraft's, the one RaftNetwork returns"
    )]
    fn rpc_result<R>(&self, reply: Result<Result<R, RaftError<NodeId>>, LinkDown>) -> RpcResult<R> {
        match reply {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(RPCError::RemoteError(RemoteError::new(self.to, error))),
            Err(down) => Err(RPCError::Unreachable(Unreachable::new(&down))),
        }
    }

    /// The answer to `request`, if it came back, and of its kind.
    async fn exchange<R>(
        &self,
        request: RaftRequest,
        kind: impl FnOnce(RaftAnswer) -> Option<R>,
    ) -> Result<R, LinkDown> {
        let answer = self.transport.send(self.from, self.to, request).await?;
        kind(answer).ok_or(LinkDown::NoReply {
            from: self.from,
            to: self.to,
        })
    }
}

impl<T: Transport> RaftNetwork<TypeConfig> for Peer<T> {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let request = RaftRequest::AppendEntries(request);
        self.rpc_result(self.exchange(request, answer_of!(AppendEntries)).await)
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.rpc_result(
            self.exchange(RaftRequest::Vote(request), answer_of!(Vote))
                .await,
        )
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let request = RaftRequest::Snapshot {
            vote,
            meta: snapshot.meta,
            table: *snapshot.snapshot,
        };
        let send = self.exchange(request, answer_of!(Snapshot));
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
