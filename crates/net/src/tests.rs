//! Tests of the frame logic and the queue handler, driving the device as a
//! guest driver would with virtio-queue's mock split queues, over an
//! in-memory backend (a queue of frames the "host" sends, a list of frames
//! the device wrote).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, VolatileSlice};
use vmkit_virtio::test_utils::{capture_log, limited_lines, warnings};
use vmkit_virtio::{GuestMemoryMmap, Interrupt, InterruptType, QueueHandler, QueueWorker};
use vmm_sys_util::eventfd::EventFd;

use crate::handler::{BACKEND_TOKEN, RX_QUEUE, TX_QUEUE};
use crate::log_limits::NetLogLimits;
use crate::{MAX_FRAME_LEN, NetBackend, NetHandler, NetStats, VNET_HDR_LEN};

const MIB: u64 = 1 << 20;
/// Guest memory: two adjacent 4 MiB regions, so buffers can span regions.
const REGION: u64 = 4 * MIB;
const MEM_END: u64 = 2 * REGION;
const QSIZE: u16 = 256;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1_0000;
const INDIRECT: u64 = 0x2_0000;
const BUF: u64 = 0x10_0000;
/// What a Linux driver posts for a 1500-byte MTU: header + 1514 bytes.
const MTU_BUF: u32 = 1526;

const R: bool = false;
const W: bool = true;

fn bit(b: u32) -> u64 {
    1u64 << b
}

/// The features of a plain VERSION_1 driver, without offloads.
fn base() -> u64 {
    bit(VIRTIO_F_VERSION_1)
}

fn mrg() -> u64 {
    base() | bit(VIRTIO_NET_F_MRG_RXBUF)
}

/// An in-memory backend: frames to be read (header included) and frames
/// written. Its descriptor (an eventfd) is readable while frames wait, as
/// a tap's is.
struct MemBackend {
    incoming: Mutex<VecDeque<Vec<u8>>>,
    written: Mutex<Vec<Vec<u8>>>,
    ready: EventFd,
    reads: AtomicU64,
    /// The lengths of the vectors the last read was offered.
    offered: Mutex<Vec<usize>>,
    fail_writes: AtomicBool,
}

impl MemBackend {
    fn new() -> Arc<Self> {
        Arc::new(MemBackend {
            incoming: Mutex::new(VecDeque::new()),
            written: Mutex::new(Vec::new()),
            ready: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            reads: AtomicU64::new(0),
            offered: Mutex::new(Vec::new()),
            fail_writes: AtomicBool::new(false),
        })
    }

    fn push(&self, frame: Vec<u8>) {
        self.incoming.lock().unwrap().push_back(frame);
        self.ready.write(1).unwrap();
    }

    fn pending(&self) -> usize {
        self.incoming.lock().unwrap().len()
    }

    fn written(&self) -> Vec<Vec<u8>> {
        self.written.lock().unwrap().clone()
    }

    fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    fn offered(&self) -> Vec<usize> {
        self.offered.lock().unwrap().clone()
    }
}

impl NetBackend for MemBackend {
    fn read_frame(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        *self.offered.lock().unwrap() = bufs.iter().map(|b| b.len()).collect();
        let mut incoming = self.incoming.lock().unwrap();
        let Some(frame) = incoming.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        if incoming.is_empty() {
            let _ = self.ready.read();
        }
        // Like the tap: copy what fits, lose the rest, return the bytes
        // stored.
        let mut rest = &frame[..];
        for buf in bufs {
            let n = buf.len().min(rest.len());
            buf.subslice(0, n).unwrap().copy_from(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(frame.len() - rest.len())
    }

    fn write_frame(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let mut frame = Vec::new();
        for buf in bufs {
            let mut part = vec![0u8; buf.len()];
            buf.copy_to(&mut part[..]);
            frame.extend_from_slice(&part);
        }
        let len = frame.len();
        self.written.lock().unwrap().push(frame);
        Ok(len)
    }
}

impl AsRawFd for MemBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }
}

/// Counts used-ring interrupts and DEVICE_NEEDS_RESET signals.
#[derive(Default)]
struct CountingInterrupt(AtomicU64, AtomicU64);

impl Interrupt for CountingInterrupt {
    fn trigger(&self, kind: InterruptType) -> io::Result<()> {
        assert_eq!(kind, InterruptType::UsedRing);
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn signal_needs_reset(&self) -> io::Result<()> {
        self.1.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl CountingInterrupt {
    fn count(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    fn needs_reset(&self) -> u64 {
        self.1.load(Ordering::SeqCst)
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ])
    .unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed ^ (i >> 8) as u8)
        })
        .collect()
}

/// A virtio-net header with `flags` and `gso_type`, then `len` bytes of
/// pattern.
fn frame(flags: u8, gso_type: u8, len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f[0] = flags;
    f[1] = gso_type;
    // What the tap leaves in num_buffers: whatever was in the buffer.
    f[10] = 0xaa;
    f[11] = 0xbb;
    f.extend(pattern(len, seed));
    f
}

fn read_mem(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

/// A buffer of a chain: guest address, length, device-writable.
type Buf = (u64, u32, bool);

/// A mock driver: RX and TX split queues in guest memory and the device's
/// handler over an in-memory backend.
struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    rxq: MockSplitQueue<'a, GuestMemoryMmap>,
    txq: MockSplitQueue<'a, GuestMemoryMmap>,
    handler: NetHandler<Arc<MemBackend>>,
    backend: Arc<MemBackend>,
    irq: Arc<CountingInterrupt>,
    stats: Arc<NetStats>,
    rx_next: u16,
    tx_next: u16,
    rx_size: u16,
}

impl<'a> Driver<'a> {
    fn new(mem: &'a GuestMemoryMmap, features: u64) -> Self {
        Self::with_rx_size(mem, features, QSIZE)
    }

