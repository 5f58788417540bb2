//! vmkit's vhost-user back ends (`crates/vhost-user`) under a real front
//! end: QEMU (`-accel tcg`, machine q35, guest memory in a shared memfd)
//! boots Debian's cloud kernel with `initrd-qemu.img` from
//! `scripts/debian-guest.sh`, and Linux's own virtio drivers do the I/O.
//!
//! - blk: `vmkit-vhost-user-blk` serves a qcow2 image to a
//!   `vhost-user-blk-pci` device. The guest writes four 8 MiB regions of a
//!   known stream (seeded xorshift32, made in the guest by `vmkit-blkio
//!   pattern`) with four `dd` running at once, two with O_DIRECT 1 MiB
//!   writes and two through the page cache, each ending with fsync
//!   (FLUSH); drops its caches, reads every region back with O_DIRECT and
//!   prints its CRC-32 beside the CRC-32 of the stream it meant to write;
//!   then discards 4 MiB (`blkdiscard`) and zeroes 4 MiB (`BLKZEROOUT`,
//!   which uses WRITE_ZEROES when the device offers it) and prints the
//!   CRC-32 of the whole disk. The host then checks the guest's CRCs
//!   against its own copy of the streams, `qemu-img check` is clean,
//!   `qemu-img convert` to raw gives exactly the expected 64 MiB, and
//!   `qemu-img map` shows the discarded and zeroed clusters as holding no
//!   data. The same run against QEMU's own `virtio-blk-pci` on the same
//!   kind of image is the control that shows the checks themselves right.
//! - net: `vmkit-vhost-user-net` puts a `virtio-net-pci` device on a tap
//!   attached to a bridge, in a network namespace the test creates with the
//!   library (it disappears with the test). The guest pings the bridge and
//!   moves 4 MiB each way over TCP with busybox `nc`, checked byte for byte
//!   against a Rust `TcpListener` on the bridge's address.
//!
//! QEMU comes from `scripts/qemu.sh` (`$VMKIT_QEMU` or
//! `target/qemu/qemu-system-x86_64`), the guest from `scripts/debian-guest.sh`
//! (`$VMKIT_DEBIAN_GUEST` or `target/debian-guest`). When either is missing
//! a test says so in one line and passes, except under CI (`CI=true`,
//! where `.ci/run` prepares both), where it fails. The back ends are built
//! with `cargo build -p vmkit-vhost-user` (a no-op after `cargo test
//! --workspace`).

mod common;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{Run, host_bridge, in_new_netns, run_bounded, scratch_dir};

/// How long one guest may take, boot and power-off included (TCG boots
/// the kernel in 2-5 s; the blk script takes well under a minute).
const GUEST_TIMEOUT: Duration = Duration::from_secs(150);
/// Guest memory; shared with the back end through a memfd.
const MEM_MIB: u64 = 512;

const DISK_SIZE: u64 = 64 << 20;
const REGION: u64 = 8 << 20;
/// The four regions written at once, at `i * REGION`, with seeds 1..=4.
const REGIONS: u64 = 4;
/// Discarded by the guest: inside region 1, 64 KiB (cluster) aligned.
const DISCARD: (u64, u64) = (10 << 20, 4 << 20);
/// Zeroed by the guest (BLKZEROOUT): inside region 2.
const ZEROOUT: (u64, u64) = (20 << 20, 4 << 20);

const NET_MIB: usize = 4;
const GUEST_SEED: u32 = 7;
const SEND_PORT: u16 = 5001;
const RECV_PORT: u16 = 5002;
const MAC: &str = "52:54:00:4c:78:11";

// --- what the tests need ---------------------------------------------------

struct Env {
    qemu: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

/// Skips (one line, `None`) or, under CI, fails when `what` is missing.
fn missing(what: String) -> Option<Env> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what}");
    }
    eprintln!("skipped: {what}");
    None
}

/// QEMU and the guest images, or `None` after one line saying why not.
fn env() -> Option<Env> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let qemu = std::env::var_os("VMKIT_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/qemu/qemu-system-x86_64"));
    let guest = std::env::var_os("VMKIT_DEBIAN_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/debian-guest"));
    if !qemu.is_file() {
        return missing(format!(
            "QEMU is not prepared ({} is missing): run scripts/qemu.sh",
            qemu.display()
        ));
    }
    let (kernel, initrd) = (guest.join("vmlinuz"), guest.join("initrd-qemu.img"));
    if !kernel.is_file() || !initrd.is_file() {
        return missing(format!(
            "the Debian guest images are missing (vmlinuz, initrd-qemu.img in {}): run \
             scripts/debian-guest.sh",
            guest.display()
        ));
    }
    Some(Env {
        qemu,
        kernel,
        initrd,
    })
}

