//! A whole session as one archive, to move it to another node: the
//! records this store keeps for it on disk ([`SessionRecord`],
//! [`EntryRecord`], [`FlightRecord`], [`StoredMessage`]), gathered, with
//! entries referring to messages by their position in the archive instead
//! of by a partition's message id. The node it arrives on reads it back
//! through the same assembly as a restart ([`super::restore`]), so what a
//! session owes after a move is what it would owe after a crash.
//!
//! Times travel as wall-clock Unix milliseconds, as on disk: the two nodes'
//! monotonic clocks have nothing in common.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use bytestring::ByteString;
use rkyv::{Archive, Deserialize, Serialize};
use rustc_hash::FxHashMap;

use super::record::{
    EntryRecord, FlightRecord, RecordError, SessionRecord, StoredMessage, SubscriptionRecord,
    WillRecord,
};
use super::restore::{RestoredSubscription, message_in, owed_from, session_from, unix_ms};
use super::writer::stored_record;
use crate::cluster::frame::message_to_wire;
use crate::message::Message;
use crate::protocol::{LastWill, ProtocolVersion, PublishProperties};
use crate::session::RestoredSession;

/// A session on its way to another node.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SessionArchive {
    pub session: SessionRecord,
    /// Each message once; an entry's `message` is a position here.
    pub messages: Vec<StoredMessage>,
    pub entries: Vec<SeqEntry>,
    pub flights: Vec<SeqFlight>,
    pub incoming_qos2: Vec<u16>,
}

/// An entry under its sequence number, as keyed on disk.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SeqEntry {
    pub seq: u64,
    pub entry: EntryRecord,
}

/// A flight under its sequence number, as keyed on disk.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqFlight {
    pub seq: u64,
    pub flight: FlightRecord,
}

/// `session` (as [`crate::session::Session::hand_over`] left it) and its
/// subscriptions, archived. `now` and `wall` are one moment on the
/// monotonic and the wall clock.
pub fn encode_session(
    session: &RestoredSession,
    subscriptions: &[RestoredSubscription],
    now: Instant,
    wall: SystemTime,
) -> Vec<u8> {
    let mut messages = Vec::new();
    let mut entries = Vec::new();
    let mut flights = Vec::new();
    for owed in &session.messages {
        let seq = owed.seq;
        if let Some(message) = &owed.message {
            entries.push(SeqEntry {
                seq,
                entry: EntryRecord {
                    message: messages.len() as u64,
                    qos: owed.qos as u8,
                    retain: owed.retain,
                    subscription_ids: owed.subscription_ids.clone(),
                    shared: owed.shared.as_ref().map(ToString::to_string),
                },
            });
            messages.push(stored_record(message, now, wall));
        }
        if let Some(packet_id) = owed.packet_id {
            let released = owed.message.is_none();
            flights.push(SeqFlight {
                seq,
                flight: FlightRecord {
                    packet_id,
                    released,
                },
            });
        }
    }
    let will = session.will.as_ref().map(|(last, due)| {
        let due_ms = due.map(|at| unix_ms(at, now, wall));
        will_record(last, due_ms, session.client_id.clone(), now)
    });
    let archive = SessionArchive {
        session: SessionRecord {
            client_id: session.client_id.to_string(),
            username: session.username.as_ref().map(ToString::to_string),
            protocol: session.protocol.level(),
            session_expiry: session.session_expiry,
            connected: session.connected,
            expires_at_ms: session.expires_at.map(|at| unix_ms(at, now, wall)),
            subscriptions: subscriptions
                .iter()
                .map(|subscription| SubscriptionRecord {
                    filter: subscription.filter.to_string(),
                    options: subscription.options.to_byte(ProtocolVersion::V5),
                    id: subscription.id,
                })
                .collect(),
            will,
        },
        messages,
        entries,
        flights,
        incoming_qos2: session.incoming_qos2.clone(),
    };
    archive_bytes(&archive)
}

/// `archive` as it travels.
pub fn archive_bytes(archive: &SessionArchive) -> Vec<u8> {
    // Serializing owned records into a growable buffer cannot fail.
    rkyv::to_bytes::<rkyv::rancor::Error>(archive)
        .map(|bytes| bytes.to_vec())
        .unwrap_or_default()
}

/// The session `bytes` holds, validated (they come from another node),
/// with its subscriptions. Messages that expired on the way are left out.
pub fn decode_session(
    bytes: &[u8],
    now: Instant,
    wall: SystemTime,
) -> Result<(RestoredSession, Vec<RestoredSubscription>), RecordError> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    let frame = Bytes::from_owner(aligned);
    let archived = rkyv::access::<ArchivedSessionArchive, rkyv::rancor::Error>(&frame)
        .map_err(|e| RecordError::Invalid(e.to_string()))?;
    let messages: Vec<Option<Arc<Message>>> = archived
        .messages
        .iter()
        .map(|stored| message_in(&frame, stored, now, wall).map(|m| m.map(Arc::new)))
        .collect::<Result<_, _>>()
        .map_err(RecordError::Invalid)?;
    let deserialize = |e: rkyv::rancor::Error| RecordError::Invalid(e.to_string());
    let session: SessionRecord =
        rkyv::deserialize::<_, rkyv::rancor::Error>(&archived.session).map_err(deserialize)?;
    let entries: Vec<SeqEntry> =
        rkyv::deserialize::<_, rkyv::rancor::Error>(&archived.entries).map_err(deserialize)?;
    let flights: Vec<SeqFlight> =
        rkyv::deserialize::<_, rkyv::rancor::Error>(&archived.flights).map_err(deserialize)?;
    let incoming_qos2: Vec<u16> = archived
        .incoming_qos2
        .iter()
        .map(|id| id.to_native())
        .collect();
    let entries = entries.into_iter().map(|e| (e.seq, e.entry)).collect();
    let flights: FxHashMap<u64, FlightRecord> =
        flights.into_iter().map(|f| (f.seq, f.flight)).collect();
    // Expired messages and what only they were owed for are simply not
    // owed any more: nothing is on this node's disk to clean up.
    let (owed, _expired) = owed_from(entries, flights, |at| {
        messages.get(usize::try_from(at).ok()?).cloned().flatten()
    });
    let client_id = session.client_id.clone();
    Ok(session_from(
        client_id,
        session,
        owed,
        incoming_qos2,
        now,
        wall,
    ))
}

/// A will as stored: the message it publishes in wire form, with its
/// Message Expiry Interval in `expiry_ms`, its delay, and when it is due
/// (Unix milliseconds) once its delay has started.
pub fn will_record(
    last: &LastWill,
    due_ms: Option<u64>,
    publisher: ByteString,
    now: Instant,
) -> WillRecord {
    let p = &last.properties;
    let message = Message {
        topic: last.topic.clone(),
        payload: last.payload.clone(),
        qos: last.qos,
        retain: last.retain,
        properties: PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: None,
            topic_alias: None,
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
            subscription_identifiers: Vec::new(),
            content_type: p.content_type.clone(),
        }
        .into(),
        publisher,
        expires_at: None,
        received_at: now,
    };
    let mut wire = message_to_wire(&message, now);
    wire.expiry_ms = p.message_expiry_interval.map(|secs| u64::from(secs) * 1000);
    WillRecord {
        message: wire,
        delay_secs: p.will_delay_interval,
        due_ms,
    }
}
