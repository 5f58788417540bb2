//! Boots Debian's cloud kernel with the example VMM: the bzImage through
//! the 64-bit boot protocol and the ELF vmlinux inside it through PVH, each
//! with the initrd of `scripts/debian-guest.sh`, a raw disk, a qcow2 disk
//! (made by qemu-img) and a NIC on a tap attached to a bridge, inside a
//! network namespace this test creates with the library and that
//! disappears with it.
//!
//! The guest's `/init` loads the virtio modules, reports the disks and
//! links it sees, pings the bridge, says `vmkit-linux: ready` and powers
//! off through ACPI, which ends the VMM with status 0.
//!
//! Hosts:
//! - with `/dev/kvm` from hardware virtualization (VT-x/AMD-V) the test
//!   must pass;
//! - under `kvm_pvm` (`/sys/module/kvm_pvm` exists), a nested KVM that
//!   emulates guest kernel mode, a stock kernel cannot boot: one line says
//!   so and the test returns;
//! - without `/dev/kvm` it says so and returns;
//! - the images come from `scripts/debian-guest.sh` (`$VMKIT_DEBIAN_GUEST`
//!   or `target/debian-guest`); missing, the test says so and returns,
//!   except under CI (`CI=true`), where it fails.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Run, host_bridge, in_new_netns, kvm_present, scratch_dir, vmm_path};

/// How long one boot may take, power-off included. On hardware KVM the
/// kernel reaches `/init` in 1-3 s.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const MAC: &str = "52:54:00:4c:78:01";
const RAW_SIZE: u64 = 64 << 20;
const QCOW2_SIZE: u64 = 96 << 20;

/// Whether this host's KVM is `kvm_pvm`, which cannot boot a stock kernel.
fn on_kvm_pvm() -> bool {
    if Path::new("/sys/module/kvm_pvm").exists() {
        eprintln!(
            "skipped: kvm_pvm: this nested KVM emulates guest kernel mode and cannot boot Linux; \
             see ../shared/notes/kvm-here.md"
        );
        return true;
    }
    false
}

/// The directory with the script's outputs, or `None` (after one line)
/// when they are missing outside CI.
fn debian_guest() -> Option<PathBuf> {
    let dir = std::env::var_os("VMKIT_DEBIAN_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian-guest"));
    let missing: Vec<&str> = ["vmlinuz", "vmlinux", "initrd.img"]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if missing.is_empty() {
        return Some(dir);
    }
    let msg = format!(
        "the Debian guest images are missing ({} not in {}): run scripts/debian-guest.sh",
        missing.join(", "),
        dir.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("skipped: {msg}");
    None
}

/// Runs the VMM with `args` until it exits or `timeout` passes (then kills
/// it); `timed_out` says which.
fn run_vmm_bounded(args: &[String], timeout: Duration) -> (Run, bool) {
    let mut child = Command::new(vmm_path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the vmm");
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let out_thread = thread::spawn(move || {
        // The serial console, a line at a time; ends at the VMM's exit.
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let err_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let mut stdout = String::new();
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                stdout.push_str(&line);
                stdout.push('\n');
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break;
        }
    }
    let status = child.wait().expect("wait for the vmm");
    let _ = out_thread.join();
    stdout.extend(rx.try_iter().map(|l| l + "\n"));
    let stderr = err_thread.join().unwrap_or_default();
    (
        Run {
            code: status.code(),
            stdout,
            stderr,
        },
        timed_out,
    )
}

/// The text after `prefix` on the first line starting with it.
fn field<'a>(run: &'a Run, prefix: &str) -> &'a str {
    run.stdout
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}:\n{run}"))
}

