//! Real tap devices, as root, each test in a network namespace of its own:
//! a thread `unshare`s CLONE_NEWNET (network namespaces are per thread),
//! does all its work there, and the namespace, with the bridge and taps in
//! it, goes away when the thread ends. The addresses are used only there.
//!
//! Skipped (one line) only when /dev/net/tun is missing.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_WRITE};
use virtio_queue::Queue;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmkit_net::test_utils::{in_new_netns, tun_present};
use vmkit_net::{Error, MacAddr, Net, Tap, VNET_HDR_LEN, bridge, iface};
use vmkit_virtio::{ActivatedQueue, GuestMemoryMmap, Interrupt, InterruptType, VirtioDevice};
use vmm_sys_util::eventfd::EventFd;

const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const GUEST_MAC: MacAddr = MacAddr::new([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
/// Generous: only reached when something is broken.
const WAIT: Duration = Duration::from_secs(10);

/// br0 with 10.77.0.1/24 and a tap attached to it, all up.
fn bridge_with_tap(br: &str, tap_name: &str) -> Tap {
    bridge::create(br).unwrap();
    iface::set_ipv4_address(br, BRIDGE_IP, 24).unwrap();
    iface::set_up(br, true).unwrap();
    let tap = Tap::open(tap_name).unwrap();
    assert_eq!(tap.name(), tap_name);
    bridge::add_interface(br, tap.name()).unwrap();
    tap.set_up(true).unwrap();
    assert_eq!(iface::ipv4_address(br).unwrap(), (BRIDGE_IP, 24));
    assert!(iface::is_up(br).unwrap() && iface::is_up(tap_name).unwrap());
    tap
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
    assert_eq!(&eth[14..20], &[0, 1, 8, 0, 6, 4]);
    assert_eq!(mac(&eth[32..38]), GUEST_MAC, "target hardware address");
    assert_eq!(ip(&eth[38..42]), GUEST_IP, "target protocol address");
    assert_eq!(mac(&eth[6..12]), mac(&eth[22..28]));
    Some((mac(&eth[22..28]), ip(&eth[28..32])))
}

/// Waits up to `timeout` for `fd` to be readable; returns whether it is.
fn readable_within(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    assert!(n >= 0 || io::Error::last_os_error().kind() == io::ErrorKind::Interrupted);
    n > 0
}

/// Sends ARP requests for BRIDGE_IP into `tap` until the reply comes back;
/// returns its sender (MAC, IP). The bridge port goes to forwarding only
/// once the kernel's link watcher saw the tap's carrier (up to a second
/// after it came up); until then the bridge drops what the tap sends, so a
/// request is repeated every 100 ms, as a real ARP client does.
fn arp_until_reply(tap: &Tap) -> (MacAddr, Ipv4Addr) {
    let request = arp_request(BRIDGE_IP);
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0u8; 65536 + 64];
    loop {
        assert!(Instant::now() < deadline, "no ARP reply from the bridge");
        assert_eq!(tap.write(&request).unwrap(), request.len());
        // The bridge may send other frames too (IPv6 multicast listener
        // reports and the like): read until the ARP reply.
        while readable_within(tap.as_raw_fd(), Duration::from_millis(100)) {
            let n = match tap.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("reading the tap: {e}"),
            };
            assert!(n >= VNET_HDR_LEN + 14 && n < buf.len());
            // Offloads are off: no GSO.
            assert_eq!(buf[1], VIRTIO_NET_HDR_GSO_NONE as u8);
            if let Some(reply) = arp_reply(&buf[..n]) {
                return reply;
            }
        }
    }
}

