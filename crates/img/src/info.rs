//! `info`: what an image is, printed as qemu-img prints it.

use std::io::Write;
use std::path::Path;

use vmkit_disk::ImageFormat;

use crate::image::{self, ImageInfo};
use crate::json::Json;
use crate::size::size_to_str;
use crate::{Error, Result};

/// qemu-img's `--output` choices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// Text for people.
    #[default]
    Human,
    /// JSON in qemu-img's layout.
    Json,
}

impl std::str::FromStr for OutputFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "human" => Ok(OutputFormat::Human),
            "json" => Ok(OutputFormat::Json),
            _ => Err(Error::Usage(
                "--output must be used with human or json as argument.".into(),
            )),
        }
    }
}

/// The arguments of `info`.
#[derive(Clone, Debug, Default)]
pub struct InfoArgs {
    /// `-f`: the format; probed when absent (info only reads).
    pub format: Option<String>,
    /// `--output`.
    pub output: OutputFormat,
    /// `--backing-chain`: also every backing file.
    pub backing_chain: bool,
    /// The image.
    pub filename: String,
}

/// The human-readable lines of one image.
pub fn human(info: &ImageInfo) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(format!("image: {}", info.filename));
    line(format!("file format: {}", info.format));
    line(format!(
        "virtual size: {} ({} bytes)",
        size_to_str(info.virtual_size),
        info.virtual_size
    ));
    line(format!("disk size: {}", size_to_str(info.actual_size)));
    if let Some(q) = &info.qcow2 {
        line(format!("cluster_size: {}", q.cluster_size));
        if let Some(b) = &q.backing_file {
            let full = info.full_backing_filename().unwrap_or_default();
            if &full != b {
                line(format!("backing file: {b} (actual path: {full})"));
            } else {
                line(format!("backing file: {b}"));
            }
            if let Some(f) = &q.backing_format {
                line(format!("backing file format: {f}"));
            }
        }
        if q.dirty {
            line("cleanly shut down: no".into());
        }
        line("Format specific information:".into());
        line(format!(
            "    compat: {}",
            if q.version >= 3 { "1.1" } else { "0.10" }
        ));
        line(format!("    compression type: {}", q.compression_type));
        if q.version >= 3 {
            line(format!("    lazy refcounts: {}", q.lazy_refcounts));
        }
        line(format!("    refcount bits: {}", q.refcount_bits));
        if q.version >= 3 {
            line(format!("    corrupt: {}", q.corrupt));
            line("    extended l2: false".into());
        }
    }
    line("Child node '/file':".into());
    line(format!("    filename: {}", info.filename));
    line("    protocol type: file".into());
    line(format!(
        "    file length: {} ({} bytes)",
        size_to_str(info.file_length),
        info.file_length
    ));
    line(format!("    disk size: {}", size_to_str(info.actual_size)));
    s
}

/// The JSON object of one image, with qemu-img's keys in qemu-img's order.
pub fn json(info: &ImageInfo) -> Json {
    let mut file = Json::object();
    file.push("children", Json::Array(vec![]));
    file.push("virtual-size", info.file_length);
    file.push("filename", info.filename.as_str());
    file.push("format", "file");
    file.push("actual-size", info.actual_size);
    let mut spec = Json::object();
    spec.push("type", "file");
    spec.push("data", Json::object());
    file.push("format-specific", spec);
    file.push("dirty-flag", false);
    let mut child = Json::object();
    child.push("name", "file");
    child.push("info", file);

    let mut top = Json::object();
    top.push("children", Json::Array(vec![child]));
    let q = info.qcow2.as_ref();
    if let Some(f) = q.and_then(|q| q.backing_format.as_deref()) {
        top.push("backing-filename-format", f);
    }
    top.push("virtual-size", info.virtual_size);
    top.push("filename", info.filename.as_str());
    if let Some(q) = q {
        top.push("cluster-size", q.cluster_size);
    }
    top.push("format", info.format.to_string());
    top.push("actual-size", info.actual_size);
    if let Some(q) = q {
        let mut data = Json::object();
        data.push("compat", if q.version >= 3 { "1.1" } else { "0.10" });
        data.push("compression-type", q.compression_type.as_str());
        if q.version >= 3 {
            data.push("lazy-refcounts", q.lazy_refcounts);
        }
        data.push("refcount-bits", u64::from(q.refcount_bits));
        if q.version >= 3 {
            data.push("corrupt", q.corrupt);
            data.push("extended-l2", false);
        }
        let mut spec = Json::object();
        spec.push("type", "qcow2");
        spec.push("data", data);
        top.push("format-specific", spec);
        if let Some(b) = &q.backing_file {
            top.push(
                "full-backing-filename",
                info.full_backing_filename().unwrap_or_default(),
            );
            top.push("backing-filename", b.as_str());
        }
    }
    top.push("dirty-flag", q.is_some_and(|q| q.dirty));
    top
}

/// Reads the image (and with `backing_chain`, its backing files) and prints
/// it on `out`.
pub fn info(args: &InfoArgs, out: &mut dyn Write) -> Result<()> {
    let mut infos = Vec::new();
    let mut filename = args.filename.clone();
    let mut format = args.format.clone();
    loop {
        // A backing chain loop would never end.
        if infos.iter().any(|i: &ImageInfo| i.filename == filename) {
            return Err(Error::Invalid(format!(
                "Backing file '{filename}' creates an infinite loop."
            )));
        }
        let path = Path::new(&filename);
        let fmt = image::format_or_probe(format.as_deref(), path, None)?;
        let info = image::image_info(path, fmt)?;
        let next = match (args.backing_chain, fmt) {
            (true, ImageFormat::Qcow2) => info.full_backing_filename().map(|b| {
                let f = info.qcow2.as_ref().and_then(|q| q.backing_format.clone());
                (b, f)
            }),
            _ => None,
        };
        infos.push(info);
        match next {
            Some((b, f)) => {
                filename = b;
                format = f;
            }
            None => break,
        }
    }
    let text = match (args.output, args.backing_chain) {
        (OutputFormat::Human, _) => infos.iter().map(human).collect::<Vec<_>>().join("\n"),
        (OutputFormat::Json, false) => json(&infos[0]).to_pretty() + "\n",
        (OutputFormat::Json, true) => {
            Json::Array(infos.iter().map(json).collect()).to_pretty() + "\n"
        }
    };
    let _ = out.write_all(text.as_bytes());
    Ok(())
}
