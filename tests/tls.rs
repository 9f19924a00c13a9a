//! TLS and mutual TLS client listeners against the real binary, with real
//! clients: mosquitto_pub/sub (`--cafile`, `--cert`/`--key`), paho-mqtt
//! in Python (`tls_set`, over TCP and over WebSocket), rumqttc with
//! rustls, and a rustls client of the test's own that can present any
//! certificate and read the one the broker served. Certificates are made
//! per test with rcgen (tests/common/tls.rs).
//!
//! Two shards throughout, so that some connections finish their handshake
//! on one shard and are served on the other with their TLS session handed
//! over.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::http::{get, sample};
use common::tls::{Pki, TlsClient, arg, client_config};
use common::wire::{self, Connect, Pub, V4, V5};
use common::{Broker, RECV_TIMEOUT, run_to_exit, unique_id};

/// A broker with one `[[listener]]` table of `transport` on a free port,
/// whose other keys are `keys` (TOML lines); returns it and the TLS
/// listener's address.
fn broker_with(transport: &str, keys: &str, args: &[&str]) -> (Broker, SocketAddr) {
    let toml =
        format!("[[listener]]\naddress = \"127.0.0.1:0\"\ntransport = \"{transport}\"\n{keys}\n");
    let mut all = vec!["--cores", "2"];
    all.extend_from_slice(args);
    let broker = Broker::start_with_config(&toml, &all);
    let addr = broker.announced_addr(&format!("transport={transport}"));
    (broker, addr)
}

/// The TOML keys of a listener serving `pki`'s server certificate.
fn cert_keys(cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// `ringmq_tls_handshake_failures_total` by reason, as scraped now.
fn handshake_failures(broker: &Broker) -> impl Fn(&str) -> f64 {
    let (_, metrics) = get(broker.metrics_addr(), "/metrics");
    move |reason| {
        sample(
            &metrics,
            &format!("ringmq_tls_handshake_failures_total{{reason=\"{reason}\"}}"),
        )
    }
}

fn mosquitto(tool: &str, addr: SocketAddr, args: &[&str]) -> Command {
    let mut command = Command::new(tool);
    command
        .args(["-h", "localhost", "-p", &addr.port().to_string()])
        .args(args);
    command
}

fn output(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("{command:?}: {error} (mosquitto-clients installed?)"))
}

/// mosquitto_sub for one message on `topic`, started and subscribed:
/// returns once the broker logged its connection.
fn subscriber(broker: &Broker, addr: SocketAddr, topic: &str, tls: &[&str]) -> std::process::Child {
    let connected = broker.logs().matches("client connected").count();
    let child = mosquitto("mosquitto_sub", addr, tls)
        .args(["-t", topic, "-C", "1", "-W", "10", "-q", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs (mosquitto-clients installed?)");
    broker.wait_for_log("client connected", connected + 1);
    // The SUBSCRIBE follows the CONNACK at once; give it the moment it takes.
    std::thread::sleep(Duration::from_millis(300));
    child
}

#[test]
fn mosquitto_clients_speak_mqtt_over_tls_at_both_versions() {
    let pki = Pki::new("mosquitto", "m");
    let (broker, addr) = pki.tls_broker();
    let ca = pki.ca_file();
    for version in ["mqttv311", "mqttv5"] {
        let tls = ["--cafile", arg(&ca), "-V", version];
        let sub = subscriber(&broker, addr, "tls/m", &tls);
        let publish = output(mosquitto("mosquitto_pub", addr, &tls).args([
            "-t",
            "tls/m",
            "-q",
            "1",
            "-m",
            &format!("over tls {version}"),
        ]));
        assert!(publish.status.success(), "{publish:?}");
        let got = sub.wait_with_output().expect("mosquitto_sub ends");
        assert_eq!(
            String::from_utf8_lossy(&got.stdout).trim(),
            format!("over tls {version}"),
            "{got:?}"
        );
    }
    // TLS 1.2 as well as 1.3 (the default above).
    let tls12 = output(&mut mosquitto(
        "mosquitto_pub",
        addr,
        &[
            "--cafile",
            arg(&ca),
            "--tls-version",
            "tlsv1.2",
            "-t",
            "x",
            "-m",
            "x",
        ],
    ));
    assert!(tls12.status.success(), "{tls12:?}");
    // A client that does not trust the broker's CA gives up in the
    // handshake; one speaking plain MQTT to the TLS port gets nothing.
    let other = pki.sibling("other");
    let refused = output(&mut mosquitto(
        "mosquitto_pub",
        addr,
        &["--cafile", arg(&other.ca_file()), "-t", "x", "-m", "x"],
    ));
    assert!(!refused.status.success(), "{refused:?}");
    let plain = output(&mut mosquitto(
        "mosquitto_pub",
        addr,
        &["-t", "x", "-m", "x"],
    ));
    assert!(!plain.status.success(), "{plain:?}");
}

#[tokio::test]
async fn rumqttc_with_rustls_publishes_across_shards() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::{TlsConfiguration, Transport};

    let pki = Pki::new("rumqttc", "r");
    let (cert, key) = pki.server("localhost");
    let (_broker, addr) = broker_with("tls", &cert_keys(&cert, &key), &[]);
    let config = client_config(&[&pki.ca_file()], None);
    let options = |id: &str| {
        let mut options = common::clients::v5::options(addr, &unique_id(id));
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            config.clone(),
        )));
        options
    };
    let (mut sub, _) = common::clients::v5::Client::connect(options("rumqttc-sub")).await;
    sub.subscribe("tls/rumqttc/#", QoS::AtLeastOnce).await;
    // Several publishers, so some are served on each shard.
    for n in 0..4 {
        let (mut publisher, _) = common::clients::v5::Client::connect(options("rumqttc-pub")).await;
        publisher
            .publish(
                &format!("tls/rumqttc/{n}"),
                QoS::AtLeastOnce,
                false,
                format!("m{n}").as_bytes(),
            )
            .await;
        let got = sub.next_publish().await;
        assert_eq!(&got.payload[..], format!("m{n}").as_bytes());
        publisher.disconnect().await;
    }
}

