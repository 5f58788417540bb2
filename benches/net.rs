//! Device-side virtio-net throughput in packets per second: our frame logic
//! (`vmkit::net::tx::Tx` and `vmkit::net::rx::Rx` on a null backend, the
//! interrupt decision and the virtio-mmio transport's interrupt) beside a
//! bare virtio-queue loop that pops and returns the same chains.
//!
//! ```text
//! cargo bench --bench net
//! ```
//!
//! The queues are virtio-queue split rings of 256 entries in guest memory;
//! every frame is 1514 bytes (a full 1500-byte MTU Ethernet frame) behind
//! the 12-byte virtio-net header. The backend is
//! `vmkit::net::test_utils::NullBackend`: it takes TX frames without
//! reading them and hands out RX frames by writing only their header, so
//! neither side copies frame bytes and the figures are the device's
//! per-packet cost alone.
//!
//! - TX (guest to backend): each iteration the driver makes a whole ring of
//!   frames available (chains of 1 descriptor, header and frame together as
//!   Linux sends them with VIRTIO_F_ANY_LAYOUT, or 2: header, then frame)
//!   and the device drains it as after one notification.
//! - RX (backend to guest): the driver keeps the ring full as Linux does
//!   (its NAPI poll refills after each budget of 64): each iteration it
//!   posts 64 buffers, the device receives 64 frames into the oldest held
//!   ones. One descriptor per buffer: 1530 bytes without
//!   VIRTIO_NET_F_MRG_RXBUF (header + 1518, Linux's small buffers), 1536
//!   with it (Linux's smallest mergeable buffer).
//!
//! "bare" pops every chain, walks its descriptors, for RX writes the
//! virtio-net header (num_buffers = 1), returns the chain to the used ring
//! and interrupts the driver through an eventfd when the queue says so
//! (re-arming notifications with EVENT_IDX): what any device must do.
//! "vmkit" is what our device does: every check on every chain, the
//! backend call, the header fix-ups, used-ring publication, the interrupt
//! decision and the transport's interrupt. The ratio vmkit/bare is the
//! stack's overhead.

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{Queue, QueueT};
use vmkit::disk::{DiskImage, NullDisk};
use vmkit::memory::GuestMemoryMmap;
use vmkit::memory::vm_memory::{Address, Bytes, GuestAddress};
use vmkit::net::rx::{Rx, RxStatus};
use vmkit::net::test_utils::NullBackend;
use vmkit::net::tx::Tx;
use vmkit::net::{QUEUE_SIZE, VNET_HDR_LEN};
use vmkit::virtio::test_utils::NoopNotify;
use vmkit::virtio::{Interrupt, InterruptType, MmioTransport, VirtioDevice};
use vmm_sys_util::eventfd::EventFd;

const DESC_TABLE: u64 = 0x1_0000;
const AVAIL_RING: u64 = 0x2_0000;
const USED_RING: u64 = 0x3_0000;
const BUFFERS: u64 = 0x10_0000;
/// Room for one buffer of any chain.
const BUFFER_STRIDE: u64 = 2048;
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
/// A full 1500-byte-MTU Ethernet frame.
const FRAME_LEN: usize = 1514;
/// Frames received per iteration: Linux's NAPI budget, after which its
/// driver refills the ring.
const RX_BATCH: u16 = 64;

fn bit(b: u32) -> u64 {
    1u64 << b
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap()
}

/// Writes descriptor `i`.
fn desc(mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16) {
    let at = GuestAddress(DESC_TABLE + u64::from(i) * 16);
    mem.write_obj(addr, at).unwrap();
    mem.write_obj(len, at.unchecked_add(8)).unwrap();
    mem.write_obj(flags, at.unchecked_add(12)).unwrap();
    mem.write_obj(i + 1, at.unchecked_add(14)).unwrap();
}

