//! What a partition holds, key by key, and how each value is framed on
//! disk: a CRC-32 of key and archive, then the rkyv archive.
//!
//! Keys start with one byte naming the kind of record, so one ordered
//! keyspace holds them all and a client's records are one prefix scan
//! away. A client id is written behind its length (two bytes, big-endian)
//! rather than a separator, since nothing forbids any byte in it but the
//! codec's UTF-8 checks. Numbers are big-endian, so keys sort by them.
//!
//! | key | value |
//! |---|---|
//! | `s` client | [`SessionRecord`] |
//! | `m` id | [`StoredMessage`], referenced by queue entries |
//! | `q` client seq | [`EntryRecord`]: a message owed to the client |
//! | `f` client seq | [`FlightRecord`]: that message's packet id, once sent |
//! | `p` client packet id | nothing: an incoming QoS 2 id awaiting PUBREL |
//! | `r` topic | [`StoredMessage`]: the retained message |
//! | `o` peer stream seq | [`OutboxRecord`]: a message owed to a peer node (`cluster.redb` only) |
//!
//! The archives reuse the cluster's [`WireMessage`], so a session moving to
//! another node later travels in the format it is stored in.

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::cluster::frame::WireMessage;

pub const SESSION: u8 = b's';
pub const MESSAGE: u8 = b'm';
pub const ENTRY: u8 = b'q';
pub const FLIGHT: u8 = b'f';
pub const INCOMING_QOS2: u8 = b'p';
pub const RETAINED: u8 = b'r';
pub const OUTBOX: u8 = b'o';

/// A persistent session's own state; its messages are separate records.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SessionRecord {
    pub client_id: String,
    /// The user name its last client connected with (an ACL's rules
    /// depend on it).
    pub username: Option<String>,
    /// Protocol level of the last connection (3, 4 or 5).
    pub protocol: u8,
    /// Seconds the session outlives its connection; `u32::MAX` is never.
    pub session_expiry: u32,
    /// Connected when written: after a crash its will is due and its
    /// expiry starts from the restart, as if the connection had just
    /// been lost.
    pub connected: bool,
    /// Wall-clock deadline (Unix milliseconds) of an offline session.
    pub expires_at_ms: Option<u64>,
    pub subscriptions: Vec<SubscriptionRecord>,
    pub will: Option<WillRecord>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SubscriptionRecord {
    pub filter: String,
    /// The options byte as a v5 SUBSCRIBE carries it.
    pub options: u8,
    pub id: Option<u32>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WillRecord {
    /// Topic, payload, QoS, retain and v5 properties; `expiry_ms` holds
    /// the Message Expiry Interval in milliseconds.
    pub message: WireMessage,
    pub delay_secs: Option<u32>,
    /// Wall-clock time (Unix milliseconds) the will goes out, once its
    /// connection is gone and its delay runs.
    pub due_ms: Option<u64>,
}

/// A message as stored: the wire form, with expiry as a wall-clock
/// deadline (its `expiry_ms` is unused), since time remaining means
/// nothing after a restart.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StoredMessage {
    pub message: WireMessage,
    pub expires_at_ms: Option<u64>,
}

/// A message accepted here and owed to a peer node, not yet acknowledged
/// by it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    pub message: StoredMessage,
    /// The shared subscription the peer was picked for, if any.
    pub share: Option<String>,
}

/// One message owed to a client, as [`crate::session`] queued it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct EntryRecord {
    /// Key of the [`StoredMessage`] in the same partition.
    pub message: u64,
    pub qos: u8,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    pub shared: Option<String>,
}

/// An entry sent to the client: its packet id, and whether its PUBREC
/// came (then only PUBREL and PUBCOMP are left, and the entry is gone).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FlightRecord {
    pub packet_id: u16,
    pub released: bool,
}

/// A value that failed its checksum or did not validate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("shorter than its checksum")]
    Truncated,
    #[error("checksum mismatch")]
    Checksum,
    #[error("does not validate: {0}")]
    Invalid(String),
}

