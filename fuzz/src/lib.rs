//! The harnesses behind vmkit's fuzz targets. Each module has a `run`
//! function taking the fuzzer's bytes; `fuzz_targets/*.rs` are one-line
//! wrappers, so the same code runs under libFuzzer and in `cargo test` (the
//! seed corpora are replayed by `tests/corpus.rs`).
//!
//! The harnesses assert the invariants that matter for a hostile guest or
//! a hostile image, not only the absence of panics: see each module.

pub mod blk;
pub mod guest;
pub mod mmio;
pub mod net_rx;
pub mod net_tx;
pub mod qcow2;
