//! `convert`: copy an image into a new one of another (or the same)
//! format, writing only the ranges that hold data so the copy stays
//! sparse.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use vm_memory::VolatileSlice;
use vmkit_disk::{DiskImage, ImageFormat};

use crate::create::{self, CreateArgs};
use crate::image::{self, OpenFlags};
use crate::{Error, Result};

/// How much is read from the source at once.
const CHUNK: usize = 2 << 20;

/// The arguments of `convert`.
#[derive(Clone, Debug, Default)]
pub struct ConvertArgs {
    /// `-f`: the source format; probed when absent.
    pub format: Option<String>,
    /// `-O`: the output format (raw unless given).
    pub output_format: Option<String>,
    /// `-o`: output format options, as for `create`.
    pub options: Vec<String>,
    /// The source image.
    pub source: String,
    /// The image to create (overwritten if it exists, as with qemu-img).
    pub target: String,
}

/// The ranges of a raw file that may hold data (`SEEK_DATA`/`SEEK_HOLE`),
/// or the whole file where the file system cannot tell.
fn raw_data_ranges(path: &Path, size: u64) -> Result<Vec<(u64, u64)>> {
    let file = File::open(path).map_err(|e| Error::open(path, e))?;
    let seek = |offset: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
        // SAFETY: lseek on a descriptor `file` owns; it touches no memory.
        let r = unsafe { libc::lseek64(file.as_raw_fd(), offset as libc::off64_t, whence) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(Some(r as u64))
    };
    let mut ranges = Vec::new();
    let mut pos = 0;
    while pos < size {
        let start = match seek(pos, libc::SEEK_DATA) {
            Ok(Some(s)) => s,
            Ok(None) => break,
            // No hole support: everything may be data.
            Err(_) => return Ok(vec![(0, size)]),
        };
        if start >= size {
            break;
        }
        let end = match seek(start, libc::SEEK_HOLE) {
            Ok(Some(e)) => e.min(size),
            _ => size,
        };
        ranges.push((start, end));
        pos = end;
    }
    Ok(ranges)
}

/// Copies the data of `src` into `dst` (of the same size), skipping
/// `granule`-sized blocks that read as zeros. Returns the bytes written.
pub fn copy_data(
    src: &dyn DiskImage,
    dst: &dyn DiskImage,
    ranges: &[(u64, u64)],
    granule: usize,
) -> Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0;
    for &(start, end) in ranges {
        // Whole granules, so skipped zeros line up with output clusters.
        let mut pos = start - start % granule as u64;
        let end = end.div_ceil(granule as u64) * granule as u64;
        let end = end.min(src.size());
        while pos < end {
            let n = (end - pos).min(CHUNK as u64) as usize;
            src.read_at(&mut VolatileSlice::from(&mut buf[..n]), pos)?;
            let mut i = 0;
            while i < n {
                let g = granule.min(n - i);
                if buf[i..i + g].iter().all(|&b| b == 0) {
                    i += g;
                    continue;
                }
                // A run of non-zero granules, written at once.
                let run_start = i;
                while i < n {
                    let g = granule.min(n - i);
                    if buf[i..i + g].iter().all(|&b| b == 0) {
                        break;
                    }
                    i += g;
                }
                dst.write_at(
                    &VolatileSlice::from(&mut buf[run_start..i]),
                    pos + run_start as u64,
                )?;
                written += (i - run_start) as u64;
            }
            pos += n as u64;
        }
    }
    dst.flush()?;
    Ok(written)
}

/// Runs `convert`.
pub fn convert(args: &ConvertArgs, err: &mut dyn io::Write) -> Result<()> {
    let src_path = Path::new(&args.source);
    let src_format = image::format_or_probe(args.format.as_deref(), src_path, None)?;
    let ro = OpenFlags {
        read_only: true,
        direct: false,
    };
    // Converting an image onto itself would empty it before reading it.
    if let (Ok(a), Ok(b)) = (
        std::fs::canonicalize(src_path),
        std::fs::canonicalize(&args.target),
    ) && a == b
    {
        return Err(Error::Usage(format!(
            "'{}' is both the source and the target",
            args.target
        )));
    }
    let src = image::open_image(src_path, src_format, ro)?;
    let size = src.size();
    let out_format = image::parse_format(args.output_format.as_deref().unwrap_or("raw"))?;

    let create_args = CreateArgs {
        format: Some(out_format.to_string()),
        options: args.options.clone(),
        quiet: true,
        filename: args.target.clone(),
        size: Some(size.to_string()),
        ..CreateArgs::default()
    };
    create::create(&create_args, &mut io::sink())?;
    let granule = match out_format {
        ImageFormat::Raw => 4096,
        ImageFormat::Qcow2 => create::split_options(&args.options)?
            .iter()
            .rev()
            .find(|(k, _)| k == "cluster_size")
            .and_then(|(_, v)| crate::size::parse_size(v).ok())
            .map_or(65536, |c| c as usize),
    };
    let dst = image::open_image(
        Path::new(&args.target),
        out_format,
        OpenFlags {
            read_only: false,
            direct: false,
        },
    )?;
    let ranges = match src_format {
        ImageFormat::Raw => raw_data_ranges(src_path, size)?,
        ImageFormat::Qcow2 => vec![(0, size)],
    };
    let _ = err;
    copy_data(src.as_ref(), dst.as_ref(), &ranges, granule)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_copy_skips_holes_and_zero_blocks() {
        let dir =
            vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-img-convert").unwrap();
        let src = dir.as_path().join("s.raw");
        let file = File::create(&src).unwrap();
        file.set_len(8 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        file.write_all_at(&[1u8; 100], 3 << 20).unwrap();
        // Zeros written explicitly are data to SEEK_DATA but not copied.
        file.write_all_at(&[0u8; 65536], 5 << 20).unwrap();
        file.write_all_at(&[2u8; 10], (8 << 20) - 10).unwrap();
        drop(file);
        let ranges = raw_data_ranges(&src, 8 << 20).unwrap();
        assert!(ranges.iter().all(|&(s, e)| s < e && e <= 8 << 20));
        assert!(ranges.len() >= 2, "{ranges:?}");

        let dst = dir.as_path().join("d.raw");
        let args = ConvertArgs {
            format: Some("raw".into()),
            source: src.display().to_string(),
            target: dst.display().to_string(),
            ..ConvertArgs::default()
        };
        convert(&args, &mut io::sink()).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        use std::os::unix::fs::MetadataExt;
        // Two 4 KiB blocks of data.
        assert!(std::fs::metadata(&dst).unwrap().blocks() * 512 <= 8192 * 2);
    }
}
