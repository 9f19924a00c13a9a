//! The cluster's I/O: one thread running a single-threaded tokio runtime
//! with quinn, beside the shards.
//!
//! # Why a thread of its own
//!
//! quinn's endpoint needs a `Send` runtime and monoio's is not one. The
//! two ways out were driving `quinn-proto` (sans-IO) from every shard's own
//! loop, as compio-quic does, or giving QUIC a thread and bridging it to
//! the shards with the mesh's lock-free queues. We took the thread: the
//! cluster is then exactly one more place in the mesh ([`MeshHandle`]),
//! batches cross into it and out of it as they do between shards, the
//! shards' publish path gains no lock and no new code path, and one QUIC
//! connection per pair of nodes serves every shard (per-shard endpoints
//! would need a connection per shard pair, or a UDP socket per shard).
//! The cost is one more hop per forwarded message, paid per batch, not
//! per message. Measured (PERF.md, "Cluster"; `bench/cluster.sh`, three
//! nodes against one on the same core, CPU summed over the nodes): at
//! saturation, where a frame carries many messages, the hop adds 1.15 µs
//! of broker CPU per message at QoS 0 and 1.5 µs at QoS 1 (`4d04eb6`), of which the
//! cluster thread's share is QUIC (encryption, packet assembly: quinn),
//! rkyv encoding and validation, and the node's bookkeeping; at 10,000
//! msg/s spread over 100 publishers, where nearly every message is a
//! frame and two datagrams of its own, it adds about 20 µs, the price of
//! waking two threads and two sockets per message.
//!
//! # Connections
//!
//! One QUIC connection per pair of nodes. Either side may dial (gossip
//! reaches a seed before it knows its node id); when both did, the
//! connection dialed by the smaller node id stays and the other is closed,
//! a rule both ends apply alike. The dialer opens the control stream (a
//! bidirectional stream); each side's first frame on it is `Hello`.
//! Forwarded messages travel on one unidirectional stream per source
//! shard. Gossip packets are QUIC datagrams on the same connection, so the
//! one UDP socket carries both and membership is as authenticated as the
//! data: no node can gossip its way in without a certificate from the
//! cluster's CA. The ownership raft's requests each open a bidirectional
//! stream of their own ([`raftnet`]), so a snapshot queues behind nothing
//! and nothing behind it; the raft itself runs on this thread's runtime
//! (`ownership.rs`).

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use crossbeam_channel::Receiver;
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

mod link;
mod ownership;
pub mod raftnet;
mod wire;

use link::{Established, Event, Hello, LinkId, serve_connection, write_lane, write_uni_lane};
use ownership::{RaftHome, RaftHomeError, RaftSide};
use wire::{Decoded, decode_frame, encode_frame};

use super::frame::{self, ClusterMsg};
use super::membership::{MemberEvent, Membership, MembershipConfig, MembershipError, NodeIdentity};
use super::node::{Frame, Lane, Node, NodeConfig, NodeOutput};
use super::settings::ClusterSettings;
use super::tls;
use super::{ClusterStatus, MemberEventCounts};
use crate::metrics::Readiness;
use crate::shard::mesh::{Batch, Mesh, MeshHandle, ShardMsg};
use crate::store::{ClusterStore, RestoredOutbox};

/// How often the node's timers (route-ack timeouts, peer hold) are looked
/// at, and seeds re-resolved while nobody has answered.
pub(super) const TICK: Duration = Duration::from_millis(100);
/// How long a stopping node waits for its shards to drain and its
/// replicas to hold their last changes before it leaves anyway.
const LEAVE_PATIENCE: Duration = Duration::from_secs(5);
const RESOLVE_EVERY: Duration = Duration::from_secs(5);
/// Gossip packets queued for a peer while its connection is being dialed.
const PENDING_DATAGRAMS: usize = 16;
/// Events (frames, mostly) read off connections and not yet handled.
/// Bounded so that a main loop slower than its peers stops the readers,
/// and QUIC's flow control then stops the peers: nothing here grows
/// without bound.
const EVENT_QUEUE: usize = 1024;

