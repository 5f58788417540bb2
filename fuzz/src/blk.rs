//! `blk_request`: virtio-blk requests from a hostile driver.
//!
//! The fuzz input lays out a request queue (mostly well-formed requests of
//! every type, mutated; or a raw descriptor table), guest memory bytes and
//! the device's limits. The chains are then processed twice:
//!
//! 1. one by one with [`RequestProcessor::process`], each checked against a
//!    model of the spec written here: the status byte and used length, the
//!    whole of guest memory (only device-writable buffers change, with the
//!    disk's bytes, the serial or the status) and the whole disk (changed
//!    only by OUT, WRITE_ZEROES and DISCARD requests with valid headers,
//!    inside the capacity, with the guest's bytes or zeros);
//! 2. all at once by [`BlockHandler::process_queue`] on a copy, which must
//!    end in the same guest memory and disk (and not hang).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arbitrary::{Result, Unstructured};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::QueueT;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};
use vmkit_blk::{
    BlockConfig, BlockHandler, BlockStats, DiskId, QUEUE_SIZE, RequestBuffers, RequestProcessor,
};
use vmkit_disk::MemDisk;
use vmkit_virtio::{GuestMemoryMmap, Interrupt, InterruptType};

use crate::guest::{self, Buf, QueueLayout};

/// The disk: 64 KiB, 128 sectors.
const DISK_SIZE: usize = 64 << 10;
const SECTOR: u64 = 512;
const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
const SERIAL: &str = "fuzz-serial-0123";

/// Runs one input.
pub fn run(data: &[u8]) {
    let _ = fuzz(&mut Unstructured::new(data));
}

#[derive(Default)]
struct CountingInterrupt(AtomicU64);

impl Interrupt for CountingInterrupt {
    fn trigger(&self, kind: InterruptType) -> io::Result<()> {
        assert_eq!(
            kind,
            InterruptType::UsedRing,
            "virtio-blk raises only used-ring interrupts"
        );
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn request_type(u: &mut Unstructured<'_>) -> Result<u32> {
    Ok(match u.int_in_range(0..=12u8)? {
        0..=2 => VIRTIO_BLK_T_IN,
        3..=5 => VIRTIO_BLK_T_OUT,
        6 => VIRTIO_BLK_T_FLUSH,
        7 => VIRTIO_BLK_T_GET_ID,
        8 | 9 => VIRTIO_BLK_T_DISCARD,
        10 | 11 => VIRTIO_BLK_T_WRITE_ZEROES,
        _ => u.arbitrary()?,
    })
}

/// A sector near the disk, or anything.
fn sector(u: &mut Unstructured<'_>) -> Result<u64> {
    let capacity = (DISK_SIZE as u64) / SECTOR;
    Ok(match u.int_in_range(0..=7u8)? {
        0..=5 => u.int_in_range(0..=capacity + 2)?,
        6 => u64::MAX - u64::from(u.arbitrary::<u8>()?),
        _ => u.arbitrary()?,
    })
}

/// Writes `bytes` at `addr` if they are all in guest memory.
fn put(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) {
    if guest::in_memory(addr, bytes.len() as u64) {
        mem.write_slice(bytes, GuestAddress(addr))
            .expect("in memory");
    }
}

/// One request: header (written to memory), data buffers, status.
fn request(u: &mut Unstructured<'_>, mem: &GuestMemoryMmap) -> Result<Vec<Buf>> {
    let typ = request_type(u)?;
    let hdr = Buf {
        addr: guest::addr(u)?,
        len: if u.ratio(7, 8)? {
            16
        } else {
            guest::len(u, 1, &[15, 16, 17])?
        },
        write: false,
    };
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&typ.to_le_bytes());
    if u.ratio(1, 16)? {
        header[4..8].copy_from_slice(&u.arbitrary::<u32>()?.to_le_bytes());
    }
    header[8..].copy_from_slice(&sector(u)?.to_le_bytes());
    put(mem, hdr.addr, &header);

    let segments = matches!(typ, VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES);
    let writable = matches!(typ, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID);
    let count = if u.ratio(1, 16)? {
        u.int_in_range(0..=20usize)?
    } else {
        u.int_in_range(0..=3usize)?
    };
    let mut bufs = vec![hdr];
    for _ in 0..count {
        let addr = guest::addr(u)?;
        let len = if segments && u.ratio(3, 4)? {
            16 * u.int_in_range(1..=2u32)?
        } else if typ == VIRTIO_BLK_T_GET_ID && u.ratio(1, 2)? {
            u.int_in_range(0..=24u32)?
        } else {
            guest::len(u, SECTOR as u32, &[16, 20, 512, 4096])?
        };
        if segments {
            // Segments: sector, num_sectors, flags.
            for k in 0..(len / 16).min(4) {
                let mut seg = [0u8; 16];
                seg[..8].copy_from_slice(&sector(u)?.to_le_bytes());
                let num: u32 = match u.int_in_range(0..=5u8)? {
                    0..=3 => u.int_in_range(0..=16u32)?,
                    4 => u.int_in_range(0..=200u32)?,
                    _ => u.arbitrary()?,
                };
                seg[8..12].copy_from_slice(&num.to_le_bytes());
                let flags: u32 = match u.int_in_range(0..=5u8)? {
                    0..=2 => 0,
                    3 | 4 => VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
                    _ => u.arbitrary()?,
                };
                seg[12..].copy_from_slice(&flags.to_le_bytes());
                put(mem, addr.wrapping_add(16 * u64::from(k)), &seg);
            }
        }
        bufs.push(Buf {
            addr,
            len,
            write: writable,
        });
    }
    let status = Buf {
        addr: guest::addr(u)?,
        len: if u.ratio(7, 8)? {
            1
        } else {
            guest::len(u, 1, &[0, 1, 2])?
        },
        write: true,
    };
    bufs.push(status);
    if u.ratio(1, 32)? {
        // Without a header, or without a status.
        let i = u.choose_index(bufs.len())?;
        bufs.remove(i);
    }
    Ok(bufs)
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

/// What a request must do, by the spec and the device's limits.
struct Expected {
    used_len: u32,
    mem: Vec<u8>,
    disk: Vec<u8>,
}

struct Model<'a> {
    config: &'a BlockConfig,
    read_only: bool,
    fail_io: bool,
    id: &'a [u8],
}

impl Model<'_> {
    /// The outcome of the chain `descs` on guest memory `mem` and disk
    /// `disk` (snapshots taken just before it).
    fn expect(&self, mem: &[u8], disk: &[u8], descs: &[Descriptor]) -> Expected {
        let mut out = Expected {
            used_len: 0,
            mem: mem.to_vec(),
            disk: disk.to_vec(),
        };
        let Some((status, rest)) = descs.split_last() else {
            return out;
        };
        if status.has_next()
            || !status.is_write_only()
            || status.len() == 0
            || !guest::in_memory(status.addr().0, 1)
        {
            // Cannot be answered (virtio-queue cut the chain short, or no
            // status byte): nothing may happen.
            return out;
        }
        let (st, written) = self.execute(&mut out, rest);
        out.mem[status.addr().0 as usize] = st;
        out.used_len = written + 1;
        out
    }

