//! A real Prometheus server scrapes the broker, and a latency quantile is
//! computed from the exported buckets: proof that the exposition is what
//! Prometheus parses and that the buckets make sense to
//! `histogram_quantile`.
//!
//! Needs Debian's `prometheus` package (`/usr/bin/prometheus`), which
//! `.ci/run` installs. Elsewhere the test says it is skipped and passes,
//! unless `CI` is set, where a missing binary is a failure.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Broker;
use common::clients::v4;
use common::http::get;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const QUERY: &str =
    "histogram_quantile(0.99, sum(rate(ringmq_publish_latency_seconds_bucket[30s])) by (le))";
/// Scrapes happen every second; a rate needs two in its window, and the
/// server needs a few seconds to start.
const DEADLINE: Duration = Duration::from_secs(60);

/// The Prometheus server, killed and its data removed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("ringmq-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("temp dir is writable");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: ringmq\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("temp dir is writable");
        let addr = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start prometheus");
        Prometheus { child, dir, addr }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The query's single value, if the server answers with one.
    fn query(&self, query: &str) -> Option<String> {
        if TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_err() {
            return None; // not listening yet
        }
        let (status, body) = get(self.addr, &format!("/api/v1/query?query={}", encode(query)));
        if status != 200 {
            return None;
        }
        // The one sample of a vector result: "value":[<time>,"<value>"].
        let value = body.split("\"value\":[").nth(1)?;
        let value = value.split(",\"").nth(1)?;
        Some(value.split('"').next()?.to_owned())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("bound")
}

/// Percent-encodes everything but unreserved characters.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_computes_a_finite_p99_publish_latency() {
    if !Path::new(PROMETHEUS).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{PROMETHEUS} is missing; .ci/run installs the prometheus package"
        );
        eprintln!("skipped: {PROMETHEUS} not installed (apt-get install prometheus)");
        return;
    }
    let broker = Broker::start(&["--cores", "2", "--metrics-listen", "127.0.0.1:0"]);
    let prometheus = Prometheus::start(broker.metrics_addr());

    let mut subscriber = v4::Client::simple(broker.addr, "prom-sub").await;
    subscriber.subscribe("load/#", v4::QoS::AtMostOnce).await;
    let mut publisher = v4::Client::simple(broker.addr, "prom-pub").await;

    // Bounded: at most DEADLINE of 20 messages every 100 ms, to the
    // broker on loopback only.
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < DEADLINE {
        for n in 0..20u8 {
            publisher
                .publish("load/t", v4::QoS::AtLeastOnce, false, &[n; 32])
                .await;
        }
        for _ in 0..20 {
            subscriber.next_publish().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let value = tokio::task::block_in_place(|| prometheus.query(QUERY));
        if let Some(value) = &value
            && value.parse::<f64>().is_ok_and(f64::is_finite)
        {
            let p99: f64 = value.parse().expect("checked");
            assert!(p99 > 0.0 && p99 <= 10.0, "p99 publish latency {p99}");
            return;
        }
        last = value;
    }
    panic!(
        "no finite p99 from prometheus within {DEADLINE:?} (last answer {last:?}); log:\n{}",
        prometheus.log()
    );
}
