//! Tests of the request logic and the queue handler, driving the device as
//! a guest driver would with virtio-queue's mock split queue, on a raw image
//! in a temp file (or an in-memory image where errors are injected).

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmkit_disk::{DiskImage, MemDisk, RawImage};
use vmkit_virtio::test_utils::{capture_log, limited_lines, warnings};
use vmkit_virtio::{GuestMemoryMmap, Interrupt, InterruptType};
use vmm_sys_util::tempdir::TempDir;

use crate::{
    BlockConfig, BlockHandler, BlockStats, DiskId, QUEUE_SIZE, RequestBuffers, RequestProcessor,
};

const MIB: u64 = 1 << 20;
/// Disk size: 1 MiB = 2048 sectors.
const DISK_SIZE: u64 = MIB;
const SECTORS: u64 = DISK_SIZE / 512;
/// Guest memory: two adjacent 2 MiB regions, so buffers can span regions.
const REGION: u64 = 2 * MIB;
const MEM_END: u64 = 2 * REGION;

const HDR: u64 = 0x1_0000;
const STATUS: u64 = 0x1_1000;
const INDIRECT: u64 = 0x1_8000;
const DATA: u64 = 0x2_0000;

/// A buffer of a chain: guest address, length, device-writable.
type Buf = (u64, u32, bool);
/// A discard/write-zeroes segment: sector, sectors, flags.
type Seg = (u64, u32, u32);
/// A named request: what it tests, type, sector, data buffers.
type Case = (&'static str, u32, u64, Vec<Buf>);

const R: bool = false;
const W: bool = true;

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
                .wrapping_mul(13)
                .wrapping_add(seed ^ (i >> 9) as u8)
        })
        .collect()
}

/// A raw image in a temp dir, filled with a known pattern.
struct TestImage {
    _dir: TempDir,
    path: PathBuf,
    initial: Vec<u8>,
}

impl TestImage {
    fn new() -> Self {
        let dir = TempDir::new_with_prefix("/tmp/vmkit-blk-test").unwrap();
        let path = dir.as_path().join("disk.img");
        let initial = pattern(DISK_SIZE as usize, 0x40);
        std::fs::write(&path, &initial).unwrap();
        TestImage {
            _dir: dir,
            path,
            initial,
        }
    }

    fn open(&self, read_only: bool) -> Arc<dyn DiskImage> {
        Arc::new(RawImage::open(&self.path, read_only).unwrap())
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }

    fn assert_unchanged(&self) {
        assert!(self.contents() == self.initial, "the image changed");
    }
}

/// A mock driver: a split queue in guest memory, and the device's handler.
struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    vq: MockSplitQueue<'a, GuestMemoryMmap>,
    handler: BlockHandler,
    irq: Arc<CountingInterrupt>,
    stats: Arc<BlockStats>,
    next_desc: u16,
}

impl<'a> Driver<'a> {
    fn new(mem: &'a GuestMemoryMmap, disk: Arc<dyn DiskImage>, event_idx: bool) -> Self {
        let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
        let mut queue: Queue = vq.create_queue().unwrap();
        queue.set_event_idx(event_idx);
        let config = BlockConfig::new(disk.as_ref(), QUEUE_SIZE);
        let processor =
            RequestProcessor::new(disk, config, DiskId::new("vmkit-test-serial").unwrap());
        let irq = Arc::new(CountingInterrupt::default());
        let stats = Arc::new(BlockStats::default());
        let handler = BlockHandler::new(mem.clone(), queue, processor, irq.clone(), stats.clone());
        Driver {
            mem,
            vq,
            handler,
            irq,
            stats,
            next_desc: 0,
        }
    }

    /// Makes a chain of `(addr, len, device-writable)` buffers available;
    /// returns its head index.
    fn add(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        let descs: Vec<RawDescriptor> = bufs
            .iter()
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
                Descriptor::new(addr, len, flags, head + i as u16 + 1).into()
            })
            .collect();
        self.vq.add_desc_chains(&descs, head).unwrap();
        self.next_desc += bufs.len() as u16;
        head
    }

    /// Makes an indirect chain available: the buffers go in a table at
    /// `table`, the ring gets one descriptor pointing to it.
    fn add_indirect(&mut self, table: u64, bufs: &[Buf]) -> u16 {
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let mut flags = if writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let desc: RawDescriptor = Descriptor::new(addr, len, flags, i as u16 + 1).into();
            self.mem
                .write_obj(desc, GuestAddress(table + 16 * i as u64))
                .unwrap();
        }
        let head = self.next_desc;
        let desc: RawDescriptor = Descriptor::new(
            table,
            16 * bufs.len() as u32,
            VRING_DESC_F_INDIRECT as u16,
            0,
        )
        .into();
        self.vq.add_desc_chains(&[desc], head).unwrap();
        self.next_desc += 1;
        head
    }

    fn run(&mut self) -> usize {
        self.handler.process_queue()
    }

    fn used_idx(&self) -> u16 {
        self.vq.used().idx().load()
    }

    /// The used ring's entry `i`: (descriptor id, length).
    fn used(&self, i: u16) -> (u32, u32) {
        let elem = self.vq.used().ring().ref_at(i as usize).unwrap().load();
        (elem.id(), elem.len())
    }

    fn set_used_event(&self, value: u16) {
        let addr = self.vq.avail_addr().0 + 4 + 2 * u64::from(QUEUE_SIZE);
        self.mem.write_obj(value, GuestAddress(addr)).unwrap();
    }
}

fn header(mem: &GuestMemoryMmap, addr: u64, request_type: u32, sector: u64) {
    let mut raw = [0u8; 16];
    raw[..4].copy_from_slice(&request_type.to_le_bytes());
    raw[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&raw, GuestAddress(addr)).unwrap();
}