    /// Checks that every buffer of `data` has the direction `writable` and
    /// lies in guest memory; returns their total length.
    fn data_ok(data: &[Descriptor], writable: bool) -> Option<u64> {
        let mut total = 0u64;
        for d in data {
            if d.is_write_only() != writable || !guest::in_memory(d.addr().0, u64::from(d.len())) {
                return None;
            }
            total += u64::from(d.len());
        }
        Some(total)
    }

    fn range_ok(&self, sector: u64, sectors: u64) -> bool {
        sector
            .checked_add(sectors)
            .is_some_and(|end| end <= self.config.capacity)
    }

    /// Returns the status and the bytes written to the data buffers.
    fn execute(&self, out: &mut Expected, rest: &[Descriptor]) -> (u8, u32) {
        let Some((hdr, data)) = rest.split_first() else {
            return (IOERR, 0);
        };
        if hdr.is_write_only() || hdr.len() < 16 || !guest::in_memory(hdr.addr().0, 16) {
            return (IOERR, 0);
        }
        let raw = guest::bytes(&out.mem, hdr.addr().0, 16).to_vec();
        let (typ, sector) = (le32(&raw), le64(&raw[8..]));
        match typ {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                let reading = typ == VIRTIO_BLK_T_IN;
                if data.len() > self.config.seg_max as usize || (!reading && self.read_only) {
                    return (IOERR, 0);
                }
                let Some(total) = Self::data_ok(data, reading) else {
                    return (IOERR, 0);
                };
                if total % SECTOR != 0 || !self.range_ok(sector, total / SECTOR) {
                    return (IOERR, 0);
                }
                if total == 0 {
                    return (OK, 0);
                }
                if self.fail_io {
                    return (IOERR, 0);
                }
                let mut off = (sector * SECTOR) as usize;
                for d in data {
                    let (a, n) = (d.addr().0 as usize, d.len() as usize);
                    if n == 0 {
                        // Valid at any address, and moves nothing.
                        continue;
                    }
                    if reading {
                        out.mem[a..a + n].copy_from_slice(&out.disk[off..off + n]);
                    } else {
                        out.disk[off..off + n].copy_from_slice(&out.mem[a..a + n]);
                    }
                    off += n;
                }
                (OK, if reading { total as u32 } else { 0 })
            }
            VIRTIO_BLK_T_FLUSH => (if self.fail_io { IOERR } else { OK }, 0),
            VIRTIO_BLK_T_GET_ID => {
                let Some(total) = Self::data_ok(data, true) else {
                    return (IOERR, 0);
                };
                if total == 0 {
                    return (IOERR, 0);
                }
                let mut rest = self.id;
                let mut written = 0;
                for d in data {
                    let n = rest.len().min(d.len() as usize);
                    if n == 0 {
                        continue;
                    }
                    let a = d.addr().0 as usize;
                    out.mem[a..a + n].copy_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    written += n as u32;
                }
                (OK, written)
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                let discard = typ == VIRTIO_BLK_T_DISCARD;
                if self.read_only {
                    return (IOERR, 0);
                }
                let Some(total) = Self::data_ok(data, false) else {
                    return (IOERR, 0);
                };
                let (max_seg, max_sectors) = if discard {
                    (self.config.max_discard_seg, self.config.max_discard_sectors)
                } else {
                    (
                        self.config.max_write_zeroes_seg,
                        self.config.max_write_zeroes_sectors,
                    )
                };
                if total == 0 || total % 16 != 0 || total / 16 > u64::from(max_seg) {
                    return (IOERR, 0);
                }
                let mut payload = Vec::new();
                for d in data.iter().filter(|d| d.len() > 0) {
                    payload.extend_from_slice(guest::bytes(
                        &out.mem,
                        d.addr().0,
                        u64::from(d.len()),
                    ));
                }
                let mut ranges = Vec::new();
                for seg in payload.chunks_exact(16) {
                    let (sector, num, flags) = (le64(seg), le32(&seg[8..]), le32(&seg[12..]));
                    let allowed = if discard {
                        0
                    } else {
                        VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
                    };
                    if flags & !allowed != 0 {
                        return (UNSUPP, 0);
                    }
                    if num > max_sectors || !self.range_ok(sector, u64::from(num)) {
                        return (IOERR, 0);
                    }
                    ranges.push(
                        (sector * SECTOR) as usize..((sector + u64::from(num)) * SECTOR) as usize,
                    );
                }
                if self.fail_io {
                    return (IOERR, 0);
                }
                // MemDisk reads discarded ranges as zeros.
                for r in ranges {
                    out.disk[r].fill(0);
                }
                (OK, 0)
            }
            _ => (UNSUPP, 0),
        }
    }
}

