//! The `net_tx` fuzz target: see `vmkit_fuzz::net_tx`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmkit_fuzz::net_tx::run(data));
