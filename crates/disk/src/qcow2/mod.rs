//! qcow2 images (QEMU copy-on-write, versions 2 and 3), as
//! `docs/interop/qcow2.txt` in QEMU describes them.
//!
//! Supported: cluster sizes 512 B to 2 MiB, refcounts of 1 to 64 bits,
//! zero clusters, compressed clusters (deflate and zstd, read; a write
//! copies them), internal snapshots (kept intact: a cluster shared with a
//! snapshot is copied before it is written), backing chains of qcow2 and
//! raw images (when the caller opts in), lazy refcounts, discard and
//! write-zeroes, growth, creation, and consistency checks. Encryption,
//! external data files and extended L2 entries are refused.
//!
//! The data path of an allocated cluster is a lock-free lookup in the
//! cached L2 table (see the `fast` module) and one `pread(2)`/`pwrite(2)`
//! directly on the caller's memory, under the shared side of the image's
//! I/O gate only; the metadata lock is taken when the cached table cannot
//! answer (a cluster not yet looked at, unallocated, compressed or shared,
//! a table not cached). With [`Qcow2Options::direct`], data I/O bypasses
//! the page cache (see the `direct` module).

mod backing;
mod cache;
mod check;
mod compress;
mod direct;
mod fast;
mod gate;
mod header;
mod meta;
mod refcount;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use log::{info, warn};
use vm_memory::VolatileSlice;

pub use backing::MAX_CHAIN_DEPTH;
pub use check::CheckReport;
pub use header::CompressionType;

use crate::image::{check_range, check_write};
use crate::lock::{LockError, lock_image};
use crate::{DiskImage, Error, ImageFormat, Result, SECTOR_SIZE};
use backing::Chain;
use cache::TableCache;
use direct::AlignedBuf;
use fast::FastL2;
use gate::Gate;
use header::Header;
use meta::{Mapping, Meta, OFFSET_MASK, RT_OFFSET_MASK, WriteMapping};

/// The memory budget of the L2 table cache.
const L2_CACHE_BYTES: u64 = 16 << 20;
/// The most L2 tables cached.
const L2_CACHE_TABLES: u64 = 32;
/// The memory budget of the refcount block cache.
const RB_CACHE_BYTES: u64 = 4 << 20;
/// The most refcount blocks cached.
const RB_CACHE_TABLES: u64 = 16;
/// The most bytes one allocating write allocates at once.
const MAX_ALLOC_BYTES: u64 = 4 << 20;
/// Pending frees that trigger a metadata flush.
const MAX_PENDING_FREES: usize = 4096;
/// Tries at taking the image's locks, 10 ms apart.
const LOCK_ATTEMPTS: u32 = 5;
/// The largest buffer of zeros written at once.
const ZERO_CHUNK: usize = 1 << 20;

/// How to open a qcow2 image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Qcow2Options {
    /// Open read-only.
    pub read_only: bool,
    /// Open the image's backing chain (read-only). Without it, an image
    /// with a backing file is refused: a backing file name is taken from
    /// the image, and an image from an untrusted source could name any
    /// file of the host.
    pub backing: bool,
    /// Bypass the host page cache for guest data with `O_DIRECT` (QEMU's
    /// `cache=none`); metadata stays buffered and is ordered by the same
    /// syncs. Reads and writes must then be aligned as for a raw image
    /// opened with `O_DIRECT` (page-aligned buffers and 4 KiB multiples
    /// are always safe). Needs clusters of at least a page, and a file
    /// system with `O_DIRECT` support; backing files are read buffered.
    pub direct: bool,
}

/// How to create a qcow2 image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateOptions {
    /// The virtual size in bytes (rounded up to a sector).
    pub size: u64,
    /// The cluster size: a power of two from 512 bytes to 2 MiB.
    pub cluster_size: u64,
    /// Bits per refcount: 1, 2, 4, 8, 16, 32 or 64 (16 for version 2).
    pub refcount_bits: u32,
    /// 2 (QEMU's `compat=0.10`) or 3 (`compat=1.1`).
    pub version: u32,
    /// Lazy refcounts (version 3 only).
    pub lazy_refcounts: bool,
    /// A backing file: its name as stored in the image (relative names
    /// are relative to the image's directory) and its format.
    pub backing: Option<(String, ImageFormat)>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            size: 0,
            cluster_size: 64 * 1024,
            refcount_bits: 16,
            version: 3,
            lazy_refcounts: false,
            backing: None,
        }
    }
}

