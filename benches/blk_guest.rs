//! End-to-end virtio-blk bench: 4 KiB reads issued by the minimal guest under
//! KVM through our virtio-mmio transport and virtio-blk device, at queue
//! depth 1 and 32, beside `qemu-img bench` doing the same reads on the same
//! image from the host (no VM: the bare baseline) in the same run.
//!
//! ```text
//! cargo bench --bench blk_guest
//! ```
//!
//! The guest times each depth for about a second (TSC calibrated against
//! the PIT) and counts the queue notifications it sent and the interrupts it
//! took; the VMM's `--stats` line gives the device's own counts.

use std::path::{Path, PathBuf};
use std::process::Command;

const IMAGE_MIB: u64 = 256;

fn main() {
    if !Path::new("/dev/kvm").exists() {
        println!("blk_guest bench skipped: /dev/kvm does not exist");
        return;
    }
    let vmm = build_vmm();
    let image = std::env::temp_dir().join(format!("vmkit-blk-bench-{}.raw", std::process::id()));
    // A fully written image (not sparse), so reads find data, in the page cache.
    let status = Command::new("dd")
        .args([
            "if=/dev/urandom",
            &format!("of={}", image.display()),
            "bs=1M",
        ])
        .arg(format!("count={IMAGE_MIB}"))
        .arg("status=none")
        .status()
        .expect("run dd");
    assert!(status.success());

    let out = Command::new(&vmm)
        .args([
            "-m",
            "256",
            "--stats",
            "--cmdline",
            "vmkit.blk-bench=0",
            "--disk",
        ])
        .arg(&image)
        .output()
        .expect("run the vmm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vmm failed:\n{stdout}\n{stderr}");

    println!(
        "{:<34} {:>12} {:>12} {:>10}",
        "4 KiB reads", "guest IOPS", "host IOPS", "guest/host"
    );
    for depth in [1u32, 32] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("bench blk-read-4k qd={depth} ")))
            .unwrap_or_else(|| panic!("no qd={depth} bench line in:\n{stdout}"));
        let guest_iops = field(line, "iops=");
        let host_iops = qemu_img_bench(&image, depth);
        println!(
            "{:<34} {:>12.0} {:>12.0} {:>9.2}x   ({} notifications/req, {} interrupts/req)",
            format!("queue depth {depth}"),
            guest_iops,
            host_iops,
            guest_iops / host_iops,
            field_str(line, "notifications/req="),
            field_str(line, "interrupts/req="),
        );
    }
    if let Some(stats) = stderr.lines().find(|l| l.contains("disk0:")) {
        println!("device side: {}", stats.trim_start_matches("vmm: "));
    }
    let _ = std::fs::remove_file(&image);
}

fn field_str<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

fn field(line: &str, key: &str) -> f64 {
    field_str(line, key).parse().expect("a number")
}

/// `qemu-img bench` reading 4 KiB at `depth` with a large odd step, as
/// the guest does; returns requests per second.
fn qemu_img_bench(image: &Path, depth: u32) -> f64 {
    let count: u64 = if depth == 1 { 100_000 } else { 400_000 };
    // 4 KiB * an odd number of blocks, below the image size.
    let step = 4096 * 12_345;
    // Buffered, like our raw image: both read from the host page cache.
    let out = Command::new("qemu-img")
        .args(["bench", "-f", "raw", "-t", "writeback"])
        .args([
            "-c",
            &count.to_string(),
            "-d",
            &depth.to_string(),
            "-s",
            "4096",
        ])
        .args(["-S", &step.to_string()])
        .arg(image)
        .output()
        .expect("run qemu-img bench");
    assert!(out.status.success(), "qemu-img bench failed: {:?}", out);
    let text = String::from_utf8_lossy(&out.stdout);
    // "Run completed in 1.234 seconds."
    let secs: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Run completed in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected qemu-img bench output: {text}"));
    count as f64 / secs
}

fn build_vmm() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--example", "vmm"])
        .current_dir(root)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the vmm example failed");
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("release/examples/vmm")
}
