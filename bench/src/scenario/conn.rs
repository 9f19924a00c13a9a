//! `conn`: N idle MQTT connections, held for `--hold`, each sending
//! PINGREQ every `--keep-alive` seconds. Reports how fast they connected
//! and, with `--broker-pid`, the broker's resident memory (VmRSS in
//! /proc/PID/status) before and after, per connection.
//!
//! Two limits shape it. A source address has about 28,000 ephemeral ports
//! towards one broker port, so connections are spread round robin over
//! `--source-addrs` (127.0.0.x, bound before connect). A process has
//! `ulimit -Hn` file descriptors (20,000 on the project's machines, not
//! raisable), so past that the run re-executes this binary as `--processes`
//! children, each holding its share. A child says `ready OK FAILED SECONDS`
//! on stdout once its connections have settled, holds them until its stdin
//! closes, then says `error COUNT KIND` lines and `done OPEN`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Acquire;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Shared, WorkerCtx, WorkerOutput};
use crate::cli::ConnArgs;
use crate::client::{ConnectOptions, Connection};
use crate::control::{Control, Phase};
use crate::cpu;
use crate::report::Progress;
use crate::stats::{ErrorLog, OpenConnection, Totals, WorkerStats};
use crate::workers;

/// File descriptors a process keeps for itself (stdio, io_uring, runtime).
const RESERVED_FDS: u64 = 100;

/// Buffer bytes per idle connection: CONNACK and PINGRESP are 2 bytes.
const IDLE_BUFFER: usize = 256;

#[derive(Debug, Serialize)]
pub struct ConnReport {
    pub broker: String,
    pub requested: u64,
    pub connected: u64,
    pub failed: u64,
    /// Still open when the hold ended.
    pub open_at_end: u64,
    pub processes: u32,
    pub source_addrs: Vec<String>,
    pub keep_alive: u16,
    /// First connect started to last connection settled.
    pub connect_seconds: f64,
    pub connects_per_second: f64,
    pub hold_seconds: f64,
    pub broker_rss_before_kib: Option<u64>,
    pub broker_rss_after_kib: Option<u64>,
    pub broker_bytes_per_connection: Option<f64>,
    /// Broker CPU seconds while the connections were being made.
    pub broker_connect_cpu_seconds: Option<f64>,
    pub errors: u64,
    pub error_kinds: std::collections::BTreeMap<String, u64>,
}

impl ConnReport {
    pub fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "conn     {} idle connections to {} from {} process(es), sources {:?}, keep-alive {} s",
            self.requested, self.broker, self.processes, self.source_addrs, self.keep_alive
        )?;
        writeln!(
            out,
            "connect  {} connected, {} failed in {:.3} s ({:.0} connections/s)",
            self.connected, self.failed, self.connect_seconds, self.connects_per_second
        )?;
        writeln!(
            out,
            "hold     {:.1} s, {} still open at the end",
            self.hold_seconds, self.open_at_end
        )?;
        if let (Some(before), Some(after)) = (self.broker_rss_before_kib, self.broker_rss_after_kib)
        {
            writeln!(
                out,
                "broker   VmRSS {before} KiB before, {after} KiB after: {} per connection",
                self.broker_bytes_per_connection
                    .map_or("n/a".to_owned(), |b| format!("{b:.0} bytes"))
            )?;
        }
        if let Some(cpu) = self.broker_connect_cpu_seconds {
            writeln!(out, "broker   {cpu:.2} CPU seconds while connecting")?;
        }
        writeln!(out, "errors   {}", self.errors)?;
        for (kind, count) in &self.error_kinds {
            writeln!(out, "         {count:>8}  {kind}")?;
        }
        Ok(())
    }
}

/// VmRSS of `pid` in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse_vm_rss(&status).ok_or_else(|| format!("{path}: no VmRSS line"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Bytes of broker memory per connection, from RSS before and after.
fn bytes_per_connection(before_kib: u64, after_kib: u64, connections: u64) -> Option<f64> {
    (connections > 0).then(|| (after_kib as f64 - before_kib as f64) * 1024.0 / connections as f64)
}

/// How many processes `connections` need under an open-file limit.
fn processes_needed(connections: u64, fd_limit: u64) -> u32 {
    let per_process = fd_limit.saturating_sub(RESERVED_FDS).max(1);
    connections.div_ceil(per_process).max(1) as u32
}

