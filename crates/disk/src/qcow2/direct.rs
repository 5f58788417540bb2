//! `O_DIRECT` for qcow2 images (QEMU's `cache=none`).
//!
//! Guest data goes through a second descriptor of the image file opened
//! with `O_DIRECT`: reads and writes of data clusters (in place, newly
//! allocated, and the copy-on-write of a partly written cluster) bypass
//! the page cache. Metadata (header, L1 and L2 tables, refcounts) and
//! compressed clusters stay on the first, buffered descriptor, which holds
//! the image's locks:
//!
//! - Coherence: a page never holds metadata and data at once, because
//!   clusters are at least a page (smaller clusters are refused) and
//!   cluster-aligned. A cluster changes roles (data to metadata or back)
//!   only after it is freed, and frees run with no data I/O in flight (the
//!   image's I/O gate), so the buffered and direct descriptors never touch
//!   one page at the same time. The kernel writes dirty pages back before
//!   a direct read or write of their range and drops them after a direct
//!   write, so a direct read also sees a cluster written through the page
//!   cache before the image was opened (by QEMU, say).
//! - Crash ordering: `fdatasync(2)` works on the file, not the descriptor:
//!   the syncs that order metadata writes also flush the device's cache
//!   for completed direct writes and commit the file system's records of
//!   their blocks, so every ordering rule of the buffered image holds.
//!
//! Doing metadata I/O through the direct descriptor instead would need
//! read-modify-write of whole blocks for the header's small fields, and a
//! block shared by metadata and data (with clusters smaller than a block)
//! would race with data writes done outside the metadata lock.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::{Error, Result};

/// The alignment of the buffers this module hands out: a page, which every
/// device's direct I/O accepts.
pub(crate) const DIRECT_ALIGN: usize = 4096;

/// The host's page size.
fn page_size() -> u64 {
    // SAFETY: sysconf reads a system constant; it takes no pointers.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).unwrap_or(DIRECT_ALIGN as u64)
}

/// Opens a second descriptor of `file` (opened from `path`) with
/// `O_DIRECT`, for data clusters of `cluster_size` bytes. It takes no
/// locks: `file` holds them, for the same file.
pub(crate) fn open_direct(
    path: &Path,
    file: &File,
    read_only: bool,
    cluster_size: u64,
) -> Result<File> {
    let page = page_size().max(DIRECT_ALIGN as u64);
    if cluster_size < page {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            what: format!(
                "O_DIRECT (cache=none) with {cluster_size}-byte clusters (smaller than a {page}-byte page)"
            ),
        });
    }
    let open_err = |source| Error::Open {
        path: path.to_path_buf(),
        source,
    };
    let direct = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(open_err)?;
    // The path may name another file by now.
    let (a, b) = (
        file.metadata().map_err(open_err)?,
        direct.metadata().map_err(open_err)?,
    );
    if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
        return Err(open_err(std::io::Error::other(
            "the file was replaced while it was opened",
        )));
    }
    Ok(direct)
}

/// A zeroed buffer aligned to [`DIRECT_ALIGN`], for I/O through an
/// `O_DIRECT` descriptor.
pub(crate) struct AlignedBuf {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` zero bytes.
    pub(crate) fn zeroed(len: usize) -> Self {
        let buf = vec![0u8; len + DIRECT_ALIGN];
        let addr = buf.as_ptr() as usize;
        let start = addr.next_multiple_of(DIRECT_ALIGN) - addr;
        AlignedBuf { buf, start, len }
    }

    /// The bytes.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned_and_zeroed() {
        for len in [512, 4096, 65536 + 512] {
            let mut b = AlignedBuf::zeroed(len);
            let s = b.as_mut_slice();
            assert_eq!(s.len(), len);
            assert_eq!(s.as_ptr() as usize % DIRECT_ALIGN, 0);
            assert!(s.iter().all(|&x| x == 0));
        }
    }
}