#[test]
fn arp_through_a_bridge_and_a_tap() {
    if !tun_present() {
        return;
    }
    in_new_netns(|| {
        let tap = bridge_with_tap("vmkbr0", "vmktap0");
        assert_eq!(tap.ifindex().unwrap(), iface::index("vmktap0").unwrap());
        let bridge_mac = iface::mac_address("vmkbr0").unwrap();

        let (sha, spa) = arp_until_reply(&tap);
        assert_eq!(spa, BRIDGE_IP);
        assert_eq!(sha, bridge_mac);

        // A read into a buffer too small for the frame stores what fits and
        // says so; the rest of the frame is gone.
        tap.write(&arp_request(BRIDGE_IP)).unwrap();
        assert!(readable_within(tap.as_raw_fd(), WAIT));
        let mut small = [0u8; 30];
        assert_eq!(tap.read(&mut small).unwrap(), small.len());

        // And it all comes apart again.
        iface::set_up("vmkbr0", false).unwrap();
        bridge::remove_interface("vmkbr0", "vmktap0").unwrap();
        bridge::delete("vmkbr0").unwrap();
        assert!(iface::index("vmkbr0").is_err());
    });
}

#[test]
fn tap_options_and_errors() {
    if !tun_present() {
        return;
    }
    let e = Tap::open("a-tap-name-too-long").unwrap_err();
    assert_eq!(
        e.to_string(),
        "tap name \"a-tap-name-too-long\" too long: 19 bytes, at most 15"
    );
    in_new_netns(|| {
        let tap = Tap::open("vmktap1").unwrap();
        let mac = MacAddr::new([0x02, 0, 0, 0, 0x77, 0x01]);
        tap.set_mac(mac).unwrap();
        assert_eq!(tap.mac().unwrap(), mac);
        assert_eq!(iface::mac_address("vmktap1").unwrap(), mac);
        iface::set_mac_address("vmktap1", GUEST_MAC).unwrap();
        assert_eq!(tap.mac().unwrap(), GUEST_MAC);
        // Offloads the kernel knows, and one it does not.
        tap.set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6)
            .unwrap();
        assert!(tap.set_offload(0x8000_0000).is_err());
        tap.set_offload(0).unwrap();
        // Nothing queued: a read would block.
        let mut buf = [0u8; 128];
        assert_eq!(
            tap.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );

        // A single-queue tap takes one descriptor.
        let e = Tap::open("vmktap1").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("cannot create or attach tap vmktap1: ")
                && matches!(e, Error::Ioctl { .. }),
            "{msg}"
        );
        // Persistent: it outlives its descriptor, and can be attached again.
        tap.set_persistent(true).unwrap();
        drop(tap);
        let again = Tap::open("vmktap1").unwrap();
        again.set_persistent(false).unwrap();
        drop(again);
        assert!(
            iface::index("vmktap1").is_err(),
            "the tap outlived its last fd"
        );

        // A multi-queue tap takes several; the kernel names it.
        let q0 = Tap::open_multi_queue("vmkmq%d").unwrap();
        assert_eq!(q0.name(), "vmkmq0");
        let q1 = Tap::open_multi_queue(q0.name()).unwrap();
        assert_eq!(q1.ifindex().unwrap(), q0.ifindex().unwrap());
        let auto = Tap::open("").unwrap();
        assert!(auto.name().starts_with("tap"), "{}", auto.name());
    });
}

#[derive(Default)]
struct CountingInterrupt(AtomicU64);

