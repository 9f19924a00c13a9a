//! PROXY protocol (`--proxy-protocol`) against the real binary: the
//! client address in a v1 or v2 header is the one the broker logs, the
//! MQTT bytes after the header are served as if nothing came before them,
//! and a connection without a valid header is closed; the setting is per
//! listener, WebSocket ones included. Then the real thing:
//! HAProxy, run with deploy/haproxy.cfg itself, in front of ringmq.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http::{get, sample};
use common::raw::{Raw, RecvError};
use common::wire::{self, Connect, Pub};
use common::{Broker, RECV_TIMEOUT, unique_id};

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

fn broker() -> Broker {
    // Two shards, so some connections are handed to the other shard after
    // the header was read: the client address must travel with them.
    Broker::start(&["--proxy-protocol", "--cores", "2"])
}

/// The `peer=` of the broker's `client connected` line for `client`.
fn logged_peer(broker: &Broker, client: &str) -> String {
    let deadline = Instant::now() + RECV_TIMEOUT;
    let needle = format!("client={client} ");
    loop {
        let logs = broker.logs();
        let peer = logs
            .lines()
            .filter(|line| line.contains("client connected") && line.contains(&needle))
            .find_map(|line| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix("peer="))
            });
        if let Some(peer) = peer {
            return peer.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no `client connected` line for {client}; stderr:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A v2 PROXY command for TCP over IPv6 from `source`.
fn v2_tcp6(source: SocketAddr) -> Vec<u8> {
    let (IpAddr::V6(ip), port) = (source.ip(), source.port()) else {
        panic!("an IPv6 address");
    };
    let mut header = V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x21, 0x21, 0, 36]);
    header.extend_from_slice(&ip.octets());
    header.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    header.extend_from_slice(&port.to_be_bytes());
    header.extend_from_slice(&1883u16.to_be_bytes());
    header
}

/// Sends `prefix` and a CONNECT for `id` in one write; expects CONNACK 0.
async fn connect_after(broker: &Broker, prefix: &[u8], id: &str) -> Raw {
    let mut raw = Raw::open(broker.addr, wire::V4).await;
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(&Connect::v4(id).encode());
    raw.send(&bytes).await;
    let connack = raw.recv().await.connack(wire::V4);
    assert_eq!(connack.code, 0, "{connack:?}");
    raw
}

#[tokio::test]
async fn v1_header_names_the_client_and_mqtt_follows_it() {
    let broker = broker();
    let id = unique_id("proxy-v1");
    let mut raw = connect_after(
        &broker,
        b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 1883\r\n",
        &id,
    )
    .await;
    assert_eq!(logged_peer(&broker, &id), "203.0.113.9:40000");
    // The connection is plain MQTT from here on.
    assert_eq!(raw.subscribe(1, &[("proxy/v1", 0)]).await, vec![0]);
    raw.publish(Pub::new("proxy/v1", b"after the header")).await;
    assert_eq!(raw.recv_publish().await.payload, b"after the header");
}