    fn with_rx_size(mem: &'a GuestMemoryMmap, features: u64, rx_size: u16) -> Self {
        let rxq = MockSplitQueue::create(mem, GuestAddress(RX_RING), rx_size);
        let txq = MockSplitQueue::create(mem, GuestAddress(TX_RING), QSIZE);
        let event_idx = features & bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut rx_queue: Queue = rxq.create_queue().unwrap();
        let mut tx_queue: Queue = txq.create_queue().unwrap();
        rx_queue.set_event_idx(event_idx);
        tx_queue.set_event_idx(event_idx);
        let backend = MemBackend::new();
        let irq = Arc::new(CountingInterrupt::default());
        let stats = Arc::new(NetStats::default());
        let handler = NetHandler::new(
            mem.clone(),
            rx_queue,
            tx_queue,
            backend.clone(),
            features,
            irq.clone(),
            stats.clone(),
        )
        .unwrap();
        Driver {
            mem,
            rxq,
            txq,
            handler,
            backend,
            irq,
            stats,
            rx_next: 0,
            tx_next: 0,
            rx_size,
        }
    }

    fn descs(bufs: &[Buf], first: u16) -> Vec<RawDescriptor> {
        bufs.iter()
            .enumerate()
            .map(|(i, &(addr, len, writable))| {
                let mut flags = if writable {
                    VRING_DESC_F_WRITE as u16
                } else {
                    0
                };
                if i + 1 < bufs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                Descriptor::new(addr, len, flags, first + i as u16 + 1).into()
            })
            .collect()
    }

    /// Makes a TX chain available; returns its head.
    fn add_tx(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.tx_next;
        self.txq
            .add_desc_chains(&Self::descs(bufs, head), head)
            .unwrap();
        self.tx_next += bufs.len() as u16;
        head
    }

    /// Makes an RX chain available; returns its head.
    fn add_rx(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.rx_next;
        assert!(usize::from(head) + bufs.len() <= usize::from(self.rx_size));
        self.rxq
            .add_desc_chains(&Self::descs(bufs, head), head)
            .unwrap();
        self.rx_next += bufs.len() as u16;
        head
    }

    /// Posts `count` one-descriptor RX buffers of `len` bytes, 4 KiB apart
    /// from `BUF`; returns their heads.
    fn post_rx(&mut self, count: usize, len: u32) -> Vec<u16> {
        (0..count)
            .map(|_| {
                let addr = BUF + u64::from(self.rx_next) * 0x1_0000;
                self.add_rx(&[(addr, len, W)])
            })
            .collect()
    }

    /// Address of the one-descriptor RX buffer whose head is `head`.
    fn rx_buf(head: u16) -> u64 {
        BUF + u64::from(head) * 0x1_0000
    }

    fn tx_used_idx(&self) -> u16 {
        self.txq.used().idx().load()
    }

    fn rx_used_idx(&self) -> u16 {
        self.rxq.used().idx().load()
    }

    fn rx_used(&self, i: u16) -> (u32, u32) {
        let e = self
            .rxq
            .used()
            .ring()
            .ref_at(usize::from(i))
            .unwrap()
            .load();
        (e.id(), e.len())
    }

    fn tx_used(&self, i: u16) -> (u32, u32) {
        let e = self
            .txq
            .used()
            .ring()
            .ref_at(usize::from(i))
            .unwrap()
            .load();
        (e.id(), e.len())
    }

    fn avail_event(&self, vq: &MockSplitQueue<'_, GuestMemoryMmap>, size: u16) -> u16 {
        let addr = vq.used_addr().0 + 4 + 8 * u64::from(size);
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }

    fn used_flags(&self, vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> u16 {
        self.mem.read_obj(vq.used_addr()).unwrap()
    }

    fn notify_rx(&mut self) {
        self.handler.process_queue(RX_QUEUE);
    }

    fn notify_tx(&mut self) {
        self.handler.process_queue(TX_QUEUE);
    }

    fn tap_ready(&mut self) {
        self.handler.process_extra(BACKEND_TOKEN);
    }
}

/// Whether `fd` is readable right now.
fn readable(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    assert!(n >= 0);
    n == 1 && pfd.revents & libc::POLLIN != 0
}

// ---------------------------------------------------------------- TX

#[test]
fn tx_passes_header_and_frame_through() {
    let mem = memory();
    let mut drv = Driver::new(
        &mem,
        base() | bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4),
    );

    // Header alone, then the frame in two pieces, one spanning the boundary
    // between the two memory regions.
    let f = frame(
        VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        3000,
        1,
    );
    let span = REGION - 1000;
    mem.write_slice(&f[..VNET_HDR_LEN], GuestAddress(BUF))
        .unwrap();
    mem.write_slice(
        &f[VNET_HDR_LEN..VNET_HDR_LEN + 500],
        GuestAddress(BUF + 0x1000),
    )
    .unwrap();
    mem.write_slice(&f[VNET_HDR_LEN + 500..], GuestAddress(span))
        .unwrap();
    let h1 = drv.add_tx(&[
        (BUF, VNET_HDR_LEN as u32, R),
        (BUF + 0x1000, 500, R),
        (span, 2500, R),
    ]);
    // Header and frame in one buffer.
    let g = frame(0, 0, 60, 2);
    mem.write_slice(&g, GuestAddress(BUF + 0x2_0000)).unwrap();
    let h2 = drv.add_tx(&[(BUF + 0x2_0000, g.len() as u32, R)]);
    drv.notify_tx();

    assert_eq!(drv.backend.written(), vec![f, g]);
    assert_eq!(drv.tx_used_idx(), 2);
    assert_eq!(drv.tx_used(0), (u32::from(h1), 0));
    assert_eq!(drv.tx_used(1), (u32::from(h2), 0));
    assert_eq!(drv.stats.tx_packets(), 2);
    assert_eq!(drv.stats.tx_bytes(), 3060);
    assert_eq!(drv.stats.tx_dropped(), 0);
    assert_eq!(drv.stats.tx_notifications(), 1);
    // No EVENT_IDX: every batch interrupts.
    assert_eq!(drv.irq.count(), 1);
    assert_eq!(drv.stats.interrupts(), 1);
}

