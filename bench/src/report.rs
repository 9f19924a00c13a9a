//! What a run prints: a progress line each second on stderr, and at the end
//! a [`Summary`] as text or JSON on stdout.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::CommonArgs;
use crate::cpu;
use crate::scenario::{Plan, SummaryInputs};
use crate::stats::{Totals, WorkerStats};
use crate::workers;

/// The once-a-second line: rates since the previous line.
pub struct Progress<'a> {
    stats: &'a [Arc<WorkerStats>],
    started: Instant,
    last: Totals,
    last_at: Instant,
    pub next_line: Instant,
    /// The phase shown on the line.
    pub label: &'static str,
}

impl<'a> Progress<'a> {
    pub fn new(stats: &'a [Arc<WorkerStats>]) -> Progress<'a> {
        let now = Instant::now();
        Progress {
            stats,
            started: now,
            last: Totals::default(),
            last_at: now,
            next_line: now + Duration::from_secs(1),
            label: "",
        }
    }

    pub fn print_line(&mut self, now: Instant) {
        let totals = Totals::sum(self.stats);
        let seconds = now.duration_since(self.last_at).as_secs_f64().max(1e-9);
        let rate = |now: u64, before: u64| (now.saturating_sub(before)) as f64 / seconds;
        // A closed stderr is no reason to stop the benchmark.
        let _ = writeln!(
            std::io::stderr(),
            "[{:>4.0}s {:<11}] out {:>10.0} msg/s  in {:>10.0} msg/s  conns {:>6}  errors {}",
            now.duration_since(self.started).as_secs_f64(),
            self.label,
            rate(totals.sent, self.last.sent),
            rate(totals.received, self.last.received),
            totals.connections,
            totals.errors,
        );
        self.last = totals;
        self.last_at = now;
        self.next_line += Duration::from_secs(1);
        if self.next_line < now {
            self.next_line = now + Duration::from_secs(1);
        }
    }
}

/// Counts over the measured window (warmup excluded).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Window {
    pub seconds: f64,
    pub sent: u64,
    pub received: u64,
    /// Broker utime + stime over the window (`--broker-pid`).
    pub broker_cpu_seconds: Option<f64>,
    /// This load generator's own utime + stime over the window.
    pub bench_cpu_seconds: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub scenario: &'static str,
    pub broker: String,
    /// `--sub-broker`: where subscribers connected, if not to `broker`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sub_brokers: Vec<String>,
    /// `--broker-pid`: whose CPU time `window.broker_cpu_seconds` sums.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub broker_pids: Vec<u32>,
    pub cpus: Vec<usize>,
    pub io_driver: &'static str,
    pub warmup_seconds: f64,
    pub params: serde_json::Value,
    pub subscribers_connected: usize,
    pub publishers_connected: usize,
    /// Over the whole run, warmup and drain included.
    pub sent: u64,
    pub received: u64,
    /// Deliveries left over from an earlier run (not counted as received).
    pub stale: u64,
    /// PUBACKs (QoS 1) or PUBCOMPs (QoS 2) received by publishers.
    pub acked: u64,
    /// Deliveries expected from what was sent but never received.
    pub missing: u64,
    /// Deliveries that stalled publishers stopped waiting for (see
    /// `--max-lag`; QoS 0 only in pairs); they may still have arrived later.
    pub written_off: u64,
    /// `None` if the run never reached its measured window.
    pub window: Option<Window>,
    pub sent_per_second: f64,
    pub received_per_second: f64,
    pub latency_us: Latency,
    /// Broker CPU microseconds per message received in the window.
    pub broker_cpu_us_per_message: Option<f64>,
    pub clock_ticks_per_second: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
}

/// End-to-end latency (publisher write to subscriber read) in microseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub fn from_nanos(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1e3;
        Latency {
            samples: h.len(),
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p99_9: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1e3,
        }
    }
}

