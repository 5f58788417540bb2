//! vhost-user back ends for vmkit: the virtio-blk and virtio-net device
//! logic of [`vmkit_blk`] and [`vmkit_net`], served to a vhost-user front
//! end (QEMU, or any VMM speaking the protocol) through rust-vmm's
//! `vhost-user-backend`.
//!
//! The device logic is the in-VMM devices' own, only the transport changes:
//!
//! - [`VhostUserBlk`]: request parsing, checking and disk I/O by
//!   [`vmkit_blk::RequestProcessor`] over any
//!   [`DiskImage`](vmkit_disk::DiskImage); features and configuration space
//!   from [`vmkit_blk::Block`];
//! - [`VhostUserNet`]: frames between a [`Tap`](vmkit_net::Tap) and the
//!   queues by [`vmkit_net::rx::Rx`] and [`vmkit_net::tx::Tx`]; features,
//!   configuration space and tap offloads from [`vmkit_net::Net`];
//! - [`serve`]: one front end on a Unix socket, until it disconnects.
//!
//! The commands `vmkit-vhost-user-blk` and `vmkit-vhost-user-net` wrap the
//! two back ends.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use vhost_user_backend::VhostUserBackendMut;
//! use vmkit_blk::DiskId;
//! use vmkit_disk::{open_disk, DiskImage, DiskSpec};
//! use vmkit_vhost_user::VhostUserBlk;
//! # let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-vu-doc").unwrap();
//! # let path = dir.as_path().join("disk.img");
//! # std::fs::File::create(&path).unwrap().set_len(1 << 20).unwrap();
//!
//! let spec: DiskSpec = format!("{},readonly=on", path.display()).parse()?;
//! let disk: Arc<dyn DiskImage> = open_disk(&spec)?.into();
//! let blk = VhostUserBlk::new(disk, DiskId::from_path(&spec.path));
//! // VIRTIO_BLK_F_RO, and VHOST_USER_F_PROTOCOL_FEATURES.
//! assert_ne!(blk.features() & (1 << 5), 0);
//! assert_ne!(blk.features() & (1 << 30), 0);
//! // A front end reads the capacity (in sectors) from the configuration space.
//! assert_eq!(blk.config_space()[..8], ((1u64 << 20) / 512).to_le_bytes());
//! // blk.serve(socket_path) would now wait for a front end.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod blk;
mod daemon;
mod log_limits;
mod net;
mod relay;

use std::io;
use std::path::PathBuf;

pub use blk::VhostUserBlk;
pub use daemon::{Memory, serve};
pub use net::{TAP_TOKEN, VhostUserNet};

/// Errors of the vhost-user back ends.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket path exists and is not a socket (it is not removed).
    #[error("{} exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    /// A listening socket could not be created.
    #[error("cannot listen on {}: {source}", path.display())]
    Listen {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another socket operation failed.
    #[error("cannot {what}: {source}")]
    Socket {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The vhost-user daemon failed (set-up, or a front end breaking the
    /// protocol).
    #[error("vhost-user: {0}")]
    Daemon(String),
    /// A descriptor could not be watched.
    #[error("cannot watch the back end's descriptor: {0}")]
    Watch(#[source] io::Error),
    /// The tap could not be set up for virtio-net.
    #[error(transparent)]
    Net(#[from] vmkit_net::Error),
    /// Flushing the disk when the front end left failed.
    #[error("flushing the disk failed: {0}")]
    Flush(#[source] vmkit_disk::Error),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
