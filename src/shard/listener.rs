//! Listening sockets: one per shard per address, bound with SO_REUSEPORT so
//! the kernel spreads incoming connections over the shards and no thread
//! accepts for all. Each address has its own [`ListenerConfig`]: MQTT
//! over plain TCP or WebSocket, either in TLS or not, behind a PROXY
//! protocol header or not.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tracing::{info, warn};

use super::connection;
use super::state::ShardState;
use crate::config::{ListenerConfig, Transport};

const BACKLOG: i32 = 4096;

/// Least time between two `accept failed` lines; `failures` in each counts
/// the ones in between too.
const ACCEPT_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// A shard's listening socket and what it speaks.
pub struct Listener {
    pub socket: std::net::TcpListener,
    pub config: ListenerConfig,
}

/// Binds every address once per shard, in the order given (the
/// configuration puts TCP first, so the first `listening` line of the log
/// names a TCP address). Port 0 is resolved by the first bind, and the
/// other shards bind the port it got. Returns, per shard, its listeners.
pub fn bind_all(configs: &[ListenerConfig], shards: usize) -> io::Result<Vec<Vec<Listener>>> {
    let mut per_shard: Vec<Vec<Listener>> = (0..shards).map(|_| Vec::new()).collect();
    for config in configs {
        let requested = config.address;
        let mut addr = requested;
        for listeners in &mut per_shard {
            let socket = bind(addr).map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot listen on {requested}: {error}"),
                )
            })?;
            addr = socket.local_addr()?;
            listeners.push(Listener {
                socket,
                config: ListenerConfig {
                    address: addr,
                    ..config.clone()
                },
            });
        }
        let transport = match config.transport {
            Transport::Tcp => None,
            Transport::WebSocket => Some("websocket"),
            Transport::Tls => Some("tls"),
            Transport::Wss => Some("wss"),
        };
        // The tests and scripts read the address from the first field.
        match (transport, config.proxy_protocol) {
            (None, false) => info!(%addr, "listening"),
            (None, true) => info!(%addr, proxy_protocol = true, "listening"),
            (Some(transport), false) => info!(%addr, %transport, "listening"),
            (Some(transport), true) => {
                info!(%addr, %transport, proxy_protocol = true, "listening")
            }
        }
    }
    Ok(per_shard)
}

fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Accepts until the shard drains.
pub async fn accept_loop(
    state: Rc<RefCell<ShardState>>,
    listener: monoio::net::TcpListener,
    config: ListenerConfig,
) {
    // Out of descriptors, accept fails every back-off until a client
    // leaves: one line per failure would flood the log.
    let mut failures: u64 = 0;
    let mut last_warning: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if state.borrow().draining {
                    return;
                }
                let permit = state.borrow().config().connections.admit();
                monoio::spawn(connection::accept(
                    state.clone(),
                    stream,
                    peer,
                    config.clone(),
                    permit,
                ));
            }
            Err(error) => {
                failures += 1;
                if last_warning.is_none_or(|at| at.elapsed() >= ACCEPT_WARNING_INTERVAL) {
                    warn!(%error, failures, "accept failed");
                    last_warning = Some(Instant::now());
                }
                // Typically EMFILE: back off instead of spinning on the error.
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
