//! Replays the committed corpus through the targets' checks on a stable
//! toolchain without libFuzzer: `cargo test --manifest-path fuzz/Cargo.toml`.

use std::fs;
use std::path::Path;

use ringmq::protocol::ProtocolVersion;

fn replay(target: &str, check: impl Fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut count = 0;
    for entry in fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.expect("corpus entry").path();
        let data = fs::read(&path).expect("corpus file");
        eprintln!("{}", path.display());
        check(&data);
        count += 1;
    }
    assert!(count > 0, "no corpus in {}", dir.display());
}

#[test]
fn decode_v4_corpus() {
    replay("decode_v4", |data| {
        if let Some((version, stream)) = ringmq_fuzz::split_v4_input(data) {
            ringmq_fuzz::decode_stream(stream, version);
        }
    });
}

#[test]
fn decode_v5_corpus() {
    replay("decode_v5", |data| {
        ringmq_fuzz::decode_stream(data, ProtocolVersion::V5)
    });
}

#[test]
fn topic_corpus() {
    replay("topic", |data| {
        ringmq_fuzz::topics(&ringmq_fuzz::topic_lines(data))
    });
}

#[test]
fn cluster_frame_corpus() {
    replay("cluster_frame", |data| {
        if let Some((chunk, stream)) = ringmq_fuzz::split_cluster_input(data) {
            ringmq_fuzz::cluster_frames(stream, chunk);
        }
    });
}

#[test]
fn tls_server_corpus() {
    replay("tls_server", |data| {
        if let Some((cut, wire)) = ringmq_fuzz::split_tls_input(data) {
            ringmq_fuzz::tls_server(wire, cut);
        }
    });
}
