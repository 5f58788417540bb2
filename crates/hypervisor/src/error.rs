use std::io;

/// Errors of the hypervisor layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hypervisor device could not be opened.
    #[error("cannot open {path}: {source}{hint}")]
    Open {
        /// The device path that was tried.
        path: String,
        /// The error from `open(2)`.
        source: io::Error,
        /// A hint for the user (may be empty).
        hint: &'static str,
    },
    /// The file opened is not a usable hypervisor device.
    #[error("{path} is not a KVM device: {source}")]
    NotAHypervisor {
        /// The device path.
        path: String,
        /// The error from the version query.
        source: io::Error,
    },
    /// The device speaks a KVM API version this crate does not support.
    #[error("{path}: KVM API version {found} is not supported (expected {expected})")]
    ApiVersion {
        /// The device path.
        path: String,
        /// The version the device reported.
        found: i32,
        /// The version this crate needs.
        expected: i32,
    },
    /// The hypervisor lacks a capability the VMM needs.
    #[error("the hypervisor lacks a required capability: {0}")]
    MissingCapability(&'static str),
    /// An operation on the hypervisor failed.
    #[error("{op} failed: {source}")]
    Ioctl {
        /// What was being done (e.g. "KVM_CREATE_VM").
        op: &'static str,
        /// The error returned by the kernel.
        source: io::Error,
    },
    /// An argument was rejected before reaching the hypervisor.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Builds an [`Error::Ioctl`] from an errno-carrying error.
    pub fn ioctl(op: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Ioctl {
            op,
            source: source.into(),
        }
    }
}
