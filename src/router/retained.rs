//! Retained messages, one per topic name, in a trie keyed by topic levels so
//! that a wildcard subscribe walks only matching branches instead of
//! scanning every retained topic.

use std::sync::Arc;

use crate::message::Message;

#[derive(Debug, Default)]
pub struct RetainedStore {
    _todo: (),
}

impl RetainedStore {
    pub fn new() -> Self {
        todo!("router")
    }

    /// Stores `message` under its topic, replacing the previous one; an
    /// empty payload deletes the topic's retained message instead (spec
    /// 3.3.1.3).
    pub fn apply(&mut self, message: Arc<Message>) {
        let _ = message;
        todo!("router")
    }

    /// Calls `f` for each retained message whose topic matches `filter`
    /// (spec 4.7, including the `$` rule).
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&Arc<Message>)) {
        let _ = (filter, &mut f);
        todo!("router")
    }

    pub fn len(&self) -> usize {
        todo!("router")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