/// Builds the back-end commands (in the profile of this test) and returns
/// the path of `name`.
fn backend(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "vmkit-vhost-user", "--bins"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build -p vmkit-vhost-user failed");
    let bin = profile_dir.join(name);
    assert!(bin.is_file(), "{} was not built", bin.display());
    bin
}

/// A child process killed (and reaped) when the test ends early.
struct Guarded(Option<Child>);

impl Guarded {
    /// Waits up to `timeout` for the process to exit by itself; returns its
    /// exit code and everything it wrote (stdout and stderr, interleaved as
    /// they were drained).
    fn finish(&mut self, timeout: Duration) -> (Option<i32>, bool, String) {
        let mut child = self.0.take().expect("already finished");
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() >= deadline {
                timed_out = true;
                let _ = child.kill();
                break child.wait().expect("wait");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut out);
        }
        (status.code(), timed_out, out)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts a back end that listens on `socket` and waits for the socket.
/// Its output goes to `log` (read back for failure messages).
fn start_backend(bin: &Path, args: &[String], socket: &Path, log: &Path) -> Guarded {
    let out = std::fs::File::create(log).expect("create the back end's log");
    let err = out.try_clone().expect("dup the log");
    let child = Command::new(bin)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or("info".into()),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let mut guard = Guarded(Some(child));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if let Some(status) = guard.0.as_mut().unwrap().try_wait().expect("wait") {
            panic!(
                "{} exited ({status}) before listening on {}:\n{}",
                bin.display(),
                socket.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} did not create {} within 20 s",
            bin.display(),
            socket.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
    guard
}

/// The QEMU command line shared by every run: q35 under TCG, the Debian
/// kernel, `initrd-qemu.img`, `script` passed through fw_cfg, the serial
/// console on stdout, and (`shared`) guest memory in a shared memfd, which
/// vhost-user needs.
fn qemu(env: &Env, shared: bool, script: &Path, cmdline: &str) -> Command {
    let mut cmd = Command::new(&env.qemu);
    let machine = if shared {
        cmd.args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={MEM_MIB}M,share=on"),
        ]);
        "q35,memory-backend=mem"
    } else {
        "q35"
    };
    cmd.args(["-accel", "tcg", "-machine", machine])
        .args(["-m", &MEM_MIB.to_string(), "-smp", "2"])
        .args(["-nodefaults", "-no-user-config", "-no-reboot"])
        .args(["-display", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&env.kernel)
        .arg("-initrd")
        .arg(&env.initrd)
        .args([
            "-append",
            &format!("console=ttyS0 panic=-1 {cmdline}"),
            "-fw_cfg",
            &format!("name=opt/vmkit/script,file={}", script.display()),
        ]);
    cmd
}

/// The text after `prefix` on the first console line starting with it.
fn field<'a>(run: &'a Run, prefix: &str) -> &'a str {
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}:\n{run}"))
}

/// The checks every guest run must pass: no timeout, no panic, the script
/// ran to its end, `ready`, an ACPI power-off and QEMU's status 0.
fn assert_clean_run(run: &Run, timed_out: bool) {
    assert!(
        !timed_out,
        "the guest did not power off within {GUEST_TIMEOUT:?}:\n{run}"
    );
    assert!(
        !run.stdout.contains("Kernel panic"),
        "the kernel panicked:\n{run}"
    );
    assert!(
        !run.stdout.contains("vmkit-linux: error"),
        "/init reported an error:\n{run}"
    );
    assert_eq!(field(run, "vmkit-linux: script exit "), "0", "{run}");
    field(run, "vmkit-linux: ready");
    assert!(
        run.stdout.contains("reboot: Power down"),
        "no ACPI power-off:\n{run}"
    );
    assert_eq!(run.code, Some(0), "qemu's status:\n{run}");
}

/// The guest's `vmkit-blkio pattern SEED LEN` stream: xorshift32 from
/// `seed`, 4 bytes little-endian a step.
fn stream(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed;
    let mut out = Vec::with_capacity(len + 4);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("run qemu-img (Debian package qemu-utils)")
}

// --- blk -------------------------------------------------------------------

/// Which device serves the disk.
#[derive(Clone, Copy, PartialEq, Debug)]
enum BlkDevice {
    /// `vmkit-vhost-user-blk` behind `vhost-user-blk-pci`.
    VhostUser,
    /// QEMU's own `virtio-blk-pci` (the control).
    QemuVirtioBlk,
}

