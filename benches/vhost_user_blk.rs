//! The Linux guest's block throughput through vmkit's vhost-user-blk back
//! end beside QEMU's own virtio-blk, in one run, on identical qcow2 images:
//!
//! ```sh
//! scripts/qemu.sh && scripts/debian-guest.sh     # once
//! cargo bench --bench vhost_user_blk             # 3 rounds
//! cargo bench --bench vhost_user_blk -- 5        # another number of rounds
//! ```
//!
//! Each round boots QEMU (`-accel tcg`, q35, 2 vCPUs, 1 GiB in a shared
//! memfd) with Debian's cloud kernel and `initrd-qemu.img` twice, once
//! with `vmkit-vhost-user-blk` behind `vhost-user-blk-pci` and once with
//! QEMU's `virtio-blk-pci` on its own qcow2 image (the two alternate which
//! goes first), one queue each. In the guest, on a fresh 128 MiB image:
//! - sequential write: busybox `dd bs=1M oflag=direct conv=fsync` of
//!   128 MiB (a xorshift stream prepared in guest RAM, so not zeros);
//! - sequential read: `dd bs=1M iflag=direct` of the same 128 MiB;
//! - 4 KiB random read and write: `vmkit-blkio rand` (O_DIRECT, offsets
//!   uniform over the disk) with 1 and with 4 requests in flight, 5 s each.
//!
//! The guest CPU is emulated, so absolute figures say little; the ratio of
//! the two devices, measured in the same run, is the figure. Prints one
//! table of medians (Markdown) for BENCHMARKS.md.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const MEM_MIB: u64 = 1024;
const DISK_MIB: u64 = 128;
const RAND_SECONDS: u32 = 5;
const GUEST_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, PartialEq, Debug)]
enum Device {
    VhostUser,
    Qemu,
}

/// The measures, in table order: (key printed by the guest, label, unit).
const MEASURES: &[(&str, &str, &str)] = &[
    ("seq-write", "sequential write, 1 MiB O_DIRECT", "MiB/s"),
    ("seq-read", "sequential read, 1 MiB O_DIRECT", "MiB/s"),
    ("rand-read-1", "4 KiB random read, 1 in flight", "IOPS"),
    ("rand-read-4", "4 KiB random read, 4 in flight", "IOPS"),
    ("rand-write-1", "4 KiB random write, 1 in flight", "IOPS"),
    ("rand-write-4", "4 KiB random write, 4 in flight", "IOPS"),
];

