//! Shards: the only code that awaits.
//!
//! One thread per core, pinned, each running its own monoio runtime on
//! io_uring (or epoll where io_uring is unavailable). A shard owns the
//! connections it serves, the sessions homed on it and its partition of
//! the subscription trie; nothing it owns is `Send`, so no lock can creep
//! onto the hot path. Shards talk only through [`mesh::ShardMsg`].
//!
//! # Placement
//!
//! A session lives on the shard picked by hashing its client id
//! ([`home_shard`]). Connections are accepted on every shard
//! (SO_REUSEPORT); the accepting shard reads the CONNECT and, when the
//! client id belongs elsewhere, hands the socket and any bytes read past
//! the CONNECT to the home shard (for a WebSocket connection, its framing
//! state too: [`websocket`]). The cost is one hop per connection, paid
//! once. What it buys: a client id has exactly one home, so session
//! takeover, resume and persistent state are local decisions with no
//! cross-core directory and no race between two shards claiming a session.
//!
//! # Routing
//!
//! Each shard keeps, in a topic trie, the filters of its own sessions, and
//! in a second trie (the route table) the filters for which some *other*
//! shard has at least one subscriber. A shard tells the others only when a
//! filter gains its first or loses its last local subscriber, so the route
//! table changes at the rate of distinct filters, not of SUBSCRIBE packets.
//!
//! A PUBLISH is matched once against the route table to find the shards
//! that need it, and pushed to each of those once (whatever the number of
//! subscribers there) as an `Arc<Message>`; the target matches it against
//! its own trie. The message is never copied: the payload is the `Bytes`
//! slice of the publisher's read buffer. Pushes are batched per target and
//! flushed after each batch of packets read from a socket, waking the
//! target once per batch ([`mesh`]).
//!
//! To the route table, another shard is simply "a place with subscribers
//! for this filter"; a node of a cluster is the same thing one hop further,
//! which is how clustering will extend this without changing the session
//! or trie code.
//!
//! ## Shared subscriptions
//!
//! A shared subscription `$share/{group}/{filter}` delivers each matching
//! message to exactly one of the group's members, wherever they live. Each
//! group (group and filter together: `$share/g/a` and `$share/g/b` are two
//! groups) has an *owner* shard, picked by hashing its name like a client
//! id ([`group_owner`]). The owner alone holds the member list and the
//! strategy's state (round-robin cursor, sticky member,
//! [`crate::router::shared`]); members' shards register them with
//! `SharedJoin` / `SharedLeave` and report when a member's session gains
//! or loses its connection.
//!
//! The route table carries a group as one more place for its filter: a
//! shard announces `SharedRouteAdd` to every shard when it gains its first
//! member of a group (and records it in its own table too, since a group is
//! reached through its owner even from a member's shard). The publisher's
//! shard, and only it, sends each matching message once to each matching
//! group's owner (`SharedPublish`); the owner picks a member and forwards
//! the message to that member's shard (`SharedDeliver`), which delivers it
//! like any other, except that the session remembers the group until the
//! client has the message. A hop to or from this shard's own owner is a
//! direct call, not a trip through the inbox.
//!
//! Why an owner rather than membership replicated on every shard with the
//! publisher choosing: the choice is made in one place, so exactly-once per
//! message needs no agreement between publishers; round robin is one
//! cursor over all publishers, so it is fair to the message, not just per
//! publishing shard, and sticky means one member, not one per shard; and a
//! membership change is one message to the owner, not one to every shard.
//! The cost is at most one extra hop per message for groups owned by
//! neither the publisher's nor the member's shard: one more `Arc` push in
//! an already batched queue, and no lock.
//!
//! Member loss: a member whose connection ends stays in its groups while
//! its session lives, but the owner chooses online members while there are
//! any. Its shard takes back every shared message the client had not
//! acknowledged (queued, or sent without PUBACK / PUBREC) and returns each
//! to its owner, which gives it to another member, or back to the same
//! one, to queue, if it is the only one left. A session that ends leaves
//! its groups first, then returns its messages the same way. A
//! `SharedDeliver` that finds its member gone, or offline when the owner
//! thought it online, goes back to the owner too; the owner has heard of
//! the change by then, because the member's shard sent it first on the
//! same FIFO queue, so a message is never bounced between the two forever.
//!
//! Causality carries over: the route and the membership leave the
//! member's shard before its SUBACK is written, so a PUBLISH sent after the
//! SUBACK finds the route on the publisher's shard (which drains its inbox
//! first) and the member at the owner (whose inbox is one FIFO). Order per
//! publisher and topic holds per member, since each hop is a FIFO queue;
//! messages spread over several members have no order between them.
//!
//! # Causality
//!
//! Route and retained updates travel on the same queues as publishes.
//! Before routing a PUBLISH or answering a SUBSCRIBE with retained messages
//! a shard drains its inbox, so a SUBACK seen by one client happens-before
//! any PUBLISH another client sends after it: the publisher's shard has
//! seen the route by the time it routes.
//!
//! Per publisher, per topic order holds because one connection is read by
//! one task, a shard's pushes to a peer go through one FIFO queue, and the
//! target delivers a batch in order.
//!
//! The retained store is replicated on every shard (the `Message`s are
//! shared by refcount, only the index is per shard) so that a SUBSCRIBE is
//! answered from local memory.

