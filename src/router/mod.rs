//! Pure data structures for routing: the subscription trie, the route table
//! (which other shards have subscribers for which filters), the retained
//! message store, and shared subscription groups. No I/O, no clocks, no `Send` requirements.

pub mod retained;
pub mod shared;
#[cfg(test)]
mod strategies;
pub mod trie;

pub use retained::RetainedStore;
pub use trie::TopicTrie;
