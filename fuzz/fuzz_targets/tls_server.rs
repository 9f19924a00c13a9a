//! The TLS layer of client connections: bytes from a client, cut into
//! reads, through a server session. See `tls_server`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((cut, wire)) = ringmq_fuzz::split_tls_input(data) {
        ringmq_fuzz::tls_server(wire, cut);
    }
});
