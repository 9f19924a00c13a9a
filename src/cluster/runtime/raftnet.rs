//! The ownership raft over the cluster's QUIC connections: a
//! [`Transport`] that sends raft's requests to a peer's raft
//! ([`QuicTransport`]), and the server that answers a peer's ([`serve`]).
//!
//! # One stream per request
//!
//! Each request opens a bidirectional QUIC stream of its own, carries one
//! `RaftRequest` (or, for a snapshot too large for one frame, several
//! with the same id), and gets its `RaftReply` back on the same stream.
//! Nothing is queued behind anything else: the control stream (routes,
//! acknowledgements) and the per-shard streams of forwarded messages are
//! other streams, which QUIC multiplexes, and a snapshot of any size
//! holds up neither them nor the raft's heartbeats. Priorities say what
//! goes first when the connection is busy: raft's small requests above
//! everything (a heartbeat stuck behind forwarded messages could trigger
//! an election), snapshots below everything (they are large, and nothing
//! waits on them but a follower far behind).
//!
//! # What a lost exchange tells
//!
//! [`LinkDown::NotSent`] only when the request certainly never left: no
//! link to the peer, or no stream could be opened on it before the
//! timeout (QUIC sends nothing for a stream until it has data). Once any
//! byte may have gone out, an error, a reset, a closed link or a timeout
//! is [`LinkDown::NoReply`]: the peer may have acted on it.
//!
//! # Untrusted peers
//!
//! A frame that fails validation, a body that does not decode, a request
//! in another node's name ([`wire::check_request`]), an answer of the
//! wrong kind or to another request: each closes the whole link with the
//! reason, logged. Nothing a peer sends can panic here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use openraft::Raft;
use openraft::raft::AppendEntriesResponse;
use rustc_hash::FxHashMap;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::CLOSE_PROTOCOL;
use crate::cluster::frame::{self, ArchivedClusterMsg, ClusterMsg, FrameReader, MAX_FRAME_LEN};
use crate::cluster::ownership::network::{self, LinkDown};
use crate::cluster::ownership::raft::TypeConfig;
use crate::cluster::ownership::wire::{self, RaftAnswer, RaftRequest, RaftWireError};
use crate::cluster::ownership::{NodeId, Transport};

/// Body bytes per `RaftRequest` frame: far under [`MAX_FRAME_LEN`], so a
/// snapshot goes out in pieces a reader buffers one at a time.
const CHUNK: usize = 1024 * 1024;
/// The most a request's pieces may add up to: a snapshot of some ten
/// million client ids. Bounds what a peer can make this node buffer.
pub const MAX_REQUEST_LEN: usize = 1024 * 1024 * 1024;
/// Stream priorities (quinn's: higher goes first, 0 is the default of
/// every other stream).
const PRIORITY_RAFT: i32 = 1;
const PRIORITY_SNAPSHOT: i32 = -1;

/// The links the transport may use: the open connection to each peer,
/// by its raft id. Written by the cluster's main loop as links come and
/// go, read by every request.
pub type RaftLinks = Arc<FxHashMap<NodeId, quinn::Connection>>;

/// How long an exchange may take before it counts as lost.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Append entries and votes. openraft bounds them itself, tighter
    /// (the heartbeat interval, the election timeout); this is the
    /// backstop.
    pub rpc: Duration,
    /// A forwarded command, which waits for a commit: the claim timeout,
    /// so a claim's own deadline decides.
    pub forward: Duration,
    /// A whole snapshot, sent and installed.
    pub snapshot: Duration,
}

/// Sends this node's raft requests over the cluster's connections.
pub struct QuicTransport {
    links: watch::Receiver<RaftLinks>,
    next_id: AtomicU64,
    timeouts: Timeouts,
}

impl QuicTransport {
    pub fn new(links: watch::Receiver<RaftLinks>, timeouts: Timeouts) -> QuicTransport {
        QuicTransport {
            links,
            next_id: AtomicU64::new(1),
            timeouts,
        }
    }