/// TX chains of `per_chain` descriptors (1: header and frame in one
/// buffer; 2: header, then frame), chain `c` starting at descriptor
/// `c * per_chain`. Their headers are zero (no offloads).
fn tx_chains(mem: &GuestMemoryMmap, per_chain: u16) {
    for c in 0..QUEUE_SIZE / per_chain {
        let head = c * per_chain;
        let buf = BUFFERS + u64::from(c) * BUFFER_STRIDE;
        if per_chain == 1 {
            desc(mem, head, buf, (VNET_HDR_LEN + FRAME_LEN) as u32, 0);
        } else {
            desc(mem, head, buf, VNET_HDR_LEN as u32, VIRTQ_DESC_F_NEXT);
            desc(mem, head + 1, buf + 64, FRAME_LEN as u32, 0);
        }
    }
}

/// RX chains of one device-writable buffer of `len` bytes each.
fn rx_chains(mem: &GuestMemoryMmap, len: u32) {
    for c in 0..QUEUE_SIZE {
        desc(
            mem,
            c,
            BUFFERS + u64::from(c) * BUFFER_STRIDE,
            len,
            VIRTQ_DESC_F_WRITE,
        );
    }
}

fn queue(mem: &GuestMemoryMmap, event_idx: bool) -> Queue {
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    q.try_set_desc_table_address(GuestAddress(DESC_TABLE))
        .unwrap();
    q.try_set_avail_ring_address(GuestAddress(AVAIL_RING))
        .unwrap();
    q.try_set_used_ring_address(GuestAddress(USED_RING))
        .unwrap();
    q.set_size(QUEUE_SIZE);
    q.set_event_idx(event_idx);
    q.set_ready(true);
    assert!(q.is_valid(mem));
    q
}

/// The driver's side: makes chains available in head order, round the
/// ring, and (with EVENT_IDX) asks for one interrupt when the last chain
/// of a batch is used.
struct Driver {
    avail_idx: u16,
    /// Chains the device has used (or will have, once it drains a batch).
    used: u16,
    per_chain: u16,
}

impl Driver {
    fn new(per_chain: u16) -> Self {
        Driver {
            avail_idx: 0,
            used: 0,
            per_chain,
        }
    }

    /// Publishes the next `n` chains, and asks to be interrupted once the
    /// device has used `expect_used` more.
    fn publish(&mut self, mem: &GuestMemoryMmap, n: u16, expect_used: u16) {
        let chains = QUEUE_SIZE / self.per_chain;
        for i in 0..n {
            let slot = self.avail_idx.wrapping_add(i);
            let head = (slot % chains) * self.per_chain;
            mem.write_obj(
                head,
                GuestAddress(AVAIL_RING + 4 + u64::from(slot % QUEUE_SIZE) * 2),
            )
            .unwrap();
        }
        self.avail_idx = self.avail_idx.wrapping_add(n);
        self.used = self.used.wrapping_add(expect_used);
        // used_event: interrupt once the batch is used.
        mem.write_obj(
            self.used.wrapping_sub(1),
            GuestAddress(AVAIL_RING + 4 + u64::from(QUEUE_SIZE) * 2),
        )
        .unwrap();
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        mem.write_obj(self.avail_idx, GuestAddress(AVAIL_RING + 2))
            .unwrap();
    }
}

/// After a batch, as any device must: tell the driver where to notify next
/// (EVENT_IDX) and interrupt it if it asked to be.
fn bare_finish(q: &mut Queue, mem: &GuestMemoryMmap, irq: &EventFd) {
    if q.event_idx_enabled() {
        // Sets avail_event.
        std::hint::black_box(q.enable_notification(mem).unwrap());
    }
    if q.needs_notification(mem).unwrap() {
        irq.write(1).unwrap();
    }
}

