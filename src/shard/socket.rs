//! A connection's reads and writes, arranged so that an idle connection
//! holds no buffer.
//!
//! An io_uring read takes its buffer when it is submitted and keeps it
//! until data arrives, so a read always pending on every connection means
//! a read buffer held by every idle client: 4 KiB each, most of an idle
//! connection's memory before this design (PERF.md). io_uring can instead
//! pick a buffer from a provided-buffer ring when the data arrives, but
//! monoio 0.2.4 exposes no buffer-select operation. So a connection waits
//! for readiness (`TcpStream::readable`: an io_uring poll, or epoll under
//! the legacy driver), then reads with a non-blocking recv(2) into the
//! shard's read arena, one buffer per shard from which each read splits
//! the bytes it got. Decoded packets stay slices of the arena, zero-copy
//! as before; only a packet still arriving at the end of a read is copied
//! into a buffer of the connection's own, held until the packet completes.
//!
//! Output is encoded into a buffer taken from the shard's spare outputs
//! when the first packet is queued, and handed back once the socket has
//! taken all of it. Writes are non-blocking send(2)s; a full socket buffer
//! means waiting for writability. The stream is only ever borrowed shared,
//! for readiness, so the connection's reading and writing can wait on it
//! at the same time.
//!
//! Everything here is per thread, hence per shard.

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;

use bytes::{Buf, BytesMut};

/// The least room a read is given; a read into the arena gets whatever
/// the arena has left, up to [`ARENA`].
pub(super) const READ_CHUNK: usize = 4 * 1024;

/// Size of each allocation of the read arena. A decoded message kept for
/// long (retained, queued for an offline client) keeps its allocation
/// alive, so this bounds what one such message can hold on to.
const ARENA: usize = 16 * 1024;

/// A new output buffer's size: bursts grow it.
const OUTPUT_CHUNK: usize = 4 * 1024;

/// Output buffers larger than this are freed rather than kept spare: a
/// burst must not leave its buffer to the next idle client.
const MAX_SPARE_OUTPUT: usize = 4 * OUTPUT_CHUNK;

/// At most this many spare output buffers are kept per shard.
const MAX_SPARE_OUTPUTS: usize = 64;

thread_local! {
    static ARENA_BUF: RefCell<BytesMut> = RefCell::new(BytesMut::new());
    static SPARE_OUTPUTS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A connection's MQTT bytes not decoded yet.
#[derive(Debug, Default)]
pub(super) struct Input {
    /// Between reads: the start of a packet still arriving, in a buffer of
    /// the connection's own, or nothing (no allocation) on a connection
    /// between packets. Right after a read that found nothing pending: a
    /// slice of the read arena.
    bytes: BytesMut,
    in_arena: bool,
}

/// What one read gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Received {
    /// Bytes; `filled` when they took all the room there was, so the
    /// socket probably holds more.
    Bytes { filled: bool },
    /// The socket had nothing after all.
    Nothing,
    /// End of file.
    Closed,
}

impl Input {
    /// Bytes read before the connection's reader started (after a PROXY
    /// header, a WebSocket upgrade or the CONNECT).
    pub fn new(bytes: BytesMut) -> Input {
        Input {
            bytes,
            in_arena: false,
        }
    }

    /// Whether nothing is left undecoded (and nothing held).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The undecoded bytes, for the decoder to split packets from. Once it
    /// is done, [`Input::settle`] must be called before the next read.
    pub fn bytes(&mut self) -> &mut BytesMut {
        &mut self.bytes
    }

