//! The cluster: membership, route propagation, forwarding between nodes.
//!
//! A clustered node is its shards plus one more place in the mesh, the
//! cluster runtime ([`runtime`]), which holds the node's view of its peers
//! ([`node`]), its gossip membership ([`membership`]) and its QUIC
//! connections, with mutual TLS ([`tls`]) and rkyv frames ([`frame`]).
//! To a shard's route table the cluster is one place with subscribers: the
//! filters of every other node.

pub mod frame;
pub mod membership;
pub mod node;
pub mod outbox;
pub mod runtime;
pub mod settings;
#[cfg(test)]
mod sim;
pub mod tls;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytestring::ByteString;

use membership::MemberCounts;
use node::{Node, NodeCounters, PeerStats};

/// What the metrics endpoint shows of the cluster, refreshed by the
/// cluster thread every tick. Behind a mutex because it is written ten
/// times a second and read at each scrape: nowhere near the publish path.
#[derive(Debug, Clone, Default)]
pub struct ClusterStatus(Arc<Mutex<StatusSnapshot>>);

#[derive(Debug, Clone, Default)]
pub struct StatusSnapshot {
    pub members: MemberCounts,
    pub counters: NodeCounters,
    pub peers: Vec<PeerStats>,
}

impl ClusterStatus {
    /// `rtts` are the QUIC round-trip estimates of the linked peers.
    pub fn update(&self, node: &Node, members: MemberCounts, rtts: Vec<(ByteString, Duration)>) {
        let mut peers = node.peer_stats();
        for peer in &mut peers {
            peer.rtt = rtts
                .iter()
                .find(|(id, _)| *id == peer.node_id)
                .map(|&(_, rtt)| rtt);
        }
        let snapshot = StatusSnapshot {
            members,
            counters: node.counters.clone(),
            peers,
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
