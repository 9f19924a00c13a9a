//! The properties the fuzz targets assert, kept out of the `fuzz_target!`
//! bodies so that `cargo test` here can replay the corpus and the crashes
//! found without libFuzzer.
//!
//! A failed property panics: libFuzzer (or the test) reports the panic and
//! the input that caused it.

mod cluster_frame;
mod tls_server;

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ringmq::message::Message;
use ringmq::protocol::topic::{matches, valid_topic_filter, valid_topic_name};
use ringmq::protocol::{
    DecodeError, EncodeError, LazyPublishProperties, Packet, ProtocolVersion, QoS, check, read,
};
use ringmq::router::{RetainedStore, TopicTrie};

pub use cluster_frame::{cluster_frames, split_cluster_input};
pub use tls_server::{split_tls_input, tls_server};

/// Picks the pre-v5 level from the first input byte, so one target covers
/// both MQTT 3.1 and 3.1.1. Returns the version and the stream to decode.
pub fn split_v4_input(data: &[u8]) -> Option<(ProtocolVersion, &[u8])> {
    let (&selector, stream) = data.split_first()?;
    let version = if selector & 1 == 0 {
        ProtocolVersion::V3_1_1
    } else {
        ProtocolVersion::V3_1
    };
    Some((version, stream))
}

/// Decodes `stream` as a connection would see it, packet after packet, at
/// `version`, and checks every packet that decodes:
///
/// - `check` and `read` agree on where the frame ends and on errors, the size
///   limit counts the whole frame, a `read` that needs more bytes leaves the
///   buffer alone, and no prefix of a frame that reads is an error;
/// - the packet re-encodes: a decoded packet carries no field longer than the
///   wire allows and no type the version lacks, so no `EncodeError` is
///   acceptable;
/// - the encoding is no longer than the frame it came from (the encoder
///   uses the shortest forms), so a forwarded packet never grows past a
///   maximum packet size the original met (one exception, AUTH, below);
/// - the encoding decodes, at a maximum size of exactly its length, to an
///   equal packet, consuming exactly the bytes written.
pub fn decode_stream(stream: &[u8], version: ProtocolVersion) {
    let max = usize::MAX;
    let mut buf = BytesMut::from(stream);
    loop {
        let before = buf.len();
        let header = match check(&buf, max) {
            Ok(header) => header,
            Err(error) => {
                // check is the first thing read does: both must refuse.
                let mut copy = buf.clone();
                assert_eq!(read(&mut copy, version, max), Err(error));
                return;
            }
        };
        match read(&mut buf, version, max) {
            Ok(Some(packet)) => {
                let header = header.expect("read decoded a packet check said was incomplete");
                let frame_len = header.frame_len();
                let frame = &stream[stream.len() - before..][..frame_len];
                // The limit counts the whole frame and is inclusive.
                assert_eq!(check(frame, frame_len), Ok(Some(header)));
                assert!(matches!(
                    check(frame, frame_len - 1),
                    Err(DecodeError::PacketTooLarge { size, .. }) if size == frame_len
                ));
                // Bytes arrive in any split: a prefix of a frame that reads
                // must only ever ask for more, never fail.
                for len in (0..header.header_len).chain([frame_len - 1]) {
                    let mut prefix = BytesMut::from(&frame[..len]);
                    assert_eq!(read(&mut prefix, version, max), Ok(None), "prefix {len}");
                    assert_eq!(prefix.len(), len);
                }
                assert_eq!(
                    before - buf.len(),
                    frame_len,
                    "read consumed other than one frame"
                );
                assert_eq!(header.packet_type, packet.packet_type());
                roundtrip(&packet, version, frame_len);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete read consumed bytes");
                if let Some(header) = header {
                    assert!(header.frame_len() > buf.len());
                }
                return;
            }
            Err(_) => {
                // The connection is closed: nothing after a bad packet is
                // ever read.
                return;
            }
        }
    }
}

/// Re-encodes a decoded packet and decodes it again.
pub fn roundtrip(packet: &Packet, version: ProtocolVersion, frame_len: usize) {
    let mut out = BytesMut::new();
    let written = match packet.write(version, &mut out) {
        Ok(written) => written,
        Err(error @ (EncodeError::FieldTooLong | EncodeError::PacketTooLarge { .. })) => {
            panic!("a decoded packet cannot be too long to encode: {error}: {packet:?}")
        }
        Err(error @ EncodeError::NotInVersion(_)) => {
            panic!("decoded at {version:?} a packet that version lacks: {error}: {packet:?}")
        }
    };
    assert_eq!(written, out.len(), "write reported a wrong length");
    // AUTH is read leniently in a reason-only form the spec does not have
    // (spec 3.15.2.1), so it is written one byte longer, with its property
    // length; AUTH is never forwarded, so no size limit cares.
    assert!(
        written <= frame_len || (written == frame_len + 1 && matches!(packet, Packet::Auth(_))),
        "re-encoding grew the packet from {frame_len} to {written} bytes: {packet:?}"
    );
    let encoded = out.clone();
    let decoded = match read(&mut out, version, written) {
        Ok(Some(decoded)) => decoded,
        other => panic!(
            "re-encoded packet does not decode: {other:?}\npacket: {packet:?}\nbytes: {:02x?}",
            &encoded[..]
        ),
    };
    assert!(out.is_empty(), "re-encoded packet left trailing bytes");
    assert_eq!(
        &decoded,
        packet,
        "round trip changed the packet; bytes: {:02x?}",
        &encoded[..]
    );
}

