//! What the frame logic needs from the host side of the link.

use std::io;
use std::sync::Arc;

use vm_memory::VolatileSlice;

use crate::Tap;

/// The host end of a virtio-net link: something frames, each preceded by a
/// [`VNET_HDR_LEN`](crate::VNET_HDR_LEN)-byte virtio-net header, can be read
/// from and written to without blocking. [`Tap`] is the real one; tests use
/// an in-memory queue of frames.
pub trait NetBackend: Send {
    /// Reads one frame into `bufs` (in order). Returns its length; a frame
    /// larger than the buffers is truncated, its rest lost, and the return
    /// value is then the buffers' total (as a tap does) or the frame's full
    /// length (callers handle both by offering a byte more than they can
    /// use). Returns `WouldBlock` when no frame is waiting.
    fn read_frame(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize>;

    /// Writes one frame gathered from `bufs` (in order). Returns the bytes
    /// taken.
    fn write_frame(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize>;
}

impl NetBackend for Tap {
    fn read_frame(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        Tap::read_frame(self, bufs)
    }

    fn write_frame(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        Tap::write_frame(self, bufs)
    }
}

impl<T: NetBackend + Sync + ?Sized> NetBackend for Arc<T> {
    fn read_frame(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        (**self).read_frame(bufs)
    }

    fn write_frame(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        (**self).write_frame(bufs)
    }
}
