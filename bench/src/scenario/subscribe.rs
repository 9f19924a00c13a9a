//! `subscribe`: how long a SUBACK takes. Each of `--clients` connections
//! sends `--subscribes` SUBSCRIBEs one after another, every one to a filter
//! no one has subscribed to before (`bench/subscribe/<tag>/<client>/<i>`),
//! and times each from its write to its SUBACK.
//!
//! On a single node that is a trie insert and a reply. On a cluster node a
//! new filter is a new route: ringmq holds the SUBACK until every connected
//! peer has acknowledged the route (README, "What a PUBACK promises"), so
//! the difference between the two is the price of that promise.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::new_histogram;
use crate::cli::SubscribeArgs;
use crate::client::{ClientError, Connection};
use crate::cpu;
use crate::report::Latency;
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
    /// SUBACKs received (granted).
    pub completed: u64,
    pub wall_seconds: f64,
    pub subscribes_per_second: f64,
    /// SUBSCRIBE written to SUBACK read, microseconds.
    pub latency_us: Latency,
    /// Broker CPU (summed over `--broker-pid`s) over the whole run.
    pub broker_cpu_seconds: Option<f64>,
    pub broker_cpu_us_per_subscribe: Option<f64>,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
}

/// One worker's share: its histogram, SUBACKs and errors by kind.
struct WorkerResult {
    latency: Histogram<u64>,
    completed: u64,
    errors: BTreeMap<String, u64>,
}

pub fn run(args: &SubscribeArgs) -> Result<SubscribeReport, String> {
    workers::check_cpus(&args.cpus)?;
    workers::raise_fd_limit();
    let tag = super::run_tag();
    let cpu_before = cpu::sum_cpu_seconds(&args.broker_pid)?;
    let start = Instant::now();
    let shared = Arc::new(args.clone());
    let threads = workers::spawn(&args.cpus, move |index| worker(index, shared.clone(), tag))
        .map_err(|e| format!("cannot start worker threads: {e}"))?;
    let mut latency = new_histogram();
    let mut completed = 0;
    let mut error_kinds = BTreeMap::new();
    for thread in threads {
        match thread.join() {
            Ok(Ok(result)) => {
                // Same bounds on every histogram, so adding cannot fail.
                let _ = latency.add(&result.latency);
                completed += result.completed;
                for (kind, count) in result.errors {
                    *error_kinds.entry(kind).or_insert(0) += count;
                }
            }
            Ok(Err(e)) => return Err(format!("worker runtime failed: {e}")),
            Err(_) => return Err("a worker thread panicked".into()),
        }
    }
    let wall_seconds = start.elapsed().as_secs_f64();
    let cpu_after = cpu::sum_cpu_seconds(&args.broker_pid)?;
    let broker_cpu_seconds = cpu_before
        .zip(cpu_after)
        .map(|(a, b)| ((b - a) * 1e3).round() / 1e3);
    Ok(SubscribeReport {
        scenario: "subscribe",
        broker: args.broker.to_string(),
        broker_pids: args.broker_pid.clone(),
        cpus: args.cpus.0.clone(),
        clients: args.clients,
        subscribes_per_client: args.subscribes,
        qos: args.qos as u8,
        completed,
        wall_seconds,
        subscribes_per_second: completed as f64 / wall_seconds.max(1e-9),
        latency_us: Latency::from_nanos(&latency),
        broker_cpu_us_per_subscribe: broker_cpu_seconds
            .filter(|_| completed > 0)
            .map(|cpu| cpu * 1e6 / completed as f64),
        broker_cpu_seconds,
        errors: error_kinds.values().sum(),
        error_kinds,
    })
}

async fn worker(index: usize, args: Arc<SubscribeArgs>, tag: u64) -> WorkerResult {
    let workers = args.cpus.0.len();
    let clients: Vec<_> = (index..args.clients as usize)
        .step_by(workers)
        .map(|n| monoio::spawn(client(args.clone(), tag, n)))
        .collect();
    let mut result = WorkerResult {
        latency: new_histogram(),
        completed: 0,
        errors: BTreeMap::new(),
    };
    for task in clients {
        let (latency, completed, error) = task.await;
        let _ = result.latency.add(&latency);
        result.completed += completed;
        if let Some(error) = error {
            *result.errors.entry(error.to_string()).or_insert(0) += 1;
        }
    }
    result
}

/// Client `n`: connects, subscribes `--subscribes` times in sequence, and
/// stops at the first error (a SUBSCRIBE after a timeout would be timed
/// against the wrong SUBACK).
async fn client(
    args: Arc<SubscribeArgs>,
    tag: u64,
    n: usize,
) -> (Histogram<u64>, u64, Option<ClientError>) {
    let mut latency = new_histogram();
    let mut completed = 0;
    let mut conn = match Connection::open(args.broker, &format!("bench-subscribe-{n}")).await {
        Ok(conn) => conn,
        Err(e) => return (latency, 0, Some(e)),
    };
    for i in 0..args.subscribes {
        let filter = filter(tag, n, i);
        let sent = Instant::now();
        if let Err(e) = conn.subscribe(&filter, args.qos).await {
            return (latency, completed, Some(e));
        }
        let nanos = sent.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        latency.saturating_record(nanos.max(1));
        completed += 1;
    }
    let error = conn.disconnect().await.err();
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
        writeln!(
            out,
            "total    {} SUBACKs in {:.2}s ({:.0} subscribes/s)",
            self.completed, self.wall_seconds, self.subscribes_per_second
        )?;
        if let Some(cpu) = self.broker_cpu_seconds {
            writeln!(
                out,
                "broker   {cpu:.2} CPU seconds, {} per subscribe",
                self.broker_cpu_us_per_subscribe
                    .map_or("n/a".to_owned(), |us| format!("{us:.1} us"))
            )?;
        }
        let l = &self.latency_us;
        writeln!(
            out,
            "latency  us  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}  ({} samples)",
            l.p50, l.p90, l.p99, l.p99_9, l.max, l.mean, l.samples
        )?;
        writeln!(out, "errors   {}", self.errors)?;
        for (kind, count) in &self.error_kinds {
            writeln!(out, "         {count:>8}  {kind}")?;
        }
        Ok(())
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
