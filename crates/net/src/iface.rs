//! Host network interfaces by name, through `SIOC*` ioctls on a datagram
//! socket: index, link state, IPv4 address, MAC address, MTU.
//!
//! Everything happens in the calling thread's network namespace (the one
//! the socket is created in), so a test thread that `unshare`s
//! `CLONE_NEWNET` configures only its own namespace.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use libc::{c_ulong, ifreq};
use vmm_sys_util::ioctl::ioctl_with_mut_ref;

use crate::{Error, MacAddr, Result};

/// `IFNAMSIZ`: interface names are at most 15 bytes plus the NUL.
const IFNAMSIZ: usize = libc::IFNAMSIZ;

/// Checks an interface name as the kernel's `dev_valid_name` does.
pub(crate) fn check_name(kind: &'static str, name: &str) -> Result<()> {
    if name.len() >= IFNAMSIZ {
        return Err(Error::NameTooLong {
            kind,
            name: name.to_string(),
        });
    }
    if name.is_empty()
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace())
    {
        return Err(Error::InvalidName {
            kind,
            name: name.to_string(),
        });
    }
    Ok(())
}

/// An `ifreq` naming `name` (checked), everything else zero.
pub(crate) fn ifreq_for(kind: &'static str, name: &str) -> Result<ifreq> {
    check_name(kind, name)?;
    // SAFETY: `ifreq` is plain data (a name array and a union of plain
    // data) for which all-zero bytes are a valid value.
    let mut ifr: ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(ifr)
}

