//! A trie keyed by topic-filter levels, holding a value of type `T` at each
//! filter. Matching a topic name walks only the branches that can match
//! (exact level, `+`, `#`), so cost follows the topic's depth, not the number
//! of filters.
//!
//! Walks recurse once per level. The depth is that of the deepest key, which
//! a client chooses (a 64 KiB filter of slashes is 65,536 levels), so the
//! layer that accepts filters and topics should cap their number of levels.

use std::str::Split;

use rustc_hash::FxHashMap;

/// `T` is what one filter holds: on a shard, the local sessions subscribed
/// with their options; in the route table, the set of shards (later nodes)
/// with at least one subscriber.
#[derive(Debug)]
pub struct TopicTrie<T> {
    root: Node<T>,
    /// Kept so `len` is O(1); it is read for metrics and emptiness checks.
    len: usize,
}

/// One level. `+` and `#` have fields of their own so that matching a
/// PUBLISH tries them without hashing, and so that a literal level can never
/// be mistaken for a wildcard.
#[derive(Debug)]
pub(super) struct Node<T> {
    value: Option<T>,
    literal: FxHashMap<Box<str>, Node<T>>,
    plus: Option<Box<Node<T>>>,
    hash: Option<Box<Node<T>>>,
}

impl<T: Default> TopicTrie<T> {
    /// The value at `filter`, created with `T::default()` if absent.
    pub fn entry(&mut self, filter: &str) -> &mut T {
        let node = self.root.descend_or_create(filter);
        if node.value.is_none() {
            self.len += 1;
        }
        node.value.get_or_insert_with(T::default)
    }
}

// No `Default` bound here: the retained store keeps `Arc<Message>` values,
// which have no sensible default.
impl<T> TopicTrie<T> {
    pub fn new() -> Self {
        TopicTrie {
            root: Node::default(),
            len: 0,
        }
    }

    /// Sets the value at `filter`, returning the one it replaces.
    pub fn insert(&mut self, filter: &str, value: T) -> Option<T> {
        let previous = self.root.descend_or_create(filter).value.replace(value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    pub fn get(&self, filter: &str) -> Option<&T> {
        filter
            .split('/')
            .try_fold(&self.root, |node, level| node.child(level))?
            .value
            .as_ref()
    }

    pub fn get_mut(&mut self, filter: &str) -> Option<&mut T> {
        filter
            .split('/')
            .try_fold(&mut self.root, |node, level| node.child_mut(level))?
            .value
            .as_mut()
    }

    /// Removes the value at `filter` and prunes empty branches.
    pub fn remove(&mut self, filter: &str) -> Option<T> {
        let removed = self.root.remove(filter.split('/'));
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// Calls `f` with the filter's value for every filter matching `topic`,
    /// following spec 4.7 (including: `$` topics are not matched by a
    /// wildcard in the first level).
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&T)) {
        let mut levels = Levels::new(topic);
        // `split` yields at least one level, even for "".
        if let Some(first) = levels.next() {
            let wildcards = !first.starts_with('$');
            self.root.match_level(first, levels, wildcards, &mut f);
        }
    }

    /// Number of filters held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The node of the empty path, for walks that treat keys as topic names
    /// (the retained store).
    pub(super) fn root(&self) -> &Node<T> {
        &self.root
    }
}

impl<T> Node<T> {
    pub(super) fn value(&self) -> Option<&T> {
        self.value.as_ref()
    }

    /// Children under literal levels; `+` and `#` children are not included.
    pub(super) fn literal_children(&self) -> impl Iterator<Item = (&str, &Node<T>)> {
        self.literal.iter().map(|(level, node)| (&**level, node))
    }

    pub(super) fn child(&self, level: &str) -> Option<&Node<T>> {
        match level {
            "+" => self.plus.as_deref(),
            "#" => self.hash.as_deref(),
            _ => self.literal.get(level),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<T>> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            _ => self.literal.get_mut(level),
        }
    }

