//! virtio-mmio (version 2, virtio 1.2 §4.2.2) and one split virtqueue
//! (§2.7) with `VIRTIO_RING_F_EVENT_IDX`, in a static DMA area.
//!
//! Every register access other than QueueNotify is an exit to the VMM (tens
//! of microseconds here), so registers are touched only to set the device up
//! and to notify; completions are found by polling the used ring in memory.

use core::cell::UnsafeCell;
use core::sync::atomic::{Ordering, fence};

use crate::cpu;
use crate::mem::{MMIO_HOLE_END, MMIO_HOLE_START};

/// "virt", little-endian.
pub const MAGIC: u32 = 0x7472_6976;

pub const MAGIC_VALUE: u64 = 0x000;
pub const VERSION: u64 = 0x004;
pub const DEVICE_ID: u64 = 0x008;
pub const DEVICE_FEATURES: u64 = 0x010;
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
pub const DRIVER_FEATURES: u64 = 0x020;
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
pub const QUEUE_SEL: u64 = 0x030;
pub const QUEUE_NUM_MAX: u64 = 0x034;
pub const QUEUE_NUM: u64 = 0x038;
pub const QUEUE_READY: u64 = 0x044;
pub const QUEUE_NOTIFY: u64 = 0x050;
pub const STATUS: u64 = 0x070;
pub const QUEUE_DESC_LOW: u64 = 0x080;
pub const QUEUE_DESC_HIGH: u64 = 0x084;
pub const QUEUE_DRIVER_LOW: u64 = 0x090;
pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const CONFIG_GENERATION: u64 = 0x0fc;
pub const CONFIG: u64 = 0x100;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;

pub const F_RING_EVENT_IDX: u64 = 1 << 29;
pub const F_VERSION_1: u64 = 1 << 32;

/// A virtio-mmio register window, user-mapped in the MMIO hole.
#[derive(Clone, Copy)]
pub struct Mmio {
    base: u64,
}

