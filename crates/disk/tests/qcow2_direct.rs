//! qcow2 images opened with `O_DIRECT` (`Qcow2Options::direct`), and the
//! lock-free data path under concurrent I/O, discards and flushes: what we
//! write QEMU reads back identically (`qemu-img compare` with a model of
//! the disk) and `qemu-img check` stays clean.

mod qcow2_common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use qcow2_common::*;
use vm_memory::VolatileSlice;
use vmkit_disk::{DiskImage, Error, Qcow2Image, Qcow2Options};

/// A buffer aligned for `O_DIRECT`.
struct Aligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let buf = vec![0u8; len + 4096];
        let addr = buf.as_ptr() as usize;
        let start = addr.next_multiple_of(4096) - addr;
        Aligned { buf, start, len }
    }

    fn bytes(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

fn write_aligned(disk: &dyn DiskImage, off: u64, data: &[u8]) {
    let mut b = Aligned::new(data.len());
    b.bytes().copy_from_slice(data);
    disk.write_at(&VolatileSlice::from(b.bytes()), off).unwrap();
}

fn read_aligned(disk: &dyn DiskImage, off: u64, len: usize) -> Vec<u8> {
    let mut b = Aligned::new(len);
    disk.read_at(&mut VolatileSlice::from(b.bytes()), off)
        .unwrap();
    b.bytes().to_vec()
}

fn open(img: &Path, direct: bool) -> Qcow2Image {
    Qcow2Image::open(
        img,
        &Qcow2Options {
            read_only: false,
            backing: false,
            direct,
        },
    )
    .unwrap()
}

/// Creates an image with QEMU, QEMU writes data into it through the page
/// cache; returns the model of the disk.
fn qemu_image(img: &Path, version: u32, cluster_size: u64, size: u64) -> Vec<u8> {
    let compat = if version == 2 { "0.10" } else { "1.1" };
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("compat={compat},cluster_size={cluster_size}"),
            &path_str(img),
            &size.to_string(),
        ],
    );
    let mut model = vec![0u8; size as usize];
    let mut cmds = Vec::new();
    for (pat, off, len) in [
        (0x11u8, 0, 3 * cluster_size),
        (0x22, 5 * cluster_size + 4096, 4096),
        (0x33, size / 2, cluster_size + 8192),
        (0x44, size - 4096, 4096),
    ] {
        cmds.push(format!("write -P {pat:#x} {off} {len}"));
        model[off as usize..(off + len) as usize].fill(pat);
    }
    qemu_io(img, "qcow2", &cmds);
    model
}

/// Random 4 KiB-aligned writes, discards and write-zeroes, and reads that
/// check the model as they go.
fn aligned_ops(disk: &dyn DiskImage, model: &mut [u8], rng: &mut Rng, n: usize, cs: u64) {
    let blocks = disk.size() / 4096;
    for i in 0..n {
        let len = (1 + rng.below((3 * cs / 4096).clamp(1, 64))).min(blocks) * 4096;
        let off = rng.below(blocks - len / 4096 + 1) * 4096;
        let (o, e) = (off as usize, (off + len) as usize);
        match rng.below(10) {
            0..=5 => {
                let seed = rng.next_u64() as u8;
                let data: Vec<u8> = (0..len)
                    .map(|j| (j as u8).wrapping_mul(29).wrapping_add(seed) | 1)
                    .collect();
                write_aligned(disk, off, &data);
                model[o..e].copy_from_slice(&data);
            }
            6 => {
                disk.discard(off, len).unwrap();
                model_discard(model, off, len, cs, None);
            }
            7 | 8 => {
                disk.write_zeroes(off, len, i % 2 == 0).unwrap();
                model[o..e].fill(0);
            }
            _ => assert!(read_aligned(disk, off, len as usize) == model[o..e]),
        }
        if i % 13 == 12 {
            disk.flush().unwrap();
        }
    }
    disk.flush().unwrap();
}

/// Whether this process has `img` open with `O_DIRECT`.
fn open_with_o_direct(img: &Path) -> bool {
    let img = img.canonicalize().unwrap();
    std::fs::read_dir("/proc/self/fd").unwrap().any(|e| {
        let e = e.unwrap();
        if std::fs::read_link(e.path()).ok().as_deref() != Some(img.as_path()) {
            return false;
        }
        let info = std::fs::read_to_string(Path::new("/proc/self/fdinfo").join(e.file_name()))
            .unwrap_or_default();
        info.lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| i64::from_str_radix(f.trim(), 8).ok())
            .is_some_and(|f| f & i64::from(libc::O_DIRECT) != 0)
    })
}

/// Whether the file system of `dir` takes `O_DIRECT` (tmpfs may not).
fn direct_supported(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join("probe");
    std::fs::write(&probe, [0u8; 4096]).unwrap();
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    std::fs::remove_file(probe).unwrap();
    if !ok {
        println!("skipped: {} has no O_DIRECT", dir.display());
    }
    ok
}

