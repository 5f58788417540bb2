//! Boot bench: how fast the example VMM starts the built-in minimal guest,
//! and how much memory the VMM itself uses.
//!
//! ```text
//! cargo bench --bench boot            # 21 runs
//! cargo bench --bench boot -- 51      # another number of runs
//! ```
//!
//! For each run it records, from spawning the VMM process: the time to the
//! guest's first serial byte on stdout, the time to VM exit, and the VMM's
//! resident memory beyond guest memory (the VMM's `--stats`
//! line, read from its /proc/self/smaps at exit). It prints the median and
//! the spread, next to a bare baseline measured in the same run: spawning
//! and reaping `/bin/true`, the floor any VMM process start pays here.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(21);
    if !Path::new("/dev/kvm").exists() {
        println!("boot bench skipped: /dev/kvm does not exist");
        return;
    }
    let vmm = build_vmm();
    let args = ["-m", "256", "--cpus", "1", "--stats"];
    println!(
        "boot bench: {} {} ({runs} runs)",
        vmm.display(),
        args.join(" ")
    );

    let mut first_byte = Vec::new();
    let mut exit = Vec::new();
    let mut overhead_kib = Vec::new();
    let mut anon_kib = Vec::new();
    let mut bare = Vec::new();
    for _ in 0..runs {
        let (f, e, o, a) = one_boot(&vmm, &args);
        anon_kib.push(a);
        first_byte.push(f);
        exit.push(e);
        overhead_kib.push(o);
        let t = Instant::now();
        let status = Command::new("/bin/true").status().expect("spawn /bin/true");
        assert!(status.success());
        bare.push(t.elapsed());
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (f, e, b) = (median(&first_byte), median(&exit), median(&bare));
    let o = median(&overhead_kib);
    println!("{:<44} {:>10} {:>10} {:>10}", "", "median", "min", "max");
    row("process start to first serial byte (ms)", &first_byte, ms);
    row("process start to VM exit (ms)", &exit, ms);
    row("bare baseline: spawn+reap /bin/true (ms)", &bare, ms);
    row(
        "VMM resident memory beyond guest (KiB)",
        &overhead_kib,
        |k: u64| k as f64,
    );
    row(
        "  of which anonymous: heap, stacks (KiB)",
        &anon_kib,
        |k: u64| k as f64,
    );
    println!(
        "ratios: first byte / bare = {:.1}x, exit / bare = {:.1}x; \
         Firecracker's targets: first byte {:.1}% of 125 ms, overhead {:.1}% of 5 MiB",
        ms(f) / ms(b),
        ms(e) / ms(b),
        ms(f) / 125.0 * 100.0,
        o as f64 / 5120.0 * 100.0
    );
}

fn row<T: Copy + Ord>(name: &str, v: &[T], f: impl Fn(T) -> f64) {
    let min = *v.iter().min().expect("runs");
    let max = *v.iter().max().expect("runs");
    println!(
        "{name:<44} {:>10.2} {:>10.2} {:>10.2}",
        f(median(v)),
        f(min),
        f(max)
    );
}

fn median<T: Copy + Ord>(v: &[T]) -> T {
    let mut s = v.to_vec();
    s.sort();
    s[s.len() / 2]
}

/// One boot: (time to first stdout byte, time to exit, overhead KiB, of
/// which anonymous KiB).
fn one_boot(vmm: &Path, args: &[&str]) -> (Duration, Duration, u64, u64) {
    let start = Instant::now();
    let mut child = Command::new(vmm)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the vmm");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut byte = [0u8; 1];
    let n = stdout.read(&mut byte).expect("read the guest's output");
    let first = start.elapsed();
    assert_eq!(n, 1, "the guest printed nothing");
    let mut rest = Vec::new();
    stdout
        .read_to_end(&mut rest)
        .expect("read the guest's output");
    let status = child.wait().expect("wait for the vmm");
    let exited = start.elapsed();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read the vmm's stderr");
    assert!(status.success(), "the vmm failed: {stderr}");
    // "vmm: vmm overhead <rss> KiB resident beyond guest memory, of which <anon> KiB anonymous"
    let numbers: Vec<u64> = stderr
        .lines()
        .find(|l| l.contains("vmm overhead "))
        .unwrap_or_else(|| panic!("no overhead line in: {stderr}"))
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(numbers.len(), 2, "unexpected overhead line in: {stderr}");
    (first, exited, numbers[0], numbers[1])
}

/// Builds the example VMM in release mode and returns its path.
fn build_vmm() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--example", "vmm"])
        .current_dir(root)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the vmm example failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("release").join("examples").join("vmm")
}
