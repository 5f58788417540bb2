//! `create`: make a new raw or qcow2 image.
//!
//! As with qemu-img, an existing file is overwritten: a raw file is
//! truncated to zero and regrown (its old data is gone), a qcow2 file is
//! rewritten. The one protection qemu-img also gives is kept: an image
//! that another process holds open (and locked) is refused, not clobbered.

use std::io::Write;
use std::path::Path;

use vmkit_disk::ImageFormat;

use crate::image::{self, Compat, CreateOptions};
use crate::size::parse_size;
use crate::{Error, Result};

/// Splits qemu's `key=value,key=value` option syntax; `,,` is a literal
/// comma. Several `-o` are joined as qemu-img joins them.
pub fn split_options(opts: &[String]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for opt in opts {
        let mut parts = Vec::new();
        let mut current = String::new();
        let mut chars = opt.chars().peekable();
        while let Some(c) = chars.next() {
            if c != ',' {
                current.push(c);
            } else if chars.next_if_eq(&',').is_some() {
                current.push(',');
            } else {
                parts.push(std::mem::take(&mut current));
            }
        }
        parts.push(current);
        for part in parts {
            if part.is_empty() {
                continue;
            }
            match part.split_once('=') {
                Some((k, v)) => out.push((k.to_string(), v.to_string())),
                None => {
                    return Err(Error::Usage(format!(
                        "Invalid parameter '{part}' (expected KEY=VALUE)"
                    )));
                }
            }
        }
    }
    Ok(out)
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(Error::Usage(format!(
            "Parameter '{key}' expects 'on' or 'off'"
        ))),
    }
}

/// The arguments of `create`.
#[derive(Clone, Debug, Default)]
pub struct CreateArgs {
    /// `-f`: the format (raw unless given).
    pub format: Option<String>,
    /// `-o`: format options.
    pub options: Vec<String>,
    /// `-b`: the backing file.
    pub backing: Option<String>,
    /// `-F`: the backing file's format.
    pub backing_format: Option<String>,
    /// `-q`: print nothing.
    pub quiet: bool,
    /// The image file.
    pub filename: String,
    /// Its size, with an optional suffix.
    pub size: Option<String>,
}

/// The option values as given, for the `Formatting ...` line.
#[derive(Default)]
struct Given {
    cluster_size: Option<String>,
    compat: Option<String>,
    lazy_refcounts: Option<String>,
    refcount_bits: Option<String>,
    backing_file: Option<String>,
    backing_fmt: Option<String>,
}

