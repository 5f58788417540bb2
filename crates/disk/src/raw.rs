//! Raw images: the guest's disk is the file's bytes, one for one.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use log::{debug, warn};
use vm_memory::VolatileSlice;
use vmm_sys_util::fallocate::{FallocateMode, fallocate};

use crate::image::{check_range, check_write, sticky_sync};
use crate::{DiskImage, Error, Result, SECTOR_SIZE};

/// The largest buffer of zeros written at once when the file system cannot
/// zero a range by itself.
const ZERO_CHUNK: usize = 64 * 1024;

/// How [`RawImage::open_with`] opens a raw image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawOpenOptions {
    /// Open read-only (and take a shared lock).
    pub read_only: bool,
    /// Bypass the host page cache with `O_DIRECT` (QEMU's `cache=none`).
    pub direct: bool,
}

/// A raw disk image: a regular file or a block device whose bytes are the
/// disk's bytes.
///
/// The image holds an advisory lock (`flock(2)`) for as long as it is open:
/// exclusive when writable, shared when read-only, so two VMMs (or two
/// disks of one VMM) cannot write one image, and nobody writes an image
/// that is open read-only. It also takes QEMU's byte-range locks (as
/// qcow2 images do), so QEMU cannot write the image while it is open here.
///
/// A file whose size is not a multiple of [`SECTOR_SIZE`] is accepted and
/// its size rounded down (with a warning): the trailing partial sector is
/// never read or written.
///
/// Guest memory is read and written by `pread(2)`/`pwrite(2)` directly on
/// the [`VolatileSlice`]'s memory, without a bounce buffer. Discarded
/// ranges are punched out of the file (`FALLOC_FL_PUNCH_HOLE`) and read as
/// zeros afterwards; on a file system without hole support, discard does
/// nothing.
#[derive(Debug)]
pub struct RawImage {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
    /// The file system's block size: the granularity of hole punching.
    fs_block_size: u32,
    /// The error of the first flush that failed: every later flush fails
    /// too (see [`RawImage::flush`](DiskImage::flush)).
    flush_failed: OnceLock<String>,
}

