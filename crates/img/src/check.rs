//! `check`: consistency of an image's metadata, reported and exited with
//! as qemu-img does: 0 when clean, 2 when corrupt, 3 when only clusters
//! leaked, 1 when the check itself failed, 63 when the format has no check.

use std::io::Write;
use std::path::Path;

use crate::image::{self, CheckOutcome};
use crate::info::OutputFormat;
use crate::json::Json;
use crate::{Error, Result};

/// What `-r` asks to repair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Repair {
    /// Nothing: the image is opened read-only.
    #[default]
    None,
    /// Leaked clusters.
    Leaks,
    /// Leaks and corruptions (only leaks are repaired so far; corruptions
    /// stay reported).
    All,
}

impl std::str::FromStr for Repair {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "leaks" => Ok(Repair::Leaks),
            "all" => Ok(Repair::All),
            _ => Err(Error::Usage(format!(
                "Unknown option value for -r (expecting 'leaks' or 'all'): {s}"
            ))),
        }
    }
}

/// The arguments of `check`.
#[derive(Clone, Debug, Default)]
pub struct CheckArgs {
    /// `-f`: the format; probed when absent.
    pub format: Option<String>,
    /// `-r`.
    pub repair: Repair,
    /// `--output`.
    pub output: OutputFormat,
    /// `-q`: print nothing on stdout.
    pub quiet: bool,
    /// The image.
    pub filename: String,
}

/// The report in qemu-img's human form.
pub fn human(c: &CheckOutcome) -> String {
    let mut s = String::new();
    if c.corruptions == 0 && c.leaks == 0 && c.check_errors == 0 {
        s.push_str("No errors were found on the image.\n");
    } else {
        if c.corruptions != 0 {
            s += &format!(
                "\n{} errors were found on the image.\n\
                 Data may be corrupted, or further writes to the image may corrupt it.\n",
                c.corruptions
            );
        }
        if c.leaks != 0 {
            s += &format!(
                "\n{} leaked clusters were found on the image.\n\
                 This means waste of disk space, but no harm to data.\n",
                c.leaks
            );
        }
        if c.check_errors != 0 {
            s += &format!(
                "\n{} internal errors have occurred during the check.\n",
                c.check_errors
            );
        }
    }
    let total = c.total_clusters.unwrap_or(0);
    let allocated = c.allocated_clusters.unwrap_or(0);
    if total != 0 && allocated != 0 {
        let pct = |n: u64, d: u64| n as f64 * 100.0 / d as f64;
        s += &format!(
            "{allocated}/{total} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
            pct(allocated, total),
            pct(c.fragmented_clusters.unwrap_or(0), allocated),
            pct(c.compressed_clusters.unwrap_or(0), allocated)
        );
    }
    if let Some(end) = c.image_end_offset.filter(|&e| e != 0) {
        s += &format!("Image end offset: {end}\n");
    }
    s
}

/// The report as qemu-img's JSON object (keys in qemu-img's order).
pub fn json(c: &CheckOutcome, filename: &str, format: &str) -> Json {
    let mut j = Json::object();
    let mut nonzero = |key: &str, v: Option<u64>| {
        if let Some(v) = v.filter(|&v| v != 0) {
            j.push(key, v);
        }
    };
    nonzero("image-end-offset", c.image_end_offset);
    nonzero("total-clusters", c.total_clusters);
    nonzero("corruptions", Some(c.corruptions));
    j.push("check-errors", c.check_errors);
    let mut nonzero = |key: &str, v: Option<u64>| {
        if let Some(v) = v.filter(|&v| v != 0) {
            j.push(key, v);
        }
    };
    nonzero("leaks", Some(c.leaks));
    nonzero("corruptions-fixed", Some(c.corruptions_fixed));
    nonzero("leaks-fixed", Some(c.leaks_fixed));
    nonzero("allocated-clusters", c.allocated_clusters);
    nonzero("fragmented-clusters", c.fragmented_clusters);
    nonzero("compressed-clusters", c.compressed_clusters);
    j.push("filename", filename);
    j.push("format", format);
    j
}

/// Runs `check`: the report on `out`, the per-problem lines on `err`;
/// returns the exit code.
pub fn check(args: &CheckArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<i32> {
    let path = Path::new(&args.filename);
    let format = image::format_or_probe(args.format.as_deref(), path, None)?;
    let repair = args.repair != Repair::None;
    let mut outcome = image::check_image(path, format, repair)?;
    for m in &outcome.messages {
        let _ = writeln!(err, "{m}");
    }
    if outcome.leaks_fixed != 0 || outcome.corruptions_fixed != 0 {
        if args.output == OutputFormat::Human && !args.quiet {
            let _ = write!(
                out,
                "The following inconsistencies were found and repaired:\n\n    \
                 {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...\n",
                outcome.leaks_fixed, outcome.corruptions_fixed
            );
        }
        let (leaks_fixed, corruptions_fixed) = (outcome.leaks_fixed, outcome.corruptions_fixed);
        outcome = image::check_image(path, format, false)?;
        for m in &outcome.messages {
            let _ = writeln!(err, "{m}");
        }
        outcome.leaks_fixed = leaks_fixed;
        outcome.corruptions_fixed = corruptions_fixed;
    }
    if !args.quiet {
        let text = match args.output {
            OutputFormat::Human => human(&outcome),
            OutputFormat::Json => {
                json(&outcome, &args.filename, &format.to_string()).to_pretty() + "\n"
            }
        };
        let _ = out.write_all(text.as_bytes());
    }
    if outcome.check_errors != 0 {
        return Err(Error::Invalid("Check failed".into()));
    }
    Ok(if outcome.corruptions != 0 {
        2
    } else if outcome.leaks != 0 {
        3
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_report_matches_qemu_wording() {
        let leaked = CheckOutcome {
            leaks: 2,
            allocated_clusters: Some(4),
            total_clusters: Some(1024),
            image_end_offset: Some(720896),
            ..CheckOutcome::default()
        };
        assert_eq!(
            human(&leaked),
            "\n2 leaked clusters were found on the image.\n\
             This means waste of disk space, but no harm to data.\n\
             4/1024 = 0.39% allocated, 0.00% fragmented, 0.00% compressed clusters\n\
             Image end offset: 720896\n"
        );
        let clean = CheckOutcome {
            total_clusters: Some(1024),
            image_end_offset: Some(262144),
            ..CheckOutcome::default()
        };
        assert_eq!(
            human(&clean),
            "No errors were found on the image.\nImage end offset: 262144\n"
        );
        let j = json(&clean, "b.qcow2", "qcow2").to_pretty();
        assert_eq!(
            j,
            "{\n    \"image-end-offset\": 262144,\n    \"total-clusters\": 1024,\n    \
             \"check-errors\": 0,\n    \"filename\": \"b.qcow2\",\n    \"format\": \"qcow2\"\n}"
        );
    }
}
