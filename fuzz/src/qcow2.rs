//! `qcow2`: hostile qcow2 images.
//!
//! Input: two little-endian bytes `n`, `n` bytes of operations, then the
//! image file (`scripts/qcow2-seeds.sh` makes seeds in this form from
//! `qemu-img` images). The image is written to a file on tmpfs and opened
//! with [`Qcow2Image::open`] (read-write or read-only, no backing files);
//! then reads, writes, discards, write-zeroes, flushes and reopens at
//! fuzz-chosen offsets. Checked:
//!
//! - no panic, and bounded work (libFuzzer's `-timeout`);
//! - bounded memory: with [`CountingAlloc`] installed (the `qcow2` target
//!   does), the peak of live heap allocations in one run stays under
//!   [`HEAP_LIMIT`], whatever the header says about table sizes;
//! - accesses past the virtual size fail with `OutOfRange` (and change
//!   nothing), as do writes to a read-only image (`ReadOnly`);
//! - the file of a consistent image grows by no more than the data written
//!   plus a bounded metadata overhead;
//! - a successful write inside one cluster reads back at once;
//! - for an image that `check` finds clean when opened: every byte written
//!   (or zeroed) reads back after any later operation and after a reopen,
//!   and the image is still clean at the end.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use arbitrary::{Result, Unstructured};
use vm_memory::VolatileSlice;
use vmkit_disk::{DiskImage, Error, Qcow2Image, Qcow2Options};

/// The most heap one run may hold at once.
pub const HEAP_LIMIT: usize = 256 << 20;
/// The largest single read or write.
const MAX_IO: usize = 256 << 10;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// A global allocator that tracks live heap bytes and their peak, for the
/// memory bound (installed by the `qcow2` target).
pub struct CountingAlloc;

// SAFETY: every call is forwarded to the system allocator with the same
// arguments; the counters are only statistics.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (hence from `System`) with
        // `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
}

fn image_path() -> PathBuf {
    let base = if fs::metadata("/dev/shm").is_ok_and(|m| m.is_dir()) {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("vmkit-fuzz-qcow2-{}", std::process::id()));
    let _ = fs::create_dir_all(&dir);
    let thread = format!("{:?}", std::thread::current().id())
        .chars()
        .filter(char::is_ascii_digit)
        .collect::<String>();
    dir.join(format!("image-{thread}.qcow2"))
}

/// Runs one input.
pub fn run(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let n = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 2);
    let (ops, image) = data[2..].split_at(n);
    let path = image_path();
    if fs::write(&path, image).is_err() {
        return;
    }
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    let start_live = LIVE.load(Ordering::Relaxed);
    let _ = fuzz(&mut Unstructured::new(ops), &path, image.len() as u64);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(start_live);
    assert!(
        peak <= HEAP_LIMIT,
        "{} MiB of heap for one image",
        peak >> 20
    );
    let _ = fs::remove_file(&path);
}

const CHUNK: u64 = 4096;
/// The bytes of a chunk.
type ChunkBytes = [u8; CHUNK as usize];
/// A bit per byte of a chunk: known or not.
type ChunkKnown = [u64; CHUNK as usize / 64];

/// What the image must read as, where known: 4 KiB chunks of bytes with a
/// bit per byte saying whether it is known.
#[derive(Default)]
struct Model {
    chunks: HashMap<u64, (Box<ChunkBytes>, Box<ChunkKnown>)>,
}

impl Model {
    /// Calls `f(chunk, range in chunk, offset in the data)` over `off..off+len`.
    fn split(off: u64, len: u64, mut f: impl FnMut(u64, std::ops::Range<usize>, usize)) {
        let mut pos = off;
        let end = off + len;
        while pos < end {
            let chunk = pos / CHUNK;
            let start = (pos % CHUNK) as usize;
            let n = ((CHUNK - pos % CHUNK).min(end - pos)) as usize;
            f(chunk, start..start + n, (pos - off) as usize);
            pos += n as u64;
        }
    }

    fn set(&mut self, off: u64, data: &[u8]) {
        Self::split(off, data.len() as u64, |c, r, at| {
            let (bytes, known) = self.chunks.entry(c).or_insert_with(|| {
                (
                    Box::new([0; CHUNK as usize]),
                    Box::new([0; CHUNK as usize / 64]),
                )
            });
            bytes[r.clone()].copy_from_slice(&data[at..at + r.len()]);
            for i in r {
                known[i / 64] |= 1 << (i % 64);
            }
        });
    }

