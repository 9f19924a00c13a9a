//! Closing: shutting the socket down after the goodbye, and lingering so
//! that what the client still sends does not reset the connection before
//! it has read the goodbye.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::shard::socket::{self, Received};

use super::Connection;

/// How long a connection the broker closed keeps reading (and dropping)
/// what the client still sends, after the goodbye went out; see
/// [`Connection::linger`].
const LINGER: Duration = Duration::from_secs(2);

impl Connection {
    /// Reads and drops what the client still sends after the broker's
    /// goodbye, until it closes its side or [`LINGER`] passes. A socket
    /// closed with unread data, or that receives data once closed, makes
    /// the kernel send a reset, and the reset can destroy the goodbye (the
    /// DISCONNECT saying why) before the client has read it: a client that
    /// pipelined PUBLISHes past its Receive Maximum would see a broken pipe
    /// instead of 0x93.
    pub(super) async fn linger(&self) {
        let limit = self
            .state
            .borrow_mut()
            .deadlines
            .alarm(Instant::now() + LINGER);
        let drain = async {
            while let Ok(()) = self.stream.readable(false).await {
                loop {
                    match socket::recv_arena(self.conn.fd()) {
                        Ok((_, Received::Bytes { .. })) => {}
                        Ok((_, Received::Nothing)) => break,
                        Ok((_, Received::Closed)) | Err(_) => return,
                    }
                }
            }
        };
        let _ = limit.on(drain).await;
    }
}

/// Shuts `how` (`SHUT_RDWR` or `SHUT_WR`) down; both ways, a reader waiting
/// on this socket wakes up to end-of-file, and a writer to an error,
/// whichever driver they wait in.
pub(super) fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: called by the task that holds the stream, so the descriptor
    // is still open; shutdown(2) touches no memory.
    unsafe {
        libc::shutdown(fd, how);
    }
}
