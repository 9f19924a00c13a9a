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
