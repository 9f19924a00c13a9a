//! A rate limit as a generic cell rate algorithm (GCRA): the token bucket
//! kept as one instant, the theoretical arrival time (`tat`), instead of
//! a level and the time it was last refilled. Taking `n` units moves
//! `tat` on by `n` times the time one unit is worth; the bucket is empty
//! while `tat` is more than the burst ahead of now. Checking and charging
//! are a comparison and an addition, and nothing needs refilling.
//!
//! Sans-IO: every call takes `now`, so the tests drive time by hand.

use std::time::{Duration, Instant};

/// Time is kept in nanoseconds past this many units per second; more
/// would make one unit worth less than a nanosecond.
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The most a full bucket lets through at once: one second's worth.
const BURST: Duration = Duration::from_secs(1);

/// `rate` units per second, with a burst of one second's worth.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Nanoseconds one unit is worth, at least 1.
    unit_nanos: u64,
    /// When the units taken so far would all have been earned; at or
    /// before now, the bucket is full.
    tat: Instant,
}

impl Rate {
    /// A full bucket of `per_second` units (at least 1).
    pub fn new(per_second: u64, now: Instant) -> Rate {
        Rate {
            unit_nanos: (NANOS_PER_SEC / per_second.max(1)).max(1),
            tat: now,
        }
    }

    /// When the bucket has something in it again, if it is empty at `now`.
    /// Whatever is taken then may overdraw it (a packet larger than the
    /// burst still goes through): the debt is paid by the next wait, so
    /// the rate holds on average.
    pub fn empty_until(&self, now: Instant) -> Option<Instant> {
        let resumes = self.tat.checked_sub(BURST)?;
        (resumes > now).then_some(resumes)
    }

    /// Takes `units` at `now`.
    pub fn take(&mut self, now: Instant, units: u64) {
        let cost = Duration::from_nanos(units.saturating_mul(self.unit_nanos));
        self.tat = self.tat.max(now) + cost;
    }

    /// Takes one unit if the bucket is not empty at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.empty_until(now).is_some() {
            return false;
        }
        self.take(now, 1);
        true
    }

    /// The bucket is full at `now`: its state says nothing worth keeping.
    pub fn is_full(&self, now: Instant) -> bool {
        self.tat <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_lets_a_second_through_then_the_rate() {
        let start = Instant::now();
        let mut rate = Rate::new(10, start);
        let taken = (0..100).take_while(|_| rate.try_take(start)).count();
        // A second's worth, and the unit that starts the debt.
        assert_eq!(taken, 11);
        let resumes = rate.empty_until(start).expect("empty");
        assert_eq!(resumes, start + ms(100));
        assert!(!rate.try_take(start + ms(99)));
        assert!(rate.try_take(start + ms(100)));
        assert!(!rate.try_take(start + ms(150)));
        assert!(rate.try_take(start + ms(200)));
    }

    #[test]
    fn over_a_long_run_the_rate_holds() {
        let start = Instant::now();
        let mut rate = Rate::new(100, start);
        let mut now = start;
        let mut taken = 0;
        // A client as fast as it is let be, woken when the bucket refills.
        while taken < 500 {
            match rate.empty_until(now) {
                Some(resumes) => now = resumes,
                None => {
                    rate.take(now, 1);
                    taken += 1;
                }
            }
        }
        // The first second's worth at once, the other 400 at 100/s.
        let elapsed = now - start;
        assert!((ms(3_980)..=ms(4_000)).contains(&elapsed), "{elapsed:?}");
    }

    #[test]
    fn an_overdraft_is_paid_back_before_the_next_take() {
        let start = Instant::now();
        let mut rate = Rate::new(1_000, start);
        // Three seconds' worth in one packet.
        rate.take(start, 3_000);
        assert_eq!(rate.empty_until(start), Some(start + ms(2_000)));
        assert_eq!(rate.empty_until(start + ms(2_000)), None);
        assert!(!rate.is_full(start + ms(2_999)));
        assert!(rate.is_full(start + ms(3_000)));
    }

    #[test]
    fn an_idle_bucket_refills_to_one_burst_only() {
        let start = Instant::now();
        let mut rate = Rate::new(5, start);
        let later = start + Duration::from_secs(60);
        let taken = (0..100).take_while(|_| rate.try_take(later)).count();
        assert_eq!(taken, 6);
    }

    #[test]
    fn rates_finer_than_a_nanosecond_still_count() {
        let start = Instant::now();
        let mut rate = Rate::new(u64::MAX, start);
        rate.take(start, 2_000_000_000);
        assert_eq!(
            rate.empty_until(start),
            Some(start + Duration::from_secs(1))
        );
    }
}
