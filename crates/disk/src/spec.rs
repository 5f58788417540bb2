//! The command-line description of a disk, and opening it.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::{DiskImage, Error, Qcow2Image, Qcow2Options, RawImage, Result};

/// A disk image format. The format is always stated (or defaults to raw),
/// never guessed from the image's contents: guessing lets a guest that
/// writes a qcow2 header into a raw disk make the host open arbitrary
/// backing files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageFormat {
    /// The guest's disk is the file's bytes.
    #[default]
    Raw,
    /// QEMU copy-on-write, versions 2 and 3.
    Qcow2,
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        })
    }
}

impl FromStr for ImageFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "raw" => Ok(ImageFormat::Raw),
            "qcow2" => Ok(ImageFormat::Qcow2),
            _ => Err(Error::InvalidSpec(format!(
                "unknown format '{s}' (expected raw or qcow2)"
            ))),
        }
    }
}

/// A disk as given on the command line:
/// `PATH[,format=raw|qcow2][,readonly=on|off][,backing=on|off]`.
///
/// A comma inside the path is written `,,`. Options may come in any order,
/// each at most once; the format defaults to raw, the disk to read-write,
/// and backing files to off (a qcow2 image with a backing file is then
/// refused: its backing file name comes from the image itself).
///
/// ```
/// use vmkit_disk::{DiskSpec, ImageFormat};
///
/// let spec: DiskSpec = "/images/root.img,readonly=on".parse()?;
/// assert_eq!(spec.path.to_str(), Some("/images/root.img"));
/// assert_eq!(spec.format, ImageFormat::Raw);
/// assert!(spec.read_only);
/// assert!("/images/root.img,cache=none".parse::<DiskSpec>().is_err());
/// # Ok::<(), vmkit_disk::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image file (or block device).
    pub path: PathBuf,
    /// The image's format.
    pub format: ImageFormat,
    /// Whether the guest may only read the disk.
    pub read_only: bool,
    /// Whether a qcow2 image's backing chain may be opened.
    pub backing: bool,
}

impl DiskSpec {
    /// A read-write raw disk at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DiskSpec {
            path: path.into(),
            format: ImageFormat::Raw,
            read_only: false,
            backing: false,
        }
    }
}

/// Splits `s` at single commas; `,,` stands for a literal comma.
fn split_options(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = s.chars().peekable();
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
    parts
}

impl FromStr for DiskSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = |msg: String| Error::InvalidSpec(msg);
        let mut parts = split_options(s).into_iter();
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(invalid(format!(
                "'{s}': missing image path (expected PATH[,format=raw][,readonly=on|off])"
            )));
        }
        let mut format = None;
        let mut read_only = None;
        let mut backing = None;
        for opt in parts {
            let Some((key, value)) = opt.split_once('=') else {
                return Err(invalid(format!("'{opt}': expected KEY=VALUE")));
            };
            match key {
                "format" => {
                    if format.replace(value.parse::<ImageFormat>()?).is_some() {
                        return Err(invalid("'format' given twice".into()));
                    }
                }
                "readonly" | "backing" => {
                    let on = match value {
                        "on" => true,
                        "off" => false,
                        _ => {
                            return Err(invalid(format!("{key}='{value}': expected on or off")));
                        }
                    };
                    let slot = if key == "readonly" {
                        &mut read_only
                    } else {
                        &mut backing
                    };
                    if slot.replace(on).is_some() {
                        return Err(invalid(format!("'{key}' given twice")));
                    }
                }
                _ => {
                    return Err(invalid(format!(
                        "unknown option '{key}' (known: format, readonly, backing)"
                    )));
                }
            }
        }
        Ok(DiskSpec {
            path: PathBuf::from(path),
            format: format.unwrap_or_default(),
            read_only: read_only.unwrap_or(false),
            backing: backing.unwrap_or(false),
        })
    }
}

impl fmt::Display for DiskSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.to_string_lossy().replace(',', ",,");
        let ro = if self.read_only { "on" } else { "off" };
        write!(f, "{path},format={},readonly={ro}", self.format)?;
        if self.backing {
            f.write_str(",backing=on")?;
        }
        Ok(())
    }
}

