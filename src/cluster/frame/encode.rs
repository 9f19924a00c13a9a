//! Writing frames: a 4-byte big-endian length, then the rkyv archive.
//!
//! [`encode`] archives an owned [`ClusterMsg`]. The hot paths,
//! [`encode_publish`] and [`encode_retain`], archive borrowed views of
//! [`Message`]s instead, so a batch of messages goes onto the wire with one
//! copy of each payload (into the output buffer) and no owned
//! [`WireMessage`] built first.
//!
//! The borrowed views archive to exactly the layout of the owned types:
//! `WireMessageRef` uses `#[rkyv(as = ArchivedWireMessage)]` with fields
//! `&str` (`AsString`, archived as `ArchivedString`) and `&[u8]` (`AsVec`,
//! as `ArchivedVec<u8>`), which the compiler checks field by field; the
//! enum `ClusterMsgRef` repeats `Publish`, `Retain` and `SharedPublish` under the
//! discriminants of [`ClusterMsg`], which nothing checks but the tests
//! (`borrowed_encoders_write_the_owned_bytes`), so keep both in step.
//!
//! Every field of the borrowed types is `omit_bounds`: with the derive's
//! own where-clauses (`AsString: ArchiveWith<&'a str>`), rustc stops
//! normalizing `<AsString as ArchiveWith<&'a str>>::Archived` to
//! `ArchivedString` and the `as` types do not type-check; the serializer's
//! capabilities are stated once per type in `serialize_bounds` instead.

use std::borrow::Borrow;
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use rkyv::rancor::{self, Fallible, Source};
use rkyv::ser::{Allocator, Positional, Writer};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::with::{AsString, AsVec, Map};
use rkyv::{Archive, Place, Serialize};

use super::msg::{ArchivedUserProperty, ArchivedWireMessage};
use super::{ClusterMsg, FrameError, LEN_PREFIX, MAX_FRAME_LEN};
use crate::message::Message;
use crate::protocol::UserProperties;

/// Appends one frame holding `msg` to `out`; returns the bytes written,
/// prefix included. A frame whose archive would exceed [`MAX_FRAME_LEN`]
/// is refused (and nothing is left in `out`): the peer would refuse it.
pub fn encode(msg: &ClusterMsg, out: &mut BytesMut) -> Result<usize, FrameError> {
    write_frame(msg, out)
}

/// Appends one [`ClusterMsg::Publish`] frame of `messages`, numbered from
/// `first_seq` on shard stream `stream`, archived straight from the
/// broker's messages (see the module doc). Expiry is what remains at `now`.
pub fn encode_publish<M: Borrow<Message>>(
    stream: u32,
    first_seq: u64,
    messages: &[M],
    now: Instant,
    out: &mut BytesMut,
) -> Result<usize, FrameError> {
    let msg = ClusterMsgRef::Publish {
        stream,
        first_seq,
        messages: Batch { messages, now },
    };
    write_frame(&msg, out)
}

/// Appends one [`ClusterMsg::Retain`] frame for `message`, without an owned
/// copy of it. An empty payload stands for a deletion, as in MQTT.
pub fn encode_retain(
    hlc: u64,
    origin: &str,
    message: &Message,
    now: Instant,
    out: &mut BytesMut,
) -> Result<usize, FrameError> {
    let msg: ClusterMsgRef<'_, Message> = ClusterMsgRef::Retain {
        hlc,
        origin,
        message: WireMessageRef::new(message, now),
    };
    write_frame(&msg, out)
}

/// Appends one [`ClusterMsg::SharedPublish`] frame for `message`, without
/// an owned copy of it.
pub fn encode_shared_publish(
    stream: u32,
    seq: u64,
    share: &str,
    message: &Message,
    now: Instant,
    out: &mut BytesMut,
) -> Result<usize, FrameError> {
    let msg: ClusterMsgRef<'_, Message> = ClusterMsgRef::SharedPublish {
        stream,
        seq,
        share,
        message: WireMessageRef::new(message, now),
    };
    write_frame(&msg, out)
}

/// Milliseconds from `now` to `expires_at`, rounded up (see
/// [`WireMessage::expiry_ms`]); 0 for a message already expired.
pub(super) fn remaining_ms(expires_at: Option<Instant>, now: Instant) -> Option<u64> {
    expires_at.map(|at| {
        let nanos = at.saturating_duration_since(now).as_nanos();
        u64::try_from(nanos.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    })
}

type Serializer<'a, 'b> = rkyv::api::high::HighSerializer<
    BytesMutWriter<'a>,
    rkyv::ser::allocator::ArenaHandle<'b>,
    rancor::Error,
>;

fn write_frame<T>(value: &T, out: &mut BytesMut) -> Result<usize, FrameError>
where
    T: for<'a, 'b> Serialize<Serializer<'a, 'b>>,
{
    let start = out.len();
    out.put_u32(0);
    let writer = BytesMutWriter {
        out: &mut *out,
        start: start + LEN_PREFIX,
    };
    let result = rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, writer).map(drop);
    let len = out.len() - start - LEN_PREFIX;
    let refused = match result {
        Err(error) => Some(FrameError::Encode(error.to_string())),
        Ok(_) if len > MAX_FRAME_LEN => Some(FrameError::Oversized {
            len,
            max: MAX_FRAME_LEN,
        }),
        Ok(_) => None,
    };
    if let Some(error) = refused {
        out.truncate(start);
        return Err(error);
    }
    // Fits: MAX_FRAME_LEN is far below u32::MAX.
    let prefix = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    out[start..start + LEN_PREFIX].copy_from_slice(&prefix);
    Ok(LEN_PREFIX + len)
}

