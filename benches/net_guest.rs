//! End-to-end virtio-net bench: TCP between the minimal guest (smoltcp,
//! under KVM, on a tap attached to a bridge) and the host, beside TCP
//! between two network namespaces over a veth pair (no VM: the physical
//! reference) in the same run. Needs root (network namespaces, tap, veth).
//!
//! ```text
//! cargo bench --bench net_guest
//! ```
//!
//! - guest -> host: the guest sends 256 MiB (`vmkit.tcp-send`) to a host
//!   socket on the bridge; the host times accept to end of stream, the
//!   guest times established to the last byte acknowledged.
//! - host -> guest -> host: the host sends 64 MiB to the guest's echo
//!   server (`vmkit.tcp-echo`) and reads the echo back at the same time:
//!   every byte crosses the virtio-net device twice, both directions at
//!   once. The figure is MiB per second each way, timed by the host from
//!   connect to the last echoed byte.
//!
//! Each is its own VMM run, so its `--stats` net line (the device's
//! counts) and the guest's `net-stats` line (queue notifications it wrote,
//! interrupts it took) describe that transfer alone; they give packets per
//! notification and per interrupt.
//!
//! The reference does the same two transfers between two fresh network
//! namespaces joined by a veth pair: a sink, and an echo server with a
//! 64 KiB buffer; once as the host sets veth up (TSO/GSO: TCP hands it
//! super-packets of tens of KiB) and once with `gso_max_segs 1` on both
//! ends, so that every packet is one MSS, as every frame of the guest is.
//! `cargo bench --bench net_guest -- N` runs N rounds (default 3) and
//! prints medians. Every namespace is private to a thread of this bench (and
//! to the processes it starts there), so it and its interfaces go away
//! with the thread, also on failure; only addresses inside them are used
//! (10.77.0.0/24 for the guest, 10.78.0.0/24 for the veth pair).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use vmkit::net::{bridge, iface};

