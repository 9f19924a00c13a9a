//! Command line and TOML configuration: bad input is refused by name, TOML
//! keys apply, flags override TOML, and the limits the flags set are
//! enforced on the wire; cluster settings are checked at start, and
//! `ringmq cluster-certs` writes certificates.

mod common;

use std::time::Duration;

use common::raw::{Raw, RecvError};
use common::wire::{self, Connect, Prop, Pub};
use common::{Broker, QUIET, RECV_TIMEOUT, run_to_exit};

#[test]
fn unknown_flag_is_refused_by_name() {
    let out = run_to_exit(&["--no-such-flag", "1"], None);
    assert!(!out.status.success(), "exit status {}", out.status);
    assert!(
        out.stderr.contains("--no-such-flag"),
        "stderr does not name the flag:\n{}",
        out.stderr
    );
}

#[test]
fn unknown_toml_key_is_refused_by_name() {
    let out = run_to_exit(&[], Some("cores = 1\nno_such_key = 5\n"));
    assert!(!out.status.success(), "exit status {}", out.status);
    assert!(
        out.stderr.contains("no_such_key"),
        "stderr does not name the key:\n{}",
        out.stderr
    );
}

#[test]
fn bad_flag_values_are_refused_by_name() {
    for (args, name) in [
        (&["--cores", "abc"][..], "cores"),
        (&["--io-driver", "carrier-pigeon"], "io-driver"),
        (&["--queue-full-policy", "sometimes"], "queue-full-policy"),
        (&["--log-level", "loud"], "log-level"),
        (&["--max-inflight", "-3"], "max-inflight"),
        (&["--max-packet-size", "big"], "max-packet-size"),
    ] {
        let out = run_to_exit(args, None);
        assert!(!out.status.success(), "{args:?} exit status {}", out.status);
        assert!(
            out.stderr.contains(name),
            "{args:?}: stderr does not name {name}:\n{}",
            out.stderr
        );
    }
}

#[test]
fn bad_toml_value_is_refused_by_name() {
    let out = run_to_exit(&[], Some("max_keepalive = \"forever\"\n"));
    assert!(!out.status.success(), "exit status {}", out.status);
    assert!(out.stderr.contains("max_keepalive"), "{}", out.stderr);
}