/// Boots `kernel` from the Debian guest with `--boot-protocol protocol`
/// and checks everything `/init` reports.
fn boot_debian(kernel: &str, protocol: &str, subnet: u8) {
    if on_kvm_pvm() || !kvm_present() {
        return;
    }
    let Some(guest) = debian_guest() else { return };
    if !Path::new("/dev/net/tun").exists() {
        panic!("/dev/net/tun does not exist: this test needs tap devices");
    }

    let dir = scratch_dir(&format!("linux-{kernel}"));
    let raw = dir.join("disk0.raw");
    std::fs::File::create(&raw)
        .and_then(|f| f.set_len(RAW_SIZE))
        .expect("create the raw disk");
    let qcow2 = dir.join("disk1.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow2)
        .arg(QCOW2_SIZE.to_string())
        .output()
        .expect("run qemu-img (Debian package qemu-utils)");
    assert!(out.status.success(), "qemu-img create: {out:?}");

    let host = Ipv4Addr::new(10, 77, subnet, 1);
    let guest_ip = Ipv4Addr::new(10, 77, subnet, 2);
    let args: Vec<String> = vec![
        "--name".into(),
        format!("linux-{kernel}"),
        "-m".into(),
        "512".into(),
        "--cpus".into(),
        "2".into(),
        "--kernel".into(),
        guest.join(kernel).display().to_string(),
        "--boot-protocol".into(),
        protocol.into(),
        "--initrd".into(),
        guest.join("initrd.img").display().to_string(),
        "--cmdline".into(),
        // panic=-1: a panic reboots at once (and fails the checks below)
        // instead of waiting for the timeout.
        format!("console=ttyS0 panic=-1 vmkit.ip={guest_ip}/24 vmkit.peer={host}"),
        "--disk".into(),
        format!("{},format=raw", raw.display()),
        "--disk".into(),
        format!("{},format=qcow2", qcow2.display()),
        "--net".into(),
        format!("tap=tap0,mac={MAC},bridge=br0"),
    ];
    let (run, timed_out) = in_new_netns(move || {
        host_bridge(host);
        run_vmm_bounded(&args, BOOT_TIMEOUT)
    });
    let _ = std::fs::remove_dir_all(&dir);

    assert!(
        !timed_out,
        "the guest did not power off within {BOOT_TIMEOUT:?}:\n{run}"
    );
    assert!(
        !run.stdout.contains("Kernel panic"),
        "the kernel panicked:\n{run}"
    );
    assert!(
        !run.stdout.contains("vmkit-linux: error"),
        "/init reported an error:\n{run}"
    );
    // Each disk by its serial (the VMM's virtio-blk ID) and size; vd* names.
    let disks: BTreeSet<(u64, String)> = field(&run, "vmkit-linux: disks: ")
        .split_whitespace()
        .map(|d| {
            let (name, rest) = d.split_once('=').unwrap_or_else(|| panic!("{d}:\n{run}"));
            assert!(
                name.starts_with("vd"),
                "{name} is not a virtio disk:\n{run}"
            );
            let (bytes, serial) = rest.split_once(':').unwrap_or((rest, ""));
            (bytes.parse().unwrap(), serial.to_string())
        })
        .collect();
    assert_eq!(
        disks,
        BTreeSet::from([
            (RAW_SIZE, "vmkit-disk0".to_string()),
            (QCOW2_SIZE, "vmkit-disk1".to_string())
        ]),
        "disks:\n{run}"
    );
    assert_eq!(
        field(&run, "vmkit-linux: links: "),
        format!("eth0={MAC}"),
        "links:\n{run}"
    );
    assert_eq!(
        field(&run, "vmkit-linux: ping "),
        format!("ok: {host}"),
        "ping:\n{run}"
    );
    field(&run, "vmkit-linux: ready");
    // `poweroff -f` went through ACPI S5 (not a reboot after a panic).
    assert!(
        run.stdout.contains("reboot: Power down"),
        "no ACPI power-off:\n{run}"
    );
    assert_eq!(run.code, Some(0), "vmm status:\n{run}");
}

#[test]
fn debian_bzimage_boots_with_disks_and_network() {
    boot_debian("vmlinuz", "auto", 1);
}

#[test]
fn debian_vmlinux_boots_through_pvh() {
    boot_debian("vmlinux", "pvh", 2);
}
