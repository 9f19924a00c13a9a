//! The write path: what the shard queued for the client, handed to the
//! socket without blocking, in one write per wake-up.

use std::io;
use std::time::Instant;

use crate::shard::socket;

use super::close::shutdown;
use super::handle::Wake;
use super::{CloseReason, Connection};

impl Connection {
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn holds its arguments twice"
    )]
    pub(super) fn write_loop(&self) -> impl Future<Output = ()> + '_ {
        async move {
            let conn = &self.conn;
            // WebSocket frames the socket has not taken yet.
            let mut frames = Vec::new();
            loop {
                conn.wakes.wait(Wake::Write).await;
                if self.flush(&mut frames).await.is_err() {
                    conn.close(CloseReason::SocketError);
                    shutdown(conn.fd(), libc::SHUT_RDWR);
                    return;
                }
                if conn.is_closing() {
                    if let Some(framing) = &self.framing {
                        // The closing handshake, unless the client began it.
                        framing.borrow_mut().close();
                        let _ = self.flush(&mut frames).await;
                    }
                    // Both ways wakes a reader still waiting on the socket;
                    // a reader that already stopped leaves the client's
                    // direction open for the linger.
                    let how = if self.lingers.get() {
                        libc::SHUT_WR
                    } else {
                        libc::SHUT_RDWR
                    };
                    shutdown(conn.fd(), how);
                    return;
                }
            }
        }
    }

    /// Hands the socket everything queued for the client, waiting for room
    /// whenever its buffer is full. Over WebSocket, what the reader left
    /// (pongs, a close frame) goes too, so frames are written even with no
    /// MQTT output.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn holds its arguments twice"
    )]
    fn flush<'a>(&'a self, frames: &'a mut Vec<u8>) -> impl Future<Output = io::Result<()>> + 'a {
        async move {
            let conn = &self.conn;
            loop {
                let sent = match &self.framing {
                    None => {
                        let mut out = conn.out.borrow_mut();

                        if out.is_empty() {
                            // An idle connection keeps no output buffer.
                            socket::release_output(&mut out);
                            return Ok(());
                        }
                        socket::send_from(conn.fd(), &mut out)?
                    }
                    Some(framing) => {
                        if frames.is_empty() {
                            let mut framing = framing.borrow_mut();
                            let mut out = conn.out.borrow_mut();
                            if !out.is_empty() {
                                framing.send(&out);
                                out.clear();
                            }
                            socket::release_output(&mut out);
                            *frames = framing.take_output();
                            if frames.is_empty() {
                                return Ok(());
                            }
                        }
                        let sent = socket::send(conn.fd(), frames)?;
                        match sent {
                            Some(n) if n == frames.len() => *frames = Vec::new(),
                            Some(n) => drop(frames.drain(..n)),
                            None => {}
                        }
                        sent
                    }
                };
                if sent.is_some() {
                    self.active.set(true);
                    self.state.borrow_mut().on_written(conn, Instant::now());
                    conn.wakes.raise(Wake::Written);
                } else {
                    // Boxed: only a client slower than its messages waits
                    // here, and every connection's future would otherwise
                    // hold room for it.
                    Box::pin(self.stream.writable(false)).await?;
                }
            }
        }
    }
}