#[test]
fn missing_config_file_is_an_error() {
    let out = run_to_exit(&["--config", "/nonexistent/ringmq.toml"], None);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("/nonexistent/ringmq.toml"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn every_documented_toml_key_is_accepted() {
    let broker = Broker::start_with_config(
        r#"
cores = 2
io_driver = "auto"
log_level = "info"
max_inflight = 50
max_queued_messages = 500
queue_full_policy = "drop"
max_keepalive = 120
max_packet_size = 65536
"#,
        &[],
    );
    let (mut raw, _) = Raw::connect_ok(broker.addr, Connect::v4("all-keys")).await;
    raw.send(&wire::pingreq()).await;
    raw.recv_kind(wire::PINGRESP).await;
}

async fn server_keep_alive(broker: &Broker) -> Option<Prop> {
    let (_raw, connack) = Raw::connect_ok(broker.addr, Connect::v5("ska").keep_alive(1000)).await;
    connack.prop(wire::SERVER_KEEP_ALIVE).cloned()
}

#[tokio::test]
async fn toml_value_is_applied() {
    let broker = Broker::start_with_config("max_keepalive = 30\n", &[]);
    assert_eq!(server_keep_alive(&broker).await, Some(Prop::U16(30)));
}

#[tokio::test]
async fn flag_overrides_toml() {
    let broker = Broker::start_with_config("max_keepalive = 30\n", &["--max-keepalive", "20"]);
    assert_eq!(server_keep_alive(&broker).await, Some(Prop::U16(20)));
}

#[tokio::test]
async fn epoll_driver_serves_clients() {
    let broker = Broker::start(&["--io-driver", "epoll", "--cores", "2"]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v5("epoll-sub")).await;
    sub.subscribe(1, &[("epoll/t", 1)]).await;
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v5("epoll-pub")).await;
    publisher
        .publish(Pub::new("epoll/t", b"via epoll").qos(1, 1))
        .await;
    assert_eq!(sub.recv_publish().await.payload, b"via epoll");
}

#[tokio::test]
async fn log_level_debug_still_announces_listening() {
    // Broker::start itself fails if the listening line is missing.
    let broker = Broker::start(&["--log-level", "debug"]);
    let (_raw, _) = Raw::connect_ok(broker.addr, Connect::v4("debug-logs")).await;
}

#[tokio::test]
async fn max_packet_size_is_enforced() {
    let broker = Broker::start(&["--max-packet-size", "1024"]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v5("mps-sub")).await;
    sub.subscribe(1, &[("mps/#", 0)]).await;

    let (mut small, _) = Raw::connect_ok(broker.addr, Connect::v5("mps-small")).await;
    small
        .publish(Pub::new("mps/ok", &[b's'; 500]).qos(1, 1))
        .await;
    assert_eq!(sub.recv_publish().await.payload.len(), 500);

    for version in [wire::V4, wire::V5] {
        let (mut big, _) = Raw::connect_ok(
            broker.addr,
            Connect::new(version, &format!("mps-big-{version}")),
        )
        .await;
        big.send_lossy(&Pub::new("mps/big", &[b'b'; 4000]).qos(1, 1).encode(version))
            .await;
        let seen = big.expect_closed(RECV_TIMEOUT).await;
        for p in &seen {
            assert_eq!(p.kind(), wire::DISCONNECT, "v{version}: unexpected {p:?}");
            assert_eq!(p.disconnect_reason(), 0x95, "Packet too large");
        }
    }
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn max_inflight_limits_unacked_deliveries() {
    let broker = Broker::start(&["--max-inflight", "5"]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4("inflight-sub")).await;
    sub.subscribe(1, &[("inflight/t", 1)]).await;
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("inflight-pub")).await;
    for i in 0..20u16 {
        publisher
            .publish(Pub::new("inflight/t", format!("{i}").as_bytes()).qos(1, i + 1))
            .await;
    }
    let mut held = Vec::new();
    loop {
        match sub.try_recv(Duration::from_secs(1)).await {
            Ok(p) => held.push(p.publish(wire::V4)),
            Err(RecvError::Timeout) => break,
            Err(RecvError::Closed) => panic!("subscriber closed"),
        }
    }
    assert_eq!(
        held.len(),
        5,
        "exactly --max-inflight unacked QoS 1 deliveries"
    );
    // Acking one releases exactly one more, the next in order.
    sub.send(&wire::ack(wire::PUBACK, held[0].pkid)).await;
    let next = sub.recv_publish().await;
    assert_eq!(next.payload, b"5");
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn max_queued_messages_bounds_offline_queue() {
    let broker = Broker::start(&["--max-queued-messages", "5", "--max-inflight", "1"]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4("mq-sub").clean(false)).await;
    sub.subscribe(1, &[("mq/t", 1)]).await;
    sub.send(&wire::disconnect_v4()).await;
    sub.expect_closed(RECV_TIMEOUT).await;

    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("mq-pub")).await;
    for i in 0..50u16 {
        publisher
            .publish(Pub::new("mq/t", format!("{i}").as_bytes()).qos(1, i + 1))
            .await;
    }
    let (mut sub, connack) = Raw::connect_ok(broker.addr, Connect::v4("mq-sub").clean(false)).await;
    assert!(connack.session_present);
    let mut received = 0;
    while let Ok(p) = sub.try_recv(Duration::from_secs(1)).await {
        let p = p.publish(wire::V4);
        sub.send(&wire::ack(wire::PUBACK, p.pkid)).await;
        received += 1;
    }
    assert!(
        (1..=6).contains(&received),
        "queue of 5 (+1 in flight) delivered {received} of 50"
    );
}

#[tokio::test]
async fn default_max_packet_size_is_one_mebibyte() {
    let broker = Broker::start(&[]);
    let (mut sub, _) = Raw::connect_ok(broker.addr, Connect::v4("dmps-sub")).await;
    sub.subscribe(1, &[("dmps/#", 0)]).await;
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("dmps-pub")).await;
    // 1,000,000 bytes of payload: the packet is under 1,048,576 bytes.
    publisher
        .publish(Pub::new("dmps/ok", &vec![b'a'; 1_000_000]).qos(1, 1))
        .await;
    assert_eq!(sub.recv_publish().await.payload.len(), 1_000_000);
    // 1,100,000 bytes: over the default limit.
    publisher
        .send_lossy(
            &Pub::new("dmps/big", &vec![b'b'; 1_100_000])
                .qos(1, 2)
                .encode(wire::V4),
        )
        .await;
    let seen = publisher.expect_closed(RECV_TIMEOUT).await;
    assert!(
        seen.iter().all(|p| p.kind() != wire::PUBACK),
        "oversized packet acknowledged: {seen:?}"
    );
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn each_listen_address_is_announced_and_served() {
    let broker = Broker::start(&["--listen", "127.0.0.1:0"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let addrs = loop {
        let addrs = broker.listen_addrs();
        if addrs.len() >= 2 || std::time::Instant::now() > deadline {
            break addrs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        addrs.len(),
        2,
        "one `listening` line per --listen:\n{}",
        broker.logs()
    );
    assert_ne!(addrs[0], addrs[1]);
    // A message crosses from one listener to the other.
    let (mut sub, _) = Raw::connect_ok(addrs[0], Connect::v4("two-listeners-sub")).await;
    sub.subscribe(1, &[("listen/t", 0)]).await;
    let (mut publisher, _) = Raw::connect_ok(addrs[1], Connect::v4("two-listeners-pub")).await;
    publisher.publish(Pub::new("listen/t", b"across")).await;
    assert_eq!(sub.recv_publish().await.payload, b"across");
}

#[tokio::test]
async fn json_log_format_writes_one_object_per_line_with_the_connect_fields() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--log-format",
            "json",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringmq");
    let stderr = child.stderr.take().expect("stderr piped");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let value = serde_json::from_str(&line)
                .unwrap_or_else(|error| panic!("not a JSON log line ({error}): {line}"));
            if lines_tx.send(value).is_err() {
                return;
            }
        }
    });
    let next_with = |message: &str| loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no `{message}` log line"));
        if line["fields"]["message"] == message {
            return line;
        }
    };

    let listening = next_with("listening");
    let addr = listening["fields"]["addr"]
        .as_str()
        .expect("addr field")
        .parse()
        .expect("a socket address");
    let (raw, _) = Raw::connect_ok(addr, Connect::v5("json-logged")).await;
    let connected = next_with("client connected");
    assert_eq!(connected["fields"]["client"], "json-logged");
    assert_eq!(connected["fields"]["version"], 5);
    assert_eq!(
        connected["fields"]["peer"],
        raw.local_addr().to_string(),
        "the client's own address"
    );
    drop(raw);
    let disconnected = next_with("client disconnected");
    assert_eq!(disconnected["fields"]["client"], "json-logged");
    assert_eq!(disconnected["fields"]["version"], 5);
    assert!(disconnected["fields"]["reason"].is_string());
    let _ = child.kill();
    let _ = child.wait();
}

