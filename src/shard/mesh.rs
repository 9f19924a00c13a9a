//! The cross-core mesh: how shards talk.
//!
//! Every shard has one inbox, a lock-free multi-producer queue
//! (crossbeam's list channel) of *batches*. A shard never pushes a single
//! message: it collects what it has for each peer during a turn of its loop
//! in a local `Vec` and [`Mesh::flush`] hands each non-empty `Vec` over in
//! one push, then rings the peer's [`Doorbell`] at most once. Ringing is an
//! atomic swap; only the ring that finds the bell silent pays for a wake-up
//! (an eventfd write into the peer's io_uring runtime), so a busy peer that
//! has not drained its inbox yet costs nothing more to feed.
//!
//! Payloads travel as `Arc<Message>`, whose payload is a refcounted
//! `Bytes`: a PUBLISH fanned out to every shard is never copied.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Instant;

use atomic_waker::AtomicWaker;
use bytes::BytesMut;
use bytestring::ByteString;
use crossbeam_channel::{Receiver, Sender};

use super::ShardId;
use super::framing::Framing;
use super::limit::ConnectionPermit;
use super::notify::LocalNotify;
use crate::message::Message;
use crate::metrics::Snapshot;
use crate::protocol::Connect;
use crate::session::Ticket;
use crate::store::Op;

