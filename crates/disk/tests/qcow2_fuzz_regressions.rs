//! Regressions found by the `qcow2` fuzz target (`fuzz/`): each test
//! rebuilds the offending image from a valid one with bytes patched in, and
//! asserts what a hostile image must get — an error or a report, never a
//! panic, a hang or an unbounded allocation.

use std::path::{Path, PathBuf};

use vmkit_disk::{CreateOptions, DiskImage, Qcow2Image, Qcow2Options};
use vmm_sys_util::tempdir::TempDir;

const RO: Qcow2Options = Qcow2Options {
    read_only: true,
    backing: false,
    direct: false,
};

fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().unwrap())
}

/// A valid 1 MiB image with 512-byte clusters, as bytes, at `dir/name`.
fn valid_image(dir: &TempDir, name: &str) -> (PathBuf, Vec<u8>) {
    let path = dir.as_path().join(name);
    Qcow2Image::create(
        &path,
        &CreateOptions {
            size: 1 << 20,
            cluster_size: 512,
            ..Default::default()
        },
    )
    .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

/// A refcount table entry whose offset lies within the last cluster of the
/// 64-bit address space (fuzz input: entry 0xffff_ffff_ffff_ffff): the
/// image opens, and `check` overflowed computing the end of that refcount
/// block (`off + len - 1` in `Counter::inc`, check.rs) — a panic in debug
/// builds, a silently wrapped range in release builds. It must report the
/// entry as a corruption (or fail) instead.
#[test]
fn check_refcount_block_near_the_end_of_the_address_space() {
    let dir = TempDir::new_with_prefix("/tmp/vmkit-qcow2-fuzz").unwrap();
    let (path, mut bytes) = valid_image(&dir, "rt.qcow2");
    let rt = be64(&bytes, 48) as usize;
    assert_eq!(
        be64(&bytes, rt + 8),
        0,
        "entry 1 of the refcount table is free"
    );
    bytes[rt + 8..rt + 16].copy_from_slice(&u64::MAX.to_be_bytes());
    write(&path, &bytes);

    let img = Qcow2Image::open(&path, &RO).expect("the image opens");
    match img.check(false) {
        Ok(report) => assert!(
            report.corruptions > 0 || report.check_errors > 0,
            "a refcount block past the end of the file is a corruption: {report:?}"
        ),
        Err(e) => eprintln!("check refused the image: {e}"),
    }
    // Reads still work (the refcount table is not on the read path).
    let mut buf = [0u8; 512];
    img.read_at(&mut vm_memory::VolatileSlice::from(&mut buf[..]), 0)
        .unwrap();
}

/// A snapshot whose L1 table offset lies near 2^64 (fuzz input: offset
/// 0xffff_ffff_ffff_0a00, 65536 entries): `Qcow2Image::open` overflowed
/// adding the table's clusters to the metadata set (`s.offset + c * cs`
/// in `open_inner`, qcow2/mod.rs) — a panic in debug builds on any image
/// an untrusted party supplies. `read_snapshots` checks the offset's
/// alignment but not that the table lies in the file. The image must be
/// refused (or opened) without a panic.
#[test]
fn open_snapshot_l1_table_near_the_end_of_the_address_space() {
    let dir = TempDir::new_with_prefix("/tmp/vmkit-qcow2-fuzz").unwrap();
    let (path, mut bytes) = valid_image(&dir, "snap.qcow2");
    // A snapshot table in a cluster appended to the file.
    let table = bytes.len();
    bytes.resize(table + 512, 0);
    bytes[60..64].copy_from_slice(&1u32.to_be_bytes());
    bytes[64..72].copy_from_slice(&(table as u64).to_be_bytes());
    bytes[table..table + 8].copy_from_slice(&0xffff_ffff_ffff_0a00u64.to_be_bytes());
    bytes[table + 8..table + 12].copy_from_slice(&65536u32.to_be_bytes());
    write(&path, &bytes);

    match Qcow2Image::open(&path, &RO) {
        Ok(img) => {
            let mut buf = [0u8; 512];
            img.read_at(&mut vm_memory::VolatileSlice::from(&mut buf[..]), 0)
                .unwrap();
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("snapshot"), "a clear error: {msg}");
        }
    }
}