#[test]
fn direct_io_reads_and_writes_what_qemu_sees() {
    let _serial = serial();
    if !have_qemu("direct_io_reads_and_writes_what_qemu_sees") {
        return;
    }
    let dir = tempdir();
    if !direct_supported(dir.as_path()) {
        return;
    }
    for (i, &(version, cs, size)) in [
        (3, 65536, 32u64 << 20),
        (2, 4096, 8 << 20),
        (3, 2 << 20, 64 << 20),
    ]
    .iter()
    .enumerate()
    {
        let img = join(&dir, &format!("d{i}.qcow2"));
        let mut model = qemu_image(&img, version, cs, size);
        {
            let disk = open(&img, true);
            assert!(open_with_o_direct(&img));
            // QEMU's buffered writes, read past the page cache.
            assert!(read_aligned(&disk, 0, size as usize) == model, "{cs}");
            let mut rng = Rng(0x5eed + i as u64);
            aligned_ops(&disk, &mut model, &mut rng, 150, cs);
            assert!(read_aligned(&disk, 0, size as usize) == model, "{cs}");
            let rep = disk.check(false).unwrap();
            assert!(rep.is_clean(), "{rep:?}");
            disk.close().unwrap();
        }
        assert_clean(&img);
        assert_same_as_model(&img, &model, dir.as_path());
        // A buffered open sees the direct writes too.
        let disk = open(&img, false);
        assert!(!open_with_o_direct(&img));
        assert!(read_aligned(&disk, 0, size as usize) == model, "{cs}");
    }
}

#[test]
fn direct_io_refuses_clusters_smaller_than_a_page() {
    let _serial = serial();
    if !have_qemu("direct_io_refuses_clusters_smaller_than_a_page") {
        return;
    }
    let dir = tempdir();
    let img = join(&dir, "small.qcow2");
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=512",
            &path_str(&img),
            "1M",
        ],
    );
    let r = Qcow2Image::open(
        &img,
        &Qcow2Options {
            read_only: false,
            backing: false,
            direct: true,
        },
    );
    assert!(matches!(r, Err(Error::Unsupported { .. })), "{r:?}");
}

/// Threads write and read their own clusters (allocating, overwriting in
/// place, discarding) while another flushes, which frees the discarded
/// clusters for reuse: every read sees the thread's last write, and QEMU
/// sees the same disk afterwards.
fn concurrent_case(direct: bool) {
    let dir = tempdir();
    if direct && !direct_supported(dir.as_path()) {
        return;
    }
    let img = join(&dir, "c.qcow2");
    let cs = 65536u64;
    let size = 64u64 << 20;
    let mut model = qemu_image(&img, 3, cs, size);
    let threads = 4u64;
    // Each thread owns every `threads`-th cluster from the second half,
    // so threads share L2 tables and their entries change side by side.
    let first = size / 2 / cs;
    let clusters = size / cs - first;
    {
        let disk = open(&img, direct);
        let stop = AtomicBool::new(false);
        let written: Vec<HashMap<u64, Vec<u8>>> = std::thread::scope(|s| {
            // The flusher stops when the workers are done, or one failed.
            struct Stop<'a>(&'a AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
            let _stop = Stop(&stop);
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    disk.flush().unwrap();
                    std::thread::yield_now();
                }
            });
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let disk = &disk;
                    s.spawn(move || {
                        let mut rng = Rng(0xc0ffee + t);
                        let mut mine = HashMap::new();
                        for i in 0..600u64 {
                            let c = first + t + threads * rng.below(clusters / threads);
                            let off = c * cs + rng.below(cs / 4096) * 4096;
                            if rng.below(8) == 0 {
                                disk.discard(c * cs, cs).unwrap();
                                for k in 0..cs / 4096 {
                                    mine.insert(c * cs + k * 4096, vec![0u8; 4096]);
                                }
                            } else {
                                let data = vec![(t as u8) << 6 | (i % 63) as u8 | 1; 4096];
                                write_aligned(disk, off, &data);
                                mine.insert(off, data);
                            }
                            // Every block of the thread's clusters written so
                            // far reads back as last written.
                            let check = c * cs + rng.below(cs / 4096) * 4096;
                            if let Some(want) = mine.get(&check) {
                                assert!(read_aligned(disk, check, 4096) == *want, "{t} {i}");
                            }
                            let got = read_aligned(disk, off, 4096);
                            if let Some(want) = mine.get(&off) {
                                assert!(got == *want, "thread {t} op {i} at {off:#x}");
                            }
                        }
                        mine
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        for (off, data) in written.into_iter().flatten() {
            model[off as usize..off as usize + 4096].copy_from_slice(&data);
        }
        assert!(read_aligned(&disk, 0, size as usize) == model);
        disk.close().unwrap();
    }
    assert_clean(&img);
    assert_same_as_model(&img, &model, dir.as_path());
}

#[test]
fn concurrent_io_discards_and_flushes_stay_consistent() {
    let _serial = serial();
    if !have_qemu("concurrent_io_discards_and_flushes_stay_consistent") {
        return;
    }
    concurrent_case(false);
    concurrent_case(true);
}
