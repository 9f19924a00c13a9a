//! Retained messages, one per topic name, in a trie keyed by topic levels so
//! that a wildcard subscribe walks only matching branches instead of
//! scanning every retained topic.
//!
//! The keys are topic names, so the trie's `+` and `#` children stay empty
//! and the walk goes the other way round from routing: the filter's levels
//! pick the branches.

use std::str::Split;
use std::sync::Arc;

use super::trie::{Node, TopicTrie};
use crate::message::Message;

#[derive(Debug, Default)]
pub struct RetainedStore {
    topics: TopicTrie<Arc<Message>>,
}

impl RetainedStore {
    pub fn new() -> Self {
        RetainedStore {
            topics: TopicTrie::new(),
        }
    }

    /// Stores `message` under its topic, replacing the previous one; an
    /// empty payload deletes the topic's retained message instead (spec
    /// 3.3.1.3).
    pub fn apply(&mut self, message: Arc<Message>) {
        if message.payload.is_empty() {
            self.topics.remove(&message.topic);
        } else {
            let topic = message.topic.clone();
            self.topics.insert(&topic, message);
        }
    }

    /// Calls `f` for each retained message whose topic matches `filter`
    /// (spec 4.7, including the `$` rule).
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&Arc<Message>)) {
        let mut levels = filter.split('/');
        if let Some(first) = levels.next() {
            match_filter_level(self.topics.root(), first, levels, true, &mut f);
        }
    }

    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Visits the messages under `node` matched by a filter whose current level
/// is `level` and whose remaining levels are `rest`. `at_root` marks the
/// first level, where wildcards skip topics starting with `$`.
fn match_filter_level(
    node: &Node<Arc<Message>>,
    level: &str,
    mut rest: Split<'_, char>,
    at_root: bool,
    f: &mut impl FnMut(&Arc<Message>),
) {
    let wildcard_children = || {
        node.literal_children()
            .filter(move |(name, _)| !(at_root && name.starts_with('$')))
            .map(|(_, child)| child)
    };
    match level {
        "#" => {
            // `x/#` matches `x` itself; at the root there is no topic to match.
            if let Some(message) = node.value() {
                f(message);
            }
            wildcard_children().for_each(|child| visit_subtree(child, f));
        }
        "+" => {
            let next = rest.next();
            for child in wildcard_children() {
                match_filter_rest(child, next, rest.clone(), f);
            }
        }
        _ => {
            if let Some(child) = node.child(level) {
                match_filter_rest(child, rest.next(), rest, f);
            }
        }
    }
}

/// Continues at `node` with the filter's next level, or takes the node's
/// own message if the filter has ended here.
fn match_filter_rest(
    node: &Node<Arc<Message>>,
    next: Option<&str>,
    rest: Split<'_, char>,
    f: &mut impl FnMut(&Arc<Message>),
) {
    match next {
        Some(level) => match_filter_level(node, level, rest, false, f),
        None => {
            if let Some(message) = node.value() {
                f(message);
            }
        }
    }
}

fn visit_subtree(node: &Node<Arc<Message>>, f: &mut impl FnMut(&Arc<Message>)) {
    if let Some(message) = node.value() {
        f(message);
    }
    for (_, child) in node.literal_children() {
        visit_subtree(child, f);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::topic::matches;
    use crate::protocol::{LazyPublishProperties, QoS};
    use crate::router::strategies::{filter, topic};

    fn message(topic: &str, payload: &'static str) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from_static(payload.as_bytes()),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: LazyPublishProperties::default(),
            publisher: "publisher".into(),
            expires_at: None,
            received_at: std::time::Instant::now(),
        })
    }

    fn store_of(topics: &[&str]) -> RetainedStore {
        let mut store = RetainedStore::new();
        for topic in topics {
            store.apply(message(topic, "retained"));
        }
        store
    }

    fn matching(store: &RetainedStore, filter: &str) -> Vec<String> {
        let mut found = Vec::new();
        store.for_each_match(filter, |message| found.push(message.topic.to_string()));
        found.sort();
        found
    }

    #[test]
    fn spec_examples() {
        let store = store_of(&[
            "sport",
            "sport/",
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "/finance",
            "$SYS/monitor/Clients",
        ]);
        assert_eq!(
            matching(&store, "sport/tennis/player1/#"),
            ["sport/tennis/player1", "sport/tennis/player1/ranking"]
        );
        assert_eq!(
            matching(&store, "sport/#"),
            [
                "sport",
                "sport/",
                "sport/tennis/player1",
                "sport/tennis/player1/ranking"
            ]
        );
        assert_eq!(matching(&store, "sport/tennis/+"), ["sport/tennis/player1"]);
        assert_eq!(matching(&store, "sport/+"), ["sport/"]);
        assert_eq!(matching(&store, "+/+"), ["/finance", "sport/"]);
        assert_eq!(matching(&store, "/+"), ["/finance"]);
        assert_eq!(matching(&store, "+"), ["sport"]);
        assert_eq!(
            matching(&store, "#"),
            [
                "/finance",
                "sport",
                "sport/",
                "sport/tennis/player1",
                "sport/tennis/player1/ranking"
            ]
        );
        assert!(matching(&store, "+/monitor/Clients").is_empty());
        assert_eq!(matching(&store, "$SYS/#"), ["$SYS/monitor/Clients"]);
        assert_eq!(matching(&store, "$SYS/monitor/+"), ["$SYS/monitor/Clients"]);
        assert_eq!(
            matching(&store, "sport/tennis/player1"),
            ["sport/tennis/player1"]
        );
        assert!(
            matching(&store, "sport/tennis").is_empty(),
            "no message at an inner level"
        );
    }

    #[test]
    fn apply_replaces_and_empty_payload_deletes() {
        let mut store = RetainedStore::new();
        assert!(store.is_empty());
        store.apply(message("a/b", "one"));
        store.apply(message("a/b", "two"));
        store.apply(message("a/b/c", "three"));
        assert_eq!(store.len(), 2);
        let mut payloads = Vec::new();
        store.for_each_match("a/b", |message| payloads.push(message.payload.clone()));
        assert_eq!(payloads, ["two"]);

        store.apply(message("a/b", ""));
        assert_eq!(store.len(), 1);
        assert_eq!(matching(&store, "#"), ["a/b/c"]);
        store.apply(message("a/b/c", ""));
        assert!(store.is_empty());
        assert_eq!(
            store.topics.root().literal_children().count(),
            0,
            "branch pruned"
        );
        store.apply(message("never/stored", ""));
        assert!(store.is_empty());
    }

    proptest! {
        #[test]
        fn for_each_match_agrees_with_matches(
            stored in prop::collection::vec((topic(), any::<bool>()), 0..30),
            filters in prop::collection::vec(filter(), 1..20),
        ) {
            let mut store = RetainedStore::new();
            let mut expected_topics = std::collections::BTreeSet::new();
            for (topic, delete) in &stored {
                store.apply(message(topic, if *delete { "" } else { "x" }));
                if *delete {
                    expected_topics.remove(topic);
                } else {
                    expected_topics.insert(topic.clone());
                }
            }
            prop_assert_eq!(store.len(), expected_topics.len());
            for filter in &filters {
                let expected: Vec<String> =
                    expected_topics.iter().filter(|topic| matches(filter, topic)).cloned().collect();
                prop_assert_eq!(matching(&store, filter), expected, "filter {}", filter);
            }
        }
    }
}
