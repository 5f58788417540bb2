//! QEMU-compatible image locks: open-file-description byte-range locks
//! (`F_OFD_SETLK`) on the bytes QEMU's `file-posix` driver uses.
//!
//! QEMU locks byte `100 + bit` of an image for each permission it holds
//! and byte `200 + bit` for each permission it does not share with others
//! (bit 0 is "consistent read", bit 1 is "write"), with shared (read)
//! locks; before taking them it tests, with `F_OFD_GETLK`, whether anyone
//! else holds the bytes that would conflict. Doing the same keeps QEMU
//! (`qemu-io`, `qemu-img`, a running QEMU) from writing an image vmkit has
//! open, and vmkit from opening one QEMU has open for writing.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// QEMU's `BLK_PERM_CONSISTENT_READ` bit.
const PERM_CONSISTENT_READ: i64 = 0;
/// QEMU's `BLK_PERM_WRITE` bit.
const PERM_WRITE: i64 = 1;
/// The byte locked for a permission held.
const PERM_BASE: i64 = 100;
/// The byte locked for a permission not shared.
const SHARED_BASE: i64 = 200;

/// Why an image could not be locked.
#[derive(Debug)]
pub(crate) enum LockError {
    /// Another open file description holds a conflicting lock.
    Conflict,
    /// `fcntl(2)` failed.
    Io(io::Error),
}

fn ofd_lock(file: &File, cmd: libc::c_int, l_type: libc::c_int, byte: i64) -> io::Result<i32> {
    // SAFETY: `flock` is a plain C struct for which all-zero bytes is a
    // valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = l_type as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte as libc::off_t;
    fl.l_len = 1;
    fl.l_pid = 0;
    loop {
        // SAFETY: the descriptor is owned by `file` and open for the call;
        // `fl` is a valid, initialised `struct flock` that F_OFD_SETLK only
        // reads and F_OFD_GETLK overwrites in place, and it outlives the
        // call.
        let ret = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl as *mut libc::flock) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        return Ok(i32::from(fl.l_type));
    }
}

/// Whether another open file description holds a lock on `byte`.
fn held_by_other(file: &File, byte: i64) -> io::Result<bool> {
    let t = ofd_lock(file, libc::F_OFD_GETLK, libc::F_WRLCK, byte)?;
    Ok(t != libc::F_UNLCK)
}

fn take(file: &File, byte: i64) -> Result<(), LockError> {
    match ofd_lock(file, libc::F_OFD_SETLK, libc::F_RDLCK, byte) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => {
            Err(LockError::Conflict)
        }
        Err(e) => Err(LockError::Io(e)),
    }
}

/// Locks `file` the way QEMU does for an image opened read-write
/// (`writable`) or read-only, not sharing write permission either way.
///
/// The locks belong to the open file description and go away when `file`
/// is closed.
pub(crate) fn lock_image(file: &File, writable: bool) -> Result<(), LockError> {
    let write_perm = PERM_BASE + PERM_WRITE;
    let write_unshared = SHARED_BASE + PERM_WRITE;
    // Someone writes: we share no write permission, so that conflicts.
    if held_by_other(file, write_perm).map_err(LockError::Io)? {
        return Err(LockError::Conflict);
    }
    // Someone refuses to share writing: conflicts if we write.
    if writable && held_by_other(file, write_unshared).map_err(LockError::Io)? {
        return Err(LockError::Conflict);
    }
    take(file, PERM_BASE + PERM_CONSISTENT_READ)?;
    if writable {
        take(file, write_perm)?;
    }
    take(file, write_unshared)?;
    Ok(())
}
