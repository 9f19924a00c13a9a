//! Topic name and filter validation, `matches`, and the subscription trie's
//! agreement with `matches`. See `topics`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringmq_fuzz::topics(&ringmq_fuzz::topic_lines(data));
});