fn segment(mem: &GuestMemoryMmap, addr: u64, sector: u64, num_sectors: u32, flags: u32) {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&sector.to_le_bytes());
    raw[8..12].copy_from_slice(&num_sectors.to_le_bytes());
    raw[12..].copy_from_slice(&flags.to_le_bytes());
    mem.write_slice(&raw, GuestAddress(addr)).unwrap();
}

fn status(mem: &GuestMemoryMmap, addr: u64) -> u8 {
    mem.read_obj(GuestAddress(addr)).unwrap()
}

fn poison_status(mem: &GuestMemoryMmap, addr: u64) {
    mem.write_obj(0xffu8, GuestAddress(addr)).unwrap();
}

fn read_mem(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// Submits one request `[header(type, sector), bufs.., status]` and returns
/// (status byte, used length).
fn submit(drv: &mut Driver<'_>, request_type: u32, sector: u64, bufs: &[Buf]) -> (u8, u32) {
    header(drv.mem, HDR, request_type, sector);
    poison_status(drv.mem, STATUS);
    let mut chain = vec![(HDR, 16, R)];
    chain.extend_from_slice(bufs);
    chain.push((STATUS, 1, W));
    let head = drv.add(&chain);
    let before = drv.used_idx();
    assert_eq!(drv.run(), 1);
    assert_eq!(drv.used_idx(), before.wrapping_add(1));
    let (id, len) = drv.used(before);
    assert_eq!(id, u32::from(head));
    (status(drv.mem, STATUS), len)
}

#[test]
fn write_read_flush_get_id_round_trip() {
    let img = TestImage::new();
    let mem = memory();
    let mut drv = Driver::new(&mem, img.open(false), false);

    let data = pattern(4096, 7);
    mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    assert_eq!(
        submit(&mut drv, VIRTIO_BLK_T_OUT, 10, &[(DATA, 4096, R)]),
        (OK, 1)
    );
    let file = img.contents();
    assert_eq!(&file[10 * 512..10 * 512 + 4096], &data[..]);
    assert_eq!(&file[..10 * 512], &img.initial[..10 * 512]);
    assert_eq!(&file[10 * 512 + 4096..], &img.initial[10 * 512 + 4096..]);

    // Read back 2 sectors from the middle of what was written, and the
    // last sector of the disk.
    let dst = DATA + 0x10000;
    assert_eq!(
        submit(&mut drv, VIRTIO_BLK_T_IN, 12, &[(dst, 1024, W)]),
        (OK, 1025)
    );
    assert_eq!(read_mem(&mem, dst, 1024), &data[1024..2048]);
    assert_eq!(
        submit(&mut drv, VIRTIO_BLK_T_IN, SECTORS - 1, &[(dst, 512, W)]),
        (OK, 513)
    );
    assert_eq!(
        read_mem(&mem, dst, 512),
        &img.initial[DISK_SIZE as usize - 512..]
    );

    assert_eq!(submit(&mut drv, VIRTIO_BLK_T_FLUSH, 0, &[]), (OK, 1));

    assert_eq!(
        submit(&mut drv, VIRTIO_BLK_T_GET_ID, 0, &[(dst, 20, W)]),
        (OK, 21)
    );
    assert_eq!(read_mem(&mem, dst, 20), b"vmkit-test-serial\0\0\0");
    // A short buffer gets what fits.
    mem.write_slice(&[0xee; 8], GuestAddress(dst)).unwrap();
    assert_eq!(
        submit(&mut drv, VIRTIO_BLK_T_GET_ID, 0, &[(dst, 5, W)]),
        (OK, 6)
    );
    assert_eq!(read_mem(&mem, dst, 8), b"vmkit\xee\xee\xee");

    assert_eq!(drv.stats.requests_completed(), 6);
    assert_eq!(drv.irq.count(), 6);
}

#[test]
fn multi_descriptor_chains_scatter_and_gather() {
    let img = TestImage::new();
    let mem = memory();
    let mut drv = Driver::new(&mem, img.open(false), false);

    // Segments of odd sizes (the total is whole sectors), one spanning the
    // boundary between the two guest memory regions.
    let data = pattern(3 * 512, 9);
    let span = REGION - 100;
    mem.write_slice(&data[..100], GuestAddress(DATA)).unwrap();
    mem.write_slice(&data[100..1000], GuestAddress(span))
        .unwrap();
    mem.write_slice(&data[1000..], GuestAddress(DATA + 0x4000))
        .unwrap();
    let bufs = [(DATA, 100, R), (span, 900, R), (DATA + 0x4000, 536, R)];
    assert_eq!(submit(&mut drv, VIRTIO_BLK_T_OUT, 100, &bufs), (OK, 1));
    assert_eq!(&img.contents()[100 * 512..103 * 512], &data[..]);

    let bufs = [
        (DATA + 0x8000, 512, W),
        (span, 1000, W),
        (DATA + 0x9000, 24, W),
    ];
    assert_eq!(submit(&mut drv, VIRTIO_BLK_T_IN, 100, &bufs), (OK, 1537));
    assert_eq!(read_mem(&mem, DATA + 0x8000, 512), &data[..512]);
    assert_eq!(read_mem(&mem, span, 1000), &data[512..1512]);
    assert_eq!(read_mem(&mem, DATA + 0x9000, 24), &data[1512..]);
}

#[test]
fn indirect_chains() {
    let img = TestImage::new();
    let mem = memory();
    let mut drv = Driver::new(&mem, img.open(false), false);

    let data = pattern(2048, 3);
    mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 64);
    poison_status(&mem, STATUS);
    let head = drv.add_indirect(
        INDIRECT,
        &[
            (HDR, 16, R),
            (DATA, 1024, R),
            (DATA + 1024, 1024, R),
            (STATUS, 1, W),
        ],
    );
    assert_eq!(drv.run(), 1);
    assert_eq!(drv.used(0), (u32::from(head), 1));
    assert_eq!(status(&mem, STATUS), OK);
    assert_eq!(&img.contents()[64 * 512..68 * 512], &data[..]);

    let hdr2 = HDR + 0x100;
    let status2 = STATUS + 0x100;
    header(&mem, hdr2, VIRTIO_BLK_T_IN, 65);
    poison_status(&mem, status2);
    let head = drv.add_indirect(
        INDIRECT + 0x1000,
        &[(hdr2, 16, R), (DATA + 0x10000, 1536, W), (status2, 1, W)],
    );
    assert_eq!(drv.run(), 1);
    assert_eq!(drv.used(1), (u32::from(head), 1537));
    assert_eq!(status(&mem, status2), OK);
    assert_eq!(read_mem(&mem, DATA + 0x10000, 1536), &data[512..]);
}

