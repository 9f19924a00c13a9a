//! The shards' snapshots, summed, in the OpenMetrics text exposition
//! (which Prometheus scrapes natively).
//!
//! A fresh prometheus-client `Registry` is filled from the snapshots on
//! every scrape: the counters live in the shards, so there is nothing
//! long-lived to register, and a scrape every few seconds can afford it.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::histogram::Latency;
use super::{Snapshot, cluster};
use crate::abuse::LimitKind;
use crate::auth::AuthFailure;
use crate::cluster::StatusSnapshot;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(super) type Labels = Vec<(String, String)>;

const QOS: [&str; 3] = ["0", "1", "2"];

/// Sums the shards' snapshots and encodes them, with the cluster's
/// figures when the node is clustered.
pub fn render(snapshots: &[Snapshot], cluster: Option<&StatusSnapshot>) -> String {
    let mut registry = Registry::with_prefix("ringmq");
    let sum = |f: fn(&Snapshot) -> u64| snapshots.iter().map(f).sum::<u64>();

    gauge(
        &mut registry,
        "connections_current",
        "Client connections open now",
        sum(|s| s.connections),
    );
    gauge(
        &mut registry,
        "connections_parked",
        "Client connections open now that were idle and hold no task (parked)",
        sum(|s| s.parked),
    );
    counter(
        &mut registry,
        "connections",
        "Client connections accepted (their CONNECT read) since start",
        sum(|s| s.metrics.connections_total),
    );
    let rejected = Family::<Labels, Counter>::default();
    for snapshot in snapshots {
        for (reason, n) in &snapshot.metrics.rejected {
            rejected
                .get_or_create(&vec![("reason".into(), reason.clone())])
                .inc_by(*n);
        }
    }
    registry.register(
        "connections_rejected",
        "Connections refused, by CONNACK reason code or, for those closed before a CONNECT, why",
        rejected,
    );
    let auth_failures = Family::<Labels, Counter>::default();
    for (index, failure) in AuthFailure::ALL.into_iter().enumerate() {
        auth_failures
            .get_or_create(&vec![("reason".into(), failure.label().into())])
            .inc_by(
                snapshots
                    .iter()
                    .map(|s| s.metrics.auth_failures[index])
                    .sum(),
            );
    }
    registry.register(
        "auth_failures",
        "CONNECTs refused by authentication: bad_password (unknown user or wrong password, 0x86), not_authorized (anonymous, 0x87), busy (verifier queue full, 0x89)",
        auth_failures,
    );

    let tls_failures = Family::<Labels, Counter>::default();
    for snapshot in snapshots {
        for (reason, n) in &snapshot.metrics.tls_handshake_failures {
            tls_failures
                .get_or_create(&vec![("reason".into(), (*reason).into())])
                .inc_by(*n);
        }
    }
    registry.register(
        "tls_handshake_failures",
        "TLS handshakes on client listeners that failed: no_client_certificate, bad_client_certificate (wrong CA, expired), alert_received (the client refused the server's certificate), incompatible, malformed, protocol, timeout (connect_timeout), closed",
        tls_failures,
    );

    let acl_denied = Family::<Labels, Counter>::default();
    for (kind, n) in [
        ("publish", sum(|s| s.metrics.acl_denied.publish)),
        ("subscribe", sum(|s| s.metrics.acl_denied.subscribe)),
        ("deliver", sum(|s| s.metrics.acl_denied.deliver)),
    ] {
        acl_denied
            .get_or_create(&vec![("kind".into(), kind.into())])
            .inc_by(n);
    }
    registry.register(
        "acl_denied",
        "What the acl_file refused: publish (PUBLISH not routed), subscribe (SUBSCRIBE filters), deliver (messages not given to a subscriber)",
        acl_denied,
    );

    let limited = Family::<Labels, Counter>::default();
    for kind in LimitKind::ALL {
        limited
            .get_or_create(&vec![("limit".into(), kind.label().into())])
            .inc_by(
                snapshots
                    .iter()
                    .map(|s| s.metrics.limited[kind as usize])
                    .sum(),
            );
    }
    registry.register(
        "limited",
        "Limits against abuse at work: publish_rate and publish_bytes (times a client's reading was paused), address_connections and address_rate (connections closed before their CONNECT), flapping (CONNECTs of a banned client id refused)",
        limited,
    );

    let sessions = Family::<Labels, Gauge>::default();
    for (state, n) in [
        ("online", sum(|s| s.sessions_online)),
        ("offline", sum(|s| s.sessions_offline)),
    ] {
        sessions
            .get_or_create(&vec![("state".into(), state.into())])
            .set(n as i64);
    }
    registry.register("sessions", "Sessions, by connection state", sessions);
    gauge(
        &mut registry,
        "subscriptions",
        "Subscriptions held by sessions, shared ones included",
        sum(|s| s.subscriptions),
    );
    // Every shard holds a replica; the largest is the most up to date.
    gauge(
        &mut registry,
        "retained_messages",
        "Messages in the retained store",
        snapshots.iter().map(|s| s.retained).max().unwrap_or(0),
    );

    per_qos(
        &mut registry,
        snapshots,
        "messages_received",
        "PUBLISH packets received from clients (and wills), by QoS",
        |s| &s.metrics.messages_in,
    );
    per_qos(
        &mut registry,
        snapshots,
        "received_payload_bytes",
        "Payload bytes received in PUBLISH packets, by QoS",
        |s| &s.metrics.bytes_in,
    );
    per_qos(
        &mut registry,
        snapshots,
        "messages_sent",
        "PUBLISH packets sent to subscribers, by QoS granted",
        |s| &s.metrics.messages_out,
    );
    per_qos(
        &mut registry,
        snapshots,
        "sent_payload_bytes",
        "Payload bytes sent in PUBLISH packets, by QoS granted",
        |s| &s.metrics.bytes_out,
    );

    let dropped = Family::<Labels, Counter>::default();
    for (reason, n) in [
        ("queue_full", sum(|s| s.dropped_queue_full)),
        ("expired", sum(|s| s.dropped_expired)),
        ("too_large", sum(|s| s.dropped_too_large)),
        ("no_subscribers", sum(|s| s.metrics.no_subscribers)),
    ] {
        dropped
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc_by(n);
    }
    registry.register("messages_dropped", "Messages dropped, by reason", dropped);
    let store_failures = Counter::<u64>::default();
    store_failures.inc_by(sum(|s| s.metrics.store_failures));
    registry.register(
        "store_write_failures",
        "Store commits that failed (disk full, I/O error); acknowledgements waiting for them were refused",
        store_failures,
    );
    let store_refusals = Counter::<u64>::default();
    store_refusals.inc_by(sum(|s| s.metrics.store_refusals));
    let orphans = Counter::<u64>::default();
    orphans.inc_by(sum(|s| s.metrics.orphans_delivered));
    registry.register(
        "cluster_orphans_delivered",
        "Messages owed to a node that died, given to a session taken over from its copy here",
        orphans,
    );
    registry.register(
        "store_refused_publishes",
        "QoS 1/2 PUBLISH refused before routing (v5: 0x97; 3.1.1: connection closed) while the store's disk was under its reserve",
        store_refusals,
    );

    let depth = Family::<Labels, Gauge>::default();
    let cross = Family::<Labels, Counter>::default();
    for snapshot in snapshots {
        let shard = vec![("shard".into(), snapshot.shard.to_string())];
        depth.get_or_create(&shard).set(snapshot.inbox_depth as i64);
        cross
            .get_or_create(&shard)
            .inc_by(snapshot.cross_shard_sent);
    }
    registry.register(
        "shard_inbox_depth",
        "Batches waiting in each shard's inbox",
        depth,
    );
    registry.register(
        "cross_shard_messages_sent",
        "Messages each shard sent to other shards",
        cross,
    );

    histogram(
        &mut registry,
        snapshots,
        "publish_latency_seconds",
        "PUBLISH decoded to encoded into a subscriber's output, per subscriber",
        |s| &s.metrics.publish_latency,
    );
    histogram(
        &mut registry,
        snapshots,
        "cross_shard_hop_seconds",
        "Mesh batch flushed by one shard to applied by another",
        |s| &s.metrics.hop_latency,
    );
    histogram(
        &mut registry,
        snapshots,
        "connect_duration_seconds",
        "CONNECT handled: session found or made and CONNACK encoded",
        |s| &s.metrics.connect_latency,
    );

    if let Some(cluster) = cluster {
        cluster::register(&mut registry, cluster);
    }

    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

pub(super) fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let gauge = Gauge::<i64>::default();
    gauge.set(value as i64);
    registry.register(name, help, gauge);
}