/// The name an `ifreq` carries (after the kernel filled it in).
pub(crate) fn ifreq_name(ifr: &ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A socket for interface ioctls, in the calling thread's network
/// namespace.
#[derive(Debug)]
pub(crate) struct CtlSocket(OwnedFd);

impl CtlSocket {
    /// An `AF_INET` datagram socket (the family the address ioctls need).
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: socket() takes no pointers; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(Error::Socket(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by socket() and is owned by
        // nothing else.
        Ok(CtlSocket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Issues `request`, whose argument is an `ifreq`.
    pub(crate) fn ifreq_ioctl(
        &self,
        request: c_ulong,
        ifr: &mut ifreq,
        op: &'static str,
    ) -> Result<()> {
        // SAFETY: every request issued through this function takes a
        // `struct ifreq` (a name and a union), reads or writes only within
        // it, and `ifr` is a live, exclusively borrowed ifreq.
        let ret = unsafe { ioctl_with_mut_ref(self, request, ifr) };
        if ret < 0 {
            return Err(Error::Ioctl {
                op,
                name: ifreq_name(ifr),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn flags(&self, name: &str) -> Result<libc::c_short> {
        let mut ifr = ifreq_for("interface", name)?;
        self.ifreq_ioctl(libc::SIOCGIFFLAGS, &mut ifr, "read the flags of")?;
        // SAFETY: SIOCGIFFLAGS filled in `ifru_flags`.
        Ok(unsafe { ifr.ifr_ifru.ifru_flags })
    }

    fn set_up(&self, name: &str, up: bool) -> Result<()> {
        let flags = self.flags(name)?;
        let up_flag = libc::IFF_UP as libc::c_short;
        let new = if up {
            flags | up_flag
        } else {
            flags & !up_flag
        };
        if new == flags {
            return Ok(());
        }
        let mut ifr = ifreq_for("interface", name)?;
        ifr.ifr_ifru.ifru_flags = new;
        let op = if up { "bring up" } else { "bring down" };
        self.ifreq_ioctl(libc::SIOCSIFFLAGS, &mut ifr, op)
    }
}

impl AsRawFd for CtlSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// The interface index of `name` (SIOCGIFINDEX).
pub fn index(name: &str) -> Result<u32> {
    let sock = CtlSocket::new()?;
    let mut ifr = ifreq_for("interface", name)?;
    sock.ifreq_ioctl(libc::SIOCGIFINDEX, &mut ifr, "find the index of")?;
    // SAFETY: SIOCGIFINDEX filled in `ifru_ifindex`.
    let index = unsafe { ifr.ifr_ifru.ifru_ifindex };
    // Interface indices are positive.
    Ok(index as u32)
}

/// Brings `name` up or down (IFF_UP through SIOCGIFFLAGS/SIOCSIFFLAGS).
pub fn set_up(name: &str, up: bool) -> Result<()> {
    CtlSocket::new()?.set_up(name, up)
}

/// Whether `name` is administratively up (IFF_UP).
pub fn is_up(name: &str) -> Result<bool> {
    let flags = CtlSocket::new()?.flags(name)?;
    Ok(flags & libc::IFF_UP as libc::c_short != 0)
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sockaddr_in` and `sockaddr` are both 16 bytes of plain
    // data; the kernel reads a `sockaddr` with family AF_INET as a
    // `sockaddr_in`.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Sets the IPv4 address of `name` to `addr`/`prefix_len` (SIOCSIFADDR
/// then SIOCSIFNETMASK), replacing its primary IPv4 address.
pub fn set_ipv4_address(name: &str, addr: Ipv4Addr, prefix_len: u8) -> Result<()> {
    if prefix_len > 32 {
        return Err(Error::InvalidPrefix(prefix_len));
    }
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0);
    let sock = CtlSocket::new()?;
    let mut ifr = ifreq_for("interface", name)?;
    ifr.ifr_ifru.ifru_addr = sockaddr_in(addr);
    sock.ifreq_ioctl(libc::SIOCSIFADDR, &mut ifr, "set the IPv4 address of")?;
    let mut ifr = ifreq_for("interface", name)?;
    ifr.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::from(mask));
    sock.ifreq_ioctl(libc::SIOCSIFNETMASK, &mut ifr, "set the IPv4 netmask of")
}

fn read_ipv4(name: &str, request: c_ulong, op: &'static str) -> Result<Ipv4Addr> {
    let sock = CtlSocket::new()?;
    let mut ifr = ifreq_for("interface", name)?;
    sock.ifreq_ioctl(request, &mut ifr, op)?;
    // SAFETY: SIOCGIFADDR and SIOCGIFNETMASK fill in a `sockaddr`; for an
    // AF_INET socket it is a `sockaddr_in`, which has the same size.
    let sin: libc::sockaddr_in =
        unsafe { std::mem::transmute::<libc::sockaddr, libc::sockaddr_in>(ifr.ifr_ifru.ifru_addr) };
    Ok(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()))
}

/// The primary IPv4 address of `name` and its prefix length.
pub fn ipv4_address(name: &str) -> Result<(Ipv4Addr, u8)> {
    let addr = read_ipv4(name, libc::SIOCGIFADDR, "read the IPv4 address of")?;
    let mask = read_ipv4(name, libc::SIOCGIFNETMASK, "read the IPv4 netmask of")?;
    Ok((addr, u32::from(mask).leading_ones() as u8))
}

/// Sets the MAC address of `name` (SIOCSIFHWADDR).
pub fn set_mac_address(name: &str, mac: MacAddr) -> Result<()> {
    let sock = CtlSocket::new()?;
    let mut ifr = ifreq_for("interface", name)?;
    // SAFETY: `sockaddr` is plain data; all-zero bytes are valid.
    let mut hw: libc::sockaddr = unsafe { std::mem::zeroed() };
    hw.sa_family = libc::ARPHRD_ETHER;
    for (dst, src) in hw.sa_data.iter_mut().zip(mac.octets()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_hwaddr = hw;
    sock.ifreq_ioctl(libc::SIOCSIFHWADDR, &mut ifr, "set the MAC address of")
}

/// The MAC address of `name` (SIOCGIFHWADDR).
pub fn mac_address(name: &str) -> Result<MacAddr> {
    let sock = CtlSocket::new()?;
    let mut ifr = ifreq_for("interface", name)?;
    sock.ifreq_ioctl(libc::SIOCGIFHWADDR, &mut ifr, "read the MAC address of")?;
    // SAFETY: SIOCGIFHWADDR filled in `ifru_hwaddr`.
    let data = unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_data };
    let mut octets = [0u8; 6];
    for (dst, src) in octets.iter_mut().zip(data) {
        *dst = src as u8;
    }
    Ok(MacAddr::new(octets))
}

/// The MTU of `name` (SIOCGIFMTU).
pub fn mtu(name: &str) -> Result<u32> {
    let sock = CtlSocket::new()?;
    let mut ifr = ifreq_for("interface", name)?;
    sock.ifreq_ioctl(libc::SIOCGIFMTU, &mut ifr, "read the MTU of")?;
    // SAFETY: SIOCGIFMTU filled in `ifru_mtu`.
    Ok(unsafe { ifr.ifr_ifru.ifru_mtu } as u32)
}

/// Sets the MTU of `name` (SIOCSIFMTU).
pub fn set_mtu(name: &str, mtu: u32) -> Result<()> {
    let sock = CtlSocket::new()?;
    let mut ifr = ifreq_for("interface", name)?;
    ifr.ifr_ifru.ifru_mtu = i32::try_from(mtu).unwrap_or(i32::MAX);
    sock.ifreq_ioctl(libc::SIOCSIFMTU, &mut ifr, "set the MTU of")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_ioctl() {
        assert!(matches!(
            index("a-name-of-16-byt"),
            Err(Error::NameTooLong {
                kind: "interface",
                ..
            })
        ));
        let e = set_up("sixteen-bytes-xx", true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "interface name \"sixteen-bytes-xx\" too long: 16 bytes, at most 15"
        );
        for bad in ["", ".", "..", "a/b", "a b", "a\0b", "eth0:1"] {
            assert!(
                matches!(index(bad), Err(Error::InvalidName { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(check_name("tap", "fifteen-bytes-x").is_ok());
        assert!(matches!(
            set_ipv4_address("lo", Ipv4Addr::LOCALHOST, 33),
            Err(Error::InvalidPrefix(33))
        ));
    }

    #[test]
    fn loopback_is_visible() {
        // Every network namespace has `lo`, index 1, MTU 65536.
        assert_eq!(index("lo").unwrap(), 1);
        assert_eq!(mac_address("lo").unwrap(), MacAddr::new([0; 6]));
        assert!(mtu("lo").unwrap() >= 1500);
        let e = index("vmkit-none0").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot find the index of vmkit-none0: "),
            "{e}"
        );
    }
}
