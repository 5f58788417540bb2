//! Image formats as the commands see them: probing, opening, creating,
//! inspecting, checking and resizing raw and qcow2 images.
//!
//! Everything qcow2-specific goes through [`crate::qcow2`], a thin adapter
//! over `vmkit-disk`'s qcow2 support.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use vmkit_disk::{DiskImage, ImageFormat, RawImage, RawOpenOptions};

use crate::{Error, Result, qcow2};

/// The magic at the start of every qcow2 image.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Parses a format name as qemu-img takes it (`-f`, `-O`, `-F`).
pub fn parse_format(name: &str) -> Result<ImageFormat> {
    match name {
        "raw" => Ok(ImageFormat::Raw),
        "qcow2" => Ok(ImageFormat::Qcow2),
        _ => Err(Error::UnknownFormat(name.to_string())),
    }
}

/// Guesses the format of the image at `path` from its first bytes, as
/// qemu-img does when no `-f` is given: qcow2 if it starts with the qcow2
/// magic, raw otherwise.
///
/// Only the command-line tool guesses; a VM's disk is opened with its
/// stated format (see `vmkit_disk::DiskSpec`).
pub fn probe(path: &Path) -> Result<ImageFormat> {
    let mut file = File::open(path).map_err(|source| Error::open(path, source))?;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match file.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::open(path, e)),
        }
    }
    Ok(if got == 4 && magic == QCOW2_MAGIC {
        ImageFormat::Qcow2
    } else {
        ImageFormat::Raw
    })
}

/// The format named by `-f`, or the probed one; with `warn_raw` a guessed
/// raw format gets qemu-img's warning on `warn`.
pub fn format_or_probe(
    format: Option<&str>,
    path: &Path,
    warn: Option<&mut dyn std::io::Write>,
) -> Result<ImageFormat> {
    match format {
        Some(f) => parse_format(f),
        None => {
            let fmt = probe(path)?;
            if let (ImageFormat::Raw, Some(w)) = (fmt, warn) {
                let _ = writeln!(
                    w,
                    "WARNING: Image format was not specified for '{}' and probing guessed raw.\n         \
                     Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n         \
                     Specify the 'raw' format explicitly to remove the restrictions.",
                    path.display()
                );
            }
            Ok(fmt)
        }
    }
}

/// How an image is opened for I/O.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFlags {
    /// No writes.
    pub read_only: bool,
    /// Bypass the host page cache (`O_DIRECT`, qemu's `cache=none`).
    pub direct: bool,
}

/// Opens the image at `path` in `format` for reads and writes through the
/// [`DiskImage`] trait.
pub fn open_image(
    path: &Path,
    format: ImageFormat,
    flags: OpenFlags,
) -> Result<Box<dyn DiskImage>> {
    match format {
        ImageFormat::Raw => {
            let options = RawOpenOptions {
                read_only: flags.read_only,
                direct: flags.direct,
            };
            Ok(Box::new(RawImage::open_with(path, options)?))
        }
        ImageFormat::Qcow2 => qcow2::open(path, flags),
    }
}

/// qcow2 `compat` levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compat {
    /// `compat=0.10`: qcow2 version 2.
    V2,
    /// `compat=1.1`: qcow2 version 3.
    V3,
}

impl Compat {
    /// The qcow2 header version.
    pub fn version(self) -> u32 {
        match self {
            Compat::V2 => 2,
            Compat::V3 => 3,
        }
    }

    /// The name qemu-img prints.
    pub fn name(self) -> &'static str {
        match self {
            Compat::V2 => "0.10",
            Compat::V3 => "1.1",
        }
    }
}

