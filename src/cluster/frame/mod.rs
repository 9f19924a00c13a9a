//! The wire format between cluster nodes: [`ClusterMsg`] archived with rkyv,
//! one archive per frame behind a 4-byte big-endian length.
//!
//! # Why rkyv
//!
//! Forwarded publishes are the bulk of inter-node traffic and their
//! payloads the bulk of its bytes. An rkyv archive is read in place: the
//! receiver validates the frame once (bytecheck: every offset in bounds,
//! every string UTF-8, every enum tag known) and then reads fields straight
//! out of the buffer, so a forwarded message's payload becomes a
//! refcounted slice of the frame ([`wire_to_message`]) and is never copied
//! or parsed. A field-by-field format (protobuf, postcard) would decode
//! into owned values, copying every payload once more. On the sending
//! side, borrowed views of the broker's messages archive to the same
//! layout ([`encode_publish`], [`encode_retain`]), so nothing is copied
//! but into the output buffer. No benchmark decided this: it follows from
//! counting copies, and it matches how the MQTT codec already hands out
//! payloads as slices of the read buffer.
//!
//! # Alignment
//!
//! rkyv reads fields in place, so an archive must start at an address
//! aligned for its most aligned field (8, for the `u64`s). A frame starts
//! anywhere in a read buffer, so [`FrameReader`] copies each frame into
//! its own `rkyv::util::AlignedVec` (16-byte aligned), then hands it out as
//! `Bytes` (`Bytes::from_owner`), so slices of it can outlive the frame.
//! That copy is the one the receiver makes; the alternatives were a
//! read buffer aligned per frame (impossible when frames arrive back to
//! back in one read) or rkyv's `unaligned` feature, which would make every
//! field read a byte-wise load and is a crate-wide switch. Validation
//! checks alignment too, so a misaligned [`Frame`] is an error, not
//! undefined behaviour.
//!
//! # Limits
//!
//! [`FrameReader`] refuses a length prefix over its limit before buffering
//! any of the frame, and [`encode`] refuses to write a frame over
//! [`MAX_FRAME_LEN`], so a batch too big for the peer fails at the sender.

mod convert;
mod encode;
mod msg;
mod reader;

use bytes::Bytes;

pub use convert::{message_to_wire, wire_to_message};
pub use encode::{encode, encode_publish, encode_retain, encode_shared_publish};
pub use msg::{
    ArchivedClusterMsg, ArchivedUserProperty, ArchivedWireMessage, ClusterMsg, PROTOCOL_VERSION,
    ReplicaOp, UserProperty, WireMessage,
};
pub use reader::FrameReader;

/// The largest archive a frame may carry (its length prefix not counted),
/// unless a reader is built with another limit: far above a batch of
/// messages worth sending together, far below what would hurt to buffer.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Bytes of the big-endian length before every archive.
pub const LEN_PREFIX: usize = 4;

/// One frame's archive, in a buffer aligned for rkyv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The archive, without the length prefix. Slices of it (payloads) may
    /// be handed out and outlive the frame.
    pub bytes: Bytes,
}

impl Frame {
    /// The message, validated: offsets in bounds, strings UTF-8, tags
    /// known, buffer aligned. Validation runs at every call, so call once.
    pub fn access(&self) -> Result<&ArchivedClusterMsg, FrameError> {
        rkyv::access::<ArchivedClusterMsg, rkyv::rancor::Error>(&self.bytes)
            .map_err(|error| FrameError::Invalid(error.to_string()))
    }

    /// An owned copy of the message: for the control messages (routes,
    /// hello), which are kept, not forwarded.
    pub fn to_owned_msg(&self) -> Result<ClusterMsg, FrameError> {
        rkyv::deserialize::<ClusterMsg, rkyv::rancor::Error>(self.access()?)
            .map_err(|error| FrameError::Invalid(error.to_string()))
    }
}

/// Why a frame was refused; every one closes the connection it came on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    Oversized { len: usize, max: usize },
    /// rkyv's validation refused the archive; the reason is rkyv's.
    #[error("invalid frame: {0}")]
    Invalid(String),
    #[error("forwarded message has an invalid topic name")]
    BadTopic,
    #[error("forwarded message has QoS {0}")]
    BadQos(u8),
    /// [`wire_to_message`] was given a message from another buffer: a
    /// caller's bug, reported rather than panicking in `Bytes::slice_ref`.
    #[error("archived message is not inside the given frame")]
    NotInFrame,
    /// rkyv could not serialize (an allocation or offset overflow).
    #[error("cannot encode frame: {0}")]
    Encode(String),
}

#[cfg(test)]
mod strategies;
#[cfg(test)]
mod tests;
