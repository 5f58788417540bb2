//! Crash safety and durability: a child process (this test binary, re-run
//! in child mode) writes, discards, zeroes and flushes a qcow2 image until
//! it is killed with SIGKILL at a random moment. Before it starts an
//! operation the child journals it (offset, length, pattern seed) on a pipe
//! the parent reads, and after each flush returns it journals that too.
//!
//! After every kill:
//! - `qemu-img check` must find no corruption (leaked clusters are allowed,
//!   and `qemu-img check -r leaks` repairs them);
//! - every operation journaled before the last returned flush must be in
//!   the image: the parent keeps the state as of that flush, and each byte
//!   must read as that state, or, where an operation journaled after the
//!   flush (possibly the one the kill cut short) touched it, as what one of
//!   those operations would have left there. Our reader and QEMU's must
//!   agree on every byte.
//!
//! The next child goes on with the same image, from what the parent read.

mod qcow2_common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use qcow2_common::*;
use vm_memory::VolatileSlice;
use vmkit_disk::{CreateOptions, DiskImage, Qcow2Image, Qcow2Options};

const CHILD_ENV: &str = "VMKIT_QCOW2_CRASH_CHILD";
const SIZE: u64 = 16 << 20;
/// The time the whole test may spend killing children (it stops early
/// once every configuration has had its share).
const BUDGET: Duration = Duration::from_secs(36);
/// Kills per configuration: at least, and at most.
const MIN_KILLS: usize = 60;
const MAX_KILLS: usize = 90;

/// One journaled operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// A write of [`pattern_byte`]s with this seed.
    Write { off: u64, len: u64, seed: u64 },
    /// A discard: whole clusters inside the range read as zeros after it.
    Discard { off: u64, len: u64 },
    /// A write-zeroes (with or without unmap).
    Zeroes { off: u64, len: u64 },
}

impl Op {
    fn parse(line: &str) -> Option<Op> {
        let mut it = line.split_whitespace();
        let kind = it.next()?;
        let mut num = || it.next()?.parse::<u64>().ok();
        let (off, len) = (num()?, num()?);
        Some(match kind {
            "W" => Op::Write {
                off,
                len,
                seed: num()?,
            },
            "D" => Op::Discard { off, len },
            "Z" => Op::Zeroes { off, len },
            _ => return None,
        })
    }

    /// The bytes the operation sets, `start..end`: for a discard only its
    /// whole clusters (what the image documents; a partial cluster keeps
    /// its data).
    fn range(&self, cs: u64) -> (u64, u64) {
        match *self {
            Op::Write { off, len, .. } | Op::Zeroes { off, len } => (off, off + len),
            Op::Discard { off, len } => (off.div_ceil(cs) * cs, (off + len) / cs * cs),
        }
    }

    /// The byte the operation leaves at `i` (inside its range).
    fn byte_at(&self, i: u64) -> u8 {
        match *self {
            Op::Write { seed, .. } => pattern_byte(seed, i),
            Op::Discard { .. } | Op::Zeroes { .. } => 0,
        }
    }

    fn apply(&self, model: &mut [u8], cs: u64) {
        let (start, end) = self.range(cs);
        if start >= end {
            return;
        }
        let dst = &mut model[start as usize..end as usize];
        match *self {
            Op::Write { seed, .. } => fill_pattern(dst, seed, start),
            _ => dst.fill(0),
        }
    }
}

/// The byte a write with `seed` puts at disk offset `i`: never zero (so a
/// lost write never passes for a discard), different from write to write.
fn pattern_byte(seed: u64, i: u64) -> u8 {
    ((i.wrapping_add(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8) | 1
}

fn fill_pattern(buf: &mut [u8], seed: u64, off: u64) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(seed, off + k as u64);
    }
}

/// Child mode: endless random I/O on the image named by the environment,
/// journaled on stdout (`J ...` lines) until the parent kills it.
#[test]
#[ignore = "the child process of sigkill_at_random_moments_never_corrupts_nor_loses_flushed_writes"]
fn crash_child() {
    use std::io::Write;
    let spec = std::env::var(CHILD_ENV).expect("run by the crash test");
    let (path, seed) = spec.split_once(',').unwrap();
    let disk = Qcow2Image::open(
        path,
        &Qcow2Options {
            read_only: false,
            backing: false,
            direct: false,
        },
    )
    .unwrap();
    let mut rng = Rng(seed.parse().unwrap());
    let cs = disk.cluster_size();
    let sectors = SIZE / 512;
    let max_len = (3 * cs).clamp(4096, 1 << 20) / 512;
    let mut out = std::io::stdout().lock();
    // Every line is written (write(2) on the pipe) before the operation it
    // announces starts: the parent knows whatever the kill may cut short.
    let mut journal = |line: String| {
        out.write_all(line.as_bytes()).unwrap();
        out.flush().unwrap();
    };
    // On a line of its own: the test harness has printed "test ... " on
    // the current one.
    journal("\nJ ready\n".into());
    let mut buf = Vec::new();
    loop {
        let len = (1 + rng.below(max_len)) * 512;
        let off = rng.below(sectors - len / 512 + 1) * 512;
        match rng.below(20) {
            0..=11 => {
                let seed = rng.next_u64() >> 8;
                journal(format!("J W {off} {len} {seed}\n"));
                buf.resize(len as usize, 0);
                fill_pattern(&mut buf, seed, off);
                disk.write_at(&VolatileSlice::from(&mut buf[..]), off)
                    .unwrap();
            }
            12..=14 => {
                journal(format!("J D {off} {len}\n"));
                disk.discard(off, len).unwrap();
            }
            15..=17 => {
                journal(format!("J Z {off} {len}\n"));
                disk.write_zeroes(off, len, rng.below(2) == 0).unwrap();
            }
            _ => {
                disk.flush().unwrap();
                journal("J F\n".into());
            }
        }
    }
}