/// What `create` was asked for, after parsing `-o`, `-b` and `-F`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// Virtual size in bytes.
    pub size: u64,
    /// `cluster_size` (qcow2), if given.
    pub cluster_size: Option<u64>,
    /// `refcount_bits` (qcow2), if given.
    pub refcount_bits: Option<u32>,
    /// `compat` (qcow2), if given.
    pub compat: Option<Compat>,
    /// `lazy_refcounts` (qcow2), if given.
    pub lazy_refcounts: Option<bool>,
    /// `backing_file` / `-b` (qcow2).
    pub backing_file: Option<String>,
    /// `backing_fmt` / `-F` (qcow2).
    pub backing_format: Option<ImageFormat>,
}

/// Creates (or, as qemu-img does, overwrites) the image at `path`.
pub fn create_image(path: &Path, format: ImageFormat, options: &CreateOptions) -> Result<()> {
    match format {
        ImageFormat::Raw => {
            // qemu-img's file driver: create or truncate to zero, then set
            // the size, so the file is sparse and an old file's data is
            // gone. Unlike a bare O_TRUNC, the image's lock is taken first:
            // an image a VM has open is refused, not emptied.
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|source| Error::open(path, source))?;
            let _lock = RawImage::open(path, false)?;
            file.set_len(0)
                .and_then(|()| file.set_len(options.size))
                .map_err(|source| Error::io(path, source))?;
            Ok(())
        }
        ImageFormat::Qcow2 => qcow2::create(path, options),
    }
}

/// qcow2-specific information, as `info` prints it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Qcow2Details {
    /// Header version, 2 or 3.
    pub version: u32,
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// Width of a refcount entry.
    pub refcount_bits: u32,
    /// The backing file as written in the header.
    pub backing_file: Option<String>,
    /// The backing file's format, from the header extension.
    pub backing_format: Option<String>,
    /// The dirty bit (lazy refcounts in use and not cleanly closed).
    pub dirty: bool,
    /// The corrupt bit.
    pub corrupt: bool,
    /// The lazy refcounts compatible feature.
    pub lazy_refcounts: bool,
    /// `zlib` or `zstd`.
    pub compression_type: String,
    /// Number of internal snapshots.
    pub snapshots: usize,
}

/// What `info` reports about one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The name the image was given by.
    pub filename: String,
    /// Its format.
    pub format: ImageFormat,
    /// The guest-visible size.
    pub virtual_size: u64,
    /// Host bytes allocated to the file (`st_blocks * 512`).
    pub actual_size: u64,
    /// The file's length.
    pub file_length: u64,
    /// qcow2 details.
    pub qcow2: Option<Qcow2Details>,
}

impl ImageInfo {
    /// The backing file resolved against the image's directory, as qemu's
    /// `full-backing-filename`.
    pub fn full_backing_filename(&self) -> Option<String> {
        let backing = self.qcow2.as_ref()?.backing_file.as_ref()?;
        Some(resolve_backing(&self.filename, backing))
    }
}

/// Resolves `backing` relative to the directory of `image`, as QEMU's
/// `path_combine` does.
pub fn resolve_backing(image: &str, backing: &str) -> String {
    if backing.starts_with('/') || backing.contains("://") {
        return backing.to_string();
    }
    match image.rfind('/') {
        Some(i) => format!("{}{}", &image[..=i], backing),
        None => backing.to_string(),
    }
}

/// Reads what `info` prints about the image at `path`.
pub fn image_info(path: &Path, format: ImageFormat) -> Result<ImageInfo> {
    let meta = std::fs::metadata(path).map_err(|source| Error::open(path, source))?;
    let filename = path.to_string_lossy().into_owned();
    let actual_size = meta.blocks() * 512;
    // QEMU counts lengths in whole sectors: a file's length (and a raw
    // image's virtual size) is rounded up to 512 bytes in what it prints.
    let file_length = file_length(path, &meta)?.div_ceil(512) * 512;
    match format {
        ImageFormat::Raw => {
            // Opening checks the file kind and the lock like a VM would.
            RawImage::open(path, true)?;
            Ok(ImageInfo {
                filename,
                format,
                virtual_size: file_length,
                actual_size,
                file_length,
                qcow2: None,
            })
        }
        ImageFormat::Qcow2 => {
            let (virtual_size, details) = qcow2::details(path)?;
            Ok(ImageInfo {
                filename,
                format,
                virtual_size,
                actual_size,
                file_length,
                qcow2: Some(details),
            })
        }
    }
}

