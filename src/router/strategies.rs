//! Proptest strategies shared by the trie and retained store tests. Levels
//! come from a small alphabet, so random filters and topics collide often
//! enough for matches to happen.

use proptest::prelude::*;

use crate::protocol::topic::{valid_topic_filter, valid_topic_name};

/// Includes an empty level and a `$` level for the spec's edge cases.
fn level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b", "", "$s"])
}

pub fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("valid topic name", |topic| valid_topic_name(topic))
}

pub fn filter() -> impl Strategy<Value = String> {
    let filter_level = prop_oneof![3 => level(), 1 => Just("+")];
    let with_levels = (prop::collection::vec(filter_level, 1..5), any::<bool>()).prop_map(
        |(mut levels, hash)| {
            if hash {
                levels.push("#");
            }
            levels.join("/")
        },
    );
    // `#` alone cannot come out of `with_levels`, which always has a level
    // before the `#`.
    prop_oneof![9 => with_levels, 1 => Just("#".to_string())]
        .prop_filter("valid topic filter", |filter| valid_topic_filter(filter))
}
