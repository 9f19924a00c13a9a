//! The broker-wide connection limit.
//!
//! This is the one counter the shards share: connections are accepted on
//! every shard and may end on another (after a handoff), so no shard can
//! count them alone. It is touched once when a connection is accepted and
//! once when it closes, never on the publish path, so an atomic is cheap
//! enough; nothing else is synchronised through it, hence `Relaxed`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tracing::warn;

use crate::abuse::address::AddressPermit;

/// How many client connections may be open at once, and how many are.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    /// `usize::MAX` for no limit.
    max: usize,
    open: Arc<AtomicUsize>,
    /// Connections refused so far, for the log.
    refused: Arc<AtomicU64>,
}

/// One admitted connection's place under the limit, given back when it is
/// dropped, wherever the connection ended.
#[derive(Debug)]
pub struct ConnectionPermit {
    open: Arc<AtomicUsize>,
    /// The connection's place under its source address's limits, which
    /// travels with it the same way.
    address: AddressPermit,
}

impl ConnectionLimit {
    /// 0 is no limit, as in the configuration.
    pub fn new(max: usize) -> ConnectionLimit {
        ConnectionLimit {
            max: if max == 0 { usize::MAX } else { max },
            open: Arc::default(),
            refused: Arc::default(),
        }
    }

    /// A place for a new connection, or `None` when all are taken. A
    /// refused connection takes no place: it is answered and closed.
    pub fn admit(&self) -> Option<ConnectionPermit> {
        let admitted = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                (open < self.max).then_some(open + 1)
            })
            .is_ok();
        if !admitted {
            // Logged at the 1st, 2nd, 4th, 8th... refusal: an operator
            // learns the limit is hit without a flood of connections
            // becoming a flood of log lines.
            let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if refused.is_power_of_two() {
                warn!(
                    max_connections = self.max,
                    refused, "connection limit reached; refusing new connections"
                );
            }
            return None;
        }
        Some(ConnectionPermit {
            open: self.open.clone(),
            address: AddressPermit::default(),
        })
    }
}

/// Descriptors the broker keeps open besides its client connections:
/// stdio, listeners, io_uring, the shards' wake-up sockets, the metrics
/// server's connections, the store's files and the cluster's sockets, with
/// room to spare for a connection being refused.
const OWN_DESCRIPTORS: u64 = 64;
const OWN_DESCRIPTORS_PER_SHARD: u64 = 16;

/// `max_connections` as the open-file limit lets it be.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenFilesFit {
    /// The configured limit fits.
    Fits(usize),
    /// Lowered to what fits: past the open-file limit a client is not
    /// refused with a CONNACK but waits in the kernel's accept queue while
    /// every accept fails (EMFILE), so the CONNACK refusal must come first.
    Lowered {
        configured: usize,
        to: usize,
        open_files: u64,
    },
}

/// Fits `configured` (0 for no limit) under `open_files` descriptors with
/// `shards` shards.
pub fn fit_to_open_files(configured: usize, open_files: u64, shards: usize) -> OpenFilesFit {
    let own = OWN_DESCRIPTORS + OWN_DESCRIPTORS_PER_SHARD * shards as u64;
    let room = usize::try_from(open_files.saturating_sub(own).max(1)).unwrap_or(usize::MAX);
    if configured != 0 && configured <= room {
        OpenFilesFit::Fits(configured)
    } else {
        OpenFilesFit::Lowered {
            configured,
            to: room,
            open_files,
        }
    }
}

/// Raises the process's soft open-file limit to its hard limit, as servers
/// do (systemd's `LimitNOFILE=` sets both; a shell's `ulimit -n` often only
/// the hard one), and returns the soft limit now in force.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; the soft limit may be raised
        // up to the hard one without privileges.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}

impl ConnectionPermit {
    /// Holds `address` until the connection ends.
    pub fn hold(&mut self, address: AddressPermit) {
        self.address = address;
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_within_the_open_files_is_kept() {
        assert_eq!(
            fit_to_open_files(1000, 1_048_576, 2),
            OpenFilesFit::Fits(1000)
        );
        assert_eq!(
            fit_to_open_files(19_904, 20_000, 2),
            OpenFilesFit::Fits(19_904)
        );
    }

    #[test]
    fn a_limit_past_the_open_files_is_lowered_below_them() {
        assert_eq!(
            fit_to_open_files(100_000, 20_000, 2),
            OpenFilesFit::Lowered {
                configured: 100_000,
                to: 19_904,
                open_files: 20_000,
            }
        );
        // No limit at all is lowered the same way.
        assert_eq!(
            fit_to_open_files(0, 1024, 1),
            OpenFilesFit::Lowered {
                configured: 0,
                to: 944,
                open_files: 1024,
            }
        );
        // Fewer descriptors than the broker needs itself: one connection.
        assert_eq!(
            fit_to_open_files(10, 50, 4),
            OpenFilesFit::Lowered {
                configured: 10,
                to: 1,
                open_files: 50,
            }
        );
    }

    #[test]
    fn places_are_taken_and_given_back() {
        let limit = ConnectionLimit::new(2);
        let a = limit.admit().expect("first");
        let b = limit.clone().admit().expect("second, through a clone");
        assert!(limit.admit().is_none(), "full");
        drop(a);
        let c = limit.admit().expect("a place was freed");
        assert!(limit.admit().is_none());
        drop((b, c));
        assert_eq!(limit.open.load(Ordering::Relaxed), 0);
        assert_eq!(limit.refused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn zero_is_no_limit() {
        let limit = ConnectionLimit::new(0);
        let permits: Vec<_> = (0..1000).filter_map(|_| limit.admit()).collect();
        assert_eq!(permits.len(), 1000);
    }
}