impl Mmio {
    /// The window at `base`, if `[base, base + size)` lies in the MMIO hole,
    /// is 4 KiB aligned and holds the registers and some config space.
    pub fn new(base: u64, size: u64) -> Option<Self> {
        let ok = base.is_multiple_of(4096)
            && size >= 0x200
            && base >= MMIO_HOLE_START
            && base
                .checked_add(size)
                .is_some_and(|end| end <= MMIO_HOLE_END);
        ok.then_some(Self { base })
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    fn reg(&self, offset: u64) -> *mut u32 {
        core::ptr::with_exposed_provenance_mut((self.base + offset) as usize)
    }

    pub fn read(&self, offset: u64) -> u32 {
        // SAFETY: `base` is a 4 KiB-aligned window in the identity-mapped,
        // user-accessible MMIO hole (checked in `new`) and `offset` an
        // aligned register below 0x200; a device register read touches no
        // memory of ours.
        unsafe { self.reg(offset).read_volatile() }
    }

    pub fn write(&self, offset: u64, value: u32) {
        // SAFETY: as in `read`. The registers written point the device only
        // at the static DMA area, which nothing else uses while it runs.
        unsafe { self.reg(offset).write_volatile(value) }
    }

    fn write64(&self, (low, high): (u64, u64), value: u64) {
        self.write(low, value as u32);
        self.write(high, (value >> 32) as u32);
    }

    /// A 32-bit config field at `offset` into the device-specific config.
    pub fn config32(&self, offset: u64) -> u32 {
        self.read(CONFIG + offset)
    }
}

/// Largest queue the DMA area holds.
pub const QUEUE_MAX: usize = 256;
/// Requests a driver may have in flight, each with its own header, status
/// byte and payload slot.
pub const SLOTS: usize = 32;
/// Bytes of data buffer per slot; [`BUF`] is `SLOTS * SLOT_BYTES` = 1 MiB.
pub const SLOT_BYTES: usize = 32 << 10;

const DESC: usize = 0;
const AVAIL: usize = 0x1000;
const USED: usize = 0x2000;
/// Request headers, 16 bytes per slot.
pub const HEADERS: usize = 0x3000;
/// DISCARD / WRITE_ZEROES segments, 16 bytes per slot.
pub const SEGMENTS: usize = 0x3200;
/// Status bytes, one per slot.
pub const STATUS_BYTES: usize = 0x3400;
/// A data buffer of `SLOT_BYTES` the driver fills for writes.
pub const PATTERN: usize = 0x4000;
/// The 1 MiB data buffer: `SLOTS` slots of `SLOT_BYTES`.
pub const BUF: usize = 0x10000;
pub const BUF_BYTES: usize = SLOTS * SLOT_BYTES;
const DMA_BYTES: usize = BUF + BUF_BYTES;

const _: () = assert!(16 * QUEUE_MAX <= AVAIL - DESC);
const _: () = assert!(6 + 2 * QUEUE_MAX <= USED - AVAIL);
const _: () = assert!(6 + 8 * QUEUE_MAX <= HEADERS - USED);
const _: () = assert!(HEADERS + 16 * SLOTS <= SEGMENTS && SEGMENTS + 16 * SLOTS <= STATUS_BYTES);
const _: () = assert!(STATUS_BYTES + SLOTS <= PATTERN && PATTERN + SLOT_BYTES <= BUF);

/// The memory the device reads and writes: the rings, request headers,
/// status bytes and data buffers. One device uses it at a time (the driver
/// resets a device before it sets up the next one).
#[repr(C, align(4096))]
struct Dma(UnsafeCell<[u8; DMA_BYTES]>);

// SAFETY: only the BSP touches the DMA area (the APs are parked before the
// disks are set up); the device's accesses are ordered by the ring protocol.
unsafe impl Sync for Dma {}

static DMA: Dma = Dma(UnsafeCell::new([0; DMA_BYTES]));

/// Guest-physical (= virtual) address of byte `offset` of the DMA area.
pub fn dma_addr(offset: usize) -> u64 {
    assert!(offset < DMA_BYTES);
    DMA.0
        .get()
        .cast::<u8>()
        .wrapping_add(offset)
        .expose_provenance() as u64
}

fn dma_ptr<T>(offset: usize) -> *mut T {
    assert!(offset + size_of::<T>() <= DMA_BYTES && offset.is_multiple_of(align_of::<T>()));
    // In bounds (checked above).
    DMA.0.get().cast::<u8>().wrapping_add(offset).cast()
}

/// Reads a `T` of the DMA area (volatile: the device may have written it).
pub fn dma_read<T: crate::mem::Plain>(offset: usize) -> T {
    // SAFETY: in bounds and aligned (checked by `dma_ptr`); any bit pattern
    // is a valid `T: Plain`; the device writes only what the driver gave it.
    unsafe { dma_ptr::<T>(offset).read_volatile() }
}

/// Writes a `T` into the DMA area (volatile: the device may read it).
pub fn dma_write<T: crate::mem::Plain>(offset: usize, value: T) {
    // SAFETY: as in `dma_read`; only the BSP writes the DMA area.
    unsafe { dma_ptr::<T>(offset).write_volatile(value) }
}

/// `len` bytes of the DMA area from `offset`, for the driver to read once
/// the device has completed the requests that wrote them.
pub fn dma_bytes(offset: usize, len: usize) -> &'static [u8] {
    assert!(offset.checked_add(len).is_some_and(|end| end <= DMA_BYTES));
    fence(Ordering::Acquire);
    // SAFETY: in bounds (checked above); every request writing these bytes
    // has completed (the caller consumed its used entry), so nothing changes
    // them while the slice is alive: the driver issues the next request only
    // after it is done with the bytes.
    unsafe { core::slice::from_raw_parts(dma_ptr::<u8>(offset), len) }
}