/// A path under the system temp directory for this test process, removed
/// (file or directory) when dropped.
struct TempPath(std::path::PathBuf);

impl TempPath {
    fn new(name: &str) -> TempPath {
        let path = std::env::temp_dir().join(format!("ringmq-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        let _ = std::fs::remove_file(&path);
        TempPath(path)
    }

    fn with_contents(name: &str, contents: &str) -> TempPath {
        let path = TempPath::new(name);
        std::fs::write(&path.0, contents).expect("temp dir is writable");
        path
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("temp path is UTF-8")
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn bad_cluster_values_are_refused_by_name() {
    // A valid secret, so that each case fails on its own value only.
    let secret = TempPath::with_contents("secret", "0123456789abcdef0123\n");
    let short = TempPath::with_contents("short-secret", "too short\n");
    let trusted = ["--cluster-secret-file", secret.arg()];
    let listen = ["--cluster-listen", "127.0.0.1:7883"];
    let long_id = "x".repeat(65);
    let cases: &[(Vec<&str>, Option<&str>, &str)] = &[
        (
            [&listen[..], &trusted, &["--node-id", "no spaces"]].concat(),
            None,
            "cluster.node_id",
        ),
        (
            [
                &trusted[..],
                &["--node-id", &long_id, "--cluster-listen", "127.0.0.1:1"],
            ]
            .concat(),
            None,
            "cluster.node_id",
        ),
        (
            [&trusted[..], &["--cluster-listen", "0.0.0.0:7883"]].concat(),
            None,
            "cluster.advertise",
        ),
        (
            [
                &listen[..],
                &trusted,
                &["--cluster-advertise", "0.0.0.0:7883"],
            ]
            .concat(),
            None,
            "cluster.advertise",
        ),
        (
            [&listen[..], &trusted, &["--seeds", "node-2:7883,node-3"]].concat(),
            None,
            "cluster.seeds",
        ),
        (
            trusted.to_vec(),
            Some("[cluster]\nlisten = \"127.0.0.1:7883\"\nseeds = [\"[::1]\"]\n"),
            "cluster.seeds",
        ),
        (
            [&listen[..], &trusted, &["--cluster-probe-interval-ms", "0"]].concat(),
            None,
            "cluster.probe_interval_ms",
        ),
        (
            trusted.to_vec(),
            Some("[cluster]\nlisten = \"127.0.0.1:7883\"\nsuspect_timeout_ms = 0\n"),
            "cluster.suspect_timeout_ms",
        ),
        (
            trusted.to_vec(),
            Some("[cluster]\nlisten = \"127.0.0.1:7883\"\nack = \"sometimes\"\n"),
            "ack",
        ),
        (
            [&listen[..], &trusted, &["--cluster-ack", "sometimes"]].concat(),
            None,
            "cluster-ack",
        ),
        (
            vec!["--cluster-listen", "localhost:7883"],
            None,
            "cluster-listen",
        ),
        (vec!["--seeds", "node-2:7883"], None, "cluster.seeds"),
        (
            vec![],
            Some("[cluster]\npeer_hold_secs = 10\n"),
            "cluster.peer_hold_secs",
        ),
        (
            [
                &listen[..],
                &["--cluster-ca-file", "ca.pem", "--cluster-key-file", "n.key"],
            ]
            .concat(),
            None,
            "cluster.cert_file",
        ),
        (
            [&listen[..], &["--cluster-secret-file", short.arg()]].concat(),
            None,
            "cluster.secret_file",
        ),
        (
            [
                &listen[..],
                &["--cluster-secret-file", "/nonexistent/secret"],
            ]
            .concat(),
            None,
            "cluster.secret_file",
        ),
        (
            vec![],
            Some("[cluster]\nlisten = \"127.0.0.1:7883\"\nno_such_key = 1\n"),
            "no_such_key",
        ),
    ];
    for (args, toml, name) in cases {
        let out = run_to_exit(args, *toml);
        assert!(
            !out.status.success(),
            "{args:?} {toml:?} exit status {}",
            out.status
        );
        assert!(
            out.stderr.contains(name),
            "{args:?} {toml:?}: stderr does not name {name}:\n{}",
            out.stderr
        );
    }
}

#[test]
fn cluster_mode_without_trust_names_both_options() {
    let out = run_to_exit(&["--cluster-listen", "127.0.0.1:7883"], None);
    assert!(!out.status.success(), "exit status {}", out.status);
    for option in [
        "cluster.ca_file",
        "cluster.cert_file",
        "cluster.key_file",
        "cluster.secret_file",
        "RINGMQ_CLUSTER_SECRET",
    ] {
        assert!(out.stderr.contains(option), "no {option}:\n{}", out.stderr);
    }
}

#[test]
fn cluster_mode_with_both_kinds_of_trust_is_refused() {
    let secret = TempPath::with_contents("both-secret", "0123456789abcdef0123\n");
    let out = run_to_exit(
        &[
            "--cluster-listen",
            "127.0.0.1:7883",
            "--cluster-secret-file",
            secret.arg(),
        ],
        Some("[cluster]\nca_file = \"ca.pem\"\ncert_file = \"n.pem\"\nkey_file = \"n.key\"\n"),
    );
    assert!(!out.status.success(), "exit status {}", out.status);
    assert!(out.stderr.contains("both"), "{}", out.stderr);
    assert!(out.stderr.contains("cluster.secret_file"), "{}", out.stderr);
}

#[test]
fn cluster_certs_writes_files_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    let dir = TempPath::new("certs");
    let run = |nodes: &str| {
        Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["cluster-certs", "--out", dir.arg(), "--nodes", nodes])
            .output()
            .expect("run ringmq cluster-certs")
    };
    let out = run("n1,n2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let expected: Vec<String> = ["ca.pem", "ca.key", "n1.pem", "n1.key", "n2.pem", "n2.key"]
        .iter()
        .map(|name| dir.0.join(name).display().to_string())
        .collect();
    assert_eq!(printed, expected, "one written path a line");
    for path in &expected {
        let text = std::fs::read_to_string(path).expect("written");
        let mode = std::fs::metadata(path)
            .expect("written")
            .permissions()
            .mode();
        if path.ends_with(".key") {
            assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{path}");
            assert_eq!(mode & 0o077, 0, "{path} is readable by others");
        } else {
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{path}");
        }
    }
    let ca_key = std::fs::read(dir.0.join("ca.key")).expect("written");

    let again = run("n3");
    assert!(!again.status.success(), "overwrote ca.pem");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("ca.pem") && stderr.contains("exists"),
        "{stderr}"
    );
    assert!(!dir.0.join("n3.pem").exists(), "wrote part of a set");
    assert_eq!(std::fs::read(dir.0.join("ca.key")).expect("kept"), ca_key);

    let bad = run("ok,not/a/name");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not/a/name"));
}

#[test]
fn broker_flags_do_not_mix_with_a_subcommand() {
    // run_to_exit passes --listen first.
    let out = run_to_exit(
        &["cluster-certs", "--out", "/nonexistent", "--nodes", "a"],
        None,
    );
    assert!(!out.status.success(), "exit status {}", out.status);
    assert!(out.stderr.contains("cluster-certs"), "{}", out.stderr);
}
