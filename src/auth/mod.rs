//! Who may connect: the password file, anonymous clients, and the
//! verifier threads.
//!
//! A CONNECT is checked on the node and shard that accepted it, after its
//! client id is checked and before the connection moves to its session's
//! home shard or claims its client id in the cluster: a client that fails
//! takes nothing from a session of the same id, here or on another node.
//! Each node reads its own `password_file`, so a deployment ships the same
//! file to every node.
//!
//! The rules are Mosquitto's:
//! - a client without a user name is anonymous, let in only with
//!   `allow_anonymous` (the default without a password file, and not with
//!   one): otherwise Not authorized (v5 0x87, 3.1.1 return code 5);
//! - with a password file, a client with a user name must be a user of
//!   the file with that user's password: otherwise Bad user name or
//!   password (0x86, 3.1.1 return code 4), the same answer, after the same
//!   work, whether the name is unknown or the password wrong
//!   ([`PasswordFile::verify`]);
//! - without a password file, user names are not checked.
//!
//! The hash runs on a verifier thread ([`verifier`]), never on a shard;
//! when their queue is full the CONNECT is refused with Server busy (0x89,
//! 3.1.1 return code 3) at once. The rules and the file are pure
//! ([`decide`], [`password_file`]); [`Authenticator`] is their runtime.
//!
//! The file is read again on SIGHUP ([`Authenticator::reload`]); a file
//! that does not parse then is logged and the one loaded before kept.
//!
//! What a connected client may publish to and read is the `acl_file`'s
//! ([`acl`], with its runtime in [`acl_cache`]), reloaded with the
//! password file.

pub mod acl;
pub mod acl_cache;
pub mod passwd;
pub mod password_file;
pub mod verifier;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use bytestring::ByteString;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::protocol::ReasonCode;
use acl::Acl;
use acl_cache::AclHandle;
pub use password_file::{PasswordFile, PasswordFileError};
use verifier::Pool;

/// Two threads bound the CPU a flood of CONNECTs can take to two cores'
/// worth at the lowest priority, while an honest burst (a fleet
/// reconnecting after a restart) is verified at twice one thread's rate.
pub const DEFAULT_THREADS: usize = 2;
/// At argon2's default cost (10 to 15 ms a hash on a server core) two
/// threads drain 256 waiting CONNECTs in about two seconds: a reconnecting
/// fleet waits briefly, and a flood past it is told Server busy.
pub const DEFAULT_QUEUE: usize = 256;

/// The validated authentication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// `None` without `password_file`: user names are not checked.
    pub password_file: Option<PasswordSource>,
    pub allow_anonymous: bool,
    /// Verifier threads, at least 1.
    pub threads: usize,
    /// CONNECTs waiting for a verifier thread, at least 1.
    pub queue: usize,
    /// `None` without `acl_file`: every client may publish and subscribe
    /// to anything.
    pub acl_file: Option<AclSource>,
}

/// The ACL file, where it is read from and what it held at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclSource {
    pub path: PathBuf,
    pub acl: Acl,
}

/// The password file, where it is read from and what it held at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordSource {
    pub path: PathBuf,
    pub file: PasswordFile,
}

/// Why a CONNECT was refused, with the label it is counted under
/// (`ringmq_auth_failures_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// A user name that is not in the file, or a wrong or missing password.
    BadPassword,
    /// No user name, and anonymous clients are not allowed.
    NotAuthorized,
    /// The verifier threads' queue was full.
    Busy,
}

/// What the rules say about a CONNECT before any hash is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Refuse(AuthFailure),
    /// The password must be verified against the file.
    Verify,
}

/// The runtime of authentication, shared by every shard.
#[derive(Debug)]
pub struct Authenticator {
    allow_anonymous: bool,
    /// `None` without a password file.
    passwords: Option<Passwords>,
    /// `None` without an ACL file.
    acl: Option<Arc<AclHandle>>,
}

/// The password file as the verifier threads see it.
#[derive(Debug)]
struct Passwords {
    path: PathBuf,
    /// Swapped whole on reload. Only the verifier threads and the reload
    /// read it or write it, never a shard.
    current: Arc<RwLock<Arc<PasswordFile>>>,
    pool: Pool,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 3] = [
        AuthFailure::BadPassword,
        AuthFailure::NotAuthorized,
        AuthFailure::Busy,
    ];

    /// The CONNACK reason; 3.1.1 writes 0x86 as 4, 0x87 as 5 and 0x89 as 3.
    pub fn reason_code(self) -> ReasonCode {
        match self {
            AuthFailure::BadPassword => ReasonCode::BadUserNameOrPassword,
            AuthFailure::NotAuthorized => ReasonCode::NotAuthorized,
            AuthFailure::Busy => ReasonCode::ServerBusy,
        }
    }

    /// The metric label and log field.
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::BadPassword => "bad_password",
            AuthFailure::NotAuthorized => "not_authorized",
            AuthFailure::Busy => "busy",
        }
    }
}

