//! The `blk_request` fuzz target: see `vmkit_fuzz::blk`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmkit_fuzz::blk::run(data));
