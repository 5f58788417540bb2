//! Helpers for the tests that run `vmkit-img` beside qemu-img.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use vmm_sys_util::tempdir::TempDir;

/// The output of one command.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

fn collect(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Whether qemu-img is installed; prints the one skip line when not.
pub fn have_qemu(test: &str) -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok();
    if !ok {
        println!("skipped {test}: qemu-img is not installed");
    }
    ok
}

/// Runs `vmkit-img ARGS` in `dir`.
pub fn vmkit(dir: &Path, args: &[&str]) -> Run {
    collect(
        Command::new(env!("CARGO_BIN_EXE_vmkit-img"))
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run vmkit-img"),
    )
}

/// Runs `qemu-img ARGS` in `dir`.
pub fn qemu(dir: &Path, args: &[&str]) -> Run {
    collect(
        Command::new("qemu-img")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run qemu-img"),
    )
}

/// Runs `qemu-io ARGS` in `dir`, which must succeed.
pub fn qemu_io(dir: &Path, args: &[&str]) {
    let r = collect(
        Command::new("qemu-io")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run qemu-io"),
    );
    assert_eq!(r.code, 0, "qemu-io {args:?}: {r:?}");
}

pub fn tempdir() -> TempDir {
    TempDir::new_with_prefix("/tmp/vmkit-img-test").unwrap()
}

pub fn path(dir: &TempDir, name: &str) -> PathBuf {
    dir.as_path().join(name)
}

/// The integer after `"key": ` in qemu-img's JSON, at any depth (first
/// match at the top level is the last one printed for `info`, whose
/// children come first, so take the last).
pub fn json_u64(json: &str, key: &str) -> Option<u64> {
    let needle = format!("\"{key}\": ");
    json.lines()
        .rev()
        .filter(|l| l.starts_with(&format!("    {needle}")))
        .filter_map(|l| {
            l.trim()
                .strip_prefix(&needle)?
                .trim_end_matches(',')
                .parse()
                .ok()
        })
        .next()
}

/// The string after `"key": ` at the top level of qemu-img's JSON.
pub fn json_str(json: &str, key: &str) -> Option<String> {
    let needle = format!("    \"{key}\": \"");
    json.lines()
        .rev()
        .filter_map(|l| l.strip_prefix(&needle))
        .map(|v| v.trim_end_matches(',').trim_end_matches('"').to_string())
        .next()
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

/// Sets the refcount of cluster `cluster` in a qcow2 image's first
/// refcount block to `value` (16-bit refcounts).
pub fn patch_refcount(file: &Path, cluster: u64, value: u16) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut header = [0u8; 104];
    f.read_exact_at(&mut header, 0).unwrap();
    let refcount_order = if u32::from_be_bytes(header[4..8].try_into().unwrap()) >= 3 {
        u32::from_be_bytes(header[96..100].try_into().unwrap())
    } else {
        4
    };
    assert_eq!(refcount_order, 4, "the helper handles 16-bit refcounts");
    let rt = be64(&header[48..]);
    let mut entry = [0u8; 8];
    f.read_exact_at(&mut entry, rt).unwrap();
    let block = be64(&entry);
    f.write_all_at(&value.to_be_bytes(), block + 2 * cluster)
        .unwrap();
}

/// The cluster size of a qcow2 image.
pub fn qcow2_cluster_size(file: &Path) -> u64 {
    let f = std::fs::File::open(file).unwrap();
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, 20).unwrap();
    1 << u32::from_be_bytes(b)
}

/// Allocated bytes of a file.
pub fn allocated(file: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(file).unwrap().blocks() * 512
}
