//! Between the wire and the node: an archived frame read in place into
//! what [`Node`](crate::cluster::node::Node) takes (messages borrowing
//! their payloads from the frame), and the node's frames encoded.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use crate::cluster::frame::{self, ArchivedClusterMsg, ClusterMsg, ReplicaOp};
use crate::cluster::node::Frame;

pub(super) enum Decoded {
    Node(Frame),
    Gossip(Bytes),
    Hello,
    /// What the peer is in the ownership raft (see `raftnet.rs`).
    RaftMember {
        raft_id: u64,
        has_state: bool,
    },
}

/// Reads a frame in place into what the node takes: messages borrow their
/// payloads from the frame's buffer.
pub(super) fn decode_frame(
    frame: &frame::Frame,
    now: Instant,
) -> Result<Decoded, frame::FrameError> {
    let strings = |list: &rkyv::vec::ArchivedVec<rkyv::string::ArchivedString>| {
        list.iter().map(|s| ByteString::from(s.as_str())).collect()
    };
    // A session archive stays in the frame's buffer, unvalidated until the
    // shard that adopts it reads it.
    let archive = |session: &rkyv::option::ArchivedOption<rkyv::vec::ArchivedVec<u8>>| {
        (session.as_ref()).map(|archive| frame.bytes.slice_ref(archive.as_slice()))
    };
    // Sized up front: collecting a `Result` cannot know the length, and
    // growing the vector was 0.5% of a receiving node's CPU (`memmove`
    // under `try_process`).
    let messages_of = |messages: &rkyv::vec::ArchivedVec<frame::ArchivedWireMessage>| {
        let mut out = Vec::with_capacity(messages.len());
        for wire in messages.iter() {
            out.push(Arc::new(frame::wire_to_message(&frame.bytes, wire, now)?));
        }
        Ok::<_, frame::FrameError>(out)
    };
    let decoded = match frame.access()? {
        ArchivedClusterMsg::Hello { .. } => Decoded::Hello,
        ArchivedClusterMsg::Routes { version, filters } => Decoded::Node(Frame::Routes {
            version: version.to_native(),
            filters: strings(filters),
        }),
        ArchivedClusterMsg::RouteDelta {
            version,
            add,
            remove,
        } => Decoded::Node(Frame::RouteDelta {
            version: version.to_native(),
            add: strings(add),
            remove: strings(remove),
        }),
        ArchivedClusterMsg::RoutesAck { version } => Decoded::Node(Frame::RoutesAck {
            version: version.to_native(),
        }),
        ArchivedClusterMsg::RoutesResync => Decoded::Node(Frame::RoutesResync),
        ArchivedClusterMsg::Publish {
            stream,
            first_seq,
            messages,
        } => {
            let messages = messages_of(messages)?;
            Decoded::Node(Frame::Publish {
                stream: stream.to_native(),
                first_seq: first_seq.to_native(),
                messages,
            })
        }
        ArchivedClusterMsg::PublishAck { stream, seq } => Decoded::Node(Frame::PublishAck {
            stream: stream.to_native(),
            seq: seq.to_native(),
        }),
        ArchivedClusterMsg::Retain {
            hlc,
            origin,
            message,
        } => Decoded::Node(Frame::Retain {
            hlc: hlc.to_native(),
            origin: origin.as_str().into(),
            message: Arc::new(frame::wire_to_message(&frame.bytes, message, now)?),
        }),
        ArchivedClusterMsg::Gossip { data } => {
            Decoded::Gossip(frame.bytes.slice_ref(data.as_slice()))
        }
        ArchivedClusterMsg::Leave => Decoded::Node(Frame::Leave),
        ArchivedClusterMsg::SharedPublish {
            stream,
            seq,
            share,
            message,
        } => {
            if crate::router::shared::parse(share.as_str()).is_none() {
                return Err(frame::FrameError::Invalid(format!(
                    "not a shared subscription: {:?}",
                    share.as_str()
                )));
            }
            Decoded::Node(Frame::SharedPublish {
                stream: stream.to_native(),
                seq: seq.to_native(),
                share: share.as_str().into(),
                message: Arc::new(frame::wire_to_message(&frame.bytes, message, now)?),
            })
        }
        ArchivedClusterMsg::RaftMember { raft_id, has_state } => Decoded::RaftMember {
            raft_id: raft_id.to_native(),
            has_state: *has_state,
        },
        // A raft exchange has a stream of its own; on a lane it is a
        // peer that does not follow the protocol.
        ArchivedClusterMsg::RaftRequest { .. } | ArchivedClusterMsg::RaftReply { .. } => {
            return Err(frame::FrameError::Invalid(
                "a raft request or reply outside its own stream".to_owned(),
            ));
        }
        ArchivedClusterMsg::TakeOver {
            client_id,
            epoch,
            request,
        } => Decoded::Node(Frame::TakeOver {
            client_id: client_id.as_str().into(),
            epoch: epoch.to_native(),
            request: request.to_native(),
        }),
        ArchivedClusterMsg::HandedOver { request, session } => Decoded::Node(Frame::HandedOver {
            request: request.to_native(),
            session: archive(session),
        }),
        ArchivedClusterMsg::Replicate {
            shard,
            epoch,
            reset,
            complete,
            ops,
        } => Decoded::Node(Frame::Replicate {
            shard: shard.to_native(),
            epoch: epoch.to_native(),
            reset: *reset,
            complete: *complete,
            ops: Arc::new(
                rkyv::deserialize::<Vec<ReplicaOp>, rkyv::rancor::Error>(ops)
                    .map_err(|error| frame::FrameError::Invalid(error.to_string()))?,
            ),
        }),
        ArchivedClusterMsg::Replicated { shard, epoch } => Decoded::Node(Frame::Replicated {
            shard: shard.to_native(),
            epoch: epoch.to_native(),
        }),
        ArchivedClusterMsg::Recover { client_id, request } => Decoded::Node(Frame::Recover {
            client_id: client_id.as_str().into(),
            request: request.to_native(),
        }),
        ArchivedClusterMsg::Orphans {
            origin,
            client_ids,
            messages,
            stale,
        } => Decoded::Node(Frame::Orphans {
            origin: origin.as_str().into(),
            client_ids: strings(client_ids),
            messages: messages_of(messages)?,
            stale: *stale,
        }),
        ArchivedClusterMsg::Recovered { request, session } => Decoded::Node(Frame::Recovered {
            request: request.to_native(),
            session: archive(session),
        }),
    };
    Ok(decoded)
}

