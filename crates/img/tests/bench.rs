//! `bench` beside `qemu-img bench`: the same lines, the same exit codes,
//! and — for writes — exactly the same bytes written.

mod common;

use common::*;

fn lines_match(ours: &str, theirs: &str) {
    let (o, t): (Vec<_>, Vec<_>) = (ours.lines().collect(), theirs.lines().collect());
    assert_eq!(o.len(), t.len(), "ours:\n{ours}\ntheirs:\n{theirs}");
    for (a, b) in o.iter().zip(&t) {
        if b.starts_with("Run completed in ") {
            let secs = a
                .strip_prefix("Run completed in ")
                .and_then(|s| s.strip_suffix(" seconds."))
                .unwrap_or_else(|| panic!("{a}"));
            // "%3.3f": three decimals.
            assert!(
                secs.split_once('.').is_some_and(|(_, f)| f.len() == 3),
                "{a}"
            );
            secs.parse::<f64>().unwrap();
        } else {
            assert_eq!(a, b);
        }
    }
}

/// Makes `name` in `format`, 4 MiB, filled with 0x11 by qemu-io.
fn prefilled(dir: &TempDir, name: &str, format: &str) {
    let d = dir.as_path();
    assert_eq!(qemu(d, &["create", "-q", "-f", format, name, "4M"]).code, 0);
    qemu_io(d, &["-f", format, "-c", "write -P 0x11 0 4M", name]);
}

fn same_contents(dir: &TempDir, a: &str, b: &str, format: &str) {
    if format == "raw" {
        let (x, y) = (
            std::fs::read(path(dir, a)).unwrap(),
            std::fs::read(path(dir, b)).unwrap(),
        );
        if x != y {
            let first = x.iter().zip(&y).position(|(p, q)| p != q);
            panic!("{a} and {b} differ, first at {first:?}");
        }
    } else {
        let r = qemu(
            dir.as_path(),
            &["compare", "-f", format, "-F", format, a, b],
        );
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(qemu(dir.as_path(), &["check", b]).code, 0);
    }
}

fn run_pair(dir: &TempDir, format: &str, flags: &[&str], expect_code: i32) {
    let d = dir.as_path();
    prefilled(dir, "q.img", format);
    std::fs::copy(path(dir, "q.img"), path(dir, "v.img")).unwrap();
    let mut args = vec!["bench", "-f", format];
    args.extend_from_slice(flags);
    let mut qa = args.clone();
    qa.push("q.img");
    let mut va = args.clone();
    va.push("v.img");
    let theirs = qemu(d, &qa);
    let ours = vmkit(d, &va);
    assert_eq!(theirs.code, expect_code, "qemu-img {qa:?}: {theirs:?}");
    assert_eq!(ours.code, expect_code, "vmkit-img {va:?}: {ours:?}");
    lines_match(&ours.stdout, &theirs.stdout);
    if expect_code != 0 {
        assert_eq!(ours.stderr.lines().count(), 1, "{ours:?}");
    }
    same_contents(dir, "q.img", "v.img", format);
}

#[test]
fn reads_print_the_same_lines() {
    if !have_qemu("reads_print_the_same_lines") {
        return;
    }
    let dir = tempdir();
    for format in ["raw", "qcow2"] {
        for flags in [
            &["-c", "1000"][..],
            &["-c", "500", "-d", "1", "-s", "64k", "-S", "192k"],
            &[
                "-c", "300", "-d", "8", "-t", "none", "-o", "4096", "-S", "1040384",
            ],
            &["-c", "100", "-t", "none", "-n"],
            &["-c", "100", "-t", "none", "-i", "io_uring", "-q"],
        ] {
            run_pair(&dir, format, flags, 0);
        }
    }
}

#[test]
fn writes_land_exactly_where_qemu_img_writes() {
    if !have_qemu("writes_land_exactly_where_qemu_img_writes") {
        return;
    }
    let dir = tempdir();
    for format in ["raw", "qcow2"] {
        for flags in [
            // Odd step: wraps modulo the size, not to the start.
            &[
                "-w",
                "--pattern",
                "0xab",
                "-c",
                "40",
                "-d",
                "1",
                "-S",
                "300000",
            ][..],
            &[
                "-w",
                "--pattern",
                "171",
                "-c",
                "200",
                "-d",
                "4",
                "-s",
                "512",
                "-S",
                "77777",
                "-o",
                "1000",
            ],
            &[
                "-w",
                "--pattern",
                "7",
                "-c",
                "64",
                "-d",
                "32",
                "-s",
                "64k",
                "-t",
                "none",
            ],
            &[
                "-w",
                "--pattern",
                "9",
                "-c",
                "100",
                "-d",
                "8",
                "--flush-interval",
                "16",
                "-S",
                "1M",
            ],
            &[
                "-w",
                "--pattern",
                "3",
                "-c",
                "100",
                "-d",
                "8",
                "--flush-interval",
                "8",
                "--no-drain",
            ],
            &[
                "-w",
                "--pattern",
                "0",
                "-c",
                "10",
                "-d",
                "2",
                "-t",
                "writethrough",
                "-S",
                "5000",
            ],
            &[
                "-w",
                "--pattern",
                "0xff",
                "-c",
                "50",
                "-t",
                "unsafe",
                "-S",
                "3M",
            ],
        ] {
            run_pair(&dir, format, flags, 0);
        }
    }
}

#[test]
fn failing_requests_and_bad_flags_exit_like_qemu_img() {
    if !have_qemu("failing_requests_and_bad_flags_exit_like_qemu_img") {
        return;
    }
    let dir = tempdir();
    // The first request runs past the end: both fail before writing.
    run_pair(
        &dir,
        "raw",
        &[
            "-w",
            "--pattern",
            "1",
            "-c",
            "5",
            "-d",
            "1",
            "-o",
            "4192256",
        ],
        1,
    );
    for flags in [
        &["-c", "0"][..],
        &["-d", "0"],
        &["-s", "0"],
        &["-w", "-d", "8", "--flush-interval", "4"],
        &["--flush-interval", "64"],
        &["-t", "writeback", "-n"],
        &["-t", "bogus"],
        &["--pattern", "300"],
    ] {
        run_pair(&dir, "raw", flags, 1);
    }
}