/// QUIC application error codes we close with.
const CLOSE_LEAVING: u32 = 0;
const CLOSE_DUPLICATE_LINK: u32 = 1;
const CLOSE_PROTOCOL: u32 = 2;
const CLOSE_DUPLICATE_NODE_ID: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cluster.listen {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot start the cluster thread: {0}")]
    Thread(std::io::Error),
    #[error("cluster membership: {0}")]
    Membership(#[from] MembershipError),
    #[error("ownership raft: {0}")]
    Ownership(#[from] RaftHomeError),
}

/// Binds the cluster's UDP socket and starts its thread. Errors that a
/// user can fix (certificates, the address) come back before any thread
/// starts.
pub fn start(
    mut settings: ClusterSettings,
    mesh: MeshHandle,
    inbox: Receiver<Batch>,
    readiness: Readiness,
    status: ClusterStatus,
    durable: Durable,
    routes_restored: std::sync::mpsc::Receiver<()>,
) -> Result<thread::JoinHandle<()>, ClusterError> {
    let (mut server, mut client) = tls::quinn_configs(&settings.node_id, &settings.trust)?;
    let transport = Arc::new(transport_config(&settings));
    server.transport_config(transport.clone());
    client.transport_config(transport);
    let socket = UdpSocket::bind(settings.listen).map_err(|error| ClusterError::Bind {
        addr: settings.listen,
        error,
    })?;
    let local = socket.local_addr().map_err(|error| ClusterError::Bind {
        addr: settings.listen,
        error,
    })?;
    // Port 0 picks a free port; peers must dial the one picked.
    if settings.advertise.port() == 0 {
        settings.advertise.set_port(local.port());
    }
    info!(node = %settings.node_id, addr = %local, advertise = %settings.advertise, "cluster endpoint bound");
    if !settings.seeds.is_empty() {
        readiness.require_join();
    }
    // Before the thread: a raft file that is damaged or in use stops the
    // start, as a data dir's does.
    let raft_home = RaftHome::open(&settings)?;
    thread::Builder::new()
        .name("ringmq-cluster".into())
        .spawn(move || {
            // Until every shard has dropped its sender (see `shard::start`).
            let _ = routes_restored.recv();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    error!(%error, "cannot start the cluster runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                let endpoint = match quinn::Endpoint::new(
                    quinn::EndpointConfig::default(),
                    Some(server),
                    socket,
                    Arc::new(quinn::TokioRuntime),
                ) {
                    Ok(endpoint) => endpoint,
                    Err(error) => {
                        error!(%error, "cannot start the cluster endpoint");
                        return;
                    }
                };
                let place = mesh.shard_count();
                let mesh = mesh.attach(place, inbox);
                let cluster = Cluster::new(
                    settings, endpoint, client, mesh, readiness, status, durable, raft_home,
                );
                match cluster {
                    Ok(cluster) => cluster.run().await,
                    Err(error) => error!(%error, "cannot start cluster membership"),
                }
            });
        })
        .map_err(ClusterError::Thread)
}

fn transport_config(settings: &ClusterSettings) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    // A dead peer shows in gossip within a few probe intervals; the
    // connection should not outlive that by much, nor die of silence
    // between two nodes that simply have nothing to say.
    let idle = (settings.probe_interval * 4 + settings.suspect_timeout).max(Duration::from_secs(2));
    transport.keep_alive_interval(Some(
        settings.probe_interval.max(Duration::from_millis(100)),
    ));
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle) {
        transport.max_idle_timeout(Some(idle));
    }
    // One stream per source shard, plus control; generous for restarts.
    transport.max_concurrent_uni_streams(1024u32.into());
    transport.max_concurrent_bidi_streams(16u32.into());
    transport
}

/// One QUIC connection, from dial or accept to close.
struct Link {
    connection: Option<quinn::Connection>,
    /// The address dialed, or the peer's advertised one once known.
    addr: SocketAddr,
    dialed: bool,
    hello: Option<Hello>,
    lanes: FxHashMap<Lane, mpsc::UnboundedSender<Bytes>>,
    /// Frames encoded this turn, per lane, not yet handed to the writers.
    pending: FxHashMap<Lane, BytesMut>,
    pending_datagrams: Vec<Bytes>,
}

