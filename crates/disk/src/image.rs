//! The interface between device models and disk image formats.

use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::sync::OnceLock;

use vm_memory::VolatileSlice;

use crate::{Error, Result};

/// The size of a sector, the unit virtio-blk (and most guests) address
/// disks in.
pub const SECTOR_SIZE: u64 = 512;

/// A disk image: a fixed-size array of bytes that guest memory is read
/// from and written to.
///
/// Implementations are shared between threads (a device's event loop, the
/// VMM) and take `&self`, locking internally where their format needs it.
/// Every method checks its range against [`DiskImage::size`] and returns
/// [`Error::OutOfRange`] rather than doing a short or partial access.
pub trait DiskImage: Debug + Send + Sync {
    /// The size of the image, in bytes (a multiple of [`SECTOR_SIZE`]).
    fn size(&self) -> u64;

    /// Whether the image was opened read-only: [`DiskImage::write_at`],
    /// [`DiskImage::discard`] and [`DiskImage::write_zeroes`] then fail with
    /// [`Error::ReadOnly`].
    fn is_read_only(&self) -> bool;

    /// The logical block size the image prefers, in bytes.
    fn block_size(&self) -> u32 {
        SECTOR_SIZE as u32
    }

    /// The granularity, in bytes, at which [`DiskImage::discard`] actually
    /// frees space; smaller or unaligned discards may free nothing.
    fn discard_granularity(&self) -> u32 {
        self.block_size()
    }

    /// Fills `buf` with the image's bytes at `offset..offset + buf.len()`.
    fn read_at(&self, buf: &mut VolatileSlice<'_>, offset: u64) -> Result<()>;

    /// Writes `buf` to the image at `offset..offset + buf.len()`.
    fn write_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> Result<()>;

    /// Makes every completed write durable. The file-backed images fail
    /// every flush after one that failed: the host may have dropped the
    /// data it could not write, and would not say so again.
    fn flush(&self) -> Result<()>;

    /// Tells the image that `offset..offset + len` is no longer used. The
    /// image may free the space; the range's contents afterwards are
    /// unspecified by this trait (each implementation documents them).
    fn discard(&self, offset: u64, len: u64) -> Result<()>;

    /// Makes `offset..offset + len` read as zeros. With `unmap`, the image
    /// may free the space as [`DiskImage::discard`] would, but the range
    /// reads as zeros either way.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()>;
}

/// Checks that `offset..offset + len` lies within an image of `size` bytes.
pub(crate) fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange { offset, len, size }),
    }
}

/// Checks a write-like access: the image must be writable and the range in
/// bounds.
pub(crate) fn check_write(read_only: bool, offset: u64, len: u64, size: u64) -> Result<()> {
    if read_only {
        return Err(Error::ReadOnly);
    }
    check_range(offset, len, size)
}

/// `fdatasync(2)` of `file`, failing for good once it has failed: the
/// first error is kept in `failed`.
pub(crate) fn sticky_sync(file: &File, failed: &OnceLock<String>) -> Result<()> {
    if let Some(first) = failed.get() {
        return Err(Error::Io(io::Error::other(format!(
            "an earlier flush failed ({first}); data written before it may be lost"
        ))));
    }
    file.sync_data().map_err(|e| {
        let _ = failed.set(e.to_string());
        Error::Io(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_sync_fails_every_later_one() {
        // fdatasync(2) of a pipe fails (EINVAL): a stand-in for the EIO of
        // a failed writeback, which a later fdatasync would not report.
        let (reader, _writer) = io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(reader));
        let failed = OnceLock::new();
        let first = sticky_sync(&file, &failed).unwrap_err().to_string();
        assert!(first.contains("Invalid argument"), "{first}");
        for _ in 0..2 {
            let again = sticky_sync(&file, &failed).unwrap_err().to_string();
            assert!(again.contains("an earlier flush failed"), "{again}");
            assert!(again.contains("Invalid argument"), "{again}");
        }
    }
}