fn main() {
    // `cargo bench` passes `--bench`; a bare number is the round count.
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let qemu = std::env::var_os("VMKIT_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/qemu/qemu-system-x86_64"));
    let guest = std::env::var_os("VMKIT_DEBIAN_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/debian-guest"));
    assert!(
        qemu.is_file(),
        "{} is missing: run scripts/qemu.sh",
        qemu.display()
    );
    assert!(
        guest.join("initrd-qemu.img").is_file(),
        "{}/initrd-qemu.img is missing: run scripts/debian-guest.sh",
        guest.display()
    );
    let backend = build_backend();
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("bench-vhost-user-blk");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the bench folder");
    let script = dir.join("script.sh");
    std::fs::write(&script, guest_script()).expect("write the guest script");

    let qemu_version = Command::new(&qemu)
        .arg("-version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    eprintln!("{qemu_version}; {rounds} rounds");
    let mut results: Vec<(Device, Vec<f64>)> = Vec::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Device::VhostUser, Device::Qemu]
        } else {
            [Device::Qemu, Device::VhostUser]
        };
        for device in order {
            let figures = run_guest(&qemu, &guest, &backend, &dir, &script, device);
            eprintln!(
                "round {}: {device:?}: {}",
                round + 1,
                MEASURES
                    .iter()
                    .zip(&figures)
                    .map(|((k, _, _), v)| format!("{k}={v:.1}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            results.push((device, figures));
        }
    }

    let median = |device: Device, i: usize| {
        let mut v: Vec<f64> = results
            .iter()
            .filter(|(d, _)| *d == device)
            .map(|(_, f)| f[i])
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let range = |device: Device, i: usize| {
        let v = results
            .iter()
            .filter(|(d, _)| *d == device)
            .map(|(_, f)| f[i]);
        let (lo, hi) = v.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
        format!("{lo:.0}..{hi:.0}")
    };
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| measure (guest, {rounds} rounds) | vmkit vhost-user-blk | QEMU virtio-blk | vmkit / QEMU |"
    );
    let _ = writeln!(table, "|---|---|---|---|");
    for (i, (_, label, unit)) in MEASURES.iter().enumerate() {
        let (v, q) = (median(Device::VhostUser, i), median(Device::Qemu, i));
        let _ = writeln!(
            table,
            "| {label} | {v:.1} {unit} ({}) | {q:.1} {unit} ({}) | {:.2}x |",
            range(Device::VhostUser, i),
            range(Device::Qemu, i),
            v / q
        );
    }
    println!("{table}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The guest's script: prepares 128 MiB of a stream in RAM, then prints
/// one `vmkit-bench: KEY VALUE` line per measure.
fn guest_script() -> String {
    format!(
        r#"set -e
dev=/dev/vda
vmkit-blkio pattern 1 $(({DISK_MIB} << 20)) >/tmp/data
# busybox-static's dd prints no rate: time it with /proc/uptime (10 ms).
now() {{ cut -d' ' -f1 /proc/uptime; }}
rate() {{ awk -v a=$1 -v b=$2 'BEGIN {{ printf "%.3f", {DISK_MIB} / (b - a) }}'; }}
t0=$(now)
dd if=/tmp/data of=$dev bs=1M count={DISK_MIB} oflag=direct conv=fsync,notrunc 2>/dev/null
t1=$(now)
rm /tmp/data
echo "vmkit-bench: seq-write $(rate $t0 $t1)"
t0=$(now)
dd if=$dev of=/dev/null bs=1M count={DISK_MIB} iflag=direct 2>/dev/null
t1=$(now)
echo "vmkit-bench: seq-read $(rate $t0 $t1)"
for op in read write; do
    for jobs in 1 4; do
        out=$(vmkit-blkio rand $dev $op 4096 {RAND_SECONDS} $jobs)
        echo "vmkit-bench: rand-$op-$jobs ${{out##*iops=}}" | sed 's/ mib_s=.*//'
    done
done
"#
    )
}

fn run_guest(
    qemu: &Path,
    guest: &Path,
    backend: &Path,
    dir: &Path,
    script: &Path,
    device: Device,
) -> Vec<f64> {
    let image = dir.join(format!("{device:?}.qcow2"));
    let _ = std::fs::remove_file(&image);
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg(format!("{DISK_MIB}M"))
        .output()
        .expect("run qemu-img");
    assert!(out.status.success(), "qemu-img create: {out:?}");

    let socket = dir.join("blk.sock");
    let _ = std::fs::remove_file(&socket);
    let mut backend_child = (device == Device::VhostUser).then(|| {
        let child = Command::new(backend)
            .arg("--socket")
            .arg(&socket)
            .arg("--disk")
            .arg(format!("{},format=qcow2", image.display()))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the back end");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "the back end made no socket");
            thread::sleep(Duration::from_millis(20));
        }
        child
    });

    let mut cmd = Command::new(qemu);
    cmd.args([
        "-object",
        &format!("memory-backend-memfd,id=mem,size={MEM_MIB}M,share=on"),
        "-accel",
        "tcg",
        "-machine",
        "q35,memory-backend=mem",
        "-m",
        &MEM_MIB.to_string(),
        "-smp",
        "2",
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
        "-serial",
        "stdio",
    ])
    .arg("-kernel")
    .arg(guest.join("vmlinuz"))
    .arg("-initrd")
    .arg(guest.join("initrd-qemu.img"))
    .args([
        "-append",
        "console=ttyS0 panic=-1 quiet",
        "-fw_cfg",
        &format!("name=opt/vmkit/script,file={}", script.display()),
    ]);
    match device {
        Device::VhostUser => cmd.args([
            "-chardev",
            &format!("socket,id=blk0,path={}", socket.display()),
            "-device",
            "vhost-user-blk-pci,chardev=blk0,num-queues=1",
        ]),
        Device::Qemu => cmd.args([
            "-drive",
            &format!("file={},if=none,id=d0,format=qcow2", image.display()),
            "-device",
            "virtio-blk-pci,drive=d0,num-queues=1",
        ]),
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn qemu");
    let mut stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + GUEST_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for qemu") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("wait for qemu");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let console = reader.join().unwrap_or_default();
    if let Some(mut b) = backend_child.take() {
        let deadline = Instant::now() + Duration::from_secs(20);
        while b.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = b.kill();
                panic!("the back end did not exit after QEMU");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(
        status.success() && console.contains("vmkit-linux: script exit 0"),
        "{device:?}: the guest's run failed ({status}):\n{console}"
    );
    MEASURES
        .iter()
        .map(|(key, _, _)| {
            console
                .lines()
                .find_map(|l| {
                    l.trim_end()
                        .strip_prefix(&format!("vmkit-bench: {key} "))
                        .and_then(|v| v.trim().parse::<f64>().ok())
                })
                .unwrap_or_else(|| panic!("{device:?}: no figure for {key}:\n{console}"))
        })
        .collect()
}

/// `cargo build --release -p vmkit-vhost-user`; the blk command's path.
fn build_backend() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "vmkit-vhost-user", "--bins"])
        .current_dir(root)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building vmkit-vhost-user failed");
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("release/vmkit-vhost-user-blk")
}
