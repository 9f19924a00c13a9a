//! Counting what subscribers received against what was published: each
//! payload is `publisher:number`, numbers from 0 per publisher.

use std::collections::BTreeMap;

/// Lost, duplicated and reordered messages, summed over publishers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub lost: usize,
    pub duplicated: usize,
    pub reordered: usize,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lost={} duplicated={} reordered={}",
            self.lost, self.duplicated, self.reordered
        )
    }
}

/// `published` is how many each publisher sent (numbers `0..count`),
/// `received` what arrived, in arrival order.
pub fn tally(published: &BTreeMap<String, u32>, received: &[(String, u32)]) -> Tally {
    let mut tally = Tally::default();
    for (publisher, &count) in published {
        let seen: Vec<u32> = received
            .iter()
            .filter(|(p, _)| p == publisher)
            .map(|&(_, n)| n)
            .collect();
        let mut unique = seen.clone();
        unique.sort_unstable();
        unique.dedup();
        tally.duplicated += seen.len() - unique.len();
        tally.lost += (0..count)
            .filter(|n| unique.binary_search(n).is_err())
            .count();
        tally.reordered += seen.windows(2).filter(|pair| pair[1] < pair[0]).count();
    }
    tally
}

/// What `tally` counts as lost, by publisher and number, for a failure's
/// message: which messages went missing says where to look.
pub fn missing(published: &BTreeMap<String, u32>, received: &[(String, u32)]) -> Vec<String> {
    published
        .iter()
        .flat_map(|(publisher, &count)| {
            (0..count)
                .filter(move |&n| !received.iter().any(|(p, m)| p == publisher && *m == n))
                .map(move |n| format!("{publisher}:{n}"))
        })
        .collect()
}

/// `publisher:number` from a payload.
pub fn parse(payload: &[u8]) -> (String, u32) {
    let text = std::str::from_utf8(payload).expect("UTF-8 payload");
    let (publisher, n) = text.split_once(':').expect("publisher:number");
    let n = n.split(':').next().unwrap_or(n);
    (publisher.to_owned(), n.parse().expect("number"))
}
