//! The virtio-net back end driven as a VMM drives it, without a VMM: the
//! `vhost` crate's front end over the Unix socket, guest memory in a memfd
//! both sides map, frames in split virtqueues there, and a real tap on a
//! bridge, as root, each test in a network namespace of its own (a thread
//! `unshare`s CLONE_NEWNET; the namespace, with the bridge and the tap,
//! goes away with the thread). The addresses are used only there.
//!
//! Skipped (one line) only when /dev/net/tun is missing.

mod common;

use std::io::{Read, Write};
use std::mem::ManuallyDrop;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vhost::VhostBackend;
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_S_LINK_UP};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_net::test_utils::{in_new_netns, tun_present};
use vmkit_net::{MacAddr, Tap, VNET_HDR_LEN, bridge, device_features, iface};
use vmkit_vhost_user::VhostUserNet;
use vmkit_virtio::test_utils::limited_lines;
use vmm_sys_util::tempdir::TempDir;

const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
const GUEST_MAC: MacAddr = MacAddr::new([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
const BIN: &str = env!("CARGO_BIN_EXE_vmkit-vhost-user-net");

const MEM_SIZE: usize = 8 << 20;
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x40_0000;
const BUF_STRIDE: u64 = 0x1000;
const RX_BUF_LEN: u32 = 2048;

fn bit(b: u32) -> u64 {
    1 << b
}

/// A bridge with BRIDGE_IP, up.
fn bridge_up(br: &str) {
    bridge::create(br).unwrap();
    iface::set_ipv4_address(br, BRIDGE_IP, 24).unwrap();
    iface::set_up(br, true).unwrap();
}

/// An ARP request "who has `target`? tell GUEST_IP at GUEST_MAC", behind a
/// virtio-net header.
fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&MacAddr::BROADCAST.octets());
    f.extend_from_slice(&GUEST_MAC.octets());
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC.octets());
    f.extend_from_slice(&GUEST_IP.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    // Pad to the Ethernet minimum (60 bytes without FCS).
    f.resize(VNET_HDR_LEN + 60, 0);
    f
}

/// If `f` (virtio-net header first) is an ARP reply, its sender hardware
/// and protocol addresses; checks it answers GUEST_IP at GUEST_MAC.
fn arp_reply(f: &[u8]) -> Option<(MacAddr, Ipv4Addr)> {
    let eth = f.get(VNET_HDR_LEN..)?;
    if eth.len() < 42 || eth[12..14] != [0x08, 0x06] || eth[20..22] != [0, 2] {
        return None;
    }
    let mac = |b: &[u8]| MacAddr::new(b.try_into().unwrap());
    let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    assert_eq!(mac(&eth[0..6]), GUEST_MAC, "Ethernet destination");
    assert_eq!(mac(&eth[32..38]), GUEST_MAC, "target hardware address");
    assert_eq!(ip(&eth[38..42]), GUEST_IP, "target protocol address");
    Some((mac(&eth[22..28]), ip(&eth[28..32])))
}

/// The driver's side of one NIC: its RX and TX rings and buffers.
struct Driver<'m> {
    mem: &'m GuestMemoryMmap,
    rx: Ring<'m>,
    tx: Ring<'m>,
    rx_posted: u16,
    tx_sent: u16,
}

impl<'m> Driver<'m> {
    /// Posts one RX buffer and notifies the RX queue.
    fn post_rx(&mut self) {
        let addr = RX_BUFS + u64::from(self.rx_posted) * BUF_STRIDE;
        self.mem
            .write_slice(&[0xee; RX_BUF_LEN as usize], GuestAddress(addr))
            .unwrap();
        let head = self.rx.add(&[(addr, RX_BUF_LEN, WRITE)]);
        assert_eq!(head, self.rx_posted);
        self.rx_posted += 1;
        self.rx.kick();
    }

    /// Sends `frame` (header included) and waits until it is used.
    fn send(&mut self, frame: &[u8]) {
        let addr = TX_BUFS + u64::from(self.tx_sent) * BUF_STRIDE;
        self.mem.write_slice(frame, GuestAddress(addr)).unwrap();
        self.tx.add(&[(addr, frame.len() as u32, 0)]);
        self.tx_sent += 1;
        self.tx.kick();
        self.tx.wait_used(self.tx_sent);
        assert_eq!(self.tx.used(self.tx_sent - 1).1, 0, "TX used length");
    }