/// Fills `len` bytes of the DMA area from `offset` with `byte`.
pub fn dma_fill(offset: usize, len: usize, byte: u8) {
    assert!(offset.checked_add(len).is_some_and(|end| end <= DMA_BYTES));
    // SAFETY: in bounds (checked above); no request in flight uses them.
    unsafe { core::ptr::write_bytes(dma_ptr::<u8>(offset), byte, len) };
    fence(Ordering::Release);
}

const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// One buffer of a descriptor chain: address, length, device-writable.
#[derive(Clone, Copy)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// Why a queue operation failed.
#[derive(Clone, Copy, Debug)]
pub enum QueueError {
    /// The device returned a used id that is not a chain head in flight.
    BadUsedId(u32),
}

/// Split virtqueue 0 of a device, with `VIRTIO_RING_F_EVENT_IDX`.
pub struct Queue {
    mmio: Mmio,
    size: u16,
    free_head: u16,
    num_free: u16,
    /// Next avail index (the driver's shadow of `avail.idx`).
    avail_idx: u16,
    /// `avail.idx` as last published.
    published: u16,
    /// Next used index to consume.
    last_used: u16,
    /// Whether descriptor `i` is the head of a chain in flight.
    in_flight: [bool; QUEUE_MAX],
    /// Whether VIRTIO_RING_F_EVENT_IDX was negotiated.
    event_idx: bool,
    /// QueueNotify writes (each one an ioeventfd signal).
    pub notifications: u64,
}