#[test]
fn tx_malformed_chains_are_dropped_and_the_queue_keeps_going() {
    let mem = memory();
    let mut drv = Driver::new(
        &mem,
        base() | bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4),
    );
    let good = frame(0, 0, 100, 3);
    mem.write_slice(&good, GuestAddress(BUF)).unwrap();
    let plain = (BUF, good.len() as u32, R);
    let with_hdr = |flags: u32, gso: u32| {
        let addr = BUF + 0x1000 * u64::from(flags * 16 + gso + 1);
        mem.write_slice(&frame(flags as u8, gso as u8, 100, 4), GuestAddress(addr))
            .unwrap();
        (addr, 112u32, R)
    };
    let big = (VNET_HDR_LEN + MAX_FRAME_LEN) as u32;
    let cases: Vec<(&str, Vec<Buf>)> = vec![
        ("writable descriptor", vec![plain, (BUF + 0x8_0000, 100, W)]),
        ("header too short", vec![(BUF, 10, R)]),
        ("empty chain", vec![(BUF, 0, R)]),
        (
            "frame too large",
            vec![(BUF, 12, R), (BUF + 0x1000, big - 12, R), (BUF, 1, R)],
        ),
        ("outside memory", vec![(BUF, 12, R), (MEM_END - 50, 100, R)]),
        (
            "address overflow",
            vec![(BUF, 12, R), (u64::MAX - 10, 100, R)],
        ),
        (
            "UFO not negotiated",
            vec![with_hdr(1, VIRTIO_NET_HDR_GSO_UDP)],
        ),
        (
            "TSO6 not negotiated",
            vec![with_hdr(1, VIRTIO_NET_HDR_GSO_TCPV6)],
        ),
        (
            "ECN not negotiated",
            vec![with_hdr(1, VIRTIO_NET_HDR_GSO_TCPV4 | 0x80)],
        ),
        ("unknown gso type", vec![with_hdr(1, 7)]),
    ];
    let mut heads = Vec::new();
    for (_, bufs) in &cases {
        heads.push(drv.add_tx(bufs));
    }
    // A good chain after all of them is still sent.
    heads.push(drv.add_tx(&[plain]));
    drv.notify_tx();

    assert_eq!(drv.backend.written(), vec![good.clone()]);
    assert_eq!(usize::from(drv.tx_used_idx()), cases.len() + 1);
    for (i, head) in heads.iter().enumerate() {
        assert_eq!(drv.tx_used(i as u16), (u32::from(*head), 0), "{}", i);
    }
    assert_eq!(drv.stats.tx_dropped(), cases.len() as u64);
    assert_eq!(drv.stats.tx_packets(), 1);

    // Checksum offload without VIRTIO_NET_F_CSUM: a driver that did not
    // negotiate it cannot ask for it.
    let mut plain_drv = Driver::new(&mem, base());
    let csum = with_hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0);
    plain_drv.add_tx(&[csum]);
    plain_drv.add_tx(&[plain]);
    plain_drv.notify_tx();
    assert_eq!(plain_drv.backend.written(), vec![good]);
    assert_eq!(plain_drv.stats.tx_dropped(), 1);

    // A backend that refuses frames: dropped, returned, counted.
    plain_drv.backend.fail_writes.store(true, Ordering::SeqCst);
    plain_drv.add_tx(&[plain]);
    plain_drv.notify_tx();
    assert_eq!(plain_drv.tx_used_idx(), 3);
    assert_eq!(plain_drv.stats.tx_dropped(), 2);
}

#[test]
fn tx_indirect_chains() {
    let mem = memory();
    let mut drv = Driver::new(&mem, base());
    let f = frame(0, 0, 200, 5);
    mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    let table = [
        Descriptor::new(BUF, 12, VRING_DESC_F_NEXT as u16, 1),
        Descriptor::new(BUF + 12, 200, 0, 0),
    ];
    for (i, d) in table.iter().enumerate() {
        mem.write_obj(
            RawDescriptor::from(*d),
            GuestAddress(INDIRECT + 16 * i as u64),
        )
        .unwrap();
    }
    let desc: RawDescriptor = Descriptor::new(INDIRECT, 32, VRING_DESC_F_INDIRECT as u16, 0).into();
    drv.txq.add_desc_chains(&[desc], 0).unwrap();
    drv.notify_tx();
    assert_eq!(drv.backend.written(), vec![f]);
}

// ---------------------------------------------------------------- RX

#[test]
fn rx_header_passes_through_with_num_buffers_set() {
    let mem = memory();
    // With GUEST_CSUM the tap's flags (DATA_VALID here) reach the driver.
    let mut drv = Driver::new(&mem, base() | bit(VIRTIO_NET_F_GUEST_CSUM));
    let heads = drv.post_rx(2, MTU_BUF);
    let f = frame(VIRTIO_NET_HDR_F_DATA_VALID as u8, 0, 1000, 6);
    drv.backend.push(f.clone());
    drv.tap_ready();
    assert_eq!(drv.rx_used_idx(), 1);
    assert_eq!(drv.rx_used(0), (u32::from(heads[0]), f.len() as u32));
    let got = read_mem(&mem, Driver::rx_buf(heads[0]), f.len());
    let mut want = f.clone();
    want[10..12].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(got, want);
    assert_eq!(drv.stats.rx_packets(), 1);
    assert_eq!(drv.stats.rx_bytes(), 1000);
    assert_eq!(drv.stats.rx_backend_wakeups(), 1);
    assert_eq!(drv.irq.count(), 1);

    // Without GUEST_CSUM the device clears flags.
    let mut drv = Driver::new(&mem, base());
    let heads = drv.post_rx(1, MTU_BUF);
    drv.backend.push(f.clone());
    drv.tap_ready();
    let got = read_mem(&mem, Driver::rx_buf(heads[0]), f.len());
    want[0] = 0;
    assert_eq!(got, want);
}

