//! MQTT 3.1 and 3.1.1 decoding: the first byte picks the level, the rest is
//! a byte stream as a connection would read it. See `decode_stream`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((version, stream)) = ringmq_fuzz::split_v4_input(data) {
        ringmq_fuzz::decode_stream(stream, version);
    }
});
