//! The `mmio_transport` fuzz target: see `vmkit_fuzz::mmio`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmkit_fuzz::mmio::run(data));