#[test]
fn rx_mergeable_buffers_split_a_frame_with_the_right_num_buffers() {
    let mem = memory();
    let mut drv = Driver::new(&mem, mrg());
    // Enough buffers for any frame: the frame goes straight in.
    let heads = drv.post_rx(50, MTU_BUF);
    let f = frame(0, 0, 4000, 7);
    let small = frame(0, 0, 60, 8);
    drv.backend.push(f.clone());
    drv.backend.push(small.clone());
    drv.tap_ready();

    // 4012 bytes: 1526 + 1526 + 960, then the small frame in the 4th.
    assert_eq!(drv.rx_used_idx(), 4);
    let lens = [1526u32, 1526, 960];
    let mut got = Vec::new();
    for (i, len) in lens.iter().enumerate() {
        assert_eq!(drv.rx_used(i as u16), (u32::from(heads[i]), *len));
        got.extend(read_mem(&mem, Driver::rx_buf(heads[i]), *len as usize));
    }
    let mut want = f.clone();
    want[10..12].copy_from_slice(&3u16.to_le_bytes());
    want[0] = 0;
    assert_eq!(got, want);
    assert_eq!(drv.rx_used(3), (u32::from(heads[3]), small.len() as u32));
    let got = read_mem(&mem, Driver::rx_buf(heads[3]), small.len());
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    assert_eq!(&got[12..], &small[12..]);
    assert_eq!(drv.stats.rx_packets(), 2);
    assert_eq!(drv.stats.rx_copied(), 0);
    assert_eq!(drv.handler.rx().held_chains(), 46);
    // One interrupt for both frames.
    assert_eq!(drv.irq.count(), 1);
}

#[test]
fn rx_mergeable_gathers_buffers_for_the_largest_frame_the_features_allow() {
    let mem = memory();
    // Linux's smallest mergeable buffer.
    const MRG_BUF: u32 = 1536;
    let tail = VNET_HDR_LEN + MAX_FRAME_LEN + 1;

    // Without guest GSO a frame is at most MTU-sized: one buffer is read
    // into, followed by the host buffer (where a larger frame's tail would
    // go), not the 43 buffers a 64 KiB frame needs.
    let mut drv = Driver::new(&mem, mrg());
    let heads = drv.post_rx(50, MRG_BUF);
    let f = frame(0, 0, 1514, 30);
    drv.backend.push(f.clone());
    drv.tap_ready();
    let offered = drv.backend.offered();
    assert_eq!(offered.len(), 2);
    assert_eq!(offered[0], MRG_BUF as usize);
    assert_eq!(offered.iter().sum::<usize>(), tail);
    assert_eq!(drv.rx_used(0), (u32::from(heads[0]), f.len() as u32));
    assert_eq!(
        &read_mem(&mem, Driver::rx_buf(heads[0]), f.len())[12..],
        &f[12..]
    );

    // A jumbo frame (a tap with a 9000-byte MTU) is not lost: its tail is
    // copied from the host buffer into the next buffers.
    let jumbo = frame(0, 0, 9014, 31);
    drv.backend.push(jumbo.clone());
    drv.tap_ready();
    let chains = jumbo.len().div_ceil(MRG_BUF as usize);
    assert_eq!(drv.rx_used_idx(), 1 + chains as u16);
    let mut got = Vec::new();
    for i in 0..chains {
        let (id, len) = drv.rx_used(1 + i as u16);
        assert_eq!(id, u32::from(heads[1 + i]));
        got.extend(read_mem(&mem, Driver::rx_buf(heads[1 + i]), len as usize));
    }
    let mut want = jumbo.clone();
    want[10..12].copy_from_slice(&(chains as u16).to_le_bytes());
    assert_eq!(got, want);
    assert_eq!(drv.handler.rx().spilled_frames(), 1);
    assert_eq!(drv.stats.rx_copied(), 0);
    assert_eq!(drv.stats.rx_dropped(), 0);
    // ...and the next one goes straight into as many buffers as it needs.
    drv.backend.push(jumbo.clone());
    drv.tap_ready();
    assert_eq!(drv.backend.offered().len(), chains + 1);
    assert_eq!(drv.handler.rx().spilled_frames(), 1);
    assert_eq!(drv.stats.rx_packets(), 3);

    // With guest TSO the buffers must hold a 64 KiB frame before a read,
    // and such a frame goes straight in.
    let tso = mrg() | bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4);
    let mut drv = Driver::new(&mem, tso);
    let heads = drv.post_rx(50, MRG_BUF);
    let small = frame(0, 0, 100, 32);
    drv.backend.push(small.clone());
    drv.tap_ready();
    let offered = drv.backend.offered();
    let chains = tail.div_ceil(MRG_BUF as usize);
    assert_eq!(offered.len(), chains + 1);
    assert_eq!(offered.iter().sum::<usize>(), chains * MRG_BUF as usize + 1);
    assert_eq!(drv.rx_used(0), (u32::from(heads[0]), small.len() as u32));
    let big = frame(0, 0, MAX_FRAME_LEN, 33);
    drv.backend.push(big.clone());
    drv.tap_ready();
    let chains = big.len().div_ceil(MRG_BUF as usize);
    assert_eq!(drv.rx_used_idx(), 1 + chains as u16);
    let mut got = Vec::new();
    for i in 0..chains {
        let (id, len) = drv.rx_used(1 + i as u16);
        assert_eq!(id, u32::from(heads[1 + i]));
        got.extend(read_mem(&mem, Driver::rx_buf(heads[1 + i]), len as usize));
    }
    let mut want = big;
    want[10..12].copy_from_slice(&(chains as u16).to_le_bytes());
    assert_eq!(got, want);
    assert_eq!(drv.handler.rx().spilled_frames(), 0);
    assert_eq!(drv.stats.rx_copied(), 0);
}