    /// Reads what the socket holds: onto the partial packet if there is
    /// one, into the read arena otherwise.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<Received> {
        debug_assert!(!self.in_arena, "read before settling");
        let received = if self.bytes.is_empty() {
            let (bytes, received) = recv_arena(fd)?;
            // A read that got nothing (a spurious wake-up, or the socket
            // drained after a read that filled its room) leaves the input
            // settled: the connection reads again without a decode between.
            if received != Received::Nothing {
                self.bytes = bytes;
                self.in_arena = true;
            }
            received
        } else {
            self.bytes.reserve(READ_CHUNK);
            recv(fd, &mut self.bytes)?
        };
        Ok(received)
    }

    /// Puts what the decoder left where it can wait: a partial packet in
    /// the arena moves to a buffer of the connection's own (the arena is
    /// the next read's), and an empty buffer is let go.
    pub fn settle(&mut self) {
        if self.bytes.is_empty() {
            self.bytes = BytesMut::new();
        } else if self.in_arena {
            let mut own = BytesMut::with_capacity(self.bytes.len() + READ_CHUNK);
            own.extend_from_slice(&self.bytes);
            self.bytes = own;
        }
        self.in_arena = false;
    }

    /// The bytes, settled, to carry to another shard or task.
    pub fn into_bytes(mut self) -> BytesMut {
        self.settle();
        self.bytes
    }
}

/// Reads into the shard's arena; returns the bytes read as a buffer of
/// their own (sharing the arena's allocation).
pub(super) fn recv_arena(fd: RawFd) -> io::Result<(BytesMut, Received)> {
    ARENA_BUF.with_borrow_mut(|arena| {
        if arena.capacity() < READ_CHUNK {
            // Reuses the allocation in place when nothing decoded from it
            // is still alive; otherwise starts a new one.
            arena.reserve(ARENA);
        }
        let received = recv(fd, arena)?;
        let len = arena.len();
        Ok((arena.split_to(len), received))
    })
}

/// One non-blocking recv(2) into the spare capacity of `buf`.
fn recv(fd: RawFd, buf: &mut BytesMut) -> io::Result<Received> {
    let spare = buf.spare_capacity_mut();
    let room = spare.len();
    let read = loop {
        // SAFETY: `spare` is writable memory of `room` bytes owned by
        // `buf`; recv(2) writes at most that many.
        let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), room, libc::MSG_DONTWAIT) };
        match usize::try_from(n) {
            Ok(n) => break n,
            Err(_) => {
                let error = io::Error::last_os_error();
                match error.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock => return Ok(Received::Nothing),
                    _ => return Err(error),
                }
            }
        }
    };
    if read == 0 {
        return Ok(Received::Closed);
    }
    // SAFETY: recv(2) initialised the first `read` bytes of the spare
    // capacity.
    unsafe { buf.set_len(buf.len() + read) };
    Ok(Received::Bytes {
        filled: read == room,
    })
}

/// One non-blocking send(2) of `bytes`; `Ok(None)` when the socket buffer
/// is full.
pub(super) fn send(fd: RawFd, bytes: &[u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: `bytes` is readable memory of its length. MSG_NOSIGNAL:
        // a peer that has gone is an EPIPE error, not a signal.
        let n = unsafe {
            libc::send(
                fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        match usize::try_from(n) {
            Ok(n) => return Ok(Some(n)),
            Err(_) => {
                let error = io::Error::last_os_error();
                match error.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock => return Ok(None),
                    _ => return Err(error),
                }
            }
        }
    }
}

/// Sends the start of `out` and drops what the socket took; `Ok(None)`
/// when the socket buffer is full.
pub(super) fn send_from(fd: RawFd, out: &mut BytesMut) -> io::Result<Option<usize>> {
    let sent = send(fd, out)?;
    if let Some(n) = sent {
        if n == out.len() {
            // Not `advance`: the buffer keeps all its room for reuse.
            out.clear();
        } else {
            out.advance(n);
        }
    }
    Ok(sent)
}

/// An output buffer for a connection that has none.
pub(super) fn output_buffer() -> BytesMut {
    SPARE_OUTPUTS
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| BytesMut::with_capacity(OUTPUT_CHUNK))
}

