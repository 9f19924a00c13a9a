//! `ringmq passwd FILE USER`: adds a user to a password file or sets their
//! password (argon2id), prompting twice on the terminal or reading one
//! line from stdin with `--stdin`; `ringmq passwd -D FILE USER` deletes
//! the user.
//!
//! Every other line (users, comments, blank lines) is kept as it was. The
//! new file is written beside the old one and renamed over it, so a broker
//! reloading on SIGHUP meanwhile reads the old file or the new one, never
//! half of one. A new file is readable by its owner only. A file the
//! broker would refuse is not written: the error names the line.

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::password_file::{Hash, PasswordFile, PasswordFileError, check_username};

/// Mode of a password file `ringmq passwd` creates: hashes are not for
/// other users to attack offline.
const NEW_FILE_MODE: u32 = 0o600;

/// What to do to the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswdAction {
    /// Set the user's password, read from the terminal or from stdin.
    Set {
        stdin: bool,
    },
    Delete,
}

#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    #[error("invalid user name: {0}")]
    Username(String),
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("{} would be invalid: {source}", path.display())]
    Invalid {
        path: PathBuf,
        source: PasswordFileError,
    },
    #[error("user {user:?} is not in {}", path.display())]
    NoSuchUser { user: String, path: PathBuf },
    #[error("cannot read a password from the terminal ({0}); give it on stdin with --stdin")]
    Terminal(io::Error),
    #[error("cannot read the password from stdin: {0}")]
    Stdin(io::Error),
    #[error("the passwords do not match")]
    Mismatch,
    #[error("empty password")]
    EmptyPassword,
}

/// Runs the command; on success, says what it did.
pub fn run(file: &Path, user: &str, action: &PasswdAction) -> Result<String, PasswdError> {
    check_username(user).map_err(PasswdError::Username)?;
    let line = match action {
        PasswdAction::Set { stdin } => {
            let password = if *stdin {
                read_stdin_password(&mut io::stdin().lock())?
            } else {
                prompt_password()?
            };
            Some(format!("{user}:{}", Hash::new_argon2id(&password).encode()))
        }
        PasswdAction::Delete => None,
    };
    // The file the path names, not a symlink to it (a mounted secret), is
    // the one to replace.
    let path = fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
    let old = match fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(error) if error.kind() == io::ErrorKind::NotFound && line.is_some() => None,
        Err(source) => return Err(PasswdError::Read { path, source }),
    };
    let (text, found) = edit(old.as_deref().unwrap_or(""), user, line.as_deref());
    if !found && line.is_none() {
        return Err(PasswdError::NoSuchUser {
            user: user.to_owned(),
            path,
        });
    }
    PasswordFile::parse(&text).map_err(|source| PasswdError::Invalid {
        path: path.clone(),
        source,
    })?;
    replace(&path, &text, old.is_some()).map_err(|source| PasswdError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(match (line, found) {
        (None, _) => format!("deleted {user} from {}", path.display()),
        (Some(_), true) => format!("updated {user} in {}", path.display()),
        (Some(_), false) => format!("added {user} to {}", path.display()),
    })
}

/// `text` with `user`'s line replaced by `line` (or appended), or removed
/// when `line` is `None`; and whether `user` had a line.
fn edit(text: &str, user: &str, line: Option<&str>) -> (String, bool) {
    let mut out = String::with_capacity(text.len() + line.map_or(0, str::len) + 1);
    let mut found = false;
    for existing in text.lines() {
        let is_user = !existing.starts_with('#')
            && existing
                .split_once(':')
                .is_some_and(|(name, _)| name == user);
        if !is_user {
            out.push_str(existing);
            out.push('\n');
            continue;
        }
        // A second line for the same user is dropped with the first.
        if !found && let Some(line) = line {
            out.push_str(line);
            out.push('\n');
        }
        found = true;
    }
    if !found && let Some(line) = line {
        out.push_str(line);
        out.push('\n');
    }
    (out, found)
}

/// Writes `text` to a file beside `path` and renames it over `path`,
/// keeping the old file's permissions.
fn replace(path: &Path, text: &str, existed: bool) -> io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".ringmq-passwd-{}", std::process::id()));
    let temp = path.with_file_name(name);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(NEW_FILE_MODE)
            .open(&temp)?;
        if existed {
            let mode = fs::metadata(path)?.permissions().mode();
            file.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// One line of `input`, without its line ending.
fn read_stdin_password(input: &mut impl BufRead) -> Result<Vec<u8>, PasswdError> {
    let mut password = Vec::new();
    input
        .read_until(b'\n', &mut password)
        .map_err(PasswdError::Stdin)?;
    if password.last() == Some(&b'\n') {
        password.pop();
        if password.last() == Some(&b'\r') {
            password.pop();
        }
    }
    if password.is_empty() {
        return Err(PasswdError::EmptyPassword);
    }
    Ok(password)
}

/// Asks twice on the terminal, without echo.
fn prompt_password() -> Result<Vec<u8>, PasswdError> {
    let first = rpassword::prompt_password("Password: ").map_err(PasswdError::Terminal)?;
    if first.is_empty() {
        return Err(PasswdError::EmptyPassword);
    }
    let again = rpassword::prompt_password("Reenter password: ").map_err(PasswdError::Terminal)?;
    if first != again {
        return Err(PasswdError::Mismatch);
    }
    Ok(first.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_replaces_appends_and_deletes_keeping_other_lines() {
        let text = "# users\nalice:A\n\nbob:B\nalice:A2\n";
        assert_eq!(
            edit(text, "alice", Some("alice:N")),
            ("# users\nalice:N\n\nbob:B\n".to_owned(), true)
        );
        assert_eq!(
            edit(text, "carol", Some("carol:C")),
            (format!("{text}carol:C\n"), false)
        );
        assert_eq!(
            edit(text, "bob", None),
            ("# users\nalice:A\n\nalice:A2\n".to_owned(), true)
        );
        assert_eq!(edit("bob:B", "al", None), ("bob:B\n".to_owned(), false));
        // A comment naming the user is not the user's line.
        assert_eq!(
            edit("#alice:x\n", "#alice", None),
            ("#alice:x\n".to_owned(), false)
        );
    }

    #[test]
    fn stdin_passwords_lose_one_line_ending() {
        let read = |input: &[u8]| read_stdin_password(&mut &input[..]);
        assert_eq!(read(b"s3cret\n").expect("valid"), b"s3cret");
        assert_eq!(read(b"s3cret\r\nmore\n").expect("valid"), b"s3cret");
        assert_eq!(read(b"no newline").expect("valid"), b"no newline");
        assert!(matches!(read(b"\n"), Err(PasswdError::EmptyPassword)));
        assert!(matches!(read(b""), Err(PasswdError::EmptyPassword)));
    }
}