    fn zero(&mut self, off: u64, len: u64) {
        Self::split(off, len, |c, r, _| {
            let (bytes, known) = self.chunks.entry(c).or_insert_with(|| {
                (
                    Box::new([0; CHUNK as usize]),
                    Box::new([0; CHUNK as usize / 64]),
                )
            });
            bytes[r.clone()].fill(0);
            for i in r {
                known[i / 64] |= 1 << (i % 64);
            }
        });
    }

    fn forget(&mut self, off: u64, len: u64) {
        Self::split(off, len, |c, r, _| {
            if let Some((_, known)) = self.chunks.get_mut(&c) {
                for i in r {
                    known[i / 64] &= !(1 << (i % 64));
                }
            }
        });
    }

    /// Reads back every chunk holding known bytes and compares them.
    fn verify(&self, img: &Qcow2Image, when: &str) {
        let size = img.size();
        let mut buf = [0u8; CHUNK as usize];
        for (&c, (bytes, known)) in &self.chunks {
            if known.iter().all(|&k| k == 0) {
                continue;
            }
            let off = c * CHUNK;
            // Known bytes are inside the image, whose size is whole sectors:
            // the chunk may reach past its end.
            let n = (size - off).min(CHUNK) as usize;
            img.read_at(&mut VolatileSlice::from(&mut buf[..n]), off)
                .unwrap_or_else(|e| panic!("{when}: reading back {off:#x}: {e}"));
            for i in 0..n {
                if known[i / 64] & (1 << (i % 64)) != 0 {
                    assert_eq!(
                        buf[i],
                        bytes[i],
                        "{when}: byte {:#x} reads {:#x}, wrote {:#x}",
                        off + i as u64,
                        buf[i],
                        bytes[i]
                    );
                }
            }
        }
    }
}

fn offset(u: &mut Unstructured<'_>, size: u64, cluster: u64) -> Result<u64> {
    let raw: u64 = u.arbitrary()?;
    let off = match u.int_in_range(0..=7u8)? {
        0..=2 => raw % size.clamp(1, 4 << 20),
        3 => size.saturating_sub(raw % (4 * cluster + 1)),
        4 => raw % size.max(1),
        5 => size + raw % 4096,
        6 => (raw % 64) * cluster,
        _ => raw,
    };
    Ok(if u.ratio(3, 4)? { off & !511 } else { off })
}

fn length(u: &mut Unstructured<'_>, cluster: u64) -> Result<usize> {
    Ok(match u.int_in_range(0..=5u8)? {
        0 | 1 => 512 * u.int_in_range(1..=16usize)?,
        2 => (cluster as usize * u.int_in_range(1..=3usize)?).min(MAX_IO),
        3 => u.int_in_range(0..=MAX_IO)?,
        4 => u.int_in_range(1..=600usize)?,
        _ => 0,
    })
}

fn in_range(off: u64, len: u64, size: u64) -> bool {
    off.checked_add(len).is_some_and(|end| end <= size)
}

