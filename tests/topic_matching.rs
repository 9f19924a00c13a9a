//! Property test of subscription matching through the real broker: for
//! random topic filters and topic names, a subscriber receives exactly the
//! publications a reference matcher (written from the spec, section 4.7)
//! says it should.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use common::raw::Raw;
use common::wire::{self, Connect, Pub};
use common::{Broker, unique_id};

/// Spec matching: `+` one level, `#` the rest (including the parent),
/// and wildcards in the first level never match a topic starting with `$`.
fn reference_match(filter: &str, topic: &str) -> bool {
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if topic.starts_with('$') && (f[0] == "+" || f[0] == "#") {
        return false;
    }
    let mut i = 0;
    loop {
        match (f.get(i), t.get(i)) {
            (Some(&"#"), _) => return true,
            (Some(&"+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
        i += 1;
    }
}

fn topic_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "", "$s"]), 1..4)
        .prop_map(|levels| levels.join("/"))
        // A topic name must be at least one character long.
        .prop_filter("empty topic", |t| !t.is_empty())
}

fn filter_strategy() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(vec!["a", "b", "", "+", "$s"]), 0..4),
        any::<bool>(),
    )
        .prop_filter_map("empty filter", |(mut levels, hash)| {
            if hash {
                levels.push("#");
            }
            let filter = levels.join("/");
            (!filter.is_empty()).then_some(filter)
        })
}

#[test]
fn wildcard_matching_agrees_with_the_spec() {
    // Reference matcher sanity checks, so a wrong oracle cannot pass silently.
    assert!(reference_match("a/+", "a/b"));
    assert!(reference_match("a/#", "a"));
    assert!(!reference_match("#", "$s/a"));
    assert!(reference_match("$s/#", "$s/a"));
    assert!(!reference_match("a/+", "a/b/c"));
    assert!(reference_match("+/+", "/a"));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = Broker::start(&["--cores", "2"]);
    let addr = broker.addr;
    let mut runner = TestRunner::new(Config {
        cases: 40,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        filter_strategy(),
        prop::collection::btree_set(topic_strategy(), 1..6),
    );
    runner
        .run(&strategy, |(filter, topics)| {
            let expected: BTreeSet<String> = topics
                .iter()
                .filter(|t| reference_match(&filter, t))
                .cloned()
                .collect();
            let got = rt.block_on(async {
                let (mut sub, _) = Raw::connect_ok(addr, Connect::v4(&unique_id("pm-sub"))).await;
                let codes = sub.subscribe(1, &[(&filter, 0)]).await;
                assert_eq!(codes, vec![0], "filter {filter:?} refused");
                let (mut publisher, _) =
                    Raw::connect_ok(addr, Connect::v4(&unique_id("pm-pub"))).await;
                for topic in &topics {
                    publisher.publish(Pub::new(topic, b"p").qos(1, 1)).await;
                }
                // No ordering holds across topics, so wait for quiet rather
                // than for a marker message.
                let mut got = BTreeSet::new();
                while let Ok(p) = sub.try_recv(Duration::from_millis(400)).await {
                    let p = p.publish(wire::V4);
                    assert!(got.insert(p.topic.clone()), "{:?} delivered twice", p.topic);
                }
                got
            });
            prop_assert_eq!(got, expected, "filter {:?} topics {:?}", filter, topics);
            Ok(())
        })
        .unwrap();
}