    /// The frames received since the last call, headers checked.
    fn received(&mut self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        while self.rx.seen_used < self.rx.used_idx() {
            let (head, len) = self.rx.used(self.rx.seen_used);
            self.rx.seen_used += 1;
            assert!(head < self.rx_posted, "used head {head} never posted");
            assert!(
                (VNET_HDR_LEN as u32 + 14..=RX_BUF_LEN).contains(&len),
                "used length {len}"
            );
            let mut f = vec![0u8; len as usize];
            let addr = RX_BUFS + u64::from(head) * BUF_STRIDE;
            self.mem.read_slice(&mut f, GuestAddress(addr)).unwrap();
            // num_buffers: one buffer per frame.
            assert_eq!(u16::from_le_bytes([f[10], f[11]]), 1, "num_buffers");
            frames.push(f);
        }
        frames
    }

    /// Sends ARP requests for BRIDGE_IP until the reply comes back, posting
    /// an RX buffer whenever the driver has none. The bridge port forwards
    /// only once the kernel saw the tap's carrier (up to a second after it
    /// came up), so a request is repeated every 100 ms.
    fn arp_until_reply(&mut self) -> (MacAddr, Ipv4Addr) {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no ARP reply from the bridge");
            self.send(&arp_request(BRIDGE_IP));
            let wait = Instant::now() + Duration::from_millis(100);
            while Instant::now() < wait {
                for f in self.received() {
                    if let Some(reply) = arp_reply(&f) {
                        return reply;
                    }
                }
                if self.rx.used_idx() == self.rx_posted {
                    self.post_rx();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// CPU time (ticks) used so far by the vhost-user event loop threads of
/// this process.
fn worker_cpu_ticks() -> u64 {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let Some((comm, rest)) = stat.split_once(") ") else {
            continue;
        };
        if !comm.ends_with("(vring_worker") {
            continue;
        }
        // Fields from the state on: utime and stime are the 12th and 13th.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    ticks
}

/// Sends VHOST_USER_SET_VRING_ENABLE (1) for queue `index` on the front
/// end's socket as QEMU's virtio-net does, before SET_FEATURES; with
/// `reply_ack`, asks for and checks the acknowledgement.
fn early_vring_enable(frontend: &Frontend, index: u32, reply_ack: bool) {
    let flags: u32 = 0x1 | if reply_ack { 0x8 } else { 0 };
    let mut msg = Vec::new();
    for field in [18u32, flags, 8, index, 1] {
        msg.extend_from_slice(&field.to_le_bytes());
    }
    // SAFETY: the front end's socket, borrowed for these calls only (never
    // closed here: ManuallyDrop).
    let sock = ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(frontend.as_raw_fd()) });
    (&*sock).write_all(&msg).unwrap();
    if reply_ack {
        let mut reply = [0u8; 20];
        (&*sock).read_exact(&mut reply).unwrap();
        assert_eq!(reply[..4], 18u32.to_le_bytes(), "reply to SET_VRING_ENABLE");
        assert_ne!(reply[4] & 0x4, 0, "a reply");
        assert_eq!(reply[12..], 0u64.to_le_bytes(), "success");
    }
}

/// An ARP exchange through the back end with the driver features
/// `features` (and, if `reply_ack`, every message acknowledged, as QEMU
/// asks), then a reply the driver has no buffer for.
fn arp_exchange(features: u64, reply_ack: bool) {
    let dir = TempDir::new_with_prefix("/tmp/vmkit-vu-net").unwrap();
    bridge_up("vmkbr0");
    let tap = Tap::open("vmkvu0").unwrap();
    bridge::add_interface("vmkbr0", tap.name()).unwrap();
    tap.set_up(true).unwrap();
    let bridge_mac = iface::mac_address("vmkbr0").unwrap();
    let backend = VhostUserNet::new(tap, GUEST_MAC).unwrap();
    assert_eq!(backend.mac(), GUEST_MAC);
    let config = backend.config_space();
    let backend_config = config.to_vec();
    assert_eq!(config[..6], GUEST_MAC.octets());
    assert_eq!(
        u16::from_le_bytes([config[6], config[7]]),
        VIRTIO_NET_S_LINK_UP as u16
    );
    let socket = dir.as_path().join("net.sock");
    let path = socket.clone();
    let thread = std::thread::spawn(move || backend.serve(&path));

    let mem = shared_memory(MEM_SIZE);
    let mut frontend = connect(&socket, 2);
    // As QEMU's virtio-net does: the rings are enabled when the driver
    // negotiates, before the front end sends SET_FEATURES.
    frontend.set_owner().unwrap();
    let offered = frontend.get_features().unwrap();
    assert_eq!(offered, device_features() | PROTOCOL_FEATURES);
    let protocol = frontend.get_protocol_features().unwrap();
    assert!(protocol.contains(VhostUserProtocolFeatures::CONFIG));
    let mut wanted = VhostUserProtocolFeatures::CONFIG;
    if reply_ack {
        wanted |= VhostUserProtocolFeatures::REPLY_ACK;
        frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    }
    frontend.set_protocol_features(wanted).unwrap();
    // (The vhost crate's front end will not send it this early.)
    early_vring_enable(&frontend, 0, reply_ack);
    early_vring_enable(&frontend, 1, reply_ack);
    negotiate(&mut frontend, &mem, features | PROTOCOL_FEATURES, wanted);
    let (_, config) = frontend
        .get_config(0, 8, VhostUserConfigFlags::empty(), &[0; 8])
        .unwrap();
    assert_eq!(config, backend_config);

    // Not enabled again: QEMU counts on the early SET_VRING_ENABLE.
    let rx = Ring::new(&mut frontend, &mem, 0, 0, 256, false);
    let tx = Ring::new(&mut frontend, &mem, 1, 0x1_0000, 256, false);
    let mut driver = Driver {
        mem: &mem,
        rx,
        tx,
        rx_posted: 0,
        tx_sent: 0,
    };
    // One RX buffer at a time.
    driver.post_rx();
    let (sha, spa) = driver.arp_until_reply();
    assert_eq!((sha, spa), (bridge_mac, BRIDGE_IP));

    // The reply took the last RX buffer. Another request: its reply waits
    // in the tap, and the back end does not spin on the readable tap.
    assert_eq!(driver.rx.used_idx(), driver.rx_posted);
    driver.tx.calls();
    driver.tx.set_used_event(driver.tx_sent);
    driver.send(&arp_request(BRIDGE_IP));
    assert!(driver.tx.wait_call() >= 1, "TX completion not signalled");
    let before = worker_cpu_ticks();
    std::thread::sleep(Duration::from_millis(500));
    let spent = worker_cpu_ticks() - before;
    assert!(spent < 15, "the event loop spun: {spent} ticks in 500 ms");
    assert_eq!(driver.rx.used_idx(), driver.rx_posted);

    // A buffer, and what waits arrives, with a call; the reply among it
    // (the bridge may have sent something else first).
    driver.rx.calls();
    driver.rx.set_used_event(driver.rx_posted);
    driver.post_rx();
    driver.rx.wait_used(driver.rx_posted);
    assert!(driver.rx.wait_call() >= 1, "RX completion not signalled");
    let deadline = Instant::now() + WAIT;
    'reply: loop {
        for f in driver.received() {
            if arp_reply(&f) == Some((bridge_mac, BRIDGE_IP)) {
                break 'reply;
            }
        }
        assert!(Instant::now() < deadline, "the waiting reply never arrived");
        driver.post_rx();
        driver.rx.wait_used(driver.rx_posted);
    }

    drop(frontend);
    join_within(thread).unwrap();
    // The tap went with the back end.
    assert!(iface::index("vmkvu0").is_err());
}

#[test]
fn arp_through_the_back_end_with_mrg_rxbuf_and_event_idx() {
    if !tun_present() {
        return;
    }
    in_new_netns(|| {
        arp_exchange(
            bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VIRTIO_NET_F_MRG_RXBUF),
            true,
        )
    });
}

