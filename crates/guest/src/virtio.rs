//! The transport-generic part of the virtio drivers: virtio-mmio (version 2,
//! virtio 1.2 §4.2.2) devices from the command line, the §3.1.1
//! initialization sequence with feature negotiation, static DMA areas, and
//! split virtqueues (§2.7) with `VIRTIO_RING_F_EVENT_IDX`.
//!
//! Every register access other than QueueNotify is an exit to the VMM (tens
//! of microseconds here), so registers are touched only to set a device up
//! and to notify; completions are found by polling the used ring in memory.

use core::cell::UnsafeCell;
use core::sync::atomic::{Ordering, fence};

use crate::cpu;
use crate::irq;
use crate::mem::{MMIO_HOLE_END, MMIO_HOLE_START, Plain};

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

/// Device IDs (virtio 1.2 §5).
pub const DEVICE_ID_NET: u32 = 1;
pub const DEVICE_ID_BLOCK: u32 = 2;

/// A virtio-mmio device from the command line.
#[derive(Clone, Copy)]
pub struct MmioDevice {
    pub size: u64,
    pub base: u64,
    pub irq: u32,
}

/// Linux's `memparse`: a number in C notation with an optional K/M/G/T/P/E
/// suffix; returns the value and the rest.
fn memparse(s: &str) -> Option<(u64, &str)> {
    let (value, rest) = parse_c_number(s)?;
    let (shift, rest) = match rest.as_bytes().first() {
        Some(b'k' | b'K') => (10, &rest[1..]),
        Some(b'm' | b'M') => (20, &rest[1..]),
        Some(b'g' | b'G') => (30, &rest[1..]),
        Some(b't' | b'T') => (40, &rest[1..]),
        Some(b'p' | b'P') => (50, &rest[1..]),
        Some(b'e' | b'E') => (60, &rest[1..]),
        _ => (0, rest),
    };
    Some((value.checked_mul(1 << shift)?, rest))
}

/// An unsigned number as C's `%lli`/`strtoull(.., 0)` reads it: `0x` hex,
/// leading `0` octal, else decimal; returns the value and the rest.
fn parse_c_number(s: &str) -> Option<(u64, &str)> {
    let (radix, digits) = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (16, hex)
    } else if s.len() > 1 && s.starts_with('0') && s.as_bytes()[1].is_ascii_digit() {
        (8, &s[1..])
    } else {
        (10, s)
    };
    parse_radix(digits, radix)
}

/// Leading digits of `s` in `radix` (at least one); the value and the rest.
fn parse_radix(s: &str, radix: u32) -> Option<(u64, &str)> {
    let end = s.find(|c: char| !c.is_digit(radix)).unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    Some((u64::from_str_radix(&s[..end], radix).ok()?, &s[end..]))
}

/// `<size>@<base>:<irq>[:<id>]`, as Linux's `vm_cmdline_set` parses it.
pub fn parse_device(s: &str) -> Option<MmioDevice> {
    let (size, rest) = memparse(s)?;
    let rest = rest.strip_prefix('@')?;
    let (base, rest) = parse_c_number(rest)?;
    let rest = rest.strip_prefix(':')?;
    let (irq, rest) = parse_radix(rest, 10)?;
    let irq = u32::try_from(irq).ok()?;
    if !rest.is_empty() {
        let id = rest.strip_prefix(':')?;
        let id = id.strip_prefix('-').unwrap_or(id);
        if !parse_radix(id, 10)?.1.is_empty() {
            return None;
        }
    }
    (size != 0).then_some(MmioDevice { size, base, irq })
}