/// Opens the disk `spec` describes, in the format it names.
pub fn open_disk(spec: &DiskSpec) -> Result<Box<dyn DiskImage>> {
    match spec.format {
        ImageFormat::Raw => Ok(Box::new(RawImage::open(&spec.path, spec.read_only)?)),
        ImageFormat::Qcow2 => Ok(Box::new(Qcow2Image::open(
            &spec.path,
            &Qcow2Options {
                read_only: spec.read_only,
                backing: spec.backing,
                direct: false,
            },
        )?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<DiskSpec> {
        s.parse()
    }

    fn err(s: &str) -> String {
        match parse(s) {
            Err(Error::InvalidSpec(msg)) => msg,
            other => panic!("{s}: expected InvalidSpec, got {other:?}"),
        }
    }

    #[test]
    fn parses_path_and_options() {
        assert_eq!(parse("disk.img").unwrap(), DiskSpec::new("disk.img"));
        let spec = parse("/a/b.qcow2,readonly=on,format=qcow2").unwrap();
        assert_eq!(spec.path, PathBuf::from("/a/b.qcow2"));
        assert_eq!(spec.format, ImageFormat::Qcow2);
        assert!(spec.read_only);
        let spec = parse("x,format=raw,readonly=off").unwrap();
        assert_eq!(spec.format, ImageFormat::Raw);
        assert!(!spec.read_only);
        // `,,` is a comma in the path.
        let spec = parse("/a,,b/c.img,readonly=on").unwrap();
        assert_eq!(spec.path, PathBuf::from("/a,b/c.img"));
        assert!(spec.read_only);
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "/a,,b.img,format=qcow2,readonly=on",
            "d.img,format=raw,readonly=off",
        ] {
            let spec = parse(s).unwrap();
            assert_eq!(spec.to_string(), s);
            assert_eq!(parse(&spec.to_string()).unwrap(), spec);
        }
    }

    #[test]
    fn rejects_malformed_specs() {
        assert!(err("").contains("missing image path"));
        assert!(err(",readonly=on").contains("missing image path"));
        assert!(err("d.img,cache=none").contains("unknown option 'cache'"));
        assert!(err("d.img,format=vmdk").contains("unknown format 'vmdk'"));
        assert!(err("d.img,format=").contains("unknown format ''"));
        assert!(err("d.img,readonly=yes").contains("expected on or off"));
        assert!(err("d.img,readonly").contains("expected KEY=VALUE"));
        assert!(err("d.img,").contains("expected KEY=VALUE"));
        assert!(err("d.img,readonly=on,readonly=off").contains("twice"));
        assert!(err("d.img,format=raw,format=raw").contains("twice"));
        // One line each.
        assert!(!err("d.img,format=vmdk").contains('\n'));
    }

    #[test]
    fn parses_backing_option() {
        let spec = parse("/a/b.qcow2,format=qcow2,backing=on").unwrap();
        assert!(spec.backing);
        assert!(!spec.read_only);
        assert_eq!(
            spec.to_string(),
            "/a/b.qcow2,format=qcow2,readonly=off,backing=on"
        );
        assert_eq!(parse(&spec.to_string()).unwrap(), spec);
        assert!(!parse("x,backing=off").unwrap().backing);
        assert!(!parse("x").unwrap().backing);
        assert!(err("x,backing=yes").contains("backing='yes': expected on or off"));
        assert!(err("x,backing=on,backing=on").contains("'backing' given twice"));
        assert!(err("x,cache=none").contains("known: format, readonly, backing"));
    }

    #[test]
    fn qcow2_format_is_stated_never_guessed() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-spec").unwrap();
        let path = dir.as_path().join("d.qcow2");
        // A qcow2 magic with garbage behind it: opened as qcow2 it is
        // refused as invalid, opened as raw (the default) it stays raw bytes.
        let mut data = vec![0u8; 4096];
        data[..4].copy_from_slice(b"QFI\xfb");
        std::fs::write(&path, &data).unwrap();

        let err =
            open_disk(&parse(&format!("{},format=qcow2", path.display())).unwrap()).unwrap_err();
        assert!(matches!(err, Error::InvalidImage { .. }), "{err}");

        let disk = open_disk(&parse(&format!("{},readonly=on", path.display())).unwrap()).unwrap();
        assert_eq!(disk.size(), 4096);
        assert!(disk.is_read_only());
        let mut head = [0u8; 512];
        disk.read_at(&mut vm_memory::VolatileSlice::from(&mut head[..]), 0)
            .unwrap();
        assert_eq!(&head[..4], b"QFI\xfb");

        // A real qcow2 image opens through the spec.
        let q = dir.as_path().join("real.qcow2");
        crate::Qcow2Image::create(
            &q,
            &crate::CreateOptions {
                size: 1 << 20,
                ..Default::default()
            },
        )
        .unwrap();
        let disk = open_disk(&parse(&format!("{},format=qcow2", q.display())).unwrap()).unwrap();
        assert_eq!(disk.size(), 1 << 20);
    }
}
