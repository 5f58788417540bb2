//! Regressions found by the `qcow2` fuzz target (`fuzz/`): each test
//! rebuilds the offending image from a valid one with bytes patched in, and
//! asserts what a hostile image must get — an error or a report, never a
//! panic, a hang or an unbounded allocation.

use std::path::{Path, PathBuf};

use vmkit_disk::{CreateOptions, DiskImage, Qcow2Image, Qcow2Options};
use vmm_sys_util::tempdir::TempDir;

const RW: Qcow2Options = Qcow2Options {
    read_only: false,
    backing: false,
    direct: false,
};
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

/// An image whose L1 table is its refcount table (fuzz input: both at
/// 0x400, dirty bit set so that the refcounts are rebuilt at open and
/// `check` then finds it clean): the image opened writable, and the first
/// write to an unallocated L2 range stored the new L1 entry
/// (`0x8000000000000c00`) into the refcount table, which then named a
/// refcount block at 2^63 — `check` afterwards: "refcount block offset
/// 0x8000000000000c00 is outside the file". Metadata tables that overlap
/// must be refused at open, or writes to them refused (QEMU's metadata
/// overlap checks mark the image corrupt instead of writing).
#[test]
fn l1_table_overlapping_the_refcount_table_is_not_written_through() {
    let dir = TempDir::new_with_prefix("/tmp/vmkit-qcow2-fuzz").unwrap();
    let (path, mut bytes) = valid_image(&dir, "overlap.qcow2");
    let rt = be64(&bytes, 48);
    // 1 MiB of 512-byte clusters: 32 L1 entries, all of them inside the
    // refcount table's cluster; entry 1 of the refcount table is free.
    bytes[36..40].copy_from_slice(&32u32.to_be_bytes());
    bytes[40..48].copy_from_slice(&rt.to_be_bytes());
    assert_eq!(be64(&bytes, rt as usize + 8), 0);
    write(&path, &bytes);

    let Ok(img) = Qcow2Image::open(&path, &RW) else {
        return; // Refused: fine.
    };
    // Guest offset 32 KiB: L1 entry 1, i.e. refcount table entry 1.
    let mut data = [0x5au8; 512];
    let wrote = img
        .write_at(&vm_memory::VolatileSlice::from(&mut data[..]), 32 << 10)
        .is_ok();
    drop(img);
    let after = std::fs::read(&path).unwrap();
    let entry = be64(&after, rt as usize + 8);
    assert!(
        entry == 0 || (entry & !0x1ff) < after.len() as u64,
        "the write (ok: {wrote}) turned refcount table entry 1 into {entry:#x}"
    );
}