/// What [`Qcow2Image::info`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qcow2Info {
    /// 2 or 3.
    pub version: u32,
    /// The cluster size in bytes.
    pub cluster_size: u64,
    /// Bits per refcount.
    pub refcount_bits: u32,
    /// The virtual size in bytes.
    pub virtual_size: u64,
    /// The backing file's name as stored in the image.
    pub backing_file: Option<String>,
    /// The backing file's format as stored in the image.
    pub backing_format: Option<String>,
    /// The dirty bit (lazy refcounts in use).
    pub dirty: bool,
    /// The corrupt bit.
    pub corrupt: bool,
    /// Lazy refcounts enabled.
    pub lazy_refcounts: bool,
    /// The compression type of compressed clusters.
    pub compression_type: CompressionType,
    /// The number of internal snapshots.
    pub snapshot_count: u32,
    /// Guest clusters allocated in this image (not its backing files).
    pub allocated_clusters: u64,
}

/// A qcow2 disk image.
///
/// The image holds QEMU-compatible locks (see the crate's lock module):
/// QEMU cannot open it for writing while it is open here, nor can it be
/// opened writable here while QEMU has it open.
///
/// Discarded clusters are freed and read as zeros afterwards (in a
/// version 2 image with a backing file, as the backing file's data).
/// Dropping the image flushes it and, with lazy refcounts, writes the
/// refcounts and clears the dirty bit; [`Qcow2Image::close`] does the same
/// and reports errors.
#[derive(Debug)]
pub struct Qcow2Image {
    /// Guest data I/O: the image file, or with `direct`, a second
    /// descriptor of it opened with `O_DIRECT`.
    data: File,
    path: PathBuf,
    size: AtomicU64,
    read_only: bool,
    cluster_bits: u32,
    version: u32,
    backing: Option<Box<dyn DiskImage>>,
    /// Data I/O holds it shared; operations that may make freed clusters
    /// reusable hold it exclusively, so that no I/O in flight lands on a
    /// cluster reused for something else.
    gate: Gate,
    /// The cached L2 tables, read without the metadata lock.
    fast: Arc<FastL2>,
    meta: Mutex<Meta>,
}

fn vm_err(e: vm_memory::volatile_memory::Error) -> Error {
    Error::Io(io::Error::other(e.to_string()))
}

/// Reads file bytes at `off` into `buf`; zeros past the end of the file.
fn pread_volatile(file: &File, buf: &VolatileSlice<'_>, off: u64) -> Result<()> {
    let done = crate::file_io::pread_volatile(file, buf, off)?;
    if done < buf.len() {
        // Past the end of the file: zeros, as QEMU reads them.
        fill_zero(&buf.subslice(done, buf.len() - done).map_err(vm_err)?);
    }
    Ok(())
}

/// Writes `buf` to the file at `off`.
fn pwrite_volatile(file: &File, buf: &VolatileSlice<'_>, off: u64) -> Result<()> {
    Ok(crate::file_io::pwrite_volatile(file, buf, off)?)
}

fn fill_zero(buf: &VolatileSlice<'_>) {
    let zeros = [0u8; 4096];
    let mut pos = 0;
    while pos < buf.len() {
        let n = (buf.len() - pos).min(zeros.len());
        if let Ok(s) = buf.subslice(pos, n) {
            s.copy_from(&zeros[..n]);
        }
        pos += n;
    }
}

