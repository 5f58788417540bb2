//! Replays the committed seed corpora and every regression input through
//! the harnesses (without libFuzzer), so `cargo test` in `fuzz/` checks
//! that they still pass.

use std::fs;
use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let mut count = 0;
    for dir in ["corpus", "regressions"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(target);
        let Ok(entries) = fs::read_dir(&path) else {
            continue;
        };
        for entry in entries {
            let entry = entry.expect("corpus entry");
            let data = fs::read(entry.path()).expect("corpus file");
            run(&data);
            count += 1;
        }
    }
    eprintln!("{target}: {count} inputs replayed");
}

#[test]
fn mmio_transport() {
    replay("mmio_transport", vmkit_fuzz::mmio::run);
}

#[test]
fn blk_request() {
    replay("blk_request", vmkit_fuzz::blk::run);
}

#[test]
fn net_tx() {
    replay("net_tx", vmkit_fuzz::net_tx::run);
}

#[test]
fn net_rx() {
    replay("net_rx", vmkit_fuzz::net_rx::run);
}

#[test]
fn qcow2() {
    replay("qcow2", vmkit_fuzz::qcow2::run);
}

/// Replays the files named by `VMKIT_FUZZ_REPLAY` (`target:path,...`).
#[test]
fn replay_env() {
    let Ok(list) = std::env::var("VMKIT_FUZZ_REPLAY") else {
        return;
    };
    vmkit_fuzz::trace_logs();
    for item in list.split(',') {
        let (target, path) = item.split_once(':').expect("target:path");
        let data = fs::read(path).expect("input");
        let run: fn(&[u8]) = match target {
            "mmio_transport" => vmkit_fuzz::mmio::run,
            "blk_request" => vmkit_fuzz::blk::run,
            "net_tx" => vmkit_fuzz::net_tx::run,
            "net_rx" => vmkit_fuzz::net_rx::run,
            "qcow2" => vmkit_fuzz::qcow2::run,
            other => panic!("unknown target {other}"),
        };
        run(&data);
    }
}
