//! Flapping: a client id that connects more than `threshold` times within
//! `window` is refused for `ban` (EMQX's flapping detection). A client in
//! a reconnect loop, each connection taking over the last, costs a session
//! takeover, a will and log lines every time; the ban turns that into a
//! cheap refusal, and the client learns why (v5: 0x9F Connection rate
//! exceeded).
//!
//! Every CONNECT for a client id is served on the id's home shard, so each
//! shard tracks the ids homed on it, with no sharing. In a cluster each
//! node tracks the CONNECTs it receives. The window is counted from the
//! first CONNECT in it (a fixed window, restarted once it has passed), so
//! a client is banned somewhere between `threshold + 1` and
//! `2 * threshold` CONNECTs in `window`.
//!
//! Sans-IO: every call takes `now`.

use std::time::{Duration, Instant};

use bytestring::ByteString;
use rustc_hash::FxHashMap;

/// The map is not swept before it holds this many ids.
const MIN_SWEEP: usize = 1024;

/// How flapping is defined and punished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlappingSettings {
    /// CONNECTs allowed in a window; one more starts a ban. At least 1.
    pub threshold: u32,
    pub window: Duration,
    pub ban: Duration,
}

/// What a CONNECT met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admitted,
    /// This CONNECT made the client a flapper: banned until then.
    Banned(Instant),
    /// Refused: a ban is running, until then.
    StillBanned(Instant),
}

/// One shard's client ids and their recent CONNECTs.
#[derive(Debug)]
pub struct Flapping {
    settings: FlappingSettings,
    ids: FxHashMap<ByteString, Record>,
    /// Swept when it grows to this: twice what the last sweep kept.
    sweep_at: usize,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    window_start: Instant,
    connects: u32,
    banned_until: Option<Instant>,
}

impl Flapping {
    pub fn new(settings: FlappingSettings) -> Flapping {
        Flapping {
            settings,
            ids: FxHashMap::default(),
            sweep_at: MIN_SWEEP,
        }
    }

    /// Counts a CONNECT of `client_id` at `now`.
    pub fn connect(&mut self, client_id: &ByteString, now: Instant) -> Verdict {
        if let Some(record) = self.ids.get_mut(client_id) {
            return record.connect(&self.settings, now);
        }
        if self.ids.len() >= self.sweep_at {
            let settings = self.settings;
            self.ids
                .retain(|_, record| !record.is_stale(&settings, now));
            self.sweep_at = (2 * self.ids.len()).max(MIN_SWEEP);
        }
        let record = Record {
            window_start: now,
            connects: 0,
            banned_until: None,
        };
        self.ids
            .entry(client_id.clone())
            .or_insert(record)
            .connect(&self.settings, now)
    }
}

impl Record {
    fn connect(&mut self, settings: &FlappingSettings, now: Instant) -> Verdict {
        if let Some(until) = self.banned_until {
            if now < until {
                return Verdict::StillBanned(until);
            }
            // Served: the client starts again with a clean slate.
            self.banned_until = None;
            self.connects = 0;
        }
        if now >= self.window_start + settings.window {
            self.window_start = now;
            self.connects = 0;
        }
        self.connects += 1;
        if self.connects > settings.threshold {
            let until = now + settings.ban;
            self.banned_until = Some(until);
            return Verdict::Banned(until);
        }
        Verdict::Admitted
    }

    /// Nothing it holds would change the next verdict.
    fn is_stale(&self, settings: &FlappingSettings, now: Instant) -> bool {
        self.banned_until.is_none_or(|until| now >= until)
            && now >= self.window_start + settings.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: FlappingSettings = FlappingSettings {
        threshold: 3,
        window: Duration::from_secs(10),
        ban: Duration::from_secs(60),
    };

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn one_connect_too_many_in_the_window_bans_the_id() {
        let start = Instant::now();
        let mut flapping = Flapping::new(SETTINGS);
        let id = ByteString::from("flapper");
        for n in 0..3 {
            assert_eq!(flapping.connect(&id, start + secs(n)), Verdict::Admitted);
        }
        let until = start + secs(3) + SETTINGS.ban;
        assert_eq!(
            flapping.connect(&id, start + secs(3)),
            Verdict::Banned(until)
        );
        assert_eq!(
            flapping.connect(&id, start + secs(30)),
            Verdict::StillBanned(until)
        );
        // Other ids are not concerned.
        assert_eq!(
            flapping.connect(&"steady".into(), start + secs(4)),
            Verdict::Admitted
        );
        // After the ban, a fresh start.
        for n in 0..3 {
            assert_eq!(flapping.connect(&id, until + secs(n)), Verdict::Admitted);
        }
    }

    #[test]
    fn connects_spread_over_windows_are_not_flapping() {
        let start = Instant::now();
        let mut flapping = Flapping::new(SETTINGS);
        let id = ByteString::from("steady");
        for n in 0..30 {
            assert_eq!(
                flapping.connect(&id, start + secs(4 * n)),
                Verdict::Admitted,
                "connect {n}"
            );
        }
    }

    #[test]
    fn stale_ids_are_swept() {
        let start = Instant::now();
        let mut flapping = Flapping::new(SETTINGS);
        for n in 0..MIN_SWEEP {
            flapping.connect(&format!("c{n}").into(), start);
        }
        let banned = ByteString::from("c0");
        for _ in 0..3 {
            flapping.connect(&banned, start);
        }
        // A window later, every id but the banned one is forgotten on the
        // next insert.
        flapping.connect(&"late".into(), start + SETTINGS.window);
        assert_eq!(flapping.ids.len(), 2);
        assert!(matches!(
            flapping.connect(&banned, start + SETTINGS.window),
            Verdict::StillBanned(_)
        ));
    }
}
