//! Positioned file I/O straight into and out of guest memory slices: one
//! `pread`/`pwrite` loop for every image format, with no bounce copy.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vm_memory::VolatileSlice;

/// Reads file bytes at `off` into `buf` until it is full or the file ends;
/// returns how many bytes were read (less than `buf.len()` only at the end
/// of the file). Retries on EINTR.
pub(crate) fn pread_volatile(file: &File, buf: &VolatileSlice<'_>, off: u64) -> io::Result<usize> {
    let len = buf.len();
    let guard = buf.ptr_guard_mut();
    let base = guard.as_ptr();
    let mut done = 0usize;
    while done < len {
        let pos = off
            .checked_add(done as u64)
            .and_then(|p| libc::off64_t::try_from(p).ok())
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `base` points to `len` bytes valid for writes (the
        // VolatileSlice's invariant, kept mapped by `guard` for the whole
        // call) and `done < len`, so the kernel writes at most `len - done`
        // bytes, inside them. The descriptor is owned by `file` and open.
        let n = unsafe { libc::pread64(file.as_raw_fd(), base.add(done).cast(), len - done, pos) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    Ok(done)
}

/// Writes all of `buf` to the file at `off`. Retries on EINTR; a write
/// that makes no progress is an error.
pub(crate) fn pwrite_volatile(file: &File, buf: &VolatileSlice<'_>, off: u64) -> io::Result<()> {
    let len = buf.len();
    let guard = buf.ptr_guard();
    let base = guard.as_ptr();
    let mut done = 0usize;
    while done < len {
        let pos = off
            .checked_add(done as u64)
            .and_then(|p| libc::off64_t::try_from(p).ok())
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `base` points to `len` bytes valid for reads (the
        // VolatileSlice's invariant, kept mapped by `guard`) and
        // `done < len`, so the kernel reads only inside them. The
        // descriptor is owned by `file` and open.
        let n = unsafe { libc::pwrite64(file.as_raw_fd(), base.add(done).cast(), len - done, pos) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        done += n as usize;
    }
    Ok(())
}
