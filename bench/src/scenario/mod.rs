//! What every scenario shares: the coordinating thread's run ([`run`]) and
//! a worker's context ([`WorkerCtx`]). A scenario file only says which
//! connections a worker opens and what each one does.
//!
//! A run goes through the [`Phase`]s: subscribers connect and subscribe;
//! once every one has settled, publishers connect; once those have settled
//! the clock starts, publishers publish through the warmup and the measured
//! window, then finish (draining their QoS 1/2 acknowledgements); the run
//! stops when every publisher has finished and every expected delivery has
//! arrived, or when `--drain` runs out.

pub mod conn;
pub mod fan;
pub mod pairs;
pub mod sequential;
pub mod sessions;
pub mod store;
pub mod stresser;
pub mod subscribe;
pub mod takeover;

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::task::Poll;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::cli::CommonArgs;
use crate::client::{ClientError, Connection};
use crate::control::{Control, LocalPhase, Phase};
use crate::cpu;
use crate::gate::Gate;
use crate::report::{Progress, Summary, Window};
use crate::stats::{self, ErrorLog, Totals, WorkerStats};
use crate::workers;

/// State shared by every thread of a run.
#[derive(Debug)]
pub struct Shared {
    pub control: Control,
    /// One per worker, indexed by worker.
    pub stats: Vec<Arc<WorkerStats>>,
    pub errors: ErrorLog,
    /// Written into every payload; see `client::PublishTemplate`.
    pub run_tag: u64,
    /// Each worker's share of `--connect-concurrency`.
    pub connect_limit: usize,
}

/// What a scenario expects of a run, for the coordinator.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario: &'static str,
    pub subscribers: usize,
    pub publishers: usize,
    /// Subscribers that receive each publish (1 for pairs and fan-in).
    pub deliveries_per_publish: u64,
    /// Scenario flags, echoed in the summary.
    pub params: serde_json::Value,
}

/// What a worker hands back when the run stops.
pub struct WorkerOutput {
    /// End-to-end latency in nanoseconds of the messages sent in the window.
    pub latency: Histogram<u64>,
}

/// Latency histograms cover 1 ns to 100 s with three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("static histogram bounds are valid")
}

/// One worker's view of the run, shared by its connection tasks.
pub struct WorkerCtx {
    pub index: usize,
    pub shared: Arc<Shared>,
    pub phase: LocalPhase,
    /// Limits concurrent handshakes on this worker.
    pub connect_gate: Gate,
    /// [`Control::window_start`] in [`stats::now_nanos`] time; `u64::MAX`
    /// until the run starts.
    window_start_ns: Cell<u64>,
    latency: RefCell<Histogram<u64>>,
}

impl WorkerCtx {
    pub fn new(index: usize, shared: Arc<Shared>) -> Rc<WorkerCtx> {
        Rc::new(WorkerCtx {
            index,
            connect_gate: Gate::new(shared.connect_limit),
            shared,
            phase: LocalPhase::default(),
            window_start_ns: Cell::new(u64::MAX),
            latency: RefCell::new(new_histogram()),
        })
    }

    pub fn workers(&self) -> usize {
        self.shared.stats.len()
    }

    pub fn stats(&self) -> &WorkerStats {
        &self.shared.stats[self.index]
    }

    pub fn control(&self) -> &Control {
        &self.shared.control
    }

    pub fn error(&self, role: &str, error: &ClientError) {
        self.shared
            .errors
            .record(self.stats(), format!("{role}: {error}"));
    }

    /// Counts a subscriber connection attempt as settled (and as connected
    /// if it was), recording its error under `role`; the main thread waits
    /// for every subscriber to settle before publishing starts.
    pub fn settle_subscriber(
        &self,
        role: &str,
        attempt: Option<Result<Connection, ClientError>>,
    ) -> Option<Connection> {
        let control = self.control();
        let conn = match attempt {
            Some(Ok(conn)) => {
                control.subscribers_ok.fetch_add(1, AcqRel);
                Some(conn)
            }
            Some(Err(e)) => {
                self.error(role, &e);
                None
            }
            None => None,
        };
        control.subscribers_settled.fetch_add(1, Release);
        conn
    }

    /// Records one delivery's latency if it was sent inside the window.
    pub fn record_latency(&self, now_ns: u64, stamp_ns: u64) {
        if stamp_ns >= self.window_start_ns.get() {
            self.latency
                .borrow_mut()
                .saturating_record(now_ns.saturating_sub(stamp_ns).max(1));
        }
    }

    /// Waits for `phase`; false if the run stopped instead.
    pub async fn reached(&self, phase: Phase) -> bool {
        self.phase.reached(phase).await;
        self.phase.get() < Phase::Stop || phase == Phase::Stop
    }

    /// Runs `future` until it completes or the run stops (`None`).
    pub async fn or_stop<F: Future>(&self, future: F) -> Option<F::Output> {
        monoio::select! {
            output = future => Some(output),
            _ = self.phase.reached(Phase::Stop) => None,
        }
    }

