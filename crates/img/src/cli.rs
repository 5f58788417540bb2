//! The command line: qemu-img's flags parsed with clap, dispatched to the
//! command functions, errors turned into one line and qemu-img's exit
//! codes.

use std::ffi::OsString;
use std::io::Write;

use clap::{Args, Parser, Subcommand};

use crate::bench::{self, Aio, BenchArgs, BenchOptions, CacheMode};
use crate::check::{self, CheckArgs, Repair};
use crate::convert::{self, ConvertArgs};
use crate::create::{self, CreateArgs};
use crate::info::{self, InfoArgs, OutputFormat};
use crate::resize::{self, ResizeArgs};
use crate::size::parse_size;
use crate::{Error, Result};

#[derive(Parser, Debug)]
#[command(
    name = "vmkit-img",
    version,
    about = "Create, inspect, check, convert, resize and benchmark raw and qcow2 images, like qemu-img"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create and format a new image file (an existing file is overwritten).
    Create(CreateCli),
    /// Display information about an image.
    Info(InfoCli),
    /// Check an image's metadata (exit 0 clean, 2 corrupt, 3 leaks, 1 error).
    Check(CheckCli),
    /// Copy an image to a new one, keeping it sparse.
    Convert(ConvertCli),
    /// Change an image's virtual size.
    Resize(ResizeCli),
    /// Run qemu-img bench's workload.
    Bench(BenchCli),
}

#[derive(Args, Debug)]
struct CreateCli {
    /// Image format: raw or qcow2.
    #[arg(short = 'f', long = "format", default_value = "raw")]
    format: String,
    /// Format options, KEY=VALUE[,KEY=VALUE...].
    #[arg(short = 'o', long = "options")]
    options: Vec<String>,
    /// Backing file.
    #[arg(short = 'b', long = "backing")]
    backing: Option<String>,
    /// Backing file format.
    #[arg(short = 'F', long = "backing-format")]
    backing_format: Option<String>,
    /// Print nothing.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Image file.
    filename: String,
    /// Size, with an optional k/M/G/T/P/E suffix (1024-based).
    size: Option<String>,
}

#[derive(Args, Debug)]
struct InfoCli {
    /// Image format; probed when absent.
    #[arg(short = 'f', long = "format")]
    format: Option<String>,
    /// human or json.
    #[arg(long = "output", default_value = "human")]
    output: String,
    /// Also show every backing file.
    #[arg(short = 'b', long = "backing-chain")]
    backing_chain: bool,
    /// Accepted for qemu-img compatibility (images are opened read-only).
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// Image file.
    filename: String,
}

#[derive(Args, Debug)]
struct CheckCli {
    /// Image format; probed when absent.
    #[arg(short = 'f', long = "format")]
    format: Option<String>,
    /// Repair leaks, or all.
    #[arg(short = 'r', long = "repair")]
    repair: Option<String>,
    /// human or json.
    #[arg(long = "output", default_value = "human")]
    output: String,
    /// Print nothing on stdout.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Accepted for qemu-img compatibility.
    #[arg(short = 'T', long = "cache")]
    cache: Option<String>,
    /// Image file.
    filename: String,
}

#[derive(Args, Debug)]
struct ConvertCli {
    /// Source format; probed when absent.
    #[arg(short = 'f', long = "source-format")]
    format: Option<String>,
    /// Target format (raw unless given).
    #[arg(short = 'O', long = "target-format")]
    output_format: Option<String>,
    /// Target format options.
    #[arg(short = 'o', long = "target-options")]
    options: Vec<String>,
    /// Accepted for qemu-img compatibility (no progress is shown).
    #[arg(short = 'p', long = "progress")]
    progress: bool,
    /// Print nothing.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Source image.
    source: String,
    /// Target image (overwritten if it exists).
    target: String,
}

#[derive(Args, Debug)]
struct ResizeCli {
    /// Image format; probed when absent.
    #[arg(short = 'f', long = "format")]
    format: Option<String>,
    /// Allow a smaller size (data past the new end is lost).
    #[arg(long = "shrink")]
    shrink: bool,
    /// Print nothing.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Image file.
    filename: String,
    /// New size, or +SIZE / -SIZE.
    #[arg(allow_hyphen_values = true)]
    size: String,
}

