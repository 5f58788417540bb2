//! A small guest for the queue targets: guest memory with adjacent regions
//! and a hole, one split virtqueue at fixed addresses, and a driver that
//! lays out descriptor chains from fuzz input — mostly well formed, with
//! mutations (flipped directions, broken links, indirect tables, wild
//! addresses and lengths, bogus heads), or a raw descriptor table.

use std::ops::Range;

use arbitrary::{Result, Unstructured};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmkit_virtio::GuestMemoryMmap;

/// Region A: `[0, 64 KiB)`, rings at its start.
pub const MEM_A: u64 = 0;
/// Region B: `[64 KiB, 128 KiB)`, adjacent to A (buffers may span both).
pub const MEM_B: u64 = 0x1_0000;
/// `[128 KiB, 132 KiB)` is not guest memory.
pub const HOLE: u64 = 0x2_0000;
/// Region C: `[132 KiB, 136 KiB)`, where indirect tables go.
pub const MEM_C: u64 = 0x2_1000;
/// End of guest memory.
pub const MEM_END: u64 = 0x2_2000;

/// Descriptor table (up to 16 entries).
pub const DESC_TABLE: u64 = 0;
/// Available ring.
pub const AVAIL_RING: u64 = 0x100;
/// Used ring.
pub const USED_RING: u64 = 0x200;
/// Where buffers go.
pub const DATA_START: u64 = 0x400;
/// Indirect descriptor tables (256 descriptors).
pub const INDIRECT_TABLES: u64 = MEM_C;
const INDIRECT_SLOTS: u16 = 256;
/// The largest queue the targets build.
pub const MAX_QUEUE_SIZE: u16 = 16;

/// The guest memory: regions A and B adjacent, a hole, region C.
pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(MEM_A), (MEM_B - MEM_A) as usize),
        (GuestAddress(MEM_B), (HOLE - MEM_B) as usize),
        (GuestAddress(MEM_C), (MEM_END - MEM_C) as usize),
    ])
    .expect("guest memory")
}

/// Whether `[addr, addr + len)` is guest memory (an empty range is, anywhere).
pub fn in_memory(addr: u64, len: u64) -> bool {
    if len == 0 {
        return true;
    }
    match addr.checked_add(len) {
        Some(end) => end <= HOLE || (addr >= MEM_C && end <= MEM_END),
        None => false,
    }
}

/// How many regions `[addr, addr + len)` touches (it is in memory).
pub fn regions_touched(addr: u64, len: u64) -> usize {
    if len == 0 {
        return 0;
    }
    let end = addr + len;
    if addr < MEM_B && end > MEM_B { 2 } else { 1 }
}

/// All guest memory as one byte array (the hole reads as zeros).
pub fn snapshot(mem: &GuestMemoryMmap) -> Vec<u8> {
    let mut out = vec![0u8; MEM_END as usize];
    mem.read_slice(&mut out[..HOLE as usize], GuestAddress(0))
        .expect("read A and B");
    mem.read_slice(&mut out[MEM_C as usize..], GuestAddress(MEM_C))
        .expect("read C");
    out
}

/// The bytes of `[addr, addr + len)` in a snapshot (which is in memory).
pub fn bytes(snap: &[u8], addr: u64, len: u64) -> &[u8] {
    &snap[addr as usize..(addr + len) as usize]
}

/// Whether two ranges overlap.
pub fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end && a.start < a.end && b.start < b.end
}

/// A guest address: mostly in the data area, sometimes at a region
/// boundary, in the rings, in the hole, or anywhere in the address space.
pub fn addr(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0..=15u8)? {
        0..=9 => DATA_START + u64::from(u.arbitrary::<u32>()?) % (HOLE - DATA_START),
        10 => {
            let edge = *u.choose(&[MEM_B, HOLE, MEM_C, MEM_END])?;
            edge.wrapping_add(u64::from(u.arbitrary::<i8>()? as u8))
                .wrapping_sub(128)
        }
        11 => u64::from(u.arbitrary::<u32>()?) % MEM_END,
        12 => MEM_C + u64::from(u.arbitrary::<u16>()?) % (MEM_END - MEM_C),
        13 => u64::MAX - u64::from(u.arbitrary::<u16>()?),
        _ => u.arbitrary::<u64>()?,
    })
}

