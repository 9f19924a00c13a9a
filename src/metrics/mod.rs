//! Metrics, health and `$SYS`: what the broker tells about itself.
//!
//! # Why gather instead of share
//!
//! Each shard counts in plain fields of its own state ([`ShardMetrics`]):
//! an increment is an add on memory no other core touches, with no atomic
//! and no lock on the publish path. Nothing outside the shard can read
//! those fields, so whoever wants the numbers *asks*: the HTTP endpoint
//! ([`http`]) and the `$SYS` publisher ([`sys`]) run on their own threads
//! and send every shard a [`crate::shard::mesh::ShardMsg::Scrape`] through
//! the mesh, then wait, up to a deadline, for each shard's [`Snapshot`]
//! (a copy of its counters and histograms) on a channel. A shard answers
//! between two batches of work, so a scrape costs it one copy of a few
//! kilobytes, and a shard that does not answer in time is by definition
//! the stuck one `/health` reports.
//!
//! Latency is kept in hdrhistograms ([`histogram`]) and cut into fixed
//! Prometheus buckets only when scraped.

mod cluster;
pub mod histogram;
pub mod http;
pub mod render;
pub mod sys;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;

use crate::abuse::LimitKind;
use crate::auth::AuthFailure;
use crate::auth::acl_cache::Denials;
use crate::message::Message;
use crate::protocol::QoS;
use crate::shard::ShardId;
use crate::shard::mesh::{MeshHandle, ShardMsg};
use histogram::Latency;

/// Counters and histograms a shard keeps for itself. Plain fields: only
/// the shard's thread writes them; a scrape gets a copy.
#[derive(Debug, Clone, Default)]
pub struct ShardMetrics {
    /// Connections ever served on this shard (after their CONNECT).
    pub connections_total: u64,
    /// Connections refused, by CONNACK reason code or by why they were
    /// closed before a CONNECT came.
    pub rejected: BTreeMap<String, u64>,
    /// CONNECTs refused by authentication, indexed as
    /// [`AuthFailure::ALL`] (also counted in `rejected`, by reason code).
    pub auth_failures: [u64; 3],
    /// TLS handshakes that failed, by why (`shard::tls::TlsError::label`,
    /// `timeout`, `closed`).
    pub tls_handshake_failures: BTreeMap<&'static str, u64>,
    /// PUBLISH, SUBSCRIBE filters and deliveries the ACL refused.
    pub acl_denied: Denials,
    /// Clients slowed and connections refused by the limits against
    /// abuse, indexed as [`LimitKind::ALL`].
    pub limited: [u64; LimitKind::ALL.len()],
    /// Indexed by QoS (0, 1, 2).
    pub messages_in: [u64; 3],
    pub bytes_in: [u64; 3],
    pub messages_out: [u64; 3],
    pub bytes_out: [u64; 3],
    /// Published messages that matched no subscriber anywhere.
    pub no_subscribers: u64,
    /// Store writes that failed (disk full, I/O error); the
    /// acknowledgements that waited for them were refused.
    pub store_failures: u64,
    /// QoS 1/2 PUBLISH refused before routing while the store's disk was
    /// under its reserve.
    pub store_refusals: u64,
    /// Messages owed to a node that died, given to a session taken over
    /// from it here (`cluster::node::orphans`).
    pub orphans_delivered: u64,
    /// PUBLISH decoded to its bytes encoded into a subscriber's output.
    pub publish_latency: Latency,
    /// A mesh batch flushed by one shard to applied by another.
    pub hop_latency: Latency,
    /// CONNECT decoded to CONNACK encoded, on the session's home shard.
    pub connect_latency: Latency,
}

impl ShardMetrics {
    /// A PUBLISH from a client (or a will) entering the router.
    pub fn received(&mut self, message: &Message) {
        let qos = qos_index(message.qos);
        self.messages_in[qos] += 1;
        self.bytes_in[qos] += message.payload.len() as u64;
    }

    /// A PUBLISH encoded into a subscriber's connection output.
    pub fn sent(&mut self, qos: QoS, payload: usize) {
        let qos = qos_index(qos);
        self.messages_out[qos] += 1;
        self.bytes_out[qos] += payload as u64;
    }

    pub fn refused(&mut self, reason: impl std::fmt::Debug) {
        *self.rejected.entry(format!("{reason:?}")).or_default() += 1;
    }

    /// A client slowed, or a connection refused, by a limit against abuse.
    pub fn limited(&mut self, kind: LimitKind) {
        self.limited[kind as usize] += 1;
    }

    /// A CONNECT refused by authentication, under both counters.
    pub fn auth_failed(&mut self, failure: AuthFailure) {
        self.refused(failure.reason_code());
        let index = AuthFailure::ALL
            .iter()
            .position(|&f| f == failure)
            .unwrap_or_default();
        self.auth_failures[index] += 1;
    }

    pub fn tls_handshake_failed(&mut self, reason: &'static str) {
        *self.tls_handshake_failures.entry(reason).or_default() += 1;
    }
}

fn qos_index(qos: QoS) -> usize {
    match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

/// One shard's answer to a scrape: its gauges as of now and a copy of its
/// counters.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub shard: ShardId,
    pub connections: u64,
    /// Of them, idle ones that hold no task (parked).
    pub parked: u64,
    pub sessions_online: u64,
    pub sessions_offline: u64,
    /// Filters held by this shard's sessions, shared ones included.
    pub subscriptions: u64,
    /// This shard's replica of the retained store: the same on every
    /// shard once the mesh is quiet, so it is reported once, not summed.
    pub retained: u64,
    /// Batches waiting in the shard's inbox.
    pub inbox_depth: u64,
    /// Messages this shard pushed to other shards.
    pub cross_shard_sent: u64,
    pub dropped_queue_full: u64,
    pub dropped_expired: u64,
    pub dropped_too_large: u64,
    pub metrics: ShardMetrics,
}