impl Interrupt for CountingInterrupt {
    fn trigger(&self, _: InterruptType) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn bit(b: u32) -> u64 {
    1 << b
}

#[test]
fn device_features_and_configuration() {
    if !tun_present() {
        return;
    }
    in_new_netns(|| {
        let tap = Tap::open("vmktap2").unwrap();
        assert!(matches!(
            Net::new(tap, MacAddr::BROADCAST),
            Err(Error::MulticastMac(_))
        ));
        let tap = Tap::open("vmktap2").unwrap();
        let mut net = Net::new(tap, GUEST_MAC).unwrap();
        assert_eq!(net.device_type(), 1);
        assert_eq!(net.queue_max_sizes(), &[256, 256]);
        let offered = net.device_features();
        for b in [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_STATUS,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_HOST_UFO,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_UFO,
        ] {
            assert_ne!(offered & bit(b), 0, "feature {b} not offered");
        }
        assert_eq!(offered & bit(VIRTIO_NET_F_CTRL_VQ), 0);
        assert_eq!(offered & bit(VIRTIO_NET_F_MQ), 0);

        // Configuration: mac, then status = LINK_UP; read-only.
        let mut config = [0xffu8; 10];
        net.read_config(0, &mut config);
        assert_eq!(&config[..6], &GUEST_MAC.octets());
        assert_eq!(u16::from_le_bytes([config[6], config[7]]), 1);
        assert_eq!(&config[8..], &[0, 0]);
        let mut tail = [0xffu8; 4];
        net.read_config(u64::MAX - 1, &mut tail);
        assert_eq!(tail, [0; 4]);
        net.write_config(0, &[1, 2, 3]);
        net.read_config(0, &mut config[..6]);
        assert_eq!(&config[..6], &GUEST_MAC.octets());

        // Feature negotiation: subsets with their dependencies.
        let v1 = bit(VIRTIO_F_VERSION_1);
        assert!(net.ack_features(bit(VIRTIO_NET_F_MAC)).is_err(), "legacy");
        assert!(net.ack_features(v1 | bit(VIRTIO_NET_F_CTRL_VQ)).is_err());
        assert!(net.ack_features(v1 | bit(VIRTIO_NET_F_GUEST_TSO4)).is_err());
        assert!(net.ack_features(v1 | bit(VIRTIO_NET_F_HOST_UFO)).is_err());
        let all = offered;
        net.ack_features(all).unwrap();
        assert_eq!(net.acked_features(), all);
        net.ack_features(v1).unwrap();
        assert_eq!(net.reset().len(), 0);
        assert_eq!(net.acked_features(), 0);
    });
}

/// The whole device over a real tap: the "guest" sends an ARP request on
/// the TX queue and gets the bridge's reply in its RX buffers.
#[test]
fn device_exchanges_frames_with_the_bridge() {
    if !tun_present() {
        return;
    }
    in_new_netns(|| {
        let tap = bridge_with_tap("vmkbr3", "vmktap3");
        let bridge_mac = iface::mac_address("vmkbr3").unwrap();
        // The bridge forwards from now on.
        arp_until_reply(&tap);
        let mut net = Net::new(tap, GUEST_MAC).unwrap();
        let features = bit(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_RING_F_EVENT_IDX)
            | bit(VIRTIO_NET_F_MRG_RXBUF)
            | bit(VIRTIO_NET_F_CSUM)
            | bit(VIRTIO_NET_F_GUEST_CSUM)
            | bit(VIRTIO_NET_F_GUEST_TSO4)
            | bit(VIRTIO_NET_F_HOST_TSO4);
        net.ack_features(features).unwrap();

        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0), 256);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 256);
        // 64 mergeable buffers of 1526 bytes.
        post_rx_buffers(&rxq, 64, 1526);
        let (rx_notify, tx_notify, irq) = activate(&mut net, &mem, &rxq, &txq);
        rx_notify.write(1).unwrap();
        send(&mem, &txq, &tx_notify, &arp_request(BRIDGE_IP));

        // Frames land in the RX buffers; find the ARP reply among them.
        let deadline = Instant::now() + WAIT;
        let mut seen = 0u16;
        let reply = 'outer: loop {
            assert!(Instant::now() < deadline, "no ARP reply reached the guest");
            let used = rxq.used().idx().load();
            while seen != used {
                let elem = rxq.used().ring().ref_at(usize::from(seen)).unwrap().load();
                seen += 1;
                let len = elem.len() as usize;
                assert!((VNET_HDR_LEN + 14..=1526).contains(&len), "{len}");
                let mut f = vec![0u8; len];
                mem.read_slice(&mut f, GuestAddress(rx_buffer(elem.id())))
                    .unwrap();
                // One buffer per frame, as num_buffers says.
                assert_eq!(u16::from_le_bytes([f[10], f[11]]), 1);
                if let Some(reply) = arp_reply(&f) {
                    break 'outer reply;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(reply, (bridge_mac, BRIDGE_IP));
        assert_eq!(txq.used().idx().load(), 1);

        let stats = net.stats();
        assert_eq!(net.reset().len(), 2);
        assert!(!net.is_active());
        assert_eq!(stats.tx_packets(), 1);
        assert_eq!(stats.tx_bytes(), 60);
        assert_eq!(stats.tx_dropped(), 0);
        assert!(stats.rx_packets() >= 1);
        assert_eq!(stats.rx_dropped(), 0);
        assert_eq!(stats.rx_copied(), 0);
        assert!(stats.interrupts() >= 1);
        assert_eq!(stats.interrupts(), irq.0.load(Ordering::SeqCst));
    });
}

