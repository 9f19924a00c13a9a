//! `subscribe`: how long a SUBACK takes. Each of `--clients` connections
//! sends `--subscribes` SUBSCRIBEs one after another, every one to a filter
//! no one has subscribed to before (`bench/subscribe/<tag>/<client>/<i>`),
//! and times each from its write to its SUBACK.
//!
//! On a single node that is a trie insert and a reply. On a cluster node a
//! new filter is a new route: ringmq holds the SUBACK until every connected
//! peer has acknowledged the route (README, "What a PUBACK promises"), so
//! the difference between the two is the price of that promise.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::new_histogram;
use super::sequential::{self, ClientRun, RunsReport};
use crate::cli::SubscribeArgs;
use crate::client::Connection;
use crate::workers;

/// What the run measured.
#[derive(Debug, Serialize)]
pub struct SubscribeReport {
    pub scenario: &'static str,
    pub broker: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub broker_pids: Vec<u32>,
    pub cpus: Vec<usize>,
    pub clients: u32,
    pub subscribes_per_client: u32,
    pub qos: u8,
    pub subscribes_per_second: f64,
    pub broker_cpu_us_per_subscribe: Option<f64>,
    /// SUBACKs received (granted); latency from SUBSCRIBE written to SUBACK
    /// read.
    #[serde(flatten)]
    pub runs: RunsReport,
}

pub fn run(args: &SubscribeArgs) -> Result<SubscribeReport, String> {
    workers::raise_fd_limit();
    let runs = sequential::run(
        &args.cpus,
        &args.broker_pid,
        args.clients,
        Arc::new(args.clone()),
        client,
    )?;
    Ok(SubscribeReport {
        scenario: "subscribe",
        broker: args.tls.broker(args.broker).to_string(),
        broker_pids: args.broker_pid.clone(),
        cpus: args.cpus.0.clone(),
        clients: args.clients,
        subscribes_per_client: args.subscribes,
        qos: args.qos as u8,
        subscribes_per_second: runs.completed as f64 / runs.wall_seconds.max(1e-9),
        broker_cpu_us_per_subscribe: runs.cpu_us_per_completed(),
        runs: runs.report(),
    })
}

/// Client `n`: connects, subscribes `--subscribes` times in sequence, and
/// stops at the first error (a SUBSCRIBE after a timeout would be timed
/// against the wrong SUBACK).
async fn client(args: Arc<SubscribeArgs>, tag: u64, n: usize) -> ClientRun {
    let mut latency = new_histogram();
    let mut completed = 0;
    let broker = args.tls.broker(args.broker);
    let mut conn = match Connection::open(&broker, &format!("bench-subscribe-{n}")).await {
        Ok(conn) => conn,
        Err(e) => return (latency, 0, Some(e.to_string())),
    };
    for i in 0..args.subscribes {
        let filter = filter(tag, n, i);
        let sent = Instant::now();
        if let Err(e) = conn.subscribe(&filter, args.qos).await {
            return (latency, completed, Some(e.to_string()));
        }
        sequential::record(&mut latency, sent.elapsed());
        completed += 1;
    }
    let error = conn.disconnect().await.err().map(|e| e.to_string());
    (latency, completed, error)
}

/// A filter no earlier subscribe (of this run or another) has used.
fn filter(tag: u64, client: usize, i: u32) -> String {
    format!("bench/subscribe/{tag:x}/{client}/{i}")
}

impl SubscribeReport {
    pub fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "scenario subscribe against {} on cpus {:?}: {} clients x {} subscribes, QoS {}",
            self.broker, self.cpus, self.clients, self.subscribes_per_client, self.qos
        )?;
        let runs = &self.runs;
        writeln!(
            out,
            "total    {} SUBACKs in {:.2}s ({:.0} subscribes/s)",
            runs.completed, runs.wall_seconds, self.subscribes_per_second
        )?;
        runs.print_text(out, "subscribe", self.broker_cpu_us_per_subscribe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_fresh_and_plain() {
        let a = filter(0xabc, 1, 2);
        assert_eq!(a, "bench/subscribe/abc/1/2");
        assert_ne!(a, filter(0xabc, 2, 1));
        assert_ne!(a, filter(0xabd, 1, 2));
        assert!(!a.contains(['+', '#']));
    }
}
