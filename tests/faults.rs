//! Disk faults reach the guest: a disk that fills up in the middle of a
//! write, and a disk whose flush fails with EIO, answer the guest's
//! request with VIRTIO_BLK_S_IOERR; the VMM stays up, later requests are
//! served, it exits with the guest's failure count, and a qcow2 image is
//! left clean by `qemu-img check` (leaked clusters allowed, never
//! corruption).
//!
//! The faults are real, at the file layer: images on a small tmpfs this
//! test mounts (ENOSPC on write), and images on a loop device whose backing
//! file sits on such a tmpfs (the page cache takes the writes; writeback
//! then fails, and `fdatasync` returns EIO). Device-mapper's `error` and
//! `flakey` targets would be the usual tools, but this kernel has no
//! device-mapper.
//!
//! Needs root (mount, losetup) and `/dev/kvm`: fails, not skips, when
//! `/dev/kvm` exists.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Run, kvm_present, run_vmm, scratch_dir};

const SECTOR: usize = 512;
/// The guest's fills: a small one that must work (it allocates the start
/// of the disk), one far larger than the file system (it must fail with
/// IOERR), and the small one again with another byte: served normally
/// after the failure, on space already allocated.
const FILLS: &str = "vmkit.fill=0:0:8:cd vmkit.fill=0:64:40000:ab vmkit.fill=0:0:8:ef";
/// The disks' virtual size, 8 times the file system's.
const DISK_SIZE: u64 = 64 << 20;

