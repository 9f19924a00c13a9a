//! `$SYS/broker/...`: the broker's state as retained messages, under the
//! names Mosquitto uses, so that existing dashboards and `mosquitto_sub -t
//! '$SYS/#'` work unchanged.
//!
//! A thread of its own gathers the shards' snapshots every interval, the
//! same way a scrape does, turns them into messages, and hands them to
//! shard 0 (`ShardMsg::Sys`), which publishes them through the router like
//! any client's retained PUBLISH: replicated to every shard's retained
//! store and delivered to `$SYS` subscribers wherever they live.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tracing::warn;

use super::{Snapshot, broker_message, gather};
use crate::message::Message;
use crate::shard::mesh::{MeshHandle, ShardMsg};

/// How long one round waits for the shards.
const SHARD_DEADLINE: Duration = Duration::from_secs(1);

/// The shard that publishes; any would do, and there is always a shard 0.
const PUBLISHER: usize = 0;

/// Publishes every `interval` on a new thread, for the life of the process.
pub fn start(interval: Duration, mesh: MeshHandle) -> std::io::Result<()> {
    let started = Instant::now();
    thread::Builder::new()
        .name("ringmq-sys".into())
        .spawn(move || {
            let mut load = Load::new(interval);
            loop {
                thread::sleep(interval);
                let (snapshots, silent) = gather(&mesh, SHARD_DEADLINE);
                if !silent.is_empty() {
                    // Sums over some shards would make counters go down.
                    warn!(shards = ?silent, "shards did not answer; $SYS not updated");
                    continue;
                }
                let now = Instant::now();
                let totals = Totals::of(&snapshots);
                load.update(&totals);
                let messages = messages(&totals, &load, now.duration_since(started), now);
                mesh.send(PUBLISHER, ShardMsg::Sys(messages));
            }
        })?;
    Ok(())
}

/// The snapshots summed, as far as `$SYS` needs them.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Totals {
    connected: u64,
    disconnected: u64,
    messages_received: u64,
    messages_sent: u64,
    bytes_received: u64,
    bytes_sent: u64,
    subscriptions: u64,
    retained: u64,
}

impl Totals {
    fn of(snapshots: &[Snapshot]) -> Totals {
        let mut totals = Totals::default();
        for s in snapshots {
            totals.connected += s.sessions_online;
            totals.disconnected += s.sessions_offline;
            totals.messages_received += s.metrics.messages_in.iter().sum::<u64>();
            totals.messages_sent += s.metrics.messages_out.iter().sum::<u64>();
            totals.bytes_received += s.metrics.bytes_in.iter().sum::<u64>();
            totals.bytes_sent += s.metrics.bytes_out.iter().sum::<u64>();
            totals.subscriptions += s.subscriptions;
            // A replica per shard: the largest is the most up to date.
            totals.retained = totals.retained.max(s.retained);
        }
        totals
    }
}

/// Mosquitto's `load/.../{1,5,15}min`: per-minute rates, smoothed as
/// exponentially weighted moving averages over those periods.
#[derive(Debug)]
struct Load {
    interval: Duration,
    last: Option<Totals>,
    /// Per counter (received, sent, bytes received, bytes sent), per
    /// period (1, 5, 15 min).
    averages: [[f64; 3]; 4],
}

const PERIODS: [(u64, &str); 3] = [(60, "1min"), (300, "5min"), (900, "15min")];

impl Load {
    fn new(interval: Duration) -> Load {
        Load {
            interval,
            last: None,
            averages: [[0.0; 3]; 4],
        }
    }

    fn update(&mut self, totals: &Totals) {
        let last = self.last.replace(*totals).unwrap_or(*totals);
        let deltas = [
            totals.messages_received - last.messages_received,
            totals.messages_sent - last.messages_sent,
            totals.bytes_received - last.bytes_received,
            totals.bytes_sent - last.bytes_sent,
        ];
        let secs = self.interval.as_secs_f64();
        for (averages, delta) in self.averages.iter_mut().zip(deltas) {
            let per_minute = delta as f64 * 60.0 / secs;
            for (average, (period, _)) in averages.iter_mut().zip(PERIODS) {
                let weight = 1.0 - (-secs / period as f64).exp();
                *average += (per_minute - *average) * weight;
            }
        }
    }
}

fn messages(totals: &Totals, load: &Load, uptime: Duration, now: Instant) -> Vec<Arc<Message>> {
    let mut topics = vec![
        (
            "$SYS/broker/version".to_owned(),
            format!("ringmq version {}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "$SYS/broker/uptime".to_owned(),
            format!("{} seconds", uptime.as_secs()),
        ),
    ];
    let counts = [
        ("clients/connected", totals.connected),
        ("clients/active", totals.connected),
        ("clients/disconnected", totals.disconnected),
        ("clients/inactive", totals.disconnected),
        ("clients/total", totals.connected + totals.disconnected),
        ("messages/received", totals.messages_received),
        ("messages/sent", totals.messages_sent),
        ("publish/messages/received", totals.messages_received),
        ("publish/messages/sent", totals.messages_sent),
        ("publish/bytes/received", totals.bytes_received),
        ("publish/bytes/sent", totals.bytes_sent),
        ("subscriptions/count", totals.subscriptions),
        ("retained messages/count", totals.retained),
    ];
    topics.extend(
        counts
            .iter()
            .map(|(name, n)| (format!("$SYS/broker/{name}"), n.to_string())),
    );
    let loads = [
        "messages/received",
        "messages/sent",
        "bytes/received",
        "bytes/sent",
    ];
    for (name, averages) in loads.iter().zip(&load.averages) {
        for (average, (_, period)) in averages.iter().zip(PERIODS) {
            topics.push((
                format!("$SYS/broker/load/{name}/{period}"),
                format!("{average:.2}"),
            ));
        }
    }
    topics
        .into_iter()
        .map(|(topic, payload)| broker_message(&topic, payload, now))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_converges_on_the_per_minute_rate() {
        let mut load = Load::new(Duration::from_secs(10));
        let mut totals = Totals::default();
        load.update(&totals);
        for _ in 0..100 {
            // 5 messages per 10 s: 30 a minute.
            totals.messages_received += 5;
            load.update(&totals);
        }
        let one_minute = load.averages[0][0];
        assert!((one_minute - 30.0).abs() < 0.01, "1min load {one_minute}");
        assert_eq!(load.averages[1], [0.0; 3]);
    }

    #[test]
    fn topics_use_mosquittos_names() {
        let totals = Totals {
            connected: 2,
            disconnected: 1,
            retained: 4,
            ..Totals::default()
        };
        let load = Load::new(Duration::from_secs(10));
        let now = Instant::now();
        let messages = messages(&totals, &load, Duration::from_secs(42), now);
        let payload = |topic: &str| {
            messages
                .iter()
                .find(|m| m.topic == topic)
                .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        };
        assert_eq!(payload("$SYS/broker/uptime").as_deref(), Some("42 seconds"));
        assert_eq!(payload("$SYS/broker/clients/total").as_deref(), Some("3"));
        assert_eq!(
            payload("$SYS/broker/retained messages/count").as_deref(),
            Some("4")
        );
        assert_eq!(
            payload("$SYS/broker/load/messages/received/1min").as_deref(),
            Some("0.00")
        );
        assert!(messages.iter().all(|m| m.retain));
    }
}