/// Checks the window of `dev` and returns it with the device ID.
pub fn probe(dev: &MmioDevice) -> Result<(Mmio, u32), &'static str> {
    let Some(mmio) = Mmio::new(dev.base, dev.size) else {
        return Err(
            "the window is not a 4 KiB-aligned range of at least 512 bytes in 0xc0000000..4 GiB",
        );
    };
    if mmio.read(MAGIC_VALUE) != MAGIC {
        return Err("MagicValue is not \"virt\"");
    }
    if mmio.read(VERSION) != 2 {
        return Err("Version is not 2 (virtio-mmio 1.x)");
    }
    Ok((mmio, mmio.read(DEVICE_ID)))
}

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

    fn reg<T>(&self, offset: u64) -> *mut T {
        core::ptr::with_exposed_provenance_mut((self.base + offset) as usize)
    }

    pub fn read(&self, offset: u64) -> u32 {
        // SAFETY: `base` is a 4 KiB-aligned window in the identity-mapped,
        // user-accessible MMIO hole (checked in `new`) and `offset` an
        // aligned register below 0x200; a device register read touches no
        // memory of ours.
        unsafe { self.reg::<u32>(offset).read_volatile() }
    }

    pub fn write(&self, offset: u64, value: u32) {
        // SAFETY: as in `read`. The registers written point the device only
        // at static DMA areas, which nothing else uses while it runs.
        unsafe { self.reg::<u32>(offset).write_volatile(value) }
    }

    /// The window's base address.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// An 8-bit write at `offset` into the window (below 4 KiB).
    pub fn write8(&self, offset: u64, value: u8) {
        assert!(offset < 0x1000);
        // SAFETY: as in `write`: a byte of the device's window, which the
        // VMM maps 4 KiB long; no memory of ours.
        unsafe { self.reg::<u8>(offset).write_volatile(value) }
    }

    /// A 16-bit write at `offset` (2-aligned, below 4 KiB).
    pub fn write16(&self, offset: u64, value: u16) {
        assert!(offset.is_multiple_of(2) && offset < 0x1000);
        // SAFETY: as in `write8`, two bytes.
        unsafe { self.reg::<u16>(offset).write_volatile(value) }
    }

    fn write64(&self, (low, high): (u64, u64), value: u64) {
        self.write(low, value as u32);
        self.write(high, (value >> 32) as u32);
    }

    /// A 32-bit config field at `offset` into the device-specific config.
    pub fn config32(&self, offset: u64) -> u32 {
        self.read(CONFIG + offset)
    }

    /// A 16-bit config field at `offset` (2-aligned) into the config.
    pub fn config16(&self, offset: u64) -> u16 {
        assert!(offset.is_multiple_of(2) && offset < 0x100);
        // SAFETY: as in `read`: an aligned 16-bit read of the device's
        // config space, inside the window `new` checked.
        unsafe { self.reg::<u16>(CONFIG + offset).read_volatile() }
    }

    /// An 8-bit config field at `offset` into the config.
    pub fn config8(&self, offset: u64) -> u8 {
        assert!(offset < 0x100);
        // SAFETY: as in `config16`, one byte.
        unsafe { self.reg::<u8>(CONFIG + offset).read_volatile() }
    }

    /// The first steps of virtio 1.2 §3.1.1: reset, ACKNOWLEDGE, DRIVER,
    /// features (`offered & wanted`; VERSION_1 is required), FEATURES_OK
    /// read back. Returns the negotiated features; the device is then ready
    /// for its queues to be set up and its config to be read. Errors name
    /// the step.
    pub fn negotiate(&self, wanted: u64) -> Result<u64, &'static str> {
        self.write(STATUS, 0);
        if self.read(STATUS) != 0 {
            return Err("Status is not 0 after reset");
        }
        self.write(STATUS, STATUS_ACKNOWLEDGE);
        self.write(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.write(DEVICE_FEATURES_SEL, 0);
        let low = self.read(DEVICE_FEATURES);
        self.write(DEVICE_FEATURES_SEL, 1);
        let offered = u64::from(low) | u64::from(self.read(DEVICE_FEATURES)) << 32;
        if offered & F_VERSION_1 == 0 {
            return Err("device does not offer VIRTIO_F_VERSION_1");
        }
        let features = offered & wanted;
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, features as u32);
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, (features >> 32) as u32);
        self.write(
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        if self.read(STATUS) & STATUS_FEATURES_OK == 0 {
            return Err("device did not keep FEATURES_OK");
        }
        Ok(features)
    }

    /// Reads the device config with `read`, again until ConfigGeneration is
    /// the same before and after (at most 10 tries).
    pub fn read_config<T>(&self, mut read: impl FnMut(&Self) -> T) -> Result<T, &'static str> {
        for _ in 0..10 {
            let generation = self.read(CONFIG_GENERATION);
            let value = read(self);
            if self.read(CONFIG_GENERATION) == generation {
                return Ok(value);
            }
        }
        Err("ConfigGeneration keeps changing")
    }

    /// The last step of §3.1.1 after [`Mmio::negotiate`] and queue setup:
    /// routes the device's interrupt (IOAPIC pin `irq`) and sets DRIVER_OK,
    /// which must read back unchanged.
    pub fn driver_ok(&self, irq: u8) -> Result<(), &'static str> {
        irq::route(irq, self.base)?;
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        self.write(STATUS, status);
        if self.read(STATUS) != status {
            irq::unroute(irq);
            return Err("Status changed after DRIVER_OK (DEVICE_NEEDS_RESET?)");
        }
        Ok(())
    }

    /// Resets the device (it stops using every queue and buffer) and stops
    /// routing its interrupts.
    pub fn reset(&self, irq: u8) {
        self.write(STATUS, 0);
        let _ = self.read(STATUS);
        irq::unroute(irq);
    }
}

