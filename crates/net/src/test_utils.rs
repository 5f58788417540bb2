//! Helpers for benchmarks and tests of code built on this crate (feature
//! `test-utils`).

use std::cell::Cell;
use std::io;

use vm_memory::VolatileSlice;

use crate::{MAX_FRAME_LEN, NetBackend, VNET_HDR_LEN};

/// A backend with an endless supply of frames and a bottomless sink, so
/// that a benchmark measures the device side only.
///
/// Every [`read_frame`](NetBackend::read_frame) returns a frame of the
/// length given at creation: it writes an all-zero virtio-net header into
/// the buffers and leaves the frame's bytes as the buffers held them (no
/// copy, as a null device does). Like a tap, it stores at most what the
/// buffers hold and returns the bytes stored. Every
/// [`write_frame`](NetBackend::write_frame) takes the whole frame without
/// reading it. Both count what they did.
///
/// ```
/// use vm_memory::VolatileSlice;
/// use vmkit_net::test_utils::NullBackend;
/// use vmkit_net::{NetBackend, VNET_HDR_LEN};
///
/// let backend = NullBackend::new(1514).unwrap();
/// let mut buf = vec![0xffu8; 2048];
/// let n = backend.read_frame(&[VolatileSlice::from(&mut buf[..])])?;
/// assert_eq!(n, VNET_HDR_LEN + 1514);
/// assert!(buf[..VNET_HDR_LEN].iter().all(|&b| b == 0));
/// assert_eq!(backend.frames_read(), 1);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct NullBackend {
    /// Header included.
    read_len: usize,
    frames_read: Cell<u64>,
    frames_written: Cell<u64>,
    bytes_written: Cell<u64>,
}

impl NullBackend {
    /// A backend whose frames are `frame_len` bytes long (virtio-net header
    /// not counted); `None` above [`MAX_FRAME_LEN`].
    pub fn new(frame_len: usize) -> Option<Self> {
        (frame_len <= MAX_FRAME_LEN).then(|| NullBackend {
            read_len: VNET_HDR_LEN + frame_len,
            frames_read: Cell::new(0),
            frames_written: Cell::new(0),
            bytes_written: Cell::new(0),
        })
    }

    /// Frames handed out by `read_frame`.
    pub fn frames_read(&self) -> u64 {
        self.frames_read.get()
    }

    /// Frames taken by `write_frame`.
    pub fn frames_written(&self) -> u64 {
        self.frames_written.get()
    }

    /// Their bytes, virtio-net headers included.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.get()
    }
}

impl NetBackend for NullBackend {
    fn read_frame(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        let mut header = [0u8; VNET_HDR_LEN].as_slice();
        let mut stored = 0usize;
        for buf in bufs {
            if !header.is_empty() {
                let n = buf.len().min(header.len());
                // `n` is within the slice.
                if let Ok(head) = buf.subslice(0, n) {
                    head.copy_from(&header[..n]);
                }
                header = &header[n..];
            }
            stored += buf.len().min(self.read_len - stored);
            if stored == self.read_len {
                break;
            }
        }
        self.frames_read.set(self.frames_read.get() + 1);
        Ok(stored)
    }

    fn write_frame(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        self.frames_written.set(self.frames_written.get() + 1);
        self.bytes_written
            .set(self.bytes_written.get() + len as u64);
        Ok(len)
    }
}

/// Whether `/dev/net/tun` exists; says in one line that the test skips
/// when it does not.
pub fn tun_present() -> bool {
    let present = std::path::Path::new("/dev/net/tun").exists();
    if !present {
        eprintln!("skipped: /dev/net/tun does not exist on this machine");
    }
    present
}

/// Runs `f` on a thread in a new network namespace and returns what it
/// returns, propagating its panic. Network namespaces are per thread, so
/// the namespace (with the bridges and taps made in it) is private to that
/// thread and the processes it spawns, and goes with them. IPv6 is turned
/// off in it, so that a bridge sends nothing a test did not ask for.
///
/// Needs CAP_SYS_ADMIN (root).
pub fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare(2) takes no pointers; CLONE_NEWNET moves only the
        // calling thread into a new network namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {} (run as root)",
            io::Error::last_os_error()
        );
        // /proc/sys/net is the opening thread's namespace's; a kernel
        // without IPv6 has nothing to turn off.
        for conf in ["all", "default"] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1");
        }
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_like_a_tap_and_writes_everything() {
        let b = NullBackend::new(100).unwrap();
        // Split buffers: the header spans both, the frame is truncated to
        // what they hold.
        let (mut a, mut c) = ([0xffu8; 5], [0xffu8; 50]);
        let n = b
            .read_frame(&[
                VolatileSlice::from(&mut a[..]),
                VolatileSlice::from(&mut c[..]),
            ])
            .unwrap();
        assert_eq!(n, 55);
        assert_eq!(a, [0; 5]);
        assert_eq!(c[..7], [0; 7]);
        assert_eq!(c[7], 0xff);
        let mut big = [0u8; 4096];
        assert_eq!(
            b.read_frame(&[VolatileSlice::from(&mut big[..])]).unwrap(),
            VNET_HDR_LEN + 100
        );
        assert_eq!(b.frames_read(), 2);
        assert_eq!(
            b.write_frame(&[
                VolatileSlice::from(&mut a[..]),
                VolatileSlice::from(&mut c[..])
            ])
            .unwrap(),
            55
        );
        assert_eq!((b.frames_written(), b.bytes_written()), (1, 55));
        assert!(NullBackend::new(MAX_FRAME_LEN + 1).is_none());
    }
}