/// Asks every shard for a snapshot and waits until `deadline` for the
/// answers. Returns them by shard, and the shards that did not answer.
pub fn gather(mesh: &MeshHandle, deadline: Duration) -> (Vec<Snapshot>, Vec<ShardId>) {
    let (reply, answers) = crossbeam_channel::unbounded();
    mesh.broadcast(|| ShardMsg::Scrape(reply.clone()));
    // Only the shards hold senders now, so a disconnect means every shard
    // has answered or exited.
    drop(reply);
    let until = Instant::now() + deadline;
    let mut snapshots = Vec::with_capacity(mesh.shard_count());
    while snapshots.len() < mesh.shard_count() {
        match answers.recv_deadline(until) {
            Ok(snapshot) => snapshots.push(snapshot),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
    snapshots.sort_by_key(|snapshot: &Snapshot| snapshot.shard);
    let silent = (0..mesh.shard_count())
        .filter(|&id| !snapshots.iter().any(|snapshot| snapshot.shard == id))
        .collect();
    (snapshots, silent)
}

/// Where the process is in its life, for `/ready`.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    state: Arc<AtomicU8>,
    /// A clustered node given seeds is not ready until it has joined: a
    /// load balancer should not send clients to a node that cannot yet
    /// reach the others' subscribers.
    joining: Arc<AtomicBool>,
    /// A clustered node whose ownership raft has no leader it can reach
    /// (after a grace) is not ready either: it can serve no new session
    /// (its claims would fail), so clients belong on the majority's side.
    ownership: Arc<AtomicU8>,
}

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

/// Of the ownership raft, for [`Readiness::set_ownership`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OwnershipReadiness {
    /// Not formed yet, or with a reachable leader.
    Ready = 0,
    /// Formed, and no leader reachable for longer than the grace.
    NoLeader = 1,
    /// It could not start (its file, or openraft, refused).
    Stopped = 2,
}

impl Readiness {
    /// Every listener is bound: connections are accepted.
    pub fn set_ready(&self) {
        // A shutdown that came first wins.
        let _ = self
            .state
            .compare_exchange(STARTING, READY, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn set_draining(&self) {
        self.state.store(DRAINING, Ordering::Release);
    }

    /// Not ready until [`Readiness::set_joined`].
    pub fn require_join(&self) {
        self.joining.store(true, Ordering::Release);
    }

    pub fn set_joined(&self) {
        self.joining.store(false, Ordering::Release);
    }

    pub fn set_ownership(&self, state: OwnershipReadiness) {
        self.ownership.store(state as u8, Ordering::Release);
    }

    /// `None` when ready, otherwise why not.
    pub fn not_ready(&self) -> Option<&'static str> {
        match self.state.load(Ordering::Acquire) {
            READY if self.joining.load(Ordering::Acquire) => {
                Some("joining the cluster: no seed has answered yet")
            }
            READY
                if self.ownership.load(Ordering::Acquire) == OwnershipReadiness::NoLeader as u8 =>
            {
                Some("no reachable leader of the ownership raft: cut off from the majority")
            }
            READY
                if self.ownership.load(Ordering::Acquire) == OwnershipReadiness::Stopped as u8 =>
            {
                Some("the ownership raft did not start")
            }
            READY => None,
            STARTING => Some("starting"),
            _ => Some("draining"),
        }
    }
}

/// A message the broker publishes itself (`$SYS`), retained, QoS 0.
pub fn broker_message(topic: &str, payload: String, now: Instant) -> Arc<Message> {
    Arc::new(Message {
        topic: topic.into(),
        payload: payload.into(),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: Default::default(),
        publisher: "$SYS".into(),
        expires_at: None,
        received_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_moves_from_starting_to_ready_to_draining() {
        let readiness = Readiness::default();
        assert_eq!(readiness.not_ready(), Some("starting"));
        readiness.set_ready();
        assert_eq!(readiness.not_ready(), None);
        readiness.set_draining();
        assert_eq!(readiness.not_ready(), Some("draining"));
        readiness.set_ready();
        assert_eq!(readiness.not_ready(), Some("draining"));
    }

    #[test]
    fn a_node_without_a_reachable_raft_leader_is_not_ready() {
        let readiness = Readiness::default();
        readiness.set_ready();
        readiness.set_ownership(OwnershipReadiness::NoLeader);
        assert!(
            readiness
                .not_ready()
                .is_some_and(|why| why.contains("leader"))
        );
        readiness.set_ownership(OwnershipReadiness::Stopped);
        assert!(
            readiness
                .not_ready()
                .is_some_and(|why| why.contains("did not start"))
        );
        readiness.set_ownership(OwnershipReadiness::Ready);
        assert_eq!(readiness.not_ready(), None);
    }

    #[test]
    fn gather_names_the_shards_that_do_not_answer() {
        let (mesh, inboxes) = MeshHandle::build(2, false);
        let answering = inboxes[0].clone();
        let shard = std::thread::spawn(move || {
            let batch = answering.recv().expect("a scrape");
            for msg in batch.messages {
                if let ShardMsg::Scrape(reply) = msg {
                    let _ = reply.send(Snapshot::default());
                }
            }
        });
        let (snapshots, silent) = gather(&mesh, Duration::from_millis(200));
        shard.join().expect("shard thread");
        assert_eq!(snapshots.len(), 1);
        assert_eq!(silent, vec![1]);
    }
}