/// The bare TX loop: pop every chain, walk its descriptors, return it.
fn bare_tx(q: &mut Queue, mem: &GuestMemoryMmap, irq: &EventFd) -> u16 {
    let mut n = 0;
    while let Some(chain) = q.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let mut len = 0u32;
        for d in chain {
            len = len.wrapping_add(d.len());
        }
        std::hint::black_box(len);
        // A TX chain's used length is 0: the device wrote nothing.
        q.add_used(mem, head, 0).unwrap();
        n += 1;
    }
    bare_finish(q, mem, irq);
    n
}

/// The bare RX loop: `frames` times, pop a chain, walk its descriptors,
/// write the header (num_buffers = 1) into its first buffer, return it
/// with the frame's length.
fn bare_rx(q: &mut Queue, mem: &GuestMemoryMmap, irq: &EventFd, frames: u16) -> u16 {
    let mut header = [0u8; VNET_HDR_LEN];
    header[10] = 1;
    let mut n = 0;
    while n < frames {
        let Some(chain) = q.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let mut first = None;
        let mut len = 0u32;
        for d in chain {
            first.get_or_insert(d.addr());
            len = len.wrapping_add(d.len());
        }
        mem.write_slice(&header, first.unwrap()).unwrap();
        let used = len.min((VNET_HDR_LEN + FRAME_LEN) as u32);
        q.add_used(mem, head, used).unwrap();
        n += 1;
    }
    bare_finish(q, mem, irq);
    n
}

/// The interrupt our devices raise: a virtio-mmio transport's, over an
/// eventfd line. The transport's interrupt path does not depend on the
/// device behind it; a block device on a null disk stands in for a
/// `Net`, which needs a real tap.
fn transport(mem: &GuestMemoryMmap) -> MmioTransport {
    let disk: Arc<dyn DiskImage> = Arc::new(NullDisk::new(1 << 30));
    let device: Box<dyn VirtioDevice> = Box::new(vmkit::blk::Block::new(
        disk,
        vmkit::blk::DiskId::from_index(0),
    ));
    let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    MmioTransport::new(device, mem.clone(), irq, Arc::new(NoopNotify), 0xc000_0000).unwrap()
}

/// What `NetHandler::process_tx` does, minus its counters.
fn vmkit_tx(
    tx: &mut Tx,
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    backend: &NullBackend,
    interrupt: &dyn Interrupt,
) -> u64 {
    let out = tx.process(mem, q, backend);
    if out.completed > 0 && q.needs_notification(mem).unwrap() {
        interrupt.trigger(InterruptType::UsedRing).unwrap();
    }
    assert_eq!(out.dropped, 0, "the device dropped the benchmark's frames");
    out.frames
}

/// What `NetHandler::process_rx` does, minus its counters and its epoll
/// bookkeeping, with a budget of `frames`.
fn vmkit_rx(
    rx: &mut Rx,
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    backend: &NullBackend,
    interrupt: &dyn Interrupt,
    frames: u16,
) -> u64 {
    let out = rx.process(mem, q, backend, u64::from(frames));
    assert_eq!(out.status, RxStatus::Budget);
    assert_eq!(
        (out.dropped, out.copied),
        (0, 0),
        "frames dropped or copied"
    );
    if rx.needs_interrupt(mem, q) {
        interrupt.trigger(InterruptType::UsedRing).unwrap();
    }
    out.frames
}

