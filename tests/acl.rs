//! `acl_file` against the real binary, with raw clients for the exact
//! codes in 3.1.1 and 5.0 and mosquitto_pub/sub as real clients: PUBLISH
//! refused (0x87, or acknowledged and dropped), SUBSCRIBE filters refused
//! one by one (0x87 / 0x80), deliveries filtered per topic for wildcard
//! subscriptions, retained messages and wills, %u and %c patterns, SIGHUP
//! reloads (sessions connected before see the new rules), start-up
//! refusals naming the key and line, and the denial counters.
//!
//! No password file: user names are not checked, so each test picks the
//! user it needs.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::http::{get, sample};
use common::raw::Raw;
use common::wire::{self, Connect, Pub, V4, V5, Will};
use common::{Broker, QUIET, RECV_TIMEOUT, run_to_exit, unique_id, write_temp_config};

const NOT_AUTHORIZED: u8 = 0x87;
/// 3.1.1 SUBACK's only refusal; also its CONNACK return code 5.
const V4_FAILURE: u8 = 0x80;
const V4_CONNACK_NOT_AUTHORIZED: u8 = 5;

const ACL: &str = "\
# anonymous clients
topic read public/#

user root
topic readwrite #

user alice
topic readwrite alice/#
topic read sensors/#
topic deny sensors/secret

user bob
topic read retained/#
topic deny retained/hidden
topic read will/#
topic deny will/secret

pattern readwrite devices/%c/#
pattern read inbox/%u
";

/// An ACL file under the temp dir, removed on drop.
struct AclFile(PathBuf);

impl AclFile {
    fn new(text: &str) -> AclFile {
        AclFile(write_temp_config(text))
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8")
    }
}

impl Drop for AclFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn start(acl: &AclFile) -> Broker {
    Broker::start(&["--acl-file", acl.arg(), "--metrics-listen", "127.0.0.1:0"])
}

/// A connected raw client of `user` (anonymous if `None`).
async fn client(broker: &Broker, version: u8, user: Option<&str>, id: &str) -> Raw {
    let mut connect = Connect::new(version, id);
    if let Some(user) = user {
        connect = connect.username(user);
    }
    Raw::connect_ok(broker.addr, connect).await.0
}

/// The reason code of the PUBACK or PUBREC answering a QoS 1 or 2 PUBLISH.
async fn publish_answer(raw: &mut Raw, version: u8, topic: &str, qos: u8, pkid: u16) -> u8 {
    raw.send(&Pub::new(topic, b"x").qos(qos, pkid).encode(version))
        .await;
    let kind = if qos == 1 { wire::PUBACK } else { wire::PUBREC };
    let (got, reason) = raw.recv_kind(kind).await.ack();
    assert_eq!(got, pkid);
    reason
}

/// Topics received until `QUIET` passes with nothing.
async fn topics(raw: &mut Raw, version: u8) -> Vec<String> {
    let mut topics = Vec::new();
    while let Ok(packet) = raw.try_recv(QUIET).await {
        let publish = packet.publish(version);
        if publish.qos == 1 {
            raw.send(&wire::ack(wire::PUBACK, publish.pkid)).await;
        }
        topics.push(publish.topic);
    }
    topics
}

fn denied(broker: &Broker, kind: &str) -> f64 {
    let (_, text) = get(broker.metrics_addr(), "/metrics");
    sample(
        &text,
        &format!("ringmq_acl_denied_total{{kind=\"{kind}\"}}"),
    )
}

#[tokio::test]
async fn a_publish_outside_the_acl_is_refused_in_v5_and_dropped_in_3_1_1() {
    let acl = AclFile::new(ACL);
    let broker = start(&acl);
    let mut watcher = client(&broker, V5, Some("root"), &unique_id("watch")).await;
    assert_eq!(watcher.subscribe(1, &[("#", 1)]).await, [1]);

    let mut v5 = client(&broker, V5, Some("alice"), &unique_id("alice5")).await;
    v5.send(&Pub::new("public/q0", b"x").encode(V5)).await;
    assert_eq!(
        publish_answer(&mut v5, V5, "public/q1", 1, 1).await,
        NOT_AUTHORIZED
    );
    assert_eq!(
        publish_answer(&mut v5, V5, "public/q2", 2, 2).await,
        NOT_AUTHORIZED
    );
    // Allowed, and after the refused ones: the watcher sees only it.
    assert_eq!(publish_answer(&mut v5, V5, "alice/ok5", 1, 3).await, 0);

    // 3.1.1 has no reason to give: the flows complete as usual.
    let mut v4 = client(&broker, V4, Some("alice"), &unique_id("alice4")).await;
    v4.publish(Pub::new("public/q0", b"x")).await;
    v4.publish(Pub::new("public/q1", b"x").qos(1, 1)).await;
    v4.publish(Pub::new("public/q2", b"x").qos(2, 2)).await;
    v4.publish(Pub::new("alice/ok4", b"x").qos(1, 3)).await;

    assert_eq!(topics(&mut watcher, V5).await, ["alice/ok5", "alice/ok4"]);
    assert_eq!(denied(&broker, "publish"), 6.0);
}