impl Summary {
    pub fn new(common: &CommonArgs, plan: &Plan, run: SummaryInputs<'_>) -> Summary {
        let rate = |n: u64| match run.window {
            Some(w) if w.seconds > 0.0 => n as f64 / w.seconds,
            _ => 0.0,
        };
        let window = run.window;
        let broker_cpu_us_per_message = window.and_then(|w| {
            let cpu = w.broker_cpu_seconds?;
            (w.received > 0).then(|| cpu * 1e6 / w.received as f64)
        });
        Summary {
            scenario: plan.scenario,
            broker: common.publisher_broker().to_string(),
            sub_brokers: common.sub_broker.iter().map(|a| a.to_string()).collect(),
            broker_pids: common.broker_pid.clone(),
            cpus: common.cpus.0.clone(),
            io_driver: workers::driver_name(),
            warmup_seconds: common.warmup.as_secs_f64(),
            params: plan.params.clone(),
            subscribers_connected: run.subscribers_ok,
            publishers_connected: run.publishers_ok,
            sent: run.totals.sent,
            received: run.totals.received,
            stale: run.totals.stale,
            written_off: run.totals.written_off,
            acked: run.totals.acked,
            missing: (run.totals.sent * plan.deliveries_per_publish)
                .saturating_sub(run.totals.received),
            sent_per_second: rate(window.map_or(0, |w| w.sent)),
            received_per_second: rate(window.map_or(0, |w| w.received)),
            window,
            latency_us: Latency::from_nanos(run.latency),
            broker_cpu_us_per_message,
            clock_ticks_per_second: cpu::clock_ticks_per_second(),
            errors: run.totals.errors,
            error_kinds: run.errors,
        }
    }

    pub fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "scenario {} against {} on cpus {:?} ({})",
            self.scenario, self.broker, self.cpus, self.io_driver
        )?;
        if !self.sub_brokers.is_empty() {
            writeln!(out, "subscribers on {}", self.sub_brokers.join(", "))?;
        }
        writeln!(out, "params   {}", self.params)?;
        writeln!(
            out,
            "clients  {} subscribers, {} publishers connected",
            self.subscribers_connected, self.publishers_connected
        )?;
        writeln!(
            out,
            "total    sent {}  received {}  acked {}  missing {}",
            self.sent, self.received, self.acked, self.missing
        )?;
        if self.written_off > 0 {
            writeln!(
                out,
                "stalls   publishers stopped waiting for {} deliveries",
                self.written_off
            )?;
        }
        if self.stale > 0 {
            writeln!(
                out,
                "stale    {} deliveries from an earlier run ignored",
                self.stale
            )?;
        }
        match &self.window {
            Some(w) => {
                writeln!(
                    out,
                    "window   {:.1}s after {:.1}s warmup: sent {} ({:.0} msg/s)  received {} ({:.0} msg/s)",
                    w.seconds,
                    self.warmup_seconds,
                    w.sent,
                    self.sent_per_second,
                    w.received,
                    self.received_per_second
                )?;
                if let Some(cpu) = w.bench_cpu_seconds {
                    writeln!(out, "bench    {cpu:.2} CPU seconds in the window")?;
                }
                if let Some(cpu) = w.broker_cpu_seconds {
                    writeln!(
                        out,
                        "broker   {cpu:.2} CPU seconds in the window, {} per delivered message",
                        self.broker_cpu_us_per_message
                            .map_or("n/a".to_owned(), |us| format!("{us:.3} us"))
                    )?;
                }
            }
            None => writeln!(out, "window   not reached")?,
        }
        print_latency_and_errors(out, &self.latency_us, self.errors, &self.error_kinds)
    }
}

/// The latency line, then the errors by kind: the end of every report.
pub fn print_latency_and_errors(
    out: &mut impl Write,
    l: &Latency,
    errors: u64,
    error_kinds: &BTreeMap<String, u64>,
) -> std::io::Result<()> {
    writeln!(
        out,
        "latency  us  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}  ({} samples)",
        l.p50, l.p90, l.p99, l.p99_9, l.max, l.mean, l.samples
    )?;
    writeln!(out, "errors   {errors}")?;
    for (kind, count) in error_kinds {
        writeln!(out, "         {count:>8}  {kind}")?;
    }
    Ok(())
}
