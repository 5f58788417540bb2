//! virtio-net for vmkit, over a Linux tap device.
//!
//! - [`Tap`]: a tap device opened through `/dev/net/tun` with a virtio-net
//!   header on every frame, non-blocking `readv`/`writev` straight into
//!   guest memory;
//! - [`bridge`] and [`iface`]: host-side setup in the calling thread's
//!   network namespace (bridges, addresses, link state), by ioctl, without
//!   running `ip` or `brctl`;
//! - [`rx`] and [`tx`]: the frame logic on a virtqueue, independent of the
//!   transport and of the tap (any [`NetBackend`]), so the same code can
//!   serve vhost-user;
//! - [`Net`]: the [`VirtioDevice`](vmkit_virtio::VirtioDevice) (features,
//!   configuration space, activation), running a [`NetHandler`] on a
//!   [`QueueWorker`](vmkit_virtio::QueueWorker);
//! - [`NetStats`]: packets, bytes, drops, notifications and interrupts.
//!
//! # Example
//!
//! The device's side of things without a tap (which needs `CAP_NET_ADMIN`):
//! what a VMM parses and what the driver reads.
//!
//! ```
//! use vmkit_net::{MacAddr, device_features, VNET_HDR_LEN};
//!
//! let mac: MacAddr = "52:54:00:12:34:56".parse()?;
//! assert_eq!(mac.to_string(), "52:54:00:12:34:56");
//! assert!(MacAddr::random_local()?.is_local_unicast());
//! // virtio_net_hdr_v1, num_buffers included: what a VERSION_1 driver uses.
//! assert_eq!(VNET_HDR_LEN, 12);
//! // VIRTIO_NET_F_MRG_RXBUF and VIRTIO_F_VERSION_1 are offered.
//! assert_ne!(device_features() & (1 << 15), 0);
//! assert_ne!(device_features() & (1 << 32), 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! With a tap (as root), a VMM does:
//!
//! ```no_run
//! use vmkit_net::{bridge, MacAddr, Net, Tap};
//!
//! let tap = Tap::open("tap0")?;
//! bridge::add_interface("br0", tap.name())?;
//! tap.set_up(true)?;
//! let net = Net::new(tap, "52:54:00:12:34:56".parse()?)?;
//! // ... put `net` on a virtio-mmio transport ...
//! let stats = net.stats();
//! println!("rx {} tx {}", stats.rx_packets(), stats.tx_packets());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod backend;
pub mod bridge;
mod device;
mod handler;
mod header;
pub mod iface;
mod log_limits;
mod mac;
pub mod rx;
mod spec;
mod stats;
mod tap;
pub mod tx;

#[cfg(feature = "test-utils")]
pub mod test_utils;

#[cfg(test)]
mod tests;

use std::io;

pub use backend::NetBackend;
pub use device::{Net, QUEUE_SIZE, device_features, tap_offload_flags};
pub use handler::{BACKEND_TOKEN, NetHandler, RX_QUEUE, TX_QUEUE};
pub use header::{MAX_FRAME_LEN, VNET_HDR_LEN};
pub use log_limits::NetLogLimits;
pub use mac::MacAddr;
pub use spec::NetSpec;
pub use stats::NetStats;
pub use tap::Tap;

/// Errors of the tap, bridge and interface helpers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun: {0}{hint}", hint = hint(.0))]
    OpenTun(#[source] io::Error),
    /// An interface name longer than `IFNAMSIZ - 1` (15) bytes.
    #[error("{kind} name {name:?} too long: {} bytes, at most 15", name.len())]
    NameTooLong {
        /// What the name is for: "tap", "bridge", "interface".
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// An empty interface name, or one with a NUL, '/' or whitespace.
    #[error("invalid {kind} name {name:?}")]
    InvalidName {
        /// What the name is for.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// An interface ioctl failed.
    #[error("cannot {op} {name}: {source}{hint}", hint = hint(.source))]
    Ioctl {
        /// What was being done ("create tap", "set the MAC address of", ...).
        op: &'static str,
        /// The interface.
        name: String,
        /// The ioctl's error.
        #[source]
        source: io::Error,
    },
    /// The socket used for interface ioctls could not be created.
    #[error("cannot open a socket for interface ioctls: {0}")]
    Socket(#[source] io::Error),
    /// A string that is not six colon-separated hex octets.
    #[error("invalid MAC address {0:?}: expected six hex octets such as 52:54:00:12:34:56")]
    InvalidMac(String),
    /// A multicast MAC address given for a NIC.
    #[error("MAC address {0} is multicast; a NIC needs a unicast address")]
    MulticastMac(MacAddr),
    /// An IPv4 prefix length above 32.
    #[error("invalid IPv4 prefix length {0}: at most 32")]
    InvalidPrefix(u8),
    /// A malformed `--net` specification.
    #[error("invalid NIC specification: {0}")]
    InvalidSpec(String),
    /// No random bytes for a MAC address.
    #[error("cannot get random bytes: {0}")]
    Random(#[source] io::Error),
}

/// What to add to an error message so that its cause is clear.
fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => " (needs root or CAP_NET_ADMIN)",
        Some(libc::ENOENT) => " (is the tun module loaded?)",
        Some(libc::ENODEV) | Some(libc::ENXIO) => " (no such interface in this network namespace)",
        Some(libc::EBUSY) => " (busy: attached elsewhere, or still up)",
        _ => "",
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