mod abuse;
mod auth;
mod connection;
mod deadline;
mod framing;
mod limit;
mod listener;
pub mod mesh;
mod notify;
pub mod proxy;
mod socket;
mod state;
pub mod tls;
pub mod websocket;

use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
use rustc_hash::FxHasher;
use tracing::{error, info, warn};

use crate::auth::Authenticator;
use crate::cluster::{self, ClusterStatus};
use crate::config::{IoDriver, ListenerConfig};
use crate::metrics::{self, Readiness};
use crate::tls::TlsAcceptor;
pub use limit::{ConnectionLimit, OpenFilesFit, fit_to_open_files, raise_open_file_limit};
use mesh::{Batch, MeshHandle, ShardMsg};
pub use state::ShardConfig;
use state::ShardState;

use crate::message::Message;
use crate::store::dir::Partition;
use crate::store::restore::restore;
use crate::store::{ClusterStore, DataDir, Durability, RestoredShard, StoreHandle, StoreSettings};

/// Index of a shard, 0-based.
pub type ShardId = usize;

/// How often offline sessions' wills and expiries, and connections'
/// keep-alives, are checked. Their intervals are whole seconds, so this
/// bounds their lateness well inside one.
const TICK: Duration = Duration::from_millis(100);

/// How long a shutting-down shard waits for goodbyes to be written.
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);

/// The shard a client id's session lives on. Stable for the life of the
/// process, the same on every thread.
pub fn home_shard(client_id: &str, shards: usize) -> ShardId {
    place(client_id, shards)
}

/// The shard that owns the shared subscription `share`
/// (`$share/{group}/{filter}`): it holds the group's member list and picks
/// the member for each message.
pub fn group_owner(share: &str, shards: usize) -> ShardId {
    place(share, shards)
}

/// A name's shard: stable for the life of the process, the same on every
/// thread.
fn place(name: &str, shards: usize) -> ShardId {
    let mut hasher = FxHasher::default();
    name.hash(&mut hasher);
    (hasher.finish() % shards as u64) as ShardId
}