#[test]
fn malformed_chains_get_ioerr_and_leave_the_disk_alone() {
    let img = TestImage::new();
    let mem = memory();
    let mut drv = Driver::new(&mem, img.open(false), false);
    mem.write_slice(&pattern(8192, 1), GuestAddress(DATA))
        .unwrap();

    let cases: Vec<Case> = vec![
        (
            "OUT from a device-writable buffer",
            VIRTIO_BLK_T_OUT,
            0,
            vec![(DATA, 512, W)],
        ),
        (
            "OUT mixing directions",
            VIRTIO_BLK_T_OUT,
            0,
            vec![(DATA, 512, R), (DATA + 512, 512, W)],
        ),
        (
            "IN into a device-readable buffer",
            VIRTIO_BLK_T_IN,
            0,
            vec![(DATA, 512, R)],
        ),
        (
            "OUT of 513 bytes",
            VIRTIO_BLK_T_OUT,
            0,
            vec![(DATA, 513, R)],
        ),
        ("IN of 100 bytes", VIRTIO_BLK_T_IN, 0, vec![(DATA, 100, W)]),
        (
            "OUT past the end",
            VIRTIO_BLK_T_OUT,
            SECTORS - 1,
            vec![(DATA, 1024, R)],
        ),
        (
            "OUT at the end",
            VIRTIO_BLK_T_OUT,
            SECTORS,
            vec![(DATA, 512, R)],
        ),
        (
            "IN past the end",
            VIRTIO_BLK_T_IN,
            SECTORS,
            vec![(DATA, 512, W)],
        ),
        (
            "OUT with sector*512 overflowing",
            VIRTIO_BLK_T_OUT,
            u64::MAX / 512 + 1,
            vec![(DATA, 512, R)],
        ),
        (
            "OUT with sector+len overflowing",
            VIRTIO_BLK_T_OUT,
            u64::MAX,
            vec![(DATA, 512, R)],
        ),
        (
            "OUT from outside guest memory",
            VIRTIO_BLK_T_OUT,
            0,
            vec![(MEM_END, 512, R)],
        ),
        (
            "OUT straddling the end of guest memory",
            VIRTIO_BLK_T_OUT,
            0,
            vec![(MEM_END - 512, 1024, R)],
        ),
        (
            "OUT with a good then a bad buffer",
            VIRTIO_BLK_T_OUT,
            0,
            vec![(DATA, 512, R), (u64::MAX - 100, 512, R)],
        ),
        (
            "IN into outside guest memory",
            VIRTIO_BLK_T_IN,
            0,
            vec![(MEM_END + 0x1000, 512, W)],
        ),
        ("GET_ID without a buffer", VIRTIO_BLK_T_GET_ID, 0, vec![]),
        (
            "GET_ID into a readable buffer",
            VIRTIO_BLK_T_GET_ID,
            0,
            vec![(DATA, 20, R)],
        ),
    ];
    for (what, request_type, sector, bufs) in cases {
        let before = read_mem(&mem, MEM_END - 0x1000, 0x1000);
        assert_eq!(
            submit(&mut drv, request_type, sector, &bufs),
            (IOERR, 1),
            "{what}"
        );
        img.assert_unchanged();
        assert_eq!(read_mem(&mem, MEM_END - 0x1000, 0x1000), before, "{what}");
    }
    // IN requests must not have touched the readable buffer either.
    assert_eq!(read_mem(&mem, DATA, 8192), pattern(8192, 1));
}

#[test]
fn bad_headers_get_ioerr() {
    let img = TestImage::new();
    let mem = memory();
    let mut drv = Driver::new(&mem, img.open(false), false);
    mem.write_slice(&pattern(512, 1), GuestAddress(DATA))
        .unwrap();
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);

    let chains: Vec<(&str, Vec<Buf>)> = vec![
        (
            "header of 15 bytes",
            vec![(HDR, 15, R), (DATA, 512, R), (STATUS, 1, W)],
        ),
        (
            "header of 0 bytes",
            vec![(HDR, 0, R), (DATA, 512, R), (STATUS, 1, W)],
        ),
        (
            "device-writable header",
            vec![(HDR, 16, W), (DATA, 512, R), (STATUS, 1, W)],
        ),
        (
            "header outside guest memory",
            vec![(MEM_END - 8, 16, R), (DATA, 512, R), (STATUS, 1, W)],
        ),
        ("no header at all", vec![(STATUS, 1, W)]),
    ];
    for (i, (what, chain)) in chains.into_iter().enumerate() {
        poison_status(&mem, STATUS);
        let head = drv.add(&chain);
        assert_eq!(drv.run(), 1, "{what}");
        assert_eq!(drv.used(i as u16), (u32::from(head), 1), "{what}");
        assert_eq!(status(&mem, STATUS), IOERR, "{what}");
        img.assert_unchanged();
    }
}