/// `key` then the client id behind its length.
pub fn client_key(kind: u8, client_id: &str) -> Vec<u8> {
    let len = u16::try_from(client_id.len()).unwrap_or(u16::MAX);
    let mut key = Vec::with_capacity(3 + client_id.len() + 8);
    key.push(kind);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(&client_id.as_bytes()[..usize::from(len)]);
    key
}

pub fn entry_key(kind: u8, client_id: &str, seq: u64) -> Vec<u8> {
    let mut key = client_key(kind, client_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub fn incoming_qos2_key(client_id: &str, packet_id: u16) -> Vec<u8> {
    let mut key = client_key(INCOMING_QOS2, client_id);
    key.extend_from_slice(&packet_id.to_be_bytes());
    key
}

/// `o`, the peer's node id behind its length, the stream, then `seq`.
pub fn outbox_key(peer: &str, stream: u32, seq: u64) -> Vec<u8> {
    let mut key = client_key(OUTBOX, peer);
    key.extend_from_slice(&stream.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub fn message_key(id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(MESSAGE);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub fn retained_key(topic: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + topic.len());
    key.push(RETAINED);
    key.extend_from_slice(topic.as_bytes());
    key
}

/// The parts of a key after its kind byte, for the kinds keyed by client.
pub fn split_client_key(key: &[u8]) -> Option<(&str, &[u8])> {
    let len = usize::from(u16::from_be_bytes([*key.get(1)?, *key.get(2)?]));
    let id = key.get(3..3 + len)?;
    let rest = key.get(3 + len..)?;
    Some((std::str::from_utf8(id).ok()?, rest))
}

pub fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

pub fn be_u16(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.try_into().ok()?))
}

/// What rkyv can archive into a stored value.
pub trait Record:
    for<'a> Serialize<
    rkyv::api::high::HighSerializer<
        AlignedVec,
        rkyv::ser::allocator::ArenaHandle<'a>,
        rancor::Error,
    >,
>
{
}

impl<T> Record for T where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<
            AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rancor::Error,
        >,
    >
{
}

/// The stored value for `record` under `key`, in a buffer of its own.
pub fn encode<T>(key: &[u8], record: &T) -> Vec<u8>
where
    T: Record,
{
    Encoder::default().encode(key, record).to_vec()
}

/// Encodes values into buffers kept from one record to the next, for a
/// thread that encodes many (the log's writer, a checkpoint). A fresh
/// archive buffer (grown from empty, one reallocation after another) and
/// a fresh framed copy per record put malloc and free among the largest
/// items of the writer thread in a profile of the saturated `batch` pairs
/// flow (PERF.md, "The log's writer, allocating less").
#[derive(Default)]
pub struct Encoder {
    archive: AlignedVec,
    value: Vec<u8>,
}

impl Encoder {
    /// The stored value for `record` under `key` (the checksum, then the
    /// archive), valid until the next call.
    pub fn encode<T>(&mut self, key: &[u8], record: &T) -> &[u8]
    where
        T: Record,
    {
        let mut archive = std::mem::take(&mut self.archive);
        archive.clear();
        // Serializing owned records into a growable buffer cannot fail.
        self.archive =
            rkyv::api::high::to_bytes_in::<_, rancor::Error>(record, archive).unwrap_or_default();
        self.value.clear();
        self.value
            .extend_from_slice(&checksum(key, &self.archive).to_le_bytes());
        self.value.extend_from_slice(&self.archive);
        &self.value
    }
}

/// Checksum, then the bytes: also for values with no archive.
pub fn frame(key: &[u8], archive: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(4 + archive.len());
    value.extend_from_slice(&checksum(key, archive).to_le_bytes());
    value.extend_from_slice(archive);
    value
}

/// The bytes a stored value frames, its checksum verified.
pub fn verify<'v>(key: &[u8], value: &'v [u8]) -> Result<&'v [u8], RecordError> {
    let (sum, bytes) = value.split_at_checked(4).ok_or(RecordError::Truncated)?;
    let sum = u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]);
    if sum != checksum(key, bytes) {
        return Err(RecordError::Checksum);
    }
    Ok(bytes)
}