#[tokio::test]
async fn subscribe_filters_are_refused_one_by_one() {
    let acl = AclFile::new(ACL);
    let broker = start(&acl);
    let filters = [
        ("sensors/#", 1),
        ("sensors/secret", 1),
        ("public/#", 1),
        ("alice/+", 1),
        ("#", 0),
        ("$share/g/alice/x", 1),
        ("$share/g/public/x", 1),
    ];
    let no = NOT_AUTHORIZED;
    let mut v5 = client(&broker, V5, Some("alice"), &unique_id("sub5")).await;
    assert_eq!(v5.subscribe(1, &filters).await, [1, no, no, 1, no, 1, no]);
    let mut v4 = client(&broker, V4, Some("alice"), &unique_id("sub4")).await;
    let no = V4_FAILURE;
    assert_eq!(v4.subscribe(1, &filters[..5]).await, [1, no, no, 1, no]);
    assert_eq!(denied(&broker, "subscribe"), 7.0);
}

#[tokio::test]
async fn a_wildcard_subscription_gets_only_the_topics_it_may_read() {
    let acl = AclFile::new(ACL);
    let broker = start(&acl);
    let mut alice = client(&broker, V5, Some("alice"), &unique_id("alice")).await;
    assert_eq!(alice.subscribe(1, &[("sensors/#", 1)]).await, [1]);
    let mut alice4 = client(&broker, V4, Some("alice"), &unique_id("alice4")).await;
    assert_eq!(alice4.subscribe(1, &[("sensors/+", 0)]).await, [0]);
    let mut root = client(&broker, V5, Some("root"), &unique_id("root")).await;
    for topic in ["sensors/a", "sensors/secret", "sensors/b"] {
        root.publish(Pub::new(topic, b"x").qos(1, 1)).await;
    }
    assert_eq!(topics(&mut alice, V5).await, ["sensors/a", "sensors/b"]);
    assert_eq!(topics(&mut alice4, V4).await, ["sensors/a", "sensors/b"]);
    assert_eq!(denied(&broker, "deliver"), 2.0);
}

#[tokio::test]
async fn retained_messages_and_wills_follow_the_receivers_read_rules() {
    let acl = AclFile::new(ACL);
    let broker = start(&acl);
    let mut root = client(&broker, V5, Some("root"), &unique_id("root")).await;
    for topic in ["retained/hidden", "retained/open"] {
        root.publish(Pub::new(topic, b"r").qos(1, 1).retain()).await;
    }
    let mut bob = client(&broker, V5, Some("bob"), &unique_id("bob")).await;
    assert_eq!(
        bob.subscribe(1, &[("retained/#", 1), ("will/#", 1)]).await,
        [1, 1]
    );
    assert_eq!(topics(&mut bob, V5).await, ["retained/open"]);

    for topic in ["will/secret", "will/open"] {
        let connect = Connect::v5(&unique_id("dying"))
            .username("root")
            .will(Will::new(topic, b"bye").qos(1));
        let (dying, _) = Raw::connect_ok(broker.addr, connect).await;
        dying.drop_abruptly();
    }
    assert_eq!(topics(&mut bob, V5).await, ["will/open"]);

    // A will its client may not publish refuses the CONNECT, as Mosquitto.
    for (version, code) in [(V5, NOT_AUTHORIZED), (V4, V4_CONNACK_NOT_AUTHORIZED)] {
        let connect =
            Connect::new(version, &unique_id("will")).will(Will::new("public/will", b"bye"));
        let (mut raw, connack) = Raw::connect(broker.addr, connect).await;
        assert_eq!(connack.code, code);
        raw.expect_closed(RECV_TIMEOUT).await;
    }
}