/// paho-mqtt publishes over TLS to a subscriber over wss, and the other
/// way round, with `tls_set` on both.
#[test]
fn paho_over_tls_and_over_websocket_in_tls() {
    let pki = Pki::new("paho", "p");
    let (cert, key) = pki.server("localhost");
    let keys = cert_keys(&cert, &key);
    let toml = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\ntransport = \"tls\"\n{keys}\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\ntransport = \"wss\"\n{keys}\n"
    );
    let broker = Broker::start_with_config(&toml, &["--cores", "2"]);
    let tls = broker.announced_addr("transport=tls");
    let wss = broker.announced_addr("transport=wss");
    let script = r#"
import sys, threading
import paho.mqtt.client as mqtt

ca, tls_port, wss_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def client(transport, port, name):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, transport=transport)
    c.tls_set(ca_certs=ca)
    if transport == "websockets":
        c.ws_set_options(path="/mqtt")
    c.connect("localhost", port, keepalive=30)
    return c

for (sub_t, sub_p, pub_t, pub_p) in [("websockets", wss_port, "tcp", tls_port),
                                     ("tcp", tls_port, "websockets", wss_port)]:
    got = threading.Event()
    subscribed = threading.Event()
    received = []
    sub = client(sub_t, sub_p, "paho-sub-" + sub_t)
    sub.on_subscribe = lambda c, u, mid, codes, props: subscribed.set()
    def on_message(c, u, m):
        received.append(m.payload.decode())
        got.set()
    sub.on_message = on_message
    sub.loop_start()
    sub.subscribe("tls/paho", qos=1)
    assert subscribed.wait(10), "no SUBACK over " + sub_t
    pub = client(pub_t, pub_p, "paho-pub-" + pub_t)
    pub.loop_start()
    pub.publish("tls/paho", "from " + pub_t, qos=1).wait_for_publish(10)
    assert got.wait(10), "nothing received over " + sub_t
    assert received == ["from " + pub_t], received
    pub.disconnect(); pub.loop_stop()
    sub.disconnect(); sub.loop_stop()
    print("ok", sub_t)
"#;
    let out = Command::new("python3")
        .args(["-c", script, arg(&pki.ca_file())])
        .args([tls.port().to_string(), wss.port().to_string()])
        .output()
        .expect("python3 runs (paho-mqtt 2.x installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.matches("ok ").count() == 2,
        "paho over tls/wss failed: {stdout}\n{}\nbroker:\n{}",
        String::from_utf8_lossy(&out.stderr),
        broker.logs()
    );
}