/// What the shards are started with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listeners: Vec<ListenerConfig>,
    pub shards: usize,
    pub io_driver: IoDriver,
    pub shard: ShardConfig,
    /// Where `/metrics`, `/health` and `/ready` are served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// How often `$SYS` topics are published; `None` for never.
    pub sys_interval: Option<Duration>,
    /// Cluster membership and forwarding; `None` for a single node.
    pub cluster: Option<crate::cluster::settings::ClusterSettings>,
    pub store: Option<crate::store::StoreSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Listen(io::Error),
    #[error("io_uring was requested (--io-driver uring) but is not available on this kernel")]
    UringUnavailable,
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    #[error("cannot start shard thread: {0}")]
    Thread(io::Error),
    #[error("{0}")]
    Cluster(#[from] crate::cluster::runtime::ClusterError),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

/// Starts the shards and blocks until they have all shut down (after
/// SIGINT or SIGTERM).
pub fn run(config: ServerConfig) -> Result<(), StartError> {
    let uring = match config.io_driver {
        IoDriver::Uring if !monoio::utils::detect_uring() => {
            return Err(StartError::UringUnavailable);
        }
        IoDriver::Uring => true,
        IoDriver::Epoll => false,
        IoDriver::Auto => monoio::utils::detect_uring(),
    };
    info!(
        driver = if uring { "io_uring" } else { "epoll" },
        shards = config.shards,
        "starting"
    );

    // Read before anything listens: a data dir that cannot be opened or
    // read stops the start, and no client sees a broker without its state.
    let (data_dir, mut restored) = match &config.store {
        Some(settings) => {
            let (dir, restored) = open_store(settings, config.shards)?;
            (Some(dir), restored)
        }
        None => (None, Restored::default()),
    };
    let (mesh, mut inboxes) = MeshHandle::build(config.shards, config.cluster.is_some());
    let readiness = Readiness::default();
    let cluster_status = ClusterStatus::default();
    // The cluster's place is the mesh's last; its thread starts first, so
    // a bad certificate or address stops start-up before any listener.
    let cluster_inbox = mesh.cluster_place().and_then(|_| inboxes.pop());
    // The cluster links to its peers only once every shard has restored
    // its sessions and announced their routes: a peer's message arriving
    // before would find no subscriber here, and be acknowledged and lost.
    // Each shard drops its sender when it is done (or dies).
    let (routes_restored, routes_restored_rx) = std::sync::mpsc::channel::<()>();
    let replicated_sessions =
        (config.cluster.as_ref()).is_some_and(|cluster| cluster.replication_factor >= 2);
    let cluster = match (config.cluster.clone(), cluster_inbox) {
        (Some(settings), Some(inbox)) => {
            let status = cluster_status.clone();
            let durable = match (&data_dir, &config.store) {
                (Some(dir), Some(store)) => {
                    let outboxes =
                        ClusterStore::new(dir.cluster.clone(), store.durability, store.interval);
                    let owed = outboxes.restore(store.repair)?;
                    if !owed.is_empty() {
                        info!(messages = owed.len(), "messages owed to peers restored");
                    }
                    cluster::runtime::Durable {
                        // With a store that acknowledgements wait for, a
                        // peer's messages are acknowledged once committed
                        // here too, and once replicated.
                        stored_acks: store.durability.waits() || replicated_sessions,
                        store: Some(outboxes),
                        owed,
                        replication_factor: settings.replication_factor,
                    }
                }
                _ => {
                    if settings.replication_factor >= 2 {
                        warn!(
                            "cluster.replication_factor needs a data_dir: persistent sessions are kept by their owner alone, in memory"
                        );
                    }
                    cluster::runtime::Durable::default()
                }
            };
            let thread = cluster::runtime::start(
                settings,
                mesh.clone(),
                inbox,
                readiness.clone(),
                status,
                durable,
                routes_restored_rx,
            )?;
            Some(thread)
        }
        _ => None,
    };
    // Before binding: once `listening` is logged, a SIGTERM must already
    // mean a clean shutdown, not the default action (death by signal).
    watch_signals(mesh.clone(), readiness.clone())?;
    let certificates = config
        .listeners
        .iter()
        .filter_map(|listener| Some(listener.tls.as_ref()?.acceptor.clone()))
        .collect();
    watch_hangups(config.shard.auth.clone(), certificates)?;
    let listeners =
        listener::bind_all(&config.listeners, config.shards).map_err(StartError::Listen)?;
    // After the MQTT listeners, whose `listening` lines come first.
    if let Some(addr) = config.metrics_listen {
        let cluster = config.cluster.is_some().then(|| cluster_status.clone());
        metrics::http::start(addr, mesh.clone(), readiness.clone(), cluster)
            .map_err(StartError::Listen)?;
    }
    if let Some(interval) = config.sys_interval {
        metrics::sys::start(interval, mesh.clone()).map_err(StartError::Thread)?;
    }

    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut threads = Vec::new();
    let restart = Arc::new(Barrier::new(config.shards));
    let retained = Arc::new(std::mem::take(&mut restored.retained));
    for (id, (inbox, listeners)) in inboxes.into_iter().zip(listeners).enumerate() {
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        let mesh = mesh.clone();
        let shard_config = config.shard.clone();
        let store = match (&data_dir, &config.store) {
            (Some(dir), Some(settings)) => Some(ShardStore {
                partition: dir.partitions[id].clone(),
                restored: std::mem::take(&mut restored.shards[id]),
                retained: retained.clone(),
                durability: settings.durability,
                interval: settings.interval,
                replicated: replicated_sessions,
            }),
            _ => None,
        };
        let startup = Startup {
            restart: restart.clone(),
            routes_restored: routes_restored.clone(),
        };
        let thread = thread::Builder::new()
            .name(format!("ringmq-shard-{id}"))
            .spawn(move || {
                if let Some(core) = core
                    && !core_affinity::set_for_current(core)
                {
                    warn!(shard = id, "cannot pin shard thread to its core");
                }
                let shard = shard_main(id, mesh, inbox, listeners, shard_config, store, startup);
                let result = if uring {
                    uring_runtime().map(|mut runtime| runtime.block_on(shard))
                } else {
                    RuntimeBuilder::<LegacyDriver>::new()
                        .enable_timer()
                        .build()
                        .map(|mut runtime| runtime.block_on(shard))
                };
                if let Err(error) = result {
                    error!(shard = id, %error, "cannot start the shard's runtime");
                }
            })
            .map_err(StartError::Thread)?;
        threads.push(thread);
    }
    // Only the shards' senders are left: the cluster waits for those.
    drop(routes_restored);
    // Every listening socket is bound and listening: the kernel queues
    // connections from now on, even before a shard's first accept.
    readiness.set_ready();
    for thread in threads.into_iter().chain(cluster) {
        // A panicking shard has already printed its panic; the others
        // still shut down cleanly.
        let _ = thread.join();
    }
    // The writers have synced and exited with their shards; the lock goes
    // last.
    drop(data_dir);
    info!("stopped");
    Ok(())
}

/// Everything the data dir held, by shard, and the retained messages of
/// all partitions (every shard keeps them all).
#[derive(Default)]
struct Restored {
    shards: Vec<RestoredShard>,
    retained: Vec<Arc<Message>>,
}

/// One shard's partition and what was read from it.
struct ShardStore {
    partition: Partition,
    restored: RestoredShard,
    retained: Arc<Vec<Arc<Message>>>,
    durability: Durability,
    interval: Duration,
    /// Acknowledgements wait for the session's replicas on other nodes.
    replicated: bool,
}

/// Opens the data dir and reads every partition, in parallel: restore time
/// is start-up time.
fn open_store(settings: &StoreSettings, shards: usize) -> Result<(DataDir, Restored), StartError> {
    let started = Instant::now();
    let dir = DataDir::open(settings, shards)?;
    let (now, wall) = (Instant::now(), std::time::SystemTime::now());
    // The first partition is read on this thread, the others each on
    // one of their own. This thread's allocations come from glibc's main
    // heap, which grows 128 KiB at a time; another thread's heap grows
    // one page at a time, each an mprotect call: 208,000 of them for a
    // one-shard restart of 100,000 sessions x 10 messages, 46 with growth
    // padded (perf stat; PERF.md "Restore, allocating less").
    let read = |partition| restore(partition, settings.repair, now, wall);
    let results: Vec<_> = thread::scope(|scope| {
        let (first, others) = match dir.partitions.split_first() {
            Some((first, others)) => (Some(first), others),
            None => (None, &[][..]),
        };
        let readers: Vec<_> = others
            .iter()
            .map(|partition| scope.spawn(move || read(partition)))
            .collect();
        first
            .map(read)
            .into_iter()
            .chain(readers.into_iter().map(|reader| {
                reader
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }))
            .collect()
    });
    let mut restored = Restored::default();
    for result in results {
        let mut shard = result?;
        restored.retained.append(&mut shard.retained);
        restored.shards.push(shard);
    }
    let sessions: usize = restored.shards.iter().map(|s| s.sessions.len()).sum();
    info!(
        dir = %settings.dir.display(),
        sessions,
        retained = restored.retained.len(),
        millis = started.elapsed().as_millis() as u64,
        "data dir read"
    );
    Ok((dir, restored))
}

/// How every io_uring instance here is set up, the load generator's too.
///
/// Cooperative task running (`IORING_SETUP_COOP_TASKRUN`, Linux 5.19): a
/// completion that arrives while the thread is running (a socket turning
/// readable under a pending poll) is handed to it at its next system call
/// instead of through an inter-processor interrupt. The shard makes a
/// system call every turn of its loop, so nothing waits longer; a shard
/// asleep in `io_uring_enter` is still woken at once. On this project's
/// 2-vCPU VM, where an interrupt is a trip through the hypervisor, QoS 1
/// pairs at 25,000 msg/s cost the broker 16.1 µs per message with it (in
/// broker and generator) and 27.0 without (PERF.md, "io_uring set-up").
pub fn uring_builder() -> io_uring::Builder {
    let mut builder = io_uring::IoUring::builder();
    builder.setup_coop_taskrun();
    builder
}

/// A shard's io_uring runtime; on a kernel older than 5.19, which refuses
/// the cooperative set-up, one without it.
fn uring_runtime() -> io::Result<monoio::Runtime<TimeDriver<IoUringDriver>>> {
    let build = |urb| {
        RuntimeBuilder::<IoUringDriver>::new()
            .enable_timer()
            .with_entries(4096)
            .uring_builder(urb)
            .build()
    };
    build(uring_builder()).or_else(|error| {
        info!(%error, "io_uring refused cooperative task running; set up without it");
        build(io_uring::IoUring::builder())
    })
}

/// The first SIGINT or SIGTERM asks every shard to drain.
fn watch_signals(mesh: MeshHandle, readiness: Readiness) -> Result<(), StartError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(StartError::Signals)?;
    thread::Builder::new()
        .name("ringmq-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                info!(signal, "shutting down");
                readiness.set_draining();
                mesh.broadcast(|| ShardMsg::Shutdown);
                // The cluster leaves gracefully: peers drop its routes at
                // once instead of holding them for `peer_hold`.
                if let Some(place) = mesh.cluster_place() {
                    mesh.send(place, ShardMsg::Shutdown);
                }
            }
        })
        .map_err(StartError::Thread)?;
    Ok(())
}

