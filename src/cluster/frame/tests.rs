use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;

use super::strategies::{cluster_msg, wire_message};
use super::*;
use crate::message::Message;
use crate::protocol::{PublishProperties, QoS};

fn encoded(msg: &ClusterMsg) -> BytesMut {
    let mut out = BytesMut::new();
    let written = encode(msg, &mut out).expect("encodes");
    assert_eq!(written, out.len());
    out
}

/// Feeds `bytes` to a reader in chunks of the given sizes (cycled), and
/// takes every frame out.
fn read_all(bytes: &[u8], chunks: &[usize]) -> Vec<Frame> {
    let mut reader = FrameReader::new(MAX_FRAME_LEN);
    let mut frames = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunks.iter().copied().cycle();
    while !rest.is_empty() {
        let take = sizes.next().unwrap_or(1).clamp(1, rest.len());
        reader.push(&rest[..take]);
        rest = &rest[take..];
        while let Some(frame) = reader.next_frame().expect("valid stream") {
            frames.push(frame);
        }
    }
    assert!(reader.is_between_frames());
    frames
}

fn message(topic: &str, payload: &'static [u8], now: Instant) -> Message {
    Message {
        topic: topic.into(),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: PublishProperties::default().into(),
        publisher: "client-1".into(),
        expires_at: None,
        received_at: now,
    }
}

fn full_message(now: Instant) -> Message {
    Message {
        retain: true,
        qos: QoS::ExactlyOnce,
        properties: PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            topic_alias: None,
            response_topic: Some("replies/client-1".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
            user_properties: vec![
                ("origin".into(), "sensor".into()),
                ("a much longer key than eight".into(), "é".into()),
            ],
            subscription_identifiers: Vec::new(),
            content_type: Some("application/json".into()),
        }
        .into(),
        expires_at: Some(now + Duration::from_secs(60)),
        ..message("sensors/1/temperature", b"{\"t\": 21.5}", now)
    }
}

fn every_variant() -> Vec<ClusterMsg> {
    let now = Instant::now();
    let wire = message_to_wire(&full_message(now), now);
    vec![
        ClusterMsg::Hello {
            node_id: "node-a".into(),
            incarnation: 3,
            advertise: "10.0.0.1:7000".into(),
            version: PROTOCOL_VERSION,
        },
        ClusterMsg::Routes {
            version: 7,
            filters: vec!["a/+/b".into(), "#".into(), "sensors/#".into()],
        },
        ClusterMsg::RouteDelta {
            version: 8,
            add: vec!["x/y".into()],
            remove: vec!["a/+/b".into()],
        },
        ClusterMsg::RoutesAck { version: 8 },
        ClusterMsg::RoutesResync,
        ClusterMsg::Publish {
            stream: 2,
            first_seq: 1_000,
            messages: vec![wire.clone(), WireMessage::default()],
        },
        ClusterMsg::PublishAck {
            stream: 2,
            seq: 1_001,
        },
        ClusterMsg::Retain {
            hlc: 1 << 40,
            origin: "node-a".into(),
            message: wire.clone(),
        },
        ClusterMsg::SharedPublish {
            stream: 1,
            seq: 7,
            share: "$share/g/a/+".into(),
            message: wire,
        },
        ClusterMsg::Gossip {
            data: vec![0, 1, 2, 255],
        },
        ClusterMsg::Leave,
        ClusterMsg::RaftMember {
            raft_id: u64::MAX - 3,
            has_state: true,
        },
        ClusterMsg::RaftRequest {
            id: 12,
            more: true,
            body: vec![3, 1, 4, 1, 5],
        },
        ClusterMsg::RaftReply {
            id: 12,
            body: Vec::new(),
        },
    ]
}

#[test]
fn every_variant_round_trips_in_any_split() {
    for msg in every_variant() {
        let bytes = encoded(&msg);
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len + LEN_PREFIX, bytes.len(), "{msg:?}");
        for chunks in [&[1][..], &[2, 3], &[7, 1, 64], &[usize::MAX]] {
            let frames = read_all(&bytes, chunks);
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0].bytes.len(), len);
            assert_eq!(frames[0].to_owned_msg().unwrap(), msg);
        }
    }
}

