//! Per source address: connection attempts per second and connections
//! open at once.
//!
//! Shared by every shard: a client's connections land on any shard (the
//! kernel spreads them with SO_REUSEPORT) and may move to another after
//! their CONNECT. The table is only touched when a connection is accepted
//! and when it closes, never on the publish path, so a lock is cheap
//! enough; it is split in stripes so that shards accepting at once rarely
//! meet on one. With both limits off there is no table at all.
//!
//! Its memory is bounded: an entry lives while its address has a
//! connection open or a rate bucket not yet full again (a second after its
//! last attempt at most), idle entries are swept out as the table grows,
//! and past [`MAX_ENTRIES`] a new address is admitted untracked rather
//! than stored. IPv6 sources count per /64, the block one host is usually
//! given (it can use any address in it); an IPv4-mapped address counts as
//! the IPv4 one.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHasher};
use tracing::warn;

use super::rate::Rate;

/// Addresses tracked at most, each some 64 bytes with the map's overhead:
/// about 16 MB. More than the sources of the connections a broker holds
/// by default (`max_connections` is 100,000) and a second's new ones; an
/// attack from more addresses than this loses its per-address limits, not
/// the broker its memory.
const MAX_ENTRIES: usize = 1 << 18;
const STRIPES: usize = 16;
const STRIPE_ENTRIES: usize = MAX_ENTRIES / STRIPES;
/// A stripe is not swept before it holds this many entries.
const MIN_SWEEP: usize = 1024;
/// Refusals are logged at most this often, with a count of the others.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Which per-address limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressLimit {
    /// `max_connections_per_address` connections from it are open.
    Connections,
    /// It tried more than `max_connection_rate_per_address` times a second.
    Rate,
}

/// The per-address limits and what they track; clones share the table.
#[derive(Debug, Clone, Default)]
pub struct AddressLimits {
    /// `None` with both limits off.
    table: Option<Arc<Table>>,
}

/// A connection's place under its address's limit, given back on drop,
/// wherever the connection ends.
#[derive(Debug, Default)]
pub struct AddressPermit {
    /// `None` when nothing was counted (limits off, or the table full).
    held: Option<(Arc<Table>, Source)>,
}

#[derive(Debug)]
struct Table {
    /// `u32::MAX` for no limit.
    max_open: u32,
    /// Attempts per second; 0 for no limit.
    rate: u64,
    stripes: Box<[Mutex<Stripe>]>,
    log: Mutex<LogGate>,
}

#[derive(Debug, Default)]
struct Stripe {
    entries: FxHashMap<Source, Entry>,
    /// The stripe is swept when it grows to this: twice what the last
    /// sweep kept, so sweeping costs a constant per insert.
    sweep_at: usize,
    last_sweep: Option<Instant>,
}

#[derive(Debug)]
struct Entry {
    open: u32,
    attempts: Option<Rate>,
}

/// What a limit counts by: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Source(IpAddr);

/// Lets one refusal line a second through, counting the rest.
#[derive(Debug, Default)]
struct LogGate {
    last: Option<Instant>,
    suppressed: u64,
}

impl AddressLimits {
    /// 0 is no limit for either.
    pub fn new(max_open: u32, attempts_per_second: u64) -> AddressLimits {
        if max_open == 0 && attempts_per_second == 0 {
            return AddressLimits::default();
        }
        let table = Table {
            max_open: if max_open == 0 { u32::MAX } else { max_open },
            rate: attempts_per_second,
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
            log: Mutex::default(),
        };
        AddressLimits {
            table: Some(Arc::new(table)),
        }
    }

    /// Counts a connection attempt from `ip` at `now`: a permit to hold
    /// for the connection's life, or the limit that refuses it (logged
    /// here, at most once a second).
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<AddressPermit, AddressLimit> {
        let Some(table) = &self.table else {
            return Ok(AddressPermit::default());
        };
        let source = Source::of(ip);
        let admitted = table.admit(source, now);
        match admitted {
            Ok(true) => Ok(AddressPermit {
                held: Some((table.clone(), source)),
            }),
            Ok(false) => Ok(AddressPermit::default()),
            Err(limit) => {
                table.log_refusal(source, limit, now);
                Err(limit)
            }
        }
    }

    /// Addresses tracked now, for tests.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table.as_ref().map_or(0, |table| {
            table.stripes.iter().map(|s| lock(s).entries.len()).sum()
        })
    }
}

impl Table {
    /// `Ok(true)` counted, `Ok(false)` admitted untracked (table full).
    fn admit(&self, source: Source, now: Instant) -> Result<bool, AddressLimit> {
        let mut stripe = lock(&self.stripes[source.stripe()]);
        if !stripe.entries.contains_key(&source) && !stripe.make_room(now) {
            return Ok(false);
        }
        let entry = stripe.entries.entry(source).or_insert_with(|| Entry {
            open: 0,
            attempts: (self.rate > 0).then(|| Rate::new(self.rate, now)),
        });
        if let Some(attempts) = &mut entry.attempts
            && !attempts.try_take(now)
        {
            return Err(AddressLimit::Rate);
        }
        if entry.open >= self.max_open {
            return Err(AddressLimit::Connections);
        }
        entry.open += 1;
        Ok(true)
    }

    fn release(&self, source: Source) {
        let mut stripe = lock(&self.stripes[source.stripe()]);
        if let Some(entry) = stripe.entries.get_mut(&source) {
            entry.open = entry.open.saturating_sub(1);
            // A rate bucket is kept until it is full again, by a sweep.
            if entry.open == 0 && entry.attempts.is_none() {
                stripe.entries.remove(&source);
            }
        }
    }

