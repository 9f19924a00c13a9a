//! Added delay on one node's link, in user space: this kernel has neither
//! `tc netem` nor NFQUEUE. The node's interface is a TAP device moved into
//! its namespace, and a twin TAP sits on the bridge; one thread each way
//! reads frames from one and another writes them to the other, holding
//! every frame the node sends for the delay set (what netem on the node's
//! egress would do), and frames to the node for none. Order is kept.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a blocked thread waits before it checks whether to stop.
const POLL: Duration = Duration::from_millis(100);

/// The frames between a node's TAP and its twin on the bridge.
pub struct Delayer {
    delay_micros: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Opens a TAP device named `name`; it lasts as long as its file.
pub fn open_tap(name: &str) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    assert!(name.len() < request.ifr_name.len(), "TAP name too long");
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads the ifreq we own, for the fd we own.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &request) };
    assert_eq!(
        rc,
        0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    file
}

/// Whether `file` has a frame to read within [`POLL`].
fn readable(file: &File) -> bool {
    let mut poll = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd we own, for an fd we own.
    let ready = unsafe { libc::poll(&mut poll, 1, POLL.as_millis() as libc::c_int) };
    ready > 0 && poll.revents & libc::POLLIN != 0
}

impl Delayer {
    /// Copies frames between `node` (the TAP in the node's namespace) and
    /// `bridge` (its twin on the bridge), with no delay to begin with.
    pub fn start(node: File, bridge: File) -> Delayer {
        let delay_micros = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let node_reader = node.try_clone().expect("dup the node's TAP");
        let bridge_reader = bridge.try_clone().expect("dup the bridge's TAP");
        for (from, to, delayed) in [(node_reader, bridge, true), (bridge_reader, node, false)] {
            let (frames_tx, frames_rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let delay = delayed.then(|| delay_micros.clone());
            let reading = stop.clone();
            threads.push(std::thread::spawn(move || {
                read_frames(from, delay, frames_tx, reading);
            }));
            let writing = stop.clone();
            threads.push(std::thread::spawn(move || {
                write_frames(to, frames_rx, writing);
            }));
        }
        Delayer {
            delay_micros,
            stop,
            threads,
        }
    }

    /// Every frame the node sends from now on waits `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_micros
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }
}

fn read_frames(
    mut from: File,
    delay: Option<Arc<AtomicU64>>,
    frames: mpsc::Sender<(Instant, Vec<u8>)>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        if !readable(&from) {
            continue;
        }
        let Ok(len) = from.read(&mut buf) else {
            return;
        };
        let wait = delay
            .as_ref()
            .map_or(0, |micros| micros.load(Ordering::Relaxed));
        let due = Instant::now() + Duration::from_micros(wait);
        if frames.send((due, buf[..len].to_vec())).is_err() {
            return;
        }
    }
}

fn write_frames(mut to: File, frames: mpsc::Receiver<(Instant, Vec<u8>)>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok((due, frame)) = frames.recv_timeout(POLL) else {
            continue;
        };
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        // A frame the device refuses (it went down) is lost, as on a wire.
        let _ = to.write(&frame);
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