/// The rules above, for a CONNECT with or without a user name.
pub fn decide(has_password_file: bool, allow_anonymous: bool, username: bool) -> Decision {
    match (username, has_password_file) {
        (false, _) if allow_anonymous => Decision::Allow,
        (false, _) => Decision::Refuse(AuthFailure::NotAuthorized),
        (true, true) => Decision::Verify,
        (true, false) => Decision::Allow,
    }
}

impl Authenticator {
    /// Starts the verifier threads if there is a password file to check
    /// against.
    pub fn start(settings: &AuthSettings) -> std::io::Result<Authenticator> {
        let passwords = match &settings.password_file {
            Some(source) => {
                log_loaded(source);
                Some(Passwords {
                    path: source.path.clone(),
                    current: Arc::new(RwLock::new(Arc::new(source.file.clone()))),
                    pool: Pool::start("ringmq-auth", settings.threads, settings.queue)?,
                })
            }
            None => None,
        };
        let acl = settings.acl_file.as_ref().map(|source| {
            info!(path = %source.path.display(), lines = source.acl.len(), "acl file loaded");
            Arc::new(AclHandle::new(source.path.clone(), source.acl.clone()))
        });
        Ok(Authenticator {
            allow_anonymous: settings.allow_anonymous,
            passwords,
            acl,
        })
    }

    /// The ACL every connected client is held to, if one is configured.
    pub fn acl(&self) -> Option<&Arc<AclHandle>> {
        self.acl.as_ref()
    }

    /// Whether any CONNECT could be refused; without that the shards skip
    /// the check.
    pub fn is_active(&self) -> bool {
        self.passwords.is_some() || !self.allow_anonymous
    }

    /// Checks a CONNECT's credentials. Returns at once unless a password
    /// must be verified; that runs on a verifier thread, and the future
    /// waits for its answer without blocking the thread that polls it.
    pub async fn check(
        &self,
        username: Option<&ByteString>,
        password: Option<&Bytes>,
    ) -> Result<(), AuthFailure> {
        let decision = decide(
            self.passwords.is_some(),
            self.allow_anonymous,
            username.is_some(),
        );
        let (Decision::Verify, Some(passwords), Some(username)) =
            (decision, &self.passwords, username)
        else {
            return match decision {
                Decision::Refuse(failure) => Err(failure),
                Decision::Allow | Decision::Verify => Ok(()),
            };
        };
        let (answer, answered) = oneshot::channel();
        let current = passwords.current.clone();
        let (username, password) = (username.clone(), password.cloned());
        let queued = passwords.pool.try_run(move || {
            let file = match current.read() {
                Ok(file) => file.clone(),
                // A reload never panics while holding the lock; if one
                // did, the file it left is still whole.
                Err(poisoned) => poisoned.into_inner().clone(),
            };
            let _ = answer.send(file.verify(&username, password.as_deref()));
        });
        if queued.is_err() {
            return Err(AuthFailure::Busy);
        }
        match answered.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(AuthFailure::BadPassword),
            // The job was dropped (it panicked): no answer is a refusal.
            Err(_) => Err(AuthFailure::Busy),
        }
    }

    /// Reads the password and ACL files again (on SIGHUP). A file that
    /// cannot be read or parsed is logged and the one loaded before kept:
    /// a typo must not lock every client out, nor open every topic.
    pub fn reload(&self) {
        if let Some(acl) = &self.acl {
            reload_acl(acl);
        }
        let Some(passwords) = &self.passwords else {
            info!("no password file to reload");
            return;
        };
        let path = &passwords.path;
        let Some(text) = read_for_reload(path, "password") else {
            return;
        };
        match PasswordFile::parse(&text) {
            Ok(file) => {
                let source = PasswordSource {
                    path: path.clone(),
                    file,
                };
                log_loaded(&source);
                let file = Arc::new(source.file);
                match passwords.current.write() {
                    Ok(mut current) => *current = file,
                    Err(poisoned) => *poisoned.into_inner() = file,
                }
                info!(path = %path.display(), "password file reloaded");
            }
            Err(error) => {
                error!(path = %path.display(), %error, "invalid password file; keeping the one loaded before");
            }
        }
    }
}

/// No password file, anonymous clients allowed: nothing is checked.
impl Default for Authenticator {
    fn default() -> Authenticator {
        Authenticator {
            allow_anonymous: true,
            passwords: None,
            acl: None,
        }
    }
}

/// The text of a file to reload, or `None` (logged) when it cannot be
/// read: the one loaded before is kept.
fn read_for_reload(path: &std::path::Path, what: &str) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(error) => {
            error!(file = what, path = %path.display(), %error, "cannot read the file; keeping the one loaded before");
            None
        }
    }
}

fn reload_acl(handle: &AclHandle) {
    let path = &handle.path;
    let Some(text) = read_for_reload(path, "acl") else {
        return;
    };
    match Acl::parse(&text) {
        Ok(acl) => {
            let lines = acl.len();
            handle.replace(acl);
            info!(path = %path.display(), lines, "acl file reloaded");
        }
        Err(error) => {
            error!(path = %path.display(), %error, "invalid acl file; keeping the one loaded before");
        }
    }
}

