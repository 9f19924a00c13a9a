//! The frames between cluster nodes: a byte stream cut into frames,
//! validated, converted to broker messages and re-encoded. See
//! `cluster_frames`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((chunk, stream)) = ringmq_fuzz::split_cluster_input(data) {
        ringmq_fuzz::cluster_frames(stream, chunk);
    }
});
