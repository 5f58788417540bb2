//! Shared helpers of the qcow2 integration tests: QEMU as the oracle, a
//! deterministic random generator, and a raw model of the disk.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vm_memory::VolatileSlice;
use vmkit_disk::DiskImage;
use vmm_sys_util::tempdir::TempDir;

/// Runs the tests of one binary one at a time: a child process that one
/// test's thread spawns inherits, until it execs, the image descriptors
/// another test has open, and with them their locks, which would make
/// QEMU (or us) see the image as in use.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether qemu-img and qemu-io are installed; prints why a test skips.
pub fn have_qemu(test: &str) -> bool {
    let ok = ["qemu-img", "qemu-io"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        println!("skipped {test}: qemu-img/qemu-io not installed");
    }
    ok
}

pub fn tempdir() -> TempDir {
    TempDir::new_with_prefix("/tmp/vmkit-qcow2-test").unwrap()
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap()
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn qemu_io(img: &Path, fmt: &str, cmds: &[String]) {
    let mut args = vec!["-f".to_string(), fmt.to_string()];
    for c in cmds {
        args.push("-c".into());
        args.push(c.clone());
    }
    args.push(img.display().to_string());
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let out = ok("qemu-io", &a);
    assert!(
        !out.contains("Pattern verification failed") && !out.contains("error"),
        "qemu-io {a:?}: {out}"
    );
}

/// `qemu-img check`'s exit code and output.
pub fn qemu_check(img: &Path) -> (i32, String) {
    let out = run(
        "qemu-img",
        &["check", "-f", "qcow2", &img.display().to_string()],
    );
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub fn assert_clean(img: &Path) {
    let (code, out) = qemu_check(img);
    assert_eq!(code, 0, "qemu-img check {}: {out}", img.display());
}

/// Writes `model` to a raw file and has `qemu-img compare` compare it with
/// the qcow2 image (through its backing chain).
pub fn assert_same_as_model(img: &Path, model: &[u8], dir: &Path) {
    let raw = dir.join("model.raw");
    std::fs::write(&raw, model).unwrap();
    let out = run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            &raw.display().to_string(),
            &img.display().to_string(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "qemu-img compare {}: {}{}",
        img.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What QEMU reads from the image: `qemu-img convert -O raw`.
pub fn qemu_contents(img: &Path, dir: &Path) -> Vec<u8> {
    let raw = dir.join("qemu-view.raw");
    ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            &img.display().to_string(),
            &raw.display().to_string(),
        ],
    );
    std::fs::read(raw).unwrap()
}

/// xorshift64*: deterministic and dependency-free.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

pub fn read_all(disk: &dyn DiskImage) -> Vec<u8> {
    let mut buf = vec![0u8; disk.size() as usize];
    disk.read_at(&mut VolatileSlice::from(&mut buf[..]), 0)
        .unwrap();
    buf
}

pub fn write(disk: &dyn DiskImage, model: &mut [u8], off: u64, data: &mut [u8]) {
    disk.write_at(&VolatileSlice::from(&mut data[..]), off)
        .unwrap();
    model[off as usize..off as usize + data.len()].copy_from_slice(data);
}

/// What a discard does to the model: whole clusters read as zeros
/// (`backing_shows`: a version 2 image with a backing file shows the
/// backing file's data, given in `base`).
pub fn model_discard(model: &mut [u8], off: u64, len: u64, cs: u64, base: Option<&[u8]>) {
    let start = off.div_ceil(cs) * cs;
    let end = (off + len) / cs * cs;
    if start >= end {
        return;
    }
    let (s, e) = (start as usize, end as usize);
    match base {
        Some(b) => model[s..e].copy_from_slice(&b[s..e]),
        None => model[s..e].fill(0),
    }
}

/// Random writes (partial clusters, overwrites), discards and
/// write-zeroes, on the disk and the model alike.
pub fn random_ops(
    disk: &dyn DiskImage,
    model: &mut [u8],
    rng: &mut Rng,
    n: usize,
    cs: u64,
    discard_base: Option<&[u8]>,
) {
    let size = disk.size();
    let sectors = size / 512;
    for i in 0..n {
        let op = rng.below(10);
        let max_len = (3 * cs).clamp(4096, 1 << 20) / 512;
        let len = (1 + rng.below(max_len)).min(sectors) * 512;
        let off = rng.below(sectors - len / 512 + 1) * 512;
        match op {
            0..=5 => {
                let seed = rng.next_u64() as u8;
                let mut data: Vec<u8> = (0..len)
                    .map(|j| (j as u8).wrapping_mul(13).wrapping_add(seed) | 1)
                    .collect();
                write(disk, model, off, &mut data);
            }
            6 | 7 => {
                disk.discard(off, len).unwrap();
                model_discard(model, off, len, cs, discard_base);
            }
            _ => {
                disk.write_zeroes(off, len, op == 8).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
        }
        if i % 17 == 16 {
            disk.flush().unwrap();
        }
    }
    disk.flush().unwrap();
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

pub fn join(dir: &TempDir, name: &str) -> PathBuf {
    dir.as_path().join(name)
}