#[test]
fn chains_without_a_usable_status_are_returned_with_len_0() {
    let img = TestImage::new();
    let mem = memory();
    let mut drv = Driver::new(&mem, img.open(false), false);
    mem.write_slice(&pattern(512, 1), GuestAddress(DATA))
        .unwrap();
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);

    let chains: Vec<(&str, Vec<Buf>)> = vec![
        (
            "status missing (last is the data)",
            vec![(HDR, 16, R), (DATA, 512, R)],
        ),
        (
            "device-readable status",
            vec![(HDR, 16, R), (DATA, 512, R), (STATUS, 1, R)],
        ),
        (
            "status of 0 bytes",
            vec![(HDR, 16, R), (DATA, 512, R), (STATUS, 0, W)],
        ),
        (
            "status outside guest memory",
            vec![(HDR, 16, R), (DATA, 512, R), (MEM_END, 1, W)],
        ),
        ("header only", vec![(HDR, 16, R)]),
    ];
    for (i, (what, chain)) in chains.into_iter().enumerate() {
        poison_status(&mem, STATUS);
        let head = drv.add(&chain);
        assert_eq!(drv.run(), 1, "{what}");
        assert_eq!(drv.used(i as u16), (u32::from(head), 0), "{what}");
        assert_eq!(status(&mem, STATUS), 0xff, "{what}");
        img.assert_unchanged();
        // The driver is told the ring is broken (once), and the queue
        // keeps being served.
        assert!(drv.handler.needs_reset(), "{what}");
        assert!(!drv.handler.is_stopped(), "{what}");
        assert_eq!(drv.irq.needs_reset(), 1, "{what}");
    }
    assert_eq!(drv.stats.requests_completed(), 5);
}

/// Writes raw descriptor `i` of the mock queue's table.
fn raw_desc(drv: &Driver<'_>, i: u16, addr: u64, len: u32, flags: u32, next: u16) {
    let desc: RawDescriptor = Descriptor::new(addr, len, flags as u16, next).into();
    let table = drv.vq.desc_table_addr().0;
    drv.mem
        .write_obj(desc, GuestAddress(table + 16 * u64::from(i)))
        .unwrap();
}

/// Makes the chain at `head` available (its descriptors written already).
fn make_available(drv: &Driver<'_>, head: u16) {
    let avail = drv.vq.avail_addr().0;
    let idx: u16 = drv.mem.read_obj(GuestAddress(avail + 2)).unwrap();
    let slot = u64::from(idx % QUEUE_SIZE);
    drv.mem
        .write_obj(head, GuestAddress(avail + 4 + 2 * slot))
        .unwrap();
    drv.mem
        .write_obj(idx.wrapping_add(1), GuestAddress(avail + 2))
        .unwrap();
}

#[test]
fn loops_and_chains_cut_short_are_not_executed_and_need_a_reset() {
    // virtio-queue's DescriptorChain stops silently after `queue size`
    // descriptors (or at a bad next/indirect descriptor): the prefix it
    // yields must not be taken for a request. Before the fix, an IN whose
    // data descriptor points at itself was read 254 times into the same
    // 512 bytes and answered with used length 254 * 512 + 1.
    let img = TestImage::new();
    let mem = memory();
    let nf = VRING_DESC_F_NEXT;
    let wf = VRING_DESC_F_WRITE;
    // (what, [(index, addr, len, flags, next)])
    type RawChain = Vec<(u16, u64, u32, u32, u16)>;
    let cases: Vec<(&str, RawChain)> = vec![
        (
            "data descriptor looping on itself",
            vec![(0, HDR, 16, nf, 1), (1, DATA, 512, wf | nf, 1)],
        ),
        (
            "status looping back to the header",
            vec![
                (0, HDR, 16, nf, 1),
                (1, DATA, 512, wf | nf, 2),
                (2, STATUS, 1, wf | nf, 0),
            ],
        ),
        (
            "next outside the table",
            vec![(0, HDR, 16, nf, 1), (1, STATUS, 1, wf | nf, QUEUE_SIZE + 7)],
        ),
        (
            "nested indirect table",
            vec![
                (0, HDR, 16, nf, 1),
                (1, INDIRECT, 32, VRING_DESC_F_INDIRECT, 0),
            ],
        ),
        (
            "indirect table of 20 bytes",
            vec![(0, INDIRECT, 20, VRING_DESC_F_INDIRECT, 0)],
        ),
    ];
    for (what, descs) in cases {
        let mut drv = Driver::new(&mem, img.open(false), false);
        header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
        poison_status(&mem, STATUS);
        mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
        // An indirect table whose entries are themselves indirect.
        for i in 0..2u64 {
            let d: RawDescriptor =
                Descriptor::new(INDIRECT + 0x100, 32, VRING_DESC_F_INDIRECT as u16, 0).into();
            mem.write_obj(d, GuestAddress(INDIRECT + 16 * i)).unwrap();
        }
        for &(i, addr, len, flags, next) in &descs {
            raw_desc(&drv, i, addr, len, flags, next);
        }
        make_available(&drv, 0);
        assert_eq!(drv.run(), 1, "{what}");
        assert_eq!(drv.used(0), (0, 0), "{what}: returned with used length 0");
        assert_eq!(status(&mem, STATUS), 0xff, "{what}: status written");
        assert_eq!(
            read_mem(&mem, DATA, 512),
            vec![0xee; 512],
            "{what}: data written"
        );
        assert_eq!(drv.irq.needs_reset(), 1, "{what}");
        assert!(drv.handler.needs_reset(), "{what}");

        // The queue is still served.
        assert_eq!(
            submit(&mut drv, VIRTIO_BLK_T_IN, 1, &[(DATA + 0x1000, 512, W)]),
            (OK, 513),
            "{what}"
        );
        assert_eq!(drv.irq.needs_reset(), 1, "{what}: signalled once");
    }
    img.assert_unchanged();
}