#[derive(Args, Debug)]
struct BenchCli {
    /// Number of requests.
    #[arg(short = 'c', long = "count")]
    count: Option<String>,
    /// Requests in parallel (worker threads).
    #[arg(short = 'd', long = "depth")]
    depth: Option<String>,
    /// Image format; probed when absent.
    #[arg(short = 'f', long = "format")]
    format: Option<String>,
    /// Native AIO (accepted; needs -t none, as in qemu-img).
    #[arg(short = 'n', long = "native")]
    native: bool,
    /// AIO engine: threads, native or io_uring (accepted; threads are used).
    #[arg(short = 'i', long = "aio")]
    aio: Option<String>,
    /// Offset of the first request.
    #[arg(short = 'o', long = "offset")]
    offset: Option<String>,
    /// Bytes per request.
    #[arg(short = 's', long = "buffer-size")]
    buffer_size: Option<String>,
    /// Offset increment between requests (default: the buffer size).
    #[arg(short = 'S', long = "step-size")]
    step: Option<String>,
    /// Cache mode: none, writeback, writethrough, directsync, unsafe.
    #[arg(short = 't', long = "cache")]
    cache: Option<String>,
    /// Write instead of read.
    #[arg(short = 'w', long = "write")]
    write: bool,
    /// Byte to write.
    #[arg(long = "pattern")]
    pattern: Option<String>,
    /// Flush every N requests.
    #[arg(long = "flush-interval")]
    flush_interval: Option<String>,
    /// Do not wait for requests in flight before flushing.
    #[arg(long = "no-drain")]
    no_drain: bool,
    /// Accepted (bench prints its lines anyway, as qemu-img does).
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Accepted for qemu-img compatibility.
    #[arg(short = 'U', long = "force-share")]
    force_share: bool,
    /// Image file.
    filename: String,
}

/// `qemu_strtoul(.., 0, ..)`: decimal, `0x` hexadecimal or `0` octal.
fn parse_ulong(s: &str) -> Option<u64> {
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

fn ranged(what: &str, s: &str, parsed: Option<u64>, min: u64, max: u64) -> Result<u64> {
    let v = parsed.ok_or_else(|| Error::Usage(format!("Invalid {what} specified: '{s}'.")))?;
    if !(min..=max).contains(&v) {
        return Err(Error::Usage(format!(
            "Invalid {what} specified. Must be between {min} and {max}."
        )));
    }
    Ok(v)
}

const INT_MAX: u64 = i32::MAX as u64;

impl BenchCli {
    fn into_args(self) -> Result<BenchArgs> {
        let mut o = BenchOptions::default();
        if let Some(s) = &self.count {
            o.count = ranged("request count", s, parse_ulong(s), 1, INT_MAX)?;
        }
        if let Some(s) = &self.depth {
            o.depth = ranged("queue depth", s, parse_ulong(s), 1, INT_MAX)? as usize;
        }
        if let Some(s) = &self.offset {
            o.offset = if s.starts_with('-') {
                return Err(Error::Usage(
                    "Invalid offset specified. Must be between 0 and 9223372036854775807.".into(),
                ));
            } else {
                ranged("offset", s, parse_size(s).ok(), 0, i64::MAX as u64)?
            };
        }
        if let Some(s) = &self.buffer_size {
            o.buffer_size = ranged("buffer size", s, parse_size(s).ok(), 1, INT_MAX)? as usize;
        }
        if let Some(s) = &self.step {
            o.step = ranged("step size", s, parse_size(s).ok(), 0, INT_MAX)?;
        }
        if let Some(s) = &self.pattern {
            o.pattern = ranged("pattern byte", s, parse_ulong(s), 0, 255)? as u8;
        }
        if let Some(s) = &self.flush_interval {
            o.flush_interval = ranged("flush interval", s, parse_ulong(s), 0, INT_MAX)?;
        }
        if let Some(s) = &self.cache {
            o.cache = s.parse()?;
        }
        o.write = self.write;
        o.drain_on_flush = !self.no_drain;
        let mut aio = match &self.aio {
            Some(s) => s.parse()?,
            None => Aio::Threads,
        };
        if self.native {
            aio = Aio::Native;
        }
        let _ = (self.quiet, self.force_share);
        Ok(BenchArgs {
            format: self.format,
            aio,
            options: o,
            filename: self.filename,
        })
    }
}

/// Parses `args` (the program name first) and runs the command, writing
/// its output to `out` and diagnostics to `err`. Returns the exit code:
/// qemu-img's (0 success, 1 error, and `check`'s 2, 3 and 63).
pub fn run<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = write!(out, "{}", e.render());
                    0
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = write!(err, "{}", e.render());
                    1
                }
                _ => {
                    // clap's first line, without its "error: " prefix.
                    let text = e.render().to_string();
                    let first = text.lines().next().unwrap_or("invalid arguments");
                    let first = first.strip_prefix("error: ").unwrap_or(first);
                    let _ = writeln!(err, "vmkit-img: {first}");
                    let _ = writeln!(err, "Try 'vmkit-img --help' for more information.");
                    1
                }
            };
        }
    };
    match dispatch(cli.command, out, err) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(err, "vmkit-img: {e}");
            e.exit_code()
        }
    }
}

