//! The password file: one `username:hash` per line, parsed once into
//! [`PasswordFile`], and the hash formats it may hold.
//!
//! - `$argon2id$v=19$m=...,t=...,p=...$salt$hash` (the PHC string format;
//!   `$argon2i$` and `$argon2d$` are read too): what `ringmq passwd`
//!   writes, with argon2's default cost (19 MiB, 2 passes, 1 lane), the
//!   OWASP recommendation for argon2id.
//! - `$7$iterations$salt$hash`: Mosquitto's PBKDF2-HMAC-SHA512, with
//!   standard base64 (the salt's raw bytes are the PBKDF2 salt), what
//!   `mosquitto_passwd` writes by default since 2.0; and `$6$salt$hash`,
//!   its older single SHA-512 of password then salt (`-H sha512`, the
//!   default before 2.0), read so that such files still work but logged
//!   as weak when loaded.
//!
//! Blank lines and lines starting with `#` are skipped. A user name holds
//! no `:`; a line that does not parse stops the load, naming its number and
//! never echoing the hash.
//!
//! Everything here is pure computation: the runtime ([`super::verifier`])
//! decides on which thread it runs.

use std::collections::HashMap;
use std::fmt;

use argon2::{Algorithm, Argon2, Params, PasswordHash, Version};
use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::{DecodePaddingMode, general_purpose};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Mosquitto pads its base64 output; a file edited by hand may not.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Salt bytes for a new argon2id hash (the argon2 crate's recommendation).
const SALT_LEN: usize = 16;

/// PBKDF2 iterations accepted in a `$7$` line. Mosquitto writes 101; a
/// huge count would let whoever writes the file stall every verifier
/// thread for minutes on each CONNECT.
const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;

/// Argon2 memory accepted, in KiB (1 GiB): as for PBKDF2's iterations, a
/// file must not be able to make each verification exhaust the host.
const MAX_ARGON2_M_COST: u32 = 1024 * 1024;

/// One user's stored hash, decoded and checked when the file is loaded,
/// so that verifying is only the hash computation and a comparison.
#[derive(Clone, PartialEq, Eq)]
pub enum Hash {
    Argon2(Argon2Hash),
    /// Mosquitto's `$7$`.
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        expected: Vec<u8>,
    },
    /// Mosquitto's `$6$`.
    Sha512 {
        salt: Vec<u8>,
        expected: Vec<u8>,
    },
}

/// An argon2 PHC string's parts.
#[derive(Clone, PartialEq, Eq)]
pub struct Argon2Hash {
    algorithm: Algorithm,
    version: Version,
    /// Memory (KiB), passes and lanes.
    m_cost: u32,
    t_cost: u32,
    p_cost: u32,
    salt: Vec<u8>,
    expected: Vec<u8>,
}

/// A password file's users and their hashes.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordFile {
    users: HashMap<String, Hash>,
    /// What an unknown user's password is checked against (and then
    /// refused whatever the result): the first user's hash, so that an
    /// unknown name costs as long as a known one with a wrong password
    /// and the timing does not tell which names exist.
    dummy: Hash,
}

/// Why a password file, or one of its lines, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordFileError {
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("user {user:?} appears on line {first} and again on line {again}")]
    Duplicate {
        user: String,
        first: usize,
        again: usize,
    },
}