#[test]
fn frames_back_to_back_come_out_in_order() {
    let msgs = every_variant();
    let mut stream = BytesMut::new();
    for msg in &msgs {
        encode(msg, &mut stream).unwrap();
    }
    let frames = read_all(&stream, &[5, 13, 1, 200]);
    let got: Vec<ClusterMsg> = frames.iter().map(|f| f.to_owned_msg().unwrap()).collect();
    assert_eq!(got, msgs);
}

#[test]
fn frames_are_aligned_for_rkyv() {
    let bytes = encoded(&every_variant()[5]);
    // Start the stream at an odd offset of the caller's buffer.
    let mut odd = vec![0u8];
    odd.extend_from_slice(&bytes);
    let mut reader = FrameReader::new(MAX_FRAME_LEN);
    reader.push(&odd[1..]);
    let frame = reader.next_frame().unwrap().unwrap();
    assert_eq!(frame.bytes.as_ptr() as usize % 16, 0);
    frame.access().unwrap();
}

#[test]
fn a_misaligned_frame_is_an_error_not_undefined_behaviour() {
    let frame = read_all(&encoded(&every_variant()[0]), &[usize::MAX]).remove(0);
    // One byte into a 16-byte aligned buffer: misaligned for sure.
    let mut shifted = rkyv::util::AlignedVec::<16>::new();
    shifted.extend_from_slice(&[0]);
    shifted.extend_from_slice(&frame.bytes);
    let misaligned = Frame {
        bytes: Bytes::from_owner(shifted).slice(1..),
    };
    let result = misaligned.access();
    assert!(matches!(result, Err(FrameError::Invalid(_))), "{result:?}");
}

#[test]
fn truncated_frames_stay_incomplete() {
    for msg in every_variant() {
        let bytes = encoded(&msg);
        for cut in 0..bytes.len() {
            let mut reader = FrameReader::new(MAX_FRAME_LEN);
            reader.push(&bytes[..cut]);
            assert_eq!(reader.next_frame(), Ok(None), "cut at {cut} of {msg:?}");
            assert_eq!(reader.is_between_frames(), cut == 0);
        }
    }
}

#[test]
fn garbage_inside_a_correct_prefix_is_an_error() {
    for garbage in [&b""[..], b"\x01", b"garbage!", &[0xff; 64]] {
        let mut reader = FrameReader::new(MAX_FRAME_LEN);
        reader.push(&(garbage.len() as u32).to_be_bytes());
        reader.push(garbage);
        let frame = reader.next_frame().unwrap().expect("complete frame");
        assert!(matches!(frame.access(), Err(FrameError::Invalid(_))));
    }
}

#[test]
fn an_unknown_tag_is_an_error() {
    let mut bytes = encoded(&ClusterMsg::Leave);
    // The root enum ends the archive; its tag is its first byte.
    let root = bytes.len() - std::mem::size_of::<ArchivedClusterMsg>();
    assert_eq!(bytes[root], 9);
    bytes[root] = 200;
    let frame = read_all(&bytes, &[usize::MAX]).remove(0);
    assert!(matches!(frame.access(), Err(FrameError::Invalid(_))));
}

#[test]
fn an_oversized_prefix_is_an_error_before_any_body() {
    let mut reader = FrameReader::new(100);
    reader.push(&101u32.to_be_bytes());
    assert_eq!(
        reader.next_frame(),
        Err(FrameError::Oversized { len: 101, max: 100 })
    );
    // Whatever follows is ignored; the error stays.
    reader.push(&[0; 200]);
    assert!(reader.next_frame().is_err());

    // Frames before the bad prefix are still delivered first.
    let mut reader = FrameReader::new(1000);
    let mut stream = encoded(&ClusterMsg::RoutesResync);
    stream.extend_from_slice(&u32::MAX.to_be_bytes());
    reader.push(&stream);
    assert!(reader.next_frame().unwrap().is_some());
    assert!(matches!(
        reader.next_frame(),
        Err(FrameError::Oversized { .. })
    ));
}