struct Cluster {
    settings: ClusterSettings,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    mesh: Mesh,
    readiness: Readiness,
    status: ClusterStatus,
    node: Node,
    membership: Membership,
    me: NodeIdentity,
    links: FxHashMap<LinkId, Link>,
    /// The link carrying frames for each peer.
    by_node: FxHashMap<ByteString, LinkId>,
    next_link: LinkId,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    seeds: Vec<SocketAddr>,
    joined: bool,
    leaving: bool,
    /// Since when the broker is stopping: the node leaves once every
    /// shard has drained and its replicas hold what they wrote last, or
    /// [`LEAVE_PATIENCE`] has passed, so that the nodes taking its
    /// sessions over have them whole.
    stopping: Option<Instant>,
    /// Shards that have drained. Counted whenever it comes: a shard may
    /// drain before the cluster hears of the shutdown.
    shards_drained: usize,
    member_events: MemberEventCounts,
    /// The outboxes on disk, with a data dir.
    store: Option<ClusterStore>,
    raft: RaftSide,
}

/// What the broker's data dir means for the cluster.
#[derive(Default)]
pub struct Durable {
    /// Acknowledge a peer's messages once the local stores committed them.
    pub stored_acks: bool,
    /// Where to keep what is owed to peers, if anywhere.
    pub store: Option<ClusterStore>,
    /// What the last run owed its peers.
    pub owed: Vec<RestoredOutbox>,
    /// `cluster.replication_factor`, when there is a store to replicate
    /// (0 or 1: sessions are not replicated).
    pub replication_factor: usize,
}