#[test]
fn rx_header_split_across_descriptors() {
    let mem = memory();
    let mut drv = Driver::new(&mem, mrg());
    // Chains of two descriptors: 6 bytes, then the rest; num_buffers lands
    // in the second one.
    let mut heads = Vec::new();
    for i in 0..30u64 {
        let a = BUF + i * 0x1_0000;
        heads.push(drv.add_rx(&[(a, 6, W), (a + 0x100, 3000, W)]));
    }
    let f = frame(0, 0, 5000, 9);
    drv.backend.push(f.clone());
    drv.tap_ready();
    // 5012 bytes over chains of 3006: two chains.
    assert_eq!(drv.rx_used_idx(), 2);
    assert_eq!(drv.rx_used(0), (u32::from(heads[0]), 3006));
    assert_eq!(drv.rx_used(1), (u32::from(heads[1]), 2006));
    let mut got = read_mem(&mem, BUF, 6);
    got.extend(read_mem(&mem, BUF + 0x100, 3000));
    got.extend(read_mem(&mem, BUF + 0x1_0000, 6));
    got.extend(read_mem(&mem, BUF + 0x1_0100, 2000));
    let mut want = f;
    want[10..12].copy_from_slice(&2u16.to_le_bytes());
    assert_eq!(got, want);
}

#[test]
fn rx_frames_larger_than_the_buffers_are_dropped() {
    let mem = memory();
    // Without MRG_RXBUF one chain must hold the frame.
    let mut drv = Driver::new(&mem, base());
    let heads = drv.post_rx(1, MTU_BUF);
    drv.backend.push(frame(0, 0, 2000, 10));
    let small = frame(0, 0, 100, 11);
    drv.backend.push(small.clone());
    drv.tap_ready();
    assert_eq!(drv.stats.rx_dropped(), 1);
    assert_eq!(drv.stats.rx_packets(), 1);
    // The chain the big frame did not fit went to the next frame.
    assert_eq!(drv.rx_used_idx(), 1);
    assert_eq!(drv.rx_used(0), (u32::from(heads[0]), small.len() as u32));
    assert_eq!(
        &read_mem(&mem, Driver::rx_buf(heads[0]), small.len())[12..],
        &small[12..]
    );

    // With MRG_RXBUF: a frame larger than every buffer the queue can hold
    // (16 descriptors of 256 bytes) is dropped once the driver has posted
    // them all; the buffers then serve the next frame.
    let mut drv = Driver::with_rx_size(&mem, mrg(), 16);
    let heads = drv.post_rx(15, 256);
    drv.backend.push(frame(0, 0, 5000, 12));
    drv.backend.push(small.clone());
    drv.tap_ready();
    // 15 * 256 < 5012: waits for more buffers, the frame held by the device.
    assert_eq!(drv.stats.rx_dropped(), 0);
    assert!(drv.handler.rx().has_stashed_frame());
    assert!(drv.handler.is_rx_paused());
    assert_eq!(drv.backend.pending(), 1);
    drv.post_rx(1, 256);
    drv.notify_rx();
    assert_eq!(drv.stats.rx_dropped(), 1);
    assert_eq!(drv.stats.rx_packets(), 1);
    assert_eq!(drv.rx_used_idx(), 1);
    assert_eq!(drv.rx_used(0), (u32::from(heads[0]), small.len() as u32));
    assert_eq!(drv.stats.rx_copied(), 1);
    assert_eq!(drv.backend.pending(), 0);
}

#[test]
fn rx_mergeable_with_few_buffers_waits_instead_of_dropping() {
    let mem = memory();
    let mut drv = Driver::new(&mem, mrg());
    let heads = drv.post_rx(2, MTU_BUF);
    let f = frame(0, 0, 4000, 13);
    drv.backend.push(f.clone());
    drv.backend.push(frame(0, 0, 50, 14));
    drv.tap_ready();
    // 3052 bytes of buffers: the frame waits on the device side, and the
    // tap is left alone (the second frame is still there).
    assert_eq!(drv.rx_used_idx(), 0);
    assert!(drv.handler.rx().has_stashed_frame());
    assert!(drv.handler.is_rx_paused());
    assert_eq!(drv.backend.pending(), 1);
    assert_eq!(drv.stats.rx_dropped(), 0);
    assert_eq!(drv.stats.rx_paused(), 1);
    // Driver notifications are on, so the driver says when it adds some.
    assert_eq!(drv.used_flags(&drv.rxq), 0);

    let more = drv.post_rx(2, MTU_BUF);
    drv.notify_rx();
    assert_eq!(drv.stats.rx_notifications(), 1);
    assert_eq!(drv.stats.rx_packets(), 2);
    assert_eq!(drv.stats.rx_copied(), 2);
    assert_eq!(drv.rx_used_idx(), 4);
    let mut got = Vec::new();
    for (i, head) in [heads[0], heads[1], more[0]].into_iter().enumerate() {
        let (id, len) = drv.rx_used(i as u16);
        assert_eq!(id, u32::from(head));
        got.extend(read_mem(&mem, Driver::rx_buf(head), len as usize));
    }
    let mut want = f;
    want[10..12].copy_from_slice(&3u16.to_le_bytes());
    want[0] = 0;
    assert_eq!(got, want);
    assert_eq!(drv.rx_used(3), (u32::from(more[1]), 62));
}

#[test]
fn rx_bad_chains_are_returned_unused() {
    let mem = memory();
    let mut drv = Driver::new(&mem, base());
    let bad = [
        drv.add_rx(&[(BUF, 100, R), (BUF + 0x1000, 1000, W)]),
        drv.add_rx(&[(BUF + 0x2000, 8, W)]),
        drv.add_rx(&[(MEM_END - 100, 1000, W)]),
    ];
    let good = drv.add_rx(&[(BUF + 0x4000, MTU_BUF, W)]);
    let f = frame(0, 0, 300, 15);
    drv.backend.push(f.clone());
    drv.tap_ready();
    assert_eq!(drv.stats.rx_bad_chains(), 3);
    assert_eq!(drv.rx_used_idx(), 4);
    for (i, head) in bad.iter().enumerate() {
        assert_eq!(drv.rx_used(i as u16), (u32::from(*head), 0));
    }
    assert_eq!(drv.rx_used(3), (u32::from(good), f.len() as u32));
}