/// Everything one shard can ask of another. This is the only door between
/// shards; a node in a cluster will receive the same routing messages.
#[derive(Debug)]
pub enum ShardMsg {
    /// Deliver to this shard's subscribers whose filters match.
    Publish(Arc<Message>),
    /// Apply to this shard's replica of the retained store.
    Retain(Arc<Message>),
    /// `from` gained its first subscriber for `filter`.
    RouteAdd { filter: ByteString, from: ShardId },
    /// `from` lost its last subscriber for `filter`.
    RouteRemove { filter: ByteString, from: ShardId },
    /// `from` gained its first member of the shared subscription `share`
    /// (`$share/{group}/{filter}`): messages matching its filter go to the
    /// group's owner.
    SharedRouteAdd { share: ByteString, from: ShardId },
    /// `from` lost its last member of `share`.
    SharedRouteRemove { share: ByteString, from: ShardId },
    /// To the owner of `share`: `member` joined the group, or its session
    /// gained (`online`) or lost its connection.
    SharedJoin {
        share: ByteString,
        member: SharedMember,
        online: bool,
    },
    /// To the owner of `share`: `member` left the group (unsubscribed, or
    /// its session ended).
    SharedLeave {
        share: ByteString,
        member: SharedMember,
    },
    /// To the owner of `share`: pick one member for `message`. `exclude` is
    /// the member the message comes back from (gone, or offline with it
    /// unacknowledged), chosen again only if no other member is left.
    /// `local_only` is set on a message another node's owner picked this
    /// node for: it goes to a member on this node, never back out.
    SharedPublish {
        share: ByteString,
        message: Arc<Message>,
        exclude: Option<SharedMember>,
        local_only: bool,
        /// Who waits to hear that the message is safe where it lands.
        reply: Option<StoredReply>,
    },
    /// From the owner of `share` to the chosen member's shard. `online` is
    /// the member's state as the owner knew it: a member the owner thought
    /// online but found offline sends the message back to be chosen again;
    /// one chosen knowing it was offline (no one else left) queues it.
    SharedDeliver {
        share: ByteString,
        client_id: ByteString,
        message: Arc<Message>,
        online: bool,
        reply: Option<StoredReply>,
    },
    /// A connection whose client id belongs to this shard, accepted
    /// elsewhere, after its CONNECT was read.
    Handoff(Box<Handoff>),
    /// Stop accepting, say goodbye to clients, return.
    Shutdown,
    /// From the metrics thread: send back a copy of this shard's counters.
    /// Also the health check's ping: a shard that cannot answer is stuck.
    Scrape(Sender<Snapshot>),
    /// From the `$SYS` thread, to one shard: publish these retained
    /// messages as if a client had.
    Sys(Vec<Arc<Message>>),
    /// To the cluster: confirm this once everything the sending shard has
    /// sent the cluster so far (forwarded messages, route changes) has
    /// reached every linked peer node. Holds a PUBACK or SUBACK.
    ConfirmAfter(Confirmation),
    /// From the cluster: the wait is over; release the held answer.
    Confirm(Confirmation),
    /// To a shard that got messages from the sender in this batch or
    /// earlier: confirm this once what they changed in this shard's store
    /// is committed (`durability` batch or always). Holds a PUBACK or PUBREC.
    ConfirmStored(Confirmation),
    /// The answer to a `ConfirmStored`: the store could not write, so the
    /// held answer is refused.
    StoreRefused(Confirmation),
    /// From the cluster's place: answer `StoreReached` once what it sent
    /// this shard so far (forwarded messages from peers) is committed.
    StoreBarrier { token: u64 },
    /// To the cluster's place: the barrier `token` is passed.
    StoreReached { token: u64 },
    /// To the cluster, from a client id's home shard, before it answers a
    /// CONNECT: make this node the owner of `client_id` (the next fencing
    /// epoch), taking the session over from whichever node held it.
    /// Answered by `Claimed` with the same `token`.
    Claim { client_id: ByteString, token: u64 },
    /// From the cluster: how the claim `token` ended.
    Claimed { token: u64, outcome: ClaimOutcome },
    /// From the cluster, to a client id's home shard: another node holds
    /// `epoch` for `client_id` now. The connection here closes (v5:
    /// Session taken over) and the session leaves, answered by
    /// `HandedOver` with the same `token`; a session held under `epoch` or
    /// a later one stays (the request is older than its claim).
    HandOver {
        client_id: ByteString,
        epoch: u64,
        token: u64,
    },
    /// To the cluster, once after a restart: which node owns each of these
    /// client ids, whose sessions this shard restored from disk? Answered
    /// by `Owners` once the ownership raft can say.
    CheckOwners { client_ids: Vec<ByteString> },
    /// From the cluster: the restored sessions this node still owns, with
    /// their epochs, and those another node claimed while this one was
    /// down (their copies here are stale).
    Owners {
        here: Vec<(ByteString, u64)>,
        elsewhere: Vec<ByteString>,
    },
    /// To the cluster: the session of `client_id`, held under `epoch`,
    /// has ended here (expired, or discarded by a clean start): the
    /// client id is released, so the ownership table forgets it.
    Release { client_id: ByteString, epoch: u64 },
    /// To the cluster: the session `HandOver` asked for, archived
    /// (`store::transfer`), or `None` if there was none to give.
    HandedOver {
        token: u64,
        session: Option<Vec<u8>>,
    },
    /// From the shard's store writer: every epoch up to `through` is
    /// committed, or (`ok` false) could not be: answers waiting for those
    /// epochs are refused.
    Stored { through: u64, ok: bool },
    /// To the cluster: what this shard's store committed as `epoch`, for
    /// the replicas of its sessions; with `reset`, instead of the turn's
    /// changes, every stored session whole, to replace what the replicas
    /// held (answer to `ReplicaReset`).
    Replicate {
        epoch: u64,
        reset: bool,
        ops: Vec<Op>,
    },
    /// From the cluster: the replicas changed (or one lost what it held):
    /// send them every stored session whole at the next flush.
    ReplicaReset,
    /// From the cluster: every replica this node copied to is gone (all
    /// its peers are unreachable), so stored sessions' clients get nothing
    /// more until one is back (`ReplicaReset`): what went out now would be
    /// in no copy, and given again by whichever node takes the session
    /// over (`ShardState::fence`).
    Unreplicated,
    /// From the cluster: the replicas hold every epoch up to `through`.
    Replicated { through: u64 },
    /// From the cluster, to a client id's home shard: this node owns the
    /// session archived in `session` under `epoch`, taken over from a
    /// copy of a node that went down; it stays here, offline, until its
    /// client comes back or it expires.
    Adopt { session: Vec<u8>, epoch: u64 },
    /// To the cluster, from a stopping shard: its connections are closed
    /// and what that changed is written and handed to the replicas.
    Drained,
    /// From the cluster: this node lost the majority of the ownership
    /// raft, and its sessions have copies the majority may take over: let
    /// the stored sessions go (`ShardState::fence`).
    Fence,
    /// From the cluster, to a client id's home shard: a message owed to
    /// the dead node this session was taken over from, for this session
    /// alone (`cluster::node::orphans`).
    Orphan {
        client_id: ByteString,
        message: Arc<Message>,
        /// Orphan, or sent on from a stale copy (never ordinary).
        way: Way,
    },
    /// To the cluster: `messages` came here for a session another node
    /// holds now, and go to it (`cluster::node::orphans`): a session
    /// fenced here and found taken over after the heal
    /// (`ShardState::fence`), or one handed over moments ago whose routes
    /// are still here (`ShardState::keep_moved`).
    Stale {
        client_id: ByteString,
        messages: Vec<Arc<Message>>,
    },
}

