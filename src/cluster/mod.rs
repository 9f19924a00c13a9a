//! The cluster: membership, route propagation, forwarding between nodes.
//!
//! A clustered node is its shards plus one more place in the mesh, the
//! cluster runtime ([`runtime`]), which holds the node's view of its peers
//! ([`node`]), its gossip membership ([`membership`]) and its QUIC
//! connections, with mutual TLS ([`tls`]) and rkyv frames ([`frame`]).
//! To a shard's route table the cluster is one place with subscribers: the
//! filters of every other node.
//!
//! Which node owns each client id's session is decided apart from all
//! that, by raft ([`ownership`]), and only on connect, takeover and
//! failure: never per message.

pub mod frame;
pub mod membership;
pub mod node;
pub mod outbox;
pub mod ownership;
pub mod runtime;
pub mod settings;
#[cfg(test)]
mod sim;
pub mod tls;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytestring::ByteString;

use membership::{MemberCounts, MemberEvent};
use node::{Node, NodeCounters, PeerStats};

/// What the metrics endpoint shows of the cluster, refreshed by the
/// cluster thread every tick. Behind a mutex because it is written ten
/// times a second and read at each scrape: nowhere near the publish path.
#[derive(Debug, Clone, Default)]
pub struct ClusterStatus(Arc<Mutex<StatusSnapshot>>);

#[derive(Debug, Clone, Default)]
pub struct StatusSnapshot {
    pub members: MemberCounts,
    pub member_events: MemberEventCounts,
    pub counters: NodeCounters,
    pub peers: Vec<PeerStats>,
    /// The ownership raft as this node sees it; `None` until it runs.
    pub ownership: Option<OwnershipStatus>,
    /// The peers keeping copies of this node's sessions, each with how
    /// long the oldest change it has not acknowledged has waited.
    pub replicas: Vec<(ByteString, Duration)>,
    /// Sessions of other nodes this node keeps copies of.
    pub session_copies: usize,
}

/// What the metrics show of the ownership raft.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnershipStatus {
    pub is_leader: bool,
    /// Voters in the membership this node knows.
    pub voters: usize,
    pub term: u64,
    /// This node leads and a majority acknowledged it lately, or it
    /// follows a leader it heard from lately (`runtime/ownership.rs`).
    pub has_quorum: bool,
}

/// What gossip has said about other nodes since start, by kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemberEventCounts {
    pub joined: u64,
    pub suspect: u64,
    pub alive_again: u64,
    pub down: u64,
    pub left: u64,
    pub restarted: u64,
    pub duplicate_node_id: u64,
}

impl MemberEventCounts {
    pub fn count(&mut self, event: &MemberEvent) {
        match event {
            MemberEvent::Joined(_) => self.joined += 1,
            MemberEvent::Suspect(_) => self.suspect += 1,
            MemberEvent::Alive(_) => self.alive_again += 1,
            MemberEvent::Down(_) => self.down += 1,
            MemberEvent::Left(_) => self.left += 1,
            MemberEvent::Replaced { .. } => self.restarted += 1,
            MemberEvent::DuplicateNodeId { .. } => self.duplicate_node_id += 1,
            MemberEvent::JoinedCluster | MemberEvent::Isolated | MemberEvent::Renewed(_) => {}
        }
    }

    pub fn by_kind(&self) -> [(&'static str, u64); 7] {
        [
            ("joined", self.joined),
            ("suspect", self.suspect),
            ("alive_again", self.alive_again),
            ("down", self.down),
            ("left", self.left),
            ("restarted", self.restarted),
            ("duplicate_node_id", self.duplicate_node_id),
        ]
    }
}

impl ClusterStatus {
    /// `rtts` are the QUIC round-trip estimates of the linked peers.
    pub fn update(
        &self,
        node: &Node,
        members: MemberCounts,
        member_events: MemberEventCounts,
        rtts: Vec<(ByteString, Duration)>,
        ownership: Option<OwnershipStatus>,
    ) {
        let mut peers = node.peer_stats();
        for peer in &mut peers {
            peer.rtt = rtts
                .iter()
                .find(|(id, _)| *id == peer.node_id)
                .map(|&(_, rtt)| rtt);
        }
        let snapshot = StatusSnapshot {
            members,
            member_events,
            counters: node.counters.clone(),
            peers,
            ownership,
            replicas: node.replication_lag(std::time::Instant::now()),
            session_copies: node.session_copies(),
        };
        if let Ok(mut status) = self.0.lock() {
            *status = snapshot;
        }
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        self.0
            .lock()
            .map(|status| status.clone())
            .unwrap_or_default()
    }
}