const HOST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const VETH_A: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const VETH_B: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
const SEND_PORT: u16 = 5001;
const ECHO_PORT: u16 = 5002;
const SEND_MIB: usize = 256;
const ECHO_MIB: usize = 64;
const MIB: f64 = (1 << 20) as f64;
const TIMEOUT: Duration = Duration::from_secs(120);

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    for dev in ["/dev/kvm", "/dev/net/tun"] {
        if !Path::new(dev).exists() {
            println!("net_guest bench skipped: {dev} does not exist");
            return;
        }
    }
    let vmm = build_vmm();

    // Per round, side by side: guest send, guest echo, veth with GSO,
    // veth with one segment per packet.
    let mut rows: Vec<[f64; 7]> = Vec::new();
    let mut last = None;
    for round in 1..=rounds {
        let send = {
            let vmm = vmm.clone();
            in_new_netns(move || guest_send(&vmm))
        };
        let echo = {
            let vmm = vmm.clone();
            in_new_netns(move || guest_echo(&vmm))
        };
        let veth = veth_reference(None);
        let veth1 = veth_reference(Some(1));
        let row = [
            send.host_mibps,
            send.guest_mibps,
            echo.mibps,
            veth.send_mibps,
            veth.echo_mibps,
            veth1.send_mibps,
            veth1.echo_mibps,
        ];
        println!(
            "round {round}/{rounds}: guest send {:.1} MiB/s (guest-timed {:.1}), echo {:.1}; \
             veth send {:.1}, echo {:.1}; veth 1 segment/packet send {:.1}, echo {:.1} \
             ({:.0} and {:.0} bytes per veth packet)",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            row[6],
            ratio(veth.send_bytes, veth.send_packets),
            ratio(veth1.send_bytes, veth1.send_packets),
        );
        rows.push(row);
        last = Some((send, echo));
    }
    let Some((send, echo)) = last else {
        return;
    };

    let col = |i: usize| median(rows.iter().map(|r| r[i]).collect());
    let ratios = |a: usize, b: usize| median(rows.iter().map(|r| r[a] / r[b]).collect());
    println!();
    println!("medians of {rounds} rounds (ratios: median of each round's ratio):");
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "TCP, MiB/s", "guest", "veth", "veth 1seg", "g/veth", "g/veth1seg"
    );
    println!(
        "{:<40} {:>9.1} {:>9.1} {:>9.1} {:>9.3}x {:>9.3}x",
        format!("guest -> host, {SEND_MIB} MiB (host-timed)"),
        col(0),
        col(3),
        col(5),
        ratios(0, 3),
        ratios(0, 5)
    );
    println!("{:<40} {:>9.1}", "  same transfer, guest-timed", col(1));
    println!(
        "{:<40} {:>9.1} {:>9.1} {:>9.1} {:>9.3}x {:>9.3}x",
        format!("echo, {ECHO_MIB} MiB each way at once"),
        col(2),
        col(4),
        col(6),
        ratios(2, 4),
        ratios(2, 6)
    );
    println!();
    println!("counts of the last round:");
    for (name, dev, guest, vmm) in [
        ("guest -> host", &send.device, &send.guest, &send.vmm),
        ("echo", &echo.device, &echo.guest, &echo.vmm),
    ] {
        println!("{name}:");
        println!("  device (vmm --stats): {}", dev.line);
        println!("  guest (net-stats):    {}", guest.line);
        println!("  {}", vmm.cpu());
        println!(
            "  TX packets per notification: device {:.2}, guest {:.2}",
            ratio(dev.tx_packets, dev.tx_notifications),
            ratio(guest.tx_packets, guest.tx_notifications)
        );
        println!(
            "  RX packets per buffer notification: device {:.2}, guest {:.2}",
            ratio(dev.rx_packets, dev.rx_notifications),
            ratio(guest.rx_packets, guest.rx_notifications)
        );
        if dev.interrupts == 0 && guest.interrupts == 0 {
            println!(
                "  packets per interrupt: no interrupts at all (the guest polls its used rings \
                 with interrupts suppressed)"
            );
        } else {
            println!(
                "  packets (both ways) per interrupt: device {:.2}, guest {:.2}",
                ratio(dev.tx_packets + dev.rx_packets, dev.interrupts),
                ratio(guest.tx_packets + guest.rx_packets, guest.interrupts)
            );
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / b.max(1) as f64
}

/// Runs `f` on a thread in a fresh network namespace, which goes away
/// with the thread and whatever it started there.
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(move || {
        unshare_netns();
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn unshare_netns() {
    // SAFETY: unshare(2) with CLONE_NEWNET only changes the calling
    // thread's network namespace; no memory is passed.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET) (needs root): {}",
        io::Error::last_os_error()
    );
}

/// Kills the VMM if the bench ends early, so its namespace goes with it.
struct KillOnDrop {
    child: Option<Child>,
    started: Instant,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a VMM run printed, and its wall-clock and CPU time.
struct VmmRun {
    stdout: String,
    stderr: String,
    wall: Duration,
    user: Duration,
    sys: Duration,
}

impl VmmRun {
    fn cpu(&self) -> String {
        format!(
            "vmm process: {:.2} s wall, {:.2} s user + {:.2} s system CPU (vCPU and device threads)",
            self.wall.as_secs_f64(),
            self.user.as_secs_f64(),
            self.sys.as_secs_f64()
        )
    }
}

/// In the calling thread's (fresh) namespace: lo up, br0 with the host's
/// address, up.
fn host_bridge() {
    iface::set_up("lo", true).expect("lo up");
    bridge::create("br0").expect("create br0");
    iface::set_ipv4_address("br0", HOST, 24).expect("address br0");
    iface::set_up("br0", true).expect("br0 up");
}

/// Starts the VMM on tap0 in br0 with `params` on the guest's command
/// line.
fn spawn_vmm(vmm: &Path, params: &str) -> KillOnDrop {
    let child = Command::new(vmm)
        .args([
            "-m",
            "128",
            "--stats",
            "--net",
            "tap=tap0,bridge=br0",
            "--cmdline",
            params,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the vmm");
    KillOnDrop {
        child: Some(child),
        started: Instant::now(),
    }
}

/// Waits for the VMM; panics unless it exited 0 with no FAIL line.
fn finish_vmm(mut vmm: KillOnDrop) -> VmmRun {
    let child = vmm.child.as_mut().unwrap();
    let (tx, rx) = mpsc::channel();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    thread::spawn(move || {
        let (mut o, mut e) = (String::new(), String::new());
        let _ = out.read_to_string(&mut o);
        let _ = err.read_to_string(&mut e);
        let _ = tx.send((o, e));
    });
    let (stdout, stderr) = rx
        .recv_timeout(TIMEOUT)
        .expect("the vmm did not finish in time");
    // This bench waits for no other child meanwhile: the growth of the
    // children's resource usage is this VMM's.
    let before = children_cpu();
    let mut child = vmm.child.take().unwrap();
    let status = child.wait().expect("wait for the vmm");
    let wall = vmm.started.elapsed();
    let after = children_cpu();
    assert!(
        status.success() && !stdout.contains("FAIL"),
        "vmm run failed ({status}):\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}"
    );
    VmmRun {
        stdout,
        stderr,
        wall,
        user: after.0 - before.0,
        sys: after.1 - before.1,
    }
}

/// User and system CPU time of this process's waited-for children.
fn children_cpu() -> (Duration, Duration) {
    // SAFETY: an all-zero `rusage` is a valid value of that plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage(2) writes one `rusage` into the local.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0, "getrusage: {}", io::Error::last_os_error());
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (time(usage.ru_utime), time(usage.ru_stime))
}

/// Reads a stream to its end; returns the bytes and the time they took.
fn sink(mut s: TcpStream) -> io::Result<(u64, Duration)> {
    let start = Instant::now();
    s.set_read_timeout(Some(TIMEOUT))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf)? {
            0 => return Ok((total, start.elapsed())),
            n => total += n as u64,
        }
    }
}

/// Sends `len` bytes to `s` while reading the echo back; returns the time
/// from the call to the last echoed byte.
fn echo_client(s: TcpStream, len: usize) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut reader = s.try_clone().unwrap();
    let expected = len;
    let back = thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0usize;
        let mut sum = 0u64;
        while got < expected {
            let n = reader.read(&mut buf).expect("read the echo");
            assert!(n > 0, "the echo ended after {got} of {expected} bytes");
            sum = buf[..n]
                .iter()
                .fold(sum, |a, &b| a.wrapping_add(u64::from(b)));
            got += n;
        }
        (sum, start.elapsed())
    });
    let mut w = &s;
    let chunk: Vec<u8> = (0..1 << 16).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut sent = 0;
    let mut sum = 0u64;
    while sent < len {
        let n = chunk.len().min(len - sent);
        w.write_all(&chunk[..n]).expect("send to the echo server");
        sum = chunk[..n]
            .iter()
            .fold(sum, |a, &b| a.wrapping_add(u64::from(b)));
        sent += n;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (back_sum, elapsed) = back.join().expect("echo reader");
    assert_eq!(back_sum, sum, "the echo differs from what was sent");
    elapsed
}

/// Connects, retrying while the peer is not listening yet.
fn connect(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => return s,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("cannot connect to {addr}: {e}"),
        }
    }
}