/// Encodes `frame`, taken by value so that replicated ops are archived
/// without another copy of their payloads when this is their last frame
/// (one replica: always).
pub(super) fn encode_frame(
    frame: Frame,
    now: Instant,
    out: &mut BytesMut,
) -> Result<usize, frame::FrameError> {
    if let Frame::Replicate {
        shard,
        epoch,
        reset,
        complete,
        ops,
    } = frame
    {
        let ops = Arc::try_unwrap(ops).unwrap_or_else(|shared| (*shared).clone());
        let msg = ClusterMsg::Replicate {
            shard,
            epoch,
            reset,
            complete,
            ops,
        };
        return frame::encode(&msg, out);
    }
    encode_borrowed(&frame, now, out)
}

fn encode_borrowed(
    frame: &Frame,
    now: Instant,
    out: &mut BytesMut,
) -> Result<usize, frame::FrameError> {
    let strings = |list: &[ByteString]| list.iter().map(|s| s.to_string()).collect();
    match frame {
        Frame::Publish {
            stream,
            first_seq,
            messages,
        } => frame::encode_publish(*stream, *first_seq, messages, now, out),
        Frame::Retain {
            hlc,
            origin,
            message,
        } => frame::encode_retain(*hlc, origin, message, now, out),
        Frame::Routes { version, filters } => frame::encode(
            &ClusterMsg::Routes {
                version: *version,
                filters: strings(filters),
            },
            out,
        ),
        Frame::RouteDelta {
            version,
            add,
            remove,
        } => frame::encode(
            &ClusterMsg::RouteDelta {
                version: *version,
                add: strings(add),
                remove: strings(remove),
            },
            out,
        ),
        Frame::RoutesAck { version } => {
            frame::encode(&ClusterMsg::RoutesAck { version: *version }, out)
        }
        Frame::RoutesResync => frame::encode(&ClusterMsg::RoutesResync, out),
        Frame::PublishAck { stream, seq } => frame::encode(
            &ClusterMsg::PublishAck {
                stream: *stream,
                seq: *seq,
            },
            out,
        ),
        Frame::Leave => frame::encode(&ClusterMsg::Leave, out),
        Frame::SharedPublish {
            stream,
            seq,
            share,
            message,
        } => frame::encode_shared_publish(*stream, *seq, share, message, now, out),
        Frame::TakeOver {
            client_id,
            epoch,
            request,
        } => frame::encode(
            &ClusterMsg::TakeOver {
                client_id: client_id.to_string(),
                epoch: *epoch,
                request: *request,
            },
            out,
        ),
        Frame::HandedOver { request, session } => frame::encode(
            &ClusterMsg::HandedOver {
                request: *request,
                session: session.as_ref().map(|bytes| bytes.to_vec()),
            },
            out,
        ),
        Frame::Replicate {
            shard,
            epoch,
            reset,
            complete,
            ops,
        } => frame::encode(
            &ClusterMsg::Replicate {
                shard: *shard,
                epoch: *epoch,
                reset: *reset,
                complete: *complete,
                ops: ops.to_vec(),
            },
            out,
        ),
        Frame::Replicated { shard, epoch } => frame::encode(
            &ClusterMsg::Replicated {
                shard: *shard,
                epoch: *epoch,
            },
            out,
        ),
        Frame::Recover { client_id, request } => frame::encode(
            &ClusterMsg::Recover {
                client_id: client_id.to_string(),
                request: *request,
            },
            out,
        ),
        Frame::Orphans {
            origin,
            client_ids,
            messages,
            stale,
        } => frame::encode(
            &ClusterMsg::Orphans {
                origin: origin.to_string(),
                client_ids: strings(client_ids),
                messages: (messages.iter())
                    .map(|message| frame::message_to_wire(message, now))
                    .collect(),
                stale: *stale,
            },
            out,
        ),
        Frame::Recovered { request, session } => frame::encode(
            &ClusterMsg::Recovered {
                request: *request,
                session: session.as_ref().map(|bytes| bytes.to_vec()),
            },
            out,
        ),
    }
}