/// The guest's script for the blk runs (busybox ash).
fn blk_script() -> String {
    let mib = |b: u64| b >> 20;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"dev=/dev/vda
q=/sys/block/vda/queue
echo "vmkit-blk: offers discard=$(cat $q/discard_max_bytes) write_zeroes=$(cat $q/write_zeroes_max_bytes)"
for seed in $(seq 1 {REGIONS}); do
    case $seed in 1 | 2) flag=oflag=direct ;; *) flag= ;; esac
    (
        vmkit-blkio pattern $seed {REGION} |
            dd of=$dev bs=1M seek=$(((seed - 1) * {region_mib})) iflag=fullblock $flag conv=fsync,notrunc status=none
        echo $? >/tmp/dd$seed
    ) &
done
wait
echo "vmkit-blk: writes $(cat /tmp/dd* | tr '\n' ' ')"
sync
echo 3 >/proc/sys/vm/drop_caches
for seed in $(seq 1 {REGIONS}); do
    got=$(dd if=$dev bs=1M skip=$(((seed - 1) * {region_mib})) count={region_mib} iflag=direct status=none | crc32)
    want=$(vmkit-blkio pattern $seed {REGION} | crc32)
    echo "vmkit-blk: region $seed crc32 $got want $want"
done
blkdiscard -o {discard_off} -l {discard_len} $dev
echo "vmkit-blk: discard $?"
vmkit-blkio zeroout $dev {zero_off} {zero_len}
echo "vmkit-blk: zeroout $?"
sync
echo 3 >/proc/sys/vm/drop_caches
echo "vmkit-blk: disk crc32 $(dd if=$dev bs=1M count={disk_mib} iflag=direct status=none | crc32)""#,
        region_mib = mib(REGION),
        discard_off = DISCARD.0,
        discard_len = DISCARD.1,
        zero_off = ZEROOUT.0,
        zero_len = ZEROOUT.1,
        disk_mib = mib(DISK_SIZE),
    );
    s
}

/// What the disk must hold afterwards.
fn expected_disk() -> Vec<u8> {
    let mut disk = vec![0u8; DISK_SIZE as usize];
    for i in 0..REGIONS {
        let at = (i * REGION) as usize;
        disk[at..at + REGION as usize].copy_from_slice(&stream(i as u32 + 1, REGION as usize));
    }
    for (off, len) in [DISCARD, ZEROOUT] {
        disk[off as usize..(off + len) as usize].fill(0);
    }
    disk
}