/// Connections of process `index` of `processes`: the remainder goes to
/// the first ones.
fn share(connections: u64, processes: u32, index: u32) -> u64 {
    let (base, extra) = (
        connections / u64::from(processes),
        connections % u64::from(processes),
    );
    base + u64::from(u64::from(index) < extra)
}

pub fn run(args: &ConnArgs) -> Result<ConnReport, String> {
    crate::stats::init_clock();
    workers::check_cpus(&args.cpus)?;
    let fd_limit = workers::raise_fd_limit();
    let requested = u64::from(args.connections);
    let processes = args
        .processes
        .unwrap_or_else(|| processes_needed(requested, fd_limit));
    // Several pids (a cluster's nodes): RSS and CPU summed over them.
    let rss = |pids: &[u32]| -> Result<Option<u64>, String> {
        if pids.is_empty() {
            return Ok(None);
        }
        pids.iter()
            .try_fold(0, |sum, &pid| Ok(sum + rss_kib(pid)?))
            .map(Some)
    };
    let rss_before = rss(&args.broker_pid)?;
    let cpu_before = cpu::sum_cpu_seconds(&args.broker_pid)?;
    let start = Instant::now();

    let (connected, failed, connect_seconds, hold, open_at_end, error_kinds) = if processes == 1 {
        let local = Local::start(args, requested)?;
        let (ok, failed) = local.wait_settled();
        let connect_seconds = start.elapsed().as_secs_f64();
        let cpu_after = cpu::sum_cpu_seconds(&args.broker_pid)?;
        let rss_after = rss(&args.broker_pid)?;
        let hold = local.hold(args.hold);
        let (open, kinds) = local.stop()?;
        (
            ok,
            failed,
            connect_seconds,
            (hold, cpu_after, rss_after),
            open,
            kinds,
        )
    } else {
        let mut children = (0..processes)
            .map(|i| spawn_child(args, share(requested, processes, i), i))
            .collect::<Result<Vec<_>, _>>()?;
        let (mut ok, mut failed) = (0, 0);
        for child in &mut children {
            let (o, f) = child.ready()?;
            ok += o;
            failed += f;
        }
        let connect_seconds = start.elapsed().as_secs_f64();
        let cpu_after = cpu::sum_cpu_seconds(&args.broker_pid)?;
        let rss_after = rss(&args.broker_pid)?;
        eprintln!(
            "holding {ok} connections in {processes} processes for {:?}",
            args.hold
        );
        std::thread::sleep(args.hold);
        let mut open = 0;
        let mut kinds = std::collections::BTreeMap::new();
        for child in children {
            let (o, k) = child.finish()?;
            open += o;
            for (kind, count) in k {
                *kinds.entry(kind).or_insert(0) += count;
            }
        }
        (
            ok,
            failed,
            connect_seconds,
            (args.hold.as_secs_f64(), cpu_after, rss_after),
            open,
            kinds,
        )
    };
    let (hold_seconds, cpu_after, rss_after) = hold;
    Ok(ConnReport {
        broker: args.tls.broker(args.broker).to_string(),
        requested,
        connected,
        failed,
        open_at_end,
        processes,
        source_addrs: args.source_addrs.iter().map(|a| a.to_string()).collect(),
        keep_alive: args.keep_alive,
        connect_seconds,
        connects_per_second: connected as f64 / connect_seconds.max(1e-9),
        hold_seconds,
        broker_rss_before_kib: rss_before,
        broker_rss_after_kib: rss_after,
        broker_bytes_per_connection: rss_before
            .zip(rss_after)
            .and_then(|(b, a)| bytes_per_connection(b, a, connected)),
        broker_connect_cpu_seconds: cpu_before
            .zip(cpu_after)
            .map(|(b, a)| ((a - b) * 1e3).round() / 1e3),
        errors: error_kinds.values().sum(),
        error_kinds,
    })
}