#[test]
fn encode_refuses_a_frame_over_the_limit() {
    let msg = ClusterMsg::Gossip {
        data: vec![0; MAX_FRAME_LEN],
    };
    let mut out = BytesMut::from(&b"kept"[..]);
    assert!(matches!(
        encode(&msg, &mut out),
        Err(FrameError::Oversized { .. })
    ));
    assert_eq!(&out[..], b"kept");
}

#[test]
fn payload_is_a_slice_of_the_frame() {
    let now = Instant::now();
    let mut out = BytesMut::new();
    encode_publish(2, 9, &[Arc::new(full_message(now))], now, &mut out).unwrap();
    let frame = read_all(&out, &[3]).remove(0);
    let ArchivedClusterMsg::Publish { messages, .. } = frame.access().unwrap() else {
        panic!("not a publish");
    };
    let message = wire_to_message(&frame.bytes, &messages[0], now).unwrap();
    let range = frame.bytes.as_ptr_range();
    for part in [
        &message.payload[..],
        message.properties.correlation_data.as_deref().unwrap(),
        message.topic.as_bytes(),
    ] {
        assert!(range.contains(&part.as_ptr()));
        assert!(part.as_ptr_range().end <= range.end);
    }
}

#[test]
fn v5_properties_and_expiry_survive_the_wire() {
    let now = Instant::now();
    let original = full_message(now);
    let later = now + Duration::from_secs(10);
    let mut out = BytesMut::new();
    encode_retain(5, "node-a", &original, now, &mut out).unwrap();
    let frame = read_all(&out, &[usize::MAX]).remove(0);
    let ArchivedClusterMsg::Retain {
        hlc,
        origin,
        message,
    } = frame.access().unwrap()
    else {
        panic!("not a retain");
    };
    assert_eq!((hlc.to_native(), origin.as_str()), (5, "node-a"));
    let received = wire_to_message(&frame.bytes, message, later).unwrap();
    assert_eq!(
        received,
        Message {
            expires_at: Some(later + Duration::from_secs(60)),
            received_at: later,
            ..original
        }
    );
}

#[test]
fn expiry_is_rounded_up_to_the_millisecond() {
    let now = Instant::now();
    let mut m = message("a", b"", now);
    m.expires_at = Some(now + Duration::from_micros(1));
    assert_eq!(message_to_wire(&m, now).expiry_ms, Some(1));
    m.expires_at = Some(now - Duration::from_secs(1).min(now.elapsed()));
    assert_eq!(message_to_wire(&m, now).expiry_ms, Some(0));
}

/// A frame holding one `Publish` of `wire`.
fn publish_frame(wire: WireMessage) -> Frame {
    let msg = ClusterMsg::Publish {
        stream: 0,
        first_seq: 0,
        messages: vec![wire],
    };
    read_all(&encoded(&msg), &[usize::MAX]).remove(0)
}

fn convert(frame: &Frame) -> Result<Message, FrameError> {
    let ArchivedClusterMsg::Publish { messages, .. } = frame.access()? else {
        unreachable!("publish_frame makes publishes");
    };
    wire_to_message(&frame.bytes, &messages[0], Instant::now())
}

#[test]
fn bad_topic_and_qos_are_refused() {
    let ok = WireMessage {
        topic: "a/b".into(),
        ..WireMessage::default()
    };
    assert!(convert(&publish_frame(ok.clone())).is_ok());
    for topic in ["", "a/+", "#"] {
        let frame = publish_frame(WireMessage {
            topic: topic.into(),
            ..ok.clone()
        });
        assert_eq!(convert(&frame), Err(FrameError::BadTopic), "{topic:?}");
    }
    let frame = publish_frame(WireMessage { qos: 3, ..ok });
    assert_eq!(convert(&frame), Err(FrameError::BadQos(3)));
}