/// Lines of a `topic` input beyond this many are ignored.
pub const MAX_TOPIC_LINES: usize = 64;

/// Turns fuzz input into lines. An odd first byte maps every byte into a
/// tiny alphabet of the characters topic rules are about, so the fuzzer
/// spends its time on structure rather than on spelling; an even one keeps
/// the (lossily decoded) text as it is, for the validators' sake.
pub fn topic_lines(data: &[u8]) -> Vec<String> {
    let Some((&mode, rest)) = data.split_first() else {
        return Vec::new();
    };
    let text: String = if mode & 1 == 1 {
        const ALPHABET: [char; 8] = ['a', 'b', '/', '+', '#', '$', '\n', 'é'];
        rest.iter().map(|&b| ALPHABET[usize::from(b & 7)]).collect()
    } else {
        String::from_utf8_lossy(rest).into_owned()
    };
    // Every name is matched against every filter: a cap keeps an input's
    // cost bounded, so time goes to more inputs rather than longer ones.
    text.split('\n')
        .take(MAX_TOPIC_LINES)
        .map(str::to_owned)
        .collect()
}

/// Checks the topic rules on every line as name and as filter, then builds a
/// trie of the valid filters and checks, for every valid name, that the
/// trie's matches are exactly the filters `matches` accepts. Removing half
/// the filters must keep the two in step. Then the same for the retained
/// store: a filter must find exactly the valid names it `matches`.
pub fn topics(lines: &[String]) {
    let mut filters = BTreeSet::new();
    let mut names = BTreeSet::new();
    for line in lines {
        let is_name = valid_topic_name(line);
        let is_filter = valid_topic_filter(line);
        if is_name {
            // A name has no wildcards, so it is a filter matching itself.
            assert!(is_filter, "valid name {line:?} is not a valid filter");
            assert!(matches(line, line), "{line:?} does not match itself");
            names.insert(line.as_str());
        }
        if is_filter {
            filters.insert(line.as_str());
        }
    }

    let mut trie = TopicTrie::new();
    for filter in &filters {
        assert_eq!(trie.insert(filter, filter.to_string()), None);
    }
    assert_eq!(trie.len(), filters.len());
    for filter in &filters {
        assert_eq!(trie.get(filter).map(String::as_str), Some(*filter));
    }
    check_matches(&trie, &filters, &names);
    retained(&filters, names.clone());

    let removed: Vec<&str> = filters.iter().copied().step_by(2).collect();
    for filter in &removed {
        assert_eq!(trie.remove(filter).as_deref(), Some(*filter));
        assert_eq!(trie.remove(filter), None);
        filters.remove(filter);
        assert_eq!(trie.get(filter), None);
    }
    assert_eq!(trie.len(), filters.len());
    check_matches(&trie, &filters, &names);
}

/// The retained store walks the other way round, a filter's levels over a
/// trie of topic names; it must agree with `matches` too, also after empty
/// payloads delete half the topics.
fn retained(filters: &BTreeSet<&str>, mut names: BTreeSet<&str>) {
    let now = std::time::Instant::now();
    let message = |topic: &str, payload: &'static [u8]| {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from_static(payload),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: LazyPublishProperties::default(),
            publisher: "fuzz".into(),
            expires_at: None,
            received_at: now,
        })
    };
    let mut store = RetainedStore::new();
    for name in &names {
        store.apply(message(name, b"retained"));
    }
    assert_eq!(store.len(), names.len());
    check_retained(&store, filters, &names);

    let deleted: Vec<&str> = names.iter().copied().step_by(2).collect();
    for name in deleted {
        store.apply(message(name, b""));
        names.remove(name);
    }
    assert_eq!(store.len(), names.len());
    check_retained(&store, filters, &names);
}

fn check_retained(store: &RetainedStore, filters: &BTreeSet<&str>, names: &BTreeSet<&str>) {
    for filter in filters {
        let mut from_store = Vec::new();
        store.for_each_match(filter, |message| from_store.push(message.topic.to_string()));
        let count = from_store.len();
        let from_store: BTreeSet<String> = from_store.into_iter().collect();
        assert_eq!(
            count,
            from_store.len(),
            "retained store visited a topic twice"
        );
        let expected: BTreeSet<String> = names
            .iter()
            .filter(|name| matches(filter, name))
            .map(|name| name.to_string())
            .collect();
        assert_eq!(
            from_store, expected,
            "retained store and matches disagree on {filter:?}"
        );
    }
}

fn check_matches(trie: &TopicTrie<String>, filters: &BTreeSet<&str>, names: &BTreeSet<&str>) {
    for name in names {
        let mut from_trie = Vec::new();
        trie.for_each_match(name, |filter| from_trie.push(filter.clone()));
        let count = from_trie.len();
        let from_trie: BTreeSet<String> = from_trie.into_iter().collect();
        assert_eq!(count, from_trie.len(), "trie reported a filter twice");
        let expected: BTreeSet<String> = filters
            .iter()
            .filter(|filter| matches(filter, name))
            .map(|filter| filter.to_string())
            .collect();
        assert_eq!(from_trie, expected, "trie and matches disagree on {name:?}");
        if !name.starts_with('$') {
            assert!(matches("#", name));
        }
    }
}