/// The archive of a stored value, its checksum verified, copied into an
/// aligned buffer for rkyv to read in place.
pub fn unframe(key: &[u8], value: &[u8]) -> Result<AlignedVec<16>, RecordError> {
    let archive = verify(key, value)?;
    let mut aligned = AlignedVec::<16>::with_capacity(archive.len());
    aligned.extend_from_slice(archive);
    Ok(aligned)
}

/// An owned record from a verified archive.
pub fn decode<T>(archive: &[u8]) -> Result<T, RecordError>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    rkyv::from_bytes::<T, rancor::Error>(archive).map_err(|e| RecordError::Invalid(e.to_string()))
}

/// The key is covered too: a value written under another key (a torn or
/// misdirected write) fails like a damaged one.
fn checksum(key: &[u8], archive: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(archive);
    hasher.finalize()
}

/// A key as an operator reads it in an error message: the kind, then the
/// printable bytes, the rest in hex.
pub fn describe_key(key: &[u8]) -> String {
    key.iter()
        .map(|&b| {
            if b.is_ascii_graphic() {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> SessionRecord {
        SessionRecord {
            client_id: "sensor-1".into(),
            username: None,
            protocol: 5,
            session_expiry: 3600,
            connected: true,
            expires_at_ms: Some(1_700_000_000_000),
            subscriptions: vec![SubscriptionRecord {
                filter: "a/+/c".into(),
                options: 0b0000_1001,
                id: Some(7),
            }],
            will: Some(WillRecord {
                message: WireMessage {
                    topic: "will".into(),
                    payload: b"gone".to_vec(),
                    qos: 1,
                    ..WireMessage::default()
                },
                delay_secs: Some(5),
                due_ms: None,
            }),
        }
    }

    #[test]
    fn records_round_trip_through_their_frame() {
        let key = client_key(SESSION, "sensor-1");
        let value = encode(&key, &session());
        let archive = unframe(&key, &value).unwrap();
        assert_eq!(decode::<SessionRecord>(&archive).unwrap(), session());

        let key = entry_key(FLIGHT, "c", 9);
        let flight = FlightRecord {
            packet_id: 65535,
            released: true,
        };
        let value = encode(&key, &flight);
        let archive = unframe(&key, &value).unwrap();
        assert_eq!(decode::<FlightRecord>(&archive).unwrap(), flight);
    }

    #[test]
    fn a_flipped_bit_or_a_short_value_or_another_key_is_detected() {
        let key = client_key(SESSION, "sensor-1");
        let value = encode(&key, &session());
        for at in [0, 4, value.len() / 2, value.len() - 1] {
            let mut damaged = value.clone();
            damaged[at] ^= 0x10;
            assert_eq!(unframe(&key, &damaged).err(), Some(RecordError::Checksum));
        }
        assert_eq!(
            unframe(&key, &value[..3]).err(),
            Some(RecordError::Truncated)
        );
        let elsewhere = client_key(SESSION, "sensor-2");
        assert_eq!(
            unframe(&elsewhere, &value).err(),
            Some(RecordError::Checksum)
        );
    }

    #[test]
    fn a_valid_checksum_over_garbage_is_still_refused() {
        let key = message_key(1);
        let value = frame(&key, &[0xff; 40]);
        let archive = unframe(&key, &value).unwrap();
        assert!(matches!(
            decode::<StoredMessage>(&archive),
            Err(RecordError::Invalid(_))
        ));
    }

    #[test]
    fn client_keys_split_back_and_sort_by_sequence() {
        let key = entry_key(ENTRY, "a\0b", 258);
        let (client, rest) = split_client_key(&key).unwrap();
        assert_eq!((client, be_u64(rest)), ("a\0b", Some(258)));
        assert!(entry_key(ENTRY, "c", 2) < entry_key(ENTRY, "c", 256));
        // One client's prefix never covers another's keys.
        assert!(!entry_key(ENTRY, "ab", 1).starts_with(&client_key(ENTRY, "a")));
        assert_eq!(split_client_key(&[ENTRY, 0, 9, b'x']), None);
        assert_eq!(
            describe_key(&incoming_qos2_key("c", 1)),
            "p\\x00\\x01c\\x00\\x01"
        );
    }
}