/// Memory a device reads and writes: rings, request headers, buffers.
/// Each area belongs to one driver, which sets up one device at a time on
/// it (and resets that device before the next).
#[repr(C, align(4096))]
pub struct Dma<const N: usize>(UnsafeCell<[u8; N]>);

// SAFETY: only the BSP touches DMA areas (the APs are parked before any
// device is set up); the device's accesses are ordered by the ring protocol.
unsafe impl<const N: usize> Sync for Dma<N> {}

impl<const N: usize> Dma<N> {
    pub const fn new() -> Self {
        Self(UnsafeCell::new([0; N]))
    }

    /// Guest-physical (= virtual) address of byte `offset`.
    pub fn addr(&self, offset: usize) -> u64 {
        assert!(offset < N);
        self.0
            .get()
            .cast::<u8>()
            .wrapping_add(offset)
            .expose_provenance() as u64
    }

    fn ptr<T>(&self, offset: usize) -> *mut T {
        assert!(offset + size_of::<T>() <= N && offset.is_multiple_of(align_of::<T>()));
        // In bounds (checked above).
        self.0.get().cast::<u8>().wrapping_add(offset).cast()
    }

    /// Reads a `T` (volatile: the device may have written it).
    pub fn read<T: Plain>(&self, offset: usize) -> T {
        // SAFETY: in bounds and aligned (checked by `ptr`); any bit pattern
        // is a valid `T: Plain`; the device writes only what the driver gave
        // it.
        unsafe { self.ptr::<T>(offset).read_volatile() }
    }

    /// Writes a `T` (volatile: the device may read it).
    pub fn write<T: Plain>(&self, offset: usize, value: T) {
        // SAFETY: as in `read`; only the BSP writes DMA areas.
        unsafe { self.ptr::<T>(offset).write_volatile(value) }
    }

    /// `len` bytes from `offset`, for the driver to read once the device has
    /// completed the requests that wrote them.
    pub fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= N));
        fence(Ordering::Acquire);
        // SAFETY: in bounds (checked above); every request writing these
        // bytes has completed (the caller consumed its used entry), so
        // nothing changes them while the slice is alive: the driver hands
        // the bytes to the device again only after it is done with them.
        unsafe { core::slice::from_raw_parts(self.ptr::<u8>(offset), len) }
    }

    /// `len` bytes from `offset`, for the driver to fill before it hands
    /// them to the device.
    ///
    /// # Safety
    ///
    /// No other reference to these bytes may be alive while the slice is,
    /// and no request in flight may use them.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= N));
        // SAFETY: in bounds (checked above); exclusive and unused by the
        // device (the caller's contract).
        unsafe { core::slice::from_raw_parts_mut(self.ptr::<u8>(offset), len) }
    }

    /// Fills `len` bytes from `offset` with `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) {
        assert!(offset.checked_add(len).is_some_and(|end| end <= N));
        // SAFETY: in bounds (checked above); no request in flight uses them.
        unsafe { core::ptr::write_bytes(self.ptr::<u8>(offset), byte, len) };
        fence(Ordering::Release);
    }
}

/// Largest queue a [`Ring`] holds.
pub const QUEUE_MAX: usize = 256;

const DESC: usize = 0;
const AVAIL: usize = 0x1000;
const USED: usize = 0x2000;
const RING_BYTES: usize = 0x3000;

const _: () = assert!(16 * QUEUE_MAX <= AVAIL - DESC);
const _: () = assert!(6 + 2 * QUEUE_MAX <= USED - AVAIL);
const _: () = assert!(6 + 8 * QUEUE_MAX <= RING_BYTES - USED);

/// The memory of one split virtqueue of up to [`QUEUE_MAX`] entries: the
/// descriptor table, the available ring and the used ring, a page each.
pub type Ring = Dma<RING_BYTES>;

const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
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