    fn remove_child(&mut self, level: &str) {
        match level {
            "+" => self.plus = None,
            "#" => self.hash = None,
            _ => {
                self.literal.remove(level);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.value.is_none()
            && self.literal.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
    }

    fn descend_or_create(&mut self, filter: &str) -> &mut Node<T> {
        filter.split('/').fold(self, |node, level| match level {
            "+" => node.plus.get_or_insert_with(Box::default),
            "#" => node.hash.get_or_insert_with(Box::default),
            _ => node.literal.entry(level.into()).or_default(),
        })
    }

    fn remove(&mut self, mut levels: Split<'_, char>) -> Option<T> {
        let Some(level) = levels.next() else {
            return self.value.take();
        };
        let child = self.child_mut(level)?;
        let removed = child.remove(levels);
        if child.is_empty() {
            self.remove_child(level);
        }
        removed
    }

    /// Visits the values of filters that match a topic whose current level is
    /// `level` and whose remaining levels are `rest`, from this node down.
    /// `wildcards` is false only for a first level starting with `$`.
    fn match_level(
        &self,
        level: &str,
        mut rest: Levels<'_>,
        wildcards: bool,
        f: &mut impl FnMut(&T),
    ) {
        if wildcards {
            // A `#` child is always the filter's last level: no need to
            // look at its children.
            if let Some(value) = self.hash.as_ref().and_then(|hash| hash.value.as_ref()) {
                f(value);
            }
        }
        let next = rest.next();
        if wildcards && let Some(plus) = &self.plus {
            plus.match_rest(next, rest.clone(), f);
        }
        if let Some(child) = self.literal.get(level) {
            child.match_rest(next, rest, f);
        }
    }

    /// Continues a match at this node, where `next` is the topic's next
    /// level, or `None` if the topic ended at this node.
    fn match_rest(&self, next: Option<&str>, rest: Levels<'_>, f: &mut impl FnMut(&T)) {
        match next {
            Some(level) => self.match_level(level, rest, true, f),
            None => {
                if let Some(value) = &self.value {
                    f(value);
                }
                // `sport/#` matches `sport` itself.
                if let Some(value) = self.hash.as_ref().and_then(|hash| hash.value.as_ref()) {
                    f(value);
                }
            }
        }
    }
}

/// A topic's levels, as `topic.split('/')` yields them, for matching.
/// `str::split` with a `char` goes through `CharSearcher`, whose set-up
/// outweighs the search on levels a few bytes long: it was 2.2% of a
/// node's CPU in cross-node pairs at QoS 0, where each message is matched
/// four times (twice per shard, once per cluster thread); a plain byte scan
/// ('/' is ASCII, so never inside a multi-byte character) does the same.
#[derive(Clone)]
struct Levels<'a> {
    /// What is left to split; `None` once the last level is out.
    rest: Option<&'a str>,
}

impl<'a> Levels<'a> {
    fn new(topic: &'a str) -> Self {
        Levels { rest: Some(topic) }
    }
}

impl<'a> Iterator for Levels<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match rest.bytes().position(|b| b == b'/') {
            Some(at) => {
                let (level, after) = rest.split_at(at);
                self.rest = Some(&after[1..]);
                Some(level)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        Self::new()
    }
}

// Written out, here and above, because the derive would require
// `T: Default`, which an empty trie does not need.
impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            value: None,
            literal: FxHashMap::default(),
            plus: None,
            hash: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::topic::matches;
    use crate::router::strategies::{filter, topic};

    proptest! {
        #[test]
        fn levels_are_those_of_split(topic in "[ab/é]{0,20}") {
            let levels: Vec<&str> = Levels::new(&topic).collect();
            let split: Vec<&str> = topic.split('/').collect();
            prop_assert_eq!(levels, split);
        }
    }

    #[test]
    fn levels_of_edge_cases() {
        for topic in ["", "/", "//", "a", "a/", "/a", "a//b", "é/ü/", "$SYS/x"] {
            let levels: Vec<&str> = Levels::new(topic).collect();
            assert_eq!(levels, topic.split('/').collect::<Vec<_>>(), "{topic:?}");
        }
    }

    /// The filters of `trie` matching `topic`, sorted; each filter's value is
    /// the filter itself.
    fn matching(trie: &TopicTrie<String>, topic: &str) -> Vec<String> {
        let mut found = Vec::new();
        trie.for_each_match(topic, |filter| found.push(filter.clone()));
        found.sort();
        found
    }

    fn trie_of(filters: &[&str]) -> TopicTrie<String> {
        let mut trie = TopicTrie::new();
        for filter in filters {
            *trie.entry(filter) = filter.to_string();
        }
        trie
    }

    #[test]
    fn spec_examples() {
        let trie = trie_of(&[
            "sport/tennis/player1/#",
            "sport/#",
            "sport/tennis/+",
            "sport/+",
            "+/+",
            "/+",
            "+",
            "#",
            "$SYS/#",
            "$SYS/monitor/+",
            "+/monitor/Clients",
        ]);
        assert_eq!(
            matching(&trie, "sport/tennis/player1"),
            ["#", "sport/#", "sport/tennis/+", "sport/tennis/player1/#"]
        );
        assert_eq!(
            matching(&trie, "sport/tennis/player1/ranking"),
            ["#", "sport/#", "sport/tennis/player1/#"]
        );
        assert_eq!(matching(&trie, "sport"), ["#", "+", "sport/#"]);
        assert_eq!(
            matching(&trie, "sport/"),
            ["#", "+/+", "sport/#", "sport/+"]
        );
        assert_eq!(matching(&trie, "/finance"), ["#", "+/+", "/+"]);
        assert_eq!(
            matching(&trie, "$SYS/monitor/Clients"),
            ["$SYS/#", "$SYS/monitor/+"]
        );
        assert_eq!(matching(&trie, "$SYS"), ["$SYS/#"]);
        assert!(matching(&trie, "$other/x").is_empty());
    }

