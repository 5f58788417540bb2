//! Hostile qcow2 images: valid images with bytes patched in. Each is
//! refused with a clear error or read and written without a panic, a hang,
//! a huge allocation or a write outside the image's clusters.

mod qcow2_common;

use std::path::Path;

use qcow2_common::*;
use vm_memory::VolatileSlice;
use vmkit_disk::{CreateOptions, DiskImage, Error, Qcow2Image, Qcow2Options};

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

/// A small valid image with data in a few clusters (4 KiB clusters).
fn valid_image(path: &Path) -> Vec<u8> {
    Qcow2Image::create(
        path,
        &CreateOptions {
            size: 1 << 20,
            cluster_size: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    let disk = Qcow2Image::open(path, &RW).unwrap();
    let mut model = vec![0u8; 1 << 20];
    write(&disk, &mut model, 0, &mut [0x11u8; 8192]);
    write(&disk, &mut model, 500_000, &mut [0x22u8; 3000]);
    drop(disk);
    std::fs::read(path).unwrap()
}

fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().unwrap())
}

fn patched(path: &Path, orig: &[u8], f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = orig.to_vec();
    f(&mut b);
    std::fs::write(path, &b).unwrap();
}

fn open_err(path: &Path) -> String {
    match Qcow2Image::open(path, &RW) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn malformed_headers_are_refused_clearly() {
    let _serial = serial();
    let dir = tempdir();
    let path = join(&dir, "h.qcow2");
    let orig = valid_image(&path);
    type Case = (&'static str, Box<dyn Fn(&mut Vec<u8>)>, &'static str);
    let cases: Vec<Case> = vec![
        ("magic", Box::new(|b| b[0] = b'X'), "bad magic"),
        (
            "version 4",
            Box::new(|b| b[7] = 4),
            "unsupported qcow2 version 4",
        ),
        (
            "cluster_bits 30",
            Box::new(|b| b[23] = 30),
            "cluster_bits 30 out of range",
        ),
        (
            "cluster_bits 8",
            Box::new(|b| b[23] = 8),
            "cluster_bits 8 out of range",
        ),
        (
            "huge size",
            Box::new(|b| b[24..32].copy_from_slice(&u64::MAX.to_be_bytes())),
            "too large",
        ),
        (
            "size beyond L1",
            Box::new(|b| b[24..32].copy_from_slice(&(1u64 << 40).to_be_bytes())),
            "too small for virtual size",
        ),
        (
            "huge L1",
            Box::new(|b| b[36..40].copy_from_slice(&0x1000_0000u32.to_be_bytes())),
            "L1 table size",
        ),
        (
            "L1 past EOF",
            Box::new(|b| b[40..48].copy_from_slice(&(1u64 << 40).to_be_bytes())),
            "past the end of the file",
        ),
        (
            "L1 misaligned",
            Box::new(|b| b[47] |= 8),
            "not cluster aligned",
        ),
        (
            "huge refcount table",
            Box::new(|b| b[56..60].copy_from_slice(&0x0100_0000u32.to_be_bytes())),
            "refcount table",
        ),
        (
            "no refcount table",
            Box::new(|b| b[56..60].fill(0)),
            "no refcount table",
        ),
        (
            "refcount_order 7",
            Box::new(|b| b[99] = 7),
            "refcount_order 7",
        ),
        (
            "many snapshots",
            Box::new(|b| b[60..64].copy_from_slice(&100_000u32.to_be_bytes())),
            "too many snapshots",
        ),
        (
            "snapshot table past EOF",
            Box::new(|b| {
                b[60..64].copy_from_slice(&1u32.to_be_bytes());
                b[64..72].copy_from_slice(&(1u64 << 40).to_be_bytes());
            }),
            "snapshot table",
        ),
        ("encrypted", Box::new(|b| b[35] = 2), "encrypted"),
        (
            "unknown incompatible bit",
            Box::new(|b| b[79] |= 1 << 5),
            "unsupported incompatible features: bit 5",
        ),
        (
            "external data file",
            Box::new(|b| b[79] |= 1 << 2),
            "incompatible features",
        ),
        (
            "header_length tiny",
            Box::new(|b| b[100..104].copy_from_slice(&50u32.to_be_bytes())),
            "header_length",
        ),
        (
            "header_length huge",
            Box::new(|b| b[100..104].copy_from_slice(&100_000u32.to_be_bytes())),
            "header_length",
        ),
        (
            "backing name outside",
            Box::new(|b| {
                b[8..16].copy_from_slice(&4000u64.to_be_bytes());
                b[16..20].copy_from_slice(&500u32.to_be_bytes());
            }),
            "backing file name",
        ),
        (
            "compression type 9",
            Box::new(|b| {
                b[79] |= 1 << 3;
                b[104] = 9
            }),
            "compression type 9",
        ),
        ("truncated", Box::new(|b| b.truncate(60)), "too short"),
        (
            "truncated tables",
            Box::new(|b| b.truncate(4096 + 100)),
            "past the end of the file",
        ),
        ("empty", Box::new(|b| b.clear()), "too short"),
    ];
    for (name, f, want) in cases {
        patched(&path, &orig, |b| f(b));
        let err = open_err(&path);
        assert!(err.contains(want), "{name}: {err}");
        assert!(!err.contains('\n'), "{name}: {err}");
    }
}

#[test]
fn corrupt_and_dirty_bits() {
    let _serial = serial();
    let dir = tempdir();
    let path = join(&dir, "c.qcow2");
    let orig = valid_image(&path);
    patched(&path, &orig, |b| b[79] |= 2);
    let err = Qcow2Image::open(&path, &RW).unwrap_err();
    assert!(matches!(err, Error::MarkedCorrupt { .. }), "{err}");
    assert!(err.to_string().contains("read-only"), "{err}");
    let ro = Qcow2Image::open(&path, &RO).unwrap();
    assert!(ro.info().unwrap().corrupt);
    assert_eq!(read_all(&ro)[..8192], [0x11; 8192]);
    drop(ro);

    // A dirty image (lazy refcounts, crashed) with a refcount missing: the
    // writable open rebuilds the refcounts.
    patched(&path, &orig, |b| {
        b[79] |= 1;
        let rt = be64(b, 48) as usize;
        let rb = be64(b, rt) as usize;
        // Cluster 5 holds data; forget its refcount. Leak cluster 200.
        b[rb + 10..rb + 12].fill(0);
        b[rb + 400..rb + 402].copy_from_slice(&1u16.to_be_bytes());
        b.resize(1 << 20, 0);
    });
    let disk = Qcow2Image::open(&path, &RW).unwrap();
    let rep = disk.check(false).unwrap();
    assert!(rep.is_clean() && rep.leaks == 0, "{rep:?}");
    assert!(!disk.info().unwrap().dirty);
    drop(disk);
    if have_qemu("corrupt_and_dirty_bits (qemu part)") {
        assert_clean(&path);
    }
}

#[test]
fn bad_table_entries_give_errors_not_panics() {
    let _serial = serial();
    let dir = tempdir();
    let path = join(&dir, "t.qcow2");
    let orig = valid_image(&path);
    let l1 = be64(&orig, 40) as usize;
    let l2 = (be64(&orig, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let rt = be64(&orig, 48) as usize;
    let mut buf = vec![0u8; 8192];

    let read0 = |p: &Path, buf: &mut [u8]| -> Result<(), Error> {
        let d = Qcow2Image::open(p, &RW)?;
        d.read_at(&mut VolatileSlice::from(&mut buf[..]), 0)
    };
    let write0 = |p: &Path, buf: &mut [u8]| -> Result<(), Error> {
        let d = Qcow2Image::open(p, &RW)?;
        d.write_at(&VolatileSlice::from(&mut buf[..]), 0)
    };

    // L1 entry beyond the file.
    patched(&path, &orig, |b| {
        b[l1..l1 + 8].copy_from_slice(&((1u64 << 63) | (1 << 40)).to_be_bytes())
    });
    let e = read0(&path, &mut buf).unwrap_err().to_string();
    assert!(e.contains("outside the file"), "{e}");
    // L1 entry misaligned.
    patched(&path, &orig, |b| b[l1 + 7] |= 0x10);
    // (bits below 9 are masked; 0x10 is in the reserved range)
    let _ = read0(&path, &mut buf);
    patched(&path, &orig, |b| {
        let v = be64(b, l1) | 0x200;
        b[l1..l1 + 8].copy_from_slice(&v.to_be_bytes());
    });
    let e = read0(&path, &mut buf).unwrap_err().to_string();
    assert!(e.contains("not cluster aligned"), "{e}");
    // L2 entry misaligned, and beyond the file.
    patched(&path, &orig, |b| {
        let v = be64(b, l2) | 0x200;
        b[l2..l2 + 8].copy_from_slice(&v.to_be_bytes());
    });
    let e = read0(&path, &mut buf).unwrap_err().to_string();
    assert!(e.contains("misaligned"), "{e}");
    patched(&path, &orig, |b| {
        b[l2..l2 + 8].copy_from_slice(&((1u64 << 63) | (1 << 50)).to_be_bytes())
    });
    let e = write0(&path, &mut buf).unwrap_err().to_string();
    assert!(e.contains("past the end of the file"), "{e}");
    // An L2 entry pointing at the L1 table: a data write there would
    // destroy metadata, so it is refused and the image marked corrupt.
    patched(&path, &orig, |b| {
        b[l2..l2 + 8].copy_from_slice(&((1u64 << 63) | l1 as u64).to_be_bytes())
    });
    let before = std::fs::read(&path).unwrap();
    let e = write0(&path, &mut buf).unwrap_err().to_string();
    assert!(e.contains("overlaps metadata"), "{e}");
    let after = std::fs::read(&path).unwrap();
    assert_eq!(
        before[l1..l1 + 4096],
        after[l1..l1 + 4096],
        "metadata was overwritten"
    );
    assert!(matches!(
        Qcow2Image::open(&path, &RW),
        Err(Error::MarkedCorrupt { .. })
    ));
    // A garbage compressed entry.
    patched(&path, &orig, |b| {
        b[l2..l2 + 8].copy_from_slice(&((1u64 << 62) | (4096 * 3)).to_be_bytes())
    });
    let e = read0(&path, &mut buf).unwrap_err().to_string();
    assert!(e.contains("compressed"), "{e}");
    // A refcount block beyond the file: allocation fails cleanly.
    patched(&path, &orig, |b| {
        b[rt..rt + 8].copy_from_slice(&(1u64 << 40).to_be_bytes())
    });
    let e = {
        let d = Qcow2Image::open(&path, &RW).unwrap();
        let mut data = vec![1u8; 4096];
        d.write_at(&VolatileSlice::from(&mut data[..]), 900_000)
            .unwrap_err()
            .to_string()
    };
    assert!(e.contains("outside the file"), "{e}");
}

#[test]
fn random_corruption_never_panics() {
    let _serial = serial();
    let dir = tempdir();
    let path = join(&dir, "f.qcow2");
    let orig = valid_image(&path);
    let meta_end = 8 * 4096.min(orig.len());
    let mut rng = Rng(0xfeed);
    // A bounded amount of work per image: a hang would show as a test that
    // never ends, which CI's time limit catches; no wall-clock assertion.
    for _ in 0..300 {
        patched(&path, &orig, |b| {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(meta_end as u64) as usize;
                b[i] = rng.next_u64() as u8;
            }
        });
        let Ok(disk) = Qcow2Image::open(&path, &RW) else {
            continue;
        };
        let size = disk.size().min(1 << 22);
        let mut buf = vec![0u8; 65536];
        for _ in 0..8 {
            let off = rng.below(size.max(1)) & !511;
            let len = (buf.len() as u64).min(size - off.min(size)) as usize;
            let _ = disk.read_at(&mut VolatileSlice::from(&mut buf[..len]), off);
            let _ = disk.write_at(&VolatileSlice::from(&mut buf[..len]), off);
            let _ = disk.discard(off, len as u64);
        }
        let _ = disk.flush();
        let _ = disk.check(false);
        drop(disk);
        // Nothing wrote far past the metadata it was given.
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len < 64 << 20, "file grew to {len}");
    }
}