/// Runs `create`, printing qemu-img's `Formatting ...` line on `out`.
pub fn create(args: &CreateArgs, out: &mut dyn Write) -> Result<()> {
    let path = Path::new(&args.filename);
    let ctx = |e: Error| Error::Invalid(format!("{}: {e}", args.filename));
    let format = image::parse_format(args.format.as_deref().unwrap_or("raw")).map_err(ctx)?;
    let mut given = Given::default();
    let mut size_opt = None;
    for (key, value) in split_options(&args.options).map_err(ctx)? {
        let slot = match (format, key.as_str()) {
            (_, "size") => &mut size_opt,
            (ImageFormat::Qcow2, "cluster_size") => &mut given.cluster_size,
            (ImageFormat::Qcow2, "compat") => &mut given.compat,
            (ImageFormat::Qcow2, "lazy_refcounts") => &mut given.lazy_refcounts,
            (ImageFormat::Qcow2, "refcount_bits") => &mut given.refcount_bits,
            (ImageFormat::Qcow2, "backing_file") => &mut given.backing_file,
            (ImageFormat::Qcow2, "backing_fmt") => &mut given.backing_fmt,
            _ => {
                return Err(ctx(Error::Usage(format!("Invalid parameter '{key}'"))));
            }
        };
        *slot = Some(value);
    }
    if let Some(b) = &args.backing {
        if format == ImageFormat::Raw {
            return Err(ctx(Error::Usage(
                "Backing file not supported for file format 'raw'".into(),
            )));
        }
        given.backing_file = Some(b.clone());
    }
    if let Some(f) = &args.backing_format {
        given.backing_fmt = Some(f.clone());
    }
    if given.backing_file.is_some() && given.backing_fmt.is_none() {
        return Err(ctx(Error::Usage(
            "Backing file specified without backing format".into(),
        )));
    }
    let backing_format = given
        .backing_fmt
        .as_deref()
        .map(image::parse_format)
        .transpose()
        .map_err(ctx)?;

    let size_str = args.size.clone().or(size_opt);
    let size = match &size_str {
        Some(s) => parse_size(s)
            .map_err(|_| Error::Usage(format!("Invalid image size specified: '{s}'.")))?,
        None => match (&given.backing_file, backing_format) {
            // The size of the backing file, as qemu-img takes it.
            (Some(backing), Some(fmt)) => {
                let resolved = image::resolve_backing(&args.filename, backing);
                image::virtual_size(Path::new(&resolved), fmt).map_err(|e| {
                    ctx(Error::Invalid(format!("{e}; could not open backing image")))
                })?
            }
            _ => {
                return Err(ctx(Error::Usage(
                    "Image creation needs a size parameter".into(),
                )));
            }
        },
    };

    let mut options = CreateOptions {
        size,
        backing_file: given.backing_file.clone(),
        backing_format,
        ..CreateOptions::default()
    };
    // Size-typed options are printed as numbers, as qemu-img prints them.
    let cluster_size = given
        .cluster_size
        .as_deref()
        .map(|c| {
            parse_size(c).map_err(|_| {
                ctx(Error::Usage(
                    "Parameter 'cluster_size' expects a non-negative number below 2^64".into(),
                ))
            })
        })
        .transpose()?;
    let line = match format {
        ImageFormat::Raw => format!("Formatting '{}', fmt=raw size={size}", args.filename),
        ImageFormat::Qcow2 => {
            let mut line = format!(
                "Formatting '{}', fmt=qcow2 cluster_size={} extended_l2=off compression_type=zlib size={size}",
                args.filename,
                cluster_size.unwrap_or(65536)
            );
            if let Some(b) = &given.backing_file {
                line += &format!(" backing_file={b}");
            }
            if let Some(f) = &given.backing_fmt {
                line += &format!(" backing_fmt={f}");
            }
            if let Some(c) = &given.compat {
                line += &format!(" compat={c}");
            }
            line += &format!(
                " lazy_refcounts={} refcount_bits={}",
                given.lazy_refcounts.as_deref().unwrap_or("off"),
                given.refcount_bits.as_deref().unwrap_or("16")
            );
            line
        }
    };
    if !args.quiet {
        let _ = writeln!(out, "{line}");
    }

    if let Some(cs) = cluster_size {
        if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
            return Err(ctx(Error::Usage(
                "Cluster size must be a power of two between 512 and 2048k".into(),
            )));
        }
        options.cluster_size = Some(cs);
    }
    if let Some(c) = &given.compat {
        options.compat = Some(match c.as_str() {
            "0.10" | "v2" => Compat::V2,
            "1.1" | "v3" => Compat::V3,
            _ => {
                return Err(ctx(Error::Usage(format!(
                    "Invalid parameter value for 'compat': '{c}'"
                ))));
            }
        });
    }
    if let Some(l) = &given.lazy_refcounts {
        options.lazy_refcounts = Some(parse_bool("lazy_refcounts", l).map_err(ctx)?);
    }
    if let Some(r) = &given.refcount_bits {
        let bits: u32 = r.parse().unwrap_or(0);
        if !bits.is_power_of_two() || bits > 64 {
            return Err(ctx(Error::Usage(
                "Refcount width must be a power of two and may not exceed 64 bits".into(),
            )));
        }
        options.refcount_bits = Some(bits);
    }
    if options.compat == Some(Compat::V2) {
        if options.lazy_refcounts == Some(true) {
            return Err(ctx(Error::Usage(
                "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)".into(),
            )));
        }
        if options.refcount_bits.is_some_and(|b| b != 16) {
            return Err(ctx(Error::Usage(
                "Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)".into(),
            )));
        }
    }
    // qemu rounds the size up to a whole sector.
    options.size = size.div_ceil(512).saturating_mul(512);
    image::create_image(path, format, &options).map_err(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_options_like_qemu() {
        let opts = split_options(&[
            "cluster_size=4k,backing_file=a,,b".into(),
            "compat=1.1".into(),
        ])
        .unwrap();
        assert_eq!(
            opts,
            vec![
                ("cluster_size".into(), "4k".into()),
                ("backing_file".into(), "a,b".into()),
                ("compat".into(), "1.1".into())
            ]
        );
        assert!(split_options(&["lazy_refcounts".into()]).is_err());
    }

    #[test]
    fn bad_options_create_nothing() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-img-create").unwrap();
        let file = dir.as_path().join("x.raw").display().to_string();
        let mut out = Vec::new();
        for (format, opts, size) in [
            ("raw", "cluster_size=4k", "1M"),
            ("raw", "", "1Q"),
            ("vmdk", "", "1M"),
            ("qcow2", "foo=1", "1M"),
        ] {
            let args = CreateArgs {
                format: Some(format.into()),
                options: vec![opts.into()],
                filename: file.clone(),
                size: Some(size.into()),
                ..CreateArgs::default()
            };
            assert!(create(&args, &mut out).is_err(), "{format} {opts} {size}");
            assert!(!Path::new(&file).exists());
        }
    }

    #[test]
    fn raw_create_is_sparse_and_rounds_to_a_sector() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-img-create").unwrap();
        let file = dir.as_path().join("x.raw");
        std::fs::write(&file, vec![0xaa; 100_000]).unwrap();
        let args = CreateArgs {
            filename: file.display().to_string(),
            size: Some("1000".into()),
            ..CreateArgs::default()
        };
        let mut out = Vec::new();
        create(&args, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("Formatting '{}', fmt=raw size=1000\n", file.display())
        );
        // Overwritten as qemu-img does: old data gone, size rounded up.
        assert_eq!(std::fs::read(&file).unwrap(), vec![0u8; 1024]);

        // Refused while a VM holds the image; the data stays.
        std::fs::write(&file, vec![0xbb; 4096]).unwrap();
        let held = vmkit_disk::RawImage::open(&file, false).unwrap();
        assert!(create(&args, &mut Vec::new()).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), vec![0xbb; 4096]);
        drop(held);
    }
}