impl Hash {
    /// Parses the part of a line after `username:`. The error never
    /// quotes the hash.
    pub fn parse(text: &str) -> Result<Hash, String> {
        if let Some(rest) = text.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err("a `$7$` hash must be $7$iterations$salt$hash".into());
            };
            let iterations: u32 = iterations
                .parse()
                .ok()
                .filter(|n| (1..=MAX_PBKDF2_ITERATIONS).contains(n))
                .ok_or(format!(
                    "`$7$` iterations must be a number from 1 to {MAX_PBKDF2_ITERATIONS}"
                ))?;
            return Ok(Hash::Pbkdf2Sha512 {
                iterations,
                salt: decode_base64(salt, "salt")?,
                expected: decode_base64(hash, "hash")?,
            });
        }
        if let Some(rest) = text.strip_prefix("$6$") {
            let Some((salt, hash)) = rest.split_once('$') else {
                return Err("a `$6$` hash must be $6$salt$hash".into());
            };
            return Ok(Hash::Sha512 {
                salt: decode_base64(salt, "salt")?,
                expected: decode_base64(hash, "hash")?,
            });
        }
        if text.starts_with("$argon2") {
            return Argon2Hash::parse(text).map(Hash::Argon2);
        }
        Err("not a hash ringmq knows: expected $argon2id$ (ringmq passwd) or $7$ (mosquitto_passwd)".into())
    }

    /// A new argon2id hash of `password`, with a random salt and argon2's
    /// default cost.
    pub fn new_argon2id(password: &[u8]) -> Hash {
        let salt: [u8; SALT_LEN] = rand::random();
        let mut hash = Argon2Hash::default_cost(salt.to_vec());
        // Cannot fail: the salt, output and default parameters are all
        // within argon2's limits.
        if let Some(computed) = hash.compute(password) {
            hash.expected = computed;
        }
        Hash::Argon2(hash)
    }

    /// Whether `password` hashes to this, compared in constant time. This
    /// is the slow part (milliseconds for argon2): never call it on a
    /// shard.
    pub fn verify(&self, password: &[u8]) -> bool {
        let (computed, expected) = match self {
            Hash::Argon2(hash) => match hash.compute(password) {
                Some(computed) => (computed, &hash.expected),
                None => return false,
            },
            Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                expected,
            } => {
                let mut out = vec![0; expected.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                (out, expected)
            }
            Hash::Sha512 { salt, expected } => {
                let mut digest = Sha512::new();
                digest.update(password);
                digest.update(salt);
                (digest.finalize().to_vec(), expected)
            }
        };
        // `ct_eq` on slices of different lengths is false at once; the
        // lengths are the file's, not a secret.
        bool::from(computed.ct_eq(expected))
    }

    /// Whether this is Mosquitto's unstretched `$6$`, which a stolen file
    /// gives up to a GPU quickly.
    pub fn is_weak(&self) -> bool {
        matches!(self, Hash::Sha512 { .. })
    }

    /// The PHC string or Mosquitto line form, as written to the file.
    pub fn encode(&self) -> String {
        match self {
            Hash::Argon2(hash) => hash.encode(),
            Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                expected,
            } => format!(
                "$7${iterations}${}${}",
                STANDARD.encode(salt),
                STANDARD.encode(expected)
            ),
            Hash::Sha512 { salt, expected } => {
                format!("$6${}${}", STANDARD.encode(salt), STANDARD.encode(expected))
            }
        }
    }
}

impl Argon2Hash {
    fn parse(text: &str) -> Result<Argon2Hash, String> {
        let bad = |what: &str| format!("invalid argon2 hash: {what}");
        let phc = PasswordHash::new(text).map_err(|_| bad("not a PHC string"))?;
        let algorithm =
            Algorithm::try_from(phc.algorithm.as_str()).map_err(|_| bad("unknown algorithm"))?;
        let version = match phc.version {
            None => Version::default(),
            Some(v) => Version::try_from(v).map_err(|_| bad("unknown version"))?,
        };
        let params = Params::try_from(&phc).map_err(|_| bad("bad parameters"))?;
        if params.m_cost() > MAX_ARGON2_M_COST {
            return Err(bad(&format!("m above {MAX_ARGON2_M_COST} KiB")));
        }
        let salt = phc.salt.ok_or_else(|| bad("no salt"))?;
        let expected = phc.hash.ok_or_else(|| bad("no hash"))?;
        Ok(Argon2Hash {
            algorithm,
            version,
            m_cost: params.m_cost(),
            t_cost: params.t_cost(),
            p_cost: params.p_cost(),
            salt: salt.as_ref().to_vec(),
            expected: expected.as_bytes().to_vec(),
        })
    }