    /// One exchange with raft node `to`: `request` out, its answer back.
    async fn exchange(
        &self,
        from: NodeId,
        to: NodeId,
        request: &RaftRequest,
        timeout: Duration,
    ) -> Result<RaftAnswer, LinkDown> {
        let not_sent = LinkDown::NotSent { from, to };
        let no_reply = LinkDown::NoReply { from, to };
        let Some(connection) = self.links.borrow().get(&to).cloned() else {
            return Err(not_sent);
        };
        let body = wire::encode_request(request).map_err(|error| {
            warn!(peer = to, %error, "raft request not sent");
            not_sent
        })?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + timeout;
        let (mut send, mut recv) =
            match tokio::time::timeout_at(deadline, connection.open_bi()).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(_)) | Err(_) => return Err(not_sent),
            };
        let snapshot = matches!(request, RaftRequest::Snapshot { .. });
        let _ = send.set_priority(if snapshot {
            PRIORITY_SNAPSHOT
        } else {
            PRIORITY_RAFT
        });
        let exchange = async {
            write_request(&mut send, id, &body).await?;
            let reply = read_reply(&mut recv, id).await?;
            let answer =
                wire::decode_answer(&reply).map_err(|e| Refusal::Protocol(e.to_string()))?;
            if answer.kind() != request.kind() {
                return Err(Refusal::Protocol(format!(
                    "a {} answer to a {} request",
                    answer.kind(),
                    request.kind()
                )));
            }
            Ok(answer)
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(Refusal::Protocol(reason))) => {
                close_link(&connection, to, &reason);
                Err(no_reply)
            }
            Ok(Err(Refusal::Io(error))) => {
                debug!(peer = to, kind = request.kind(), %error, "raft exchange lost");
                Err(no_reply)
            }
            Err(_) => Err(no_reply),
        }
    }
}

impl Transport for QuicTransport {
    async fn send(
        &self,
        from: NodeId,
        to: NodeId,
        request: RaftRequest,
    ) -> Result<RaftAnswer, LinkDown> {
        let timeout = match request {
            RaftRequest::AppendEntries(_) | RaftRequest::Vote(_) => self.timeouts.rpc,
            RaftRequest::Snapshot { .. } => self.timeouts.snapshot,
            RaftRequest::Forward(_) => self.timeouts.forward,
        };
        self.exchange(from, to, &request, timeout).await
    }
}

/// Why an exchange on a stream ended early.
#[derive(Debug)]
enum Refusal {
    /// The stream or the connection failed: nobody is at fault.
    Io(String),
    /// The peer broke the protocol: its link is closed.
    Protocol(String),
}

async fn write_request(send: &mut quinn::SendStream, id: u64, body: &[u8]) -> Result<(), Refusal> {
    let mut pieces = body.chunks(CHUNK).peekable();
    let mut out = BytesMut::new();
    // An empty body is still one frame.
    let mut first = true;
    while first || pieces.peek().is_some() {
        first = false;
        let piece = pieces.next().unwrap_or_default();
        let msg = ClusterMsg::RaftRequest {
            id,
            more: pieces.peek().is_some(),
            body: piece.to_vec(),
        };
        out.clear();
        frame::encode(&msg, &mut out).map_err(|e| Refusal::Io(e.to_string()))?;
        send.write_all(&out)
            .await
            .map_err(|e| Refusal::Io(e.to_string()))?;
    }
    send.finish().map_err(|e| Refusal::Io(e.to_string()))
}

