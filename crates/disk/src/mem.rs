//! Disk images without a file, for tests and benchmarks (`test-utils`).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use vm_memory::VolatileSlice;

use crate::image::{check_range, check_write};
use crate::{DiskImage, Error, Result, SECTOR_SIZE};

/// A disk image held in memory. Discarded ranges read as zeros.
///
/// [`MemDisk::fail_io`] makes every later access fail with an I/O error,
/// to test how devices report backend errors.
#[derive(Debug)]
pub struct MemDisk {
    data: RwLock<Vec<u8>>,
    read_only: bool,
    fail: AtomicBool,
}

impl MemDisk {
    /// A zero-filled image of `size` bytes (rounded down to a sector).
    pub fn new(size: usize, read_only: bool) -> Self {
        Self::with_contents(vec![0; size], read_only)
    }

    /// An image holding `data` (truncated to a whole number of sectors).
    pub fn with_contents(mut data: Vec<u8>, read_only: bool) -> Self {
        data.truncate(data.len() - data.len() % SECTOR_SIZE as usize);
        MemDisk {
            data: RwLock::new(data),
            read_only,
            fail: AtomicBool::new(false),
        }
    }

    /// A copy of the image's current contents.
    pub fn contents(&self) -> Vec<u8> {
        self.read().clone()
    }

    /// Makes every later read, write, flush, discard and write-zeroes fail
    /// (or succeed again, with `false`).
    pub fn fail_io(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }

    fn check_fail(&self) -> Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(Error::Io(io::Error::other("injected I/O error")));
        }
        Ok(())
    }

    // A panic while holding the lock cannot leave the bytes inconsistent in
    // a way that matters to a test double; ignore poisoning.
    fn read(&self) -> RwLockReadGuard<'_, Vec<u8>> {
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Vec<u8>> {
        self.data.write().unwrap_or_else(|e| e.into_inner())
    }

    fn fill_zero(&self, offset: u64, len: u64) -> Result<()> {
        check_write(self.read_only, offset, len, self.size())?;
        self.check_fail()?;
        // In range, so both fit in usize.
        let (start, end) = (offset as usize, (offset + len) as usize);
        self.write()[start..end].fill(0);
        Ok(())
    }
}

impl DiskImage for MemDisk {
    fn size(&self) -> u64 {
        self.read().len() as u64
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut VolatileSlice<'_>, offset: u64) -> Result<()> {
        let data = self.read();
        check_range(offset, buf.len() as u64, data.len() as u64)?;
        self.check_fail()?;
        let start = offset as usize;
        buf.copy_from(&data[start..start + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> Result<()> {
        let mut data = self.write();
        check_write(self.read_only, offset, buf.len() as u64, data.len() as u64)?;
        self.check_fail()?;
        let start = offset as usize;
        buf.copy_to(&mut data[start..start + buf.len()]);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.check_fail()
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.fill_zero(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> Result<()> {
        self.fill_zero(offset, len)
    }
}

/// A disk image that stores nothing: reads return zeros and writes are
/// dropped. It measures the cost of everything but the storage.
#[derive(Debug)]
pub struct NullDisk {
    size: u64,
}

impl NullDisk {
    /// A null image of `size` bytes (rounded down to a sector).
    pub fn new(size: u64) -> Self {
        NullDisk {
            size: size - size % SECTOR_SIZE,
        }
    }
}

impl DiskImage for NullDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn is_read_only(&self) -> bool {
        false
    }

    fn read_at(&self, buf: &mut VolatileSlice<'_>, offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(ZEROS.len());
            buf.subslice(done, n)
                .map_err(|e| Error::Io(io::Error::other(e)))?
                .copy_from(&ZEROS[..n]);
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, buf: &VolatileSlice<'_>, offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.size)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> Result<()> {
        check_range(offset, len, self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_disk_round_trips_and_checks_ranges() {
        let disk = MemDisk::new(4096 + 3, false);
        assert_eq!(disk.size(), 4096);
        let mut data = [7u8; 512];
        disk.write_at(&VolatileSlice::from(&mut data[..]), 1024)
            .unwrap();
        let mut back = [0u8; 512];
        disk.read_at(&mut VolatileSlice::from(&mut back[..]), 1024)
            .unwrap();
        assert_eq!(back, [7; 512]);
        assert!(
            disk.read_at(&mut VolatileSlice::from(&mut back[..]), 3585)
                .is_err()
        );
        disk.discard(1024, 256).unwrap();
        assert!(disk.contents()[1024..1280].iter().all(|&b| b == 0));
        assert_eq!(disk.contents()[1280], 7);

        disk.fail_io(true);
        assert!(matches!(disk.flush(), Err(Error::Io(_))));
        disk.fail_io(false);
        disk.flush().unwrap();

        let ro = MemDisk::new(4096, true);
        assert!(matches!(
            ro.write_at(&VolatileSlice::from(&mut data[..]), 0),
            Err(Error::ReadOnly)
        ));
    }

    #[test]
    fn null_disk_reads_zeros() {
        let disk = NullDisk::new(1 << 20);
        let mut buf = vec![0xffu8; 10000];
        disk.read_at(&mut VolatileSlice::from(&mut buf[..]), 0)
            .unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert!(
            disk.read_at(&mut VolatileSlice::from(&mut buf[..]), (1 << 20) - 512)
                .is_err()
        );
    }
}