/// A buffer length: mostly a few `unit`s, sometimes one of `typical`, small,
/// or anything.
pub fn len(u: &mut Unstructured<'_>, unit: u32, typical: &[u32]) -> Result<u32> {
    Ok(match u.int_in_range(0..=9u8)? {
        0..=4 => unit * u.int_in_range(0..=8u32)?,
        5 | 6 if !typical.is_empty() => *u.choose(typical)?,
        5 | 6 => unit,
        7 => u.int_in_range(0..=64u32)?,
        8 => u32::from(u.arbitrary::<u16>()?),
        _ => u.arbitrary::<u32>()?,
    })
}

/// One buffer of a chain the driver means to post.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    /// Guest physical address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// The descriptor table, indirect tables and available ring a driver
/// builds, before it is written to guest memory.
#[derive(Debug)]
pub struct QueueLayout {
    /// Queue size (a power of two up to [`MAX_QUEUE_SIZE`]).
    pub size: u16,
    table: Vec<Descriptor>,
    next_free: u16,
    indirect: Vec<Descriptor>,
    /// Heads in the order the driver makes them available.
    pub avail: Vec<u16>,
    /// Indirect tables the chains use (for overlap checks).
    pub indirect_ranges: Vec<Range<u64>>,
}

fn one_in(u: &mut Unstructured<'_>, n: u32) -> Result<bool> {
    Ok(!u.is_empty() && u.ratio(1, n)?)
}

impl QueueLayout {
    /// An empty layout for a queue of `size` (a power of two).
    pub fn new(size: u16) -> Self {
        QueueLayout {
            size,
            table: vec![Descriptor::new(0, 0, 0, 0); usize::from(size)],
            next_free: 0,
            indirect: Vec::new(),
            avail: Vec::new(),
            indirect_ranges: Vec::new(),
        }
    }

    /// A queue size from fuzz input.
    pub fn fuzz_size(u: &mut Unstructured<'_>) -> Result<u16> {
        Ok(*u.choose(&[16, 16, 16, 16, 8, 8, 4, 2, 1])?)
    }

    /// Free entries of the descriptor table.
    pub fn free(&self) -> u16 {
        self.size - self.next_free
    }

    /// Lays out `bufs` as one chain (direct, or in an indirect table),
    /// with mutations drawn from `u`, and makes its head available.
    /// Returns false when the table has no room left.
    pub fn add_chain(&mut self, u: &mut Unstructured<'_>, bufs: &[Buf]) -> Result<bool> {
        let mut descs: Vec<Descriptor> = Vec::with_capacity(bufs.len());
        for (i, b) in bufs.iter().enumerate() {
            let mut flags = if b.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            descs.push(Descriptor::new(b.addr, b.len, flags, 0));
        }
        let indirect_room = usize::from(INDIRECT_SLOTS) - self.indirect.len();
        let indirect_possible =
            !descs.is_empty() && descs.len() <= indirect_room && self.free() > 0;
        // Indirect sometimes, and whenever the table has no room for the chain.
        let indirect =
            indirect_possible && (usize::from(self.free()) < descs.len() || one_in(u, 6)?);
        let base = if indirect {
            self.indirect.len() as u16
        } else {
            if usize::from(self.free()) < descs.len().max(1) {
                return Ok(false);
            }
            self.next_free
        };
        let n = descs.len() as u16;
        for (i, d) in descs.iter_mut().enumerate() {
            let mut flags = d.flags();
            let mut next = if indirect {
                i as u16 + 1
            } else {
                base + i as u16 + 1
            };
            if one_in(u, 40)? {
                flags ^= VRING_DESC_F_WRITE as u16;
            }
            if one_in(u, 60)? {
                flags ^= VRING_DESC_F_NEXT as u16;
            }
            if one_in(u, 80)? {
                flags |= VRING_DESC_F_INDIRECT as u16;
            }
            if one_in(u, 60)? {
                next = u.arbitrary()?;
            }
            *d = Descriptor::new(d.addr().0, d.len(), flags, next);
        }
        let head = if indirect {
            self.indirect.extend_from_slice(&descs);
            let table = INDIRECT_TABLES + u64::from(base) * 16;
            let mut table_len = u32::from(n) * 16;
            if one_in(u, 30)? {
                table_len = table_len.wrapping_add(u.int_in_range(1..=31u32)?);
            }
            self.indirect_ranges
                .push(table..table + u64::from(table_len));
            let mut flags = VRING_DESC_F_INDIRECT as u16;
            if one_in(u, 30)? {
                flags |= VRING_DESC_F_WRITE as u16;
            }
            let slot = self.next_free;
            self.table[usize::from(slot)] = Descriptor::new(table, table_len, flags, 0);
            self.next_free += 1;
            slot
        } else {
            if descs.is_empty() {
                // A chain of one empty descriptor.
                descs.push(Descriptor::new(0, 0, 0, 0));
            }
            for (i, d) in descs.iter().enumerate() {
                self.table[usize::from(base) + i] = *d;
            }
            self.next_free += descs.len() as u16;
            base
        };
        let head = if one_in(u, 40)? { u.arbitrary()? } else { head };
        self.avail.push(head);
        Ok(true)
    }