/// The device's counters from the VMM's `vmm: net0: ...` line.
#[derive(Debug, Default)]
struct Counts {
    line: String,
    tx_packets: u64,
    tx_notifications: u64,
    rx_packets: u64,
    rx_notifications: u64,
    interrupts: u64,
}

/// The number right before `word` in `text`.
fn before(text: &str, word: &str) -> u64 {
    let words: Vec<&str> = text.split([' ', ',', ';', '(', ')']).collect();
    words
        .windows(2)
        .find(|w| w[1] == word)
        .and_then(|w| w[0].parse().ok())
        .unwrap_or_else(|| panic!("no number before {word:?} in {text:?}"))
}

/// "tx A packets B bytes C dropped D notifications; rx E packets ... H
/// notifications; I interrupts"
fn device_counts(stderr: &str) -> Counts {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("vmm: net0: "))
        .unwrap_or_else(|| panic!("no net0 stats line in:\n{stderr}"));
    let mut parts = line.split(';');
    let (tx, rx, irq) = (
        parts.next().unwrap(),
        parts.next().expect("rx part"),
        parts.next().expect("interrupts part"),
    );
    Counts {
        line: line.to_string(),
        tx_packets: before(tx, "packets"),
        tx_notifications: before(tx, "notifications"),
        rx_packets: before(rx, "packets"),
        rx_notifications: before(rx, "notifications"),
        interrupts: before(irq, "interrupts"),
    }
}