#[test]
fn client_certificates_are_required_verified_and_counted() {
    let pki = Pki::new("mtls", "m");
    let other = pki.sibling("other");
    let (cert, key) = pki.server("localhost");
    let keys = format!(
        "{}client_ca_file = \"{}\"\n",
        cert_keys(&cert, &key),
        pki.ca_file().display()
    );
    let (broker, addr) = broker_with("tls", &keys, &["--metrics-listen", "127.0.0.1:0"]);
    let ca = pki.ca_file();
    let good = pki.client("good", false);
    let expired = pki.client("expired", true);
    let stranger = other.client("stranger", false);

    let connack = |identity: Option<&(std::path::PathBuf, std::path::PathBuf)>| {
        let identity = identity.map(|(cert, key)| (cert.as_path(), key.as_path()));
        let mut client = TlsClient::open(addr, client_config(&[&ca], identity))?;
        client.connect(&Connect::v5(&unique_id("mtls")), V5)
    };
    assert_eq!(connack(Some(&good)).expect("a valid certificate").code, 0);
    for (what, identity) in [
        ("no certificate", None),
        ("an expired certificate", Some(&expired)),
        ("a certificate from another CA", Some(&stranger)),
    ] {
        let refused = connack(identity);
        assert!(refused.is_err(), "{what} was let in: {refused:?}");
    }
    // mosquitto_pub alike, with and without its certificate.
    let base = ["--cafile", arg(&ca), "-t", "mtls/x", "-m", "x"];
    let with_cert = output(mosquitto("mosquitto_pub", addr, &base).args([
        "--cert",
        arg(&good.0),
        "--key",
        arg(&good.1),
    ]));
    assert!(with_cert.status.success(), "{with_cert:?}");
    let without = output(&mut mosquitto("mosquitto_pub", addr, &base));
    assert!(!without.status.success(), "{without:?}");

    let failures = handshake_failures(&broker);
    assert_eq!(failures("no_client_certificate"), 2.0);
    assert_eq!(failures("bad_client_certificate"), 2.0);
}

/// With `use_identity_as_username` the certificate's CN is the user name
/// the ACL knows, no password is asked though a password file is loaded,
/// and a client without a certificate is refused as Not authorized.
#[test]
fn the_certificate_common_name_is_the_user_name_for_the_acl() {
    let pki = Pki::new("identity", "i");
    let (cert, key) = pki.server("localhost");
    let acl = pki.dir.join("acl");
    std::fs::write(
        &acl,
        "user sensor-1\ntopic readwrite sensors/1/#\n\nuser dashboard\ntopic read sensors/#\n",
    )
    .expect("acl");
    // A user that is not any certificate's name: the file is loaded, yet
    // the certificate holders need no password.
    let passwd = pki.dir.join("passwd");
    let hashed = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["passwd", "--stdin", arg(&passwd), "admin"])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().expect("stdin").write_all(b"secret\n")?;
            child.wait()
        })
        .expect("ringmq passwd");
    assert!(hashed.success());
    let keys = format!(
        "{}client_ca_file = \"{}\"\nrequire_client_cert = false\nuse_identity_as_username = true\n",
        cert_keys(&cert, &key),
        pki.ca_file().display()
    );
    let (broker, addr) = broker_with(
        "tls",
        &keys,
        &["--acl-file", arg(&acl), "--password-file", arg(&passwd)],
    );
    let ca = pki.ca_file();
    let open = |cn: Option<&str>| {
        let identity = cn.map(|cn| pki.client(cn, false));
        let identity = identity
            .as_ref()
            .map(|(cert, key)| (cert.as_path(), key.as_path()));
        TlsClient::open(addr, client_config(&[&ca], identity)).expect("handshake")
    };

    let mut dashboard = open(Some("dashboard"));
    let ack = dashboard
        .connect(&Connect::v5("dash").username("sensor-1"), V5)
        .expect("connack");
    assert_eq!(ack.code, 0, "the name given is replaced by the CN");
    dashboard
        .send(&wire::subscribe(
            V5,
            1,
            &[("sensors/#", 1)],
            wire::Props::new(),
        ))
        .expect("subscribe");
    assert_eq!(dashboard.recv_kind(wire::SUBACK).suback(V5).1, [1]);

    let mut sensor = open(Some("sensor-1"));
    assert_eq!(
        sensor
            .connect(&Connect::v5("s1"), V5)
            .expect("connack")
            .code,
        0
    );
    sensor
        .send(&Pub::new("sensors/2/t", b"not mine").qos(1, 1).encode(V5))
        .expect("publish");
    let (pkid, code) = sensor.recv_kind(wire::PUBACK).ack();
    assert_eq!((pkid, code), (1, 0x87), "sensor-1 may not write sensors/2");
    sensor
        .send(&Pub::new("sensors/1/t", b"21.5").qos(1, 2).encode(V5))
        .expect("publish");
    assert_eq!(sensor.recv_kind(wire::PUBACK).ack(), (2, 0));
    let got = dashboard.recv_kind(wire::PUBLISH).publish(V5);
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("sensors/1/t", &b"21.5"[..])
    );

    // No certificate: Not authorized, 0x87 or 5, even with the password
    // file's own user and password.
    for (version, code) in [(V5, 0x87), (V4, 5)] {
        let mut anonymous = open(None);
        let connect = Connect::new(version, "anon")
            .username("admin")
            .password(b"secret");
        assert_eq!(
            anonymous.connect(&connect, version).expect("connack").code,
            code
        );
    }
    broker.wait_for_log("no client certificate with a common name", 2);
}

