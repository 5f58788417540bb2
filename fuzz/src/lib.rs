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

/// With `VMKIT_FUZZ_TRACE` set, the crates' log lines go to stderr (for
/// replaying an input; libFuzzer runs stay quiet).
pub fn trace_logs() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            eprintln!("{}: {}", record.level(), record.args());
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    if std::env::var_os("VMKIT_FUZZ_TRACE").is_some() && log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
}