fn file_length(path: &Path, meta: &std::fs::Metadata) -> Result<u64> {
    if meta.file_type().is_file() {
        return Ok(meta.len());
    }
    // A block device: its size is where it ends.
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path).map_err(|source| Error::open(path, source))?;
    file.seek(SeekFrom::End(0))
        .map_err(|source| Error::io(path, source))
}

/// The result of a consistency check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckOutcome {
    /// Corruptions found (and left).
    pub corruptions: u64,
    /// Leaked clusters found (and left).
    pub leaks: u64,
    /// Leaked clusters repaired.
    pub leaks_fixed: u64,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Errors that kept the check from completing.
    pub check_errors: u64,
    /// Guest clusters allocated, if known.
    pub allocated_clusters: Option<u64>,
    /// Guest clusters in the virtual disk, if known.
    pub total_clusters: Option<u64>,
    /// Fragmented clusters, if known.
    pub fragmented_clusters: Option<u64>,
    /// Compressed clusters, if known.
    pub compressed_clusters: Option<u64>,
    /// The end of the last used cluster in the file, if known.
    pub image_end_offset: Option<u64>,
    /// One line per problem found, as qemu-img prints on stderr.
    pub messages: Vec<String>,
}

/// Checks the image at `path`; raw images cannot be checked.
pub fn check_image(path: &Path, format: ImageFormat, repair_leaks: bool) -> Result<CheckOutcome> {
    match format {
        ImageFormat::Raw => {
            // qemu-img opens the image before finding out it cannot check it.
            RawImage::open(path, !repair_leaks)?;
            Err(Error::CheckNotSupported)
        }
        ImageFormat::Qcow2 => qcow2::check(path, repair_leaks),
    }
}

/// Changes the virtual size of the image at `path` to `new_size`.
pub fn resize_image(path: &Path, format: ImageFormat, new_size: u64) -> Result<()> {
    match format {
        ImageFormat::Raw => {
            // Hold the lock a VM would take while changing the size.
            let _lock = RawImage::open(path, false)?;
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|source| Error::open(path, source))?;
            file.set_len(new_size)
                .map_err(|source| Error::io(path, source))?;
            Ok(())
        }
        ImageFormat::Qcow2 => qcow2::resize(path, new_size),
    }
}

/// The virtual size of the image at `path`.
pub fn virtual_size(path: &Path, format: ImageFormat) -> Result<u64> {
    Ok(open_image(
        path,
        format,
        OpenFlags {
            read_only: true,
            direct: false,
        },
    )?
    .size())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_qcow2_magic_only() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-img-probe").unwrap();
        let q = dir.as_path().join("q");
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03").unwrap();
        assert_eq!(probe(&q).unwrap(), ImageFormat::Qcow2);
        let r = dir.as_path().join("r");
        std::fs::write(&r, b"QFI").unwrap();
        assert_eq!(probe(&r).unwrap(), ImageFormat::Raw);
        std::fs::write(&r, b"").unwrap();
        assert_eq!(probe(&r).unwrap(), ImageFormat::Raw);
        assert!(matches!(
            probe(&dir.as_path().join("missing")),
            Err(Error::Open { .. })
        ));
    }

    #[test]
    fn backing_paths_resolve_like_qemu() {
        assert_eq!(resolve_backing("o.qcow2", "b.raw"), "b.raw");
        assert_eq!(resolve_backing("/d/o.qcow2", "b.raw"), "/d/b.raw");
        assert_eq!(resolve_backing("/d/o.qcow2", "/e/b.raw"), "/e/b.raw");
        assert_eq!(resolve_backing("x/o.qcow2", "../b"), "x/../b");
    }
}
