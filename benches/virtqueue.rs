//! Device-side virtqueue throughput: our stack (virtio-blk request parsing,
//! validation and execution on a null disk, used ring, interrupt decision and
//! the virtio-mmio transport's interrupt) beside a bare virtio-queue loop
//! that pops and returns the same chains.
//!
//! ```text
//! cargo bench --bench virtqueue
//! ```
//!
//! Each iteration publishes a full ring of 256 write requests (a 16-byte
//! header, `segments` data descriptors of 512 bytes, a 1-byte status:
//! chains of `segments + 2` descriptors) and has the device drain it, as
//! after one notification. "bare" walks every descriptor of every chain,
//! returns it to the used ring and interrupts the driver through an eventfd
//! when the queue says so (re-arming notifications with EVENT_IDX), which
//! any device must do; "vmkit" does what our device does. The ratio
//! vmkit/bare is the stack's overhead.

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use virtio_queue::{Queue, QueueT};
use vmkit::blk::{BlockConfig, BlockHandler, BlockStats, DiskId, RequestProcessor};
use vmkit::disk::{DiskImage, NullDisk};
use vmkit::memory::GuestMemoryMmap;
use vmkit::memory::vm_memory::{Address, Bytes, GuestAddress};
use vmkit::virtio::test_utils::NoopNotify;
use vmkit::virtio::{MmioTransport, VirtioDevice};
use vmm_sys_util::eventfd::EventFd;

const QUEUE_SIZE: u16 = 256;
const DESC_TABLE: u64 = 0x10_0000;
const AVAIL_RING: u64 = 0x20_0000;
const USED_RING: u64 = 0x30_0000;
const HEADERS: u64 = 0x40_0000;
const DATA: u64 = 0x100_0000;
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTIO_BLK_T_OUT: u32 = 1;

/// Guest memory holding a descriptor table in which chain `i` starts at
/// descriptor `i * (segments + 2)`, with all the ring entries it needs.
fn guest(segments: u16) -> (GuestMemoryMmap, Vec<u16>) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let per_chain = segments + 2;
    let chains = QUEUE_SIZE / per_chain;
    let mut heads = Vec::new();
    let desc = |i: u16, addr: u64, len: u32, flags: u16| {
        let at = GuestAddress(DESC_TABLE + u64::from(i) * 16);
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, at.unchecked_add(8)).unwrap();
        mem.write_obj(flags, at.unchecked_add(12)).unwrap();
        mem.write_obj(i + 1, at.unchecked_add(14)).unwrap();
    };
    for c in 0..chains {
        let head = c * per_chain;
        let header = HEADERS + u64::from(c) * 32;
        mem.write_obj(VIRTIO_BLK_T_OUT, GuestAddress(header))
            .unwrap();
        mem.write_obj(u64::from(c) * 8, GuestAddress(header + 8))
            .unwrap();
        desc(head, header, 16, VIRTQ_DESC_F_NEXT);
        for s in 0..segments {
            let data = DATA + (u64::from(c) * 64 + u64::from(s)) * 512;
            desc(head + 1 + s, data, 512, VIRTQ_DESC_F_NEXT);
        }
        desc(head + 1 + segments, header + 16, 1, VIRTQ_DESC_F_WRITE);
        heads.push(head);
    }
    (mem, heads)
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

/// The driver's side: makes `heads` available again (fills a whole ring's
/// worth of requests) and, with EVENT_IDX, asks for one interrupt when the
/// last of them is used.
struct Driver {
    avail_idx: u16,
    heads: Vec<u16>,
}

