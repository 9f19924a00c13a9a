//! `password_file`, `allow_anonymous`, `auth_threads`, `auth_queue` and
//! `acl_file`, merged and validated into [`AuthSettings`]; the password
//! and ACL files themselves are read and parsed here, so a bad one stops
//! start-up naming the key and the line.

use std::path::PathBuf;

use clap::Args;

use super::{ConfigError, FileConfig, ensure};
use crate::auth::acl::Acl;
use crate::auth::{
    AclSource, AuthSettings, DEFAULT_QUEUE, DEFAULT_THREADS, PasswordFile, PasswordSource,
};

/// More threads than this would only let a flood of CONNECTs take more
/// CPU and memory (each argon2 verification holds its own 19 MiB).
const MAX_THREADS: usize = 64;

/// The authentication flags, flattened into the command line; each is the
/// top-level key of the same name.
#[derive(Debug, Default, Args)]
pub(super) struct AuthArgs {
    /// File of username:hash lines (argon2id from `ringmq passwd`, or
    /// Mosquitto's $7$ from mosquitto_passwd); clients with a user name
    /// must match it. Reloaded on SIGHUP [default: none].
    #[arg(long, value_name = "PATH")]
    password_file: Option<PathBuf>,
    /// Let in clients that send no user name. `--allow-anonymous` alone
    /// means true [default: true without --password-file, false with it].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    allow_anonymous: Option<bool>,
    /// Threads verifying passwords, off the shards, at the lowest
    /// priority, 1 to 64 [default: 2].
    #[arg(long, value_name = "N")]
    auth_threads: Option<usize>,
    /// CONNECTs that may wait for a verifier thread; past it they are
    /// refused with Server busy [default: 256].
    #[arg(long, value_name = "N")]
    auth_queue: Option<usize>,
    /// Mosquitto-format ACL file (user, topic, pattern lines); with one,
    /// what it does not grant is denied. Reloaded on SIGHUP
    /// [default: none, everything allowed].
    #[arg(long, value_name = "PATH")]
    acl_file: Option<PathBuf>,
}

pub(super) fn merge(cli: &AuthArgs, file: &FileConfig) -> Result<AuthSettings, ConfigError> {
    let password_file = load(
        "password_file",
        cli.password_file.as_ref().or(file.password_file.as_ref()),
        |path, text| PasswordFile::parse(text).map(|file| PasswordSource { path, file }),
    )?;
    // As Mosquitto: a password file turns anonymous clients away unless
    // they are let in explicitly.
    let allow_anonymous = cli
        .allow_anonymous
        .or(file.allow_anonymous)
        .unwrap_or(password_file.is_none());
    ensure(
        allow_anonymous || password_file.is_some(),
        "allow_anonymous",
        "false needs `password_file`: no client could connect",
    )?;
    let threads = cli
        .auth_threads
        .or(file.auth_threads)
        .unwrap_or(DEFAULT_THREADS);
    ensure(
        (1..=MAX_THREADS).contains(&threads),
        "auth_threads",
        &format!("must be between 1 and {MAX_THREADS}"),
    )?;
    let queue = cli.auth_queue.or(file.auth_queue).unwrap_or(DEFAULT_QUEUE);
    ensure(queue >= 1, "auth_queue", "must be at least 1")?;
    let acl_file = load(
        "acl_file",
        cli.acl_file.as_ref().or(file.acl_file.as_ref()),
        |path, text| Acl::parse(text).map(|acl| AclSource { path, acl }),
    )?;
    Ok(AuthSettings {
        password_file,
        allow_anonymous,
        threads,
        queue,
        acl_file,
    })
}

