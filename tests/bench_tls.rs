//! `ringmq-bench` over TLS against the real broker: short `pairs` and
//! `stresser` runs through a TLS listener, the broker's certificate
//! verified against the test's CA (rcgen), deliver every message; a run
//! trusting another CA fails in the handshake and delivers nothing.
//!
//! The bench binary is found beside `ringmq` (`target/debug/`): `cargo
//! test --workspace` builds it; `cargo test --test bench_tls` alone does
//! not, and the test then says so.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tls::{Pki, arg};

/// Longest a bench run may take before the test kills it and fails.
const RUN_LIMIT: Duration = Duration::from_secs(20);

fn bench_binary() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_ringmq")).with_file_name("ringmq-bench");
    assert!(
        bench.exists(),
        "{} is not built: run `cargo build -p ringmq-bench` (cargo test --workspace does)",
        bench.display()
    );
    bench
}

/// Runs `ringmq-bench ARGS`, killing it past [`RUN_LIMIT`]; its exit code
/// (None if killed), stdout and stderr.
fn bench(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(bench_binary())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringmq-bench");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + RUN_LIMIT;
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    (code, stdout, stderr)
}

fn json(stdout: &str, stderr: &str) -> serde_json::Value {
    serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("summary is not JSON ({e}):\n{stdout}\nstderr:\n{stderr}"))
}

fn pairs(addr: std::net::SocketAddr, ca: &std::path::Path) -> (Option<i32>, String, String) {
    let addr = addr.to_string();
    bench(&[
        "pairs",
        "--broker",
        &addr,
        "--tls",
        "--tls-ca",
        arg(ca),
        "--pairs",
        "4",
        "--qos",
        "1",
        "--rate",
        "200",
        "--warmup",
        "200ms",
        "--duration",
        "1s",
        "--drain",
        "3s",
        "--json",
    ])
}

#[test]
fn pairs_and_stresser_over_tls_deliver_everything() {
    let pki = Pki::new("bench", "bench");
    let (_broker, addr) = pki.tls_broker();

    let (code, stdout, stderr) = pairs(addr, &pki.ca_file());
    let summary = json(&stdout, &stderr);
    assert_eq!(code, Some(0), "pairs over TLS failed:\n{stdout}\n{stderr}");
    assert_eq!(summary["publishers_connected"], 4, "{stdout}");
    assert_eq!(summary["subscribers_connected"], 4, "{stdout}");
    let sent = summary["sent"].as_u64().expect("sent");
    // 4 publishers at 200 msg/s for 1.2 s: some 960.
    assert!(sent >= 500, "only {sent} sent:\n{stdout}");
    assert_eq!(summary["received"].as_u64(), Some(sent), "{stdout}");
    assert_eq!(summary["acked"].as_u64(), Some(sent), "{stdout}");
    assert_eq!(summary["missing"], 0, "{stdout}");
    assert_eq!(summary["errors"], 0, "{stdout}");
    assert!(
        summary["broker"]
            .as_str()
            .is_some_and(|b| b.ends_with("(tls)")),
        "{stdout}"
    );

    let addr_text = addr.to_string();
    let (code, stdout, stderr) = bench(&[
        "stresser",
        "-broker",
        &addr_text,
        "--tls",
        "--tls-ca",
        arg(&pki.ca_file()),
        "--tls-server-name",
        "localhost",
        "-num-clients",
        "3",
        "-num-messages",
        "50",
        "-publisher-qos",
        "1",
        "-subscriber-qos",
        "1",
        "--json",
    ]);
    let report = json(&stdout, &stderr);
    assert_eq!(
        code,
        Some(0),
        "stresser over TLS failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(report["expected"], 150, "{stdout}");
    assert_eq!(report["received"], 150, "{stdout}");
    assert_eq!(report["errors"], 0, "{stdout}");
}

#[test]
fn a_broker_the_ca_does_not_vouch_for_is_refused() {
    let pki = Pki::new("bench-wrong-ca", "bench");
    let other = pki.sibling("other");
    let (_broker, addr) = pki.tls_broker();
    let (code, stdout, stderr) = pairs(addr, &other.ca_file());
    assert_ne!(
        code,
        Some(0),
        "a run trusting another CA succeeded:\n{stdout}"
    );
    assert!(
        stdout.contains("invalid peer certificate") || stderr.contains("invalid peer certificate"),
        "no certificate error reported:\n{stdout}\n{stderr}"
    );

    // A name the certificate does not hold is refused too.
    let (code, stdout, stderr) = bench(&[
        "stresser",
        "-broker",
        &addr.to_string(),
        "--tls",
        "--tls-ca",
        arg(&pki.ca_file()),
        "--tls-server-name",
        "elsewhere.example",
        "-num-clients",
        "1",
        "-num-messages",
        "1",
        "--json",
    ]);
    assert_ne!(code, Some(0), "a wrong server name was accepted:\n{stdout}");
    assert!(
        stdout.contains("not valid for name") || stderr.contains("not valid for name"),
        "no name error reported:\n{stdout}\n{stderr}"
    );

    // An unreadable CA file stops the start, naming the flag.
    let (code, _, stderr) = bench(&["pairs", "--tls", "--tls-ca", "/nonexistent/ca.pem"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--tls-ca") && stderr.contains("/nonexistent/ca.pem"),
        "{stderr}"
    );
}
