//! The checks of the `cluster_frame` target: the wire between cluster
//! nodes, as a connection reads it.

use std::time::Instant;

use bytes::BytesMut;
use ringmq::cluster::frame::{
    ArchivedClusterMsg, ArchivedWireMessage, ClusterMsg, Frame, FrameError, FrameReader,
    WireMessage, encode, encode_publish, message_to_wire, wire_to_message,
};
use ringmq::cluster::ownership::wire::{
    RaftRequest, RaftWireError, check_request, decode_answer, decode_request, encode_answer,
    encode_request,
};
use ringmq::message::Message;

/// Far under the broker's 16 MiB, so an input's length prefix can reach it.
const MAX_FRAME_LEN: usize = 1 << 20;

/// The first byte sets the size of the chunks the rest is fed in (1 to
/// 64 bytes), so frames split across reads are exercised; the rest is the
/// byte stream.
pub fn split_cluster_input(data: &[u8]) -> Option<(usize, &[u8])> {
    let (&selector, stream) = data.split_first()?;
    Some((usize::from(selector % 64) + 1, stream))
}

/// Reads `stream` as a connection would and checks:
///
/// - fed whole or in `chunk`-byte pieces, the reader gives the same frames
///   and stops with the same error; it never panics;
/// - a frame that validates deserializes to an owned [`ClusterMsg`], which
///   re-encodes and reads back equal;
/// - every message of a `Publish` or `Retain` either converts to a broker
///   [`Message`] or is refused with `BadTopic`/`BadQos`; a converted
///   message converts back to the same [`WireMessage`] (what a subscriber
///   can see is kept), its payload lies inside the frame, and
///   `encode_publish` of the converted messages writes the bytes `encode`
///   writes for their owned copies;
/// - the body of a `RaftRequest` or `RaftReply` is refused or decodes (the
///   ownership raft's postcard layer); what decodes encodes again to the
///   same message, and a request is checked against any sender, all
///   without a panic.
pub fn cluster_frames(stream: &[u8], chunk: usize) {
    let whole = read(stream, stream.len().max(1));
    let split = read(stream, chunk);
    assert_eq!(whole, split, "the split of the stream changed the frames");
    let (frames, _) = whole;
    for frame in &frames {
        check_frame(frame);
    }
}

fn read(stream: &[u8], chunk: usize) -> (Vec<Frame>, Option<FrameError>) {
    let mut reader = FrameReader::new(MAX_FRAME_LEN);
    let mut frames = Vec::new();
    for piece in stream.chunks(chunk) {
        reader.push(piece);
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(error) => return (frames, Some(error)),
            }
        }
    }
    (frames, None)
}

fn check_frame(frame: &Frame) {
    let Ok(archived) = frame.access() else {
        return;
    };
    let owned = frame
        .to_owned_msg()
        .expect("a validated archive deserializes");

    let mut out = BytesMut::new();
    let written = encode(&owned, &mut out).expect("a message read re-encodes");
    assert_eq!(written, out.len());
    let again = read(&out, out.len());
    assert_eq!(again.0.len(), 1, "re-encoded message is not one frame");
    assert_eq!(again.0[0].to_owned_msg().as_ref(), Ok(&owned));

    let now = Instant::now();
    match (archived, &owned) {
        (
            ArchivedClusterMsg::Publish { messages, .. },
            ClusterMsg::Publish {
                stream,
                first_seq,
                messages: owned_messages,
            },
        ) => {
            let converted: Vec<Message> = messages
                .iter()
                .zip(owned_messages)
                .filter_map(|(wire, owned)| convert(frame, wire, owned, now))
                .collect();
            if converted.len() == messages.len() {
                let mut borrowed = BytesMut::new();
                encode_publish(*stream, *first_seq, &converted, now, &mut borrowed)
                    .expect("encode_publish");
                let mut copied = BytesMut::new();
                let wires = converted.iter().map(|m| message_to_wire(m, now)).collect();
                encode(
                    &ClusterMsg::Publish {
                        stream: *stream,
                        first_seq: *first_seq,
                        messages: wires,
                    },
                    &mut copied,
                )
                .expect("encode");
                assert_eq!(borrowed, copied, "encode_publish differs from encode");
            }
        }
        (ArchivedClusterMsg::Retain { message, .. }, ClusterMsg::Retain { message: owned, .. }) => {
            convert(frame, message, owned, now);
        }
        (_, ClusterMsg::RaftRequest { body, .. }) => raft_request(body),
        (_, ClusterMsg::RaftReply { body, .. }) => raft_answer(body),
        _ => {}
    }
}

fn convert(
    frame: &Frame,
    wire: &ArchivedWireMessage,
    owned: &WireMessage,
    now: Instant,
) -> Option<Message> {
    match wire_to_message(&frame.bytes, wire, now) {
        Ok(message) => {
            let range = frame.bytes.as_ptr_range();
            if !message.payload.is_empty() {
                assert!(range.contains(&message.payload.as_ptr()));
            }
            let back = message_to_wire(&message, now);
            // An expiry too far off for an `Instant` is kept as none.
            let expected = WireMessage {
                expiry_ms: owned.expiry_ms.filter(|_| message.expires_at.is_some()),
                ..owned.clone()
            };
            assert_eq!(back, expected, "wire → message → wire changed it");
            Some(message)
        }
        Err(FrameError::BadTopic | FrameError::BadQos(_)) => None,
        Err(error) => panic!("unexpected conversion error: {error}"),
    }
}

fn raft_request(body: &[u8]) {
    if let Some(request) = round_trip(body, decode_request, encode_request, same_request) {
        for senders in [&[][..], &[0, 1], &[u64::MAX]] {
            let _ = check_request(&request, senders);
        }
    }
}

fn raft_answer(body: &[u8]) {
    round_trip(body, decode_answer, encode_answer, |a, b| {
        encode_answer(a).ok() == encode_answer(b).ok()
    });
}

/// What decodes encodes again, and that decodes to the `same` value.
fn round_trip<T: std::fmt::Debug>(
    body: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, RaftWireError>,
    encode: impl Fn(&T) -> Result<Vec<u8>, RaftWireError>,
    same: impl Fn(&T, &T) -> bool,
) -> Option<T> {
    let decoded = decode(body).ok()?;
    let bytes = encode(&decoded).expect("a decoded raft message encodes");
    let again = decode(&bytes).expect("an encoded raft message decodes");
    assert!(
        same(&decoded, &again),
        "raft message changed on the way: {decoded:?} became {again:?}"
    );
    Some(decoded)
}

/// Equal, as far as the types let us tell: a snapshot's table is a hash
/// map, whose encoding follows its iteration order, so it is compared by
/// value; everything else has one encoding per value.
fn same_request(a: &RaftRequest, b: &RaftRequest) -> bool {
    match (a, b) {
        (
            RaftRequest::Snapshot { vote, meta, table },
            RaftRequest::Snapshot {
                vote: vote_b,
                meta: meta_b,
                table: table_b,
            },
        ) => vote == vote_b && meta == meta_b && table == table_b,
        _ => encode_request(a).ok() == encode_request(b).ok(),
    }
}
