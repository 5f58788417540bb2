//! A hostile driver end to end: the minimal guest, with `vmkit.hostile` on
//! its command line, sends each virtio device what a malicious driver
//! would (descriptors outside RAM and into the MMIO hole, loops, chains
//! longer than the queue, zero and huge lengths, wrong directions, an
//! available index far ahead, bad queue layouts, notifications of absent
//! queues, status writes out of order, config writes anywhere; for disks
//! also sectors past the end, for NICs also offloads never negotiated),
//! resets the device after each group and proves normal I/O still works.
//! The VMM must survive it all; the disk files must change only where the
//! guest's legitimate `vmkit.fill` wrote, and no frame of a hostile
//! transmit chain may reach the host's bridge.
//!
//! Needs `/dev/kvm`: fails, not skips, when it exists.

mod common;

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::Duration;

use common::{
    Run, host_bridge, in_new_netns, kvm_present, run_bounded, run_vmm, scratch_dir, tun_present,
    vmm_path,
};

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

/// The hostile groups the guest runs on every NIC, in order.
const NET_GROUPS: [&str; 17] = [
    "tx-addr",
    "tx-len",
    "tx-offload",
    "tx-dir",
    "tx-loop",
    "tx-long",
    "tx-avail",
    "rx-addr",
    "rx-len",
    "rx-dir",
    "rx-loop",
    "rx-long",
    "rx-avail",
    "queue",
    "notify",
    "status-seq",
    "config",
];

/// The EtherType of every frame the guest's hostile NIC groups send
/// (IEEE 802 local experimental 1).
const ETHERTYPE: u16 = 0x88b5;

/// A packet socket on `ifname` that receives frames of [`ETHERTYPE`],
/// non-blocking.
fn capture(ifname: &str) -> OwnedFd {
    let proto = ETHERTYPE.to_be();
    // SAFETY: socket(2) takes no pointers; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    assert!(
        fd >= 0,
        "socket(AF_PACKET): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = CString::new(ifname).unwrap();
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(ifindex, 0, "if_nametoindex({ifname})");
    // SAFETY: sockaddr_ll is plain data; all zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is a valid sockaddr_ll of the size passed; the kernel
    // only reads it during the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "bind(AF_PACKET): {}",
        std::io::Error::last_os_error()
    );
    fd
}

/// Every frame waiting on `fd`, without blocking.
fn drain(fd: &OwnedFd) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: `buf` is writable for its whole length during the call.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "recv: {e}");
            return frames;
        }
        frames.push(buf[..n as usize].to_vec());
    }
}

#[test]
fn hostile_driver_on_virtio_net_gets_chains_dropped_or_needs_reset_and_sends_nothing() {
    if !kvm_present() {
        return;
    }
    if !tun_present() {
        return;
    }
    let vmm = vmm_path();
    let (run, frames) = in_new_netns(move || {
        host_bridge([10, 77, 0, 1].into());
        let fd = capture("br0");
        let mut cmd = Command::new(vmm);
        cmd.args([
            "-m",
            "128",
            "--net",
            "tap=tap0,bridge=br0",
            "--cmdline",
            "vmkit.hostile vmkit.ip=10.77.0.2/24 vmkit.peer=10.77.0.1",
        ]);
        let (run, timed_out) = run_bounded(cmd, Duration::from_secs(120));
        assert!(!timed_out, "the VMM did not finish in 120 s:\n{run}");
        (run, drain(&fd))
    });

    assert_eq!(run.code, Some(0), "vmm failed:\n{run}");
    assert!(
        !run.stdout.lines().any(|l| l.starts_with("FAIL")),
        "a guest check failed:\n{run}"
    );
    assert!(!run.stderr.contains("panicked"), "{run}");
    let summary = line(&run, "guest: ");
    assert!(summary.ends_with(" passed, 0 failed"), "{summary}");
    let detail = |group: &str| line(&run, &format!("ok hostile-net0-{group}: ")).to_owned();
    for group in NET_GROUPS {
        let l = detail(group);
        assert!(
            l.ends_with(", normal I/O after reset ok"),
            "net0 {group}: {l}"
        );
    }
    // Chains that cut themselves short, or an available index beyond the
    // ring, break the queue: the device must say so.
    for group in [
        "tx-loop", "tx-long", "tx-avail", "rx-loop", "rx-long", "rx-avail",
    ] {
        assert!(
            detail(group).contains("NEEDS_RESET set"),
            "{}",
            detail(group)
        );
    }
    // The rest are dropped one by one, the queue going on.
    for (group, n) in [
        ("tx-addr", 9),
        ("tx-len", 6),
        ("tx-offload", 7),
        ("tx-dir", 4),
        ("rx-addr", 8),
        ("rx-len", 5),
        ("rx-dir", 3),
    ] {
        let l = detail(group);
        assert!(
            l.starts_with(&format!(
                "ok hostile-net0-{group}: {n} dropped (used length 0), normal"
            )),
            "{l}\n{run}"
        );
    }
    assert!(
        detail("queue").contains("26 bad layouts: NEEDS_RESET at DRIVER_OK for 26"),
        "{}",
        detail("queue")
    );

    // On the wire: the ok frame of the check before the groups and of each
    // group, once each and in order, and nothing from a hostile chain.
    let payloads: Vec<String> = frames
        .iter()
        .filter(|f| f.len() >= 14 && f[12..14] == ETHERTYPE.to_be_bytes())
        .map(|f| {
            let text = &f[14..];
            let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
            String::from_utf8_lossy(&text[..end]).into_owned()
        })
        .collect();
    assert!(
        !payloads.iter().any(|p| p.starts_with("vmkit-hostile")),
        "a frame of a hostile transmit chain reached the bridge: {payloads:?}"
    );
    let expected: Vec<String> = std::iter::once("before")
        .chain(NET_GROUPS)
        .map(|g| format!("vmkit-ok net0-{g}"))
        .collect();
    assert_eq!(payloads, expected, "frames seen on the bridge\n{run}");
}
