//! The `net_rx` fuzz target: see `vmkit_fuzz::net_rx`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmkit_fuzz::net_rx::run(data));