fn log_loaded(source: &PasswordSource) {
    let path = source.path.display();
    info!(path = %path, users = source.file.len(), "password file loaded");
    let weak = source.file.weak_users();
    if !weak.is_empty() {
        warn!(path = %path, users = ?weak, "these users' hashes are Mosquitto's unstretched $6$ SHA-512; set their passwords again with `ringmq passwd`");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// `mosquitto_passwd -b`: alice's password is `secret1`.
    const ALICE: &str = "alice:$7$101$4Xcnx9g7ojSVtLY7$NjD67gCTSzEXrdMaWillQfiST8ntXExUcECrWMF2c62XlNG+P5plHchhWnJCu1oyl7Ma3BgZJXxjCDQAYp7NKg==\n";

    fn settings(file: Option<&str>, allow_anonymous: bool) -> AuthSettings {
        AuthSettings {
            password_file: file.map(|text| PasswordSource {
                path: PathBuf::from("/nonexistent/passwd"),
                file: PasswordFile::parse(text).expect("valid"),
            }),
            allow_anonymous,
            threads: 1,
            queue: 4,
            acl_file: None,
        }
    }

    fn check(
        auth: &Authenticator,
        user: Option<&str>,
        password: Option<&str>,
    ) -> Result<(), AuthFailure> {
        let user = user.map(ByteString::from);
        let password = password.map(|p| Bytes::copy_from_slice(p.as_bytes()));
        block_on(auth.check(user.as_ref(), password.as_ref()))
    }

    /// The check's future only waits on a oneshot, which any executor
    /// can drive; a current-thread tokio runtime is at hand.
    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(10), future)
                    .await
                    .expect("answered")
            })
    }

    #[test]
    fn the_rules_follow_mosquitto() {
        use AuthFailure::*;
        use Decision::*;
        // (password file, allow anonymous, user name) -> decision
        let table = [
            ((false, true, false), Allow),
            ((false, true, true), Allow),
            ((false, false, false), Refuse(NotAuthorized)),
            ((true, false, false), Refuse(NotAuthorized)),
            ((true, true, false), Allow),
            ((true, false, true), Verify),
            ((true, true, true), Verify),
        ];
        for ((file, anonymous, user), expected) in table {
            assert_eq!(
                decide(file, anonymous, user),
                expected,
                "{file} {anonymous} {user}"
            );
        }
    }

    #[test]
    fn passwords_are_verified_off_the_calling_thread() {
        let auth = Authenticator::start(&settings(Some(ALICE), false)).expect("starts");
        assert!(auth.is_active());
        assert_eq!(check(&auth, Some("alice"), Some("secret1")), Ok(()));
        assert_eq!(
            check(&auth, Some("alice"), Some("wrong")),
            Err(AuthFailure::BadPassword)
        );
        assert_eq!(
            check(&auth, Some("alice"), None),
            Err(AuthFailure::BadPassword)
        );
        assert_eq!(
            check(&auth, Some("bob"), Some("secret1")),
            Err(AuthFailure::BadPassword)
        );
        assert_eq!(check(&auth, None, None), Err(AuthFailure::NotAuthorized));
    }

    #[test]
    fn anonymous_clients_beside_a_password_file_when_allowed() {
        let auth = Authenticator::start(&settings(Some(ALICE), true)).expect("starts");
        assert_eq!(check(&auth, None, None), Ok(()));
        assert_eq!(
            check(&auth, Some("bob"), None),
            Err(AuthFailure::BadPassword)
        );
    }

    #[test]
    fn without_a_password_file_nothing_is_checked() {
        let auth = Authenticator::start(&settings(None, true)).expect("starts");
        assert!(!auth.is_active());
        assert_eq!(check(&auth, Some("anyone"), Some("anything")), Ok(()));
    }

    #[test]
    fn reload_swaps_a_valid_file_and_keeps_the_old_one_otherwise() {
        let path =
            std::env::temp_dir().join(format!("ringmq-{}-reload-passwd", std::process::id()));
        std::fs::write(&path, ALICE).expect("temp dir is writable");
        let mut settings = settings(Some(ALICE), false);
        if let Some(source) = &mut settings.password_file {
            source.path = path.clone();
        }
        let auth = Authenticator::start(&settings).expect("starts");

        std::fs::write(&path, ALICE.replace("alice", "alicia")).expect("writable");
        auth.reload();
        assert_eq!(check(&auth, Some("alicia"), Some("secret1")), Ok(()));
        assert_eq!(
            check(&auth, Some("alice"), Some("secret1")),
            Err(AuthFailure::BadPassword)
        );

        std::fs::write(&path, "alice:not-a-hash\n").expect("writable");
        auth.reload();
        assert_eq!(
            check(&auth, Some("alicia"), Some("secret1")),
            Ok(()),
            "kept"
        );
        std::fs::remove_file(&path).expect("removable");
        auth.reload();
        assert_eq!(
            check(&auth, Some("alicia"), Some("secret1")),
            Ok(()),
            "kept"
        );
    }
}