    fn log_refusal(&self, source: Source, limit: AddressLimit, now: Instant) {
        let mut gate = lock(&self.log);
        if gate.last.is_some_and(|last| now < last + LOG_EVERY) {
            gate.suppressed += 1;
            return;
        }
        let others = std::mem::take(&mut gate.suppressed);
        gate.last = Some(now);
        drop(gate);
        warn!(
            address = %source.0,
            ?limit,
            refused_since_last_line = others,
            "connection refused: too many from one address"
        );
    }
}

impl Stripe {
    /// Whether a new entry may be added, after sweeping idle ones out if
    /// the stripe has grown enough to be worth it.
    fn make_room(&mut self, now: Instant) -> bool {
        let len = self.entries.len();
        // Full of busy entries: rate buckets refill within a second, so a
        // sweep a second later frees their room.
        let full_and_stale = len >= STRIPE_ENTRIES
            && self
                .last_sweep
                .is_none_or(|last| now >= last + Duration::from_secs(1));
        if len >= self.sweep_at.max(MIN_SWEEP) || full_and_stale {
            self.entries.retain(|_, entry| !entry.is_idle(now));
            self.sweep_at = 2 * self.entries.len();
            self.last_sweep = Some(now);
        }
        self.entries.len() < STRIPE_ENTRIES
    }
}

impl Entry {
    fn is_idle(&self, now: Instant) -> bool {
        self.open == 0 && self.attempts.as_ref().is_none_or(|r| r.is_full(now))
    }
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => Source(IpAddr::V6(Ipv6Addr::from_bits(
                    v6.to_bits() & !u128::from(u64::MAX),
                ))),
            },
        }
    }

    fn stripe(&self) -> usize {
        let mut hasher = FxHasher::default();
        self.hash(&mut hasher);
        hasher.finish() as usize % STRIPES
    }
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        if let Some((table, source)) = self.held.take() {
            table.release(source);
        }
    }
}

/// A panic elsewhere leaves the counts as they were: still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn off_tracks_nothing() {
        let limits = AddressLimits::new(0, 0);
        let now = Instant::now();
        let permits: Vec<_> = (0..100)
            .map(|_| limits.admit(ip("10.0.0.1"), now).expect("admitted"))
            .collect();
        assert_eq!(permits.len(), 100);
        assert_eq!(limits.tracked(), 0);
    }

    #[test]
    fn open_connections_per_address() {
        let limits = AddressLimits::new(2, 0);
        let now = Instant::now();
        let a = limits.admit(ip("10.0.0.1"), now).expect("first");
        let b = limits.clone().admit(ip("10.0.0.1"), now).expect("second");
        assert_eq!(
            limits.admit(ip("10.0.0.1"), now).unwrap_err(),
            AddressLimit::Connections
        );
        let other = limits.admit(ip("10.0.0.2"), now).expect("another address");
        drop(a);
        let c = limits.admit(ip("10.0.0.1"), now).expect("a place freed");
        drop((b, c, other));
        assert_eq!(limits.tracked(), 0, "closed addresses are forgotten");
    }

    #[test]
    fn attempts_per_second_per_address() {
        let limits = AddressLimits::new(0, 5);
        let start = Instant::now();
        let admitted = (0..20)
            .filter_map(|_| limits.admit(ip("10.0.0.1"), start).ok())
            .count();
        assert_eq!(admitted, 6, "a second's worth, and one");
        assert_eq!(
            limits.admit(ip("10.0.0.1"), start).unwrap_err(),
            AddressLimit::Rate
        );
        assert!(limits.admit(ip("10.0.0.2"), start).is_ok());
        // Refused attempts did not deepen the debt.
        let later = start + Duration::from_millis(200);
        assert!(limits.admit(ip("10.0.0.1"), later).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let limits = AddressLimits::new(1, 0);
        let now = Instant::now();
        let _a = limits.admit(ip("2001:db8:1:2::1"), now).expect("first");
        assert!(limits.admit(ip("2001:db8:1:2:ffff::9"), now).is_err());
        assert!(limits.admit(ip("2001:db8:1:3::1"), now).is_ok());
        let _v4 = limits.admit(ip("192.0.2.1"), now).expect("v4");
        assert!(limits.admit(ip("::ffff:192.0.2.1"), now).is_err());
    }

    #[test]
    fn idle_entries_are_swept_and_the_table_is_bounded() {
        let limits = AddressLimits::new(0, 1);
        let start = Instant::now();
        // Each address tries once: a bucket each, full again a second on.
        for n in 0..(MAX_ENTRIES as u32 + 5_000) {
            let _ = limits.admit(IpAddr::V4(n.into()), start);
        }
        assert!(limits.tracked() <= MAX_ENTRIES);
        // Admitted untracked rather than refused or stored.
        assert!(limits.admit(ip("10.9.9.9"), start).is_ok());
        let later = start + Duration::from_secs(2);
        for n in 0..(STRIPES as u32 * 2 * MIN_SWEEP as u32) {
            let _ = limits.admit(IpAddr::V4((u32::MAX - n).into()), later);
        }
        assert!(
            limits.tracked() < 3 * STRIPES * MIN_SWEEP,
            "the idle entries were swept: {}",
            limits.tracked()
        );
    }
}