const RX_BUFS: u64 = 0x10_0000;
const TX_BUF: u64 = 0x20_0000;

fn rx_buffer(id: u32) -> u64 {
    RX_BUFS + u64::from(id) * 0x1000
}

/// Posts `count` one-descriptor RX buffers of `len` bytes.
fn post_rx_buffers(rxq: &MockSplitQueue<'_, GuestMemoryMmap>, count: u16, len: u32) {
    let descs: Vec<RawDescriptor> = (0..u32::from(count))
        .map(|i| Descriptor::new(rx_buffer(i), len, VRING_DESC_F_WRITE as u16, 0).into())
        .collect();
    rxq.add_desc_chains(&descs, 0).unwrap();
}

/// Puts `frame` on the TX queue (one descriptor) and notifies it.
fn send(
    mem: &GuestMemoryMmap,
    txq: &MockSplitQueue<'_, GuestMemoryMmap>,
    notify: &EventFd,
    frame: &[u8],
) {
    mem.write_slice(frame, GuestAddress(TX_BUF)).unwrap();
    let desc: RawDescriptor = Descriptor::new(TX_BUF, frame.len() as u32, 0, 0).into();
    txq.add_desc_chains(&[desc], 0).unwrap();
    notify.write(1).unwrap();
}

/// Activates `net` with the two mock queues; returns their notification
/// eventfds and the interrupt.
fn activate(
    net: &mut Net,
    mem: &GuestMemoryMmap,
    rxq: &MockSplitQueue<'_, GuestMemoryMmap>,
    txq: &MockSplitQueue<'_, GuestMemoryMmap>,
) -> (EventFd, EventFd, Arc<CountingInterrupt>) {
    let rx_notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let tx_notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let irq = Arc::new(CountingInterrupt::default());
    net.activate(
        mem.clone(),
        irq.clone(),
        vec![
            ActivatedQueue {
                index: 0,
                queue: rxq.create_queue::<Queue>().unwrap(),
                notify: rx_notify.try_clone().unwrap(),
            },
            ActivatedQueue {
                index: 1,
                queue: txq.create_queue::<Queue>().unwrap(),
                notify: tx_notify.try_clone().unwrap(),
            },
        ],
    )
    .unwrap();
    assert!(net.is_active());
    (rx_notify, tx_notify, irq)
}

/// Without MRG_RXBUF a frame must fit one buffer: the bridge's frames do
/// not fit 40-byte buffers, and are dropped rather than delivered cut.
#[test]
fn device_drops_frames_larger_than_the_guest_buffers() {
    if !tun_present() {
        return;
    }
    in_new_netns(|| {
        let tap = bridge_with_tap("vmkbr4", "vmktap4");
        // The bridge forwards from now on.
        arp_until_reply(&tap);
        let mut net = Net::new(tap, GUEST_MAC).unwrap();
        net.ack_features(bit(VIRTIO_F_VERSION_1)).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0), 256);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 256);
        post_rx_buffers(&rxq, 8, 40);
        let (rx_notify, tx_notify, _irq) = activate(&mut net, &mem, &rxq, &txq);
        rx_notify.write(1).unwrap();
        send(&mem, &txq, &tx_notify, &arp_request(BRIDGE_IP));

        let stats = net.stats();
        let deadline = Instant::now() + WAIT;
        while stats.rx_dropped() == 0 {
            assert!(Instant::now() < deadline, "the ARP reply was not dropped");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(net.reset().len(), 2);
        assert_eq!(stats.tx_packets(), 1);
        assert_eq!(stats.rx_packets(), 0);
        assert_eq!(rxq.used().idx().load(), 0, "a frame was delivered cut");
    });
}
