//! The `qcow2` fuzz target: see `vmkit_fuzz::qcow2`.
#![no_main]

/// Counts live heap bytes, for the harness's memory bound.
#[global_allocator]
static ALLOC: vmkit_fuzz::qcow2::CountingAlloc = vmkit_fuzz::qcow2::CountingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmkit_fuzz::qcow2::run(data));