#[test]
fn an_indirect_table_longer_than_the_queue_gets_ioerr() {
    // 300 data descriptors in one indirect table: more than the queue size
    // and seg_max; answered with IOERR, nothing read or written.
    let img = TestImage::new();
    let mem = memory();
    let mut drv = Driver::new(&mem, img.open(false), false);
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
    poison_status(&mem, STATUS);
    let mut chain = vec![(HDR, 16, R)];
    chain.extend((0..300u64).map(|i| (DATA + 512 * i, 512, R)));
    chain.push((STATUS, 1, W));
    let head = drv.add_indirect(INDIRECT, &chain);
    assert_eq!(drv.run(), 1);
    assert_eq!(drv.used(0), (u32::from(head), 1));
    assert_eq!(status(&mem, STATUS), IOERR);
    assert_eq!(drv.irq.needs_reset(), 0);
    img.assert_unchanged();
}

#[test]
fn too_many_segments() {
    let img = TestImage::new();
    let mem = memory();
    let mut drv = Driver::new(&mem, img.open(false), false);
    let seg_max = u32::from(QUEUE_SIZE) - 2;
    mem.write_slice(&pattern(512 * 255, 5), GuestAddress(DATA))
        .unwrap();

    // seg_max + 1 data segments (an indirect table may hold more
    // descriptors than the queue).
    let mut chain = vec![(HDR, 16, R)];
    chain.extend((0..=seg_max).map(|i| (DATA + 512 * u64::from(i), 512, R)));
    chain.push((STATUS, 1, W));
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
    poison_status(&mem, STATUS);
    drv.add_indirect(INDIRECT, &chain);
    assert_eq!(drv.run(), 1);
    assert_eq!(drv.used(0).1, 1);
    assert_eq!(status(&mem, STATUS), IOERR);
    img.assert_unchanged();

    // seg_max segments are fine.
    chain.remove(chain.len() - 2);
    poison_status(&mem, STATUS);
    drv.add_indirect(INDIRECT + 0x2000, &chain);
    assert_eq!(drv.run(), 1);
    assert_eq!(status(&mem, STATUS), OK);
    assert_eq!(
        &img.contents()[..512 * 254],
        &pattern(512 * 255, 5)[..512 * 254]
    );
}

#[test]
fn read_only_disk_refuses_writes() {
    let img = TestImage::new();
    let mem = memory();
    let mut drv = Driver::new(&mem, img.open(true), false);
    mem.write_slice(&pattern(1024, 2), GuestAddress(DATA))
        .unwrap();
    segment(&mem, DATA + 0x1000, 0, 8, 0);

    assert_eq!(
        submit(&mut drv, VIRTIO_BLK_T_OUT, 0, &[(DATA, 1024, R)]),
        (IOERR, 1)
    );
    assert_eq!(
        submit(&mut drv, VIRTIO_BLK_T_DISCARD, 0, &[(DATA + 0x1000, 16, R)]),
        (IOERR, 1)
    );
    assert_eq!(
        submit(
            &mut drv,
            VIRTIO_BLK_T_WRITE_ZEROES,
            0,
            &[(DATA + 0x1000, 16, R)]
        ),
        (IOERR, 1)
    );
    img.assert_unchanged();
    // Reads and flushes work.
    assert_eq!(
        submit(&mut drv, VIRTIO_BLK_T_IN, 1, &[(DATA, 512, W)]),
        (OK, 513)
    );
    assert_eq!(read_mem(&mem, DATA, 512), &img.initial[512..1024]);
    assert_eq!(submit(&mut drv, VIRTIO_BLK_T_FLUSH, 0, &[]), (OK, 1));
}

#[test]
fn discard_and_write_zeroes_zero_the_range() {
    let img = TestImage::new();
    let mem = memory();
    let mut drv = Driver::new(&mem, img.open(false), false);
    let seg = DATA;

    segment(&mem, seg, 8, 16, 0);
    assert_eq!(
        submit(&mut drv, VIRTIO_BLK_T_DISCARD, 0, &[(seg, 16, R)]),
        (OK, 1)
    );
    segment(&mem, seg, 100, 3, 0);
    assert_eq!(
        submit(&mut drv, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(seg, 16, R)]),
        (OK, 1)
    );
    segment(&mem, seg, 200, 64, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    // The segment split over two descriptors.
    assert_eq!(
        submit(
            &mut drv,
            VIRTIO_BLK_T_WRITE_ZEROES,
            0,
            &[(seg, 10, R), (seg + 10, 6, R)]
        ),
        (OK, 1)
    );
    segment(&mem, seg, SECTORS - 1, 1, 0);
    assert_eq!(
        submit(&mut drv, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(seg, 16, R)]),
        (OK, 1)
    );

    let mut expected = img.initial.clone();
    expected[8 * 512..24 * 512].fill(0);
    expected[100 * 512..103 * 512].fill(0);
    expected[200 * 512..264 * 512].fill(0);
    expected[DISK_SIZE as usize - 512..].fill(0);
    assert!(img.contents() == expected);
}

