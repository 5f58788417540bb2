//! Linux bridges by ioctl (the `brctl` interface: SIOCBRADDBR,
//! SIOCBRDELBR, SIOCBRADDIF, SIOCBRDELIF), in the calling thread's network
//! namespace.
//!
//! What the classic `brctl addbr br0; tunctl tap0; brctl addif br0 tap0;
//! ifconfig br0 10.0.0.1/24 up` becomes:
//!
//! ```no_run
//! use std::net::Ipv4Addr;
//! use vmkit_net::{bridge, iface, Tap};
//!
//! bridge::create("br0")?;
//! iface::set_ipv4_address("br0", Ipv4Addr::new(10, 0, 0, 1), 24)?;
//! iface::set_up("br0", true)?;
//! let tap = Tap::open("tap0")?;
//! bridge::add_interface("br0", tap.name())?;
//! tap.set_up(true)?;
//! # Ok::<(), vmkit_net::Error>(())
//! ```

use std::ffi::CString;
use std::io;

use libc::c_ulong;
use vmm_sys_util::ioctl::ioctl_with_ptr;

use crate::iface::{CtlSocket, check_name, ifreq_for};
use crate::{Error, Result, iface};

// From <linux/sockios.h> (not in the libc crate).
/// Creates a bridge; the argument is its name.
const SIOCBRADDBR: c_ulong = 0x89a0;
/// Deletes a bridge; the argument is its name.
const SIOCBRDELBR: c_ulong = 0x89a1;
/// Adds a port; an `ifreq` naming the bridge with the port's index.
const SIOCBRADDIF: c_ulong = 0x89a2;
/// Removes a port; same argument.
const SIOCBRDELIF: c_ulong = 0x89a3;

fn name_ioctl(request: c_ulong, name: &str, op: &'static str) -> Result<()> {
    check_name("bridge", name)?;
    let cname = CString::new(name).map_err(|_| Error::InvalidName {
        kind: "bridge",
        name: name.to_string(),
    })?;
    let sock = CtlSocket::new()?;
    // SAFETY: SIOCBRADDBR and SIOCBRDELBR read a NUL-terminated name of at
    // most IFNAMSIZ bytes (checked above) from the pointer, which stays
    // valid for the call.
    let ret = unsafe { ioctl_with_ptr(&sock, request, cname.as_ptr()) };
    if ret < 0 {
        return Err(Error::Ioctl {
            op,
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Creates the bridge `name` (down, no ports, STP off).
pub fn create(name: &str) -> Result<()> {
    name_ioctl(SIOCBRADDBR, name, "create bridge")
}

/// Deletes the bridge `name`; it must be down.
pub fn delete(name: &str) -> Result<()> {
    name_ioctl(SIOCBRDELBR, name, "delete bridge")
}

fn port_ioctl(request: c_ulong, bridge: &str, port: &str, op: &'static str) -> Result<()> {
    let index = iface::index(port)?;
    let mut ifr = ifreq_for("bridge", bridge)?;
    ifr.ifr_ifru.ifru_ifindex = index as libc::c_int;
    CtlSocket::new()?.ifreq_ioctl(request, &mut ifr, op)
}

/// Makes the interface `port` (a tap, say) a port of `bridge`.
pub fn add_interface(bridge: &str, port: &str) -> Result<()> {
    port_ioctl(SIOCBRADDIF, bridge, port, "add a port to bridge")
}

/// Removes the interface `port` from `bridge`.
pub fn remove_interface(bridge: &str, port: &str) -> Result<()> {
    port_ioctl(SIOCBRDELIF, bridge, port, "remove a port from bridge")
}