    /// Fills the free entries of the descriptor table with raw
    /// descriptors and makes a few random heads available.
    pub fn add_raw(&mut self, u: &mut Unstructured<'_>, unit: u32, typical: &[u32]) -> Result<()> {
        while self.next_free < self.size {
            let flags = if u.ratio(1, 4)? {
                u.arbitrary()?
            } else {
                u.int_in_range(0..=7u16)?
            };
            let next = if u.ratio(1, 4)? {
                u.arbitrary()?
            } else {
                u.int_in_range(0..=self.size - 1)?
            };
            let d = Descriptor::new(addr(u)?, len(u, unit, typical)?, flags, next);
            self.table[usize::from(self.next_free)] = d;
            self.next_free += 1;
        }
        for _ in 0..u.int_in_range(0..=self.size)? {
            let head = if u.ratio(1, 4)? {
                u.arbitrary()?
            } else {
                u.int_in_range(0..=self.size - 1)?
            };
            self.avail.push(head);
        }
        Ok(())
    }

    /// Writes the descriptor table and indirect tables to guest memory.
    pub fn write_tables(&self, mem: &GuestMemoryMmap) {
        for (i, d) in self.table.iter().enumerate() {
            mem.write_obj(*d, GuestAddress(DESC_TABLE + 16 * i as u64))
                .expect("descriptor table");
        }
        for (i, d) in self.indirect.iter().enumerate() {
            mem.write_obj(*d, GuestAddress(INDIRECT_TABLES + 16 * i as u64))
                .expect("indirect table");
        }
    }

    /// Makes available ring entries `from..to` of [`QueueLayout::avail`]
    /// visible: writes them to their ring slots and sets the index to `to`.
    pub fn publish(&self, mem: &GuestMemoryMmap, from: usize, to: usize) {
        for i in from..to {
            let slot = (i % usize::from(self.size)) as u64;
            mem.write_obj(
                self.avail[i].to_le(),
                GuestAddress(AVAIL_RING + 4 + 2 * slot),
            )
            .expect("avail ring");
        }
        set_avail_idx(mem, to as u16);
    }

    /// The address of `used_event` (end of the available ring).
    pub fn used_event_addr(&self) -> u64 {
        AVAIL_RING + 4 + 2 * u64::from(self.size)
    }

    /// The address of `avail_event` (end of the used ring).
    pub fn avail_event_addr(&self) -> u64 {
        USED_RING + 4 + 8 * u64::from(self.size)
    }

    /// The used ring, `avail_event` included.
    pub fn used_ring_range(&self) -> Range<u64> {
        USED_RING..self.avail_event_addr() + 2
    }

    /// Every range of queue metadata: tables, rings, indirect tables.
    pub fn metadata(&self) -> Vec<Range<u64>> {
        let mut v = vec![
            DESC_TABLE..DESC_TABLE + 16 * u64::from(self.size),
            AVAIL_RING..self.used_event_addr() + 2,
            self.used_ring_range(),
        ];
        v.extend(self.indirect_ranges.iter().cloned());
        v
    }
}

/// Sets the available ring's index.
pub fn set_avail_idx(mem: &GuestMemoryMmap, idx: u16) {
    mem.write_obj(idx.to_le(), GuestAddress(AVAIL_RING + 2))
        .expect("avail idx");
}

/// The used ring's index.
pub fn used_idx(mem: &GuestMemoryMmap) -> u16 {
    u16::from_le(mem.read_obj(GuestAddress(USED_RING + 2)).expect("used idx"))
}