fn dispatch(command: Command, out: &mut dyn Write, err: &mut dyn Write) -> Result<i32> {
    match command {
        Command::Create(c) => {
            let args = CreateArgs {
                format: Some(c.format),
                options: c.options,
                backing: c.backing,
                backing_format: c.backing_format,
                quiet: c.quiet,
                filename: c.filename,
                size: c.size,
            };
            create::create(&args, out)?;
        }
        Command::Info(c) => {
            let _ = c.force_share;
            let args = InfoArgs {
                format: c.format,
                output: c.output.parse::<OutputFormat>()?,
                backing_chain: c.backing_chain,
                filename: c.filename,
            };
            info::info(&args, out)?;
        }
        Command::Check(c) => {
            if let Some(t) = &c.cache {
                t.parse::<CacheMode>()?;
            }
            let args = CheckArgs {
                format: c.format,
                repair: c
                    .repair
                    .as_deref()
                    .map(str::parse)
                    .transpose()?
                    .unwrap_or(Repair::None),
                output: c.output.parse::<OutputFormat>()?,
                quiet: c.quiet,
                filename: c.filename,
            };
            return check::check(&args, out, err);
        }
        Command::Convert(c) => {
            let _ = (c.progress, c.quiet);
            let args = ConvertArgs {
                format: c.format,
                output_format: c.output_format,
                options: c.options,
                source: c.source,
                target: c.target,
            };
            convert::convert(&args, err)?;
        }
        Command::Resize(c) => {
            let args = ResizeArgs {
                format: c.format,
                shrink: c.shrink,
                quiet: c.quiet,
                filename: c.filename,
                size: c.size,
            };
            resize::resize(&args, out, err)?;
        }
        Command::Bench(c) => {
            bench::bench(&c.into_args()?, out, err)?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> (i32, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut full = vec!["vmkit-img"];
        full.extend_from_slice(args);
        let code = run(full, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn bad_bench_arguments_are_one_line_and_exit_1() {
        for (args, msg) in [
            (
                &["bench", "-c", "0", "x"][..],
                "Invalid request count specified. Must be between 1 and 2147483647.",
            ),
            (
                &["bench", "-c", "x", "x"],
                "Invalid request count specified: 'x'.",
            ),
            (
                &["bench", "-d", "0", "x"],
                "Invalid queue depth specified. Must be between 1 and 2147483647.",
            ),
            (
                &["bench", "-s", "3G", "x"],
                "Invalid buffer size specified. Must be between 1 and 2147483647.",
            ),
            (
                &["bench", "-S", "x", "x"],
                "Invalid step size specified: 'x'.",
            ),
            (
                &["bench", "--pattern", "256", "x"],
                "Invalid pattern byte specified. Must be between 0 and 255.",
            ),
            (&["bench", "-t", "bogus", "x"], "Invalid cache mode"),
            (&["bench", "-i", "bogus", "x"], "Invalid aio option: bogus"),
            (
                &["bench", "--flush-interval", "4", "x"],
                "--flush-interval is only available in write tests",
            ),
        ] {
            let (code, out, err) = run_args(args);
            assert_eq!(code, 1, "{args:?}");
            assert!(out.is_empty());
            assert_eq!(err, format!("vmkit-img: {msg}\n"), "{args:?}");
        }
        let (code, _, err) = run_args(&["bench", "-z", "x"]);
        assert_eq!(code, 1);
        assert!(
            err.starts_with("vmkit-img: unexpected argument '-z'"),
            "{err}"
        );
        let (code, _, _) = run_args(&["bench"]);
        assert_eq!(code, 1);
    }

    #[test]
    fn ulong_parses_like_strtoul_base_0() {
        assert_eq!(parse_ulong("16"), Some(16));
        assert_eq!(parse_ulong("0x10"), Some(16));
        assert_eq!(parse_ulong("010"), Some(8));
        assert_eq!(parse_ulong("0"), Some(0));
        assert_eq!(parse_ulong("1k"), None);
    }
}