/// Reads and parses the file `key` names, if it names one.
fn load<T, E: ToString>(
    key: &'static str,
    path: Option<&PathBuf>,
    parse: impl FnOnce(PathBuf, &str) -> Result<T, E>,
) -> Result<Option<T>, ConfigError> {
    let Some(path) = path else {
        return Ok(None);
    };
    ensure(!path.as_os_str().is_empty(), key, "must not be empty")?;
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadKeyFile {
        key,
        path: path.clone(),
        source,
    })?;
    parse(path.clone(), &text)
        .map(Some)
        .map_err(|error| ConfigError::InvalidKeyFile {
            key,
            path: path.clone(),
            reason: error.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{TempFile, merge as merge_config, parse};
    use super::*;

    /// `mosquitto_passwd -b`: alice's password is `secret1`.
    const ALICE: &str = "alice:$7$101$4Xcnx9g7ojSVtLY7$NjD67gCTSzEXrdMaWillQfiST8ntXExUcECrWMF2c62XlNG+P5plHchhWnJCu1oyl7Ma3BgZJXxjCDQAYp7NKg==\n";

    #[test]
    fn defaults_without_a_password_file_let_everyone_in() {
        let auth = parse(&[]).expect("valid").auth;
        assert_eq!(
            auth,
            AuthSettings {
                password_file: None,
                allow_anonymous: true,
                threads: 2,
                queue: 256,
                acl_file: None,
            }
        );
    }

    #[test]
    fn a_password_file_turns_anonymous_clients_away_unless_allowed() {
        let file = TempFile::new("auth-passwd", ALICE);
        let auth = parse(&["--password-file", file.arg()]).expect("valid").auth;
        assert!(!auth.allow_anonymous);
        let source = auth.password_file.expect("loaded");
        assert_eq!(source.file.len(), 1);
        assert!(source.file.verify("alice", Some(b"secret1")));

        let auth = parse(&["--password-file", file.arg(), "--allow-anonymous"])
            .expect("valid")
            .auth;
        assert!(auth.allow_anonymous);
    }

    #[test]
    fn the_file_sets_every_key_and_flags_override_it() {
        let file = TempFile::new("auth-keys", ALICE);
        let toml = format!(
            "password_file = {:?}\nallow_anonymous = true\nauth_threads = 3\nauth_queue = 9\n",
            file.arg()
        );
        let auth = merge_config(&[], &toml).expect("valid").auth;
        assert!(auth.password_file.is_some());
        assert!(auth.allow_anonymous);
        assert_eq!((auth.threads, auth.queue), (3, 9));
        let auth = merge_config(
            &[
                "--allow-anonymous",
                "false",
                "--auth-threads",
                "1",
                "--auth-queue",
                "1",
            ],
            &toml,
        )
        .expect("valid")
        .auth;
        assert!(!auth.allow_anonymous);
        assert_eq!((auth.threads, auth.queue), (1, 1));
    }

    #[test]
    fn an_acl_file_from_the_flag_or_the_key() {
        let file = TempFile::new("acl-ok", "user alice\ntopic read a/#\n");
        let auth = parse(&["--acl-file", file.arg()]).expect("valid").auth;
        let source = auth.acl_file.expect("loaded");
        assert!(
            source
                .acl
                .check(Some("alice"), "c", "a/b", crate::auth::acl::Access::Read)
        );
        let toml = format!("acl_file = {:?}\n", file.arg());
        let auth = merge_config(&[], &toml).expect("valid").auth;
        assert!(auth.acl_file.is_some());

        let bad = TempFile::new("acl-bad", "user alice\ntopic reed a/#\n");
        let error = parse(&["--acl-file", bad.arg()])
            .expect_err("refused")
            .to_string();
        assert!(error.contains("invalid `acl_file` (--acl-file)"), "{error}");
        assert!(error.contains("line 2: unknown access"), "{error}");
        let error = parse(&["--acl-file", "/nonexistent/acl"])
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("cannot read `acl_file` (--acl-file)"),
            "{error}"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let file = TempFile::new("auth-bad", "alice:$7$101$AAAA\n");
        let cases: [(&[&str], &str); 6] = [
            (
                &["--password-file", file.arg()],
                "invalid `password_file` (--password-file)",
            ),
            (&["--password-file", file.arg()], "line 1: "),
            (
                &["--password-file", "/nonexistent/passwd"],
                "cannot read `password_file` (--password-file) /nonexistent/passwd",
            ),
            (
                &["--allow-anonymous", "false"],
                "invalid value for `allow_anonymous` (--allow-anonymous)",
            ),
            (
                &["--auth-threads", "0"],
                "invalid value for `auth_threads` (--auth-threads)",
            ),
            (
                &["--auth-queue", "0"],
                "invalid value for `auth_queue` (--auth-queue)",
            ),
        ];
        for (args, says) in cases {
            let error = parse(args).expect_err("refused").to_string();
            assert!(error.contains(says), "{args:?}: {error}");
            assert!(!error.contains("AAAA"), "hash echoed: {error}");
        }
    }
}