impl Driver {
    fn publish(&mut self, mem: &GuestMemoryMmap) -> u64 {
        let n = self.heads.len() as u16;
        for (i, &head) in self.heads.iter().enumerate() {
            let slot = (self.avail_idx.wrapping_add(i as u16) % QUEUE_SIZE) as u64;
            mem.write_obj(head, GuestAddress(AVAIL_RING + 4 + slot * 2))
                .unwrap();
        }
        self.avail_idx = self.avail_idx.wrapping_add(n);
        // used_event: interrupt once the whole batch is used.
        let used_event = self.avail_idx.wrapping_sub(1);
        mem.write_obj(
            used_event,
            GuestAddress(AVAIL_RING + 4 + u64::from(QUEUE_SIZE) * 2),
        )
        .unwrap();
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        mem.write_obj(self.avail_idx, GuestAddress(AVAIL_RING + 2))
            .unwrap();
        u64::from(n)
    }
}

/// The bare loop: pop every chain, walk its descriptors, return it; then,
/// as any device must, tell the driver where to notify next (EVENT_IDX)
/// and interrupt it if it asked to be.
fn bare(q: &mut Queue, mem: &GuestMemoryMmap, irq: &EventFd) -> usize {
    let mut n = 0;
    while let Some(chain) = q.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let mut len = 0u32;
        for d in chain {
            len = len.wrapping_add(d.len());
        }
        q.add_used(mem, head, std::hint::black_box(len) & 1)
            .unwrap();
        n += 1;
    }
    if q.event_idx_enabled() {
        // Sets avail_event; the driver added nothing meanwhile.
        assert!(!q.enable_notification(mem).unwrap());
    }
    if q.needs_notification(mem).unwrap() {
        irq.write(1).unwrap();
    }
    n
}

/// Our device's queue handler, interrupting through a real transport (kept
/// alive beside it).
fn vmkit_handler(mem: &GuestMemoryMmap, event_idx: bool) -> (BlockHandler, MmioTransport) {
    let disk: Arc<dyn DiskImage> = Arc::new(NullDisk::new(1 << 30));
    let config = BlockConfig::new(disk.as_ref(), QUEUE_SIZE);
    let processor = RequestProcessor::new(disk.clone(), config, DiskId::from_index(0));
    // The interrupt path is the real transport's, over an eventfd line.
    let device: Box<dyn VirtioDevice> =
        Box::new(vmkit::blk::Block::new(disk, DiskId::from_index(0)));
    let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let transport =
        MmioTransport::new(device, mem.clone(), irq, Arc::new(NoopNotify), 0xc000_0000).unwrap();
    let handler = BlockHandler::new(
        mem.clone(),
        queue(mem, event_idx),
        processor,
        transport.interrupt(),
        Arc::new(BlockStats::default()),
    );
    (handler, transport)
}

fn virtqueue(c: &mut Criterion) {
    let mut group = c.benchmark_group("virtqueue");
    for segments in [1u16, 3, 16] {
        for event_idx in [false, true] {
            let label = format!(
                "{} descriptors{}",
                segments + 2,
                if event_idx { ", event_idx" } else { "" }
            );
            let (mem, heads) = guest(segments);
            group.throughput(Throughput::Elements(heads.len() as u64));

            let mut q = queue(&mem, event_idx);
            let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let mut driver = Driver {
                avail_idx: 0,
                heads: heads.clone(),
            };
            group.bench_function(BenchmarkId::new("bare", &label), |b| {
                b.iter(|| {
                    driver.publish(&mem);
                    assert_eq!(bare(&mut q, &mem, &irq), driver.heads.len());
                })
            });

            let (mut handler, _transport) = vmkit_handler(&mem, event_idx);
            let mut driver = Driver {
                avail_idx: 0,
                heads,
            };
            group.bench_function(BenchmarkId::new("vmkit", &label), |b| {
                b.iter(|| {
                    driver.publish(&mem);
                    assert_eq!(handler.process_queue(), driver.heads.len());
                })
            });
            // Every request must have succeeded (status 0 = VIRTIO_BLK_S_OK).
            let status: u8 = mem.read_obj(GuestAddress(HEADERS + 16)).unwrap();
            assert_eq!(status, 0, "the device failed the benchmark's requests");
        }
    }
    group.finish();
}

criterion_group!(benches, virtqueue);
criterion_main!(benches);
