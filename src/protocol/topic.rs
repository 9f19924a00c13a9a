//! Topic names and topic filters (spec 4.7).
//!
//! The codec already guarantees well-formed UTF-8 without U+0000; these rules
//! are the ones about levels and wildcards.

/// Maximum topic length in bytes: the 16-bit string length of the wire.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Most levels a topic name or filter may have. The spec sets no limit,
/// but the trie walks recurse once per level: a 64 KiB topic of slashes
/// would otherwise be 65,536 nested calls on a shard's stack.
pub const MAX_TOPIC_LEVELS: usize = 1024;

/// A topic name a PUBLISH may carry: non-empty, no wildcards.
/// Empty levels (`a//b`, `/a`) are allowed.
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC_LEN
        && !topic.contains(['+', '#'])
        && within_level_limit(topic)
}

fn within_level_limit(topic: &str) -> bool {
    levels(topic) <= MAX_TOPIC_LEVELS
}

/// Levels in a topic name or filter: one more than its separators.
fn levels(topic: &str) -> usize {
    topic.bytes().filter(|&b| b == b'/').count() + 1
}

/// The operator's limits on topic names and filters, tighter than the
/// protocol's own ([`MAX_TOPIC_LEN`], [`MAX_TOPIC_LEVELS`]): every level
/// is a trie node and every byte is kept per subscription and per
/// retained message, so these bound what one client can make the broker
/// hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLimits {
    /// Bytes, at most [`MAX_TOPIC_LEN`].
    pub max_length: usize,
    /// At most [`MAX_TOPIC_LEVELS`].
    pub max_levels: usize,
}

impl TopicLimits {
    /// No limit beyond the protocol's.
    pub const PROTOCOL: TopicLimits = TopicLimits {
        max_length: MAX_TOPIC_LEN,
        max_levels: MAX_TOPIC_LEVELS,
    };

    /// Whether a topic name or filter (already valid) is within the limits.
    pub fn admits(&self, topic: &str) -> bool {
        topic.len() <= self.max_length && levels(topic) <= self.max_levels
    }
}

/// A topic filter a SUBSCRIBE may carry: non-empty, `#` only as the whole
/// last level, `+` only as a whole level.
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_TOPIC_LEN || !within_level_limit(filter) {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        match level {
            "#" if is_last => {}
            "+" => {}
            _ if level.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
}

/// Whether `filter` (already valid) matches `topic` (already valid).
///
/// Topics starting with `$` are not matched by a filter whose first level is
/// a wildcard (spec 4.7.2), so `#` does not see `$SYS/...`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(valid_topic_name("a/b/c"));
        assert!(valid_topic_name("/"));
        assert!(valid_topic_name("a//b"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name("a/+/c"));
        assert!(!valid_topic_name("a/#"));
        assert!(!valid_topic_name("a+"));
        assert!(valid_topic_name(&"/".repeat(MAX_TOPIC_LEVELS - 1)));
        assert!(!valid_topic_name(&"/".repeat(MAX_TOPIC_LEVELS)));
    }

    #[test]
    fn topic_filters() {
        for ok in [
            "#",
            "+",
            "a/#",
            "+/+",
            "/+",
            "a//#",
            "sport/+/player1",
            "$SYS/#",
        ] {
            assert!(valid_topic_filter(ok), "{ok}");
        }
        for bad in ["", "a/#/b", "a#", "a/b#", "a+/b", "#/a", "++"] {
            assert!(!valid_topic_filter(bad), "{bad}");
        }
        assert!(!valid_topic_filter(&"+/".repeat(MAX_TOPIC_LEVELS)));
    }

    #[test]
    fn limits_count_bytes_and_levels() {
        let limits = TopicLimits {
            max_length: 5,
            max_levels: 3,
        };
        assert!(limits.admits("a/b/c"));
        assert!(!limits.admits("a/b/cd"), "6 bytes");
        assert!(!limits.admits("a/b/c/"), "4 levels, the last empty");
        assert!(limits.admits("//"), "3 empty levels");
        assert!(!limits.admits("///"));
        assert!(limits.admits("é/+"), "4 bytes: length is in bytes");
        assert!(!limits.admits("éé/+"));
        assert!(TopicLimits::PROTOCOL.admits(&"/".repeat(MAX_TOPIC_LEVELS - 1)));
    }

    #[test]
    fn matching_follows_the_spec_examples() {
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(!matches("#", "$SYS/uptime"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
    }
}