    /// argon2id at argon2's default cost (what `ringmq passwd` writes),
    /// expecting zeros until computed.
    fn default_cost(salt: Vec<u8>) -> Argon2Hash {
        let params = Params::default();
        Argon2Hash {
            algorithm: Algorithm::Argon2id,
            version: Version::V0x13,
            m_cost: params.m_cost(),
            t_cost: params.t_cost(),
            p_cost: params.p_cost(),
            salt,
            expected: vec![0; Params::DEFAULT_OUTPUT_LEN],
        }
    }

    /// `password`'s hash under these parameters and salt; `None` only if
    /// argon2 refuses them, which a parsed hash has been checked against.
    fn compute(&self, password: &[u8]) -> Option<Vec<u8>> {
        let params = Params::new(
            self.m_cost,
            self.t_cost,
            self.p_cost,
            Some(self.expected.len()),
        )
        .ok()?;
        let mut out = vec![0; self.expected.len()];
        Argon2::new(self.algorithm, self.version, params)
            .hash_password_into(password, &self.salt, &mut out)
            .ok()?;
        Some(out)
    }

    fn encode(&self) -> String {
        let b64 = general_purpose::STANDARD_NO_PAD;
        format!(
            "${}$v={}$m={},t={},p={}${}${}",
            self.algorithm.as_str(),
            u32::from(self.version),
            self.m_cost,
            self.t_cost,
            self.p_cost,
            b64.encode(&self.salt),
            b64.encode(&self.expected)
        )
    }
}

/// Hashes are secrets of a kind: a `Debug` print (a log line, a test
/// failure) shows only the format.
impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hash::Argon2(hash) => write!(f, "Hash({})", hash.algorithm.as_str()),
            Hash::Pbkdf2Sha512 { iterations, .. } => write!(f, "Hash($7$, {iterations})"),
            Hash::Sha512 { .. } => f.write_str("Hash($6$)"),
        }
    }
}

impl PasswordFile {
    pub fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
        let mut users = HashMap::new();
        let mut lines_of = HashMap::new();
        let mut first = None;
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let Some((user, hash)) =
                parse_line(line).map_err(|reason| PasswordFileError::Line {
                    line: number,
                    reason,
                })?
            else {
                continue;
            };
            if let Some(&earlier) = lines_of.get(&user) {
                return Err(PasswordFileError::Duplicate {
                    user,
                    first: earlier,
                    again: number,
                });
            }
            first.get_or_insert_with(|| hash.clone());
            lines_of.insert(user.clone(), number);
            users.insert(user, hash);
        }
        Ok(PasswordFile {
            users,
            // An empty file checks unknown users against the cost of the
            // hashes `ringmq passwd` adds.
            dummy: first
                .unwrap_or_else(|| Hash::Argon2(Argon2Hash::default_cost(vec![0; SALT_LEN]))),
        })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The users whose hash is Mosquitto's weak `$6$`, sorted, for a
    /// warning at load.
    pub fn weak_users(&self) -> Vec<&str> {
        let mut weak: Vec<&str> = self
            .users
            .iter()
            .filter(|(_, hash)| hash.is_weak())
            .map(|(user, _)| user.as_str())
            .collect();
        weak.sort_unstable();
        weak
    }

    /// Whether `username` exists and `password` is theirs. An unknown
    /// user, or a missing password, costs one verification all the same,
    /// so every refusal takes as long.
    pub fn verify(&self, username: &str, password: Option<&[u8]>) -> bool {
        let (hash, known) = match self.users.get(username) {
            Some(hash) => (hash, true),
            None => (&self.dummy, false),
        };
        let matched = hash.verify(password.unwrap_or_default());
        // `&` rather than `&&`: both sides are always evaluated.
        known & password.is_some() & matched
    }
}

/// Lists the user names only.
impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<&String> = self.users.keys().collect();
        users.sort_unstable();
        f.debug_struct("PasswordFile")
            .field("users", &users)
            .finish_non_exhaustive()
    }
}