/// SIGHUP: a new connection is served the new certificate, one made
/// before keeps working; a broken file then keeps the certificate loaded.
#[test]
fn sighup_reloads_the_certificate_without_dropping_connections() {
    let first = Pki::new("reload", "first");
    let second = first.sibling("second");
    let (cert, key) = first.server("first-server");
    let (broker, addr) = broker_with("tls", &cert_keys(&cert, &key), &[]);
    let trust = client_config(&[&first.ca_file(), &second.ca_file()], None);

    let mut old = TlsClient::open(addr, trust.clone()).expect("handshake");
    assert_eq!(old.server_cn(), "first-server");
    assert_eq!(
        old.connect(&Connect::v4("old"), V4).expect("connack").code,
        0
    );
    old.send(&wire::subscribe(
        V4,
        1,
        &[("reload/#", 0)],
        wire::Props::new(),
    ))
    .expect("subscribe");
    old.recv_kind(wire::SUBACK);

    second.server_to("second-server", &cert, &key);
    broker.signal(libc::SIGHUP);
    broker.wait_for_log("tls certificate reloaded", 1);
    let mut new = TlsClient::open(addr, trust.clone()).expect("handshake");
    assert_eq!(new.server_cn(), "second-server");
    // Only the new CA now: the old one no longer vouches for the broker.
    assert!(TlsClient::open(addr, client_config(&[&first.ca_file()], None)).is_err());
    assert_eq!(
        new.connect(&Connect::v4("new"), V4).expect("connack").code,
        0
    );
    new.send(&Pub::new("reload/x", b"after").encode(V4))
        .expect("publish");
    let got = old.recv_kind(wire::PUBLISH).publish(V4);
    assert_eq!(&got.payload[..], b"after", "the old connection still works");

    std::fs::write(&key, "not a key").expect("break the key");
    broker.signal(libc::SIGHUP);
    broker.wait_for_log("tls files not reloaded", 1);
    let mut after = TlsClient::open(addr, trust).expect("handshake on the kept certificate");
    assert_eq!(after.server_cn(), "second-server");
    assert_eq!(
        after
            .connect(&Connect::v4("after"), V4)
            .expect("connack")
            .code,
        0
    );
}

/// A PROXY protocol header comes first, then the TLS handshake; the
/// client address in the header is the one logged.
#[test]
fn a_proxy_protocol_header_precedes_tls() {
    let pki = Pki::new("proxy", "p");
    let (cert, key) = pki.server("localhost");
    let keys = format!("{}proxy_protocol = true\n", cert_keys(&cert, &key));
    let (broker, addr) = broker_with("tls", &keys, &[]);
    let config = client_config(&[&pki.ca_file()], None);
    for n in 0..4 {
        let mut stream = TcpStream::connect(addr).expect("connect");
        let port = 51000 + n;
        write!(stream, "PROXY TCP4 203.0.113.7 10.0.0.1 {port} 8883\r\n").expect("header");
        let mut client = TlsClient::over(stream, config.clone()).expect("handshake");
        let id = unique_id("proxied");
        assert_eq!(
            client.connect(&Connect::v4(&id), V4).expect("connack").code,
            0
        );
        broker.wait_for_log(&format!("client={id} version=4 peer=203.0.113.7:{port}"), 1);
    }
    // TLS without the header is refused: the header is never optional.
    assert!(
        TlsClient::open(addr, config)
            .and_then(|mut c| c.recv())
            .is_err()
    );
}