/// Every SIGHUP reloads what can be reloaded: the password and ACL files,
/// and the TLS listeners' certificates (one acceptor may serve several
/// `tls_listen` addresses: it is reloaded once each). A broker without
/// any logs that there is nothing to reload rather than dying, the
/// signal's default action, when a terminal or a script sends it.
fn watch_hangups(
    auth: Arc<Authenticator>,
    mut certificates: Vec<Arc<TlsAcceptor>>,
) -> Result<(), StartError> {
    certificates.dedup_by(|a, b| Arc::ptr_eq(a, b));
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .map_err(StartError::Signals)?;
    thread::Builder::new()
        .name("ringmq-reload".into())
        .spawn(move || {
            for signal in signals.forever() {
                info!(signal, "reloading");
                auth.reload();
                for acceptor in &certificates {
                    acceptor.reload();
                }
            }
        })
        .map_err(StartError::Thread)?;
    Ok(())
}

/// What the shards of one start wait for together.
struct Startup {
    /// Every shard's routes are in place before any restored will goes out.
    restart: Arc<Barrier>,
    /// Dropped once this shard's restored routes are announced (see
    /// `start`).
    routes_restored: std::sync::mpsc::Sender<()>,
}

async fn shard_main(
    id: ShardId,
    mesh: MeshHandle,
    inbox: Receiver<Batch>,
    listeners: Vec<listener::Listener>,
    config: ShardConfig,
    store: Option<ShardStore>,
    startup: Startup,
) {
    let Startup {
        restart,
        routes_restored,
    } = startup;
    let handle = mesh.clone();
    let mesh = mesh.attach(id, inbox);
    let inbox = mesh.inbox();
    let state = ShardState::new(mesh, Rc::new(config));
    if let Some(store) = store {
        let ShardStore {
            partition,
            mut restored,
            retained,
            durability,
            interval,
            replicated,
        } = store;
        let writer = StoreHandle::start(
            partition,
            durability,
            interval,
            handle,
            id,
            &restored.messages,
            std::mem::take(&mut restored.unapplied),
        );
        let started = match writer {
            Ok(writer) => {
                let mut state = state.borrow_mut();
                state.attach_store(writer);
                if replicated {
                    state.replicate_sessions();
                }
                state.restore(restored, &retained, Instant::now());
                true
            }
            Err(error) => {
                error!(shard = id, %error, "cannot start the store writer");
                false
            }
        };
        // Every shard's routes must be in place before a restored will is
        // published anywhere; a shard that failed still lets the others on.
        restart.wait();
        drop(routes_restored);
        if !started {
            return;
        }
        state.borrow_mut().resume_restored(Instant::now());
    } else {
        drop(routes_restored);
    }
    for listener in listeners {
        match monoio::net::TcpListener::from_std(listener.socket) {
            Ok(socket) => {
                monoio::spawn(listener::accept_loop(
                    state.clone(),
                    socket,
                    listener.config,
                ));
            }
            Err(error) => error!(shard = id, %error, "cannot adopt listening socket"),
        }
    }
    monoio::spawn(tick_loop(state.clone()));
    monoio::spawn(connection::park_loop(state.clone()));

    let wake = state.borrow().wake.clone();
    loop {
        let batch = inbox.recv_or(&wake).await;
        let now = Instant::now();
        let (handoffs, draining) = {
            let mut state = state.borrow_mut();
            if let Some(batch) = batch {
                state.apply_batch(batch, now);
            }
            state.drain_inbox(now);
            state.flush();
            (std::mem::take(&mut state.handoffs), state.draining)
        };
        if draining {
            break;
        }
        for handoff in handoffs {
            connection::serve_handoff(state.clone(), handoff);
        }
    }

    state.borrow_mut().disconnect_all();
    let deadline = Instant::now() + DRAIN_DEADLINE;
    while state.borrow().live_connections() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    // What the goodbyes changed (sessions now offline, wills gone) is
    // committed before the thread ends, and handed to the replicas before
    // the cluster leaves (`ShardMsg::Drained`).
    let mut state = state.borrow_mut();
    state.flush();
    if let Some(place) = state.mesh.cluster_place() {
        state.mesh.push(place, ShardMsg::Drained);
        state.mesh.flush();
    }
    state.close_store();
}

async fn tick_loop(state: Rc<std::cell::RefCell<ShardState>>) {
    loop {
        monoio::time::sleep(TICK).await;
        let mut state = state.borrow_mut();
        if state.draining {
            return;
        }
        state.tick(Instant::now());
    }
}
