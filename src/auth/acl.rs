//! `acl_file`: who may publish to and read which topics, in Mosquitto's
//! format, so an existing file works unchanged.
//!
//! ```text
//! # comments and blank lines are skipped
//! topic read public/#          lines before any `user` line: anonymous clients
//! user alice                   starts alice's block
//! topic readwrite alice/#      access is read, write, readwrite or deny;
//! topic sensors/+/temp         omitted, it is readwrite
//! pattern write devices/%c/#   every client, %c its client id, %u its user
//! ```
//!
//! The rules, Mosquitto's:
//! - once an ACL is configured, what no line grants is denied;
//! - a `deny` line that matches wins over any grant;
//! - `topic` lines apply to the user of the block they are in, or to
//!   anonymous clients (no user name) before the first `user` line; a user
//!   name without a block gets only the patterns;
//! - `pattern` lines apply to every client wherever they are in the file;
//!   one naming `%u` does not apply to an anonymous client, and a client id
//!   or user name holding `+` or `#` (which would turn the pattern into a
//!   wider filter) gets no pattern at all, and no access.
//!
//! A topic is checked by matching it against the lines' filters (so
//! `topic read sensors/#` grants reading `sensors/a/b`). A SUBSCRIBE
//! filter is checked by coverage: it is granted when a read line's filter
//! covers every topic the subscription could match (`sensors/#` covers
//! `sensors/+/temp`, not `#`), and refused when a deny line covers it.
//! Every message delivered is then checked against the receiver's read
//! lines, so a subscription to `sensors/#` beside `topic deny
//! sensors/secret` is granted but never gets `sensors/secret`.
//!
//! [`Acl`] is the parsed file; [`Rules`] are one client's lines with its
//! patterns substituted, computed once per session (see
//! [`super::acl_cache`]).

use std::fmt;

use bytestring::ByteString;
use rustc_hash::FxHashMap;

use crate::protocol::topic::{matches, valid_topic_filter};

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// What a line grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

/// One `topic` or `pattern` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    grant: Grant,
    filter: ByteString,
}

/// The parsed file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    anonymous: Vec<Line>,
    users: FxHashMap<String, Vec<Line>>,
    patterns: Vec<Line>,
}

/// Why a file does not parse, with its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclFileError {
    pub line: usize,
    pub reason: String,
}

/// One client's effective lines: the ones of its block (or the anonymous
/// ones) and the patterns, substituted. Denials apart, so a check looks
/// at them first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    deny: Vec<ByteString>,
    read: Vec<ByteString>,
    write: Vec<ByteString>,
}

impl Grant {
    fn parse(word: &str) -> Option<Grant> {
        match word {
            "read" => Some(Grant::Read),
            "write" => Some(Grant::Write),
            "readwrite" => Some(Grant::ReadWrite),
            "deny" => Some(Grant::Deny),
            _ => None,
        }
    }
}

impl Acl {
    /// Parses a whole file.
    pub fn parse(text: &str) -> Result<Acl, AclFileError> {
        let mut acl = Acl::default();
        // `None` before the first `user` line: the anonymous block.
        let mut user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let error = |reason: &str| AclFileError {
                line: index + 1,
                reason: reason.into(),
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line
                .split_once(char::is_whitespace)
                .map_or((line, ""), |(k, r)| (k, r.trim_start()));
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(error("`user` needs a user name"));
                    }
                    // Mosquitto takes the rest of the line, spaces included.
                    let name = rest.to_string();
                    acl.users.entry(name.clone()).or_default();
                    user = Some(name);
                }
                "topic" | "pattern" => {
                    let line = parse_access(rest).map_err(|reason| error(&reason))?;
                    if keyword == "pattern" {
                        acl.patterns.push(line);
                    } else if let Some(user) = &user {
                        acl.users.entry(user.clone()).or_default().push(line);
                    } else {
                        acl.anonymous.push(line);
                    }
                }
                other => {
                    return Err(error(&format!(
                        "unknown keyword {other:?} (expected user, topic or pattern)"
                    )));
                }
            }
        }
        Ok(acl)
    }

    /// Lines in the file (users' blocks, anonymous block and patterns),
    /// for the log.
    pub fn len(&self) -> usize {
        self.anonymous.len()
            + self.patterns.len()
            + self.users.values().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lines that apply to a client, patterns substituted.
    pub fn rules_for(&self, user: Option<&str>, client_id: &str) -> Rules {
        let mut rules = Rules::default();
        let own = match user {
            None => Some(&self.anonymous),
            Some(user) => self.users.get(user),
        };
        for line in own.into_iter().flatten() {
            rules.push(line.grant, line.filter.clone());
        }
        // A wildcard in a client id or user name would widen a pattern
        // into a filter the file never meant (`%c` of `#` is every topic):
        // such a client gets nothing at all, as with Mosquitto.
        let dangerous = |value: &str| value.contains(['+', '#']);
        if !self.patterns.is_empty() && (dangerous(client_id) || user.is_some_and(dangerous)) {
            return Rules::deny_all();
        }
        for line in &self.patterns {
            let uses_user = line.filter.contains("%u");
            let filter = match user {
                Some(user) => line.filter.replace("%u", user),
                None if uses_user => continue,
                None => line.filter.to_string(),
            };
            rules.push(line.grant, filter.replace("%c", client_id).into());
        }
        rules
    }

    /// Whether `topic` may be read or written: the whole rule, for tests
    /// and one-off checks. Sessions keep their [`Rules`] instead.
    pub fn check(&self, user: Option<&str>, client_id: &str, topic: &str, access: Access) -> bool {
        self.rules_for(user, client_id).check(topic, access)
    }
}