/// Bytes that are not TLS close that connection, with nothing else
/// disturbed; so does a handshake left unfinished past the connect
/// timeout.
#[test]
fn garbage_on_a_tls_listener_closes_only_that_connection() {
    let pki = Pki::new("garbage", "g");
    let (cert, key) = pki.server("localhost");
    let (broker, addr) = broker_with(
        "tls",
        &cert_keys(&cert, &key),
        &["--metrics-listen", "127.0.0.1:0", "--connect-timeout", "1"],
    );
    // The first bytes of a ClientHello, and nothing more.
    let mut stalled = TcpStream::connect(addr).expect("connect");
    stalled
        .write_all(b"\x16\x03\x01\x00\xc8\x01")
        .expect("write");
    let config = client_config(&[&pki.ca_file()], None);
    let mut witness = TlsClient::open(addr, config.clone()).expect("handshake");
    assert_eq!(
        witness
            .connect(&Connect::v4("witness"), V4)
            .expect("connack")
            .code,
        0
    );
    witness
        .send(&wire::subscribe(V4, 1, &[("g", 0)], wire::Props::new()))
        .expect("subscribe");
    witness.recv_kind(wire::SUBACK);

    for garbage in [
        &b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"[..],
        b"\x16\x03\x01\xff\xff\x01\x00\xff\xfb garbage",
        &[0x16; 64],
    ] {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
        stream.write_all(garbage).expect("write");
        let mut reply = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut reply);
        // An alert record at most, never an MQTT answer.
        assert!(reply.is_empty() || reply[0] == 0x15, "{reply:?}");
    }
    let mut publisher = TlsClient::open(addr, config).expect("handshake");
    assert_eq!(
        publisher
            .connect(&Connect::v4("pub"), V4)
            .expect("connack")
            .code,
        0
    );
    publisher
        .send(&Pub::new("g", b"still here").encode(V4))
        .expect("publish");
    assert_eq!(
        &witness.recv_kind(wire::PUBLISH).publish(V4).payload[..],
        b"still here"
    );

    stalled.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    let mut rest = Vec::new();
    let closed = std::io::Read::read_to_end(&mut stalled, &mut rest);
    assert!(closed.is_ok() && rest.is_empty(), "{closed:?} {rest:?}");
    let failures = handshake_failures(&broker);
    assert!(failures("malformed") >= 2.0);
    assert_eq!(failures("timeout"), 1.0);
}

#[test]
fn bad_tls_settings_stop_the_start_naming_the_key() {
    let pki = Pki::new("settings", "s");
    let (cert, key) = pki.server("localhost");
    let missing = pki.dir.join("missing.pem");
    let (other_cert, _) = pki.client("other", false);

    let refused = |args: &[&str], toml: Option<&str>, needle: &str| {
        let exited = run_to_exit(args, toml);
        assert!(!exited.status.success(), "{args:?} {toml:?} started");
        assert!(
            exited.stderr.contains(needle),
            "{args:?} {toml:?}: no {needle:?} in:\n{}",
            exited.stderr
        );
    };
    refused(
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            arg(&missing),
            "--tls-key",
            arg(&key),
        ],
        None,
        "cannot read `tls_cert` (--tls-cert)",
    );
    refused(
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            arg(&other_cert),
            "--tls-key",
            arg(&key),
        ],
        None,
        "invalid `tls_key` (--tls-key)",
    );
    refused(
        &["--tls-listen", "127.0.0.1:0", "--tls-cert", arg(&cert)],
        None,
        "`tls_key` (--tls-key): is required",
    );
    let table = |keys: &str| format!("[[listener]]\naddress = \"127.0.0.1:0\"\n{keys}\n");
    refused(
        &[],
        Some(&table(&format!(
            "transport = \"tls\"\ncert_file = \"{}\"",
            cert.display()
        ))),
        "`key_file` is required",
    );
    refused(
        &[],
        Some(&table(&format!(
            "transport = \"wss\"\n{}client_ca_file = \"{}\"",
            cert_keys(&cert, &key),
            missing.display()
        ))),
        "`client_ca_file` cannot read",
    );
    refused(
        &[],
        Some(&table(&format!(
            "transport = \"tls\"\n{}use_identity_as_username = true",
            cert_keys(&cert, &key)
        ))),
        "`use_identity_as_username` needs a client CA file",
    );
    refused(
        &[],
        Some(&table(&cert_keys(&cert, &key))),
        "need transport = \"tls\" or \"wss\"",
    );
}
