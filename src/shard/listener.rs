//! Listening sockets: one per shard per address, bound with SO_REUSEPORT so
//! the kernel spreads incoming connections over the shards and no thread
//! accepts for all. An address speaks MQTT over plain TCP or over
//! WebSocket ([`Transport`]).

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tracing::{info, warn};

use super::connection;
use super::state::ShardState;

const BACKLOG: i32 = 4096;

/// How MQTT reaches the broker on a listening address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// MQTT packets directly on the TCP stream; with `proxy`, after a
    /// PROXY protocol header from a load balancer ([`super::proxy`]).
    Tcp { proxy: bool },
    /// MQTT packets in WebSocket binary frames, after an HTTP upgrade on
    /// `/mqtt` (spec 6.0).
    WebSocket,
}

/// A shard's listening socket and what it speaks.
pub struct Listener {
    pub socket: std::net::TcpListener,
    pub transport: Transport,
}

/// Binds every address once per shard, the TCP ones first (so the first
/// `listening` line of the log names a TCP address). Port 0 is resolved by
/// the first bind, and the other shards bind the port it got. Returns, per
/// shard, its listeners.
pub fn bind_all(
    tcp: &[SocketAddr],
    websocket: &[SocketAddr],
    proxy: bool,
    shards: usize,
) -> io::Result<Vec<Vec<Listener>>> {
    let mut per_shard: Vec<Vec<Listener>> = (0..shards).map(|_| Vec::new()).collect();
    let addrs = (tcp.iter().map(|&addr| (addr, Transport::Tcp { proxy })))
        .chain(websocket.iter().map(|&addr| (addr, Transport::WebSocket)));
    for (requested, transport) in addrs {
        let mut addr = requested;
        for listeners in &mut per_shard {
            let socket = bind(addr).map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot listen on {requested}: {error}"),
                )
            })?;
            addr = socket.local_addr()?;
            listeners.push(Listener { socket, transport });
        }
        match transport {
            Transport::Tcp { proxy: false } => info!(%addr, "listening"),
            Transport::Tcp { proxy: true } => info!(%addr, proxy_protocol = true, "listening"),
            Transport::WebSocket => info!(%addr, transport = %"websocket", "listening"),
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
    transport: Transport,
) {
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
                    transport,
                    permit,
                ));
            }
            Err(error) => {
                // Typically EMFILE: back off instead of spinning on the error.
                warn!(%error, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
