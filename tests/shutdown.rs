//! Graceful shutdown: on SIGTERM / SIGINT the broker stops accepting, tells
//! v5 clients why (DISCONNECT 0x8B, server shutting down), closes 3.1.1
//! clients, and exits with status 0.

mod common;

use std::time::Duration;

use common::Broker;
use common::raw::Raw;
use common::wire::{self, Connect};

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