/// `None` for a blank or comment line.
pub(super) fn parse_line(line: &str) -> Result<Option<(String, Hash)>, String> {
    let line = line.trim_end();
    if line.trim_start().is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let Some((user, hash)) = line.split_once(':') else {
        return Err("expected username:hash".into());
    };
    check_username(user)?;
    Ok(Some((user.to_owned(), Hash::parse(hash)?)))
}

/// A user name as the file can hold it: one line, split at its first `:`.
pub fn check_username(user: &str) -> Result<(), String> {
    if user.is_empty() {
        return Err("empty user name".into());
    }
    if user.contains(':') {
        return Err("a user name cannot contain `:`".into());
    }
    if user.chars().any(char::is_control) {
        return Err("a user name cannot contain control characters".into());
    }
    if user.len() > usize::from(u16::MAX) {
        return Err("a user name is at most 65535 bytes (an MQTT string)".into());
    }
    Ok(())
}

fn decode_base64(text: &str, what: &str) -> Result<Vec<u8>, String> {
    match LENIENT_BASE64.decode(text) {
        Ok(bytes) if !bytes.is_empty() => Ok(bytes),
        _ => Err(format!("the {what} is not base64")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by Debian's mosquitto_passwd 2.0.11 (`-b`, default
    /// sha512-pbkdf2): alice's password is `secret1`, bob's `p:w`.
    const MOSQUITTO_PBKDF2: &str = "\
alice:$7$101$4Xcnx9g7ojSVtLY7$NjD67gCTSzEXrdMaWillQfiST8ntXExUcECrWMF2c62XlNG+P5plHchhWnJCu1oyl7Ma3BgZJXxjCDQAYp7NKg==
bob:$7$101$mrPU9D9aaUZ/Ju4q$2XcBs0cBtDuNcx/xgq/1oUNTO7xrRI+WBncMtk3RjZmfiGtrqoiCkcwgdPXEJbLP3bA4Dx+1ZBh9KIKV5ZP7dw==
";

    /// `mosquitto_passwd -H sha512 -b`: carol's password is `old`.
    const MOSQUITTO_SHA512: &str = "carol:$6$F9V1jPxZBhlwMffN$5MecLqJtsIZ3Ol7qvpIoMHTPR9tfZ6c003uMBT3o4vFJre2xLuDbkj895I4UsbzyMMe3y7gIGZvDAweYxISA5Q==\n";

    /// A cheap argon2id hash (the reference implementation's `argon2`
    /// tool, Debian's `argon2`: `echo -n hunter2 | argon2 somesaltsalt -id
    /// -t 1 -k 64 -p 1 -e`).
    const ARGON2_LINE: &str = "dave:$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHRzYWx0$fBXr36pc5MtUn8E1/yB6eArYUl5oXEN27K0Jw5O4q3c";

    #[test]
    fn mosquitto_pbkdf2_hashes_verify() {
        let file = PasswordFile::parse(MOSQUITTO_PBKDF2).expect("mosquitto's file parses");
        assert_eq!(file.len(), 2);
        assert!(file.verify("alice", Some(b"secret1")));
        assert!(file.verify("bob", Some(b"p:w")));
        assert!(!file.verify("alice", Some(b"secret2")));
        assert!(!file.verify("alice", Some(b"p:w")));
        assert!(!file.verify("alice", None));
        assert!(!file.verify("nobody", Some(b"secret1")));
    }

    #[test]
    fn mosquitto_sha512_hashes_verify_and_are_weak() {
        let file = PasswordFile::parse(MOSQUITTO_SHA512).expect("parses");
        assert!(file.verify("carol", Some(b"old")));
        assert!(!file.verify("carol", Some(b"new")));
        assert_eq!(file.weak_users(), ["carol"]);
    }

    #[test]
    fn argon2_phc_strings_verify_and_encode_back() {
        let file = PasswordFile::parse(ARGON2_LINE).expect("parses");
        assert!(file.verify("dave", Some(b"hunter2")));
        assert!(!file.verify("dave", Some(b"hunter3")));
        let (_, hash) = parse_line(ARGON2_LINE).expect("valid").expect("a user");
        assert_eq!(format!("dave:{}", hash.encode()), ARGON2_LINE);
        assert!(file.weak_users().is_empty());
    }

    #[test]
    fn new_argon2id_hashes_verify_round_trip_and_differ_by_salt() {
        let hash = Hash::new_argon2id(b"correct horse");
        let encoded = hash.encode();
        assert!(
            encoded.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{encoded}"
        );
        let parsed = Hash::parse(&encoded).expect("own output parses");
        assert_eq!(parsed, hash);
        assert!(parsed.verify(b"correct horse"));
        assert!(!parsed.verify(b"correct horsE"));
        assert_ne!(
            Hash::new_argon2id(b"correct horse"),
            hash,
            "a fresh salt each time"
        );
    }

    #[test]
    fn mosquitto_lines_encode_back() {
        for line in MOSQUITTO_PBKDF2.lines().chain(MOSQUITTO_SHA512.lines()) {
            let (user, hash) = parse_line(line).expect("valid").expect("a user");
            assert_eq!(format!("{user}:{}", hash.encode()), line);
        }
    }

    #[test]
    fn unknown_users_are_checked_against_the_first_hash() {
        let file = PasswordFile::parse(MOSQUITTO_PBKDF2).expect("parses");
        // alice's password under another name: the dummy is alice's own
        // hash, and the match must still be refused.
        assert!(!file.verify("mallory", Some(b"secret1")));
        let empty = PasswordFile::parse("# nobody yet\n").expect("parses");
        assert!(empty.is_empty());
        assert!(!empty.verify("mallory", Some(b"")));
    }

    #[test]
    fn comments_blank_lines_and_crlf_are_skipped() {
        let text = format!("# users\n\n   \n{}", MOSQUITTO_PBKDF2.replace('\n', "\r\n"));
        let file = PasswordFile::parse(&text).expect("parses");
        assert!(file.verify("bob", Some(b"p:w")));
    }

    #[test]
    fn bad_lines_are_named_by_number_without_the_hash() {
        let cases = [
            ("alice\n", 1, "username:hash"),
            ("# c\n:$7$101$AAAA$AAAA\n", 2, "empty user name"),
            ("alice:plaintext\n", 1, "not a hash"),
            ("alice:$7$0$AAAA$AAAA\n", 1, "iterations"),
            ("alice:$7$101$AAAA\n", 1, "$7$iterations$salt$hash"),
            ("alice:$7$101$!!!!$AAAA\n", 1, "salt is not base64"),
            (
                "alice:$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHRzYWx0\n",
                1,
                "no hash",
            ),
            (
                "alice:$argon2x$v=19$m=64,t=1,p=1$c29tZXNhbHRzYWx0$fBXr36pc5MtUn8E1/yB6eArYUl5oXEN27K0Jw5O4q3c\n",
                1,
                "algorithm",
            ),
            ("a\u{7}b:$7$101$AAAA$AAAA\n", 1, "control"),
        ];
        for (text, line, says) in cases {
            let error = PasswordFile::parse(text).expect_err(text);
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("line {line}: ")),
                "{text:?}: {message}"
            );
            assert!(message.contains(says), "{text:?}: {message}");
            assert!(!message.contains("AAAA"), "hash echoed: {message}");
        }
    }

    #[test]
    fn a_user_twice_is_refused() {
        let text = format!("{MOSQUITTO_PBKDF2}alice:$7$101$AAAA$AAAA\n");
        let error = PasswordFile::parse(&text).expect_err("duplicate");
        assert_eq!(
            error,
            PasswordFileError::Duplicate {
                user: "alice".into(),
                first: 1,
                again: 3
            }
        );
    }

    #[test]
    fn debug_output_shows_no_hash() {
        let file = PasswordFile::parse(MOSQUITTO_PBKDF2).expect("parses");
        let shown = format!("{file:?}");
        assert!(
            shown.contains("alice") && !shown.contains("4Xcnx9"),
            "{shown}"
        );
    }
}