/// A child's side of a multi-process run: connect, report, hold until
/// stdin closes, report again.
pub fn child(args: &ConnArgs) -> Result<(), String> {
    crate::stats::init_clock();
    workers::raise_fd_limit();
    let start = Instant::now();
    let local = Local::start(args, u64::from(args.connections))?;
    let (ok, failed) = local.wait_settled();
    let mut out = std::io::stdout().lock();
    let say = |out: &mut std::io::StdoutLock, line: String| {
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("child stdout: {e}"))
    };
    say(
        &mut out,
        format!("ready {ok} {failed} {}", start.elapsed().as_secs_f64()),
    )?;
    // The parent closes our stdin (or dies) when the hold is over.
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
        sink.clear();
    }
    let (open, kinds) = local.stop()?;
    for (kind, count) in kinds {
        say(&mut out, format!("error {count} {kind}"))?;
    }
    say(&mut out, format!("done {open}"))
}

struct ChildProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
}

fn spawn_child(args: &ConnArgs, connections: u64, index: u32) -> Result<ChildProcess, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let cpus = args
        .cpus
        .0
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut command = Command::new(exe);
    command
        .arg("conn")
        .arg("--broker")
        .arg(args.broker.to_string())
        .arg("--connections")
        .arg(connections.max(1).to_string())
        .arg("--keep-alive")
        .arg(args.keep_alive.to_string())
        .arg("--connect-concurrency")
        .arg(args.connect_concurrency.to_string())
        .arg("--cpus")
        .arg(cpus)
        .arg("--child")
        .arg(index.to_string())
        .args(args.tls.to_args());
    if !args.source_addrs.is_empty() {
        // Rotate the list so children do not all start on the same address.
        let n = args.source_addrs.len();
        let rotated: Vec<String> = (0..n)
            .map(|k| args.source_addrs[(k + index as usize) % n].to_string())
            .collect();
        command.arg("--source-addrs").arg(rotated.join(","));
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start child process: {e}"))?;
    let stdin = child.stdin.take();
    let stdout = BufReader::new(child.stdout.take().ok_or("child has no stdout")?);
    Ok(ChildProcess {
        child,
        stdin,
        stdout,
    })
}

impl ChildProcess {
    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err("a child process ended early".into()),
            Ok(_) => Ok(line.trim_end().to_owned()),
            Err(e) => Err(format!("reading a child process: {e}")),
        }
    }

    /// Waits for `ready OK FAILED SECONDS`.
    fn ready(&mut self) -> Result<(u64, u64), String> {
        let line = self.line()?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("ready"), Some(ok), Some(failed)) => Ok((
                ok.parse().map_err(|_| format!("bad child line `{line}`"))?,
                failed
                    .parse()
                    .map_err(|_| format!("bad child line `{line}`"))?,
            )),
            _ => Err(format!("unexpected child line `{line}`")),
        }
    }

    /// Closes stdin, reads the error lines and `done OPEN`, reaps.
    fn finish(mut self) -> Result<(u64, Vec<(String, u64)>), String> {
        drop(self.stdin.take());
        let mut kinds = Vec::new();
        let open = loop {
            let line = self.line()?;
            if let Some(rest) = line.strip_prefix("error ") {
                let (count, kind) = rest.split_once(' ').unwrap_or((rest, "?"));
                kinds.push((kind.to_owned(), count.parse().unwrap_or(1)));
            } else if let Some(open) = line.strip_prefix("done ") {
                break open.parse().unwrap_or(0);
            }
        };
        let _ = self.child.wait();
        Ok((open, kinds))
    }
}

/// This process's connections, on its worker threads.
struct Local {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<std::io::Result<WorkerOutput>>>,
    connections: u64,
}

impl Local {
    fn start(args: &ConnArgs, connections: u64) -> Result<Local, String> {
        let workers_count = args.cpus.0.len();
        let shared = Arc::new(Shared {
            control: Control::new(Duration::ZERO, Duration::ZERO),
            stats: (0..workers_count)
                .map(|_| Arc::new(WorkerStats::default()))
                .collect(),
            errors: ErrorLog::default(),
            run_tag: 0,
            connect_limit: (args.connect_concurrency as usize).div_ceil(workers_count),
        });
        let threads = {
            let shared = shared.clone();
            let args = Arc::new(args.clone());
            workers::spawn(&args.cpus.clone(), move |index| {
                worker(index, shared.clone(), args.clone(), connections)
            })
            .map_err(|e| format!("cannot start worker threads: {e}"))?
        };
        Ok(Local {
            shared,
            threads,
            connections,
        })
    }