/// `(offset, length, data)` extents of `qemu-img map --output=json`.
fn map(image: &Path) -> Vec<(u64, u64, bool)> {
    let out = qemu_img(&[
        "map",
        "--output=json",
        "-f",
        "qcow2",
        &image.display().to_string(),
    ]);
    assert!(out.status.success(), "qemu-img map: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    // One object per line: { "start": 0, "length": 65536, ..., "data": true, ... }
    let num = |obj: &str, key: &str| -> u64 {
        let at = obj
            .find(&format!("\"{key}\": "))
            .unwrap_or_else(|| panic!("{key} in {obj}"));
        obj[at + key.len() + 4..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {obj}"))
    };
    text.lines()
        .filter(|l| l.contains("\"start\""))
        .map(|l| {
            (
                num(l, "start"),
                num(l, "length"),
                l.contains("\"data\": true"),
            )
        })
        .collect()
}

fn blk_run(device: BlkDevice) {
    let Some(env) = env() else { return };
    let bin = (device == BlkDevice::VhostUser).then(|| backend("vmkit-vhost-user-blk"));
    let dir = scratch_dir(&format!("vhost-user-blk-{device:?}"));
    let image = dir.join("disk.qcow2");
    let out = qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        &image.display().to_string(),
        &DISK_SIZE.to_string(),
    ]);
    assert!(out.status.success(), "qemu-img create: {out:?}");
    let script = dir.join("script.sh");
    std::fs::write(&script, blk_script()).expect("write the guest script");

    let socket = dir.join("blk.sock");
    let log = dir.join("backend.log");
    let mut backend = bin.as_ref().map(|bin| {
        start_backend(
            bin,
            &[
                "--socket".into(),
                socket.display().to_string(),
                "--disk".into(),
                format!("{},format=qcow2", image.display()),
            ],
            &socket,
            &log,
        )
    });
    let mut cmd = qemu(&env, backend.is_some(), &script, "");
    match device {
        BlkDevice::VhostUser => cmd.args([
            "-chardev",
            &format!("socket,id=blk0,path={}", socket.display()),
            "-device",
            "vhost-user-blk-pci,chardev=blk0,num-queues=1",
        ]),
        BlkDevice::QemuVirtioBlk => cmd.args([
            "-drive",
            &format!(
                "file={},if=none,id=d0,format=qcow2,discard=unmap",
                image.display()
            ),
            "-device",
            "virtio-blk-pci,drive=d0,num-queues=1",
        ]),
    };
    let (run, timed_out) = run_bounded(cmd, GUEST_TIMEOUT);
    let backend_out = backend.as_mut().map(|b| b.finish(Duration::from_secs(20)));
    let backend_log = std::fs::read_to_string(&log).unwrap_or_default();
    let all = format!("{run}--- back end ---\n{backend_log}");
    assert_clean_run(&run, timed_out);
    if let Some((code, timed_out, _)) = backend_out {
        assert!(
            !timed_out,
            "the back end did not exit when QEMU disconnected:\n{all}"
        );
        assert_eq!(code, Some(0), "the back end's status:\n{all}");
    }

    // The guest saw a 64 MiB virtio disk offering discard and write-zeroes.
    let disks = field(&run, "vmkit-linux: disks: ");
    assert!(
        disks.starts_with(&format!("vda={DISK_SIZE}")),
        "disks: {disks}\n{all}"
    );
    let offers = field(&run, "vmkit-blk: offers ");
    let offered = |what: &str| {
        offers
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{what}=")))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{offers}"))
    };
    assert!(
        offered("discard") > 0,
        "the device offers no discard:\n{all}"
    );
    assert!(
        offered("write_zeroes") > 0,
        "the device offers no write-zeroes:\n{all}"
    );
    assert_eq!(
        field(&run, "vmkit-blk: writes "),
        "0 ".repeat(REGIONS as usize),
        "dd statuses:\n{all}"
    );
    // Every region read back as written, and as the host expects.
    for seed in 1..=REGIONS as u32 {
        let want = format!("{:08x}", crc32fast::hash(&stream(seed, REGION as usize)));
        assert_eq!(
            field(&run, &format!("vmkit-blk: region {seed} crc32 ")),
            format!("{want} want {want}"),
            "region {seed}:\n{all}"
        );
    }
    assert_eq!(field(&run, "vmkit-blk: discard "), "0", "{all}");
    assert_eq!(field(&run, "vmkit-blk: zeroout "), "0", "{all}");
    let expected = expected_disk();
    assert_eq!(
        field(&run, "vmkit-blk: disk crc32 "),
        format!("{:08x}", crc32fast::hash(&expected)),
        "the guest's view of the whole disk:\n{all}"
    );

    // The image: consistent, holding exactly what the guest wrote, the
    // discarded and zeroed ranges without data clusters.
    let img = image.display().to_string();
    let check = qemu_img(&["check", "-f", "qcow2", &img]);
    assert!(
        check.status.success(),
        "qemu-img check: {}\n{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let raw = dir.join("disk.raw");
    let out = qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        &img,
        &raw.display().to_string(),
    ]);
    assert!(out.status.success(), "qemu-img convert: {out:?}");
    let got = std::fs::read(&raw).expect("read the converted image");
    assert_eq!(got.len(), expected.len(), "converted image size");
    if let Some(at) = got.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!("the image differs from what the guest wrote at byte {at}:\n{all}");
    }
    let extents = map(&image);
    for (what, (off, len)) in [("discarded", DISCARD), ("zeroed", ZEROOUT)] {
        for &(start, length, data) in &extents {
            let overlaps = start < off + len && off < start + length;
            assert!(
                !(overlaps && data),
                "the {what} range {off}+{len} still has data clusters \
                 ({start}+{length}): {extents:?}\n{all}"
            );
        }
    }
    // And the regions that were written are allocated.
    let allocated: u64 = extents.iter().filter(|e| e.2).map(|e| e.1).sum();
    assert_eq!(
        allocated,
        REGIONS * REGION - DISCARD.1 - ZEROOUT.1,
        "allocated data: {extents:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vhost_user_blk_serves_linux_virtio_blk_on_qcow2() {
    blk_run(BlkDevice::VhostUser);
}

/// The control: the same guest, script and checks with QEMU's own
/// virtio-blk on the same kind of image.
#[test]
fn qemu_virtio_blk_control_passes_the_same_checks() {
    blk_run(BlkDevice::QemuVirtioBlk);
}

// --- net -------------------------------------------------------------------

/// The host's stream to the guest.
fn host_stream(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
}