fn tx_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("virtio-net");
    for per_chain in [1u16, 2] {
        for event_idx in [false, true] {
            let label = format!(
                "tx, {per_chain} descriptor{}{}",
                if per_chain == 1 { "" } else { "s" },
                if event_idx { ", event_idx" } else { "" }
            );
            let chains = QUEUE_SIZE / per_chain;
            group.throughput(Throughput::Elements(u64::from(chains)));

            let mem = memory();
            tx_chains(&mem, per_chain);
            let mut q = queue(&mem, event_idx);
            let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let mut driver = Driver::new(per_chain);
            group.bench_function(BenchmarkId::new("bare", &label), |b| {
                b.iter(|| {
                    driver.publish(&mem, chains, chains);
                    assert_eq!(bare_tx(&mut q, &mem, &irq), chains);
                })
            });

            let transport = transport(&mem);
            let interrupt = transport.interrupt();
            let backend = NullBackend::new(FRAME_LEN).unwrap();
            let mut q = queue(&mem, event_idx);
            let mut tx = Tx::new(bit(VIRTIO_F_VERSION_1));
            let mut driver = Driver::new(per_chain);
            group.bench_function(BenchmarkId::new("vmkit", &label), |b| {
                b.iter(|| {
                    driver.publish(&mem, chains, chains);
                    let sent = vmkit_tx(&mut tx, &mut q, &mem, &backend, interrupt.as_ref());
                    assert_eq!(sent, u64::from(chains));
                })
            });
            assert_eq!(
                backend.bytes_written(),
                backend.frames_written() * (VNET_HDR_LEN + FRAME_LEN) as u64
            );
        }
    }
    group.finish();
}

fn rx_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("virtio-net");
    for mrg_rxbuf in [false, true] {
        for event_idx in [false, true] {
            let label = format!(
                "rx{}{}",
                if mrg_rxbuf { ", mrg_rxbuf" } else { "" },
                if event_idx { ", event_idx" } else { "" }
            );
            let buffer_len = if mrg_rxbuf { 1536 } else { 1530 };
            let mut features = bit(VIRTIO_F_VERSION_1);
            if mrg_rxbuf {
                features |= bit(VIRTIO_NET_F_MRG_RXBUF);
            }
            group.throughput(Throughput::Elements(u64::from(RX_BATCH)));

            let mem = memory();
            rx_chains(&mem, buffer_len);
            // The ring holds QUEUE_SIZE - RX_BATCH buffers; each iteration
            // posts RX_BATCH more and the device fills RX_BATCH.
            let mut q = queue(&mem, event_idx);
            let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let mut driver = Driver::new(1);
            driver.publish(&mem, QUEUE_SIZE - RX_BATCH, 0);
            group.bench_function(BenchmarkId::new("bare", &label), |b| {
                b.iter(|| {
                    driver.publish(&mem, RX_BATCH, RX_BATCH);
                    assert_eq!(bare_rx(&mut q, &mem, &irq, RX_BATCH), RX_BATCH);
                })
            });

            let transport = transport(&mem);
            let interrupt = transport.interrupt();
            let backend = NullBackend::new(FRAME_LEN).unwrap();
            let mut q = queue(&mem, event_idx);
            let mut rx = Rx::new(features, &q);
            let mut driver = Driver::new(1);
            driver.publish(&mem, QUEUE_SIZE - RX_BATCH, 0);
            group.bench_function(BenchmarkId::new("vmkit", &label), |b| {
                b.iter(|| {
                    driver.publish(&mem, RX_BATCH, RX_BATCH);
                    let got = vmkit_rx(
                        &mut rx,
                        &mut q,
                        &mem,
                        &backend,
                        interrupt.as_ref(),
                        RX_BATCH,
                    );
                    assert_eq!(got, u64::from(RX_BATCH));
                })
            });
            // The last frame's used entry: its full length; its header:
            // num_buffers 1.
            let last = q.next_used().wrapping_sub(1) % QUEUE_SIZE;
            let len: u32 = mem
                .read_obj(GuestAddress(USED_RING + 4 + u64::from(last) * 8 + 4))
                .unwrap();
            assert_eq!(len as usize, VNET_HDR_LEN + FRAME_LEN);
            let head: u32 = mem
                .read_obj(GuestAddress(USED_RING + 4 + u64::from(last) * 8))
                .unwrap();
            let num_buffers: u16 = mem
                .read_obj(GuestAddress(BUFFERS + u64::from(head) * BUFFER_STRIDE + 10))
                .unwrap();
            assert_eq!(num_buffers, 1);
        }
    }
    group.finish();
}

criterion_group!(benches, tx_benches, rx_benches);
criterion_main!(benches);
