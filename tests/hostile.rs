//! A hostile driver end to end: the minimal guest, with `vmkit.hostile` on
//! its command line, sends each virtio-blk disk what a malicious driver
//! would (descriptors outside RAM and into the MMIO hole, loops, chains
//! longer than the queue, zero and huge lengths, wrong directions, sectors
//! past the end, an available index far ahead, bad queue layouts,
//! notifications of absent queues, status writes out of order, config
//! writes anywhere), resets the device after each group and proves normal
//! I/O still works. The VMM must survive it all, and the disk files must
//! change only where the guest's legitimate `vmkit.fill` wrote.
//!
//! Needs `/dev/kvm`: fails, not skips, when it exists.

mod common;

use common::{Run, kvm_present, run_vmm, scratch_dir};

const SECTOR: usize = 512;

/// The hostile groups the guest runs on every disk, in order.
const GROUPS: [&str; 12] = [
    "addr",
    "status",
    "loop",
    "long",
    "len",
    "dir",
    "sector",
    "avail",
    "queue",
    "notify",
    "status-seq",
    "config",
];

/// Deterministic pseudo-random bytes (xorshift).
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn line<'a>(run: &'a Run, prefix: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}:\n{run}"))
}

#[test]
fn hostile_driver_gets_errors_or_needs_reset_and_the_disks_stay_intact() {
    if !kvm_present() {
        return;
    }
    let dir = scratch_dir("hostile");
    let rw_bytes = random_bytes(4 << 20, 11);
    let ro_bytes = random_bytes(1 << 20, 12);
    let rw = dir.join("rw.raw");
    let ro = dir.join("ro.raw");
    std::fs::write(&rw, &rw_bytes).unwrap();
    std::fs::write(&ro, &ro_bytes).unwrap();
    // The legitimate writes: the fill range of disk0, away from every
    // sector the hostile requests aim at (0..=10, the last sectors).
    let (first, count, byte) = (64usize, 32usize, 0x7eu8);
    let run = run_vmm(&[
        "-m",
        "128",
        "--disk",
        rw.to_str().unwrap(),
        "--disk",
        &format!("{},readonly=on", ro.display()),
        "--cmdline",
        &format!("vmkit.hostile vmkit.fill=0:{first}:{count}:{byte:02x}"),
    ]);

    // The VMM survived and the guest saw every check pass.
    assert_eq!(run.code, Some(0), "vmm failed:\n{run}");
    assert!(
        !run.stdout.lines().any(|l| l.starts_with("FAIL")),
        "a guest check failed:\n{run}"
    );
    assert!(!run.stderr.contains("panicked"), "{run}");
    let summary = line(&run, "guest: ");
    assert!(summary.ends_with(" passed, 0 failed"), "{summary}");

    for disk in 0..2 {
        for group in GROUPS {
            let l = line(&run, &format!("ok hostile-disk{disk}-{group}: "));
            assert!(
                l.ends_with(", normal I/O after reset ok"),
                "disk{disk} {group}: {l}"
            );
        }
        // What the device must have done, group by group.
        let detail =
            |group: &str| line(&run, &format!("ok hostile-disk{disk}-{group}: ")).to_owned();
        assert!(detail("addr").starts_with("ok hostile-disk"), "{run}");
        assert!(
            detail("addr").contains(" IOERR, normal"),
            "{}",
            detail("addr")
        );
        for group in ["status", "loop", "avail"] {
            assert!(
                detail(group).contains("NEEDS_RESET set"),
                "{group} must make the device need a reset: {}",
                detail(group)
            );
            assert!(
                !detail(group).contains("OK (harmless)"),
                "{}",
                detail(group)
            );
        }
        assert!(
            detail("sector").contains("13 IOERR, normal"),
            "{}",
            detail("sector")
        );
        assert!(
            detail("dir").contains("6 IOERR, normal"),
            "{}",
            detail("dir")
        );
        assert!(
            detail("queue").contains("13 bad layouts: NEEDS_RESET at DRIVER_OK for 13"),
            "{}",
            detail("queue")
        );
    }

    // The read-only disk is byte for byte what it was.
    assert!(
        std::fs::read(&ro).unwrap() == ro_bytes,
        "the read-only disk changed"
    );
    // The writable disk changed only in the fill range, which holds the
    // fill byte.
    let after = std::fs::read(&rw).unwrap();
    assert_eq!(after.len(), rw_bytes.len());
    let range = first * SECTOR..(first + count) * SECTOR;
    for (i, (&new, &old)) in after.iter().zip(&rw_bytes).enumerate() {
        if range.contains(&i) {
            assert_eq!(new, byte, "byte {i} inside the filled sectors");
        } else {
            assert_eq!(
                new,
                old,
                "byte {i} (sector {}) outside the filled sectors changed",
                i / SECTOR
            );
        }
    }
}