/// The ways a message reaches a session taken over from another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Routed here as any message is.
    Ordinary,
    /// Owed to the node the session was taken over from, sent on by a
    /// publisher's node (`cluster::node::orphans`).
    Orphan,
    /// Sent on by the node that let the session go when it was cut off
    /// from the majority, and found it taken over here after the heal
    /// (`ShardState::fence`).
    Stale,
}

/// How a claim of a client id ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This node owns the client id under `epoch`; `session` is the
    /// session the previous owner handed over, if it had one. `missed`:
    /// the previous owner could not be asked and no copy came, so the
    /// client starts afresh while that owner may still hold the session
    /// and send on, later, what it got (`Way::Stale`); the fresh session
    /// must not give those twice.
    Owner {
        epoch: u64,
        session: Option<Vec<u8>>,
        missed: bool,
    },
    /// No majority of the cluster confirmed the claim: the CONNECT is
    /// refused (Server unavailable), as serving it could split the
    /// session in two.
    Unavailable,
}

/// An answer a session holds until the cluster has what it promises:
/// which session, on which connection, and the session's ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmation {
    pub key: usize,
    pub conn: u64,
    pub ticket: Ticket,
}

/// Who waits for a message relayed through a shared subscription's owner
/// to be safe where it lands: one answer, sent once by whichever place the
/// message ends in (the chosen member's shard once its store holds it, the
/// cluster once the peers have it, or the owner when no member is left).
/// A direct route is waited for by the publisher's shard itself; a shared
/// one cannot be, since only the owner knows which shard the member is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredReply {
    /// `Confirm` (or `StoreRefused`) to this shard, for a held answer.
    Confirm(ShardId, Confirmation),
    /// `StoreReached` to the cluster's place, for a peer's frame.
    Reached(ShardId, u64),
}

/// The sender of a batch sent from outside the shards and the cluster
/// (signals, metrics, `$SYS`).
pub const OUTSIDE: ShardId = ShardId::MAX;

/// What travels through an inbox: the messages one shard had for another
/// in one turn of its loop, stamped when flushed so the receiver can
/// measure the hop.
#[derive(Debug)]
pub struct Batch {
    /// The shard (or the cluster's place, after the shards) that sent it.
    pub from: ShardId,
    pub sent_at: Instant,
    pub messages: Vec<ShardMsg>,
}

/// A session that is a member of a shared subscription group. The client
/// id alone is unique; the shard saves the owner a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedMember {
    pub shard: ShardId,
    pub client_id: ByteString,
}

/// A connection in transit between shards, with the bytes already read
/// past the CONNECT (a client may pipeline packets behind it).
#[derive(Debug)]
pub struct Handoff {
    pub socket: OwnedFd,
    pub peer: SocketAddr,
    pub connect: Connect,
    pub assigned_client_id: bool,
    /// MQTT bytes, already out of their WebSocket frames and TLS records
    /// if any.
    pub read_buf: BytesMut,
    /// A WebSocket or TLS connection's layers (a partial frame, a pong
    /// owed, the TLS session's keys); `None` for plain TCP.
    pub websocket: Option<Framing>,
    /// The connection's place under the broker-wide limit travels with it.
    pub permit: ConnectionPermit,
}

/// Wakes a shard's inbox task from another thread.
#[derive(Debug, Default)]
pub struct Doorbell {
    waker: AtomicWaker,
    rung: AtomicBool,
}

impl Doorbell {
    pub fn ring(&self) {
        if !self.rung.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }
}

/// A shard's end of the mesh: its inbox and senders to every shard
/// (itself included, so that shutdown and handoff need no special case).
pub struct Mesh {
    me: ShardId,
    shards: usize,
    inbox: Receiver<Batch>,
    doorbell: Arc<Doorbell>,
    peers: Vec<Peer>,
    /// Messages sent to other shards, ever.
    sent: u64,
}

struct Peer {
    sender: Sender<Batch>,
    doorbell: Arc<Doorbell>,
    pending: Vec<ShardMsg>,
}

/// The shared half of the mesh, from which each shard's [`Mesh`] and the
/// signal handler's [`MeshHandle`] are made.
///
/// A clustered node has one more *place* in the mesh than it has shards:
/// the cluster runtime, at index `shards`. To a shard's route table it is
/// one more place with subscribers (the filters of every other node), so
/// routing needs no special case for the cluster.
#[derive(Clone)]
pub struct MeshHandle {
    shards: usize,
    senders: Vec<Sender<Batch>>,
    doorbells: Vec<Arc<Doorbell>>,
}