#[tokio::test]
async fn patterns_substitute_the_client_id_and_the_user_name() {
    let acl = AclFile::new(ACL);
    let broker = start(&acl);
    let mut device = client(&broker, V5, None, "dev1").await;
    assert_eq!(
        publish_answer(&mut device, V5, "devices/dev1/state", 1, 1).await,
        0
    );
    assert_eq!(
        publish_answer(&mut device, V5, "devices/dev2/state", 1, 2).await,
        NOT_AUTHORIZED
    );
    assert_eq!(
        device
            .subscribe(3, &[("devices/dev1/#", 1), ("devices/+/state", 1)])
            .await,
        [1, NOT_AUTHORIZED]
    );
    let mut carol = client(&broker, V5, Some("carol"), &unique_id("carol")).await;
    assert_eq!(
        carol
            .subscribe(1, &[("inbox/carol", 0), ("inbox/dave", 0)])
            .await,
        [0, NOT_AUTHORIZED]
    );
    // An empty client id is assigned before the will is checked: %c is the
    // assigned id, never empty.
    let connect = Connect::v5("").will(Will::new("devices//x", b"bye"));
    let (_, connack) = Raw::connect(broker.addr, connect).await;
    assert_eq!(connack.code, NOT_AUTHORIZED);
    // %u never matches an anonymous client.
    let mut anonymous = client(&broker, V5, None, &unique_id("anon")).await;
    assert_eq!(
        anonymous.subscribe(1, &[("inbox/+", 0)]).await,
        [NOT_AUTHORIZED]
    );
}

#[tokio::test]
async fn sighup_reloads_the_file_for_sessions_already_connected() {
    let acl = AclFile::new("user alice\ntopic read sensors/#\nuser root\ntopic #\n");
    let broker = start(&acl);
    let mut alice = client(&broker, V5, Some("alice"), &unique_id("alice")).await;
    assert_eq!(alice.subscribe(1, &[("sensors/#", 0)]).await, [0]);
    let mut root = client(&broker, V5, Some("root"), &unique_id("root")).await;
    root.publish(Pub::new("sensors/a", b"x").qos(1, 1)).await;
    assert_eq!(topics(&mut alice, V5).await, ["sensors/a"]);

    std::fs::write(
        &acl.0,
        "user alice\ntopic read other/#\nuser root\ntopic #\n",
    )
    .expect("writable");
    broker.signal(libc::SIGHUP);
    broker.wait_for_log("acl file reloaded", 1);
    root.publish(Pub::new("sensors/b", b"x").qos(1, 2)).await;
    assert!(topics(&mut alice, V5).await.is_empty(), "revoked");
    assert_eq!(
        alice.subscribe(2, &[("sensors/#", 0)]).await,
        [NOT_AUTHORIZED]
    );

    // A bad file is logged, naming the line, and the one before kept.
    std::fs::write(&acl.0, "user alice\ntopic reed sensors/#\n").expect("writable");
    broker.signal(libc::SIGHUP);
    broker.wait_for_log("invalid acl file; keeping the one loaded before", 1);
    assert!(broker.logs().contains("line 2"), "{}", broker.logs());
    assert_eq!(alice.subscribe(3, &[("other/#", 0)]).await, [0]);
    root.publish(Pub::new("other/c", b"x").qos(1, 3)).await;
    assert_eq!(topics(&mut alice, V5).await, ["other/c"]);
}

#[test]
fn a_bad_file_stops_the_start_naming_the_key_and_line() {
    let acl = AclFile::new("user alice\n\ntopic readwrite a/#/b\n");
    let out = run_to_exit(&["--acl-file", acl.arg()], None);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("invalid `acl_file` (--acl-file)") && out.stderr.contains("line 3"),
        "{}",
        out.stderr
    );
    let out = run_to_exit(&[], Some(&format!("acl_file = {:?}\n", acl.arg())));
    assert!(!out.status.success());
    assert!(out.stderr.contains("line 3"), "{}", out.stderr);
}

