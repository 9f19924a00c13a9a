//! The cluster's figures, as the cluster thread last published them
//! ([`crate::cluster::ClusterStatus`]): members by state, forwarding
//! counters, and per-peer outboxes and drops.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::render::{Labels, counter, gauge};
use crate::cluster::StatusSnapshot;

pub(super) fn register(registry: &mut Registry, status: &StatusSnapshot) {
    let members = Family::<Labels, Gauge>::default();
    for (state, n) in [
        ("alive", status.members.alive),
        ("suspect", status.members.suspect),
        ("down", status.members.down),
    ] {
        members
            .get_or_create(&vec![("state".into(), state.into())])
            .set(n as i64);
    }
    registry.register(
        "cluster_members",
        "Other nodes as gossip sees them, by state",
        members,
    );
    let events = Family::<Labels, Counter>::default();
    for (kind, n) in status.member_events.by_kind() {
        events
            .get_or_create(&vec![("event".into(), kind.into())])
            .inc_by(n);
    }
    registry.register(
        "cluster_member_events",
        "What gossip reported about other nodes, by event",
        events,
    );
    let counters = &status.counters;
    for (name, help, value) in [
        (
            "cluster_forwarded_messages",
            "Messages queued for a peer node (once per node, whatever its subscribers)",
            counters.forwarded_messages,
        ),
        (
            "cluster_received_messages",
            "Messages taken from peer nodes and handed to this node's shards",
            counters.received_messages,
        ),
        (
            "cluster_duplicates_dropped",
            "Messages a peer sent again (after a broken link) that had already been taken",
            counters.duplicates_dropped,
        ),
        (
            "cluster_route_ack_timeouts",
            "SUBACKs released because a live peer did not acknowledge the route in time",
            counters.route_ack_timeouts,
        ),
        (
            "cluster_peers_expired",
            "Peers unreachable past cluster.peer_hold whose routes and outbox were dropped",
            counters.peers_expired,
        ),
        (
            "cluster_claims_granted",
            "CONNECTs for which the ownership raft made this node the client id's owner",
            counters.claims_granted,
        ),
        (
            "cluster_sessions_handed_over",
            "Sessions this node handed over to a node that took their client id over",
            counters.sessions_handed_over,
        ),
        (
            "cluster_handovers_missed",
            "Claims granted without the previous owner's session (unreachable, or no answer in time)",
            counters.handovers_missed,
        ),
        (
            "cluster_sessions_recovered",
            "Sessions taken over from a copy kept by a replica, their owner unreachable",
            counters.sessions_recovered,
        ),
        (
            "cluster_sessions_promoted",
            "Sessions this node took over from its copies when their owner went down",
            counters.sessions_promoted,
        ),
        (
            "cluster_replication_unmet",
            "Times no peer was left to keep copies of this node's sessions (acknowledgements then wait for this node alone)",
            counters.replication_unmet,
        ),
    ] {
        counter(registry, name, help, value);
    }
    gauge(
        registry,
        "cluster_session_copies",
        "Sessions of other nodes whose copies this node keeps",
        status.session_copies as u64,
    );
    let lag = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for (peer, waited) in &status.replicas {
        lag.get_or_create(&vec![("peer".to_string(), peer.to_string())])
            .set(waited.as_secs_f64());
    }
    registry.register(
        "cluster_replication_lag_seconds",
        "For each peer keeping copies of this node's sessions, how long the oldest change it has not acknowledged has waited",
        lag,
    );

    registry.register(
        "cluster_takeover_seconds",
        "From a CONNECT's claim of its client id reaching the cluster to the grant's answer: the ownership raft's commit and the previous owner's hand-over",
        status.counters.claim_latency.buckets(),
    );
    registry.register(
        "cluster_forward_ack_seconds",
        "From a batch of forwarded messages leaving this node to the peer's acknowledgement",
        status.counters.forward_ack_latency.buckets(),
    );

    let rtt = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let linked = Family::<Labels, Gauge>::default();
    let outbox_messages = Family::<Labels, Gauge>::default();
    let outbox_bytes = Family::<Labels, Gauge>::default();
    let forwarded = Family::<Labels, Counter>::default();
    let forwarded_bytes = Family::<Labels, Counter>::default();
    let dropped = Family::<Labels, Counter>::default();
    for peer in &status.peers {
        let labels = vec![("peer".to_string(), peer.node_id.to_string())];
        linked.get_or_create(&labels).set(i64::from(peer.linked));
        if let Some(round_trip) = peer.rtt {
            rtt.get_or_create(&labels).set(round_trip.as_secs_f64());
        }
        outbox_messages
            .get_or_create(&labels)
            .set(peer.outbox_messages as i64);
        outbox_bytes
            .get_or_create(&labels)
            .set(peer.outbox_bytes as i64);
        forwarded.get_or_create(&labels).inc_by(peer.forwarded);
        forwarded_bytes
            .get_or_create(&labels)
            .inc_by(peer.forwarded_bytes);
        for (reason, n) in [
            ("outbox_full_qos0", peer.dropped_qos0),
            ("outbox_full_qos12", peer.dropped_qos12),
        ] {
            let mut labels = labels.clone();
            labels.push(("reason".into(), reason.into()));
            dropped.get_or_create(&labels).inc_by(n);
        }
    }
    registry.register(
        "cluster_peer_linked",
        "1 while the QUIC link to the peer is up",
        linked,
    );
    registry.register(
        "cluster_peer_rtt_seconds",
        "QUIC's round-trip time estimate to the peer, while linked",
        rtt,
    );
    registry.register(
        "cluster_peer_outbox_messages",
        "Messages owed to the peer, sent or not, awaiting its acknowledgement",
        outbox_messages,
    );
    registry.register(
        "cluster_peer_outbox_bytes",
        "Bytes owed to the peer (bounded by cluster.peer_buffer_bytes)",
        outbox_bytes,
    );
    registry.register(
        "cluster_peer_forwarded_messages",
        "Messages queued for the peer",
        forwarded,
    );
    registry.register(
        "cluster_peer_forwarded_bytes",
        "Bytes queued for the peer: topic and payload plus 64 per message",
        forwarded_bytes,
    );
    registry.register(
        "cluster_peer_dropped_messages",
        "Messages dropped from the peer's outbox, by reason",
        dropped,
    );
    if let Some(ownership) = &status.ownership {
        for (name, help, value) in [
            (
                "ownership_is_leader",
                "1 while this node leads the ownership raft",
                u64::from(ownership.is_leader),
            ),
            (
                "ownership_voters",
                "Voters of the ownership raft, in the membership this node knows",
                ownership.voters as u64,
            ),
            (
                "ownership_term",
                "The ownership raft's term as this node knows it",
                ownership.term,
            ),
            (
                "ownership_has_quorum",
                "1 while this node leads with a majority's recent acknowledgement, or follows a leader it heard from lately",
                u64::from(ownership.has_quorum),
            ),
        ] {
            gauge(registry, name, help, value);
        }
    }
}