/// Reads the one `RaftReply` to request `id`, and the end of the stream.
async fn read_reply(recv: &mut quinn::RecvStream, id: u64) -> Result<Vec<u8>, Refusal> {
    let mut reader = FrameReader::new(MAX_FRAME_LEN);
    let frame = next_frame(recv, &mut reader)
        .await?
        .ok_or_else(|| Refusal::Io("the stream ended before the reply".to_owned()))?;
    let body = match frame
        .access()
        .map_err(|e| Refusal::Protocol(e.to_string()))?
    {
        ArchivedClusterMsg::RaftReply { id: answered, body } if answered.to_native() == id => {
            body.to_vec()
        }
        ArchivedClusterMsg::RaftReply { id: answered, .. } => {
            return Err(Refusal::Protocol(format!(
                "a raft reply to request {answered} on the stream of request {id}"
            )));
        }
        _ => {
            return Err(Refusal::Protocol(
                "a frame other than a raft reply on a raft stream".to_owned(),
            ));
        }
    };
    if next_frame(recv, &mut reader).await?.is_some() {
        return Err(Refusal::Protocol(
            "more than one reply on a raft stream".to_owned(),
        ));
    }
    Ok(body)
}

/// The next whole frame on `recv`, or `None` at the end of the stream.
async fn next_frame(
    recv: &mut quinn::RecvStream,
    reader: &mut FrameReader,
) -> Result<Option<frame::Frame>, Refusal> {
    loop {
        if let Some(frame) = reader
            .next_frame()
            .map_err(|e| Refusal::Protocol(e.to_string()))?
        {
            return Ok(Some(frame));
        }
        match recv.read_chunk(CHUNK + 1024, true).await {
            Ok(Some(chunk)) => reader.push(&chunk.bytes),
            Ok(None) if reader.is_between_frames() => return Ok(None),
            Ok(None) => {
                return Err(Refusal::Protocol(
                    "a raft stream ended inside a frame".to_owned(),
                ));
            }
            Err(error) => return Err(Refusal::Io(error.to_string())),
        }
    }
}

fn close_link(connection: &quinn::Connection, peer: impl std::fmt::Display, reason: &str) {
    warn!(%peer, %reason, "malformed raft frame from a peer: closing its link");
    connection.close(CLOSE_PROTOCOL.into(), reason.as_bytes());
}

/// When this node last took an append-entries or a snapshot from a
/// leader: what tells a follower it still has one.
#[derive(Debug, Clone)]
pub struct LeaderContact {
    base: Instant,
    /// Milliseconds after `base`, plus one; 0 for never.
    at: Arc<AtomicU64>,
}

impl LeaderContact {
    pub fn new(now: Instant) -> LeaderContact {
        LeaderContact {
            base: now,
            at: Arc::default(),
        }
    }

    pub fn touch(&self, now: Instant) {
        let millis = now.saturating_duration_since(self.base).as_millis() as u64;
        self.at.store(millis + 1, Ordering::Relaxed);
    }

    /// How long ago the last contact was, if there was one.
    pub fn since(&self, now: Instant) -> Option<Duration> {
        let at = self.at.load(Ordering::Relaxed).checked_sub(1)?;
        Some(now.saturating_duration_since(self.base + Duration::from_millis(at)))
    }
}

/// What answers a peer's requests: this node's raft, once it runs.
#[derive(Clone)]
pub struct RaftServer {
    pub raft: Raft<TypeConfig>,
    pub contact: LeaderContact,
}

/// Answers the raft requests the peer at the other end of `connection`
/// sends, until the connection ends. `senders` are the raft ids the peer
/// may speak as; `server` is this node's raft (none: requests are
/// dropped unanswered, which the peer takes as a lost exchange); a
/// request must arrive whole within `read_timeout`.
pub async fn serve(
    connection: quinn::Connection,
    peer: String,
    senders: Vec<NodeId>,
    server: watch::Receiver<Option<RaftServer>>,
    read_timeout: Duration,
) {
    while let Ok((send, recv)) = connection.accept_bi().await {
        let connection = connection.clone();
        let peer = peer.clone();
        let senders = senders.clone();
        let server = server.clone();
        tokio::spawn(async move {
            let request = tokio::time::timeout(read_timeout, read_request(recv, &senders)).await;
            let answered = match request {
                Ok(Ok((id, request))) => answer(send, id, request, &server).await,
                Ok(Err(refusal)) => Err(refusal),
                Err(_) => Err(Refusal::Io("not received in time".to_owned())),
            };
            match answered {
                Ok(()) => {}
                Err(Refusal::Protocol(reason)) => close_link(&connection, &peer, &reason),
                Err(Refusal::Io(error)) => debug!(%peer, %error, "raft request dropped"),
            }
        });
    }
}

