//! A client's PUBLISH rate: messages and bytes per second, enforced by
//! reading the client more slowly, never by dropping what it sent.
//!
//! The connection's reader charges each PUBLISH it decodes, and stops
//! decoding, then reading, while either bucket is empty: the packets wait
//! in the client's socket, TCP's window closes, and the client's writes
//! block. A v5 client publishing at QoS 1 or 2 sees its PUBACKs slow to
//! the rate, so its Receive Maximum bounds what it has in flight.

use std::time::Instant;

use super::rate::Rate;

/// Which of a client's PUBLISH limits it reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishLimit {
    Messages,
    Bytes,
}

/// The per-client limits, as configured; 0 is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishLimits {
    pub messages_per_second: u64,
    pub bytes_per_second: u64,
}

/// One client's buckets.
#[derive(Debug)]
pub struct PublishRate {
    messages: Option<Rate>,
    bytes: Option<Rate>,
}

impl PublishLimits {
    /// A connection's buckets, full, or `None` when neither limit is set:
    /// then the reader pays one branch per packet.
    pub fn start(&self, now: Instant) -> Option<Box<PublishRate>> {
        let bucket = |per_second| (per_second > 0).then(|| Rate::new(per_second, now));
        let rate = PublishRate {
            messages: bucket(self.messages_per_second),
            bytes: bucket(self.bytes_per_second),
        };
        // Boxed: every connection's reader holds the `Option`, few hold a
        // rate.
        (rate.messages.is_some() || rate.bytes.is_some()).then(|| Box::new(rate))
    }
}

impl PublishRate {
    /// A PUBLISH of `bytes` (the whole packet) was decoded at `now`.
    pub fn charge(&mut self, now: Instant, bytes: usize) {
        if let Some(messages) = &mut self.messages {
            messages.take(now, 1);
        }
        if let Some(rate) = &mut self.bytes {
            rate.take(now, bytes as u64);
        }
    }

    /// Until when the client is not read, and which limit holds it, if
    /// one does at `now`.
    pub fn paused(&self, now: Instant) -> Option<(Instant, PublishLimit)> {
        let messages = self.messages.as_ref().and_then(|r| r.empty_until(now));
        let bytes = self.bytes.as_ref().and_then(|r| r.empty_until(now));
        match (messages, bytes) {
            (Some(m), Some(b)) if b > m => Some((b, PublishLimit::Bytes)),
            (Some(m), _) => Some((m, PublishLimit::Messages)),
            (None, Some(b)) => Some((b, PublishLimit::Bytes)),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn no_limit_costs_no_rate() {
        assert!(PublishLimits::default().start(Instant::now()).is_none());
    }

    #[test]
    fn the_later_of_the_two_limits_holds_the_client() {
        let start = Instant::now();
        let limits = PublishLimits {
            messages_per_second: 10,
            bytes_per_second: 1_000,
        };
        let mut rate = limits.start(start).expect("limited");
        for _ in 0..11 {
            assert_eq!(rate.paused(start), None);
            rate.charge(start, 10);
        }
        assert_eq!(
            rate.paused(start),
            Some((start + Duration::from_millis(100), PublishLimit::Messages))
        );
        // A large packet: the byte limit now holds it longer.
        rate.charge(start, 3_000);
        assert_eq!(
            rate.paused(start),
            Some((start + Duration::from_millis(2_110), PublishLimit::Bytes))
        );
    }

    #[test]
    fn each_limit_alone() {
        let start = Instant::now();
        let bytes_only = PublishLimits {
            messages_per_second: 0,
            bytes_per_second: 100,
        };
        let mut rate = bytes_only.start(start).expect("limited");
        for _ in 0..1_000 {
            rate.charge(start, 0);
        }
        assert_eq!(rate.paused(start), None, "messages are not counted");
        rate.charge(start, 150);
        assert_eq!(
            rate.paused(start),
            Some((start + Duration::from_millis(500), PublishLimit::Bytes))
        );
    }
}