/// Runs a command that must succeed; returns its stdout.
fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img check`'s exit code (0 clean, 3 leaks only, 2 corruption)
/// and output.
fn qemu_check(img: &str) -> (i32, String) {
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2", img])
        .output()
        .expect("qemu-img");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A tmpfs of `size` mounted for the test; unmounted when dropped, also
/// when the test fails.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(name: &str, size: &str) -> Self {
        let dir = scratch_dir(name).join("mnt");
        std::fs::create_dir_all(&dir).unwrap();
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "vmkit-faults",
                dir.to_str().unwrap(),
            ],
        );
        Tmpfs { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let dir = self.dir.to_str().unwrap();
        let ok = Command::new("umount")
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something (a VMM a failed assertion left behind) still has
            // a file open: detach now, freed when it closes.
            let _ = Command::new("umount").args(["-l", dir]).status();
        }
    }
}

/// A loop device over `file`; detached when dropped.
struct Loop {
    dev: String,
}

impl Loop {
    fn attach(file: &str) -> Self {
        let dev = sh("losetup", &["-f", "--show", file]).trim().to_owned();
        Loop { dev }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

fn fail_lines(run: &Run) -> Vec<&str> {
    run.stdout
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .collect()
}

/// What every faulty run must show: the guest saw `failed` failures
/// (its fills got IOERR, as `expect_fail` says), everything else passed,
/// the VMM neither panicked nor hung and exited with the failure count,
/// and the last, small fill after the fault was served as `last_fill_ok`
/// says.
fn assert_guest_saw_ioerr(run: &Run, expect_fail: &[&str]) {
    assert!(!run.stderr.contains("panicked"), "{run}");
    let fails = fail_lines(run);
    assert_eq!(fails.len(), expect_fail.len(), "{run}");
    for (line, want) in fails.iter().zip(expect_fail) {
        assert!(line.starts_with(want), "{line:?} is not {want:?}:\n{run}");
        assert!(line.ends_with(": status IOERR"), "{line:?}:\n{run}");
    }
    let summary = run
        .stdout
        .lines()
        .find(|l| l.starts_with("guest: "))
        .unwrap_or_else(|| panic!("no summary line:\n{run}"));
    assert!(
        summary.ends_with(&format!(" passed, {} failed", expect_fail.len())),
        "{run}"
    );
    assert_eq!(run.code, Some(expect_fail.len() as i32), "{run}");
    // Before the fault, the small fill worked.
    assert!(
        run.stdout
            .contains("ok blk-fill: disk0 sectors 0..8 = 0xcd\n"),
        "{run}"
    );
}

#[test]
fn a_full_disk_gives_the_guest_ioerr_and_leaves_qcow2_clean() {
    if !kvm_present() {
        return;
    }
    let fs = Tmpfs::mount("faults-qcow2", "8m");
    let img = fs.path("disk.qcow2");
    sh(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", &img, &DISK_SIZE.to_string()],
    );
    let run = run_vmm(&[
        "-m",
        "128",
        "--disk",
        &format!("{img},format=qcow2"),
        "--cmdline",
        FILLS,
    ]);
    assert_guest_saw_ioerr(&run, &["FAIL blk-fill: disk0: OUT of "]);
    // After ENOSPC the device serves requests that need no new space.
    assert!(
        run.stdout
            .contains("ok blk-fill: disk0 sectors 0..8 = 0xef\n"),
        "{run}"
    );
    let (code, out) = qemu_check(&img);
    assert!(code == 0 || code == 3, "qemu-img check exit {code}: {out}");
    // QEMU reads what the guest wrote last.
    let io = sh(
        "qemu-io",
        &["-r", "-f", "qcow2", "-c", "read -P 0xef 0 4k", &img],
    );
    assert!(!io.contains("verification failed"), "{io}");
}

#[test]
fn a_full_disk_gives_the_guest_ioerr_on_a_raw_image() {
    if !kvm_present() {
        return;
    }
    let fs = Tmpfs::mount("faults-raw", "8m");
    let img = fs.path("disk.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(DISK_SIZE)
        .unwrap();
    let run = run_vmm(&["-m", "128", "--disk", &img, "--cmdline", FILLS]);
    assert_guest_saw_ioerr(&run, &["FAIL blk-fill: disk0: OUT of "]);
    assert!(
        run.stdout
            .contains("ok blk-fill: disk0 sectors 0..8 = 0xef\n"),
        "{run}"
    );
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(bytes.len() as u64, DISK_SIZE);
    assert!(bytes[..8 * SECTOR].iter().all(|&b| b == 0xef));
    // Nothing landed outside the fill ranges.
    let big_end = (64 + 40000) * SECTOR;
    assert!(bytes[8 * SECTOR..64 * SECTOR].iter().all(|&b| b == 0));
    assert!(bytes[big_end..].iter().all(|&b| b == 0));
}

/// A file system that takes writes into the page cache and fails them at
/// writeback: a loop device over a sparse file on a tmpfs an eighth its
/// size.
fn failing_device(name: &str) -> (Tmpfs, Loop) {
    let fs = Tmpfs::mount(name, "8m");
    let back = fs.path("backing");
    std::fs::File::create(&back)
        .unwrap()
        .set_len(DISK_SIZE)
        .unwrap();
    let dev = Loop::attach(&back);
    (fs, dev)
}

#[test]
fn a_flush_that_fails_with_eio_gives_the_guest_ioerr_and_every_later_flush_too() {
    if !kvm_present() {
        return;
    }
    let (_fs, dev) = failing_device("faults-eio-raw");
    let run = run_vmm(&[
        "-m",
        "128",
        "--disk",
        &format!("{},format=raw", dev.dev),
        "--cmdline",
        FILLS,
    ]);
    // The large fill's writes land in the page cache; its flush fails.
    // The small fill after it writes where the backing file has space,
    // but its flush must fail too: the data of the first fill is gone
    // from the page cache, and a flush that then succeeded would tell the
    // guest it is durable (QEMU's file-posix makes the error sticky too).
    assert_guest_saw_ioerr(
        &run,
        &[
            "FAIL blk-fill: disk0: FLUSH: ",
            "FAIL blk-fill: disk0: FLUSH: ",
        ],
    );
    // The VMM's own flush at exit says why.
    assert!(run.stderr.contains("Input/output error"), "{run}");
}

#[test]
fn a_flush_that_fails_with_eio_leaves_qcow2_on_a_block_device_clean() {
    if !kvm_present() {
        return;
    }
    let (fs, dev) = failing_device("faults-eio-qcow2");
    sh(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            &dev.dev,
            &DISK_SIZE.to_string(),
        ],
    );
    let run = run_vmm(&[
        "-m",
        "128",
        "--disk",
        &format!("{},format=qcow2", dev.dev),
        "--cmdline",
        FILLS,
    ]);
    assert_guest_saw_ioerr(
        &run,
        &[
            "FAIL blk-fill: disk0: FLUSH: ",
            "FAIL blk-fill: disk0: FLUSH: ",
        ],
    );
    let (code, out) = qemu_check(&dev.dev);
    assert!(code == 0 || code == 3, "qemu-img check exit {code}: {out}");
    // And what really reached the backing file, past the page cache: the
    // L2 tables that would have pointed at lost data were never written,
    // as they are ordered after a sync that failed.
    drop(dev);
    let (code, out) = qemu_check(&fs.path("backing"));
    assert!(
        code == 0 || code == 3,
        "qemu-img check of the backing file: exit {code}: {out}"
    );
}
