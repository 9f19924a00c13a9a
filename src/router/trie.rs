//! A trie keyed by topic-filter levels, holding a value of type `T` at each
//! filter. Matching a topic name walks only the branches that can match
//! (exact level, `+`, `#`), so cost follows the topic's depth, not the number
//! of filters.

/// `T` is what one filter holds: on a shard, the local sessions subscribed
/// with their options; in the route table, the set of shards (later nodes)
/// with at least one subscriber.
#[derive(Debug)]
pub struct TopicTrie<T> {
    _value: std::marker::PhantomData<T>,
}

impl<T: Default> TopicTrie<T> {
    pub fn new() -> Self {
        todo!("router")
    }

    /// The value at `filter`, created with `T::default()` if absent.
    pub fn entry(&mut self, filter: &str) -> &mut T {
        let _ = filter;
        todo!("router")
    }

    pub fn get(&self, filter: &str) -> Option<&T> {
        let _ = filter;
        todo!("router")
    }

    pub fn get_mut(&mut self, filter: &str) -> Option<&mut T> {
        let _ = filter;
        todo!("router")
    }

    /// Removes the value at `filter` and prunes empty branches.
    pub fn remove(&mut self, filter: &str) -> Option<T> {
        let _ = filter;
        todo!("router")
    }

    /// Calls `f` with the filter's value for every filter matching `topic`,
    /// following spec 4.7 (including: `$` topics are not matched by a
    /// wildcard in the first level).
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&T)) {
        let _ = (topic, &mut f);
        todo!("router")
    }

    /// Number of filters held.
    pub fn len(&self) -> usize {
        todo!("router")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Default> Default for TopicTrie<T> {
    fn default() -> Self {
        Self::new()
    }
}
