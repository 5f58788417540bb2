//! virtio-blk end to end: the example VMM gives the minimal guest raw disk
//! images over virtio-mmio; the guest reads, checksums and writes them
//! through its virtqueue under the real KVM, and the host checks the files.
//!
//! These tests need `/dev/kvm`: they fail, not skip, when it exists.

mod common;

use std::path::Path;

use common::{Run, kvm_present, run_vmm, scratch_dir};

const SECTOR: usize = 512;

/// Deterministic pseudo-random bytes (xorshift), so a failure reproduces.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn crc32(data: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(data))
}

fn write_disk(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

fn assert_all_ok(run: &Run) {
    assert_eq!(run.code, Some(0), "vmm failed:\n{run}");
    assert!(!run.stdout.contains("FAIL"), "a guest check failed:\n{run}");
    assert!(run.stdout.contains(" passed, 0 failed"), "{run}");
}

fn line<'a>(run: &'a Run, prefix: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}:\n{run}"))
}

#[test]
fn guest_reads_a_raw_disk_and_its_crc_matches_the_host() {
    if !kvm_present() {
        return;
    }
    let dir = scratch_dir("blk-read");
    let bytes = random_bytes(4 << 20, 1);
    let disk = write_disk(&dir, "random.raw", &bytes);
    let run = run_vmm(&["-m", "128", "--disk", &disk]);
    assert_all_ok(&run);
    assert_eq!(
        line(&run, "ok blk-read: disk0 "),
        format!(
            "ok blk-read: disk0 sectors={} crc32={}",
            bytes.len() / SECTOR,
            crc32(&bytes[..1 << 20])
        )
    );
    for check in [
        "ok blk-init: disk0 ",
        "ok blk-get-id: disk0 ",
        "ok blk-flush: disk0",
        "ok blk-irq: disk0 ",
    ] {
        line(&run, check);
    }
    // Reading changes nothing.
    assert!(std::fs::read(&disk).unwrap() == bytes, "the disk changed");
}

#[test]
fn a_disk_smaller_than_a_mib_is_checksummed_whole_and_two_disks_are_told_apart() {
    if !kvm_present() {
        return;
    }
    let dir = scratch_dir("blk-small");
    let small = random_bytes(64 << 10, 2);
    let other = random_bytes(2 << 20, 3);
    let a = write_disk(&dir, "small.raw", &small);
    let b = write_disk(&dir, "other.raw", &other);
    let run = run_vmm(&[
        "-m",
        "128",
        "--disk",
        &a,
        "--disk",
        &format!("{b},format=raw"),
    ]);
    assert_all_ok(&run);
    assert_eq!(
        line(&run, "ok blk-read: disk0 "),
        format!("ok blk-read: disk0 sectors=128 crc32={}", crc32(&small))
    );
    assert_eq!(
        line(&run, "ok blk-read: disk1 "),
        format!(
            "ok blk-read: disk1 sectors=4096 crc32={}",
            crc32(&other[..1 << 20])
        )
    );
}

#[test]
fn fill_changes_exactly_the_named_sectors() {
    if !kvm_present() {
        return;
    }
    let dir = scratch_dir("blk-fill");
    let bytes = random_bytes(4 << 20, 4);
    let disk = write_disk(&dir, "fill.raw", &bytes);
    let (first, count, byte) = (10usize, 37usize, 0xabu8);
    let run = run_vmm(&[
        "-m",
        "128",
        "--disk",
        &disk,
        "--cmdline",
        &format!("vmkit.fill=0:{first}:{count}:{byte:02x}"),
    ]);
    assert_all_ok(&run);
    line(&run, "ok blk-fill: disk0 ");
    // Write-zeroes and discard are offered for a writable raw image and
    // exercised inside the filled range, which is then filled again.
    line(&run, "ok blk-write-zeroes: disk0 ");
    line(&run, "ok blk-discard: disk0 ");
    line(&run, "ok blk-refill: disk0 ");
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(after.len(), bytes.len());
    let range = first * SECTOR..(first + count) * SECTOR;
    for (i, (&new, &old)) in after.iter().zip(&bytes).enumerate() {
        if range.contains(&i) {
            assert_eq!(new, byte, "byte {i} inside the filled sectors");
        } else {
            assert_eq!(new, old, "byte {i} outside the filled sectors changed");
        }
    }
}

#[test]
fn a_read_only_disk_refuses_writes_and_stays_unchanged() {
    if !kvm_present() {
        return;
    }
    let dir = scratch_dir("blk-ro");
    let bytes = random_bytes(1 << 20, 5);
    let disk = write_disk(&dir, "ro.raw", &bytes);
    let run = run_vmm(&[
        "-m",
        "128",
        "--disk",
        &format!("{disk},readonly=on"),
        // The guest must not fill a read-only disk; asking it to must not
        // get through either.
        "--cmdline",
        "vmkit.fill=0:0:8:5a",
    ]);
    assert_eq!(
        line(&run, "ok blk-readonly: disk0"),
        "ok blk-readonly: disk0 refused a write with IOERR"
    );
    line(&run, "ok blk-read: disk0 ");
    assert!(
        std::fs::read(&disk).unwrap() == bytes,
        "a read-only disk changed"
    );
}

