//! Disk images for vmkit: the [`DiskImage`] trait that device models are
//! written against, the [`RawImage`] and [`Qcow2Image`] backends, and
//! [`DiskSpec`], the command-line description of a disk.
//!
//! This crate knows nothing of virtio: it moves bytes between guest memory
//! ([`VolatileSlice`](vm_memory::VolatileSlice)s) and an image, with every
//! range checked against the image's size.
//!
//! # Example
//!
//! ```
//! use std::fs::File;
//! use vm_memory::VolatileSlice;
//! use vmkit_disk::{open_disk, DiskSpec};
//! # let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-disk-doc").unwrap();
//! # let path = dir.as_path().join("disk.img");
//! # File::create(&path).unwrap().set_len(1 << 20).unwrap();
//!
//! let spec: DiskSpec = format!("{},format=raw,readonly=off", path.display()).parse()?;
//! let disk = open_disk(&spec)?;
//! assert_eq!(disk.size(), 1 << 20);
//!
//! let mut data = [0xabu8; 512];
//! // A VMM passes slices of guest memory; a local buffer works too.
//! let slice = VolatileSlice::from(&mut data[..]);
//! disk.write_at(&slice, 4096)?;
//! let mut back = [0u8; 512];
//! disk.read_at(&mut VolatileSlice::from(&mut back[..]), 4096)?;
//! assert_eq!(back, [0xab; 512]);
//! # Ok::<(), vmkit_disk::Error>(())
//! ```
#![deny(missing_docs)]

mod file_io;
mod image;
mod lock;
#[cfg(any(test, feature = "test-utils"))]
mod mem;
pub mod qcow2;
mod raw;
mod spec;

pub use image::{DiskImage, SECTOR_SIZE};
#[cfg(any(test, feature = "test-utils"))]
pub use mem::{MemDisk, NullDisk};
pub use qcow2::{
    CheckReport, CompressionType, CreateOptions, Qcow2Image, Qcow2Info, Qcow2Options, check_image,
};
pub use raw::{RawImage, RawOpenOptions};
pub use spec::{DiskSpec, ImageFormat, open_disk};

use std::io;
use std::path::PathBuf;

/// Errors of disk images.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image file could not be opened.
    #[error("cannot open disk image {}: {source}", path.display())]
    Open {
        /// The image's path.
        path: PathBuf,
        /// Why `open(2)` or `fstat(2)` failed.
        source: io::Error,
    },
    /// The path names something that cannot hold a disk image.
    #[error("cannot open disk image {}: not a regular file or block device", path.display())]
    NotAnImage {
        /// The image's path.
        path: PathBuf,
    },
    /// Another process (or another open in this one) holds the image's lock.
    #[error("disk image {} is in use by another process", path.display())]
    InUse {
        /// The image's path.
        path: PathBuf,
    },
    /// The image format is known but not implemented.
    #[error("disk image format {0} is not supported yet")]
    UnsupportedFormat(ImageFormat),
    /// The disk command line could not be parsed.
    #[error("invalid disk specification: {0}")]
    InvalidSpec(String),
    /// An access reaches past the end of the image (or overflows).
    #[error("access of {len} bytes at offset {offset} is outside the image ({size} bytes)")]
    OutOfRange {
        /// Start of the access.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// The image's size.
        size: u64,
    },
    /// A write, discard or write-zeroes on a read-only image.
    #[error("the disk image is read-only")]
    ReadOnly,
    /// The image's metadata is malformed or inconsistent.
    #[error("invalid disk image {}: {reason}", path.display())]
    InvalidImage {
        /// The image's path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The image uses a feature this implementation does not support.
    #[error("disk image {}: {what} is not supported", path.display())]
    Unsupported {
        /// The image's path.
        path: PathBuf,
        /// The feature.
        what: String,
    },
    /// The image has a backing file but backing files were not enabled.
    #[error(
        "disk image {} has a backing file ({backing}); pass backing=on to open it",
        path.display()
    )]
    BackingNotEnabled {
        /// The image's path.
        path: PathBuf,
        /// The backing file's name, as stored in the image.
        backing: String,
    },
    /// The backing chain cannot be opened safely.
    #[error("backing chain of {}: {reason}", path.display())]
    BackingChain {
        /// The image whose backing file is at fault.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The image is marked corrupt and may only be opened read-only.
    #[error(
        "disk image {} is marked corrupt; open it read-only or repair it \
         (qemu-img check -r all)",
        path.display()
    )]
    MarkedCorrupt {
        /// The image's path.
        path: PathBuf,
    },
    /// An argument (size, cluster size, ...) is not acceptable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An I/O error of the backend.
    #[error("disk image I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
