//! `vmkit-img`: a qemu-img work-alike over [`vmkit_disk`].
//!
//! The commands follow qemu-img's conventions — the same flags, the same
//! output and the same exit codes — so the two tools can be run side by
//! side on one image:
//!
//! - `create -f raw|qcow2 [-o OPTS] [-b BACKING -F FMT] FILE [SIZE]`
//! - `info [-f FMT] [--output human|json] [--backing-chain] FILE`
//! - `check [-f FMT] [-r leaks|all] [--output human|json] FILE`
//! - `convert [-f FMT] [-O FMT] [-o OPTS] IN OUT`
//! - `resize [-f FMT] [--shrink] FILE [+|-]SIZE`
//! - `bench [-c COUNT] [-d DEPTH] [-f FMT] [-n] [-i AIO] [-o OFFSET]
//!   [-s SIZE] [-S STEP] [-t CACHE] [-w [--pattern P] [--flush-interval N
//!   [--no-drain]]] FILE`
//!
//! Each command is a function of this library writing to the streams it is
//! given, so it can be tested without a process; [`run`] parses a command
//! line and returns the exit code the binary exits with.
//!
//! ```
//! # let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-img-doc").unwrap();
//! # let path = dir.as_path().join("disk.raw");
//! let path = path.to_str().unwrap();
//! let (mut out, mut err) = (Vec::new(), Vec::new());
//! let code = vmkit_img::run(["vmkit-img", "create", "-f", "raw", path, "1M"], &mut out, &mut err);
//! assert_eq!(code, 0);
//! assert_eq!(String::from_utf8(out).unwrap(), format!("Formatting '{path}', fmt=raw size=1048576\n"));
//! assert_eq!(std::fs::metadata(path).unwrap().len(), 1 << 20);
//! ```
#![deny(missing_docs)]

pub mod bench;
pub mod check;
mod cli;
pub mod convert;
pub mod create;
pub mod image;
pub mod info;
pub mod json;
mod qcow2;
pub mod resize;
pub mod size;

pub use cli::run;

use std::io;
use std::path::Path;

/// Errors of the image commands. Each prints as one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened (or created).
    #[error("Could not open '{path}': {}", os_message(source))]
    Open {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {}", os_message(source))]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The disk layer refused or failed.
    #[error("{0}")]
    Disk(#[from] vmkit_disk::Error),
    /// An image format that is not raw or qcow2.
    #[error("Unknown file format '{0}'")]
    UnknownFormat(String),
    /// A size that does not parse.
    #[error("Invalid size specified: '{0}'")]
    InvalidSize(String),
    /// The format has no consistency check (raw).
    #[error("This image format does not support checks")]
    CheckNotSupported,
    /// The command line is wrong; the message says how.
    #[error("{0}")]
    Usage(String),
    /// The operation is not possible on this image; the message says why.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// An [`Error::Open`] for `path`.
    pub fn open(path: &Path, source: io::Error) -> Self {
        Error::Open {
            path: path.display().to_string(),
            source,
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: &Path, source: io::Error) -> Self {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// The exit code qemu-img exits with on this error: 63 when the format
    /// cannot be checked, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::CheckNotSupported => 63,
            _ => 1,
        }
    }
}

/// An I/O error as `strerror` words it, without Rust's "(os error N)".
fn os_message(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