impl Rules {
    /// Everything denied (a client whose id would widen a pattern).
    fn deny_all() -> Rules {
        Rules {
            deny: vec![ByteString::from_static("#")],
            ..Rules::default()
        }
    }

    fn push(&mut self, grant: Grant, filter: ByteString) {
        match grant {
            Grant::Deny => self.deny.push(filter),
            Grant::Read => self.read.push(filter),
            Grant::Write => self.write.push(filter),
            Grant::ReadWrite => {
                self.read.push(filter.clone());
                self.write.push(filter);
            }
        }
    }

    /// Whether a PUBLISH to (`Write`) or a message on (`Read`) `topic`, a
    /// valid topic name, is allowed.
    pub fn check(&self, topic: &str, access: Access) -> bool {
        let grants = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        !self.deny.iter().any(|filter| matches(filter, topic))
            && grants.iter().any(|filter| matches(filter, topic))
    }

    /// Whether a SUBSCRIBE to `filter`, a valid topic filter, is granted:
    /// covered by a read line and by no deny line (see the module doc).
    pub fn may_subscribe(&self, filter: &str) -> bool {
        !self.deny.iter().any(|deny| covers(deny, filter))
            && self.read.iter().any(|read| covers(read, filter))
    }
}

/// Whether every topic `filter` matches is matched by `acl` too.
fn covers(acl: &str, filter: &str) -> bool {
    // A wildcard first level never matches a `$` topic (spec 4.7.2).
    if filter.starts_with('$') && acl.starts_with(['+', '#']) {
        return false;
    }
    let mut acl_levels = acl.split('/');
    let mut filter_levels = filter.split('/');
    loop {
        match (acl_levels.next(), filter_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(a), Some(f)) if a == f && f != "+" && f != "#" => {}
            // `a/#` matching `a` itself is the first arm's.
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// `[access] TOPIC` after `topic` or `pattern`.
fn parse_access(rest: &str) -> Result<Line, String> {
    if rest.is_empty() {
        return Err("needs a topic".into());
    }
    let (grant, filter) = match rest.split_once(char::is_whitespace) {
        Some((word, filter)) => match Grant::parse(word) {
            Some(grant) => (grant, filter.trim_start()),
            // Mosquitto reads an unknown first word as part of the topic
            // only when the line has one word; two words whose first is
            // not an access is a mistake worth naming.
            None => {
                return Err(format!(
                    "unknown access {word:?} (expected read, write, readwrite or deny)"
                ));
            }
        },
        None => (Grant::ReadWrite, rest),
    };
    if filter.is_empty() {
        return Err("needs a topic after the access".into());
    }
    // `%u`/`%c` stand for one level's text, which a filter allows anywhere.
    if !valid_topic_filter(filter) {
        return Err(format!("invalid topic filter {filter:?}"));
    }
    Ok(Line {
        grant,
        filter: filter.into(),
    })
}

impl fmt::Display for AclFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for AclFileError {}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# anonymous clients
topic read public/#

user alice
topic readwrite alice/#
topic sensors/+/temp
topic deny alice/secret

user bob
topic read #
topic deny sensors/#

pattern write devices/%c/#
pattern read users/%u/inbox
";

    fn acl() -> Acl {
        Acl::parse(FILE).expect("valid")
    }

    #[test]
    fn anonymous_clients_get_the_lines_before_any_user() {
        let acl = acl();
        assert!(acl.check(None, "c1", "public/news", Access::Read));
        assert!(!acl.check(None, "c1", "public/news", Access::Write));
        assert!(!acl.check(None, "c1", "alice/x", Access::Read));
        assert!(!acl.check(Some("alice"), "c1", "public/news", Access::Read));
    }

    #[test]
    fn a_users_block_and_readwrite_by_default() {
        let acl = acl();
        for access in [Access::Read, Access::Write] {
            assert!(acl.check(Some("alice"), "c1", "alice/a/b", access));
            assert!(acl.check(Some("alice"), "c1", "sensors/1/temp", access));
            assert!(!acl.check(Some("alice"), "c1", "sensors/1/hum", access));
        }
        assert!(!acl.check(Some("carol"), "c1", "alice/a", Access::Read));
    }

    #[test]
    fn deny_wins_over_a_grant() {
        let acl = acl();
        assert!(!acl.check(Some("alice"), "c1", "alice/secret", Access::Read));
        assert!(!acl.check(Some("alice"), "c1", "alice/secret", Access::Write));
        assert!(acl.check(Some("bob"), "c1", "anything/else", Access::Read));
        assert!(!acl.check(Some("bob"), "c1", "sensors/1/temp", Access::Read));
    }

    #[test]
    fn patterns_substitute_client_id_and_user() {
        let acl = acl();
        assert!(acl.check(Some("alice"), "dev7", "devices/dev7/state", Access::Write));
        assert!(acl.check(None, "dev7", "devices/dev7/state", Access::Write));
        assert!(!acl.check(None, "dev7", "devices/dev8/state", Access::Write));
        assert!(acl.check(Some("carol"), "c1", "users/carol/inbox", Access::Read));
        assert!(!acl.check(Some("carol"), "c1", "users/dave/inbox", Access::Read));
        // %u never matches an anonymous client, not even literally.
        assert!(!acl.check(None, "c1", "users/%u/inbox", Access::Read));
        assert!(!acl.check(None, "c1", "users//inbox", Access::Read));
    }

    #[test]
    fn a_wildcard_in_an_id_gets_no_access() {
        let acl = acl();
        assert!(!acl.check(None, "#", "devices/x/state", Access::Write));
        assert!(!acl.check(Some("+"), "c1", "users/a/inbox", Access::Read));
        assert!(!acl.check(Some("a#"), "c1", "public/x", Access::Read));
    }

    #[test]
    fn wildcard_lines_match_topics_and_dollar_topics_stay_apart() {
        let acl = Acl::parse("topic read #\ntopic write +/cmd\n").expect("valid");
        assert!(acl.check(None, "c", "a/b/c", Access::Read));
        assert!(!acl.check(None, "c", "$SYS/broker/uptime", Access::Read));
        assert!(acl.check(None, "c", "x/cmd", Access::Write));
        assert!(!acl.check(None, "c", "x/y/cmd", Access::Write));
    }

    #[test]
    fn a_subscription_is_granted_when_a_read_line_covers_it() {
        let rules = acl().rules_for(Some("alice"), "c1");
        assert!(rules.may_subscribe("alice/#"));
        assert!(rules.may_subscribe("alice/+/x"));
        assert!(rules.may_subscribe("alice"), "alice/# matches alice");
        assert!(rules.may_subscribe("sensors/+/temp"));
        assert!(rules.may_subscribe("sensors/1/temp"));
        assert!(!rules.may_subscribe("sensors/#"));
        assert!(!rules.may_subscribe("#"));
        assert!(!rules.may_subscribe("+/+/temp"));
        // Covered by a deny line: refused. Overlapping one: granted, and
        // the denied topic is filtered on delivery.
        assert!(!rules.may_subscribe("alice/secret"));
        assert!(rules.may_subscribe("alice/+"));
        assert!(!rules.check("alice/secret", Access::Read));

        let bob = acl().rules_for(Some("bob"), "c1");
        assert!(bob.may_subscribe("#"));
        assert!(!bob.may_subscribe("sensors/1/temp"));
        assert!(!bob.may_subscribe("$SYS/#"));
    }

    #[test]
    fn coverage() {
        for (acl, filter, covered) in [
            ("#", "a/b", true),
            ("a/#", "a/+/#", true),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/b", "a/+", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("+/#", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
        ] {
            assert_eq!(covers(acl, filter), covered, "{acl} covers {filter}");
        }
    }

    #[test]
    fn mistakes_are_named_with_their_line() {
        for (text, line, says) in [
            ("topic\n", 1, "needs a topic"),
            ("\n# c\ntopic reed a/b\n", 3, "unknown access \"reed\""),
            ("user\n", 1, "needs a user name"),
            ("topics read a\n", 1, "unknown keyword"),
            ("topic read a/#/b\n", 1, "invalid topic filter"),
        ] {
            let error = Acl::parse(text).expect_err(text);
            assert_eq!(error.line, line, "{text}");
            assert!(error.to_string().contains(says), "{error}");
        }
    }

    #[test]
    fn an_empty_file_denies_everything() {
        let acl = Acl::parse("# nothing\n\n").expect("valid");
        assert!(acl.is_empty());
        assert!(!acl.check(None, "c", "a", Access::Read));
        assert!(!acl.check(Some("u"), "c", "a", Access::Write));
    }
}
