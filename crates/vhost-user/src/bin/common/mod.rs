//! What the two commands share: logging to stderr, one-line argument
//! errors, exit codes.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

/// Exit code of a usage error.
pub const USAGE: u8 = 2;

/// Logs to stderr at `info` (or as `RUST_LOG` says), each line prefixed
/// with the command's name.
pub fn init_logging(name: &'static str) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |buf, record| {
            use std::io::Write;
            writeln!(buf, "{name}: {}: {}", record.level(), record.args())
        })
        .init();
}

/// Parses the command line; on a usage error prints one line to stderr and
/// returns the exit code (help and version print as usual and exit 0).
pub fn parse<A: Parser>(name: &str) -> Result<A, ExitCode> {
    A::try_parse().map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => e.exit(),
        _ => {
            // clap's message without its usage section, on one line.
            let text = e.to_string();
            let message = text.split("\n\nUsage:").next().unwrap_or_default();
            let message = message.strip_prefix("error: ").unwrap_or(message);
            let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
            eprintln!("{name}: {message} (see --help)");
            ExitCode::from(USAGE)
        }
    })
}
