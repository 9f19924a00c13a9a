//! What `subscribe` and `takeover` share: clients spread over the worker
//! threads, each doing one timed thing after another and stopping at its
//! first error; their latencies merged into one histogram, with the
//! broker CPU the whole run cost.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::new_histogram;
use crate::cli::CpuList;
use crate::cpu;
use crate::report::{Latency, print_latency_and_errors};
use crate::workers;

/// One client's run: its latencies, how many operations completed, and
/// the error that stopped it, if one did.
pub type ClientRun = (Histogram<u64>, u64, Option<String>);

/// Every client's runs together.
pub struct Runs {
    pub latency: Histogram<u64>,
    pub completed: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub wall_seconds: f64,
    /// Broker CPU (summed over `broker_pid`) over the whole run.
    pub broker_cpu_seconds: Option<f64>,
}

/// What every sequential scenario reports, flattened into its report.
#[derive(Debug, Serialize)]
pub struct RunsReport {
    /// Operations completed (and timed).
    pub completed: u64,
    pub wall_seconds: f64,
    /// Each operation, microseconds.
    pub latency_us: Latency,
    /// Broker CPU (summed over `--broker-pid`s) over the whole run.
    pub broker_cpu_seconds: Option<f64>,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
}

impl Runs {
    /// Broker CPU per completed operation, microseconds.
    pub fn cpu_us_per_completed(&self) -> Option<f64> {
        self.broker_cpu_seconds
            .filter(|_| self.completed > 0)
            .map(|cpu| cpu * 1e6 / self.completed as f64)
    }

    pub fn report(self) -> RunsReport {
        RunsReport {
            completed: self.completed,
            wall_seconds: self.wall_seconds,
            latency_us: Latency::from_nanos(&self.latency),
            broker_cpu_seconds: self.broker_cpu_seconds,
            errors: self.error_kinds.values().sum(),
            error_kinds: self.error_kinds,
        }
    }
}

impl RunsReport {
    /// The broker CPU line (if measured), the latency and the errors.
    pub fn print_text(
        &self,
        out: &mut impl std::io::Write,
        per: &str,
        cpu_us_per: Option<f64>,
    ) -> std::io::Result<()> {
        if let Some(cpu) = self.broker_cpu_seconds {
            writeln!(
                out,
                "broker   {cpu:.2} CPU seconds, {} per {per}",
                cpu_us_per.map_or("n/a".to_owned(), |us| format!("{us:.1} us"))
            )?;
        }
        print_latency_and_errors(out, &self.latency_us, self.errors, &self.error_kinds)
    }
}

/// Runs `clients` clients, client `n` on worker `n % workers`, each as
/// `client(args, run tag, n)` makes it.
pub fn run<A, F, Fut>(
    cpus: &CpuList,
    broker_pid: &[u32],
    clients: u32,
    args: Arc<A>,
    client: F,
) -> Result<Runs, String>
where
    A: Send + Sync + 'static,
    F: Fn(Arc<A>, u64, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ClientRun> + 'static,
{
    workers::check_cpus(cpus)?;
    let tag = super::run_tag();
    let cpu_before = cpu::sum_cpu_seconds(broker_pid)?;
    let start = Instant::now();
    let workers = cpus.0.len();
    let threads = workers::spawn(cpus, move |index| {
        let (args, client) = (args.clone(), client.clone());
        async move {
            let tasks: Vec<_> = (index..clients as usize)
                .step_by(workers)
                .map(|n| monoio::spawn(client(args.clone(), tag, n)))
                .collect();
            let mut runs = Vec::with_capacity(tasks.len());
            for task in tasks {
                runs.push(task.await);
            }
            runs
        }
    })
    .map_err(|e| format!("cannot start worker threads: {e}"))?;
    let mut latency = new_histogram();
    let mut completed = 0;
    let mut error_kinds = BTreeMap::new();
    for thread in threads {
        let runs = match thread.join() {
            Ok(Ok(runs)) => runs,
            Ok(Err(e)) => return Err(format!("worker runtime failed: {e}")),
            Err(_) => return Err("a worker thread panicked".into()),
        };
        for (client_latency, client_completed, error) in runs {
            // Same bounds on every histogram, so adding cannot fail.
            let _ = latency.add(&client_latency);
            completed += client_completed;
            if let Some(error) = error {
                *error_kinds.entry(error).or_insert(0) += 1;
            }
        }
    }
    let wall_seconds = start.elapsed().as_secs_f64();
    let cpu_after = cpu::sum_cpu_seconds(broker_pid)?;
    Ok(Runs {
        latency,
        completed,
        error_kinds,
        wall_seconds,
        broker_cpu_seconds: cpu_before
            .zip(cpu_after)
            .map(|(a, b)| ((b - a) * 1e3).round() / 1e3),
    })
}

/// Records `took` in `latency`, in nanoseconds.
pub fn record(latency: &mut Histogram<u64>, took: Duration) {
    let nanos = took.as_nanos().min(u128::from(u64::MAX)) as u64;
    latency.saturating_record(nanos.max(1));
}