/// What one child journaled: the operations before its last returned
/// flush, and those after it (the last possibly cut short by the kill).
struct Journal {
    flushed: Vec<Op>,
    pending: Vec<Op>,
    flushes: usize,
}

/// Runs a child on `img` and kills it `run_for` after it is ready.
fn run_child(exe: &Path, img: &Path, seed: u64, run_for: Duration) -> Journal {
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{},{seed}", img.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line == "J ready" {
                let _ = ready_tx.send(());
            } else if let Some(rest) = line.strip_prefix("J ") {
                lines.push(rest.to_owned());
            }
        }
        lines
    });
    // A child that never gets ready (it failed to open the image) ends
    // the reader, and the journal check below fails on it.
    let ready = ready_rx.recv_timeout(Duration::from_secs(10)).is_ok();
    std::thread::sleep(run_for);
    // SIGKILL: no destructor, no flush.
    child.kill().unwrap();
    child.wait().unwrap();
    let lines = reader.join().unwrap();
    assert!(ready, "the child never got ready: {lines:?}");
    let mut journal = Journal {
        flushed: Vec::new(),
        pending: Vec::new(),
        flushes: 0,
    };
    for line in &lines {
        if line == "F" {
            journal.flushed.append(&mut journal.pending);
            journal.flushes += 1;
        } else {
            let op = Op::parse(line).unwrap_or_else(|| panic!("bad journal line {line:?}"));
            journal.pending.push(op);
        }
    }
    journal
}

/// Checks `actual` against the durable state `durable` and the operations
/// `pending` after it: untouched bytes must be durable; a byte an op in
/// `pending` touched may also hold what that op wrote. Returns whether
/// some of the pending operations' effects are missing (lost with the
/// kill, as they may be).
fn check_durable(durable: &[u8], pending: &[Op], actual: &[u8], cs: u64) -> Result<bool, String> {
    let mut full = durable.to_vec();
    let mut bounds = vec![0, durable.len() as u64];
    for op in pending {
        op.apply(&mut full, cs);
        let (s, e) = op.range(cs);
        if s < e {
            bounds.extend([s, e]);
        }
    }
    bounds.sort_unstable();
    bounds.dedup();
    let mut lost = false;
    for w in bounds.windows(2) {
        let (a, b) = (w[0] as usize, w[1] as usize);
        let got = &actual[a..b];
        if got == &full[a..b] {
            continue;
        }
        lost = true;
        if got == &durable[a..b] {
            continue;
        }
        let covering: Vec<&Op> = pending
            .iter()
            .filter(|op| {
                let (s, e) = op.range(cs);
                s <= w[0] && w[1] <= e
            })
            .collect();
        for i in a..b {
            let v = actual[i];
            if v != durable[i] && !covering.iter().any(|op| op.byte_at(i as u64) == v) {
                return Err(format!(
                    "byte {i} reads {v:#04x}: durable {:#04x}, and no operation since the \
                     last flush wrote that there ({} pending: {covering:?})",
                    durable[i],
                    pending.len()
                ));
            }
        }
    }
    Ok(lost)
}