/// "net-stats: tx N pkts K notifications, rx M pkts (J merged) L
/// notifications, I interrupts, E rx errors"
fn guest_counts(stdout: &str) -> Counts {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("net-stats: "))
        .unwrap_or_else(|| panic!("no net-stats line in:\n{stdout}"));
    let mut parts = line.split(", ");
    let (tx, rx, irq) = (
        parts.next().unwrap(),
        parts.next().expect("rx part"),
        parts.next().expect("interrupts part"),
    );
    Counts {
        line: line.to_string(),
        tx_packets: before(tx, "pkts"),
        tx_notifications: before(tx, "notifications"),
        rx_packets: before(rx, "pkts"),
        rx_notifications: before(rx, "notifications"),
        interrupts: before(irq, "interrupts"),
    }
}

struct SendRun {
    host_mibps: f64,
    guest_mibps: f64,
    device: Counts,
    guest: Counts,
    vmm: VmmRun,
}

/// Guest -> host: the guest's tcp-send into a sink on the bridge.
fn guest_send(vmm: &Path) -> SendRun {
    host_bridge();
    let listener = TcpListener::bind((HOST, SEND_PORT)).expect("listen for the guest");
    let receiver = thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept the guest's connection");
        sink(s).expect("read the guest's stream")
    });
    let child = spawn_vmm(
        vmm,
        &format!("vmkit.ip={GUEST}/24 vmkit.peer={HOST} vmkit.tcp-send={SEND_PORT}:{SEND_MIB}"),
    );
    let run = finish_vmm(child);
    let (bytes, elapsed) = receiver.join().expect("receiver thread");
    assert_eq!(bytes, (SEND_MIB as u64) << 20, "the guest's stream length");
    let guest_mibps: f64 = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("net-tcp-send MiB/s="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no net-tcp-send MiB/s line in:\n{}", run.stdout));
    SendRun {
        host_mibps: bytes as f64 / MIB / elapsed.as_secs_f64(),
        guest_mibps,
        device: device_counts(&run.stderr),
        guest: guest_counts(&run.stdout),
        vmm: run,
    }
}

struct EchoRun {
    mibps: f64,
    device: Counts,
    guest: Counts,
    vmm: VmmRun,
}

/// Host -> guest -> host: the host streams into the guest's echo server
/// and reads the echo back at the same time.
fn guest_echo(vmm: &Path) -> EchoRun {
    host_bridge();
    let child = spawn_vmm(
        vmm,
        &format!("vmkit.ip={GUEST}/24 vmkit.tcp-echo={ECHO_PORT}"),
    );
    let s = connect(SocketAddr::from((GUEST, ECHO_PORT)));
    let elapsed = echo_client(s, ECHO_MIB << 20);
    let run = finish_vmm(child);
    assert!(
        run.stdout.contains(&format!(
            "ok net-tcp-echo: port {ECHO_PORT} echoed {} bytes",
            ECHO_MIB << 20
        )),
        "{}",
        run.stdout
    );
    EchoRun {
        mibps: ECHO_MIB as f64 / elapsed.as_secs_f64(),
        device: device_counts(&run.stderr),
        guest: guest_counts(&run.stdout),
        vmm: run,
    }
}

struct VethRun {
    send_mibps: f64,
    echo_mibps: f64,
    /// Packets and bytes veth-a sent during the 256 MiB transfer.
    send_packets: u64,
    send_bytes: u64,
}

