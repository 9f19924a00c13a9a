//! Micro-benchmarks of the broker's core data paths, measured apart from
//! sockets: the codec on a PUBLISH, the subscription trie with a million
//! filters, and the retained store with a million topics.
//!
//! `cargo bench -p ringmq-bench --bench micro`; `RINGMQ_BENCH_SCALE` sets the
//! number of filters and retained topics (default 1,000,000; 10,000 when
//! `cargo test` runs each benchmark once to check that it works).

use std::hint::black_box;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use ringmq::message::Message;
use ringmq::protocol::{
    self, LazyPublishProperties, Packet, ProtocolVersion, Publish, PublishProperties, QoS,
};
use ringmq::router::{RetainedStore, TopicTrie};

fn scale() -> usize {
    let smoke_test = std::env::args().any(|arg| arg == "--test");
    std::env::var("RINGMQ_BENCH_SCALE")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(if smoke_test { 10_000 } else { 1_000_000 })
}

/// `site{s}/dev{d}/{metric}`: a realistic three-level telemetry layout in
/// which selective wildcards (`site7/+/temp`) match a small fraction.
fn telemetry_topic(n: usize) -> String {
    const METRICS: [&str; 10] = [
        "temp", "hum", "co2", "pm25", "volt", "amp", "rssi", "door", "motion", "lux",
    ];
    format!(
        "site{}/dev{}/{}",
        n / 10_000,
        (n / 10) % 1_000,
        METRICS[n % 10]
    )
}

fn publish(version: ProtocolVersion) -> Packet {
    let properties = if version.is_v5() {
        PublishProperties {
            content_type: Some(ByteString::from_static("application/json")),
            user_properties: vec![(
                ByteString::from_static("trace"),
                ByteString::from_static("abc"),
            )],
            ..PublishProperties::default()
        }
        .into()
    } else {
        LazyPublishProperties::default()
    };
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: ByteString::from_static("site7/dev123/temp"),
        packet_id: 42,
        properties,
        payload: Bytes::from(vec![b'x'; 256]),
    })
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec_publish_256b");
    for (name, version) in [("v4", ProtocolVersion::V3_1_1), ("v5", ProtocolVersion::V5)] {
        let packet = publish(version);
        let mut encoded = BytesMut::new();
        packet.write(version, &mut encoded).expect("encodes");
        let encoded = encoded.freeze();
        group.bench_function(BenchmarkId::new("decode", name), |b| {
            // The copy into a fresh read buffer is setup, not decoding.
            b.iter_batched_ref(
                || BytesMut::from(&encoded[..]),
                |buf| black_box(protocol::read(buf, version, 1 << 20).expect("decodes")),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            let mut buf = BytesMut::with_capacity(1024);
            b.iter(|| {
                buf.clear();
                black_box(packet.write(version, &mut buf).expect("encodes"))
            })
        });
    }
    group.finish();
}

fn trie(c: &mut Criterion) {
    let n = scale();
    let mut exact: TopicTrie<u32> = TopicTrie::new();
    for i in 0..n {
        exact.insert(&telemetry_topic(i), i as u32);
    }
    // Wildcard-heavy: every device subscribes to its own `+` and `#`
    // filters, so a topic meets many wildcard branches on its way down.
    let mut wildcard: TopicTrie<u32> = TopicTrie::new();
    for i in 0..n {
        let filter = match i % 4 {
            0 => format!("site{}/+/{}", i % 100, i),
            1 => format!("site{}/dev{}/#", i % 100, i),
            2 => format!("+/dev{}/{}", i % 1_000, i),
            _ => telemetry_topic(i),
        };
        wildcard.insert(&filter, i as u32);
    }
    let mut group = c.benchmark_group(format!("trie_match_{n}_filters"));
    let topic = telemetry_topic(n / 2);
    group.bench_function("exact", |b| {
        b.iter(|| {
            let mut hits = 0;
            exact.for_each_match(black_box(&topic), |_| hits += 1);
            hits
        })
    });
    group.bench_function("wildcard_heavy", |b| {
        b.iter(|| {
            let mut hits = 0;
            wildcard.for_each_match(black_box(&topic), |_| hits += 1);
            hits
        })
    });
    group.finish();
}

fn retained(c: &mut Criterion) {
    let n = scale();
    let mut store = RetainedStore::new();
    let payload = Bytes::from_static(b"21.5");
    for i in 0..n {
        store.apply(Arc::new(Message {
            topic: ByteString::from(telemetry_topic(i)),
            payload: payload.clone(),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: LazyPublishProperties::default(),
            publisher: ByteString::from_static("bench"),
            expires_at: None,
            received_at: std::time::Instant::now(),
        }));
    }
    let mut group = c.benchmark_group(format!("retained_match_{n}_topics"));
    group.sample_size(10);
    for filter in ["#", "site7/+/temp", "+/dev5/temp", "site7/dev5/temp"] {
        group.bench_function(filter, |b| {
            b.iter(|| {
                let mut hits = 0usize;
                store.for_each_match(black_box(filter), |_| hits += 1);
                hits
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec, trie, retained);
criterion_main!(benches);