#[test]
fn rx_pauses_without_buffers_and_resumes_on_notification() {
    let mem = memory();
    let mut drv = Driver::new(&mem, base());
    let ready = drv.handler.ready_fd();
    drv.backend.push(frame(0, 0, 100, 16));
    drv.backend.push(frame(0, 0, 200, 17));
    assert!(readable(ready));

    // The tap has frames, the driver no buffers: nothing is read, and the
    // loop's descriptor goes quiet although the tap stays readable.
    drv.tap_ready();
    assert!(drv.handler.is_rx_paused());
    assert_eq!(drv.backend.reads(), 0);
    assert_eq!(drv.backend.pending(), 2);
    assert!(readable(drv.backend.as_raw_fd()));
    assert!(!readable(ready));
    assert_eq!(drv.stats.rx_paused(), 1);
    assert_eq!(drv.irq.count(), 0);

    // One buffer: one frame, then paused again with the other frame kept.
    let heads = drv.post_rx(1, MTU_BUF);
    drv.notify_rx();
    assert_eq!(drv.rx_used_idx(), 1);
    assert_eq!(drv.rx_used(0), (u32::from(heads[0]), 112));
    assert!(drv.handler.is_rx_paused());
    assert!(!readable(ready));
    assert_eq!(drv.backend.pending(), 1);
    // Never watched in between: still the one pause.
    assert_eq!(drv.stats.rx_paused(), 1);

    // Two more buffers: the last frame, then the tap is drained and
    // watched again with a buffer left.
    let heads = drv.post_rx(2, MTU_BUF);
    drv.notify_rx();
    assert_eq!(drv.rx_used_idx(), 2);
    assert_eq!(drv.rx_used(1), (u32::from(heads[0]), 212));
    assert!(!drv.handler.is_rx_paused());
    assert!(!readable(ready));
    // Holding a buffer, the device turns driver notifications off.
    assert_eq!(drv.used_flags(&drv.rxq), 1);
    drv.backend.push(frame(0, 0, 300, 18));
    assert!(readable(ready));
    drv.tap_ready();
    assert_eq!(drv.rx_used(2), (u32::from(heads[1]), 312));
    assert_eq!(drv.stats.rx_packets(), 3);
    assert_eq!(drv.stats.rx_dropped(), 0);
}

#[test]
fn rx_pause_on_a_running_worker_does_not_spin() {
    let mem = memory();
    let drv = Driver::new(&mem, base());
    let Driver {
        rxq,
        handler,
        backend,
        stats,
        ..
    } = drv;
    let ready = handler.ready_fd();
    let rx_notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let tx_notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let worker = QueueWorker::spawn(
        "net-test".into(),
        handler,
        vec![
            (RX_QUEUE, rx_notify.try_clone().unwrap()),
            (TX_QUEUE, tx_notify.try_clone().unwrap()),
        ],
        vec![(ready, BACKEND_TOKEN)],
    )
    .unwrap();
    backend.push(frame(0, 0, 100, 19));
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.rx_paused() == 0 {
        assert!(Instant::now() < deadline, "RX never paused");
        std::thread::sleep(Duration::from_millis(1));
    }
    // A spinning loop would wake up thousands of times here.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(stats.rx_backend_wakeups(), 1);
    assert_eq!(backend.pending(), 1);

    let addr = BUF;
    let desc: RawDescriptor = Descriptor::new(addr, MTU_BUF, VRING_DESC_F_WRITE as u16, 0).into();
    rxq.add_desc_chains(&[desc], 0).unwrap();
    rx_notify.write(1).unwrap();
    while rxq.used().idx().load() == 0 {
        assert!(Instant::now() < deadline, "the frame never arrived");
        std::thread::sleep(Duration::from_millis(1));
    }
    let (handler, _) = worker.stop().unwrap();
    assert_eq!(stats.rx_packets(), 1);
    assert_eq!(stats.rx_notifications(), 1);
    assert_eq!(backend.pending(), 0);
    assert!(handler.is_rx_paused());
}

// ---------------------------------------------------------- EVENT_IDX

#[test]
fn event_idx_suppresses_tx_interrupts_and_notifications() {
    let mem = memory();
    let mut drv = Driver::new(&mem, base() | bit(VIRTIO_RING_F_EVENT_IDX));
    let f = frame(0, 0, 60, 20);
    mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    let chain = [(BUF, f.len() as u32, R)];

    // used_event 0: the first completion (used idx 0 -> 1) interrupts.
    drv.add_tx(&chain);
    drv.notify_tx();
    assert_eq!(drv.irq.count(), 1);
    // The device asks to be notified at the next chain only.
    assert_eq!(drv.avail_event(&drv.txq, QSIZE), 1);

    // used_event 2: used idx 1 -> 2 does not cross it ...
    Driver::set_used_event_at(&mem, &drv.txq, QSIZE, 2);
    drv.add_tx(&chain);
    drv.notify_tx();
    assert_eq!(drv.tx_used_idx(), 2);
    assert_eq!(drv.irq.count(), 1);
    // ... 2 -> 4 does.
    drv.add_tx(&chain);
    drv.add_tx(&chain);
    drv.notify_tx();
    assert_eq!(drv.tx_used_idx(), 4);
    assert_eq!(drv.irq.count(), 2);
    assert_eq!(drv.avail_event(&drv.txq, QSIZE), 4);
    // Far ahead: nothing.
    Driver::set_used_event_at(&mem, &drv.txq, QSIZE, 100);
    drv.add_tx(&chain);
    drv.notify_tx();
    assert_eq!(drv.irq.count(), 2);
    assert_eq!(drv.stats.tx_packets(), 5);
    assert_eq!(drv.stats.interrupts(), 2);
}