impl Cluster {
    #[expect(
        clippy::too_many_arguments,
        reason = "the parts `start` made, each once; a struct would only be taken apart here"
    )]
    fn new(
        settings: ClusterSettings,
        endpoint: quinn::Endpoint,
        client: quinn::ClientConfig,
        mesh: Mesh,
        readiness: Readiness,
        status: ClusterStatus,
        durable: Durable,
        raft_home: RaftHome,
    ) -> Result<Cluster, MembershipError> {
        // A restarted node is a new incarnation: peers drop what they kept
        // for its previous life (routes, duplicate detection).
        let incarnation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |since| since.as_millis() as u64);
        let me = NodeIdentity {
            node_id: settings.node_id.clone(),
            addr: settings.advertise,
            incarnation,
        };
        let now = Instant::now();
        let membership = Membership::new(
            me.clone(),
            MembershipConfig::new(settings.probe_interval, settings.suspect_timeout),
            incarnation,
            now,
        )?;
        let node = Node::new(NodeConfig {
            node_id: settings.node_id.as_str().into(),
            incarnation,
            shards: mesh.shard_count(),
            ack: settings.ack,
            route_ack_timeout: settings.route_ack_timeout,
            peer_buffer_bytes: settings.peer_buffer_bytes,
            peer_hold: settings.peer_hold,
            stored_acks: durable.stored_acks,
            durable_outboxes: durable.store.is_some(),
            replication_factor: durable.replication_factor.max(1),
        });
        let mut node = node;
        node.restore_outboxes(durable.owed, now);
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let joined = settings.seeds.is_empty();
        let raft = RaftSide::new(&settings, raft_home, incarnation, now);
        Ok(Cluster {
            settings,
            endpoint,
            client,
            mesh,
            readiness,
            status,
            node,
            membership,
            me,
            links: FxHashMap::default(),
            by_node: FxHashMap::default(),
            next_link: 0,
            events_tx,
            events,
            seeds: Vec::new(),
            joined,
            leaving: false,
            stopping: None,
            shards_drained: 0,
            member_events: MemberEventCounts::default(),
            store: durable.store,
            raft,
        })
    }

    async fn run(mut self) {
        // Before any link: a peer's raft requests find it running.
        self.raft.start(&self.readiness).await;
        // The routes the shards announced while restoring come before
        // anything a peer sends.
        let now = Instant::now();
        while let Some(batch) = self.mesh.try_recv() {
            self.handle_batch(batch, now);
        }
        let inbox = self.mesh.inbox();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_resolve: Option<Instant> = None;
        loop {
            let gossip_at = self.membership.poll_timeout();
            let gossip_sleep = async {
                match gossip_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                batch = inbox.recv() => {
                    let now = Instant::now();
                    self.handle_batch(batch, now);
                    while let Some(batch) = self.mesh.try_recv() {
                        self.handle_batch(batch, now);
                    }
                }
                Some(event) = self.events.recv() => {
                    let now = Instant::now();
                    self.handle_event(event, now);
                    while let Ok(event) = self.events.try_recv() {
                        self.handle_event(event, now);
                    }
                }
                Some(incoming) = self.endpoint.accept() => self.accept(incoming),
                _ = gossip_sleep => self.membership.handle_timeout(Instant::now()),
                Some(ok) = self.raft.done_rx.recv() => self.raft.handle_done(ok, Instant::now()),
                Some(done) = self.raft.claims_rx.recv() => self.handle_claim_done(done),
                Some((shard, msg)) = self.raft.owners_rx.recv() => self.mesh.push(shard, msg),
                Some((client_id, outcome)) = self.raft.promoted_rx.recv() => match outcome {
                    Ok(epoch) => self.node.handle_promoted(client_id, epoch),
                    Err(()) => self.node.handle_promotion_failed(client_id),
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.node.handle_timeout(now);
                    if !self.joined
                        && last_resolve.is_none_or(|at| now.duration_since(at) >= RESOLVE_EVERY)
                    {
                        last_resolve = Some(now);
                        self.join_seeds(now).await;
                    }
                    self.raft_tick(now);
                    self.publish_status();
                }
            }
            self.pump(Instant::now());
            self.leave_when_drained(Instant::now());
            if self.leaving {
                break;
            }
        }
        // Give the leave frames and gossip a moment to go out.
        self.pump(Instant::now());
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.raft.shutdown().await;
        self.endpoint.close(CLOSE_LEAVING.into(), b"leaving");
        self.endpoint.wait_idle().await;
        info!(node = %self.settings.node_id, "left the cluster");
    }

    fn handle_batch(&mut self, batch: Batch, now: Instant) {
        for msg in batch.messages {
            match msg {
                ShardMsg::Shutdown => self.stopping = Some(now),
                ShardMsg::Drained => self.shards_drained += 1,
                msg => self.node.handle_shard_msg(batch.from, msg, now),
            }
        }
    }

    /// Leaves the cluster once the broker is stopping and every shard has
    /// drained, with its last changes held by its replicas (or after
    /// [`LEAVE_PATIENCE`]): the peers keeping copies take the sessions
    /// over at once, without waiting for failure detection.
    fn leave_when_drained(&mut self, now: Instant) {
        let Some(since) = self.stopping else {
            return;
        };
        let drained = self.shards_drained >= self.mesh.shard_count();
        let ready = drained && self.node.replicas_hold_everything();
        if !ready && now < since + LEAVE_PATIENCE {
            return;
        }
        info!(node = %self.settings.node_id, handed_over = ready, "leaving the cluster");
        self.node.handle_leave();
        self.membership.handle_leave(now);
        self.leaving = true;
    }

    /// Carries out what the node and membership asked for.
    fn pump(&mut self, now: Instant) {
        self.node.flush(now);
        let mut store_ops = Vec::new();
        while let Some(output) = self.node.poll_output() {
            match output {
                NodeOutput::Store(op) => store_ops.push(op),
                NodeOutput::Send { peer, lane, frame } => {
                    self.encode_frame(&peer, lane, frame, now)
                }
                NodeOutput::ToShard { shard, msg } => self.mesh.push(shard, msg),
                NodeOutput::Claim {
                    shard,
                    client_id,
                    token,
                } => self.raft.claim(shard, client_id, token),
                NodeOutput::Release { client_id, epoch } => self.raft.release(client_id, epoch),
                NodeOutput::Promote { from, client_ids } => self.raft.promote(&from, client_ids),
                NodeOutput::CheckOwners { shard, client_ids } => {
                    self.raft.check_owners(shard, client_ids)
                }
                NodeOutput::Disconnect { peer, reason } => {
                    if let Some(&link) = self.by_node.get(&peer) {
                        warn!(%peer, %reason, "closing the link to a peer that broke the protocol");
                        self.close_link(link, CLOSE_PROTOCOL, &reason, now);
                    }
                }
            }
        }
        // Committed before the mesh carries this turn's answers to the
        // shards: a PUBACK released now covers a message owed to a peer
        // that was not waited for, which must be on disk first.
        if let Some(store) = &mut self.store {
            if let Err(error) = store.commit(store_ops) {
                error!(%error, "cluster outbox write failed");
            }
            store.sync_if_due();
        }
        self.write_lanes();
        self.mesh.flush();
        while let Some((addr, data)) = self.membership.poll_transmit() {
            self.send_datagram(addr, data);
        }
        while let Some(event) = self.membership.poll_event() {
            self.handle_member_event(event);
        }
    }

    /// Encodes a frame at the end of its lane's output for this turn: the
    /// frames of one turn go to the lane's writer in one piece.
    fn encode_frame(&mut self, peer: &ByteString, lane: Lane, frame: Frame, now: Instant) {
        self.encode_for(peer, lane, |out| {
            out.reserve(frame.size_hint());
            encode_frame(frame, now, out)
        });
    }

    /// Encodes `msg` at the end of `peer`'s control lane for this turn:
    /// for what the node does not make (the raft's `RaftMember`).
    fn send_control(&mut self, peer: &ByteString, msg: &ClusterMsg) {
        self.encode_for(peer, Lane::Control, |out| frame::encode(msg, out));
    }

    /// Runs `encode` on the end of `peer`'s output on `lane` for this
    /// turn; what it wrote before failing is taken back.
    fn encode_for(
        &mut self,
        peer: &ByteString,
        lane: Lane,
        encode: impl FnOnce(&mut BytesMut) -> Result<usize, frame::FrameError>,
    ) {
        let Some(link) = self
            .by_node
            .get(peer)
            .and_then(|link_id| self.links.get_mut(link_id))
        else {
            return;
        };
        let out = link.pending.entry(lane).or_default();
        let before = out.len();
        if let Err(error) = encode(out) {
            out.truncate(before);
            warn!(%peer, %error, "frame not sent");
        }
    }

    /// Hands each lane's output of this turn to its writer task.
    fn write_lanes(&mut self) {
        for link in self.links.values_mut() {
            if link.pending.is_empty() {
                continue;
            }
            let Some(connection) = link.connection.clone() else {
                link.pending.clear();
                continue;
            };
            for (lane, out) in link.pending.drain() {
                let sender = link.lanes.entry(lane).or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(write_uni_lane(connection.clone(), rx));
                    tx
                });
                // A writer that ended has a closed connection; the link's
                // Closed event follows and the outbox resends.
                let _ = sender.send(out.freeze());
            }
        }
    }

    fn send_datagram(&mut self, addr: SocketAddr, data: Bytes) {
        if let Some(link) = self
            .links
            .values_mut()
            .find(|link| link.addr == addr && link.connection.is_some())
        {
            if let Some(connection) = &link.connection
                && let Err(error) = connection.send_datagram(data)
            {
                debug!(%addr, %error, "gossip datagram not sent");
            }
            return;
        }
        if let Some(link) = self.links.values_mut().find(|link| link.addr == addr) {
            if link.pending_datagrams.len() < PENDING_DATAGRAMS {
                link.pending_datagrams.push(data);
            }
            return;
        }
        let link = self.dial(addr);
        if let Some(link) = self.links.get_mut(&link) {
            link.pending_datagrams.push(data);
        }
    }

    fn dial(&mut self, addr: SocketAddr) -> LinkId {
        let id = self.new_link(addr, true);
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), addr, tls::SERVER_NAME);
        // The dialer opens the control stream.
        self.spawn_link(id, async move {
            let connection = connecting
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let (send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            Ok((connection, send, recv))
        });
        id
    }

    fn accept(&mut self, incoming: quinn::Incoming) {
        let id = self.new_link(incoming.remote_address(), false);
        self.spawn_link(id, async move {
            let connection = incoming.await.map_err(|e| e.to_string())?;
            let (send, recv) = connection.accept_bi().await.map_err(|e| e.to_string())?;
            Ok((connection, send, recv))
        });
    }

    /// Runs link `id` once `establish` has its connection and control
    /// stream: hellos, then reading until it ends.
    fn spawn_link(
        &self,
        id: LinkId,
        establish: impl Future<Output = Result<Established, String>> + Send + 'static,
    ) {
        let events = self.events_tx.clone();
        let hello = self.hello();
        tokio::spawn(async move {
            match establish.await {
                Ok((connection, send, recv)) => {
                    serve_connection(id, connection, send, recv, hello, events).await
                }
                Err(reason) => {
                    let closed = Event::Closed {
                        link: id,
                        reason,
                        duplicate_id: false,
                    };
                    let _ = events.send(closed).await;
                }
            }
        });
    }

    fn new_link(&mut self, addr: SocketAddr, dialed: bool) -> LinkId {
        self.next_link += 1;
        let id = self.next_link;
        self.links.insert(
            id,
            Link {
                connection: None,
                addr,
                dialed,
                hello: None,
                lanes: FxHashMap::default(),
                pending: FxHashMap::default(),
                pending_datagrams: Vec::new(),
            },
        );
        id
    }

    fn hello(&self) -> ClusterMsg {
        ClusterMsg::Hello {
            node_id: self.settings.node_id.clone(),
            incarnation: self.me.incarnation,
            advertise: self.settings.advertise.to_string(),
            version: frame::PROTOCOL_VERSION,
        }
    }

    fn handle_event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Up {
                link,
                hello,
                connection,
                control,
            } => self.link_up(link, hello, connection, control, now),
            Event::Frame { link, frame } => self.link_frame(link, frame, now),
            Event::Datagram { link, data } => {
                let from = self.links.get(&link).map(|link| link.addr);
                if let Some(from) = from
                    && let Err(error) = self.membership.handle_data(from, &data, now)
                {
                    debug!(%from, %error, "gossip packet ignored");
                }
            }
            Event::Closed {
                link,
                reason,
                duplicate_id,
            } => {
                if duplicate_id {
                    self.refused_as_duplicate(link);
                }
                self.link_closed(link, &reason, now);
            }
        }
    }

    fn link_up(
        &mut self,
        id: LinkId,
        hello: Hello,
        connection: quinn::Connection,
        control: quinn::SendStream,
        now: Instant,
    ) {
        if *hello.node_id == *self.settings.node_id {
            connection.close(CLOSE_DUPLICATE_NODE_ID.into(), b"duplicate node id");
            error!(
                node = %self.settings.node_id,
                other = %hello.advertise,
                "another node uses this node id: refusing it; node ids must be unique"
            );
            self.close_link(id, CLOSE_DUPLICATE_NODE_ID, "duplicate node id", now);
            return;
        }
        let Some(link) = self.links.get_mut(&id) else {
            connection.close(CLOSE_PROTOCOL.into(), b"link already closed");
            return;
        };
        link.connection = Some(connection);
        link.addr = hello.advertise;
        link.hello = Some(hello.clone());
        let dialed = link.dialed;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_lane(control, rx));
        link.lanes.insert(Lane::Control, tx);
        let pending = std::mem::take(&mut link.pending_datagrams);
        if let Some(connection) = &link.connection {
            for data in pending {
                let _ = connection.send_datagram(data);
            }
        }
        if let Some(&existing) = self.by_node.get(&hello.node_id)
            && existing != id
            && self.is_other_live_node(existing, &hello)
        {
            error!(
                node = %hello.node_id,
                live = %self.links.get(&existing).map_or(hello.advertise, |link| link.addr),
                refused = %hello.advertise,
                "a second live node claims this node id: refusing it; node ids must be unique"
            );
            self.close_link(id, CLOSE_DUPLICATE_NODE_ID, "duplicate node id", now);
            return;
        }
        if let Some(&existing) = self.by_node.get(&hello.node_id)
            && existing != id
        {
            // A newer incarnation's link replaces a dead process's, which
            // may linger until its idle timeout. Between two links of one
            // incarnation, both ends keep the one dialed by the smaller id.
            let existing_incarnation = self
                .links
                .get(&existing)
                .and_then(|link| link.hello.as_ref())
                .map_or(0, |hello| hello.incarnation);
            let smaller_is_me = *self.settings.node_id < *hello.node_id;
            let keep_new = match hello.incarnation.cmp(&existing_incarnation) {
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Less => false,
                std::cmp::Ordering::Equal => dialed == smaller_is_me,
            };
            if !keep_new {
                self.close_link(id, CLOSE_DUPLICATE_LINK, "duplicate link", now);
                return;
            }
            self.close_link(existing, CLOSE_DUPLICATE_LINK, "duplicate link", now);
        }
        info!(peer = %hello.node_id, addr = %hello.advertise, "cluster link up");
        self.by_node.insert(hello.node_id.clone(), id);
        self.raft_link_up(id, &hello);
        self.node
            .handle_link_up(hello.node_id, hello.incarnation, now);
    }

    /// Whether the link `existing` belongs to a live process other than the
    /// one that just said `hello`: another incarnation at another address,
    /// whose connection is still open. A restart at the same address, or
    /// one whose old connection has closed, is the same node coming back.
    fn is_other_live_node(&self, existing: LinkId, hello: &Hello) -> bool {
        self.links.get(&existing).is_some_and(|link| {
            let other = link.hello.as_ref().is_some_and(|old| {
                old.incarnation != hello.incarnation && old.advertise != hello.advertise
            });
            let open = link
                .connection
                .as_ref()
                .is_some_and(|connection| connection.close_reason().is_none());
            other && open
        })
    }

    /// A peer refused this node: its id is taken by a live node. The node
    /// keeps trying (a node restarted at a new address is refused until
    /// its old connections time out, a few seconds) and says so loudly
    /// each time; it does not count as joined, so `/ready` stays 503 and
    /// no load balancer sends it clients.
    fn refused_as_duplicate(&mut self, link: LinkId) {
        let peer = self.links.get(&link).map(|link| link.addr);
        error!(
            node = %self.settings.node_id,
            peer = ?peer,
            "a peer refused this node: a live node already uses this node id; node ids must be unique"
        );
    }

    fn set_joined(&mut self) {
        if !self.joined {
            self.joined = true;
            self.readiness.set_joined();
            info!(node = %self.settings.node_id, "joined the cluster");
        }
    }

    fn link_frame(&mut self, id: LinkId, frame: frame::Frame, now: Instant) {
        let Some(peer) = self
            .links
            .get(&id)
            .and_then(|link| link.hello.as_ref())
            .map(|hello| hello.node_id.clone())
        else {
            return;
        };
        // A superseded duplicate link may still deliver a frame or two;
        // only the current link's frames count.
        if self.by_node.get(&peer) != Some(&id) {
            return;
        }
        // A peer's first frame (its routes) proves it accepted the link:
        // a seed has answered. (A hello alone does not: a peer refusing a
        // duplicate node id exchanges hellos first.)
        self.set_joined();
        match decode_frame(&frame, now) {
            Ok(Decoded::Node(frame)) => self.node.handle_frame(&peer, frame, now),
            Ok(Decoded::Gossip(data)) => {
                let addr = self.links.get(&id).map(|link| link.addr);
                if let Some(addr) = addr {
                    let _ = self.membership.handle_data(addr, &data, now);
                }
            }
            Ok(Decoded::Hello) => {
                self.close_link(id, CLOSE_PROTOCOL, "a second hello", now);
            }
            Ok(Decoded::RaftMember { raft_id, has_state }) => {
                self.raft_member(id, &peer, raft_id, has_state, now);
            }
            Err(error) => {
                warn!(%peer, %error, "malformed frame from a peer: closing its link");
                self.close_link(id, CLOSE_PROTOCOL, &error.to_string(), now);
            }
        }
    }

    fn link_closed(&mut self, id: LinkId, reason: &str, now: Instant) {
        let Some(link) = self.links.remove(&id) else {
            return;
        };
        if let Some(hello) = link.hello
            && self.by_node.get(&hello.node_id) == Some(&id)
        {
            self.by_node.remove(&hello.node_id);
            info!(peer = %hello.node_id, %reason, "cluster link down");
            self.raft_link_down(&hello.node_id);
            self.node.handle_link_down(&hello.node_id, now);
        } else {
            debug!(addr = %link.addr, %reason, "cluster connection ended");
        }
    }

    fn close_link(&mut self, id: LinkId, code: u32, reason: &str, now: Instant) {
        if let Some(connection) = self.links.get(&id).and_then(|link| link.connection.clone()) {
            connection.close(code.into(), reason.as_bytes());
        }
        self.link_closed(id, reason, now);
    }

    fn handle_member_event(&mut self, event: MemberEvent) {
        self.member_events.count(&event);
        match event {
            MemberEvent::Joined(member) => {
                info!(peer = %member.node_id, addr = %member.addr, "cluster member up");
                self.node.handle_peer_alive(&member.node_id);
                self.dial_member(&member);
            }
            MemberEvent::Replaced { old, new } => {
                info!(peer = %new.node_id, old = old.incarnation, new = new.incarnation, addr = %new.addr, "cluster member restarted");
                self.node.handle_peer_alive(&new.node_id);
                self.dial_member(&new);
            }
            MemberEvent::Suspect(member) => {
                warn!(peer = %member.node_id, "cluster member suspected");
                self.node
                    .handle_peer_suspect(&member.node_id, Instant::now());
            }
            MemberEvent::Alive(member) => {
                info!(peer = %member.node_id, "cluster member alive again");
                self.node.handle_peer_alive(&member.node_id);
            }
            MemberEvent::Down(member) => {
                // Its routes and outbox stay for peer_hold: a partition or
                // a restart should not lose what is owed to it.
                warn!(peer = %member.node_id, "cluster member down");
                self.node.handle_peer_down(&member.node_id, Instant::now());
            }
            MemberEvent::Left(member) => {
                info!(peer = %member.node_id, "cluster member left");
                self.node.handle_peer_left(&member.node_id, Instant::now());
            }
            MemberEvent::DuplicateNodeId { theirs, other } => {
                error!(
                    node = %theirs.node_id,
                    addr = %theirs.addr,
                    other = %other,
                    "two live nodes use the same node id; node ids must be unique"
                );
            }
            // Gossip can reach a node that peers then refuse (a duplicate
            // id): only an accepted link counts as joined.
            MemberEvent::JoinedCluster => debug!("gossip: joined"),
            MemberEvent::Isolated => {
                warn!(node = %self.settings.node_id, "no live cluster member left; rejoining through the seeds");
            }
            MemberEvent::Renewed(me) => {
                info!(node = %me.node_id, incarnation = me.incarnation, "declared down by the cluster; rejoined under a new identity");
            }
        }
    }

    /// Dials a member gossip told us of, unless a link exists or is being
    /// made.
    fn dial_member(&mut self, member: &NodeIdentity) {
        if !self.by_node.contains_key(member.node_id.as_str())
            && !self.links.values().any(|link| link.addr == member.addr)
        {
            self.dial(member.addr);
        }
    }

    async fn join_seeds(&mut self, now: Instant) {
        let seeds = self.settings.seeds.clone();
        let resolved = tokio::task::spawn_blocking(move || resolve_all(&seeds))
            .await
            .unwrap_or_default();
        if resolved.is_empty() {
            warn!(seeds = ?self.settings.seeds, "no seed could be resolved; still trying");
        } else {
            warn!(seeds = ?resolved, "no seed has answered yet; still trying");
        }
        self.seeds = resolved;
        for &seed in &self.seeds {
            if seed != self.settings.advertise && seed != self.settings.listen {
                self.membership.handle_join(seed, now);
            }
        }
    }

    /// The connection to each linked peer.
    fn linked(&self) -> impl Iterator<Item = (&ByteString, &quinn::Connection)> {
        self.by_node.iter().filter_map(|(peer, link)| {
            let connection = self.links.get(link)?.connection.as_ref()?;
            Some((peer, connection))
        })
    }

    fn publish_status(&self) {
        let rtts = self
            .linked()
            .map(|(peer, connection)| (peer.clone(), connection.rtt()))
            .collect();
        let members = self.membership.counts();
        self.status.update(
            &self.node,
            members,
            self.member_events,
            rtts,
            self.raft.status(),
        );
    }
}

fn resolve_all(seeds: &[String]) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = seeds
        .iter()
        .filter_map(|seed| seed.to_socket_addrs().ok())
        .flatten()
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}