fn read_image(img: &Path) -> Vec<u8> {
    let disk = Qcow2Image::open(
        img,
        &Qcow2Options {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    read_all(&disk)
}

#[test]
fn sigkill_at_random_moments_never_corrupts_nor_loses_flushed_writes() {
    let _serial = serial();
    if !have_qemu("sigkill_at_random_moments_never_corrupts_nor_loses_flushed_writes") {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let dir = tempdir();
    let mut rng = Rng(0xc0ffee);
    let start = Instant::now();
    let (mut kills, mut leaky, mut flushes, mut ops, mut cut, mut lost) = (0, 0, 0, 0, 0, 0);
    // 64 KiB clusters (QEMU's default), 4 KiB clusters (more metadata
    // churn), lazy refcounts with 512-byte clusters (a dirty image after a
    // kill, whose refcounts the next open rebuilds), and 1 MiB clusters
    // (most writes are partial clusters: copy-on-write of the rest).
    let configs = [
        (65536u64, false),
        (4096, false),
        (512, true),
        (1 << 20, false),
    ];
    for (k, &(cs, lazy)) in configs.iter().enumerate() {
        let img = join(&dir, &format!("crash{k}.qcow2"));
        Qcow2Image::create(
            &img,
            &CreateOptions {
                size: SIZE,
                cluster_size: cs,
                lazy_refcounts: lazy,
                ..Default::default()
            },
        )
        .unwrap();
        let mut durable = vec![0u8; SIZE as usize];
        // This configuration's share of what is left of the budget.
        let share = BUDGET.saturating_sub(start.elapsed()) / (configs.len() - k) as u32;
        let t = Instant::now();
        let mut n = 0;
        while n < MIN_KILLS || (t.elapsed() < share && n < MAX_KILLS) {
            let run_for = Duration::from_millis(rng.below(40));
            let journal = run_child(&exe, &img, rng.next_u64(), run_for);
            n += 1;
            kills += 1;
            flushes += journal.flushes;
            ops += journal.flushed.len() + journal.pending.len();
            cut += journal.pending.len();
            if lazy {
                // QEMU would rebuild the refcounts of a dirty image when it
                // opens it writable; so do we.
                drop(Qcow2Image::open(&img, &Qcow2Options::default()).unwrap());
            }
            let (code, out) = qemu_check(&img);
            assert!(
                code == 0 || code == 3,
                "kill {n} ({cs}-byte clusters): qemu-img check exit {code}: {out}"
            );
            if code == 3 {
                leaky += 1;
                ok("qemu-img", &["check", "-q", "-r", "leaks", &path_str(&img)]);
                assert_clean(&img);
            }
            for op in &journal.flushed {
                op.apply(&mut durable, cs);
            }
            let actual = read_image(&img);
            match check_durable(&durable, &journal.pending, &actual, cs) {
                Ok(true) => lost += 1,
                Ok(false) => {}
                Err(e) => panic!(
                    "kill {n} ({cs}-byte clusters), after {} flushed and {} pending \
                     operations: {e}",
                    journal.flushed.len(),
                    journal.pending.len()
                ),
            }
            if n % 8 == 0 {
                assert!(
                    qemu_contents(&img, dir.as_path()) == actual,
                    "kill {n} ({cs}-byte clusters): QEMU reads other bytes than we do"
                );
            }
            // What the image holds now is the next child's starting point.
            durable = actual;
        }
        // The image is still fully usable by us afterwards.
        let disk = Qcow2Image::open(&img, &Qcow2Options::default()).unwrap();
        let mut model = read_all(&disk);
        random_ops(&disk, &mut model, &mut rng, 30, cs, None);
        assert!(read_all(&disk) == model);
        drop(disk);
        assert_clean(&img);
        assert_same_as_model(&img, &model, dir.as_path());
    }
    println!(
        "{kills} SIGKILLs in {:.1?}: {ops} operations journaled, {flushes} flushes returned, \
         {cut} operations after the last flush; {lost} kills lost some of those (as they may), \
         {leaky} left leaked clusters, none corruption or a lost flushed write",
        start.elapsed()
    );
    assert!(kills >= MIN_KILLS * configs.len());
    // The kills landed between flushes, and flushed writes were checked.
    assert!(
        flushes > kills && cut > kills / 2,
        "{flushes} flushes, {cut} cut"
    );
}

#[test]
fn the_durability_check_catches_a_lost_flushed_write() {
    // The checker itself: a flushed write that is missing, a byte no
    // operation wrote, are caught; old-or-new after the flush is not.
    let cs = 4096;
    // Even: no written pattern byte (always odd) nor zero looks durable.
    let durable = vec![0x54u8; 4 * cs as usize];
    let w = Op::Write {
        off: 100,
        len: 5000,
        seed: 7,
    };
    let mut new = durable.clone();
    w.apply(&mut new, cs);
    assert_eq!(check_durable(&durable, &[w], &durable, cs), Ok(true));
    assert_eq!(check_durable(&durable, &[w], &new, cs), Ok(false));
    // Half written (cut short), then discarded in part.
    let mut half = new.clone();
    half[2600..5100].fill(0);
    let d = Op::Discard {
        off: 1000,
        len: 8000,
    };
    assert!(check_durable(&durable, &[w], &half, cs).is_err());
    assert!(check_durable(&durable, &[w, d], &half, cs).is_err());
    half[2600..4096].copy_from_slice(&new[2600..4096]);
    assert!(check_durable(&durable, &[w, d], &half, cs).is_ok());
    // The write was flushed: durable is `new`, and losing it is caught.
    assert!(check_durable(&new, &[], &durable, cs).is_err());
    // A byte outside every pending operation must not change.
    let mut stray = new.clone();
    stray[9000] = 1;
    assert!(check_durable(&new, &[w], &stray, cs).is_err());
}