#[test]
fn vhost_user_net_pings_and_moves_tcp_data_both_ways() {
    let Some(env) = env() else { return };
    assert!(
        Path::new("/dev/net/tun").exists(),
        "/dev/net/tun does not exist: this test needs tap devices"
    );
    let bin = backend("vmkit-vhost-user-net");
    let dir = scratch_dir("vhost-user-net");
    let host = Ipv4Addr::new(10, 77, 5, 1);
    let guest = Ipv4Addr::new(10, 77, 5, 2);
    let len = NET_MIB << 20;
    let script = dir.join("script.sh");
    std::fs::write(
        &script,
        format!(
            r#"vmkit-blkio pattern {GUEST_SEED} {len} | timeout 60 nc {host} {SEND_PORT}
echo "vmkit-net: send $?"
timeout 60 nc {host} {RECV_PORT} </dev/null >/tmp/rx
echo "vmkit-net: recv $? bytes=$(wc -c </tmp/rx) crc32=$(crc32 </tmp/rx)""#
        ),
    )
    .expect("write the guest script");

    let socket = dir.join("net.sock");
    let log = dir.join("backend.log");
    let cmd = {
        let mut cmd = qemu(
            &env,
            true,
            &script,
            &format!("vmkit.ip={guest}/24 vmkit.peer={host}"),
        );
        // vectors=0: legacy INTx instead of MSI-X. QEMU 7.2 without KVM
        // crashes starting vhost-user-net with MSI-X (virtio-net turns the
        // guest notifier mask off for vhost-user, and virtio-pci's unmask
        // then takes the KVM irqfd path, whose table only exists with KVM).
        // romfile=: no option ROM (the iPXE package is not unpacked).
        cmd.args([
            "-chardev",
            &format!("socket,id=net0,path={}", socket.display()),
            "-netdev",
            "vhost-user,id=n0,chardev=net0",
            "-device",
            &format!("virtio-net-pci,netdev=n0,mac={MAC},romfile=,vectors=0"),
        ]);
        cmd
    };
    let (run, timed_out, backend_out, received, sent) = {
        let socket = socket.clone();
        let log = log.clone();
        in_new_netns(move || {
            host_bridge(host);

            // Guest -> host: exactly `len` bytes of the guest's stream.
            let listener = TcpListener::bind((host, SEND_PORT)).expect("listen for the guest");
            let receiver = thread::spawn(move || {
                let (mut s, _) = listener.accept().expect("accept the guest's connection");
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got);
                got
            });
            // Host -> guest: the host's stream, then close.
            let listener = TcpListener::bind((host, RECV_PORT)).expect("listen for the guest");
            let sender = thread::spawn(move || {
                let (mut s, _) = listener.accept().expect("accept the guest's connection");
                s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
                s.write_all(&host_stream(len)).is_ok()
            });

            let mut backend = start_backend(
                &bin,
                &[
                    "--socket".into(),
                    socket.display().to_string(),
                    "--net".into(),
                    "tap=tap0,bridge=br0".into(),
                ],
                &socket,
                &log,
            );
            let (run, timed_out) = run_bounded(cmd, GUEST_TIMEOUT);
            let backend_out = backend.finish(Duration::from_secs(20));
            // The guest is gone: unblock whatever still waits for it.
            let _ = std::net::TcpStream::connect((host, SEND_PORT));
            let _ = std::net::TcpStream::connect((host, RECV_PORT));
            let received = receiver.join().unwrap_or_default();
            let sent = sender.join().unwrap_or(false);
            (run, timed_out, backend_out, received, sent)
        })
    };
    let backend_log = std::fs::read_to_string(&log).unwrap_or_default();
    let all = format!("{run}--- back end ---\n{backend_log}");
    assert_clean_run(&run, timed_out);
    let (code, backend_timed_out, _) = backend_out;
    assert!(
        !backend_timed_out,
        "the back end did not exit when QEMU disconnected:\n{all}"
    );
    assert_eq!(code, Some(0), "the back end's status:\n{all}");
    assert_eq!(
        field(&run, "vmkit-linux: links: "),
        format!("eth0={MAC}"),
        "links:\n{all}"
    );
    assert_eq!(
        field(&run, "vmkit-linux: ping "),
        format!("ok: {host}"),
        "ping:\n{all}"
    );
    assert_eq!(field(&run, "vmkit-net: send "), "0", "{all}");
    assert_eq!(received.len(), len, "bytes from the guest:\n{all}");
    assert!(
        received == stream(GUEST_SEED, len),
        "the guest's stream arrived altered:\n{all}"
    );
    assert!(sent, "the host could not send its stream:\n{all}");
    assert_eq!(
        field(&run, "vmkit-net: recv "),
        format!(
            "0 bytes={len} crc32={:08x}",
            crc32fast::hash(&host_stream(len))
        ),
        "what the guest received:\n{all}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