/// Has this node's raft answer request `id`, and writes the answer back.
async fn answer(
    mut send: quinn::SendStream,
    id: u64,
    request: RaftRequest,
    server: &watch::Receiver<Option<RaftServer>>,
) -> Result<(), Refusal> {
    let Some(server) = server.borrow().clone() else {
        return Err(Refusal::Io("no raft running here".to_owned()));
    };
    let answer = network::answer(&server.raft, request).await;
    // A leader's entries or snapshot taken: this node has a leader.
    let from_leader = match &answer {
        RaftAnswer::AppendEntries(Ok(response)) => {
            !matches!(response, AppendEntriesResponse::HigherVote(_))
        }
        RaftAnswer::Snapshot(Ok(_)) => true,
        _ => false,
    };
    if from_leader {
        server.contact.touch(Instant::now());
    }
    let body = wire::encode_answer(&answer).map_err(|e| Refusal::Io(e.to_string()))?;
    let mut out = BytesMut::new();
    frame::encode(&ClusterMsg::RaftReply { id, body }, &mut out)
        .map_err(|e| Refusal::Io(e.to_string()))?;
    let _ = send.set_priority(PRIORITY_RAFT);
    send.write_all(&out)
        .await
        .map_err(|e| Refusal::Io(e.to_string()))?;
    send.finish().map_err(|e| Refusal::Io(e.to_string()))
}

/// Reads a whole request (its frames, joined, up to [`MAX_REQUEST_LEN`]),
/// decodes it and checks that the peer, whose raft ids are `senders`,
/// may send it.
async fn read_request(
    mut recv: quinn::RecvStream,
    senders: &[NodeId],
) -> Result<(u64, RaftRequest), Refusal> {
    let mut reader = FrameReader::new(MAX_FRAME_LEN);
    let mut request: Option<(u64, Vec<u8>)> = None;
    loop {
        let frame = next_frame(&mut recv, &mut reader)
            .await?
            .ok_or_else(|| Refusal::Io("the stream ended before the request".to_owned()))?;
        let (id, more, body) = match frame
            .access()
            .map_err(|e| Refusal::Protocol(e.to_string()))?
        {
            ArchivedClusterMsg::RaftRequest { id, more, body } => {
                (id.to_native(), *more, body.as_slice())
            }
            _ => {
                return Err(Refusal::Protocol(
                    "a frame other than a raft request on a raft stream".to_owned(),
                ));
            }
        };
        let (first, joined) = request.get_or_insert_with(|| (id, Vec::new()));
        if *first != id {
            return Err(Refusal::Protocol(format!(
                "pieces of raft requests {first} and {id} on one stream"
            )));
        }
        if joined.len() + body.len() > MAX_REQUEST_LEN {
            return Err(Refusal::Protocol(format!(
                "a raft request over {MAX_REQUEST_LEN} bytes"
            )));
        }
        joined.extend_from_slice(body);
        if !more {
            break;
        }
    }
    let (id, body) = request.ok_or_else(|| Refusal::Io("no request".to_owned()))?;
    let protocol = |error: RaftWireError| Refusal::Protocol(error.to_string());
    let request = wire::decode_request(&body).map_err(protocol)?;
    wire::check_request(&request, senders).map_err(protocol)?;
    Ok((id, request))
}

#[cfg(test)]
mod tests;