/// Mosquitto's own clients, 3.1.1 and 5.0: a wildcard subscriber gets the
/// readable topic and not the denied one, and mosquitto_pub's refused
/// publish does not reach it.
#[tokio::test]
async fn mosquitto_clients_see_the_same_rules() {
    let acl = AclFile::new(ACL);
    let broker = start(&acl);
    let port = broker.addr.port().to_string();
    let mosquitto_pub = |version: &str, user: &str, topic: &str| {
        let out = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-q", "1"])
            .args(["-u", user, "-t", topic, "-m", topic])
            .output()
            .expect("mosquitto_pub runs (mosquitto-clients)");
        assert!(out.status.success(), "{out:?}");
    };
    for version in ["mqttv311", "mqttv5"] {
        let sub = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-u", "alice"])
            .args(["-t", "sensors/#", "-C", "1", "-W", "10", "-v"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub runs");
        // The subscription must be in place before the publishes (and the
        // last round's gone); the log has no line for it, so the broker's
        // subscription gauge is watched.
        wait_for_subscriptions(&broker, 1).await;
        // Refused for alice (mosquitto_pub exits 0 whatever the PUBACK
        // says), then unreadable for alice, then readable.
        mosquitto_pub(version, "alice", "sensors/mine");
        mosquitto_pub(version, "root", "sensors/secret");
        mosquitto_pub(version, "root", "sensors/open");
        let got = sub.wait_with_output().expect("mosquitto_sub ends");
        assert_eq!(
            String::from_utf8_lossy(&got.stdout).trim(),
            "sensors/open sensors/open",
            "{version}"
        );
        wait_for_subscriptions(&broker, 0).await;
    }
}

async fn wait_for_subscriptions(broker: &Broker, n: u32) {
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        let (_, text) = get(broker.metrics_addr(), "/metrics");
        if sample(&text, "ringmq_subscriptions") == f64::from(n) {
            return;
        }
        assert!(Instant::now() < deadline, "never {n} subscriptions");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each node applies its own file to its own clients: a message published
/// on node 0 is filtered on node 1 by node 1's rules, and node 0's
/// subscribers by node 0's. The two nodes share the file's path; only
/// node 1 is told to reload after it changes, so their rules differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_message_is_filtered_by_the_receiving_nodes_acl() {
    let acl = AclFile::new("user root\ntopic #\nuser alice\ntopic read sensors/#\n");
    let cluster = Cluster::start_durable_with(2, &format!("acl_file = {:?}\n", acl.arg()), "");
    std::fs::write(
        &acl.0,
        "user root\ntopic #\nuser alice\ntopic read sensors/#\ntopic deny sensors/secret\n",
    )
    .expect("writable");
    cluster.node(1).signal(libc::SIGHUP);
    cluster.node(1).wait_for_log("acl file reloaded", 1);

    let mut subscribers = Vec::new();
    for node in [0, 1] {
        let connect = Connect::v5(&unique_id("alice")).username("alice");
        let (mut alice, _) = Raw::connect_ok(cluster.addr(node), connect).await;
        assert_eq!(alice.subscribe(1, &[("sensors/#", 1)]).await, [1]);
        subscribers.push(alice);
    }
    let connect = Connect::v5(&unique_id("root")).username("root");
    let (mut root, _) = Raw::connect_ok(cluster.addr(0), connect).await;
    for (n, topic) in ["sensors/secret", "sensors/open"].into_iter().enumerate() {
        root.publish(Pub::new(topic, b"x").qos(1, n as u16 + 1))
            .await;
    }
    assert_eq!(
        topics(&mut subscribers[0], V5).await,
        ["sensors/secret", "sensors/open"],
        "node 0 kept the first file"
    );
    assert_eq!(topics(&mut subscribers[1], V5).await, ["sensors/open"]);
}

/// With a data dir, a persistent session outlives a kill -9 of the broker
/// with its user's read rules: a message published while its client is
/// away after the restart is queued for it (before the user name was kept
/// with the session, it had no rules and got nothing), and one it may not
/// read is not.
#[tokio::test]
async fn a_restored_session_keeps_its_users_read_rules() {
    let acl = AclFile::new(ACL);
    let dir = common::data_dir::DataDir::new("acl-restore");
    let args = ["--acl-file", acl.arg(), "--metrics-listen", "127.0.0.1:0"];
    let broker = dir.start(&args);
    let id = unique_id("kept");
    let persistent = || {
        Connect::new(V5, &id)
            .username("alice")
            .clean(false)
            .props(wire::Props::new().u32(wire::SESSION_EXPIRY, 300))
    };
    let (mut subscriber, _) = Raw::connect_ok(broker.addr, persistent()).await;
    let codes = subscriber.subscribe(1, &[("sensors/#", 1)]).await;
    assert_eq!(codes, [1]);
    subscriber
        .send(&wire::disconnect_v5(0, wire::Props::new()))
        .await;
    common::data_dir::kill(broker);

    let broker = dir.start(&args);
    let mut publisher = client(&broker, V5, Some("root"), &unique_id("root")).await;
    publisher
        .publish(Pub::new("sensors/secret", b"hidden").qos(1, 1))
        .await;
    publisher
        .publish(Pub::new("sensors/t", b"kept").qos(1, 2))
        .await;
    let (mut subscriber, connack) = Raw::connect_ok(broker.addr, persistent()).await;
    assert!(connack.session_present);
    let publish = subscriber.recv_publish().await;
    assert_eq!(
        (publish.topic.as_str(), publish.payload.as_slice()),
        ("sensors/t", &b"kept"[..])
    );
    subscriber
        .send(&wire::ack(wire::PUBACK, publish.pkid))
        .await;
    subscriber.expect_silence(QUIET).await;
    assert_eq!(denied(&broker, "deliver"), 1.0);
    common::data_dir::stop(broker);
}