/// Takes an emptied output buffer from its connection, to keep for the
/// next one that needs it.
pub(super) fn release_output(out: &mut BytesMut) {
    debug_assert!(out.is_empty());
    let mut buf = std::mem::take(out);
    // A buffer partly sent has lost room at its front; this gets it back
    // (without copying: it is empty).
    if !buf.try_reclaim(OUTPUT_CHUNK) || buf.capacity() > MAX_SPARE_OUTPUT {
        return;
    }
    SPARE_OUTPUTS.with_borrow_mut(|spare| {
        if spare.len() < MAX_SPARE_OUTPUTS {
            spare.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        a.set_nonblocking(true).expect("nonblocking");
        (a, b)
    }

    #[test]
    fn an_empty_socket_gives_nothing_and_a_closed_one_end_of_file() {
        let (a, b) = pair();
        let mut input = Input::default();
        assert_eq!(input.recv(a.as_raw_fd()).expect("recv"), Received::Nothing);
        input.settle();
        drop(b);
        assert_eq!(input.recv(a.as_raw_fd()).expect("recv"), Received::Closed);
    }

    /// The read loop reads again, without decoding, after a read that got
    /// nothing: that must not count as reading before settling.
    #[test]
    fn a_read_that_got_nothing_needs_no_settling() {
        let (a, mut b) = pair();
        let mut input = Input::default();
        assert_eq!(input.recv(a.as_raw_fd()).expect("recv"), Received::Nothing);
        assert!(!input.in_arena);
        b.write_all(b"hello").expect("write");
        assert_eq!(
            input.recv(a.as_raw_fd()).expect("recv"),
            Received::Bytes { filled: false }
        );
        assert_eq!(&input.bytes()[..], b"hello");
    }

    #[test]
    fn a_partial_packet_leaves_the_arena_and_completes_in_its_own_buffer() {
        let (a, mut b) = pair();
        let mut input = Input::default();
        b.write_all(b"hello wo").expect("write");
        assert_eq!(
            input.recv(a.as_raw_fd()).expect("recv"),
            Received::Bytes { filled: false }
        );
        // The decoder takes the whole packet "hello", leaving " wo".
        let hello = input.bytes().split_to(5).freeze();
        input.settle();
        assert!(!input.in_arena);
        assert!(input.bytes.capacity() >= READ_CHUNK);

        b.write_all(b"rld").expect("write");
        input.recv(a.as_raw_fd()).expect("recv");
        assert_eq!(&input.bytes()[..], b" world");
        assert_eq!(&hello[..], b"hello");
        input.bytes().clear();
        input.settle();
        assert_eq!(input.bytes.capacity(), 0, "nothing held between packets");
    }

    #[test]
    fn reads_share_the_arena_until_it_fills() {
        let (a, mut b) = pair();
        let (c, mut d) = pair();
        b.write_all(b"one").expect("write");
        d.write_all(b"two").expect("write");
        let (one, _) = recv_arena(a.as_raw_fd()).expect("recv");
        let (two, _) = recv_arena(c.as_raw_fd()).expect("recv");
        assert_eq!((&one[..], &two[..]), (&b"one"[..], &b"two"[..]));
        // Contiguous slices of one allocation.
        assert_eq!(one.as_ptr().wrapping_add(3), two.as_ptr());
    }

    #[test]
    fn a_read_that_fills_its_room_says_so() {
        let (a, mut b) = pair();
        b.write_all(&[7; 3 * ARENA]).expect("write");
        let mut input = Input::default();
        // As if every read ended inside one long packet.
        while let Received::Bytes { filled: true } = input.recv(a.as_raw_fd()).expect("recv") {
            input.settle();
        }
        assert_eq!(input.bytes().len(), 3 * ARENA);
    }

    #[test]
    fn output_is_sent_and_its_buffer_kept_for_the_next_connection() {
        let (a, mut b) = pair();
        let mut out = output_buffer();
        out.extend_from_slice(b"pong");
        assert_eq!(send_from(a.as_raw_fd(), &mut out).expect("send"), Some(4));
        assert!(out.is_empty());
        release_output(&mut out);
        assert_eq!(out.capacity(), 0);
        let mut got = [0; 4];
        std::io::Read::read_exact(&mut b, &mut got).expect("read");
        assert_eq!(&got, b"pong");
        assert!(output_buffer().capacity() >= OUTPUT_CHUNK);
    }

    #[test]
    fn a_full_socket_takes_part_then_nothing() {
        let (a, _b) = pair();
        let mut out = BytesMut::from(&vec![1; 8 << 20][..]);
        let mut sent = 0;
        while let Some(n) = send_from(a.as_raw_fd(), &mut out).expect("send") {
            sent += n;
        }
        assert!(sent > 0 && !out.is_empty());
        assert_eq!(sent + out.len(), 8 << 20);
    }
}