#[test]
fn bad_disk_options_give_one_clear_error_line() {
    if !kvm_present() {
        return;
    }
    let dir = scratch_dir("blk-bad");
    let disk = write_disk(&dir, "ok.raw", &random_bytes(1 << 20, 6));
    for (spec, expect) in [
        ("/nonexistent/disk.raw".to_owned(), "/nonexistent/disk.raw"),
        (format!("{disk},format=vmdk"), "vmdk"),
        (format!("{disk},readonly=maybe"), "readonly"),
        (format!("{disk},colour=blue"), "colour"),
    ] {
        let run = run_vmm(&["--disk", &spec]);
        assert_ne!(run.code, Some(0), "{spec}: {run}");
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{spec}: expected one error line:\n{run}");
        assert!(lines[0].contains(expect), "{spec}: {:?}", lines[0]);
        assert!(!run.stderr.contains("panicked"), "{run}");
    }
}

/// Runs a host command (qemu-img) and returns its exit code.
fn run_tool(cmd: &str, args: &[&str]) -> i32 {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    if !out.status.success() {
        eprintln!(
            "{cmd} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.code().unwrap_or(-1)
}

fn qemu_img_present() -> bool {
    let present = std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok();
    if !present {
        eprintln!("skipped: qemu-img is not installed");
    }
    present
}

#[test]
fn guest_reads_and_fills_a_qcow2_disk_and_qemu_img_calls_it_clean() {
    if !kvm_present() || !qemu_img_present() {
        return;
    }
    let dir = scratch_dir("blk-qcow2");
    let bytes = random_bytes(4 << 20, 7);
    let raw = write_disk(&dir, "model.raw", &bytes);
    let qcow2 = dir.join("disk.qcow2");
    let qcow2 = qcow2.to_str().unwrap();
    assert_eq!(
        run_tool(
            "qemu-img",
            &["convert", "-f", "raw", "-O", "qcow2", &raw, qcow2]
        ),
        0
    );

    let (first, count, byte) = (100usize, 300usize, 0x5au8);
    let run = run_vmm(&[
        "-m",
        "128",
        "--disk",
        &format!("{qcow2},format=qcow2"),
        "--cmdline",
        &format!("vmkit.fill=0:{first}:{count}:{byte:02x}"),
    ]);
    assert_all_ok(&run);
    assert_eq!(
        line(&run, "ok blk-read: disk0 "),
        format!(
            "ok blk-read: disk0 sectors={} crc32={}",
            bytes.len() / SECTOR,
            crc32(&bytes[..1 << 20])
        )
    );
    line(&run, "ok blk-fill: disk0 ");
    line(&run, "ok blk-discard: disk0 ");
    assert_eq!(run_tool("qemu-img", &["check", qcow2]), 0, "qemu-img check");
    // The image now holds the model with the fill applied, byte for byte.
    let mut model = bytes.clone();
    model[first * SECTOR..(first + count) * SECTOR].fill(byte);
    std::fs::write(&raw, &model).unwrap();
    assert_eq!(
        run_tool(
            "qemu-img",
            &["compare", "-f", "raw", "-F", "qcow2", &raw, qcow2]
        ),
        0
    );
}

#[test]
fn a_qcow2_overlay_reads_its_backing_file_only_when_asked_and_never_writes_it() {
    if !kvm_present() || !qemu_img_present() {
        return;
    }
    let dir = scratch_dir("blk-backing");
    let base_bytes = random_bytes(2 << 20, 8);
    let base = write_disk(&dir, "base.raw", &base_bytes);
    let overlay = dir.join("overlay.qcow2");
    let overlay = overlay.to_str().unwrap();
    assert_eq!(
        run_tool(
            "qemu-img",
            &["create", "-f", "qcow2", "-b", &base, "-F", "raw", overlay]
        ),
        0
    );
    // Without backing=on the image is refused, with one clear line.
    let run = run_vmm(&["--disk", &format!("{overlay},format=qcow2")]);
    assert_ne!(run.code, Some(0), "{run}");
    assert_eq!(run.stderr.lines().count(), 1, "{run}");
    assert!(run.stderr.contains("backing=on"), "{run}");

    let run = run_vmm(&[
        "-m",
        "128",
        "--disk",
        &format!("{overlay},format=qcow2,backing=on"),
        "--cmdline",
        "vmkit.fill=0:1:7:c3",
    ]);
    assert_all_ok(&run);
    assert_eq!(
        line(&run, "ok blk-read: disk0 "),
        format!(
            "ok blk-read: disk0 sectors=4096 crc32={}",
            crc32(&base_bytes[..1 << 20])
        )
    );
    assert!(
        std::fs::read(&base).unwrap() == base_bytes,
        "the backing file changed"
    );
    assert_eq!(
        run_tool("qemu-img", &["check", overlay]),
        0,
        "qemu-img check"
    );
}
