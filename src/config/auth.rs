//! `password_file`, `allow_anonymous`, `auth_threads` and `auth_queue`,
//! merged and validated into [`AuthSettings`]; the password file itself
//! is read and parsed here, so a bad one stops start-up naming the key
//! and the line.

use std::path::PathBuf;

use clap::Args;

use super::{ConfigError, FileConfig, ensure};
use crate::auth::{AuthSettings, DEFAULT_QUEUE, DEFAULT_THREADS, PasswordFile, PasswordSource};

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
}

pub(super) fn merge(cli: &AuthArgs, file: &FileConfig) -> Result<AuthSettings, ConfigError> {
    let path = cli.password_file.clone().or(file.password_file.clone());
    let password_file = match path {
        Some(path) => {
            ensure(
                !path.as_os_str().is_empty(),
                "password_file",
                "must not be empty",
            )?;
            Some(load(path)?)
        }
        None => None,
    };
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
    Ok(AuthSettings {
        password_file,
        allow_anonymous,
        threads,
        queue,
    })
}

fn load(path: PathBuf) -> Result<PasswordSource, ConfigError> {
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(source) => {
            return Err(ConfigError::ReadKeyFile {
                key: "password_file",
                path,
                source,
            });
        }
    };
    match PasswordFile::parse(&text) {
        Ok(file) => Ok(PasswordSource { path, file }),
        Err(source) => Err(ConfigError::InvalidKeyFile {
            key: "password_file",
            path,
            reason: source.to_string(),
        }),
    }
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
