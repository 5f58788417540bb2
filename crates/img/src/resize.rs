//! `resize`: change an image's virtual size. Shrinking needs `--shrink`, as
//! with qemu-img, because it throws away the data past the new end.

use std::io::Write;
use std::path::Path;

use crate::image;
use crate::size::parse_size;
use crate::{Error, Result};

/// The arguments of `resize`.
#[derive(Clone, Debug, Default)]
pub struct ResizeArgs {
    /// `-f`: the format; probed when absent.
    pub format: Option<String>,
    /// `--shrink`: allow a smaller size.
    pub shrink: bool,
    /// `-q`.
    pub quiet: bool,
    /// The image.
    pub filename: String,
    /// `SIZE`, `+SIZE` or `-SIZE`.
    pub size: String,
}

/// The new size from the current one and a `[+|-]SIZE` argument.
pub fn new_size(current: u64, arg: &str) -> Result<u64> {
    let invalid = || {
        Error::Usage(
            "Invalid image size specified. Must be between 0 and 9223372036854775807.".into(),
        )
    };
    let (sign, rest) = match arg.as_bytes().first() {
        Some(b'+') => (1, &arg[1..]),
        Some(b'-') => (-1, &arg[1..]),
        _ => (0, arg),
    };
    let n = parse_size(rest).map_err(|_| invalid())?;
    let size = match sign {
        1 => current
            .checked_add(n)
            .filter(|&s| s <= i64::MAX as u64)
            .ok_or_else(invalid)?,
        -1 => current
            .checked_sub(n)
            .ok_or_else(|| Error::Usage("New image size must be positive.".into()))?,
        _ => n,
    };
    Ok(size)
}

/// Runs `resize`: `Image resized.` on `out`, the shrink warning on `err`.
pub fn resize(args: &ResizeArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    let path = Path::new(&args.filename);
    let format = image::format_or_probe(args.format.as_deref(), path, Some(err))?;
    let current = image::virtual_size(path, format)?;
    let size = new_size(current, &args.size)?;
    if size < current {
        if !args.shrink {
            return Err(Error::Usage(
                "Use the --shrink option to perform a shrink operation.".into(),
            ));
        }
        let _ = writeln!(
            err,
            "vmkit-img: warning: Shrinking an image will delete all data beyond the shrunken image's end. \
             Before performing such an operation, make sure there is no important data there."
        );
    }
    image::resize_image(path, format, size)?;
    if !args.quiet {
        let _ = writeln!(out, "Image resized.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_and_absolute_sizes() {
        assert_eq!(new_size(1 << 20, "2M").unwrap(), 2 << 20);
        assert_eq!(new_size(1 << 20, "+1M").unwrap(), 2 << 20);
        assert_eq!(new_size(2 << 20, "-1M").unwrap(), 1 << 20);
        assert!(new_size(1 << 20, "-2M").is_err());
        assert!(new_size(1 << 20, "+x").is_err());
        assert!(new_size(u64::MAX / 2, "+8E").is_err());
    }

    #[test]
    fn raw_shrink_needs_the_flag_and_keeps_data_without_it() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-img-resize").unwrap();
        let file = dir.as_path().join("r.raw");
        std::fs::write(&file, vec![7u8; 8192]).unwrap();
        let mut args = ResizeArgs {
            format: Some("raw".into()),
            filename: file.display().to_string(),
            size: "-4k".into(),
            ..ResizeArgs::default()
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let e = resize(&args, &mut out, &mut err).unwrap_err();
        assert!(e.to_string().contains("--shrink"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), vec![7u8; 8192]);
        args.shrink = true;
        resize(&args, &mut out, &mut err).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), vec![7u8; 4096]);
        assert_eq!(out, b"Image resized.\n");
        args.size = "+1M".into();
        resize(&args, &mut out, &mut err).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 4096 + (1 << 20));
    }
}