impl Queue {
    /// Sets queue 0 of `mmio` up with the largest power-of-two size up to
    /// `QUEUE_MAX` the device takes; the device is between FEATURES_OK and
    /// DRIVER_OK.
    pub fn setup(mmio: Mmio, event_idx: bool) -> Result<Self, &'static str> {
        mmio.write(QUEUE_SEL, 0);
        if mmio.read(QUEUE_READY) != 0 {
            return Err("queue 0 is already ready after reset");
        }
        let max = mmio.read(QUEUE_NUM_MAX);
        if max == 0 {
            return Err("queue 0 is not available (QueueNumMax 0)");
        }
        let mut size = QUEUE_MAX as u32;
        while size > max {
            size /= 2;
        }
        dma_fill(DESC, BUF, 0);
        let q = Self {
            mmio,
            size: size as u16,
            free_head: 0,
            num_free: size as u16,
            avail_idx: 0,
            published: 0,
            last_used: 0,
            in_flight: [false; QUEUE_MAX],
            event_idx,
            notifications: 0,
        };
        for i in 0..size as u16 {
            q.set_next(i, i.wrapping_add(1));
        }
        mmio.write(QUEUE_NUM, size);
        mmio.write64((QUEUE_DESC_LOW, QUEUE_DESC_HIGH), dma_addr(DESC));
        mmio.write64((QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH), dma_addr(AVAIL));
        mmio.write64((QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH), dma_addr(USED));
        mmio.write(QUEUE_READY, 1);
        Ok(q)
    }

    fn desc(i: u16) -> usize {
        DESC + 16 * usize::from(i)
    }

    fn set_next(&self, i: u16, next: u16) {
        dma_write(Self::desc(i) + 14, next);
    }

    /// `avail.ring[size]`, the index of the used entry after which the
    /// device should interrupt.
    fn used_event_offset(&self) -> usize {
        AVAIL + 4 + 2 * usize::from(self.size)
    }

    /// `used.ring[size]`, the avail index after which the device wants a
    /// notification.
    fn avail_event_offset(&self) -> usize {
        USED + 4 + 8 * usize::from(self.size)
    }

    /// Adds a chain of `bufs` to the avail ring (not yet published); `None`
    /// if too few descriptors are free.
    pub fn add(&mut self, bufs: &[Buf]) -> Option<u16> {
        let n = bufs.len();
        if n == 0 || n > usize::from(self.num_free) {
            return None;
        }
        let head = self.free_head;
        let mut i = head;
        for (k, b) in bufs.iter().enumerate() {
            let d = Self::desc(i);
            let next: u16 = dma_read(d + 14);
            let mut flags = if b.write { VIRTQ_DESC_F_WRITE } else { 0 };
            if k + 1 < n {
                flags |= VIRTQ_DESC_F_NEXT;
            } else {
                self.free_head = next;
            }
            dma_write(d, b.addr);
            dma_write(d + 8, b.len);
            dma_write(d + 12, flags);
            i = next;
        }
        self.num_free -= n as u16;
        self.in_flight[usize::from(head)] = true;
        let slot = usize::from(self.avail_idx % self.size);
        dma_write(AVAIL + 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Some(head)
    }

    /// Publishes the chains added since the last kick and notifies the
    /// device if its `avail_event` asks for it (virtio 1.2 §2.7.10).
    pub fn kick(&mut self) {
        let (old, new) = (self.published, self.avail_idx);
        if old == new {
            return;
        }
        // Descriptors and ring entries before the index.
        fence(Ordering::Release);
        dma_write(AVAIL + 2, new);
        self.published = new;
        // The index store before the avail_event load (store-load: mfence).
        fence(Ordering::SeqCst);
        let notify = if self.event_idx {
            vring_need_event(dma_read(self.avail_event_offset()), new, old)
        } else {
            dma_read::<u16>(USED) & VIRTQ_USED_F_NO_NOTIFY == 0
        };
        if notify {
            self.mmio.write(QUEUE_NOTIFY, 0);
            self.notifications += 1;
        }
    }

    /// The next used entry as (chain head, length written), its chain freed.
    pub fn pop(&mut self) -> Result<Option<(u16, u32)>, QueueError> {
        let idx: u16 = dma_read(USED + 2);
        if idx == self.last_used {
            return Ok(None);
        }
        // The entry and the buffers after the index.
        fence(Ordering::Acquire);
        let slot = USED + 4 + 8 * usize::from(self.last_used % self.size);
        let id: u32 = dma_read(slot);
        let len: u32 = dma_read(slot + 4);
        self.last_used = self.last_used.wrapping_add(1);
        let head = match u16::try_from(id) {
            Ok(head) if head < self.size && self.in_flight[usize::from(head)] => head,
            _ => return Err(QueueError::BadUsedId(id)),
        };
        self.in_flight[usize::from(head)] = false;
        // Give the chain back: our own descriptors, so the walk ends within
        // `size` steps at the one without NEXT.
        let mut i = head;
        let mut n: u16 = 1;
        loop {
            let flags: u16 = dma_read(Self::desc(i) + 12);
            if flags & VIRTQ_DESC_F_NEXT == 0 || n == self.size {
                break;
            }
            i = dma_read(Self::desc(i) + 14);
            n += 1;
        }
        self.set_next(i, self.free_head);
        self.free_head = head;
        self.num_free += n;
        Ok(Some((head, len)))
    }

    /// Asks for an interrupt when the device uses the next entry: sets
    /// `used_event` to the next used index to consume. The driver calls it
    /// when it finds nothing to consume and is about to wait.
    /// Without EVENT_IDX, interrupts stay on (avail.flags 0) and this does
    /// nothing.
    pub fn want_interrupt(&mut self) {
        if !self.event_idx {
            return;
        }
        dma_write(self.used_event_offset(), self.last_used);
        // The used_event store before the next used.idx load.
        fence(Ordering::SeqCst);
    }
}

/// `vring_need_event`: whether moving an index from `old` to `new` passes
/// `event` (the other side asked to be told once it has seen `event`).
pub fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// TSC cycles the driver waits for a completion before it gives up: 30 s at
/// 1 GHz (6 s at 5 GHz).
pub const TIMEOUT_CYCLES: u64 = 30_000_000_000;

/// Spins until `cond` holds or `TIMEOUT_CYCLES` pass; false on timeout.
pub fn spin_until(mut cond: impl FnMut() -> bool) -> bool {
    let start = cpu::rdtsc();
    loop {
        if cond() {
            return true;
        }
        if cpu::rdtsc().wrapping_sub(start) > TIMEOUT_CYCLES {
            return false;
        }
        core::hint::spin_loop();
    }
}