#[test]
fn bad_discard_and_write_zeroes_requests() {
    let img = TestImage::new();
    let mem = memory();
    let mut drv = Driver::new(&mem, img.open(false), false);
    let seg = DATA;
    let unmap = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

    let cases: Vec<(&str, u32, Vec<Seg>, u32, u8)> = vec![
        (
            "discard with unmap",
            VIRTIO_BLK_T_DISCARD,
            vec![(0, 8, unmap)],
            16,
            UNSUPP,
        ),
        (
            "discard with an unknown flag",
            VIRTIO_BLK_T_DISCARD,
            vec![(0, 8, 2)],
            16,
            UNSUPP,
        ),
        (
            "write zeroes with an unknown flag",
            VIRTIO_BLK_T_WRITE_ZEROES,
            vec![(0, 8, 4 | unmap)],
            16,
            UNSUPP,
        ),
        (
            "two segments",
            VIRTIO_BLK_T_DISCARD,
            vec![(0, 8, 0), (16, 8, 0)],
            32,
            IOERR,
        ),
        (
            "two write zeroes segments",
            VIRTIO_BLK_T_WRITE_ZEROES,
            vec![(0, 8, 0), (16, 8, 0)],
            32,
            IOERR,
        ),
        (
            "partial segment",
            VIRTIO_BLK_T_DISCARD,
            vec![(0, 8, 0)],
            15,
            IOERR,
        ),
        (
            "segment past the end",
            VIRTIO_BLK_T_DISCARD,
            vec![(SECTORS - 4, 8, 0)],
            16,
            IOERR,
        ),
        (
            "write zeroes past the end",
            VIRTIO_BLK_T_WRITE_ZEROES,
            vec![(SECTORS, 1, 0)],
            16,
            IOERR,
        ),
        (
            "sector overflowing",
            VIRTIO_BLK_T_WRITE_ZEROES,
            vec![(u64::MAX - 2, 8, 0)],
            16,
            IOERR,
        ),
        (
            "segment too large",
            VIRTIO_BLK_T_DISCARD,
            vec![(0, crate::MAX_DISCARD_SECTORS + 1, 0)],
            16,
            IOERR,
        ),
    ];
    for (what, request_type, segs, len, expected) in cases {
        for (i, &(sector, n, flags)) in segs.iter().enumerate() {
            segment(&mem, seg + 16 * i as u64, sector, n, flags);
        }
        assert_eq!(
            submit(&mut drv, request_type, 0, &[(seg, len, R)]),
            (expected, 1),
            "{what}"
        );
        img.assert_unchanged();
    }
    // No payload at all.
    assert_eq!(submit(&mut drv, VIRTIO_BLK_T_DISCARD, 0, &[]), (IOERR, 1));
    // A device-writable payload.
    segment(&mem, seg, 0, 8, 0);
    assert_eq!(
        submit(&mut drv, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(seg, 16, W)]),
        (IOERR, 1)
    );
    img.assert_unchanged();
}

#[test]
fn unknown_request_types_are_unsupported() {
    let img = TestImage::new();
    let mem = memory();
    let mut drv = Driver::new(&mem, img.open(false), false);
    for t in [
        VIRTIO_BLK_T_SCSI_CMD,
        3,
        VIRTIO_BLK_T_SECURE_ERASE,
        VIRTIO_BLK_T_ZONE_REPORT,
        u32::MAX,
    ] {
        assert_eq!(
            submit(&mut drv, t, 0, &[(DATA, 512, W)]),
            (UNSUPP, 1),
            "type {t}"
        );
    }
    img.assert_unchanged();
}

#[test]
fn backend_errors_give_ioerr() {
    let mem = memory();
    let disk = Arc::new(MemDisk::new(DISK_SIZE as usize, false));
    let mut drv = Driver::new(&mem, disk.clone(), false);
    disk.fail_io(true);
    assert_eq!(
        submit(&mut drv, VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, R)]),
        (IOERR, 1)
    );
    // Nothing was read into the buffer: only the status byte is used.
    assert_eq!(
        submit(&mut drv, VIRTIO_BLK_T_IN, 0, &[(DATA, 512, W)]),
        (IOERR, 1)
    );
    assert_eq!(submit(&mut drv, VIRTIO_BLK_T_FLUSH, 0, &[]), (IOERR, 1));
    segment(&mem, DATA, 0, 8, 0);
    assert_eq!(
        submit(&mut drv, VIRTIO_BLK_T_DISCARD, 0, &[(DATA, 16, R)]),
        (IOERR, 1)
    );
    disk.fail_io(false);
    assert_eq!(submit(&mut drv, VIRTIO_BLK_T_FLUSH, 0, &[]), (OK, 1));
}

/// A disk whose `n`th write (counting from 1) fails with EIO, as a disk
/// failing in the middle of a request would; every other access goes to
/// the in-memory image.
#[derive(Debug)]
struct FailNthWrite {
    disk: MemDisk,
    writes: AtomicU64,
    fail_at: u64,
}

impl DiskImage for FailNthWrite {
    fn size(&self) -> u64 {
        self.disk.size()
    }

    fn is_read_only(&self) -> bool {
        false
    }

    fn read_at(
        &self,
        buf: &mut vm_memory::VolatileSlice<'_>,
        offset: u64,
    ) -> vmkit_disk::Result<()> {
        self.disk.read_at(buf, offset)
    }