#[test]
fn event_idx_rx_interrupts_when_used_event_falls_inside_a_merged_frame() {
    let mem = memory();
    let mut drv = Driver::new(&mem, mrg() | bit(VIRTIO_RING_F_EVENT_IDX));
    drv.post_rx(60, MTU_BUF);
    // The driver wants an interrupt once used idx passes 1: a frame using
    // entries 0, 1 and 2 must interrupt even though the entries are
    // published together.
    Driver::set_used_event_at(&mem, &drv.rxq, QSIZE, 1);
    drv.backend.push(frame(0, 0, 4000, 21));
    drv.tap_ready();
    assert_eq!(drv.rx_used_idx(), 3);
    assert_eq!(drv.irq.count(), 1);
    // used_event 1 again: already passed, no interrupt for the next frame.
    drv.backend.push(frame(0, 0, 100, 22));
    drv.tap_ready();
    assert_eq!(drv.rx_used_idx(), 4);
    assert_eq!(drv.irq.count(), 1);
    // used_event 4: the next frame (entry 4 -> idx 5) crosses it.
    Driver::set_used_event_at(&mem, &drv.rxq, QSIZE, 4);
    drv.backend.push(frame(0, 0, 100, 23));
    drv.tap_ready();
    assert_eq!(drv.irq.count(), 2);
    assert_eq!(drv.stats.interrupts(), 2);
    assert_eq!(drv.stats.rx_packets(), 3);
}

#[test]
fn event_idx_rx_asks_for_a_notification_when_out_of_buffers() {
    let mem = memory();
    let mut drv = Driver::new(&mem, base() | bit(VIRTIO_RING_F_EVENT_IDX));
    drv.post_rx(2, MTU_BUF);
    for i in 0..3 {
        drv.backend.push(frame(0, 0, 100, 24 + i));
    }
    drv.tap_ready();
    assert_eq!(drv.rx_used_idx(), 2);
    assert!(drv.handler.is_rx_paused());
    // avail_event = next_avail: the driver notifies when it adds a buffer.
    assert_eq!(drv.avail_event(&drv.rxq, QSIZE), 2);
    drv.post_rx(1, MTU_BUF);
    drv.notify_rx();
    assert_eq!(drv.rx_used_idx(), 3);
    assert_eq!(drv.avail_event(&drv.rxq, QSIZE), 3);
    assert_eq!(drv.stats.rx_packets(), 3);
}

impl Driver<'_> {
    fn set_used_event_at(
        mem: &GuestMemoryMmap,
        vq: &MockSplitQueue<'_, GuestMemoryMmap>,
        size: u16,
        value: u16,
    ) {
        let addr = vq.avail_addr().0 + 4 + 2 * u64::from(size);
        mem.write_obj(value, GuestAddress(addr)).unwrap();
    }
}

/// Writes raw descriptor `i` of `q`'s table.
fn raw_desc(
    mem: &GuestMemoryMmap,
    q: &MockSplitQueue<'_, GuestMemoryMmap>,
    i: u16,
    (addr, len, flags, next): (u64, u32, u32, u16),
) {
    let desc: RawDescriptor = Descriptor::new(addr, len, flags as u16, next).into();
    mem.write_obj(
        desc,
        GuestAddress(q.desc_table_addr().0 + 16 * u64::from(i)),
    )
    .unwrap();
}

/// Makes the chain at `head` of `q` available.
fn make_available(mem: &GuestMemoryMmap, q: &MockSplitQueue<'_, GuestMemoryMmap>, head: u16) {
    let avail = q.avail_addr().0;
    let idx: u16 = mem.read_obj(GuestAddress(avail + 2)).unwrap();
    let slot = u64::from(idx % QSIZE);
    mem.write_obj(head, GuestAddress(avail + 4 + 2 * slot))
        .unwrap();
    mem.write_obj(idx.wrapping_add(1), GuestAddress(avail + 2))
        .unwrap();
}

#[test]
fn tx_loops_are_dropped_unsent_and_need_a_reset() {
    // Before the fix a TX chain looping on itself was sent as the prefix
    // virtio-queue yields: the same buffer repeated up to the frame limit.
    let mem = memory();
    let nf = VRING_DESC_F_NEXT;
    // (what, [(index, (addr, len, flags, next))])
    type RawChain = Vec<(u16, (u64, u32, u32, u16))>;
    let cases: [(&str, RawChain); 3] = [
        ("self loop", vec![(0, (BUF, 64, nf, 0))]),
        (
            "two-descriptor loop",
            vec![(0, (BUF, 12, nf, 1)), (1, (BUF + 0x100, 60, nf, 0))],
        ),
        (
            "next outside the table",
            vec![(0, (BUF, 74, nf, QSIZE + 1))],
        ),
    ];
    for (what, descs) in cases {
        let mut drv = Driver::new(&mem, base());
        for (i, d) in descs {
            raw_desc(&mem, &drv.txq, i, d);
        }
        make_available(&mem, &drv.txq, 0);
        drv.handler.process_queue(TX_QUEUE);
        assert!(drv.backend.written().is_empty(), "{what}: a frame was sent");
        assert_eq!(drv.tx_used_idx(), 1, "{what}: the chain was not returned");
        assert_eq!(drv.tx_used(0), (0, 0), "{what}");
        assert_eq!(drv.irq.needs_reset(), 1, "{what}");
        assert!(drv.handler.needs_reset(), "{what}");
        // A good frame still goes out; the reset is signalled once.
        let f = frame(0, 0, 60, 1);
        mem.write_slice(&f, GuestAddress(BUF + 0x1000)).unwrap();
        drv.tx_next = 2;
        drv.add_tx(&[(BUF + 0x1000, f.len() as u32, R)]);
        drv.handler.process_queue(TX_QUEUE);
        assert_eq!(drv.backend.written(), vec![f], "{what}");
        assert_eq!(drv.irq.needs_reset(), 1, "{what}");
    }
}

