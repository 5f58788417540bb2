//! A Linux tap device carrying virtio-net headers.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use libc::{c_int, c_uint, c_ulong};
use vm_memory::VolatileSlice;
use vm_memory::volatile_memory::{PtrGuard, PtrGuardMut};
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

use crate::iface::{self, check_name, ifreq_for, ifreq_name};
use crate::{Error, MacAddr, Result, VNET_HDR_LEN};

/// The most iovecs one `readv`/`writev` takes (`UIO_MAXIOV`).
pub(crate) const IOV_MAX: usize = 1024;

/// A tap device: the host end of a virtual Ethernet link, opened through
/// `/dev/net/tun` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`.
///
/// Every frame read or written starts with a virtio-net header of
/// [`VNET_HDR_LEN`] bytes (TUNSETVNETHDRSZ), the layout a virtio-net driver
/// uses, so frames pass between the guest and the tap unchanged. The file
/// descriptor is non-blocking: reads return `WouldBlock` when no frame is
/// queued; poll it (it is [`AsRawFd`]) to learn when one is.
///
/// The device belongs to the network namespace of the thread that created
/// it. A tap created here (not one made persistent beforehand, e.g. by
/// `ip tuntap add`) disappears when the last descriptor attached to it is
/// closed, unless [`Tap::set_persistent`] is called.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates the tap `name`, or attaches to it if it exists (as a tap
    /// made by `ip tuntap add` or `tunctl` does). An empty name lets the
    /// kernel choose one (`tap0`, `tap1`, ...); a `%d` in the name is
    /// replaced by a number. Needs `CAP_NET_ADMIN` (or, for an existing
    /// tap, to be its owner).
    pub fn open(name: &str) -> Result<Self> {
        Self::open_with_flags(name, false)
    }

    /// Like [`Tap::open`], with IFF_MULTI_QUEUE: each call attaches another
    /// queue (another file descriptor) to the same device.
    pub fn open_multi_queue(name: &str) -> Result<Self> {
        Self::open_with_flags(name, true)
    }

    fn open_with_flags(name: &str, multi_queue: bool) -> Result<Self> {
        let mut ifr = if name.is_empty() {
            // SAFETY: `ifreq` is plain data; all-zero bytes are valid (an
            // empty name asks the kernel for one).
            unsafe { std::mem::zeroed() }
        } else {
            check_name("tap", name)?;
            ifreq_for("tap", name)?
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(Error::OpenTun)?;
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `ifr` is a
        // live, exclusively borrowed one and `file` is a tun descriptor.
        let ret = unsafe { ioctl_with_mut_ref(&file, libc::TUNSETIFF as c_ulong, &mut ifr) };
        if ret < 0 {
            return Err(Error::Ioctl {
                op: "create or attach tap",
                name: if name.is_empty() {
                    "(new)".into()
                } else {
                    name.to_string()
                },
                source: io::Error::last_os_error(),
            });
        }
        let tap = Tap {
            name: ifreq_name(&ifr),
            file,
        };
        tap.set_vnet_hdr_len(VNET_HDR_LEN)?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn ioctl_error(&self, op: &'static str) -> Error {
        Error::Ioctl {
            op,
            name: self.name.clone(),
            source: io::Error::last_os_error(),
        }
    }

    /// Sets the length of the virtio-net header in front of every frame
    /// (TUNSETVNETHDRSZ; [`Tap::open`] sets [`VNET_HDR_LEN`]). The kernel
    /// accepts 10 or more.
    pub fn set_vnet_hdr_len(&self, len: usize) -> Result<()> {
        let len = c_int::try_from(len).unwrap_or(c_int::MAX);
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, a live
        // reference.
        let ret = unsafe { ioctl_with_ref(&self.file, libc::TUNSETVNETHDRSZ as c_ulong, &len) };
        if ret < 0 {
            return Err(self.ioctl_error("set the vnet header size of"));
        }
        Ok(())
    }

    /// Sets the offloads the host may use on frames it hands to us
    /// (TUNSETOFFLOAD; `TUN_F_CSUM`, `TUN_F_TSO4`, `TUN_F_TSO6`,
    /// `TUN_F_TSO_ECN`, `TUN_F_UFO`): what the guest driver accepted as
    /// VIRTIO_NET_F_GUEST_* (see [`crate::tap_offload_flags`]). Frames we
    /// write may always carry offloads: the header says so.
    pub fn set_offload(&self, flags: c_uint) -> Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let ret = unsafe {
            ioctl_with_val(
                &self.file,
                libc::TUNSETOFFLOAD as c_ulong,
                c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(self.ioctl_error("set the offloads of"));
        }
        Ok(())
    }

    /// Keeps the device after its last descriptor is closed (TUNSETPERSIST),
    /// or lets it go.
    pub fn set_persistent(&self, persistent: bool) -> Result<()> {
        // SAFETY: TUNSETPERSIST takes its argument by value.
        let ret = unsafe {
            ioctl_with_val(
                &self.file,
                libc::TUNSETPERSIST as c_ulong,
                c_ulong::from(persistent),
            )
        };
        if ret < 0 {
            return Err(self.ioctl_error("change persistence of"));
        }
        Ok(())
    }

    /// Sets the host end's MAC address (SIOCSIFHWADDR on the tun
    /// descriptor, so it works from any network namespace).
    pub fn set_mac(&self, mac: MacAddr) -> Result<()> {
        let mut ifr = ifreq_for("tap", &self.name)?;
        // SAFETY: `sockaddr` is plain data; all-zero bytes are valid.
        let mut hw: libc::sockaddr = unsafe { std::mem::zeroed() };
        hw.sa_family = libc::ARPHRD_ETHER;
        for (dst, src) in hw.sa_data.iter_mut().zip(mac.octets()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_hwaddr = hw;
        // SAFETY: on a tun descriptor SIOCSIFHWADDR reads a `struct ifreq`,
        // a live exclusive borrow here.
        let ret = unsafe { ioctl_with_mut_ref(&self.file, libc::SIOCSIFHWADDR, &mut ifr) };
        if ret < 0 {
            return Err(self.ioctl_error("set the MAC address of"));
        }
        Ok(())
    }

    /// The host end's MAC address (SIOCGIFHWADDR on the tun descriptor).
    pub fn mac(&self) -> Result<MacAddr> {
        let mut ifr = ifreq_for("tap", &self.name)?;
        // SAFETY: on a tun descriptor SIOCGIFHWADDR writes a `struct
        // ifreq`, a live exclusive borrow here.
        let ret = unsafe { ioctl_with_mut_ref(&self.file, libc::SIOCGIFHWADDR, &mut ifr) };
        if ret < 0 {
            return Err(self.ioctl_error("read the MAC address of"));
        }
        // SAFETY: SIOCGIFHWADDR filled in `ifru_hwaddr`.
        let data = unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_data };
        let mut octets = [0u8; 6];
        for (dst, src) in octets.iter_mut().zip(data) {
            *dst = src as u8;
        }
        Ok(MacAddr::new(octets))
    }

    /// Brings the interface up or down (from the calling thread's network
    /// namespace, which must be the tap's).
    pub fn set_up(&self, up: bool) -> Result<()> {
        iface::set_up(&self.name, up)
    }

    /// The interface index (from the calling thread's network namespace).
    pub fn ifindex(&self) -> Result<u32> {
        iface::index(&self.name)
    }

    /// Reads one frame (virtio-net header first) into `bufs`, in order,
    /// with one `readv` straight into them. Returns the bytes stored: a
    /// frame larger than the buffers is truncated to fit and its rest is
    /// lost (to detect that, offer one byte more than a frame may take).
    /// `WouldBlock` when no frame is queued.
    pub fn read_frame(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        if bufs.len() > IOV_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} buffers, at most {IOV_MAX}", bufs.len()),
            ));
        }
        // The guards keep the memory mapped for the call.
        let guards: Vec<PtrGuardMut> = bufs.iter().map(|b| b.ptr_guard_mut()).collect();
        let iovecs: Vec<libc::iovec> = guards
            .iter()
            .map(|g| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: g.len(),
            })
            .collect();
        // SAFETY: each iovec describes a live, writable VolatileSlice (held
        // mapped by `guards`); the kernel writes at most `iov_len` bytes to
        // each. Guest memory is shared with the guest: it is only accessed
        // through volatile or kernel copies, never as Rust references.
        let n = unsafe { libc::readv(self.as_raw_fd(), iovecs.as_ptr(), iovecs.len() as c_int) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame (virtio-net header first) gathered from `bufs`, with
    /// one `writev` straight from them. Returns the bytes written.
    pub fn write_frame(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        if bufs.len() > IOV_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} buffers, at most {IOV_MAX}", bufs.len()),
            ));
        }
        let guards: Vec<PtrGuard> = bufs.iter().map(|b| b.ptr_guard()).collect();
        let iovecs: Vec<libc::iovec> = guards
            .iter()
            .map(|g| libc::iovec {
                iov_base: g.as_ptr() as *mut libc::c_void,
                iov_len: g.len(),
            })
            .collect();
        // SAFETY: each iovec describes a live, readable VolatileSlice (held
        // mapped by `guards`); writev only reads from them.
        let n = unsafe { libc::writev(self.as_raw_fd(), iovecs.as_ptr(), iovecs.len() as c_int) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Reads one frame (virtio-net header first) into `buf`. Returns the
    /// bytes stored (a frame larger than `buf` is truncated).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_frame(&[VolatileSlice::from(buf)])
    }

    /// Writes one frame (virtio-net header first) from `buf`.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: write() reads at most `buf.len()` bytes from `buf`, a
        // live slice.
        let n = unsafe { libc::write(self.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