    fn write_at(&self, buf: &vm_memory::VolatileSlice<'_>, offset: u64) -> vmkit_disk::Result<()> {
        if self.writes.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
            return Err(io::Error::from_raw_os_error(libc::EIO).into());
        }
        self.disk.write_at(buf, offset)
    }

    fn flush(&self) -> vmkit_disk::Result<()> {
        self.disk.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> vmkit_disk::Result<()> {
        self.disk.discard(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> vmkit_disk::Result<()> {
        self.disk.write_zeroes(offset, len, unmap)
    }
}

#[test]
fn a_write_failing_mid_request_gives_ioerr_and_later_requests_work() {
    let mem = memory();
    // The second write of the disk's life fails: the middle segment of a
    // three-segment request.
    let disk = Arc::new(FailNthWrite {
        disk: MemDisk::new(DISK_SIZE as usize, false),
        writes: AtomicU64::new(0),
        fail_at: 2,
    });
    let mut drv = Driver::new(&mem, disk.clone(), false);
    let data = pattern(3 * 512, 3);
    mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    let bufs = [(DATA, 512, R), (DATA + 512, 512, R), (DATA + 1024, 512, R)];
    // Nothing but the status is written to the driver's buffers.
    assert_eq!(submit(&mut drv, VIRTIO_BLK_T_OUT, 20, &bufs), (IOERR, 1));
    assert_eq!(
        disk.writes.load(Ordering::SeqCst),
        2,
        "stopped at the failure"
    );
    let contents = disk.disk.contents();
    // The segment before the failure may have landed (a failed write
    // leaves its range undefined); the one after it was never tried.
    assert_eq!(&contents[20 * 512..21 * 512], &data[..512]);
    assert!(contents[21 * 512..23 * 512].iter().all(|&b| b == 0));

    // The device goes on: the same request again, a read and a flush.
    assert_eq!(submit(&mut drv, VIRTIO_BLK_T_OUT, 20, &bufs), (OK, 1));
    let dst = DATA + 0x10000;
    assert_eq!(
        submit(&mut drv, VIRTIO_BLK_T_IN, 20, &[(dst, 3 * 512, W)]),
        (OK, 3 * 512 + 1)
    );
    assert_eq!(read_mem(&mem, dst, 3 * 512), data);
    assert_eq!(submit(&mut drv, VIRTIO_BLK_T_FLUSH, 0, &[]), (OK, 1));
    assert_eq!(drv.stats.requests_completed(), 4);
    assert_eq!(
        drv.irq.needs_reset(),
        0,
        "an I/O error is not a broken ring"
    );
}

#[test]
fn event_idx_suppresses_interrupts() {
    let img = TestImage::new();
    let mem = memory();
    let mut drv = Driver::new(&mem, img.open(false), true);

    // The driver wants an interrupt once used idx passes 5.
    drv.set_used_event(5);
    assert_eq!(submit(&mut drv, VIRTIO_BLK_T_FLUSH, 0, &[]), (OK, 1));
    assert_eq!(drv.irq.count(), 0, "used idx 1 does not pass used_event 5");
    for _ in 0..3 {
        submit(&mut drv, VIRTIO_BLK_T_FLUSH, 0, &[]);
    }
    assert_eq!(drv.irq.count(), 0, "used idx 4");
    // A batch of two moves used idx from 4 to 6, past 5: one interrupt.
    for _ in 0..2 {
        header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
        drv.add(&[(HDR, 16, R), (STATUS, 1, W)]);
    }
    assert_eq!(drv.run(), 2);
    assert_eq!(drv.used_idx(), 6);
    assert_eq!(drv.irq.count(), 1);
    // While draining, the device asked to be notified only after what it
    // has seen: avail_event == next avail.
    let avail_event_addr = drv.vq.used_addr().0 + 4 + 8 * u64::from(QUEUE_SIZE);
    let avail_event: u16 = mem.read_obj(GuestAddress(avail_event_addr)).unwrap();
    assert_eq!(avail_event, 6);

    assert_eq!(drv.stats.requests_completed(), 6);
    assert_eq!(drv.stats.interrupts_sent(), 1);
}

#[test]
fn without_event_idx_every_batch_interrupts() {
    let img = TestImage::new();
    let mem = memory();
    let mut drv = Driver::new(&mem, img.open(false), false);
    drv.set_used_event(100);
    for _ in 0..3 {
        header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
        drv.add(&[(HDR, 16, R), (STATUS, 1, W)]);
    }
    assert_eq!(drv.run(), 3);
    assert_eq!(drv.irq.count(), 1);
    submit(&mut drv, VIRTIO_BLK_T_FLUSH, 0, &[]);
    assert_eq!(drv.irq.count(), 2);
    // An empty queue: no work, no interrupt.
    assert_eq!(drv.run(), 0);
    assert_eq!(drv.irq.count(), 2);
}

#[test]
fn broken_rings_do_not_hang_or_panic() {
    let img = TestImage::new();
    let mem = memory();
    for event_idx in [false, true] {
        let mut drv = Driver::new(&mem, img.open(false), event_idx);
        // An available index far ahead of what the driver can have added.
        let avail_idx_addr = drv.vq.avail_addr().0 + 2;
        mem.write_obj(1000u16, GuestAddress(avail_idx_addr))
            .unwrap();
        assert_eq!(drv.run(), 0);
        assert_eq!(drv.irq.count(), 0);
        // The device asks for a reset and stops touching the queue, also
        // once the index looks sane again: a storm of notifications costs
        // one check each.
        assert_eq!(drv.irq.needs_reset(), 1);
        assert!(drv.handler.is_stopped());
        mem.write_obj(0u16, GuestAddress(avail_idx_addr)).unwrap();
        let head = drv.add(&[(HDR, 16, R), (STATUS, 1, W)]);
        assert_eq!(head, 0);
        for _ in 0..10_000 {
            assert_eq!(drv.run(), 0);
        }
        assert_eq!(drv.used_idx(), 0);
        assert_eq!(drv.irq.needs_reset(), 1);
        drop(drv);

        // A head index outside the descriptor table.
        let mut drv = Driver::new(&mem, img.open(false), event_idx);
        let ring_addr = drv.vq.avail_addr().0 + 4;
        mem.write_obj(QUEUE_SIZE + 3, GuestAddress(ring_addr))
            .unwrap();
        mem.write_obj(1u16, GuestAddress(avail_idx_addr)).unwrap();
        assert_eq!(drv.run(), 0);
        assert_eq!(drv.used_idx(), 0);
        // It cannot be returned: the device asks for a reset.
        assert_eq!(drv.irq.needs_reset(), 1);
    }
    img.assert_unchanged();
}

/// Writes the chain `[header, 512-byte IN buffer, status]` at descriptors
/// 0 to 2, to be made available again and again.
fn reusable_read(drv: &Driver<'_>, sector: u64) {
    header(drv.mem, HDR, VIRTIO_BLK_T_IN, sector);
    let (nf, wf) = (VRING_DESC_F_NEXT, VRING_DESC_F_WRITE);
    raw_desc(drv, 0, HDR, 16, nf, 1);
    raw_desc(drv, 1, DATA, 512, wf | nf, 2);
    raw_desc(drv, 2, STATUS, 1, wf, 0);
}

#[test]
fn a_flood_of_bad_requests_logs_a_few_lines() {
    const REQUESTS: u64 = 100_000;
    let mem = memory();
    let disk = Arc::new(MemDisk::new(DISK_SIZE as usize, false));
    let mut drv = Driver::new(&mem, disk.clone(), false);
    // A read past the end of the disk, again and again.
    reusable_read(&drv, SECTORS);
    let ((), lines) = capture_log(|| {
        for _ in 0..REQUESTS {
            poison_status(&mem, STATUS);
            make_available(&drv, 0);
            assert_eq!(drv.run(), 1);
            assert_eq!(status(&mem, STATUS), IOERR);
        }
    });
    assert_eq!(drv.stats.requests_completed(), REQUESTS);
    let lines = warnings(&lines);
    // 1..=10, then 16, 32, ..., 65536.
    assert_eq!(lines.len(), 23, "{lines:#?}");
    assert_eq!(lines.len(), limited_lines(REQUESTS));
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("virtio-blk: bad request: "))
    );
    assert!(
        lines[0].ends_with("(1 bad requests so far)"),
        "{}",
        lines[0]
    );
    assert!(
        lines[22].ends_with("(65536 bad requests so far)"),
        "{}",
        lines[22]
    );

    // Neither a disk error nor a broken chain is hidden by the flood.
    disk.fail_io(true);
    reusable_read(&drv, 0);
    make_available(&drv, 0);
    let ((), lines) = capture_log(|| assert_eq!(drv.run(), 1));
    assert_eq!(status(&mem, STATUS), IOERR);
    let lines = warnings(&lines);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].ends_with("(1 disk errors so far)"), "{}", lines[0]);
    // A data descriptor looping on itself.
    raw_desc(
        &drv,
        1,
        DATA,
        512,
        VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
        1,
    );
    make_available(&drv, 0);
    let ((), lines) = capture_log(|| assert_eq!(drv.run(), 1));
    let lines = warnings(&lines);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("returned unanswered"), "{}", lines[0]);
    assert!(lines[0].ends_with("(1 ring errors so far)"), "{}", lines[0]);
}