/// Used ring entry `i` (counted from the start, wrapping on the ring).
pub fn used_elem(mem: &GuestMemoryMmap, size: u16, i: u16) -> (u32, u32) {
    let slot = u64::from(i % size);
    let addr = USED_RING + 4 + 8 * slot;
    let id: u32 = mem.read_obj(GuestAddress(addr)).expect("used id");
    let len: u32 = mem.read_obj(GuestAddress(addr + 4)).expect("used len");
    (u32::from_le(id), u32::from_le(len))
}

/// The device's view of the queue in `layout`, ready, at the fixed ring
/// addresses.
pub fn queue(layout: &QueueLayout, event_idx: bool, mem: &GuestMemoryMmap) -> Queue {
    let mut q = Queue::new(MAX_QUEUE_SIZE).expect("queue");
    q.set_size(layout.size);
    q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    q.set_used_ring_address(Some(USED_RING as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    assert!(q.is_valid(mem), "the fixed queue layout must be valid");
    q
}

/// A copy of guest memory, for a model to work on.
pub fn clone_memory(mem: &GuestMemoryMmap) -> GuestMemoryMmap {
    let copy = memory();
    let snap = snapshot(mem);
    copy.write_slice(&snap[..HOLE as usize], GuestAddress(0))
        .expect("copy A and B");
    copy.write_slice(&snap[MEM_C as usize..], GuestAddress(MEM_C))
        .expect("copy C");
    copy
}

/// The chains a device popping `queue` would see now, as virtio-queue
/// walks them (heads and descriptors), without touching `queue` or `mem`:
/// popped from a copy of both.
pub fn shadow_chains(mem: &GuestMemoryMmap, queue: &Queue) -> Vec<(u16, Vec<Descriptor>)> {
    let copy = clone_memory(mem);
    let mut q = Queue::try_from(queue.state()).expect("a valid queue's state");
    let mut out = Vec::new();
    while let Some(chain) = q.pop_descriptor_chain(&copy) {
        let head = chain.head_index();
        out.push((head, chain.collect()));
    }
    out
}

/// Fills guest memory with bytes from the fuzz input at a few places in
/// the data area (the rest keeps a pattern), so headers and payloads can
/// be anything.
pub fn scribble(u: &mut Unstructured<'_>, mem: &GuestMemoryMmap) -> Result<()> {
    let mut pattern = vec![0u8; (HOLE - DATA_START) as usize];
    for (i, b) in pattern.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add((i >> 8) as u8);
    }
    mem.write_slice(&pattern, GuestAddress(DATA_START))
        .expect("pattern");
    for _ in 0..u.int_in_range(0..=4u8)? {
        let at = DATA_START + u64::from(u.arbitrary::<u32>()?) % (HOLE - DATA_START);
        let n = u.int_in_range(0..=64usize)?;
        let data = u.bytes(n.min(u.len()))?;
        let n = data.len().min((HOLE - at) as usize);
        mem.write_slice(&data[..n], GuestAddress(at))
            .expect("scribble");
    }
    Ok(())
}

/// The descriptors of the chains at `heads` as virtio-queue walks them in
/// the current guest memory (on a copy: `mem` is not touched).
pub fn walk_chains(mem: &GuestMemoryMmap, size: u16, heads: &[u16]) -> Vec<Vec<Descriptor>> {
    let copy = clone_memory(mem);
    heads
        .iter()
        .map(|&head| {
            copy.write_obj(head.to_le(), GuestAddress(AVAIL_RING + 4))
                .expect("ring");
            copy.write_obj(1u16.to_le(), GuestAddress(AVAIL_RING + 2))
                .expect("idx");
            let mut q = Queue::new(MAX_QUEUE_SIZE).expect("queue");
            q.set_size(size);
            q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
            q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
            q.set_used_ring_address(Some(USED_RING as u32), Some(0));
            q.set_ready(true);
            q.pop_descriptor_chain(&copy)
                .map(|c| c.collect())
                .unwrap_or_default()
        })
        .collect()
}

/// The indirect tables the descriptor table refers to (including those a
/// mutation made indirect), as guest memory ranges.
pub fn indirect_tables(mem: &GuestMemoryMmap, size: u16) -> Vec<Range<u64>> {
    (0..u64::from(size))
        .filter_map(|i| {
            mem.read_obj::<Descriptor>(GuestAddress(DESC_TABLE + 16 * i))
                .ok()
        })
        .filter(|d| d.refers_to_indirect_table())
        .map(|d| d.addr().0..d.addr().0.saturating_add(u64::from(d.len())))
        .collect()
}
