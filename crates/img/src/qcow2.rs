//! The adapter between the commands and `vmkit-disk`'s qcow2 support
//! ([`Qcow2Image`]).
//!
//! Every qcow2 operation the commands need goes through one function here,
//! so the rest of the crate does not depend on the qcow2 module's names.

use std::path::Path;

use vmkit_disk::{DiskImage, ImageFormat, Qcow2Image, Qcow2Options, RawImage};

use crate::image::{self, CheckOutcome, Compat, CreateOptions, OpenFlags, Qcow2Details};
use crate::{Error, Result};

/// Opens a qcow2 image for I/O, with its backing chain (read-only), as
/// qemu-img opens it.
/// With `flags.direct` (`cache=none`), guest data bypasses the page cache
/// (`O_DIRECT`); the image's metadata and its backing files are read and
/// written buffered.
pub fn open(path: &Path, flags: OpenFlags) -> Result<Box<dyn DiskImage>> {
    let options = Qcow2Options {
        read_only: flags.read_only,
        backing: true,
        direct: flags.direct,
    };
    Ok(Box::new(Qcow2Image::open(path, &options)?))
}

/// Refuses to overwrite an image that another process has open: the lock
/// is tried before the file is truncated.
fn ensure_not_in_use(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let in_use = |e: &vmkit_disk::Error| matches!(e, vmkit_disk::Error::InUse { .. });
    if image::probe(path)? == ImageFormat::Qcow2 {
        let options = Qcow2Options {
            read_only: false,
            backing: false,
            direct: false,
        };
        if let Err(e) = Qcow2Image::open(path, &options)
            && in_use(&e)
        {
            return Err(e.into());
        }
    }
    if let Err(e) = RawImage::open(path, false)
        && in_use(&e)
    {
        return Err(e.into());
    }
    Ok(())
}

/// Creates a qcow2 image.
pub fn create(path: &Path, options: &CreateOptions) -> Result<()> {
    ensure_not_in_use(path)?;
    let defaults = vmkit_disk::CreateOptions::default();
    let backing = match (&options.backing_file, options.backing_format) {
        (Some(file), Some(fmt)) => Some((file.clone(), fmt)),
        (Some(_), None) => {
            return Err(Error::Usage(
                "Backing file specified without backing format".into(),
            ));
        }
        _ => None,
    };
    let create = vmkit_disk::CreateOptions {
        size: options.size,
        cluster_size: options.cluster_size.unwrap_or(defaults.cluster_size),
        refcount_bits: options.refcount_bits.unwrap_or(defaults.refcount_bits),
        version: options.compat.map_or(defaults.version, Compat::version),
        lazy_refcounts: options.lazy_refcounts.unwrap_or(defaults.lazy_refcounts),
        backing,
    };
    Ok(Qcow2Image::create(path, &create)?)
}

/// The virtual size and header details of a qcow2 image.
pub fn details(path: &Path) -> Result<(u64, Qcow2Details)> {
    let options = Qcow2Options {
        read_only: true,
        backing: true,
        direct: false,
    };
    let info = Qcow2Image::open(path, &options)?.info()?;
    Ok((
        info.virtual_size,
        Qcow2Details {
            version: info.version,
            cluster_size: info.cluster_size,
            refcount_bits: info.refcount_bits,
            backing_file: info.backing_file,
            backing_format: info.backing_format,
            dirty: info.dirty,
            corrupt: info.corrupt,
            lazy_refcounts: info.lazy_refcounts,
            compression_type: info.compression_type.to_string(),
            snapshots: info.snapshot_count as usize,
        },
    ))
}

/// Checks (and with `repair_leaks`, repairs the leaks of) a qcow2 image.
pub fn check(path: &Path, repair_leaks: bool) -> Result<CheckOutcome> {
    let r = vmkit_disk::check_image(path, repair_leaks)?;
    Ok(CheckOutcome {
        corruptions: r.corruptions,
        leaks: r.leaks.saturating_sub(r.leaks_fixed),
        leaks_fixed: r.leaks_fixed,
        corruptions_fixed: r.corruptions_fixed,
        check_errors: r.check_errors,
        allocated_clusters: Some(r.allocated_clusters),
        total_clusters: Some(r.total_clusters),
        fragmented_clusters: None,
        compressed_clusters: None,
        image_end_offset: Some(r.image_end_offset),
        messages: r.messages,
    })
}

/// Resizes a qcow2 image (growing only: the backend refuses to shrink).
pub fn resize(path: &Path, new_size: u64) -> Result<()> {
    let options = Qcow2Options {
        read_only: false,
        backing: true,
        direct: false,
    };
    let image = Qcow2Image::open(path, &options)?;
    image.resize(new_size)?;
    Ok(image.close()?)
}