#[tokio::test]
async fn v2_header_split_across_segments() {
    let broker = broker();
    let id = unique_id("proxy-v2");
    let client: SocketAddr = "[2001:db8::9]:40001".parse().expect("literal");
    let header = v2_tcp6(client);
    let mut raw = Raw::open(broker.addr, wire::V4).await;
    // Cut inside the signature, then inside the addresses, then the rest
    // with the CONNECT: each piece is its own read on the broker's side.
    for piece in [&header[..5], &header[5..30]] {
        raw.send(piece).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rest = header[30..].to_vec();
    rest.extend_from_slice(&Connect::v4(&id).encode());
    raw.send(&rest).await;
    assert_eq!(raw.recv().await.connack(wire::V4).code, 0);
    assert_eq!(logged_peer(&broker, &id), "[2001:db8::9]:40001");
}

#[tokio::test]
async fn v2_local_keeps_the_socket_address() {
    let broker = broker();
    let id = unique_id("proxy-local");
    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    let raw = connect_after(&broker, &local, &id).await;
    assert_eq!(logged_peer(&broker, &id), raw.local_addr().to_string());
}

#[tokio::test]
async fn mqtt_without_a_header_is_closed_at_once() {
    let broker = broker();
    let mut raw = Raw::open(broker.addr, wire::V4).await;
    raw.send(&Connect::v4(&unique_id("proxy-none")).encode())
        .await;
    let seen = raw.expect_closed(Duration::from_secs(2)).await;
    assert!(seen.is_empty(), "no CONNACK without a header: {seen:?}");
}

#[tokio::test]
async fn garbage_is_closed_at_once() {
    let broker = broker();
    let mut raw = Raw::open(broker.addr, wire::V4).await;
    raw.send(b"PROXY TCP4 not an address\r\n").await;
    assert!(raw.expect_closed(Duration::from_secs(2)).await.is_empty());
}

/// A broker taking direct clients on one TCP listener and, from a load
/// balancer, PROXY-headed TCP and WebSocket on two others: the setting
/// is per listener.
fn mixed_broker() -> Broker {
    Broker::start_with_config(
        r#"
        listen = ["127.0.0.1:0"]

        [[listener]]
        address = "127.0.0.1:0"
        proxy_protocol = true

        [[listener]]
        address = "127.0.0.1:0"
        transport = "websocket"
        proxy_protocol = true
        "#,
        &["--cores", "2", "--metrics-listen", "127.0.0.1:0"],
    )
}

#[tokio::test]
async fn proxy_protocol_is_set_per_listener() {
    let broker = mixed_broker();
    // TCP listeners are announced first; the proxied one says so.
    let proxied = broker.announced_addr("proxy_protocol=true");
    assert_ne!(proxied, broker.addr);

    let direct_id = unique_id("direct");
    let (direct, connack) = Raw::connect(broker.addr, Connect::v4(&direct_id)).await;
    assert_eq!(connack.code, 0, "no header needed on the direct listener");
    assert_eq!(
        logged_peer(&broker, &direct_id),
        direct.local_addr().to_string()
    );

    let mut headless = Raw::open(proxied, wire::V4).await;
    headless
        .send(&Connect::v4(&unique_id("headless")).encode())
        .await;
    assert!(
        headless
            .expect_closed(Duration::from_secs(2))
            .await
            .is_empty(),
        "the proxied listener closes a connection without a header"
    );

    let proxied_id = unique_id("proxied");
    let mut raw = Raw::open(proxied, wire::V4).await;
    let mut bytes = b"PROXY TCP4 192.0.2.44 127.0.0.1 40200 1883\r\n".to_vec();
    bytes.extend_from_slice(&Connect::v4(&proxied_id).encode());
    raw.send(&bytes).await;
    assert_eq!(raw.recv().await.connack(wire::V4).code, 0);
    assert_eq!(logged_peer(&broker, &proxied_id), "192.0.2.44:40200");

    let (_, text) = get(broker.metrics_addr(), "/metrics");
    assert_eq!(
        sample(
            &text,
            "ringmq_connections_rejected_total{reason=\"ProxyHeader\"}"
        ),
        1.0,
        "the headless connection is counted as rejected"
    );
}

#[test]
fn websocket_listener_reads_the_header_before_the_upgrade() {
    let broker = mixed_broker();
    let addr = broker.announced_addr("transport=websocket");
    let mut stream = std::net::TcpStream::connect(addr).expect("TCP connect");
    stream
        .set_read_timeout(Some(RECV_TIMEOUT))
        .expect("set timeout");
    stream
        .write_all(b"PROXY TCP4 198.51.100.7 127.0.0.1 40100 8083\r\n")
        .expect("write header");
    let request = tungstenite::ClientRequestBuilder::new(
        format!("ws://{addr}/mqtt").parse().expect("valid URI"),
    )
    .with_sub_protocol("mqtt");
    let (mut ws, _) = tungstenite::client(request, stream).expect("upgrade accepted");
    let id = unique_id("ws-proxied");
    ws.send(tungstenite::Message::Binary(
        Connect::v4(&id).encode().into(),
    ))
    .expect("send CONNECT");
    match ws.read().expect("CONNACK") {
        tungstenite::Message::Binary(connack) => {
            assert_eq!(&connack[..], [0x20, 2, 0, 0], "CONNACK accepted");
        }
        other => panic!("expected a binary frame, got {other:?}"),
    }
    assert_eq!(logged_peer(&broker, &id), "198.51.100.7:40100");
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_5_seconds() {
    let broker = broker();
    let mut raw = Raw::open(broker.addr, wire::V4).await;
    let start = Instant::now();
    // Half a header: a valid start, never finished.
    raw.send(b"PROXY TCP4 ").await;
    assert_eq!(
        raw.try_recv(Duration::from_secs(4)).await,
        Err(RecvError::Timeout),
        "still open before the header timeout"
    );
    assert!(raw.expect_closed(Duration::from_secs(4)).await.is_empty());
    let waited = start.elapsed();
    assert!(waited < Duration::from_secs(8), "closed after {waited:?}");
}

/// HAProxy, killed on drop; its output kept for failure messages.
struct HaProxy {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl HaProxy {
    fn start(envs: &[(&str, String)]) -> HaProxy {
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy.cfg");
        let mut command = Command::new("haproxy");
        // -db: foreground, no daemon.
        command
            .args(["-db", "-f", config])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap_or_else(|error| {
            panic!("cannot run haproxy ({error}); apt-get install haproxy")
        });
        let output = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        for pipe in [
            Box::new(stdout) as Box<dyn Read + Send>,
            Box::new(stderr) as Box<dyn Read + Send>,
        ] {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut output = output.lock().unwrap();
                    output.push_str(&line);
                    output.push('\n');
                }
            });
        }
        HaProxy { child, output }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free a moment ago, for HAProxy's frontend.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("bound").port()
}

/// Waits until HAProxy's frontend accepts connections.
fn wait_listening(proxy: &HaProxy, frontend: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(frontend).is_err() {
        assert!(
            Instant::now() < deadline,
            "haproxy is not listening on {frontend}; its output:\n{}",
            proxy.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connects through HAProxy from 127.0.0.2 (HAProxy itself connects to the
/// broker from 127.0.0.1, so the two addresses differ). Retries until a
/// CONNACK comes back, since HAProxy may not have a healthy server yet.
async fn connect_through(proxy: &HaProxy, frontend: SocketAddr, id: &str) -> Raw {
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut raw = Raw::open_from(frontend, source, wire::V4).await;
        raw.send_lossy(&Connect::v4(id).encode()).await;
        if let Ok(packet) = raw.try_recv(Duration::from_secs(2)).await {
            assert_eq!(packet.connack(wire::V4).code, 0);
            return raw;
        }
        assert!(
            Instant::now() < deadline,
            "no CONNACK through haproxy; its output:\n{}",
            proxy.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn haproxy_in_front_passes_the_client_address_and_messages() {
    // The broker's own /health answers HAProxy's checks; HAProxy sends
    // to the listener that expects its header.
    let broker = mixed_broker();
    let health = broker.metrics_addr();
    let backend = broker.announced_addr("proxy_protocol=true");
    let frontend = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // Both backend servers are the same broker: brokers are not clustered
    // yet, so a subscriber and a publisher balanced onto two brokers would
    // never meet.
    let proxy = HaProxy::start(&[
        ("MQTT_BIND", frontend.to_string()),
        ("RINGMQ1_ADDR", backend.to_string()),
        ("RINGMQ2_ADDR", backend.to_string()),
        ("RINGMQ_HEALTH_PORT", health.port().to_string()),
        // Test machines cap descriptors well below what the production
        // figure needs, and HAProxy refuses to start short of them.
        ("HAPROXY_MAXCONN", "1000".to_owned()),
    ]);
    wait_listening(&proxy, frontend);
    // Three failed checks 2 s apart would mark both servers down, and the
    // connections below would find no server: past that point, traffic
    // flowing means /health answered 200.
    tokio::time::sleep(Duration::from_secs(7)).await;

    let sub_id = unique_id("haproxy-sub");
    let mut sub = connect_through(&proxy, frontend, &sub_id).await;
    assert_eq!(
        logged_peer(&broker, &sub_id),
        sub.local_addr().to_string(),
        "the broker logs the client's address, not HAProxy's"
    );
    assert!(sub.local_addr().to_string().starts_with("127.0.0.2:"));
    assert_eq!(sub.subscribe(1, &[("haproxy/t", 1)]).await, vec![1]);

    let pub_id = unique_id("haproxy-pub");
    let mut publisher = connect_through(&proxy, frontend, &pub_id).await;
    assert_eq!(
        logged_peer(&broker, &pub_id),
        publisher.local_addr().to_string()
    );
    publisher
        .publish(Pub::new("haproxy/t", b"through haproxy").qos(1, 7))
        .await;
    let message = sub.recv_publish().await;
    assert_eq!(message.payload, b"through haproxy");
}