/// The TX bytes and packets of `dev` in the calling thread's namespace,
/// from `ip -s -o link show`.
fn tx_counters(dev: &str) -> (u64, u64) {
    let out = Command::new("ip")
        .args(["-s", "-o", "link", "show", "dev", dev])
        .output()
        .expect("run ip (iproute2)");
    assert!(out.status.success(), "ip -s link show {dev} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    // "...\    TX:  bytes packets errors ...\    <bytes> <packets> ..."
    let mut parts = text.split('\\').map(str::trim);
    parts
        .find(|p| p.starts_with("TX:"))
        .and_then(|_| parts.next())
        .and_then(|p| {
            let mut n = p.split_whitespace().map(|w| w.parse::<u64>().ok());
            Some((n.next()??, n.next()??))
        })
        .unwrap_or_else(|| panic!("unexpected ip -s output: {text}"))
}

/// Runs `ip ARGS` in the calling thread's network namespace.
fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("run ip (iproute2)");
    assert!(status.success(), "ip {} failed: {status}", args.join(" "));
}

/// The same two transfers between two network namespaces over a veth
/// pair. Namespace B (a sink and an echo server) and namespace A (the
/// clients) each belong to one thread; A creates the pair with one end in
/// B (named by B's thread id).
fn veth_reference(gso_max_segs: Option<u32>) -> VethRun {
    let (tid_tx, tid_rx) = mpsc::channel::<libc::pid_t>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let server = thread::spawn(move || {
        unshare_netns();
        // SAFETY: gettid(2) has no arguments and cannot fail.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        go_rx.recv().expect("namespace A set up the pair");
        if let Some(segs) = gso_max_segs {
            ip(&[
                "link",
                "set",
                "dev",
                "veth-b",
                "gso_max_segs",
                &segs.to_string(),
            ]);
        }
        iface::set_up("lo", true).expect("lo up");
        iface::set_ipv4_address("veth-b", VETH_B, 24).expect("address veth-b");
        iface::set_up("veth-b", true).expect("veth-b up");
        let sink_listener = TcpListener::bind((VETH_B, SEND_PORT)).expect("listen (sink)");
        let echo_listener = TcpListener::bind((VETH_B, ECHO_PORT)).expect("listen (echo)");
        ready_tx.send(()).unwrap();
        let (s, _) = sink_listener.accept().expect("accept (sink)");
        sink(s).expect("sink");
        let (mut s, _) = echo_listener.accept().expect("accept (echo)");
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = s.read(&mut buf).expect("echo read");
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).expect("echo write");
        }
    });
    let client = thread::spawn(move || {
        unshare_netns();
        let tid = tid_rx.recv().expect("namespace B's thread id");
        ip(&[
            "link",
            "add",
            "veth-a",
            "type",
            "veth",
            "peer",
            "name",
            "veth-b",
            "netns",
            &tid.to_string(),
        ]);
        if let Some(segs) = gso_max_segs {
            ip(&[
                "link",
                "set",
                "dev",
                "veth-a",
                "gso_max_segs",
                &segs.to_string(),
            ]);
        }
        iface::set_up("lo", true).expect("lo up");
        iface::set_ipv4_address("veth-a", VETH_A, 24).expect("address veth-a");
        iface::set_up("veth-a", true).expect("veth-a up");
        go_tx.send(()).unwrap();
        ready_rx.recv().expect("namespace B listening");

        let mut s = connect(SocketAddr::from((VETH_B, SEND_PORT)));
        let chunk: Vec<u8> = (0..1 << 16).map(|i| i as u8).collect();
        let before = tx_counters("veth-a");
        let start = Instant::now();
        for _ in 0..(SEND_MIB << 20) / chunk.len() {
            s.write_all(&chunk).expect("send to the sink");
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        // The sink closes once it has read everything.
        let mut rest = [0u8; 1];
        let _ = s.read(&mut rest);
        let send_secs = start.elapsed().as_secs_f64();
        let after = tx_counters("veth-a");

        let s = connect(SocketAddr::from((VETH_B, ECHO_PORT)));
        let echo = echo_client(s, ECHO_MIB << 20);
        VethRun {
            send_mibps: SEND_MIB as f64 / send_secs,
            echo_mibps: ECHO_MIB as f64 / echo.as_secs_f64(),
            send_bytes: after.0 - before.0,
            send_packets: after.1 - before.1,
        }
    });
    // If the client failed, the server may wait in accept forever: end
    // the bench (and with it both namespaces) without joining it.
    let run = client
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    server
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    run
}

fn build_vmm() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--example", "vmm"])
        .current_dir(root)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the vmm example failed");
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("release/examples/vmm")
}
