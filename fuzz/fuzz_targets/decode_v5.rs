//! MQTT 5 decoding of a byte stream as a connection would read it. See
//! `decode_stream`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmq::protocol::ProtocolVersion;

fuzz_target!(|data: &[u8]| {
    ringmq_fuzz::decode_stream(data, ProtocolVersion::V5);
});
