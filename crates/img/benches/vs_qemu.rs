//! `vmkit-img bench` beside `qemu-img bench`: the same flags on the same
//! images, run alternately, best of a few runs each; prints a table of the
//! times and their ratios.
//!
//! `cargo bench -p vmkit-img --bench vs_qemu` (about one minute on two
//! cores). The images live in `$VMKIT_BENCH_DIR` (default `/var/tmp`),
//! which must be on a file system with `O_DIRECT` (not tmpfs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Runs of each tool per row; the best is kept.
const REPS: usize = 3;
const IMAGE_SIZE: &str = "1G";
/// 4 KiB times a prime: a large odd stride that stays 4 KiB aligned (for
/// `cache=none`) and visits the whole 1 GiB image before repeating.
const ODD_STEP: &str = "102453248";

struct Row {
    name: &'static str,
    flags: &'static [&'static str],
    /// Run on a freshly created (empty) image each time.
    fresh: bool,
}

const ROWS: &[Row] = &[
    Row {
        name: "4k read  d1  none",
        flags: &["-t", "none", "-d", "1", "-c", "5000", "-S", ODD_STEP],
        fresh: false,
    },
    Row {
        name: "4k read  d32 none",
        flags: &["-t", "none", "-d", "32", "-c", "20000", "-S", ODD_STEP],
        fresh: false,
    },
    Row {
        name: "4k read  d1  writeback",
        flags: &["-t", "writeback", "-d", "1", "-c", "20000", "-S", ODD_STEP],
        fresh: false,
    },
    Row {
        name: "4k read  d32 writeback",
        flags: &["-t", "writeback", "-d", "32", "-c", "50000", "-S", ODD_STEP],
        fresh: false,
    },
    Row {
        name: "4k write d1  none",
        flags: &["-w", "-t", "none", "-d", "1", "-c", "4000", "-S", ODD_STEP],
        fresh: false,
    },
    Row {
        name: "4k write d32 none",
        flags: &[
            "-w", "-t", "none", "-d", "32", "-c", "10000", "-S", ODD_STEP,
        ],
        fresh: false,
    },
    Row {
        name: "4k write d1  writeback",
        flags: &[
            "-w",
            "-t",
            "writeback",
            "-d",
            "1",
            "-c",
            "20000",
            "-S",
            ODD_STEP,
        ],
        fresh: false,
    },
    Row {
        name: "4k write d32 writeback",
        flags: &[
            "-w",
            "-t",
            "writeback",
            "-d",
            "32",
            "-c",
            "50000",
            "-S",
            ODD_STEP,
        ],
        fresh: false,
    },
    Row {
        name: "64k seq read  d8 none",
        flags: &["-t", "none", "-d", "8", "-c", "4096", "-s", "64k"],
        fresh: false,
    },
    Row {
        name: "64k seq write d8 none",
        flags: &["-w", "-t", "none", "-d", "8", "-c", "4096", "-s", "64k"],
        fresh: false,
    },
    Row {
        name: "64k alloc write d8 writeback",
        flags: &[
            "-w",
            "-t",
            "writeback",
            "-d",
            "8",
            "-c",
            "4096",
            "-s",
            "64k",
        ],
        fresh: true,
    },
];

fn run(cmd: &str, args: &[&str]) -> Result<f64, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(stderr.lines().next().unwrap_or("failed").to_string());
    }
    stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("Run completed in ")?
                .strip_suffix(" seconds.")?
                .parse()
                .ok()
        })
        .ok_or_else(|| format!("no time in {stdout:?}"))
}

fn must(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn create(path: &Path, format: &str) {
    let _ = std::fs::remove_file(path);
    must(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            format,
            &path.to_string_lossy(),
            IMAGE_SIZE,
        ],
    );
}

fn best(r: Vec<Result<f64, String>>) -> Result<f64, String> {
    let mut best: Option<f64> = None;
    for t in r {
        let t = t?;
        best = Some(best.map_or(t, |b| b.min(t)));
    }
    best.ok_or_else(|| "no run".into())
}

fn fmt(t: &Result<f64, String>) -> String {
    match t {
        Ok(t) => format!("{t:.3}"),
        Err(_) => "n/a".into(),
    }
}

fn main() {
    if Command::new("qemu-img").arg("--version").output().is_err() {
        println!("skipped vs_qemu: qemu-img is not installed");
        return;
    }
    let vmkit = env!("CARGO_BIN_EXE_vmkit-img");
    let base = std::env::var_os("VMKIT_BENCH_DIR")
        .map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix(base.join("vmkit-img-bench"))
        .expect("temporary directory");
    let started = Instant::now();
    let formats = ["raw", "qcow2"];
    let mut data = Vec::new();
    for format in formats {
        let p = dir.as_path().join(format!("data.{format}"));
        create(&p, format);
        // Every cluster allocated and written, so reads hit data.
        must(
            "qemu-io",
            &[
                "-f",
                format,
                "-c",
                &format!("write -P 0x5a 0 {IMAGE_SIZE}"),
                &p.to_string_lossy(),
            ],
        );
        data.push(p);
    }
    println!(
        "vmkit-img bench vs qemu-img bench, {IMAGE_SIZE} images, best of {REPS}, times in seconds"
    );
    println!(
        "ratio = qemu-img / vmkit-img (> 1: vmkit-img faster); qcow2/raw = vmkit-img qcow2 time / raw time"
    );
    println!();
    println!("| row | format | qemu-img | vmkit-img | ratio | vmkit qcow2/raw |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for row in ROWS {
        let mut vmkit_raw = None;
        for (format, data) in formats.iter().zip(&data) {
            let fresh = dir.as_path().join(format!("fresh.{format}"));
            let image = if row.fresh { &fresh } else { data };
            let image_s = image.to_string_lossy().into_owned();
            let mut args = vec!["bench", "-f", format];
            args.extend_from_slice(row.flags);
            args.push(&image_s);
            let (mut q, mut v) = (Vec::new(), Vec::new());
            for rep in 0..REPS {
                // Alternate which tool goes first.
                for tool in 0..2 {
                    if row.fresh {
                        create(&fresh, format);
                    }
                    if (tool + rep) % 2 == 0 {
                        q.push(run("qemu-img", &args));
                    } else {
                        v.push(run(vmkit, &args));
                    }
                }
            }
            let (q, v) = (best(q), best(v));
            if let Err(e) = &v {
                eprintln!("{}: vmkit-img {format}: {e}", row.name);
            }
            if let Err(e) = &q {
                eprintln!("{}: qemu-img {format}: {e}", row.name);
            }
            let ratio = match (&q, &v) {
                (Ok(q), Ok(v)) if *v > 0.0 => format!("{:.2}", q / v),
                _ => "n/a".into(),
            };
            let per_format = match (*format, &v, vmkit_raw) {
                ("raw", Ok(t), _) => {
                    vmkit_raw = Some(*t);
                    "".into()
                }
                ("qcow2", Ok(t), Some(r)) if r > 0.0 => format!("{:.2}", t / r),
                _ => "".into(),
            };
            println!(
                "| {} `{}` | {format} | {} | {} | {ratio} | {per_format} |",
                row.name,
                row.flags.join(" "),
                fmt(&q),
                fmt(&v)
            );
            if row.fresh {
                let _ = std::fs::remove_file(&fresh);
            }
        }
    }
    println!();
    println!("total {:.0} s", started.elapsed().as_secs_f64());
}
