//! The ACL at run time: the file every shard shares, swapped whole on
//! SIGHUP ([`AclHandle`]), and each session's own view of it
//! ([`SessionAcl`]): its rules computed once at CONNECT and a small cache
//! of decisions, so the publish and delivery paths pay a hash lookup, not
//! a walk of the file's lines.
//!
//! A reload bumps a version; a session compares it with the one its rules
//! were computed from at each check (one relaxed atomic load) and
//! recomputes them, and forgets its cache, when it changed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytestring::ByteString;
use rustc_hash::FxHashMap;

use super::acl::{Access, Acl, Rules};

/// Topics a session remembers decisions for. A subscriber to `#` on a
/// broker with millions of topics would otherwise grow without bound; past
/// this the cache starts again empty, which costs a walk of the rules per
/// topic until it fills, no worse than no cache.
const CACHE_TOPICS: usize = 256;

/// The ACL file as every shard sees it.
#[derive(Debug)]
pub struct AclHandle {
    pub path: PathBuf,
    /// Swapped whole on reload; read when a session computes its rules.
    current: RwLock<Arc<Acl>>,
    /// Bumped after each swap.
    version: AtomicU64,
}

/// One session's rules and decisions.
#[derive(Debug)]
pub struct SessionAcl {
    handle: Arc<AclHandle>,
    user: Option<ByteString>,
    client_id: ByteString,
    /// The handle's version `rules` were computed from.
    version: u64,
    rules: Rules,
    /// Per topic: bit 0 read decided, 1 read allowed, 2 write decided,
    /// 3 write allowed.
    decisions: FxHashMap<ByteString, u8>,
    /// Refusals since the shard last took them, for its metrics.
    pub denied: Denials,
}

/// ACL refusals by kind, as counted in `ringmq_acl_denied_total{kind}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Denials {
    pub publish: u64,
    pub subscribe: u64,
    pub deliver: u64,
}

impl AclHandle {
    pub fn new(path: PathBuf, acl: Acl) -> AclHandle {
        AclHandle {
            path,
            current: RwLock::new(Arc::new(acl)),
            version: AtomicU64::new(0),
        }
    }

    pub fn current(&self) -> Arc<Acl> {
        match self.current.read() {
            Ok(acl) => acl.clone(),
            // A swap never panics while holding the lock; if one did, the
            // file it left is still whole.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts a newly read file in place; sessions pick it up at their next
    /// check.
    pub fn replace(&self, acl: Acl) {
        let acl = Arc::new(acl);
        match self.current.write() {
            Ok(mut current) => *current = acl,
            Err(poisoned) => *poisoned.into_inner() = acl,
        }
        self.version.fetch_add(1, Ordering::Release);
    }

    fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

impl SessionAcl {
    /// The rules of the client that just connected.
    /// The user name the rules are for.
    pub fn user(&self) -> Option<&ByteString> {
        self.user.as_ref()
    }

    pub fn new(
        handle: Arc<AclHandle>,
        user: Option<ByteString>,
        client_id: ByteString,
    ) -> SessionAcl {
        // Read before the file: a reload between the two is seen again at
        // the next check rather than missed.
        let version = handle.version();
        let rules = handle.current().rules_for(user.as_deref(), &client_id);
        SessionAcl {
            handle,
            user,
            client_id,
            version,
            rules,
            decisions: FxHashMap::default(),
            denied: Denials::default(),
        }
    }

    /// Whether `topic` may be read or written. The caller counts a
    /// refusal in [`SessionAcl::denied`]: it knows which kind it was.
    pub fn check(&mut self, topic: &ByteString, access: Access) -> bool {
        self.refresh();
        let (decided, allowed) = match access {
            Access::Read => (1, 2),
            Access::Write => (4, 8),
        };
        let bits = self.decisions.get(topic).copied().unwrap_or_default();
        if bits & decided != 0 {
            return bits & allowed != 0;
        }
        let allow = self.rules.check(topic, access);
        if self.decisions.len() >= CACHE_TOPICS && bits == 0 {
            self.decisions.clear();
        }
        let entry = self.decisions.entry(topic.clone()).or_default();
        *entry |= decided | if allow { allowed } else { 0 };
        allow
    }

    /// Whether a SUBSCRIBE to `filter` is granted. Not cached: a
    /// SUBSCRIBE is rare beside messages.
    pub fn may_subscribe(&mut self, filter: &str) -> bool {
        self.refresh();
        self.rules.may_subscribe(filter)
    }

    /// The refusals counted since the last call.
    pub fn take_denied(&mut self) -> Denials {
        std::mem::take(&mut self.denied)
    }

    fn refresh(&mut self) {
        let version = self.handle.version();
        if version != self.version {
            self.version = version;
            self.rules = self
                .handle
                .current()
                .rules_for(self.user.as_deref(), &self.client_id);
            self.decisions.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(text: &str) -> Arc<AclHandle> {
        Arc::new(AclHandle::new(
            PathBuf::from("/nonexistent/acl"),
            Acl::parse(text).expect("valid"),
        ))
    }

    #[test]
    fn decisions_are_cached_and_forgotten_on_reload() {
        let handle = handle("user alice\ntopic read a/#\ntopic write w\n");
        let mut acl = SessionAcl::new(handle.clone(), Some("alice".into()), "c1".into());
        let topic = ByteString::from("a/b");
        assert!(acl.check(&topic, Access::Read));
        assert!(!acl.check(&topic, Access::Write));
        assert_eq!(acl.decisions.get(&topic), Some(&(1 | 2 | 4)));
        assert!(acl.check(&"w".into(), Access::Write));

        handle.replace(Acl::parse("user alice\ntopic write a/#\n").expect("valid"));
        assert!(!acl.check(&topic, Access::Read), "reloaded");
        assert!(acl.check(&topic, Access::Write));
        assert!(!acl.check(&"w".into(), Access::Write));
    }

    #[test]
    fn the_cache_stays_bounded() {
        let handle = handle("topic read #\n");
        let mut acl = SessionAcl::new(handle, None, "c1".into());
        for n in 0..CACHE_TOPICS * 3 {
            assert!(acl.check(&format!("t/{n}").into(), Access::Read));
        }
        assert!(acl.decisions.len() <= CACHE_TOPICS);
    }

    #[test]
    fn subscriptions_follow_the_reloaded_file() {
        let handle = handle("topic read a/#\n");
        let mut acl = SessionAcl::new(handle.clone(), None, "c1".into());
        assert!(acl.may_subscribe("a/+"));
        handle.replace(Acl::default());
        assert!(!acl.may_subscribe("a/+"));
    }
}