    #[test]
    fn empty_levels_are_levels() {
        let trie = trie_of(&["/", "+/+", "//", "+//+", "a//b", "a/+/b", "+", "#"]);
        assert_eq!(matching(&trie, "/"), ["#", "+/+", "/"]);
        assert_eq!(matching(&trie, "//"), ["#", "+//+", "//"]);
        assert_eq!(matching(&trie, "a//b"), ["#", "+//+", "a/+/b", "a//b"]);
        assert_eq!(matching(&trie, "a"), ["#", "+"]);
    }

    #[test]
    fn dollar_is_literal_below_the_first_level() {
        let trie = trie_of(&["a/+", "a/#", "+/$x"]);
        assert_eq!(matching(&trie, "a/$x"), ["+/$x", "a/#", "a/+"]);
    }

    #[test]
    fn entry_get_and_len() {
        let mut trie: TopicTrie<u32> = TopicTrie::new();
        assert!(trie.is_empty());
        *trie.entry("a/+/c") += 1;
        *trie.entry("a/+/c") += 1;
        *trie.entry("a/#") += 5;
        assert_eq!(trie.len(), 2);
        assert_eq!(trie.get("a/+/c"), Some(&2));
        assert_eq!(trie.get("a/+"), None, "an inner node holds no value");
        assert_eq!(trie.get("a/b/c"), None);
        if let Some(value) = trie.get_mut("a/#") {
            *value = 7;
        }
        assert_eq!(trie.get("a/#"), Some(&7));
        assert_eq!(trie.insert("a/#", 9), Some(7));
        assert_eq!(trie.insert("x", 1), None);
        assert_eq!(trie.len(), 3);
    }

    #[test]
    fn remove_prunes_empty_branches() {
        let mut trie: TopicTrie<u32> = TopicTrie::new();
        *trie.entry("a/b/c/d") = 1;
        *trie.entry("a/b") = 2;
        *trie.entry("a/+/#") = 3;
        assert_eq!(trie.remove("a/b/c"), None, "no value there");
        assert_eq!(trie.remove("a/b/c/d"), Some(1));
        let b = trie
            .root
            .child("a")
            .and_then(|a| a.child("b"))
            .expect("a/b holds a value");
        assert!(b.literal.is_empty(), "c and d pruned, b kept for its value");
        assert_eq!(trie.remove("a/+/#"), Some(3));
        assert!(trie.root.child("a").is_some_and(|a| a.plus.is_none()));
        assert_eq!(trie.remove("a/b"), Some(2));
        assert_eq!(trie.remove("a/b"), None);
        assert!(trie.root.is_empty());
        assert!(trie.is_empty());
    }

    #[test]
    fn remove_keeps_nodes_with_children() {
        let mut trie: TopicTrie<u32> = TopicTrie::new();
        *trie.entry("a") = 1;
        *trie.entry("a/b") = 2;
        assert_eq!(trie.remove("a"), Some(1));
        assert_eq!(trie.get("a/b"), Some(&2));
        assert_eq!(trie.len(), 1);
    }

    proptest! {
        #[test]
        fn for_each_match_agrees_with_matches(
            filters in prop::collection::vec(filter(), 0..30),
            removed in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
            topics in prop::collection::vec(topic(), 1..20),
        ) {
            let mut trie = TopicTrie::new();
            for filter in &filters {
                *trie.entry(filter) = filter.clone();
            }
            let mut kept = filters.clone();
            for index in removed {
                if kept.is_empty() {
                    break;
                }
                let filter = kept.swap_remove(index.index(kept.len()));
                trie.remove(&filter);
                kept.retain(|other| *other != filter);
            }
            kept.sort();
            kept.dedup();
            prop_assert_eq!(trie.len(), kept.len());
            for topic in &topics {
                let expected: Vec<String> =
                    kept.iter().filter(|filter| matches(filter, topic)).cloned().collect();
                prop_assert_eq!(matching(&trie, topic), expected, "topic {}", topic);
            }
            for filter in &kept {
                prop_assert_eq!(trie.remove(filter), Some(filter.clone()));
            }
            prop_assert!(trie.root.is_empty(), "every branch pruned");
        }
    }
}