/// A split virtqueue of a device, with `VIRTIO_RING_F_EVENT_IDX`.
pub struct Queue {
    mmio: Mmio,
    /// The queue's index (what QueueNotify is written).
    index: u16,
    ring: &'static Ring,
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
    /// Sets queue `index` of `mmio` up in `ring`, with the largest
    /// power-of-two size up to `max` (at most [`QUEUE_MAX`]) the device
    /// takes; the device is between FEATURES_OK and DRIVER_OK.
    pub fn setup(
        mmio: Mmio,
        index: u16,
        ring: &'static Ring,
        max: usize,
        event_idx: bool,
    ) -> Result<Self, &'static str> {
        mmio.write(QUEUE_SEL, u32::from(index));
        if mmio.read(QUEUE_READY) != 0 {
            return Err("QueueReady already set after reset");
        }
        let device_max = mmio.read(QUEUE_NUM_MAX);
        if device_max == 0 {
            return Err("queue not available (QueueNumMax 0)");
        }
        let mut size = max.clamp(1, QUEUE_MAX).next_power_of_two() as u32;
        while size > device_max || size as usize > max.max(1) {
            size /= 2;
        }
        ring.fill(0, RING_BYTES, 0);
        let q = Self {
            mmio,
            index,
            ring,
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
        mmio.write64((QUEUE_DESC_LOW, QUEUE_DESC_HIGH), ring.addr(DESC));
        mmio.write64((QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH), ring.addr(AVAIL));
        mmio.write64((QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH), ring.addr(USED));
        mmio.write(QUEUE_READY, 1);
        Ok(q)
    }

    /// The number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    fn desc(i: u16) -> usize {
        DESC + 16 * usize::from(i)
    }

    fn set_next(&self, i: u16, next: u16) {
        self.ring.write(Self::desc(i) + 14, next);
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
            let next: u16 = self.ring.read(d + 14);
            let mut flags = if b.write { VIRTQ_DESC_F_WRITE } else { 0 };
            if k + 1 < n {
                flags |= VIRTQ_DESC_F_NEXT;
            } else {
                self.free_head = next;
            }
            self.ring.write(d, b.addr);
            self.ring.write(d + 8, b.len);
            self.ring.write(d + 12, flags);
            i = next;
        }
        self.num_free -= n as u16;
        self.in_flight[usize::from(head)] = true;
        let slot = usize::from(self.avail_idx % self.size);
        self.ring.write(AVAIL + 4 + 2 * slot, head);
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
        self.ring.write(AVAIL + 2, new);
        self.published = new;
        // The index store before the avail_event load (store-load: mfence).
        fence(Ordering::SeqCst);
        let notify = if self.event_idx {
            vring_need_event(self.ring.read(self.avail_event_offset()), new, old)
        } else {
            self.ring.read::<u16>(USED) & VIRTQ_USED_F_NO_NOTIFY == 0
        };
        if notify {
            self.mmio.write(QUEUE_NOTIFY, u32::from(self.index));
            self.notifications += 1;
        }
    }

    /// The next used entry as (chain head, length written), its chain freed.
    pub fn pop(&mut self) -> Result<Option<(u16, u32)>, QueueError> {
        let idx: u16 = self.ring.read(USED + 2);
        if idx == self.last_used {
            return Ok(None);
        }
        // The entry and the buffers after the index.
        fence(Ordering::Acquire);
        let slot = USED + 4 + 8 * usize::from(self.last_used % self.size);
        let id: u32 = self.ring.read(slot);
        let len: u32 = self.ring.read(slot + 4);
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
            let flags: u16 = self.ring.read(Self::desc(i) + 12);
            if flags & VIRTQ_DESC_F_NEXT == 0 || n == self.size {
                break;
            }
            i = self.ring.read(Self::desc(i) + 14);
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
        self.ring.write(self.used_event_offset(), self.last_used);
        // The used_event store before the next used.idx load.
        fence(Ordering::SeqCst);
    }

    /// Asks for no interrupts, for a driver that only polls: with
    /// EVENT_IDX, `used_event` is set half the index space ahead of the
    /// next used index to consume (the device would have to use 32 Ki
    /// entries to reach it; call this again after consuming); without,
    /// avail.flags gets NO_INTERRUPT.
    pub fn suppress_interrupts(&mut self) {
        if self.event_idx {
            self.ring.write(
                self.used_event_offset(),
                self.last_used.wrapping_add(0x8000),
            );
        } else {
            self.ring.write(AVAIL, VIRTQ_AVAIL_F_NO_INTERRUPT);
        }
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