#[test]
fn rx_loops_are_returned_unused_and_need_a_reset() {
    let mem = memory();
    let mut drv = Driver::new(&mem, base());
    let (nf, wf) = (VRING_DESC_F_NEXT, VRING_DESC_F_WRITE);
    raw_desc(&mem, &drv.rxq, 0, (BUF, 2048, wf | nf, 0));
    make_available(&mem, &drv.rxq, 0);
    mem.write_slice(&[0xee; 64], GuestAddress(BUF)).unwrap();
    drv.backend.push(frame(0, 0, 100, 2));
    drv.handler.process_queue(RX_QUEUE);
    assert_eq!(drv.rx_used_idx(), 1);
    assert_eq!(drv.rx_used(0), (0, 0));
    assert_eq!(
        read_mem(&mem, BUF, 64),
        vec![0xee; 64],
        "a frame was written"
    );
    assert_eq!(drv.irq.needs_reset(), 1);
    assert_eq!(drv.backend.pending(), 1, "the frame is still waiting");
}

#[test]
fn an_avail_index_far_ahead_needs_a_reset_and_does_not_spin() {
    let mem = memory();
    for features in [base(), base() | bit(VIRTIO_RING_F_EVENT_IDX)] {
        let mut drv = Driver::new(&mem, features);
        for q in [&drv.txq, &drv.rxq] {
            mem.write_obj(QSIZE + 5, GuestAddress(q.avail_addr().0 + 2))
                .unwrap();
        }
        drv.backend.push(frame(0, 0, 60, 3));
        let start = Instant::now();
        let ((), lines) = capture_log(|| {
            for _ in 0..1000 {
                drv.handler.process_queue(TX_QUEUE);
                drv.handler.process_queue(RX_QUEUE);
            }
        });
        assert!(start.elapsed() < Duration::from_secs(5));
        // Every notification finds the ring broken again: a few lines
        // for the 2000 of them, not one each.
        let lines = warnings(&lines);
        assert!(lines.len() >= 10, "{lines:#?}");
        assert!(lines.len() <= limited_lines(2001), "{lines:#?}");
        assert!(lines.iter().all(|l| l.ends_with("ring errors so far)")));
        assert_eq!(drv.irq.needs_reset(), 1);
        assert_eq!(drv.tx_used_idx(), 0);
        assert_eq!(drv.rx_used_idx(), 0);
        assert!(drv.backend.written().is_empty());
        assert!(drv.handler.is_rx_paused());
    }
}

// ---------------------------------------------------------------- log

#[test]
fn a_flood_of_malformed_tx_chains_logs_a_few_lines() {
    const CHAINS: u64 = 100_000;
    let mem = memory();
    let mut drv = Driver::new(&mem, base());
    // A header too short, made available again and again.
    raw_desc(&mem, &drv.txq, 0, (BUF, 10, 0, 0));
    let ((), lines) = capture_log(|| {
        for _ in 0..CHAINS {
            make_available(&mem, &drv.txq, 0);
            drv.notify_tx();
        }
    });
    assert_eq!(drv.stats.tx_dropped(), CHAINS);
    assert!(drv.backend.written().is_empty());
    let lines = warnings(&lines);
    // 1..=10, then 16, 32, ..., 65536.
    assert_eq!(lines.len(), 23, "{lines:#?}");
    assert_eq!(lines.len(), limited_lines(CHAINS));
    assert!(lines[0].ends_with("(1 dropped so far)"), "{}", lines[0]);
    assert!(
        lines[22].ends_with("(65536 dropped so far)"),
        "{}",
        lines[22]
    );

    // RX drops and bad RX chains have counts of their own: the TX flood
    // does not hide them.
    drv.post_rx(1, 64);
    drv.backend.push(frame(0, 0, 1000, 1));
    drv.add_rx(&[(BUF, 64, R)]);
    let ((), lines) = capture_log(|| drv.tap_ready());
    let lines = warnings(&lines);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("dropping a frame") && l.ends_with("(1 dropped so far)")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("unusable chain") && l.ends_with("(1 so far)")),
        "{lines:#?}"
    );
}

#[test]
fn a_flood_of_head_indexes_past_the_queues_logs_a_few_lines() {
    // virtio-queue's `add_used` prints an error line of its own for each
    // such head; RX and TX refuse them before it does.
    const CHAINS: u64 = 50_000;
    let mem = memory();
    let mut drv = Driver::new(&mem, base());
    drv.backend.push(frame(0, 0, 100, 1));
    let ((), lines) = capture_log(|| {
        for i in 0..CHAINS {
            let head = QSIZE + (i % 2) as u16 * 0x7fff;
            make_available(&mem, &drv.txq, head);
            drv.notify_tx();
            make_available(&mem, &drv.rxq, head);
            drv.notify_rx();
        }
    });
    assert!(drv.backend.written().is_empty());
    assert_eq!(drv.handler.tx_queue().next_used(), 0);
    assert_eq!(drv.handler.rx_queue().next_used(), 0);
    assert!(drv.handler.needs_reset());
    // Per chain: a drop (TX) or an unusable chain (RX), then a ring error
    // (the one saying the device needs a reset included).
    let lines = warnings(&lines);
    assert_eq!(
        lines.len(),
        2 * limited_lines(CHAINS) + limited_lines(2 * CHAINS + 1),
        "{lines:#?}"
    );
    assert!(
        lines.iter().all(|l| l.starts_with("virtio-net: ")),
        "{lines:#?}"
    );
}

#[test]
fn handlers_sharing_a_device_s_limits_do_not_start_over() {
    // What Net does on every activation: a driver that resets the device
    // gets no fresh lines.
    let mem = memory();
    let shared = Arc::new(NetLogLimits::default());
    let mut logged = Vec::new();
    for _ in 0..2000 {
        let mut drv = Driver::new(&mem, base());
        drv.handler.set_log_limits(Arc::clone(&shared));
        drv.add_tx(&[(BUF, 10, R)]);
        let ((), lines) = capture_log(|| drv.notify_tx());
        assert_eq!(drv.stats.tx_dropped(), 1);
        logged.extend(warnings(&lines).into_iter().map(str::to_owned));
    }
    assert_eq!(shared.tx_dropped.count(), 2000);
    assert_eq!(logged.len(), limited_lines(2000), "{logged:#?}");
    assert!(
        logged[10].ends_with("(16 dropped so far)"),
        "{}",
        logged[10]
    );
}