#[test]
fn a_flood_of_broken_chains_logs_a_few_lines() {
    // Each chain costs a walk of the whole queue (256 descriptors).
    const CHAINS: u64 = 10_000;
    let img = TestImage::new();
    let mem = memory();
    let mut drv = Driver::new(&mem, img.open(false), false);
    // A data descriptor looping on itself: never executed, returned with
    // used length 0.
    reusable_read(&drv, 0);
    raw_desc(
        &drv,
        1,
        DATA,
        512,
        VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
        1,
    );
    let ((), lines) = capture_log(|| {
        for _ in 0..CHAINS {
            make_available(&drv, 0);
            assert_eq!(drv.run(), 1);
        }
    });
    assert_eq!(drv.irq.needs_reset(), 1, "signalled once");
    let lines = warnings(&lines);
    assert_eq!(lines.len(), limited_lines(CHAINS), "{lines:#?}");
    assert!(lines.iter().all(|l| l.contains("ring errors so far")));

    // The same through RequestProcessor::process, as vhost-user calls it:
    // an empty chain.
    let disk: Arc<dyn DiskImage> = Arc::new(MemDisk::new(DISK_SIZE as usize, false));
    let config = BlockConfig::new(disk.as_ref(), QUEUE_SIZE);
    let processor = RequestProcessor::new(disk, config, DiskId::from_index(0));
    let mut buffers = RequestBuffers::new();
    let ((), lines) = capture_log(|| {
        for _ in 0..100_000 {
            assert_eq!(processor.process(&mem, Vec::new(), &mut buffers), 0);
        }
    });
    let lines = warnings(&lines);
    assert_eq!(lines.len(), limited_lines(100_000), "{lines:#?}");
    assert!(lines.iter().all(|l| l.contains("dropping the request")));
    img.assert_unchanged();
}

#[test]
fn a_flood_of_head_indexes_past_the_queue_logs_a_few_lines() {
    // virtio-queue's `add_used` prints an error line of its own for each
    // such head; the handler refuses them before it does.
    const CHAINS: u64 = 100_000;
    let mem = memory();
    let disk = Arc::new(MemDisk::new(DISK_SIZE as usize, false));
    let mut drv = Driver::new(&mem, disk, false);
    let ((), lines) = capture_log(|| {
        for i in 0..CHAINS {
            make_available(&drv, QUEUE_SIZE + (i % 2) as u16 * 0x7fff);
            assert_eq!(drv.run(), 0);
        }
    });
    assert_eq!(drv.stats.requests_completed(), 0, "nothing can be returned");
    assert_eq!(drv.handler.queue().next_used(), 0);
    assert_eq!(drv.irq.needs_reset(), 1, "signalled once");
    // Two ring errors per chain: unanswerable, and not returnable.
    assert_eq!(lines.len(), limited_lines(2 * CHAINS), "{lines:#?}");
    assert!(
        lines
            .iter()
            .all(|l| l.level == log::Level::Warn && l.message.starts_with("virtio-blk: ")),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| {
        l.message
            .contains("cannot return descriptor 256 to the used ring")
    }));
}

#[test]
fn raw_image_file_is_the_disk() {
    // The device reads what another writer put in the file.
    let img = TestImage::new();
    let mut contents = img.initial.clone();
    contents[512..1024].copy_from_slice(&[0x77; 512]);
    File::create(&img.path).unwrap();
    std::fs::write(&img.path, &contents).unwrap();
    let mem = memory();
    let mut drv = Driver::new(&mem, img.open(true), false);
    assert_eq!(
        submit(&mut drv, VIRTIO_BLK_T_IN, 1, &[(DATA, 512, W)]),
        (OK, 513)
    );
    assert_eq!(read_mem(&mem, DATA, 512), vec![0x77; 512]);
}