impl MeshHandle {
    /// Builds the full mesh for `shards` shards, plus the cluster's place
    /// if `cluster`: one inbox each.
    pub fn build(shards: usize, cluster: bool) -> (MeshHandle, Vec<Receiver<Batch>>) {
        let places = shards + usize::from(cluster);
        let (senders, receivers) = (0..places).map(|_| crossbeam_channel::unbounded()).unzip();
        let doorbells = (0..places).map(|_| Arc::new(Doorbell::default())).collect();
        let handle = MeshHandle {
            shards,
            senders,
            doorbells,
        };
        (handle, receivers)
    }

    pub fn shard_count(&self) -> usize {
        self.shards
    }

    /// The cluster runtime's place, in a clustered node.
    pub fn cluster_place(&self) -> Option<ShardId> {
        (self.senders.len() > self.shards).then_some(self.shards)
    }

    /// This shard's end, owning its inbox.
    pub fn attach(&self, me: ShardId, inbox: Receiver<Batch>) -> Mesh {
        let peers = self
            .senders
            .iter()
            .zip(&self.doorbells)
            .map(|(sender, doorbell)| Peer {
                sender: sender.clone(),
                doorbell: doorbell.clone(),
                pending: Vec::new(),
            })
            .collect();
        Mesh {
            me,
            shards: self.shards,
            inbox,
            doorbell: self.doorbells[me].clone(),
            peers,
            sent: 0,
        }
    }

    /// Sends one message to one shard, from outside any shard.
    pub fn send(&self, to: ShardId, msg: ShardMsg) {
        let batch = Batch {
            from: OUTSIDE,
            sent_at: Instant::now(),
            messages: vec![msg],
        };
        // A shard that already exited has nothing left to do with it.
        if self.senders[to].send(batch).is_ok() {
            self.doorbells[to].ring();
        }
    }

    /// Sends one message to every shard (not the cluster's place),
    /// outside any shard (signals, scrapes).
    pub fn broadcast(&self, make: impl Fn() -> ShardMsg) {
        let shards = self.senders.iter().zip(&self.doorbells).take(self.shards);
        for (sender, doorbell) in shards {
            // A shard that already exited has dropped its inbox; nothing to tell it.
            let batch = Batch {
                from: OUTSIDE,
                sent_at: Instant::now(),
                messages: vec![make()],
            };
            if sender.send(batch).is_ok() {
                doorbell.ring();
            }
        }
    }
}

impl Mesh {
    pub fn me(&self) -> ShardId {
        self.me
    }

    pub fn shard_count(&self) -> usize {
        self.shards
    }

    /// Shards plus the cluster's place, if any: the size of a route
    /// table's set of places.
    pub fn place_count(&self) -> usize {
        self.peers.len()
    }

    /// The cluster runtime's place, in a clustered node.
    pub fn cluster_place(&self) -> Option<ShardId> {
        (self.peers.len() > self.shards).then_some(self.shards)
    }

    /// Queues `msg` for `to`; it leaves at the next [`Mesh::flush`].
    pub fn push(&mut self, to: ShardId, msg: ShardMsg) {
        self.peers[to].pending.push(msg);
    }

    /// Queues a message for every other place: the other shards and, in a
    /// cluster, the cluster runtime.
    pub fn push_others(&mut self, make: impl Fn() -> ShardMsg) {
        for (to, peer) in self.peers.iter_mut().enumerate() {
            if to != self.me {
                peer.pending.push(make());
            }
        }
    }

    /// Hands every pending batch to its shard and rings each bell once.
    /// Returns the number of messages sent.
    pub fn flush(&mut self) -> usize {
        let mut sent = 0;
        let sent_at = Instant::now();
        for (to, peer) in self.peers.iter_mut().enumerate() {
            if peer.pending.is_empty() {
                continue;
            }
            if to != self.me {
                self.sent += peer.pending.len() as u64;
            }
            sent += peer.pending.len();
            let batch = Batch {
                from: self.me,
                sent_at,
                messages: std::mem::take(&mut peer.pending),
            };
            // A peer's inbox only closes when that shard has exited at
            // shutdown; its messages have no one left to serve.
            if peer.sender.send(batch).is_ok() {
                peer.doorbell.ring();
            }
        }
        sent
    }

    /// Messages sent to other shards since the shard started.
    pub fn sent_to_others(&self) -> u64 {
        self.sent
    }

    /// Batches waiting in this shard's inbox.
    pub fn inbox_depth(&self) -> usize {
        self.inbox.len()
    }