fn fuzz(u: &mut Unstructured<'_>, path: &std::path::Path, file_len: u64) -> Result<()> {
    let read_only = u.ratio(1, 8)?;
    let options = Qcow2Options {
        read_only,
        backing: false,
        direct: false,
    };
    let trace = std::env::var_os("VMKIT_FUZZ_TRACE").is_some();
    let mut img = match Qcow2Image::open(path, &options) {
        Ok(img) => img,
        Err(e) => {
            if trace {
                eprintln!("qcow2: open failed: {e}");
            }
            return Ok(());
        }
    };
    let size = img.size();
    let cluster = img.cluster_size();
    assert!(size % 512 == 0, "virtual size {size} is not whole sectors");
    assert!(cluster.is_power_of_two() && (512..=2 << 20).contains(&cluster));
    // Only an image consistent to start with must stay so, and read back
    // everything: a corrupt one may alias clusters (as in QEMU).
    let clean_at_open = !read_only && img.check(false).is_ok_and(|r| r.is_clean());
    if trace {
        eprintln!(
            "qcow2: opened, size {size}, cluster {cluster}, read-only {read_only}, clean {clean_at_open}"
        );
    }
    let mut model = Model::default();
    let mut all_ok = true;
    let mut written = 0u64;

    for _ in 0..u.int_in_range(0..=8u8)? {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=11u8)? {
            0..=2 => {
                let (off, len) = (offset(u, size, cluster)?, length(u, cluster)?);
                let mut buf = vec![0u8; len];
                let r = img.read_at(&mut VolatileSlice::from(&mut buf[..]), off);
                if !in_range(off, len as u64, size) {
                    assert!(
                        matches!(r, Err(Error::OutOfRange { .. })),
                        "read past the end: {r:?}"
                    );
                } else if r.is_err() {
                    all_ok = false;
                }
            }
            3..=6 => {
                let (off, len) = (offset(u, size, cluster)?, length(u, cluster)?);
                let seed: u8 = u.arbitrary()?;
                let mut buf: Vec<u8> = (0..len)
                    .map(|i| (i as u8) ^ seed ^ (i >> 9) as u8)
                    .collect();
                let r = img.write_at(&VolatileSlice::from(&mut buf[..]), off);
                if !in_range(off, len as u64, size) {
                    assert!(
                        matches!(r, Err(Error::OutOfRange { .. }) | Err(Error::ReadOnly)),
                        "write past the end: {r:?}"
                    );
                    continue;
                }
                if read_only {
                    assert!(
                        matches!(r, Err(Error::ReadOnly)),
                        "write to a read-only image: {r:?}"
                    );
                    continue;
                }
                match r {
                    Ok(()) => {
                        written += len as u64;
                        model.set(off, &buf);
                        if len > 0 && off / cluster == (off + len as u64 - 1) / cluster {
                            let mut back = vec![0u8; len];
                            img.read_at(&mut VolatileSlice::from(&mut back[..]), off)
                                .unwrap_or_else(|e| {
                                    panic!("reading back a write at {off:#x}: {e}")
                                });
                            assert!(
                                back == buf,
                                "a write of {len} bytes at {off:#x} did not read back"
                            );
                        }
                    }
                    Err(_) => {
                        all_ok = false;
                        model.forget(off, len as u64);
                    }
                }
            }
            7 | 8 => {
                let (off, len) = (offset(u, size, cluster)?, length(u, cluster)? as u64 * 8);
                let zeroes = u.arbitrary::<bool>()?;
                let unmap = u.arbitrary::<bool>()?;
                let r = if zeroes {
                    img.write_zeroes(off, len, unmap)
                } else {
                    img.discard(off, len)
                };
                if !in_range(off, len, size) {
                    assert!(
                        matches!(r, Err(Error::OutOfRange { .. }) | Err(Error::ReadOnly)),
                        "discard past the end: {r:?}"
                    );
                    continue;
                }
                if read_only {
                    assert!(
                        matches!(r, Err(Error::ReadOnly)),
                        "discard on a read-only image: {r:?}"
                    );
                    continue;
                }
                match r {
                    Ok(()) if zeroes => model.zero(off, len),
                    Ok(()) => model.forget(off, len),
                    Err(_) => {
                        all_ok = false;
                        model.forget(off, len);
                    }
                }
            }
            9 => {
                if img.flush().is_err() {
                    all_ok = false;
                }
            }
            10 => {
                drop(img);
                img = match Qcow2Image::open(path, &options) {
                    Ok(img) => img,
                    Err(e) => {
                        assert!(
                            !(clean_at_open && all_ok),
                            "a clean image no longer opens: {e}"
                        );
                        return Ok(());
                    }
                };
                assert_eq!(img.size(), size, "the virtual size changed");
            }
            _ => {
                if clean_at_open && all_ok {
                    model.verify(&img, "after the operations");
                }
            }
        }
        // Data written, plus per write a few clusters of tables and
        // refcounts, plus a refcount table. Only for a consistent image: in
        // one whose refcounts claim clusters nothing uses (leaks), new
        // clusters go after them, as in QEMU, however far that is (the
        // file stays sparse).
        if clean_at_open {
            let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let bound = file_len.max(4 * cluster) + 2 * written + 64 * cluster + (16 << 20);
            assert!(
                len <= bound,
                "the image file grew to {len} bytes (from {file_len}, {written} written)"
            );
        }
    }
    if clean_at_open && all_ok {
        model.verify(&img, "after the operations");
        drop(img);
        let img = Qcow2Image::open(
            path,
            &Qcow2Options {
                read_only: true,
                ..options
            },
        )
        .unwrap_or_else(|e| panic!("a clean image no longer opens: {e}"));
        model.verify(&img, "after a reopen");
        let report = img.check(false).expect("check");
        assert!(
            report.corruptions == 0 && report.check_errors == 0,
            "the image was corrupted: {report:?}"
        );
    }
    Ok(())
}