    /// Mirrors the shared phase into [`WorkerCtx::phase`] until the run
    /// stops. A worker's main task runs this after spawning its connections.
    pub async fn follow(&self) {
        loop {
            let phase = self.control().phase();
            if phase >= Phase::Run && self.window_start_ns.get() == u64::MAX {
                let start = stats::nanos_at(self.control().window_start());
                self.window_start_ns.set(start);
            }
            self.phase.set(phase);
            if phase == Phase::Stop {
                return;
            }
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub fn output(&self) -> WorkerOutput {
        WorkerOutput {
            latency: self.latency.replace(new_histogram()),
        }
    }
}

/// Lets the worker's other tasks run. Under epoll a write can complete
/// without ever returning `Pending`, and a publisher that never yields
/// would starve everything else on its thread.
pub async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Runs a scenario to the end on the calling (coordinating) thread.
/// `worker(index, shared)` is each worker thread's main task.
pub fn run<F, Fut>(common: &CommonArgs, plan: Plan, worker: F) -> Result<Summary, String>
where
    F: Fn(usize, Arc<Shared>) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = WorkerOutput> + 'static,
{
    stats::init_clock();
    workers::check_cpus(&common.cpus)?;
    let fd_limit = workers::raise_fd_limit();
    let connections = (plan.subscribers + plan.publishers) as u64;
    if fd_limit < connections + 64 {
        eprintln!("warning: open-file limit {fd_limit} is too low for {connections} connections");
    }
    cpu::sum_cpu_seconds(&common.broker_pid)?;
    let shared = Arc::new(Shared {
        control: Control::new(common.warmup, common.duration),
        stats: (0..common.cpus.0.len())
            .map(|_| Arc::new(WorkerStats::default()))
            .collect(),
        errors: ErrorLog::default(),
        run_tag: run_tag(),
        connect_limit: (common.connect_concurrency as usize).div_ceil(common.cpus.0.len()),
    });
    let threads = {
        let shared = shared.clone();
        workers::spawn(&common.cpus, move |index| worker(index, shared.clone()))
            .map_err(|e| format!("cannot start worker threads: {e}"))?
    };
    let control = &shared.control;
    let mut progress = Progress::new(&shared.stats);

    // A worker ends early only if its runtime could not start.
    let died = || threads.iter().any(|t| t.is_finished());

    progress.label = "subscribing";
    progress.wait(None, || {
        died() || control.subscribers_settled.load(Acquire) >= plan.subscribers
    });
    let mut window = None;
    if !died() && (plan.subscribers == 0 || control.subscribers_ok.load(Acquire) > 0) {
        control.advance(Phase::Connect);
        progress.label = "connecting";
        progress.wait(None, || {
            died() || control.publishers_settled.load(Acquire) >= plan.publishers
        });
        control.advance(Phase::Run);
        progress.label = "warmup";
        progress.wait(Some(control.window_start()), || false);
        let begin = Snapshot::take(&shared.stats, &common.broker_pid);
        progress.label = "measuring";
        progress.wait(Some(control.window_end()), || false);
        let end = Snapshot::take(&shared.stats, &common.broker_pid);
        window = Some(begin.until(&end, common.duration));
        progress.label = "draining";
        progress.wait(Some(control.window_end() + common.drain), || {
            let t = Totals::sum(&shared.stats);
            control.publishers_active.load(Acquire) == 0
                && t.received >= t.sent * plan.deliveries_per_publish
        });
    }
    control.advance(Phase::Stop);

    let mut latency = new_histogram();
    for thread in threads {
        match thread.join() {
            Ok(Ok(output)) => {
                // Same bounds on every histogram, so adding cannot fail.
                let _ = latency.add(&output.latency);
            }
            Ok(Err(e)) => return Err(format!("worker runtime failed: {e}")),
            Err(_) => return Err("a worker thread panicked".into()),
        }
    }
    let totals = Totals::sum(&shared.stats);
    Ok(Summary::new(
        common,
        &plan,
        SummaryInputs {
            totals,
            window,
            latency: &latency,
            errors: shared.errors.snapshot(),
            subscribers_ok: control.subscribers_ok.load(Relaxed),
            publishers_ok: control.publishers_ok.load(Relaxed),
        },
    ))
}

/// Different for every run: wall-clock nanoseconds mixed with the pid.
fn run_tag() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}

/// Everything [`Summary::new`] needs from a finished run.
pub struct SummaryInputs<'a> {
    pub totals: Totals,
    pub window: Option<Window>,
    pub latency: &'a Histogram<u64>,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub subscribers_ok: usize,
    pub publishers_ok: usize,
}

/// Counters and CPU times at one edge of the measured window.
struct Snapshot {
    totals: Totals,
    broker_cpu: Option<f64>,
    own_cpu: Option<f64>,
}

impl Snapshot {
    fn take(stats: &[Arc<WorkerStats>], broker_pids: &[u32]) -> Snapshot {
        Snapshot {
            totals: Totals::sum(stats),
            broker_cpu: cpu::sum_cpu_seconds(broker_pids).ok().flatten(),
            own_cpu: cpu::cpu_seconds(None).ok(),
        }
    }

    fn until(&self, end: &Snapshot, duration: Duration) -> Window {
        // CPU time comes in clock ticks; round off the float noise.
        let diff = |a: Option<f64>, b: Option<f64>| Some(((b? - a?) * 1e3).round() / 1e3);
        Window {
            seconds: duration.as_secs_f64(),
            sent: end.totals.sent - self.totals.sent,
            received: end.totals.received - self.totals.received,
            broker_cpu_seconds: diff(self.broker_cpu, end.broker_cpu),
            bench_cpu_seconds: diff(self.own_cpu, end.own_cpu),
        }
    }
}

impl Progress<'_> {
    /// Prints a progress line each second until `done()` or `deadline`.
    fn wait(&mut self, deadline: Option<Instant>, done: impl Fn() -> bool) {
        const POLL: Duration = Duration::from_millis(5);
        loop {
            if done() {
                return;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return;
            }
            if now >= self.next_line {
                self.print_line(now);
            }
            let mut wake = (now + POLL).min(self.next_line);
            if let Some(deadline) = deadline {
                wake = wake.min(deadline);
            }
            thread::sleep(wake.saturating_duration_since(now));
        }
    }
}
