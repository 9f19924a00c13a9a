//! Graceful shutdown: on SIGTERM / SIGINT the broker stops accepting, tells
//! v5 clients why (DISCONNECT 0x8B, server shutting down), closes 3.1.1
//! clients, and exits with status 0; `/ready` says so meanwhile.

mod common;

use std::time::{Duration, Instant};

use common::Broker;
use common::http::{get, wait_ready};
use common::raw::Raw;
use common::wire::{self, Connect, Pub};

async fn shutdown_on(signal: libc::c_int) {
    let mut broker = Broker::start(&["--cores", "2"]);
    let mut v5_clients = Vec::new();
    // Several clients so both shards have someone to notify.
    for i in 0..6 {
        let (raw, _) = Raw::connect_ok(broker.addr, Connect::v5(&format!("sd-v5-{i}"))).await;
        v5_clients.push(raw);
    }
    let (mut v4_client, _) = Raw::connect_ok(broker.addr, Connect::v4("sd-v4")).await;

    broker.signal(signal);

    for (i, client) in v5_clients.iter_mut().enumerate() {
        let seen = client.expect_closed(Duration::from_secs(10)).await;
        assert_eq!(
            seen.len(),
            1,
            "v5 client {i}: expected one DISCONNECT, got {seen:?}"
        );
        assert_eq!(seen[0].kind(), wire::DISCONNECT);
        assert_eq!(seen[0].disconnect_reason(), 0x8B, "server shutting down");
    }
    let seen = v4_client.expect_closed(Duration::from_secs(10)).await;
    assert!(seen.is_empty(), "3.1.1 clients are just closed: {seen:?}");

    let status = broker.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; stderr:\n{}",
        broker.logs()
    );
}

#[tokio::test]
async fn sigterm_disconnects_clients_and_exits_zero() {
    shutdown_on(libc::SIGTERM).await;
}

#[tokio::test]
async fn sigint_disconnects_clients_and_exits_zero() {
    shutdown_on(libc::SIGINT).await;
}

#[tokio::test]
async fn idle_broker_exits_zero_on_sigterm_and_stops_accepting() {
    let mut broker = Broker::start(&[]);
    let addr = broker.addr;
    broker.signal(libc::SIGTERM);
    let status = broker.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener still accepting after exit"
    );
}

/// `/ready` says 503 from the signal until the broker exits, so a load
/// balancer stops sending clients to a broker that is draining. The drain
/// is made to last: a subscriber that never reads leaves its writer
/// blocked on a full socket, which the broker waits for (up to its 2 s
/// drain deadline) before it exits.
#[tokio::test]
async fn ready_is_503_while_draining() {
    let mut broker = Broker::start(&["--metrics-listen", "127.0.0.1:0", "--cores", "1"]);
    let metrics = broker.metrics_addr();
    assert_eq!(wait_ready(metrics), (200, "OK\n".to_owned()));

    let mut stuck = Raw::open(broker.addr, wire::V4).await;
    stuck.set_recv_buffer(128 * 1024);
    stuck
        .send(&Connect::v4("drain-stuck").keep_alive(0).encode())
        .await;
    assert_eq!(stuck.recv().await.connack(wire::V4).code, 0);
    assert_eq!(stuck.subscribe(1, &[("drain/t", 0)]).await, vec![0]);
    // 16 MiB: far more than the kernel buffers on both sides of the
    // subscriber's socket hold. The PINGRESP after it means the broker
    // has routed every message.
    let (mut publisher, _) = Raw::connect_ok(broker.addr, Connect::v4("drain-pub")).await;
    let payload = vec![b'x'; 64 * 1024];
    let mut flood = Vec::new();
    for _ in 0..256 {
        flood.extend_from_slice(&Pub::new("drain/t", &payload).encode(wire::V4));
    }
    flood.extend_from_slice(&wire::pingreq());
    publisher.send(&flood).await;
    publisher.recv_kind(wire::PINGRESP).await;

    broker.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(4);
    let answer = loop {
        let answer = get(metrics, "/ready");
        if answer.0 != 200 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(answer, (503, "draining\n".to_owned()));
    let status = broker.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "exit status {status}");
}