pub(super) fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let counter = Counter::<u64>::default();
    counter.inc_by(value);
    registry.register(name, help, counter);
}

fn per_qos(
    registry: &mut Registry,
    snapshots: &[Snapshot],
    name: &str,
    help: &str,
    field: fn(&Snapshot) -> &[u64; 3],
) {
    let family = Family::<Labels, Counter>::default();
    for (qos, label) in QOS.iter().enumerate() {
        let n = snapshots.iter().map(|s| field(s)[qos]).sum();
        family
            .get_or_create(&vec![("qos".into(), (*label).into())])
            .inc_by(n);
    }
    registry.register(name, help, family);
}

fn histogram(
    registry: &mut Registry,
    snapshots: &[Snapshot],
    name: &str,
    help: &str,
    field: fn(&Snapshot) -> &Latency,
) {
    let mut merged = Latency::new();
    for snapshot in snapshots {
        merged.merge(field(snapshot));
    }
    registry.register(name, help, merged.buckets());
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn sums_shards_and_writes_cumulative_buckets() {
        let mut a = Snapshot {
            connections: 2,
            ..Snapshot::default()
        };
        a.metrics.messages_in[1] = 3;
        a.metrics.publish_latency.record(Duration::from_micros(20));
        let mut b = Snapshot {
            shard: 1,
            connections: 1,
            ..Snapshot::default()
        };
        b.metrics.messages_in[1] = 4;
        b.metrics.publish_latency.record(Duration::from_millis(2));
        b.metrics.auth_failed(AuthFailure::NotAuthorized);
        a.metrics.tls_handshake_failed("timeout");
        b.metrics.tls_handshake_failed("timeout");

        let text = render(&[a, b], None);
        let line = |prefix: &str| {
            text.lines()
                .find(|line| line.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
                .to_owned()
        };
        assert_eq!(
            line("ringmq_connections_current "),
            "ringmq_connections_current 3"
        );
        assert_eq!(
            line("ringmq_messages_received_total{qos=\"1\"}"),
            "ringmq_messages_received_total{qos=\"1\"} 7"
        );
        assert_eq!(
            line("ringmq_connections_rejected_total"),
            "ringmq_connections_rejected_total{reason=\"NotAuthorized\"} 1"
        );
        assert_eq!(
            line("ringmq_tls_handshake_failures_total"),
            "ringmq_tls_handshake_failures_total{reason=\"timeout\"} 2"
        );
        assert_eq!(
            line("ringmq_auth_failures_total{reason=\"not_authorized\"}"),
            "ringmq_auth_failures_total{reason=\"not_authorized\"} 1"
        );
        assert_eq!(
            line("ringmq_auth_failures_total{reason=\"busy\"}"),
            "ringmq_auth_failures_total{reason=\"busy\"} 0"
        );
        assert_eq!(
            line("ringmq_publish_latency_seconds_bucket{le=\"0.000025\"}"),
            "ringmq_publish_latency_seconds_bucket{le=\"0.000025\"} 1"
        );
        assert_eq!(
            line("ringmq_publish_latency_seconds_bucket{le=\"0.0025\"}"),
            "ringmq_publish_latency_seconds_bucket{le=\"0.0025\"} 2"
        );
        assert_eq!(
            line("ringmq_publish_latency_seconds_bucket{le=\"+Inf\"}"),
            "ringmq_publish_latency_seconds_bucket{le=\"+Inf\"} 2"
        );
        assert_eq!(
            line("ringmq_publish_latency_seconds_count"),
            "ringmq_publish_latency_seconds_count 2"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