fn open_file(path: &Path, read_only: bool, create: bool) -> Result<File> {
    let open_err = |source| Error::Open {
        path: path.to_path_buf(),
        source,
    };
    if !create {
        let kind = std::fs::metadata(path).map_err(open_err)?.file_type();
        if !(kind.is_file() || kind.is_block_device()) {
            return Err(Error::NotAnImage {
                path: path.to_path_buf(),
            });
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .create(create)
        .truncate(create)
        .open(path)
        .map_err(open_err)?;
    let kind = file.metadata().map_err(open_err)?.file_type();
    if !(kind.is_file() || kind.is_block_device()) {
        return Err(Error::NotAnImage {
            path: path.to_path_buf(),
        });
    }
    // A conflict can be transient: a child another thread of this process
    // forks holds our earlier descriptors (and their locks) until it execs.
    for attempt in 0..LOCK_ATTEMPTS {
        match lock_image(&file, !read_only) {
            Ok(()) => return Ok(file),
            Err(LockError::Conflict) if attempt + 1 < LOCK_ATTEMPTS => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(LockError::Conflict) => break,
            Err(LockError::Io(e)) => return Err(open_err(e)),
        }
    }
    Err(Error::InUse {
        path: path.to_path_buf(),
    })
}

/// Checks the qcow2 image at `path` (opened read-only, or read-write to
/// repair leaks), as `qemu-img check [-r leaks]` does. Backing files are
/// not opened.
pub fn check_image(path: impl AsRef<Path>, repair_leaks: bool) -> Result<CheckReport> {
    let img = Qcow2Image::open_inner(
        path.as_ref(),
        &Qcow2Options {
            read_only: !repair_leaks,
            backing: false,
            direct: false,
        },
        &mut Chain::default(),
        true,
        None,
    )?;
    img.check(repair_leaks)
}

impl Qcow2Image {
    /// Opens the qcow2 image at `path`.
    ///
    /// Fails with [`Error::InvalidImage`] for a malformed image,
    /// [`Error::Unsupported`] for features this implementation lacks,
    /// [`Error::BackingNotEnabled`] for an image with a backing file
    /// without `options.backing`, [`Error::BackingChain`] for a backing
    /// chain that cannot be opened safely, [`Error::MarkedCorrupt`] when
    /// opening a corrupt image writable, and [`Error::InUse`] when another
    /// process (QEMU included) holds a conflicting lock.
    pub fn open(path: impl AsRef<Path>, options: &Qcow2Options) -> Result<Self> {
        Self::open_chain(path.as_ref(), options, &mut Chain::default())
    }

    pub(crate) fn open_chain(
        path: &Path,
        options: &Qcow2Options,
        chain: &mut Chain,
    ) -> Result<Self> {
        Self::open_inner(path, options, chain, false, None)
    }

    fn open_inner(
        path: &Path,
        options: &Qcow2Options,
        chain: &mut Chain,
        ignore_backing: bool,
        opened: Option<File>,
    ) -> Result<Self> {
        let read_only = options.read_only;
        // Loops are found before the file is opened (and locked).
        if let Ok(canonical) = path.canonicalize() {
            if chain.visited.contains(&canonical) {
                return Err(Error::BackingChain {
                    path: path.to_path_buf(),
                    reason: format!("backing chain loops back to {}", canonical.display()),
                });
            }
            chain.visited.push(canonical);
        }
        let file = match opened {
            Some(f) => f,
            None => open_file(path, read_only, false)?,
        };
        let invalid = |reason: String| Error::InvalidImage {
            path: path.to_path_buf(),
            reason,
        };
        let file_len = file_size(&file)?;
        let mut head = vec![0u8; 24.min(file_len as usize)];
        read_exact(&file, &mut head, 0)?;
        let cluster_bits = header::peek_cluster_bits(&head).map_err(invalid)?;
        let hlen = (1u64 << cluster_bits).min(file_len) as usize;
        let mut buf = vec![0u8; hlen];
        read_exact(&file, &mut buf, 0)?;
        let hdr = Header::parse(&buf, file_len).map_err(|reason| {
            if reason.starts_with("unsupported") || reason.starts_with("encrypted") {
                Error::Unsupported {
                    path: path.to_path_buf(),
                    what: reason,
                }
            } else {
                invalid(reason)
            }
        })?;
        let corrupt = hdr.incompatible & header::INCOMPAT_CORRUPT != 0;
        if corrupt && !read_only {
            return Err(Error::MarkedCorrupt {
                path: path.to_path_buf(),
            });
        }

        let backing = match &hdr.backing_file {
            Some(_) if ignore_backing => None,
            Some(name) if !options.backing => {
                return Err(Error::BackingNotEnabled {
                    path: path.to_path_buf(),
                    backing: name.clone(),
                });
            }
            Some(_) => backing::open_backing(path, &hdr, chain)?,
            None => None,
        };

        let cs = 1u64 << cluster_bits;
        let mut l1_bytes = vec![0u8; hdr.l1_size as usize * 8];
        read_exact(&file, &mut l1_bytes, hdr.l1_table_offset)?;
        let l1: Vec<u64> = be64s(&l1_bytes);
        let mut rt_bytes = vec![0u8; (u64::from(hdr.refcount_table_clusters) * cs) as usize];
        read_exact(&file, &mut rt_bytes, hdr.refcount_table_offset)?;
        let rt = be64s(&rt_bytes);

        // The header, the L1 table, the refcount table and the refcount
        // blocks must not share a cluster: an image whose tables overlap
        // would have one table's updates written through another.
        let mut metadata = BTreeSet::new();
        metadata.insert(0);
        let mut claim = |off: u64, what: &str| {
            if metadata.insert(off) {
                Ok(())
            } else {
                Err(invalid(format!(
                    "{what} at {off:#x} overlaps other metadata"
                )))
            }
        };
        for c in 0..(u64::from(hdr.l1_size) * 8).div_ceil(cs) {
            claim(hdr.l1_table_offset + c * cs, "the L1 table")?;
        }
        for c in 0..u64::from(hdr.refcount_table_clusters) {
            claim(hdr.refcount_table_offset + c * cs, "the refcount table")?;
        }
        for e in &rt {
            let off = e & RT_OFFSET_MASK;
            if off != 0 {
                claim(off, "a refcount block")?;
            }
        }
        for e in &l1 {
            let off = e & OFFSET_MASK;
            if off != 0 {
                metadata.insert(off);
            }
        }

        let rc_order = hdr.refcount_order;
        let l2_tables = (L2_CACHE_BYTES / cs).clamp(4, L2_CACHE_TABLES) as usize;
        let rb_tables = (RB_CACHE_BYTES / cs).clamp(2, RB_CACHE_TABLES) as usize;
        let version = hdr.version;
        let size = hdr.size - hdr.size % SECTOR_SIZE;
        if size != hdr.size {
            warn!(
                "{}: virtual size {} is not a multiple of {SECTOR_SIZE}; using {size}",
                path.display(),
                hdr.size
            );
        }
        let lazy = !read_only && hdr.compatible & header::COMPAT_LAZY_REFCOUNTS != 0;
        let dirty = hdr.incompatible & header::INCOMPAT_DIRTY != 0;
        let has_backing = hdr.backing_file.is_some();
        let data = if options.direct {
            direct::open_direct(path, &file, read_only, cs)?
        } else {
            file.try_clone()?
        };
        let file = Arc::new(file);
        let fast = Arc::new(FastL2::new(l2_tables, 1 << (cluster_bits - 3), cs));
        let mut meta = Meta {
            file: file.clone(),
            path: path.to_path_buf(),
            read_only,
            cluster_bits,
            cluster_size: cs,
            l2_bits: cluster_bits - 3,
            rc_order,
            rb_bits: cluster_bits + 3 - rc_order,
            l1,
            l1_dirty: false,
            l2: TableCache::new(l2_tables),
            fast: fast.clone(),
            rt,
            rb: TableCache::new(rb_tables),
            rc_unsynced: false,
            l2_unsynced: false,
            pending_frees: Vec::new(),
            free_hint: 1,
            file_end: file_len,
            metadata,
            lazy,
            dirty_set: false,
            corrupt,
            has_backing,
            decompressed: None,
            rebuild: None,
            sync_failed: std::sync::OnceLock::new(),
            hdr,
        };
        if meta.hdr.nb_snapshots > 0 {
            let (snaps, table_len) = check::read_snapshots(&meta)?;
            for c in 0..table_len.div_ceil(cs) {
                meta.metadata.insert(meta.hdr.snapshots_offset + c * cs);
            }
            for s in snaps {
                for c in 0..(u64::from(s.size) * 8).div_ceil(cs) {
                    meta.metadata.insert(s.offset + c * cs);
                }
            }
        }
        if !read_only {
            if meta.hdr.autoclear != 0 {
                // Unknown autoclear features: their data is stale once we
                // write (qcow2.txt says to clear the bits).
                meta.hdr.autoclear = 0;
                meta.write_all(&0u64.to_be_bytes(), header::field::AUTOCLEAR)?;
                meta.sync()?;
            }
            if dirty {
                warn!(
                    "{}: the image was not closed cleanly; rebuilding its refcounts",
                    path.display()
                );
                let fixed = meta.rebuild_refcounts()?;
                info!("{}: {fixed} refcounts repaired", path.display());
                meta.hdr.incompatible &= !header::INCOMPAT_DIRTY;
                meta.write_all(
                    &meta.hdr.incompatible.to_be_bytes(),
                    header::field::INCOMPATIBLE,
                )?;
                meta.sync()?;
            }
        }
        Ok(Qcow2Image {
            data,
            path: path.to_path_buf(),
            size: AtomicU64::new(size),
            read_only,
            cluster_bits,
            version,
            backing,
            gate: Gate::new(),
            fast,
            meta: Mutex::new(meta),
        })
    }

    /// Creates (or overwrites) a qcow2 image at `path` as `options` say.
    /// The backing file, if any, is not opened.
    pub fn create(path: impl AsRef<Path>, options: &CreateOptions) -> Result<()> {
        let path = path.as_ref();
        let bad = |m: String| Err(Error::InvalidArgument(m));
        let cs = options.cluster_size;
        if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
            return bad(format!(
                "cluster size {cs} is not a power of two from 512 to 2M"
            ));
        }
        let rb = options.refcount_bits;
        if !rb.is_power_of_two() || rb > 64 {
            return bad(format!("refcount bits {rb} is not a power of two up to 64"));
        }
        match options.version {
            2 if rb != 16 => return bad("version 2 images have 16-bit refcounts".into()),
            2 if options.lazy_refcounts => {
                return bad("lazy refcounts need a version 3 image".into());
            }
            2 | 3 => {}
            v => return bad(format!("version {v} is not 2 or 3")),
        }
        let size = options.size.div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
        let cluster_bits = cs.trailing_zeros();
        let order = rb.trailing_zeros();
        let backing = options
            .backing
            .as_ref()
            .map(|(name, fmt)| (name.as_str(), fmt.to_string()));
        let buf = Header::build_new(
            options.version,
            cluster_bits,
            order,
            options.lazy_refcounts,
            backing.as_ref().map(|(n, f)| (*n, f.as_str())),
        )
        .map_err(Error::InvalidArgument)?;
        // The file stays open (and locked) from creation to the end.
        let file = open_file(path, false, true)?;
        let mut image = buf;
        // Refcount table at cluster 1, its block at cluster 2.
        let mut rt = vec![0u8; cs as usize];
        rt[..8].copy_from_slice(&(2 * cs).to_be_bytes());
        image.extend_from_slice(&rt);
        let mut block = vec![0u8; cs as usize];
        for c in 0..3 {
            refcount::rb_set(&mut block, order, c, 1);
        }
        image.extend_from_slice(&block);
        use std::os::unix::fs::FileExt;
        file.write_all_at(&image, 0)?;
        file.sync_all()?;
        let img = Self::open_inner(
            path,
            &Qcow2Options {
                read_only: false,
                backing: false,
                direct: false,
            },
            &mut Chain::default(),
            true,
            Some(file),
        )?;
        img.resize(size)?;
        img.close()
    }

    /// The path the image was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image's cluster size.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn lock(&self) -> MutexGuard<'_, Meta> {
        // A panic while holding the lock leaves the metadata as it was
        // between two complete operations or mid-way; either way the
        // caches hold nothing inconsistent with the ordering rules.
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reports the image's header fields and allocation.
    pub fn info(&self) -> Result<Qcow2Info> {
        let _g = self.gate.read();
        let mut m = self.lock();
        let allocated_clusters = m.allocated_clusters()?;
        let h = &m.hdr;
        Ok(Qcow2Info {
            version: h.version,
            cluster_size: h.cluster_size(),
            refcount_bits: 1 << h.refcount_order,
            virtual_size: h.size,
            backing_file: h.backing_file.clone(),
            backing_format: h.backing_format.clone(),
            dirty: h.incompatible & header::INCOMPAT_DIRTY != 0,
            corrupt: h.incompatible & header::INCOMPAT_CORRUPT != 0 || m.corrupt,
            lazy_refcounts: h.compatible & header::COMPAT_LAZY_REFCOUNTS != 0,
            compression_type: h.compression,
            snapshot_count: h.nb_snapshots,
            allocated_clusters,
        })
    }

    /// Grows the virtual size to `new_size` bytes (a multiple of 512).
    /// Shrinking is refused.
    pub fn resize(&self, new_size: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        if !new_size.is_multiple_of(SECTOR_SIZE) {
            return Err(Error::InvalidArgument(format!(
                "size {new_size} is not a multiple of {SECTOR_SIZE}"
            )));
        }
        if new_size > i64::MAX as u64 {
            return Err(Error::InvalidArgument(format!(
                "size {new_size} is too large"
            )));
        }
        let _g = self.gate.write();
        let mut m = self.lock();
        let old = self.size.load(Ordering::Acquire);
        if new_size < old {
            return Err(Error::Unsupported {
                path: self.path.clone(),
                what: "shrinking a qcow2 image".into(),
            });
        }
        m.grow(new_size)?;
        m.flush()?;
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }

    /// Checks the image's metadata; with `repair_leaks` (on a writable
    /// image) lowers leaked refcounts to the references found.
    pub fn check(&self, repair_leaks: bool) -> Result<CheckReport> {
        if repair_leaks && self.read_only {
            return Err(Error::ReadOnly);
        }
        let _g = self.gate.write();
        self.lock().check(repair_leaks)
    }

    /// Flushes the image and leaves it consistent on disk (refcounts
    /// written, dirty bit cleared), reporting errors that dropping it
    /// would only log.
    pub fn close(self) -> Result<()> {
        let r = {
            let mut m = self.lock();
            m.close()
        };
        // Drop's close finds nothing left to do.
        drop(self);
        r
    }

    fn read_backing(&self, buf: &VolatileSlice<'_>, guest: u64) -> Result<()> {
        let Some(b) = &self.backing else {
            fill_zero(buf);
            return Ok(());
        };
        let bsize = b.size();
        let len = buf.len() as u64;
        let n = if guest >= bsize {
            0
        } else {
            len.min(bsize - guest)
        };
        if n > 0 {
            let mut s = buf.subslice(0, n as usize).map_err(vm_err)?;
            b.read_at(&mut s, guest)?;
        }
        if n < len {
            fill_zero(
                &buf.subslice(n as usize, (len - n) as usize)
                    .map_err(vm_err)?,
            );
        }
        Ok(())
    }

    /// Maps `guest..guest + len` without the metadata lock, when the cached
    /// L2 table answers: the host offset of `guest` and how many bytes from
    /// it (at most `len`) are contiguous data clusters (for a `write`,
    /// writable in place).
    fn fast_map(&self, guest: u64, len: u64, write: bool) -> Option<(u64, u64)> {
        let cb = self.cluster_bits;
        let cs = 1u64 << cb;
        let l2_bits = cb - 3;
        let in_cluster = guest & (cs - 1);
        let first = ((guest >> cb) & ((1 << l2_bits) - 1)) as usize;
        let want = (in_cluster + len).div_ceil(cs);
        let want = usize::try_from(want).unwrap_or(usize::MAX);
        let (host, n) = self
            .fast
            .lookup(guest >> (cb + l2_bits), first, want, write)?;
        Some((host + in_cluster, (n as u64 * cs - in_cluster).min(len)))
    }

    fn read_inner(&self, buf: &VolatileSlice<'_>, offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        let cs = 1u64 << self.cluster_bits;
        let mut pos = 0u64;
        while pos < len {
            let guest = offset + pos;
            if let Some((host, run)) = self.fast_map(guest, len - pos, false) {
                let sub = buf.subslice(pos as usize, run as usize).map_err(vm_err)?;
                pread_volatile(&self.data, &sub, host)?;
                pos += run;
                continue;
            }
            let (m, run) = {
                let mut meta = self.lock();
                let (m, run) = meta.map(guest, len - pos)?;
                if let Mapping::Compressed(e) = m {
                    let data = meta.read_compressed(e)?;
                    let start = (guest & (cs - 1)) as usize;
                    buf.subslice(pos as usize, run as usize)
                        .map_err(vm_err)?
                        .copy_from(&data[start..start + run as usize]);
                    pos += run;
                    continue;
                }
                (m, run)
            };
            let sub = buf.subslice(pos as usize, run as usize).map_err(vm_err)?;
            match m {
                Mapping::Data(host) => pread_volatile(&self.data, &sub, host)?,
                Mapping::Zero => fill_zero(&sub),
                Mapping::Unallocated => self.read_backing(&sub, guest)?,
                Mapping::Compressed(_) => {}
            }
            pos += run;
        }
        Ok(())
    }

    /// The guest-visible contents of one cluster before a write, given its
    /// L2 entry.
    /// The buffer is aligned for the data descriptor (`O_DIRECT`).
    fn old_cluster(&self, meta: &mut Meta, entry: u64, guest: u64) -> Result<AlignedBuf> {
        let cs = meta.cluster_size as usize;
        let mut buf = AlignedBuf::zeroed(cs);
        let data = buf.as_mut_slice();
        match meta.classify(entry)? {
            Mapping::Data(off) => pread_volatile(&self.data, &VolatileSlice::from(data), off)?,
            Mapping::Zero => {}
            Mapping::Unallocated => {
                let s = VolatileSlice::from(data);
                self.read_backing(&s, guest)?;
            }
            Mapping::Compressed(e) => data.copy_from_slice(meta.read_compressed(e)?),
        }
        Ok(buf)
    }

    /// An allocating write of `data` at `guest`, within one L2 table: new
    /// clusters get the data (and the old contents around it), then the
    /// L2 entries point at them, then the old clusters are freed.
    fn write_alloc(&self, meta: &mut Meta, data: &VolatileSlice<'_>, guest: u64) -> Result<()> {
        let cs = meta.cluster_size;
        let len = data.len() as u64;
        let first = guest & !(cs - 1);
        let end = guest + len;
        let n = (end - first).div_ceil(cs);
        meta.l2_for_write(guest)?;
        let mut old = Vec::with_capacity(n as usize);
        for k in 0..n {
            old.push(meta.l2_entry(first + k * cs)?);
        }
        let host = meta.alloc_clusters(n)?;
        let mut k = 0;
        while k < n {
            let g = first + k * cs;
            let lo = g.max(guest);
            let hi = (g + cs).min(end);
            if lo == g && hi == g + cs {
                // Full clusters: straight from the caller's buffer.
                let mut m = 1;
                while k + m < n && first + (k + m + 1) * cs <= end {
                    m += 1;
                }
                let src = data
                    .subslice((g - guest) as usize, (m * cs) as usize)
                    .map_err(vm_err)?;
                pwrite_volatile(&self.data, &src, host + k * cs)?;
                k += m;
                continue;
            }
            let mut old_data = self.old_cluster(meta, old[k as usize], g)?;
            let buf = old_data.as_mut_slice();
            data.subslice((lo - guest) as usize, (hi - lo) as usize)
                .map_err(vm_err)?
                .copy_to(&mut buf[(lo - g) as usize..(hi - g) as usize]);
            pwrite_volatile(&self.data, &VolatileSlice::from(buf), host + k * cs)?;
            k += 1;
        }
        for k in 0..n {
            let prev = meta.set_l2_entry(first + k * cs, (host + k * cs) | meta::COPIED)?;
            meta.free_entry_later(prev);
        }
        Ok(())
    }

    fn write_inner(&self, buf: &VolatileSlice<'_>, offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        let cs = 1u64 << self.cluster_bits;
        let max_alloc = (MAX_ALLOC_BYTES / cs).max(1);
        let mut pos = 0u64;
        while pos < len {
            let guest = offset + pos;
            if let Some((host, run)) = self.fast_map(guest, len - pos, true) {
                let sub = buf.subslice(pos as usize, run as usize).map_err(vm_err)?;
                pwrite_volatile(&self.data, &sub, host)?;
                pos += run;
                continue;
            }
            let mut meta = self.lock();
            if meta.corrupt {
                return Err(Error::MarkedCorrupt {
                    path: self.path.clone(),
                });
            }
            let (wm, run) = meta.map_for_write(guest, len - pos, max_alloc)?;
            let sub = buf.subslice(pos as usize, run as usize).map_err(vm_err)?;
            match wm {
                WriteMapping::InPlace(host) => {
                    drop(meta);
                    pwrite_volatile(&self.data, &sub, host)?;
                }
                WriteMapping::Allocate => self.write_alloc(&mut meta, &sub, guest)?,
            }
            pos += run;
        }
        Ok(())
    }

    /// Writes zeros over `offset..offset + len` through the write path.
    fn write_zero_bytes(&self, offset: u64, len: u64) -> Result<()> {
        // Aligned for the data descriptor (`O_DIRECT`).
        let mut buf = AlignedBuf::zeroed((len.min(ZERO_CHUNK as u64)) as usize);
        let zeros = buf.as_mut_slice();
        let mut pos = 0;
        while pos < len {
            let n = (len - pos).min(zeros.len() as u64) as usize;
            let s = VolatileSlice::from(&mut zeros[..n]);
            self.write_inner(&s, offset + pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Runs the frees queued by discards once too many wait.
    fn maybe_flush_frees(&self) -> Result<()> {
        if self.lock().pending_frees.len() > MAX_PENDING_FREES {
            let _g = self.gate.write();
            self.lock().flush()?;
        }
        Ok(())
    }
}

/// The size of an image file, or of a block device (whose `st_size` is 0).
fn file_size(file: &File) -> Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        use std::io::{Seek, SeekFrom};
        let mut f = file;
        return Ok(f.seek(SeekFrom::End(0))?);
    }
    Ok(meta.len())
}

fn read_exact(file: &File, buf: &mut [u8], off: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, off)?;
    Ok(())
}

fn be64s(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_be_bytes(a)
        })
        .collect()
}