/// Lets rkyv serialize straight into the output buffer, after the length
/// prefix, instead of into an `AlignedVec` copied over afterwards. rkyv
/// positions are counted from the start of the archive, so the archive is
/// the same whatever the alignment of `out`; the reader copies it into an
/// aligned buffer anyway.
struct BytesMutWriter<'a> {
    out: &'a mut BytesMut,
    start: usize,
}

impl Positional for BytesMutWriter<'_> {
    fn pos(&self) -> usize {
        self.out.len() - self.start
    }
}

impl<E> Writer<E> for BytesMutWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.out.extend_from_slice(bytes);
        Ok(())
    }
}

/// The variants of [`ClusterMsg`] the borrowed encoders write, under the
/// same discriminants, archived as [`ArchivedClusterMsg`](super::ArchivedClusterMsg).
#[derive(Archive, Serialize)]
#[rkyv(as = super::ArchivedClusterMsg)]
#[rkyv(serialize_bounds(
    __S: rkyv::ser::Writer + rkyv::ser::Allocator,
    <__S as Fallible>::Error: Source,
))]
#[repr(u8)]
enum ClusterMsgRef<'a, M: Borrow<Message>> {
    Publish {
        stream: u32,
        first_seq: u64,
        #[rkyv(omit_bounds)]
        messages: Batch<'a, M>,
    } = 5,
    Retain {
        hlc: u64,
        #[rkyv(with = AsString, omit_bounds)]
        origin: &'a str,
        #[rkyv(omit_bounds)]
        message: WireMessageRef<'a>,
    } = 7,
    SharedPublish {
        stream: u32,
        seq: u64,
        #[rkyv(with = AsString, omit_bounds)]
        share: &'a str,
        #[rkyv(omit_bounds)]
        message: WireMessageRef<'a>,
    } = 10,
}

/// A borrowed [`WireMessage`]: the same archive, no owned copy.
#[derive(Archive, Serialize)]
#[rkyv(as = ArchivedWireMessage)]
#[rkyv(serialize_bounds(
    __S: rkyv::ser::Writer + rkyv::ser::Allocator,
    <__S as Fallible>::Error: Source,
))]
struct WireMessageRef<'a> {
    #[rkyv(with = AsString, omit_bounds)]
    topic: &'a str,
    #[rkyv(with = AsVec, omit_bounds)]
    payload: &'a [u8],
    qos: u8,
    retain: bool,
    #[rkyv(with = AsString, omit_bounds)]
    publisher: &'a str,
    expiry_ms: Option<u64>,
    payload_format_indicator: Option<u8>,
    #[rkyv(with = Map<AsString>, omit_bounds)]
    content_type: Option<&'a str>,
    #[rkyv(with = Map<AsString>, omit_bounds)]
    response_topic: Option<&'a str>,
    #[rkyv(with = Map<AsVec>, omit_bounds)]
    correlation_data: Option<&'a [u8]>,
    #[rkyv(omit_bounds)]
    user_properties: UserPropertiesRef<'a>,
}

impl<'a> WireMessageRef<'a> {
    fn new(message: &'a Message, now: Instant) -> Self {
        let p = &*message.properties;
        WireMessageRef {
            topic: &message.topic,
            payload: &message.payload,
            qos: message.qos as u8,
            retain: message.retain,
            publisher: &message.publisher,
            expiry_ms: remaining_ms(message.expires_at, now),
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.as_deref(),
            response_topic: p.response_topic.as_deref(),
            correlation_data: p.correlation_data.as_deref(),
            user_properties: UserPropertiesRef(&p.user_properties),
        }
    }
}

/// A borrowed [`UserProperty`](super::UserProperty).
#[derive(Archive, Serialize)]
#[rkyv(as = ArchivedUserProperty)]
#[rkyv(serialize_bounds(
    __S: rkyv::ser::Writer + rkyv::ser::Allocator,
    <__S as Fallible>::Error: Source,
))]
struct UserPropertyRef<'a> {
    #[rkyv(with = AsString, omit_bounds)]
    key: &'a str,
    #[rkyv(with = AsString, omit_bounds)]
    value: &'a str,
}

/// The broker's user properties, archived as `Vec<UserProperty>` without
/// building one.
struct UserPropertiesRef<'a>(&'a UserProperties);

impl Archive for UserPropertiesRef<'_> {
    type Archived = ArchivedVec<ArchivedUserProperty>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: VecResolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<S> Serialize<S> for UserPropertiesRef<'_>
where
    S: Fallible + Allocator + Writer + ?Sized,
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<VecResolver, S::Error> {
        let pairs = self.0.iter().map(|(key, value)| UserPropertyRef {
            key: key.as_ref(),
            value: value.as_ref(),
        });
        ArchivedVec::serialize_from_iter::<UserPropertyRef<'_>, _, _>(pairs, serializer)
    }
}

/// A publish batch, archived as `Vec<WireMessage>` without building one.
struct Batch<'a, M> {
    messages: &'a [M],
    now: Instant,
}

impl<M: Borrow<Message>> Archive for Batch<'_, M> {
    type Archived = ArchivedVec<ArchivedWireMessage>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: VecResolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_len(self.messages.len(), resolver, out);
    }
}

impl<M, S> Serialize<S> for Batch<'_, M>
where
    M: Borrow<Message>,
    S: Fallible + Allocator + Writer + ?Sized,
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<VecResolver, S::Error> {
        let now = self.now;
        let wires = self
            .messages
            .iter()
            .map(move |m| WireMessageRef::new(m.borrow(), now));
        ArchivedVec::serialize_from_iter::<WireMessageRef<'_>, _, _>(wires, serializer)
    }
}