fn fuzz(u: &mut Unstructured<'_>) -> Result<()> {
    let mem = guest::memory();
    guest::scribble(u, &mem)?;
    let size = QueueLayout::fuzz_size(u)?;
    if std::env::var_os("VMKIT_FUZZ_TRACE").is_some() {
        eprintln!("blk: size {size} left {}", u.len());
    }
    let mut layout = QueueLayout::new(size);
    let read_only = u.ratio(1, 8)?;
    let fail_io = u.ratio(1, 16)?;
    let event_idx: bool = u.arbitrary()?;

    let initial: Vec<u8> = (0..DISK_SIZE)
        .map(|i| (i as u8).wrapping_mul(7) ^ (i >> 9) as u8)
        .collect();
    let disk = Arc::new(MemDisk::with_contents(initial.clone(), read_only));
    let mut config = BlockConfig::new(disk.as_ref(), QUEUE_SIZE);
    if u.ratio(1, 4)? {
        config.seg_max = u.int_in_range(0..=4u32)?;
        config.max_discard_seg = u.int_in_range(0..=3u32)?;
        config.max_write_zeroes_seg = u.int_in_range(0..=3u32)?;
        config.max_discard_sectors = u.int_in_range(0..=64u32)?;
        config.max_write_zeroes_sectors = u.int_in_range(0..=64u32)?;
    }
    let id = DiskId::new(SERIAL).expect("serial");

    if u.ratio(1, 8)? {
        layout.add_raw(u, SECTOR as u32, &[1, 16, 512])?;
    } else {
        while layout.free() > 0 && !u.is_empty() {
            let bufs = request(u, &mem)?;
            if !layout.add_chain(u, &bufs)? {
                break;
            }
        }
    }
    layout.write_tables(&mem);
    if std::env::var_os("VMKIT_FUZZ_TRACE").is_some() {
        eprintln!("blk: layout {layout:?} left {}", u.len());
    }
    layout.publish(&mem, 0, layout.avail.len());
    if u.ratio(1, 32)? {
        guest::set_avail_idx(&mem, u.arbitrary()?);
    }
    let used_event: u16 = u.arbitrary()?;
    mem.write_obj(used_event.to_le(), GuestAddress(layout.used_event_addr()))
        .expect("used_event");

    // The same start for the queue handler, on copies.
    let handler_mem = guest::clone_memory(&mem);
    let handler_disk = Arc::new(MemDisk::with_contents(initial, read_only));

    // 1. Chain by chain, against the model.
    if fail_io {
        disk.fail_io(true);
    }
    let processor = RequestProcessor::new(disk.clone(), config, id);
    let model = Model {
        config: &config,
        read_only,
        fail_io,
        id: id.as_bytes(),
    };
    let metadata = layout.metadata();
    let mut queue = guest::queue(&layout, event_idx, &mem);
    let mut buffers = RequestBuffers::new();
    let mut completed = 0usize;
    let mut writes_metadata = false;
    while let Some(chain) = queue.pop_descriptor_chain(&mem) {
        let head = chain.head_index();
        let descs: Vec<Descriptor> = chain.collect();
        let before = guest::snapshot(&mem);
        let expected = model.expect(&before, &disk.contents(), &descs);
        let writable: u64 = descs
            .iter()
            .filter(|d| d.is_write_only())
            .map(|d| u64::from(d.len()))
            .sum();
        writes_metadata |= descs.iter().any(|d| {
            let r = d.addr().0..d.addr().0.saturating_add(u64::from(d.len()));
            d.is_write_only() && metadata.iter().any(|m| guest::overlaps(m, &r))
        });

        let used_len = processor.process(&mem, descs.iter().copied(), &mut buffers);
        if std::env::var_os("VMKIT_FUZZ_TRACE").is_some() {
            let hdr = descs
                .first()
                .and_then(|d| mem.read_obj::<u32>(d.addr()).ok());
            let st = descs.last().and_then(|d| mem.read_obj::<u8>(d.addr()).ok());
            eprintln!(
                "blk: type {hdr:?} status {st:?} used {used_len} descs {}",
                descs.len()
            );
        }

        assert!(
            u64::from(used_len) <= writable,
            "used length {used_len} exceeds the chain's {writable} writable bytes: {descs:?}"
        );
        assert_eq!(used_len, expected.used_len, "used length of {descs:?}");
        let after = guest::snapshot(&mem);
        if after != expected.mem {
            let diff = after
                .iter()
                .zip(&expected.mem)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!(
                "guest memory differs from the model at {diff:#x} (got {:#x}, want {:#x}) \
                 after {descs:?}",
                after[diff], expected.mem[diff]
            );
        }
        let disk_now = disk.contents();
        if disk_now != expected.disk {
            let diff = disk_now
                .iter()
                .zip(&expected.disk)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!("disk differs from the model at byte {diff} after {descs:?}");
        }
        if queue.add_used(&mem, head, used_len).is_ok() {
            completed += 1;
        }
    }

    // 2. The queue handler on the copy.
    if fail_io {
        handler_disk.fail_io(true);
    }
    let irq = Arc::new(CountingInterrupt::default());
    let mut handler = BlockHandler::new(
        handler_mem.clone(),
        guest::queue(&layout, event_idx, &handler_mem),
        RequestProcessor::new(handler_disk.clone(), config, id),
        irq.clone(),
        Arc::new(BlockStats::default()),
    );
    let handled = handler.process_queue();
    let interrupts = irq.0.load(Ordering::SeqCst);
    assert!(interrupts <= 1, "{interrupts} interrupts for one pass");
    if handled == 0 {
        assert_eq!(interrupts, 0, "an interrupt without a completed request");
    }
    if !writes_metadata {
        assert_eq!(
            handled, completed,
            "the handler completed a different number of requests"
        );
        assert!(
            handler_disk.contents() == disk.contents(),
            "the handler left a different disk"
        );
        let mut a = guest::snapshot(&handler_mem);
        let mut b = guest::snapshot(&mem);
        // Notification suppression fields differ by design.
        for m in [&mut a, &mut b] {
            let flags = guest::USED_RING as usize;
            m[flags..flags + 2].fill(0);
            let ev = layout.avail_event_addr() as usize;
            m[ev..ev + 2].fill(0);
        }
        if a != b {
            let diff = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(0);
            panic!("the handler left different guest memory at {diff:#x}");
        }
    }
    Ok(())
}