impl DiskImage for Qcow2Image {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn discard_granularity(&self) -> u32 {
        1 << self.cluster_bits
    }

    fn read_at(&self, buf: &mut VolatileSlice<'_>, offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        let _g = self.gate.read();
        self.read_inner(buf, offset)
    }

    fn write_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> Result<()> {
        check_write(self.read_only, offset, buf.len() as u64, self.size())?;
        let _g = self.gate.read();
        self.write_inner(buf, offset)
    }

    fn flush(&self) -> Result<()> {
        let _g = self.gate.write();
        let mut m = self.lock();
        if self.read_only {
            return Ok(());
        }
        m.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        check_write(self.read_only, offset, len, self.size())?;
        let cs = 1u64 << self.cluster_bits;
        let start = offset.div_ceil(cs) * cs;
        let end = (offset + len) & !(cs - 1);
        if start < end {
            let _g = self.gate.read();
            let mut m = self.lock();
            m.begin_metadata_update()?;
            m.drop_clusters(start, (end - start) / cs, false)?;
        }
        self.maybe_flush_frees()
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        check_write(self.read_only, offset, len, self.size())?;
        if len == 0 {
            return Ok(());
        }
        let cs = 1u64 << self.cluster_bits;
        let end = offset + len;
        let start_full = offset.div_ceil(cs) * cs;
        let end_full = end & !(cs - 1);
        {
            let _g = self.gate.read();
            if start_full >= end_full {
                return self.write_zero_bytes(offset, len);
            }
            self.write_zero_bytes(offset, start_full - offset)?;
            self.write_zero_bytes(end_full, end - end_full)?;
            let has_backing = self.backing.is_some() || self.lock().has_backing;
            if self.version >= 3 || (unmap && !has_backing) {
                let mut m = self.lock();
                m.begin_metadata_update()?;
                m.drop_clusters(start_full, (end_full - start_full) / cs, !unmap)?;
            } else {
                self.write_zero_bytes(start_full, end_full - start_full)?;
            }
        }
        self.maybe_flush_frees()
    }
}

impl Drop for Qcow2Image {
    fn drop(&mut self) {
        let mut m = self.lock();
        if let Err(e) = m.close() {
            log::error!("{}: closing the image failed: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests;
