//! Backing files: resolving and opening the chain below an image.
//!
//! The format of a backing file always comes from the image's backing
//! format header extension, never from the backing file's contents; a
//! relative name is relative to the image's directory. Chains are at most
//! [`MAX_CHAIN_DEPTH`] deep and may not loop.

use std::path::{Path, PathBuf};

use super::header::Header;
use super::{Qcow2Image, Qcow2Options};
use crate::{DiskImage, Error, RawImage, Result};

/// The deepest backing chain opened.
pub const MAX_CHAIN_DEPTH: usize = 16;

/// The images opened so far along one chain.
#[derive(Debug, Default)]
pub(crate) struct Chain {
    pub visited: Vec<PathBuf>,
}

/// Where the backing file `name` of the image at `image` is.
pub(crate) fn resolve(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        image.parent().unwrap_or_else(|| Path::new(".")).join(p)
    }
}

/// Opens the backing file named in `hdr` of the image at `image`,
/// read-only.
pub(crate) fn open_backing(
    image: &Path,
    hdr: &Header,
    chain: &mut Chain,
) -> Result<Option<Box<dyn DiskImage>>> {
    let Some(name) = &hdr.backing_file else {
        return Ok(None);
    };
    let chain_err = |reason: String| Error::BackingChain {
        path: image.to_path_buf(),
        reason,
    };
    let Some(format) = &hdr.backing_format else {
        return Err(chain_err(format!(
            "backing file '{name}' has no backing format in the image header; \
             refusing to guess it (set it with qemu-img rebase -u -F FORMAT)"
        )));
    };
    if chain.visited.len() >= MAX_CHAIN_DEPTH {
        return Err(chain_err(format!(
            "backing chain deeper than {MAX_CHAIN_DEPTH} images"
        )));
    }
    let path = resolve(image, name);
    // The qcow2 open below refuses an image already in the chain; a raw
    // file ends the chain.
    let disk: Box<dyn DiskImage> = match format.as_str() {
        "raw" => Box::new(RawImage::open(&path, true)?),
        "qcow2" => Box::new(Qcow2Image::open_chain(
            &path,
            &Qcow2Options {
                read_only: true,
                backing: true,
                direct: false,
            },
            chain,
        )?),
        other => {
            return Err(chain_err(format!(
                "backing file '{name}' has format '{other}', which is not supported"
            )));
        }
    };
    Ok(Some(disk))
}