    /// Waits until every connection has connected or failed.
    fn wait_settled(&self) -> (u64, u64) {
        let control = &self.shared.control;
        let mut progress = Progress::new(&self.shared.stats);
        progress.label = "connecting";
        progress.wait(None, || {
            self.threads.iter().any(|t| t.is_finished())
                || control.subscribers_settled.load(Acquire) as u64 >= self.connections
        });
        let ok = control.subscribers_ok.load(Acquire) as u64;
        let settled = control.subscribers_settled.load(Acquire) as u64;
        (ok, settled.saturating_sub(ok))
    }

    fn hold(&self, hold: Duration) -> f64 {
        let start = Instant::now();
        let mut progress = Progress::new(&self.shared.stats);
        progress.label = "holding";
        progress.wait(Some(start + hold), || false);
        start.elapsed().as_secs_f64()
    }

    /// Stops every connection; returns how many were still open, and the
    /// errors by kind.
    fn stop(self) -> Result<(u64, std::collections::BTreeMap<String, u64>), String> {
        let open = Totals::sum(&self.shared.stats).connections;
        self.shared.control.advance(Phase::Stop);
        for thread in self.threads {
            match thread.join() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("worker runtime failed: {e}")),
                Err(_) => return Err("a worker thread panicked".into()),
            }
        }
        Ok((open, self.shared.errors.snapshot()))
    }
}

async fn worker(
    index: usize,
    shared: Arc<Shared>,
    args: Arc<ConnArgs>,
    connections: u64,
) -> WorkerOutput {
    let ctx = WorkerCtx::new(index, shared);
    let tasks: Vec<_> = (index..connections as usize)
        .step_by(ctx.workers())
        .map(|n| monoio::spawn(idle(ctx.clone(), args.clone(), n)))
        .collect();
    ctx.follow().await;
    for task in tasks {
        task.await;
    }
    ctx.output()
}

/// One idle connection: connect, then PINGREQ every keep-alive until the
/// run stops.
async fn idle(ctx: Rc<WorkerCtx>, args: Arc<ConnArgs>, n: usize) {
    let source = match args.source_addrs.len() {
        0 => None,
        len => Some(args.source_addrs[n % len]),
    };
    let options = ConnectOptions {
        keep_alive: args.keep_alive,
        source,
        buffer: IDLE_BUFFER,
        ..ConnectOptions::new(&format!(
            "bench-idle-{}-{n}",
            args.child.map_or(String::new(), |c| format!("p{c}"))
        ))
    };
    let connected = ctx
        .or_stop(async {
            let _turn = ctx.connect_gate.acquire().await;
            Connection::open_with(&args.tls.broker(args.broker), &options).await
        })
        .await;
    let conn = ctx.settle_subscriber("connect", connected);
    let Some(mut conn) = conn else { return };
    let _open = OpenConnection::new(ctx.stats());
    let interval = Duration::from_secs(u64::from(args.keep_alive));
    let pinging = async {
        loop {
            if interval.is_zero() {
                // No keep-alive: wait for the broker to close us, if ever.
                conn.fill().await?;
                continue;
            }
            monoio::time::sleep(interval).await;
            conn.ping().await?;
        }
    };
    let outcome: Option<Result<(), crate::client::ClientError>> = ctx.or_stop(pinging).await;
    if let Some(Err(e)) = outcome {
        ctx.error("idle", &e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tmosquitto\nVmPeak:\t  20000 kB\nVmRSS:\t    6512 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(6512));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert!(rss_kib(std::process::id()).expect("own status") > 0);
    }

    #[test]
    fn memory_per_connection() {
        assert_eq!(bytes_per_connection(1000, 2000, 1024), Some(1000.0));
        assert_eq!(bytes_per_connection(1000, 2000, 0), None);
    }

    #[test]
    fn processes_follow_the_fd_limit() {
        assert_eq!(processes_needed(10_000, 20_000), 1);
        assert_eq!(processes_needed(19_900, 20_000), 1);
        assert_eq!(processes_needed(19_901, 20_000), 2);
        assert_eq!(processes_needed(50_000, 20_000), 3);
        let shares: Vec<u64> = (0..3).map(|i| share(10, 3, i)).collect();
        assert_eq!(shares, [4, 3, 3]);
    }
}