#[test]
fn arp_through_the_back_end_without_mrg_rxbuf_or_event_idx() {
    if !tun_present() {
        return;
    }
    in_new_netns(|| arp_exchange(bit(VIRTIO_F_VERSION_1), false));
}

#[test]
fn command_serves_one_front_end_and_exits() {
    if !tun_present() {
        return;
    }
    in_new_netns(|| {
        let dir = TempDir::new_with_prefix("/tmp/vmkit-vu-net").unwrap();
        bridge_up("vmkbr1");
        let socket = dir.as_path().join("cmd.sock");
        // Spawned from this thread, the command is in its namespace.
        let mut child = Command::new(BIN)
            .arg("--socket")
            .arg(&socket)
            .arg("--net")
            .arg(format!("tap=vmkvu1,mac={GUEST_MAC},bridge=vmkbr1"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mem = shared_memory(MEM_SIZE);
        let mut frontend = connect(&socket, 2);
        frontend.set_owner().unwrap();
        let (offered, _) = negotiate(
            &mut frontend,
            &mem,
            bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF) | PROTOCOL_FEATURES,
            VhostUserProtocolFeatures::CONFIG,
        );
        assert_eq!(offered, device_features() | PROTOCOL_FEATURES);
        let (_, mac) = frontend
            .get_config(0, 6, VhostUserConfigFlags::empty(), &[0; 6])
            .unwrap();
        assert_eq!(mac, GUEST_MAC.octets());
        assert!(iface::is_up("vmkvu1").unwrap());
        assert!(!socket.exists(), "the socket outlived the connection");

        drop(frontend);
        let status = wait_exit(&mut child);
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(status.success(), "exit {status}; stderr:\n{stderr}");
        assert!(stderr.contains("front end disconnected"), "{stderr}");
        assert!(
            iface::index("vmkvu1").is_err(),
            "the tap outlived the command"
        );
    });
}

#[test]
fn a_flood_of_bad_tx_heads_across_resets_logs_a_few_lines() {
    // Rounds of two TX chains, one kick: a head index past the queue
    // (dropped, and it cannot be returned), then a frame that is sent. The
    // driver renegotiates and the front end restarts the ring every BATCH
    // rounds (a new `Tx` each time): the counts go on.
    const BATCH: u16 = 30;
    const BATCHES: u16 = 34;
    const SIZE: u16 = 128;
    if !tun_present() {
        return;
    }
    in_new_netns(|| {
        let dir = TempDir::new_with_prefix("/tmp/vmkit-vu-net").unwrap();
        bridge_up("vmkbr2");
        let socket = dir.as_path().join("flood.sock");
        let (mut child, reader) = spawn_reading_stderr(
            Command::new(BIN)
                .arg("--socket")
                .arg(&socket)
                .arg("--net")
                .arg(format!("tap=vmkvu2,mac={GUEST_MAC},bridge=vmkbr2"))
                .env("RUST_LOG", "info"),
        );

        let mem = shared_memory(MEM_SIZE);
        let mut frontend = connect(&socket, 2);
        frontend.set_owner().unwrap();
        let features = bit(VIRTIO_F_VERSION_1);
        negotiate(
            &mut frontend,
            &mem,
            features,
            VhostUserProtocolFeatures::empty(),
        );
        // A frame to a MAC address no one has, of a local experimental
        // type: nothing answers it.
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
        frame.extend_from_slice(&GUEST_MAC.octets());
        frame.extend_from_slice(&0x88b5u16.to_be_bytes());
        frame.resize(VNET_HDR_LEN + 60, 0);
        mem.write_slice(&frame, GuestAddress(TX_BUFS)).unwrap();
        for batch in 0..BATCHES {
            if batch > 0 {
                assert_eq!(frontend.get_vring_base(1).unwrap(), 2 * u32::from(BATCH));
                frontend.set_features(features).unwrap();
            }
            let mut tx = Ring::new(&mut frontend, &mem, 1, 0x1_0000, SIZE, false);
            // The mock queue's used ring starts half-way through the
            // available ring: a batch stays in the first half.
            tx.vq.avail().idx().store(0);
            tx.vq.used().idx().store(0);
            for round in 0..BATCH {
                tx.make_available(SIZE + round % 2 * 0x7f00);
                if round == 0 {
                    assert_eq!(tx.add(&[(TX_BUFS, frame.len() as u32, 0)]), 0);
                } else {
                    tx.make_available(0);
                }
                tx.kick();
                tx.wait_used(round + 1);
            }
        }

        drop(frontend);
        let status = wait_exit(&mut child);
        let stderr = join_within(reader);
        assert!(status.success(), "exit {status}; stderr:\n{stderr}");
        let rounds = u64::from(BATCH) * u64::from(BATCHES);
        assert!(stderr.contains(&format!("tx {rounds} frames")), "{stderr}");
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(": WARN: ") || l.contains(": ERROR: "))
            .collect();
        // One drop and one ring error a round, each kind limited.
        assert_eq!(warnings.len(), 2 * limited_lines(rounds), "{stderr}");
        let dropped = warnings
            .iter()
            .filter(|l| l.ends_with("dropped so far)"))
            .count();
        assert_eq!(dropped, limited_lines(rounds), "{stderr}");
        assert!(
            warnings
                .iter()
                .any(|l| l.ends_with("(512 ring errors so far)")),
            "{stderr}"
        );
        let negotiations = stderr.matches("driver features").count();
        assert_eq!(negotiations, limited_lines(u64::from(BATCHES)), "{stderr}");
    });
}

#[test]
fn bad_arguments_get_one_line_and_a_failure() {
    for (args, expect) in [
        (vec!["--net", "tap=t0"], "--socket"),
        (vec!["--socket", "/tmp/x.sock"], "--net"),
        (
            vec!["--socket", "/tmp/x.sock", "--net", "colour=blue"],
            "unknown key",
        ),
        (
            vec![
                "--socket",
                "/tmp/x.sock",
                "--net",
                "tap=a-name-that-is-far-too-long",
            ],
            "too long",
        ),
        (
            vec![
                "--socket",
                "/tmp/x.sock",
                "--net",
                "tap=t0,mac=01:00:5e:00:00:01",
            ],
            "multicast",
        ),
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
}
