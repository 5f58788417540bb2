//! virtio-blk for vmkit, over any [`DiskImage`](vmkit_disk::DiskImage):
//! the device never knows whether its image is raw or qcow2.
//!
//! - [`request`]: parsing and executing requests, independent of the
//!   transport (the same code can serve vhost-user);
//! - [`Block`]: the [`VirtioDevice`](vmkit_virtio::VirtioDevice)
//!   (features, configuration space, activation);
//! - [`BlockHandler`]: the queue handler run on a
//!   [`QueueWorker`](vmkit_virtio::QueueWorker);
//! - [`BlockConfig`], [`DiskId`]: the advertised limits and serial.
//!
//! # Example
//!
//! ```
//! use std::fs::File;
//! use vmkit_blk::{Block, DiskId};
//! use vmkit_disk::{open_disk, DiskSpec};
//! use vmkit_virtio::VirtioDevice;
//! # let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-blk-doc").unwrap();
//! # let path = dir.as_path().join("root.img");
//! # File::create(&path).unwrap().set_len(64 << 20).unwrap();
//!
//! let spec: DiskSpec = format!("{},readonly=on", path.display()).parse()?;
//! let block = Block::new(open_disk(&spec)?, DiskId::from_path(&spec.path));
//!
//! assert_eq!(block.device_type(), 2);
//! assert_eq!(block.config().capacity, (64 << 20) / 512);
//! let mut capacity = [0u8; 8];
//! block.read_config(0, &mut capacity);
//! assert_eq!(u64::from_le_bytes(capacity), (64 << 20) / 512);
//! // Read-only: VIRTIO_BLK_F_RO, no discard or write zeroes.
//! assert_ne!(block.device_features() & (1 << 5), 0);
//! assert_eq!(block.device_features() & (1 << 13), 0);
//! let stats = block.stats();
//! assert_eq!(stats.requests_completed(), 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod config;
mod device;
mod handler;
mod log_limits;
pub mod request;

pub use config::{BlockConfig, DiskId, MAX_DISCARD_SECTORS, QUEUE_SIZE};
pub use device::Block;
pub use handler::{BlockHandler, BlockStats};
pub use log_limits::BlockLogLimits;
pub use request::{ChainError, RequestBuffers, RequestError, RequestProcessor};

/// Errors of the block device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A serial longer than 20 bytes or containing NUL.
    #[error("invalid disk serial {0:?}: at most 20 bytes, no NUL")]
    InvalidSerial(String),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests;