    /// A batch already waiting, without blocking.
    pub fn try_recv(&self) -> Option<Batch> {
        try_recv(&self.inbox)
    }

    /// A second handle on this shard's inbox for the task that sleeps on it.
    pub fn inbox(&self) -> Inbox {
        Inbox {
            receiver: self.inbox.clone(),
            doorbell: self.doorbell.clone(),
        }
    }
}

/// The waiting end of a shard's inbox.
pub struct Inbox {
    receiver: Receiver<Batch>,
    doorbell: Arc<Doorbell>,
}

impl Inbox {
    /// Waits until a batch arrives, from any executor: the cluster runtime
    /// (tokio) waits on its inbox this way.
    pub async fn recv(&self) -> Batch {
        std::future::poll_fn(|cx| {
            // As in `recv_or`: register, clear, then look.
            self.doorbell.waker.register(cx.waker());
            self.doorbell.rung.store(false, Ordering::SeqCst);
            match try_recv(&self.receiver) {
                Some(batch) => Poll::Ready(batch),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Waits until a batch arrives (`Some`) or `local` is notified (`None`):
    /// the shard's own tasks use `local` when they drained the inbox
    /// themselves and left work for the inbox task.
    pub async fn recv_or(&self, local: &LocalNotify) -> Option<Batch> {
        std::future::poll_fn(|cx| {
            // Register before clearing the bell, and clear it before looking:
            // a push that lands after the look then finds the bell silent
            // and wakes the registered waker.
            self.doorbell.waker.register(cx.waker());
            self.doorbell.rung.store(false, Ordering::SeqCst);
            if let Some(batch) = try_recv(&self.receiver) {
                return Poll::Ready(Some(batch));
            }
            local.poll_notified(cx).map(|()| None)
        })
        .await
    }
}

fn try_recv(receiver: &Receiver<Batch>) -> Option<Batch> {
    // Disconnected only happens once every other shard has exited at
    // shutdown; to the caller it is the same as an empty inbox.
    receiver.try_recv().ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::protocol::{LazyPublishProperties, QoS};

    fn message(n: u32) -> Arc<Message> {
        Arc::new(Message {
            topic: ByteString::from_static("t"),
            payload: Bytes::from(n.to_be_bytes().to_vec()),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: LazyPublishProperties::default(),
            publisher: ByteString::from_static("p"),
            expires_at: None,
            received_at: std::time::Instant::now(),
        })
    }

    #[test]
    fn batches_arrive_in_order_and_wake_a_sleeping_runtime_on_another_thread() {
        const MESSAGES: u32 = 10_000;
        let (handle, mut inboxes) = MeshHandle::build(2, false);
        let receiver_inbox = inboxes.pop().expect("two inboxes");
        let sender_inbox = inboxes.pop().expect("two inboxes");
        let receiver_handle = handle.clone();
        let receiver = std::thread::spawn(move || {
            let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mesh = receiver_handle.attach(1, receiver_inbox);
                let inbox = mesh.inbox();
                let never = LocalNotify::default();
                let mut next = 0;
                while next < MESSAGES {
                    let batch = inbox.recv_or(&never).await.expect("only batches wake us");
                    for msg in batch.messages {
                        let ShardMsg::Publish(message) = msg else {
                            panic!("unexpected message {msg:?}");
                        };
                        assert_eq!(message.payload.as_ref(), next.to_be_bytes());
                        next += 1;
                    }
                }
                next
            })
        });

        let mut mesh = handle.attach(0, sender_inbox);
        for n in 0..MESSAGES {
            mesh.push(1, ShardMsg::Publish(message(n)));
            if n % 100 == 99 {
                assert_eq!(mesh.flush(), 100);
                // Let the receiver fall asleep now and then, so that the
                // wake-up path is exercised and not only the busy one.
                if n % 1000 == 999 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        assert_eq!(receiver.join().expect("receiver thread"), MESSAGES);
    }

    #[test]
    fn push_others_skips_the_sender() {
        let (handle, inboxes) = MeshHandle::build(3, false);
        let mut meshes: Vec<Mesh> = inboxes
            .into_iter()
            .enumerate()
            .map(|(id, inbox)| handle.attach(id, inbox))
            .collect();
        meshes[1].push_others(|| ShardMsg::Shutdown);
        assert_eq!(meshes[1].flush(), 2);
        assert!(meshes[0].try_recv().is_some());
        assert!(meshes[1].try_recv().is_none());
        assert!(meshes[2].try_recv().is_some());
    }
}