#[test]
fn a_message_from_another_frame_is_refused() {
    let wire = WireMessage {
        topic: "a/b".into(),
        payload: b"payload".to_vec(),
        ..WireMessage::default()
    };
    let one = publish_frame(wire.clone());
    let other = publish_frame(wire);
    let ArchivedClusterMsg::Publish { messages, .. } = other.access().unwrap() else {
        unreachable!();
    };
    assert_eq!(
        wire_to_message(&one.bytes, &messages[0], Instant::now()),
        Err(FrameError::NotInFrame)
    );
}

/// A broker message carrying exactly what `wire` does, as a node would
/// hold it at `now`.
fn to_message(wire: &WireMessage, now: Instant) -> Message {
    let frame = publish_frame(wire.clone());
    let ArchivedClusterMsg::Publish { messages, .. } = frame.access().unwrap() else {
        unreachable!();
    };
    wire_to_message(&frame.bytes, &messages[0], now).unwrap()
}

proptest! {
    #[test]
    fn any_msg_round_trips(msg in cluster_msg(), chunks in vec(1usize..64, 1..8)) {
        let bytes = encoded(&msg);
        let frames = read_all(&bytes, &chunks);
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(frames[0].bytes.len() + LEN_PREFIX, bytes.len());
        prop_assert_eq!(frames[0].to_owned_msg().unwrap(), msg);
    }

    /// wire → Message → wire is the identity (same `now`), so nothing a
    /// subscriber can see is lost on the way.
    #[test]
    fn any_wire_message_survives_conversion(wire in wire_message()) {
        let now = Instant::now();
        let message = to_message(&wire, now);
        prop_assert_eq!(message_to_wire(&message, now), wire);
    }

    /// The borrowed encoders write byte for byte what the owned one writes,
    /// which is what makes `ClusterMsgRef`'s hand-kept tags trustworthy.
    #[test]
    fn borrowed_encoders_write_the_owned_bytes(
        wires in vec(wire_message(), 0..4),
        stream: u32,
        first_seq: u64,
        hlc: u64,
        origin in "\\PC{0,12}",
    ) {
        let now = Instant::now();
        let messages: Vec<Arc<Message>> =
            wires.iter().map(|w| Arc::new(to_message(w, now))).collect();
        let mut borrowed = BytesMut::new();
        encode_publish(stream, first_seq, &messages, now, &mut borrowed).unwrap();
        let owned = encoded(&ClusterMsg::Publish {
            stream,
            first_seq,
            messages: messages.iter().map(|m| message_to_wire(m, now)).collect(),
        });
        prop_assert_eq!(&borrowed[..], &owned[..]);

        if let Some(message) = messages.first() {
            let mut borrowed = BytesMut::new();
            encode_retain(hlc, &origin, message, now, &mut borrowed).unwrap();
            let owned = encoded(&ClusterMsg::Retain {
                hlc,
                origin: origin.clone(),
                message: message_to_wire(message, now),
            });
            prop_assert_eq!(&borrowed[..], &owned[..]);

            let mut borrowed = BytesMut::new();
            encode_shared_publish(stream, hlc, &origin, message, now, &mut borrowed).unwrap();
            let owned = encoded(&ClusterMsg::SharedPublish {
                stream,
                seq: hlc,
                share: origin.clone(),
                message: message_to_wire(message, now),
            });
            prop_assert_eq!(&borrowed[..], &owned[..]);
        }
    }

    /// Whatever a peer sends, the reader and the conversions never panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let mut reader = FrameReader::new(1024);
        reader.push(&bytes);
        while let Ok(Some(frame)) = reader.next_frame() {
            if let Ok(ArchivedClusterMsg::Publish { messages, .. }) = frame.access() {
                for wire in messages.iter() {
                    let _ = wire_to_message(&frame.bytes, wire, Instant::now());
                }
            }
        }
    }
}

/// An older node reads a newer `Hello` to say which version it speaks
/// (see `PROTOCOL_VERSION`), and finds the root message at the end of the
/// archive, one `ArchivedClusterMsg` long: variants added later must not
/// make it longer than its largest (`SharedPublish`, `Retain`), or an
/// older node would read the hello at the wrong place.
#[test]
fn the_root_keeps_the_size_older_nodes_read_a_hello_at() {
    assert_eq!(std::mem::size_of::<ArchivedClusterMsg>(), 120);
}
