//! Listening sockets: one per shard per address, bound with SO_REUSEPORT so
//! the kernel spreads incoming connections over the shards and no thread
//! accepts for all.

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

/// Binds every address once per shard. Port 0 is resolved by the first
/// bind, and the other shards bind the port it got. Returns, per shard, its
/// listeners.
pub fn bind_all(
    addrs: &[SocketAddr],
    shards: usize,
) -> io::Result<Vec<Vec<std::net::TcpListener>>> {
    let mut per_shard: Vec<Vec<std::net::TcpListener>> = (0..shards).map(|_| Vec::new()).collect();
    for &requested in addrs {
        let mut addr = requested;
        for listeners in &mut per_shard {
            let listener = bind(addr).map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot listen on {requested}: {error}"),
                )
            })?;
            addr = listener.local_addr()?;
            listeners.push(listener);
        }
        info!(%addr, "listening");
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
pub async fn accept_loop(state: Rc<RefCell<ShardState>>, listener: monoio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if state.borrow().draining {
                    return;
                }
                let permit = state.borrow().config().connections.admit();
                monoio::spawn(connection::accept(state.clone(), stream, peer, permit));
            }
            Err(error) => {
                // Typically EMFILE: back off instead of spinning on the error.
                warn!(%error, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
