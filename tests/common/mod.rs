//! Shared harness for the black-box tests: start the real `ringmq` binary,
//! talk to it over TCP with raw bytes or with rumqttc, and stop it.
//!
//! Every wait has a timeout so that a broken broker fails a test instead of
//! hanging the suite.

// Each file under tests/ is its own crate and uses a different subset of
// these helpers; the rest would be reported as dead code in that crate.
#![allow(dead_code)]

pub mod clients;
pub mod cluster;
pub mod data_dir;
pub mod delay;
pub mod http;
pub mod netns;
pub mod peers;
pub mod raw;
pub mod tally;
pub mod tls;
pub mod wire;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the broker gets to print its `listening addr=` line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default wait for one expected packet or event.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// Wait used to assert that something does *not* arrive.
pub const QUIET: Duration = Duration::from_millis(700);

/// A running broker process. Killed (SIGKILL) on drop unless it has exited.
pub struct Broker {
    child: Child,
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    config: Option<PathBuf>,
    exit: Option<ExitStatus>,
}

impl Broker {
    /// Starts `ringmq --listen 127.0.0.1:0 <args>` and waits until it is
    /// accepting connections.
    pub fn start(args: &[&str]) -> Broker {
        Self::spawn(args, None)
    }

    /// Like [`Broker::start`], with `--config <file>` holding `toml`.
    pub fn start_with_config(toml: &str, args: &[&str]) -> Broker {
        let path = write_temp_config(toml);
        Self::spawn(args, Some(path))
    }

    fn spawn(args: &[&str], config: Option<PathBuf>) -> Broker {
        let cmd = broker_command(args, config.as_ref());
        Self::launch(cmd, config)
    }

    /// Runs `cmd` (a command that ends up executing `ringmq`, e.g. through
    /// `ip netns exec`, with stderr piped) and waits until it is accepting
    /// connections. `config` is removed when the broker is dropped.
    pub fn launch(mut cmd: Command, config: Option<PathBuf>) -> Broker {
        Broker::try_launch(&mut cmd, config, None).unwrap_or_else(|why| panic!("{why}"))
    }

    /// Like [`Broker::launch`], for a broker that announces nothing on
    /// stderr (a peer, tests/common/peers.rs): ready once `addr` takes a
    /// TCP connection. Says why it did not start rather than panicking.
    pub fn launch_listening(cmd: &mut Command, addr: SocketAddr) -> Result<Broker, String> {
        Broker::try_launch(cmd, None, Some(addr))
    }

    fn try_launch(
        cmd: &mut Command,
        config: Option<PathBuf>,
        addr: Option<SocketAddr>,
    ) -> Result<Broker, String> {
        let args: Vec<String> = cmd
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        let mut child = cmd.spawn().expect("failed to spawn the ringmq binary");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let log = Arc::clone(&stderr);
        // The thread keeps draining stderr for the broker's whole life so a
        // chatty broker never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let line = strip_ansi(&line);
                if !sent && let Some(addr) = parse_listening(&line) {
                    let _ = port_tx.send(addr);
                    sent = true;
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let ready = match addr {
                Some(addr)
                    if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100))
                        .is_ok() =>
                {
                    Ok(addr)
                }
                _ => port_rx.recv_timeout(Duration::from_millis(50)),
            };
            match ready {
                Ok(addr) => {
                    return Ok(Broker {
                        child,
                        addr,
                        stderr,
                        config,
                        exit: None,
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stderr closed: the broker exited (or closed stderr)
                    // without ever announcing its address.
                    std::thread::sleep(Duration::from_millis(100));
                    let status = child.try_wait().ok().flatten();
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "ringmq {args:?} never printed `listening addr=` (exit: {status:?}); stderr:\n{}",
                        stderr.lock().unwrap()
                    ));
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!(
                    "ringmq {args:?} exited with {status} before listening; stderr:\n{}",
                    stderr.lock().unwrap()
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "ringmq {args:?} did not print `listening addr=` within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                    stderr.lock().unwrap()
                ));
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the broker wrote to stderr so far (ANSI codes removed).
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the log holds `needle` `count` times; panics with the
    /// log after [`RECV_TIMEOUT`].
    pub fn wait_for_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + RECV_TIMEOUT;
        while self.logs().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "no {count} x {needle:?} in the log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the broker.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our
        // own child, which has not been reaped yet (we reap only in
        // wait_exit/drop), so it cannot name an unrelated process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits for the broker to exit; panics (with its stderr) on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.exit = Some(status);
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "ringmq did not exit within {timeout:?}; stderr:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every address announced with `listening addr=` so far, in order.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.logs().lines().filter_map(parse_listening).collect()
    }

    /// Resident set size of the broker process in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("cannot read /proc/PID/status of the broker");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("no VmRSS line in /proc/PID/status")
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.exit.is_none() && self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.exit.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if let Some(path) = &self.config {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Result of running the binary to completion (for start-up failures).
pub struct Exited {
    pub status: ExitStatus,
    pub stderr: String,
}

/// Runs `ringmq --listen 127.0.0.1:0 <args>` (with `--config` when `toml`
/// is given) and expects it to exit by itself within a few seconds.
pub fn run_to_exit(args: &[&str], toml: Option<&str>) -> Exited {
    let config = toml.map(write_temp_config);
    let mut child = broker_command(args, config.as_ref())
        .spawn()
        .expect("failed to spawn the ringmq binary");
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut s);
        s
    });
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = reader.join().unwrap();
            panic!(
                "ringmq {args:?} kept running; expected it to refuse to start. stderr:\n{stderr}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = strip_ansi(&reader.join().unwrap());
    if let Some(path) = config {
        let _ = std::fs::remove_file(path);
    }
    Exited { status, stderr }
}

/// The command [`Broker::start`] runs: `ringmq` on an ephemeral port with
/// `args`, for a test that adjusts it (limits, environment) before
/// [`Broker::launch`].
pub fn broker_command(args: &[&str], config: Option<&PathBuf>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringmq"));
    cmd.arg("--listen").arg("127.0.0.1:0");
    if let Some(path) = config {
        cmd.arg("--config").arg(path);
    }
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

pub fn write_temp_config(toml: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("ringmq-test-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, toml).expect("cannot write temp config");
    path
}

/// Finds `listening addr=HOST:PORT` in one log line.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening")?..];
    let rest = &rest[rest.find("addr=")? + "addr=".len()..];
    let value: String = rest
        .trim_start_matches('"')
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    value.parse().ok()
}

/// Removes ANSI escape sequences (colours) from a log line.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A client id unique within this test process, so tests never collide.
pub fn unique_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl Broker {
    /// The address announced with `listening addr=... transport=websocket`
    /// (given `--ws-listen`).
    pub fn ws_addr(&self) -> SocketAddr {
        self.announced_addr("transport=websocket")
    }

    /// The first address announced on a `listening addr=` line containing
    /// `marker`. The broker logs its TCP addresses first and the others
    /// possibly after [`Broker::start`] returned, so this waits for it.
    pub fn announced_addr(&self, marker: &str) -> SocketAddr {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let found = self
                .logs()
                .lines()
                .filter(|line| line.contains(marker))
                .find_map(parse_listening);
            if let Some(addr) = found {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "no `listening addr=... {marker}` line; stderr:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