impl RawImage {
    /// Opens the raw image at `path`, read-write unless `read_only`, and
    /// locks it.
    ///
    /// Fails with [`Error::Open`] when the file is missing or not
    /// accessible, [`Error::NotAnImage`] for a directory or another kind of
    /// special file, and [`Error::InUse`] when another open holds a
    /// conflicting lock.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> Result<Self> {
        Self::open_with(
            path,
            RawOpenOptions {
                read_only,
                ..RawOpenOptions::default()
            },
        )
    }

    /// Opens the raw image at `path` as `options` say, and locks it: as
    /// [`RawImage::open`] does, and with `O_DIRECT` when `options.direct`.
    ///
    /// With `O_DIRECT` (QEMU's `cache=none`), the page cache is bypassed
    /// and every read and write must have its buffer, offset and length
    /// aligned to the device's logical block size (page-aligned buffers
    /// and 4 KiB multiples are always safe); the kernel fails a misaligned
    /// access with `EINVAL`, reported as [`Error::Io`]. A file system
    /// without `O_DIRECT` support (tmpfs) fails the open with
    /// [`Error::Open`].
    pub fn open_with(path: impl AsRef<Path>, options: RawOpenOptions) -> Result<Self> {
        let RawOpenOptions { read_only, direct } = options;
        let path = path.as_ref().to_path_buf();
        let open_err = |source| Error::Open {
            path: path.clone(),
            source,
        };
        // Check the kind first: opening a FIFO would block, and a directory
        // opens fine read-only.
        let kind = std::fs::metadata(&path).map_err(open_err)?.file_type();
        if !(kind.is_file() || kind.is_block_device()) {
            return Err(Error::NotAnImage { path });
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(if direct { libc::O_DIRECT } else { 0 })
            .open(&path)
            .map_err(open_err)?;
        // The path may have been replaced between the two looks.
        let meta = file.metadata().map_err(open_err)?;
        let kind = meta.file_type();
        if !(kind.is_file() || kind.is_block_device()) {
            return Err(Error::NotAnImage { path });
        }

        let op = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: `file` owns a valid open file descriptor for the duration
        // of the call; flock only changes the lock state of its open file
        // description and touches no memory of ours.
        let ret = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                Error::InUse { path }
            } else {
                open_err(err)
            });
        }
        // QEMU's byte-range locks too, so that QEMU keeps out as well.
        match crate::lock::lock_image(&file, !read_only) {
            Ok(()) => {}
            Err(crate::lock::LockError::Conflict) => return Err(Error::InUse { path }),
            Err(crate::lock::LockError::Io(e)) => return Err(open_err(e)),
        }

        // Works for regular files and block devices alike; reads and writes
        // are positioned, so the file offset does not matter afterwards.
        let len = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        let size = len - len % SECTOR_SIZE;
        if size != len {
            warn!(
                "disk image {}: size {len} is not a multiple of {SECTOR_SIZE} bytes; \
                 the last {} bytes are not visible to the guest",
                path.display(),
                len - size
            );
        }
        // st_blksize is a power of two in practice; keep a sane value
        // otherwise.
        let fs_block_size = u32::try_from(meta.blksize())
            .ok()
            .filter(|b| b.is_power_of_two() && u64::from(*b) >= SECTOR_SIZE)
            .unwrap_or(SECTOR_SIZE as u32);
        Ok(RawImage {
            file,
            path,
            size,
            read_only,
            fs_block_size,
            flush_failed: OnceLock::new(),
        })
    }

    /// The path the image was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes zeros to `offset..offset + len` with `pwrite(2)`, in chunks of
    /// at most [`ZERO_CHUNK`] bytes.
    fn write_zero_bytes(&self, offset: u64, len: u64) -> io::Result<()> {
        let chunk = usize::try_from(len).map_or(ZERO_CHUNK, |l| l.min(ZERO_CHUNK));
        let zeros = vec![0u8; chunk];
        let mut done = 0u64;
        while done < len {
            // `chunk` bounds the cast.
            let n = (len - done).min(chunk as u64) as usize;
            self.file.write_all_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

impl DiskImage for RawImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn discard_granularity(&self) -> u32 {
        self.fs_block_size
    }

    fn read_at(&self, buf: &mut VolatileSlice<'_>, offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        let done = crate::file_io::pread_volatile(&self.file, buf, offset)?;
        if done < buf.len() {
            // The file shrank under us.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} ends before offset {}",
                    self.path.display(),
                    offset + done as u64
                ),
            )
            .into());
        }
        Ok(())
    }

    fn write_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> Result<()> {
        check_write(self.read_only, offset, buf.len() as u64, self.size)?;
        Ok(crate::file_io::pwrite_volatile(&self.file, buf, offset)?)
    }

    /// `fdatasync(2)`. Once it has failed, every later flush fails too:
    /// the kernel may have dropped the dirty pages that could not be
    /// written and reports the error only once, so a later `fdatasync`
    /// that succeeds would tell the guest that lost data is durable
    /// (QEMU's file-posix driver does the same).
    fn flush(&self) -> Result<()> {
        sticky_sync(&self.file, &self.flush_failed)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        check_write(self.read_only, offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        match fallocate(&self.file, FallocateMode::PunchHole, true, offset, len) {
            Ok(()) => Ok(()),
            Err(e) if e.errno() == libc::EOPNOTSUPP => {
                // Discard is a hint; the file system cannot take it.
                debug!("{}: discard not supported: {e}", self.path.display());
                Ok(())
            }
            Err(e) => Err(io::Error::from(e).into()),
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        check_write(self.read_only, offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        // A punched hole reads as zeros, in files and block devices alike.
        if unmap && fallocate(&self.file, FallocateMode::PunchHole, true, offset, len).is_ok() {
            return Ok(());
        }
        match fallocate(&self.file, FallocateMode::ZeroRange, true, offset, len) {
            Ok(()) => Ok(()),
            Err(e) => {
                debug!(
                    "{}: FALLOC_FL_ZERO_RANGE failed ({e}), writing zeros",
                    self.path.display()
                );
                self.write_zero_bytes(offset, len)?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
    use vmm_sys_util::tempdir::TempDir;

    use super::*;

    type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

    const MIB: u64 = 1 << 20;

    fn image_file(dir: &TempDir, name: &str, len: u64) -> PathBuf {
        let path = dir.as_path().join(name);
        File::create(&path).unwrap().set_len(len).unwrap();
        path
    }

    fn tempdir() -> TempDir {
        TempDir::new_with_prefix("/tmp/vmkit-disk-test").unwrap()
    }

    fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn write_then_read_through_guest_memory() {
        let dir = tempdir();
        let path = image_file(&dir, "disk.img", MIB);
        let disk = RawImage::open(&path, false).unwrap();
        assert_eq!(disk.size(), MIB);
        assert!(!disk.is_read_only());
        assert_eq!(disk.block_size(), 512);
        let granularity = disk.discard_granularity();
        assert!(granularity.is_power_of_two() && granularity >= 512);

        let mem = guest_memory();
        let data = pattern(8192, 7);
        mem.write_slice(&data, GuestAddress(0x1000)).unwrap();
        let src = mem.get_slice(GuestAddress(0x1000), 8192).unwrap();
        disk.write_at(&src, 3 * 512).unwrap();

        // The file holds the bytes at the right place, nothing around them.
        let file = std::fs::read(&path).unwrap();
        assert_eq!(&file[3 * 512..3 * 512 + 8192], &data[..]);
        assert!(file[..3 * 512].iter().all(|&b| b == 0));
        assert!(file[3 * 512 + 8192..].iter().all(|&b| b == 0));

        // Read a sub-range back into a different place of guest memory.
        let mut dst = mem.get_slice(GuestAddress(0x8000), 1024).unwrap();
        disk.read_at(&mut dst, 4 * 512).unwrap();
        let mut back = vec![0u8; 1024];
        mem.read_slice(&mut back, GuestAddress(0x8000)).unwrap();
        assert_eq!(back, &data[512..1536]);

        // The last sector is reachable.
        let mut last = mem.get_slice(GuestAddress(0x9000), 512).unwrap();
        disk.read_at(&mut last, MIB - 512).unwrap();
    }

    #[test]
    fn out_of_range_accesses_fail_and_change_nothing() {
        let dir = tempdir();
        let path = image_file(&dir, "disk.img", MIB);
        let disk = RawImage::open(&path, false).unwrap();
        let mem = guest_memory();
        mem.write_slice(&[0x5a; 1024], GuestAddress(0)).unwrap();
        let buf = mem.get_slice(GuestAddress(0), 1024).unwrap();

        for offset in [MIB - 512, MIB, MIB + 512, u64::MAX - 100] {
            let err = disk.write_at(&buf, offset).unwrap_err();
            assert!(matches!(err, Error::OutOfRange { .. }), "{err}");
            let mut b = buf;
            let err = disk.read_at(&mut b, offset).unwrap_err();
            assert!(matches!(err, Error::OutOfRange { .. }), "{err}");
        }
        for (offset, len) in [(0, MIB + 1), (MIB, 1), (u64::MAX, 2), (512, u64::MAX)] {
            assert!(matches!(
                disk.discard(offset, len),
                Err(Error::OutOfRange { .. })
            ));
            assert!(matches!(
                disk.write_zeroes(offset, len, false),
                Err(Error::OutOfRange { .. })
            ));
        }
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn read_only_image_refuses_writes() {
        let dir = tempdir();
        let path = image_file(&dir, "disk.img", MIB);
        std::fs::write(&path, pattern(MIB as usize, 3)).unwrap();
        let disk = RawImage::open(&path, true).unwrap();
        assert!(disk.is_read_only());

        let mem = guest_memory();
        let buf = mem.get_slice(GuestAddress(0), 512).unwrap();
        assert!(matches!(disk.write_at(&buf, 0), Err(Error::ReadOnly)));
        assert!(matches!(disk.discard(0, 4096), Err(Error::ReadOnly)));
        assert!(matches!(
            disk.write_zeroes(0, 4096, true),
            Err(Error::ReadOnly)
        ));
        disk.flush().unwrap();

        let mut dst = buf;
        disk.read_at(&mut dst, 512).unwrap();
        let mut back = [0u8; 512];
        mem.read_slice(&mut back, GuestAddress(0)).unwrap();
        assert_eq!(&back[..], &pattern(MIB as usize, 3)[512..1024]);
        assert_eq!(std::fs::read(&path).unwrap(), pattern(MIB as usize, 3));
    }

    #[test]
    fn discard_punches_a_hole_that_reads_as_zeros() {
        let dir = tempdir();
        let path = image_file(&dir, "disk.img", 0);
        let data = pattern(MIB as usize, 9);
        std::fs::write(&path, &data).unwrap();
        File::open(&path).unwrap().sync_all().unwrap();
        let blocks_before = std::fs::metadata(&path).unwrap().blocks();

        let disk = RawImage::open(&path, false).unwrap();
        disk.discard(256 * 1024, 512 * 1024).unwrap();
        disk.flush().unwrap();

        let file = std::fs::read(&path).unwrap();
        assert_eq!(file.len() as u64, MIB, "discard keeps the size");
        assert_eq!(&file[..256 * 1024], &data[..256 * 1024]);
        assert!(file[256 * 1024..768 * 1024].iter().all(|&b| b == 0));
        assert_eq!(&file[768 * 1024..], &data[768 * 1024..]);
        let blocks_after = std::fs::metadata(&path).unwrap().blocks();
        // st_blocks counts 512-byte units; 512 KiB were freed.
        assert!(
            blocks_after + 1024 <= blocks_before,
            "blocks before {blocks_before}, after {blocks_after}"
        );
    }

    #[test]
    fn write_zeroes_zeroes_the_range_only() {
        let dir = tempdir();
        let path = image_file(&dir, "disk.img", 0);
        let data = pattern(MIB as usize, 1);
        std::fs::write(&path, &data).unwrap();
        let disk = RawImage::open(&path, false).unwrap();

        disk.write_zeroes(512, 3 * 512, false).unwrap();
        disk.write_zeroes(64 * 1024, 128 * 1024, true).unwrap();
        disk.write_zeroes(MIB - 512, 512, false).unwrap();
        disk.write_zeroes(4096, 0, false).unwrap();

        let mut expected = data.clone();
        expected[512..4 * 512].fill(0);
        expected[64 * 1024..192 * 1024].fill(0);
        expected[MIB as usize - 512..].fill(0);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn zero_writing_fallback_covers_large_unaligned_ranges() {
        let dir = tempdir();
        let path = image_file(&dir, "disk.img", 0);
        let data = pattern(MIB as usize, 2);
        std::fs::write(&path, &data).unwrap();
        let disk = RawImage::open(&path, false).unwrap();
        // More than one chunk, not a multiple of it.
        disk.write_zero_bytes(1000, 3 * ZERO_CHUNK as u64 + 17)
            .unwrap();
        let mut expected = data.clone();
        expected[1000..1000 + 3 * ZERO_CHUNK + 17].fill(0);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn writes_are_flushed_to_the_file() {
        let dir = tempdir();
        let path = image_file(&dir, "disk.img", MIB);
        let disk = RawImage::open(&path, false).unwrap();
        let mut data = pattern(4096, 5);
        disk.write_at(&VolatileSlice::from(&mut data[..]), 8192)
            .unwrap();
        disk.flush().unwrap();
        let mut file = vec![0u8; 4096];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut file, 8192)
            .unwrap();
        assert_eq!(file, pattern(4096, 5));
    }

    #[test]
    fn lock_conflicts_between_opens() {
        let dir = tempdir();
        let path = image_file(&dir, "disk.img", MIB);

        let rw = RawImage::open(&path, false).unwrap();
        let err = RawImage::open(&path, false).unwrap_err();
        assert!(matches!(err, Error::InUse { .. }), "{err}");
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
        assert!(matches!(
            RawImage::open(&path, true),
            Err(Error::InUse { .. })
        ));
        drop(rw);

        let ro1 = RawImage::open(&path, true).unwrap();
        let ro2 = RawImage::open(&path, true).unwrap();
        assert!(matches!(
            RawImage::open(&path, false),
            Err(Error::InUse { .. })
        ));
        drop((ro1, ro2));
        RawImage::open(&path, false).unwrap();
    }

    #[test]
    fn open_errors_are_clear() {
        let dir = tempdir();
        let missing = dir.as_path().join("missing.img");
        let err = RawImage::open(&missing, false).unwrap_err();
        match &err {
            Error::Open { source, .. } => assert_eq!(source.kind(), io::ErrorKind::NotFound),
            _ => panic!("unexpected error {err}"),
        }
        assert!(err.to_string().contains("missing.img"), "{err}");

        for ro in [false, true] {
            let err = RawImage::open(dir.as_path(), ro).unwrap_err();
            assert!(matches!(err, Error::NotAnImage { .. }), "{err}");
        }
        let err = RawImage::open("/dev/null", false).unwrap_err();
        assert!(matches!(err, Error::NotAnImage { .. }), "{err}");
    }

    #[test]
    fn direct_io_round_trips_aligned_buffers_and_refuses_misaligned_ones() {
        let dir = tempdir();
        let path = image_file(&dir, "direct.img", MIB);
        let options = RawOpenOptions {
            read_only: false,
            direct: true,
        };
        let disk = match RawImage::open_with(&path, options) {
            Ok(disk) => disk,
            // tmpfs has no O_DIRECT; the rest of the suite runs there too.
            Err(Error::Open { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                eprintln!(
                    "skipped: {} does not support O_DIRECT",
                    dir.as_path().display()
                );
                return;
            }
            Err(e) => panic!("{e}"),
        };
        // Guest memory is mmapped, so page-aligned.
        let mem = guest_memory();
        mem.write_slice(&pattern(8192, 4), GuestAddress(0)).unwrap();
        disk.write_at(&mem.get_slice(GuestAddress(0), 8192).unwrap(), 4096)
            .unwrap();
        let mut dst = mem.get_slice(GuestAddress(0x8000), 8192).unwrap();
        disk.read_at(&mut dst, 4096).unwrap();
        let mut back = vec![0u8; 8192];
        mem.read_slice(&mut back, GuestAddress(0x8000)).unwrap();
        assert_eq!(back, pattern(8192, 4));
        assert_eq!(std::fs::read(&path).unwrap()[4096..12288], pattern(8192, 4));

        // A misaligned buffer is refused by the kernel, and nothing is written.
        let misaligned = mem.get_slice(GuestAddress(1), 4096).unwrap();
        assert!(matches!(disk.write_at(&misaligned, 0), Err(Error::Io(_))));
        assert!(
            std::fs::read(&path).unwrap()[..4096]
                .iter()
                .all(|&b| b == 0)
        );
    }

    #[test]
    fn size_is_rounded_down_to_a_sector() {
        let dir = tempdir();
        let path = image_file(&dir, "odd.img", 4096 + 100);
        let disk = RawImage::open(&path, false).unwrap();
        assert_eq!(disk.size(), 4096);
        let mut buf = [0u8; 512];
        let err = disk
            .read_at(&mut VolatileSlice::from(&mut buf[..]), 4096)
            .unwrap_err();
        assert!(matches!(err, Error::OutOfRange { .. }));
        assert_eq!(disk.path(), path);
    }
}
