//! `vmkit.hostile`: after its normal checks, the guest drives each virtio
//! device as a malicious driver would, then resets it and proves it still
//! works. This module holds what the device-specific groups share: a raw
//! split virtqueue whose descriptors, rings and indices are written by hand
//! ([`Raw`]), bounded TSC waits ([`Clock`]), a small line buffer for check
//! names and details ([`Line`]), and the groups that attack the virtio-mmio
//! transport rather than a device type ([`group_queue`], [`group_notify`],
//! [`group_status_seq`], [`group_config`]). The device groups are
//! `blk::hostile` and `net::hostile`.
//!
//! A raw queue is set up without interrupts (the device's IOAPIC pin stays
//! masked) and polled; every wait ends after a bounded number of TSC
//! cycles.

use core::fmt;
use core::sync::atomic::{Ordering, fence};

use core::fmt::Write;

use crate::Report;
use crate::cpu;
use crate::mem::{MIB, MMIO_HOLE_START};
use crate::pit;
use crate::virtio::{self, Dma, Mmio};

/// DEVICE_NEEDS_RESET in the Status register.
pub const NEEDS_RESET: u32 = 0x40;
/// FAILED in the Status register.
pub const FAILED: u32 = 0x80;
/// VIRTIO_F_INDIRECT_DESC.
pub const F_INDIRECT_DESC: u64 = 1 << 28;

pub const DESC_NEXT: u16 = 1;
pub const DESC_WRITE: u16 = 2;
pub const DESC_INDIRECT: u16 = 4;

/// Whether `vmkit.hostile` is on the command line.
pub fn enabled(cmdline: &str) -> bool {
    cmdline
        .split_ascii_whitespace()
        .any(|w| w == "vmkit.hostile")
}

/// Where nothing is: addresses a device must refuse.
pub const HOLE: u64 = 0xd000_0000;
pub const LAPIC: u64 = 0xfee0_0000;
pub const IOAPIC: u64 = 0xfec0_0000;

/// A device's virtio-mmio window and what the groups need to know of the
/// guest's memory.
#[derive(Clone, Copy)]
pub struct Transport {
    pub mmio: Mmio,
    /// The device's queues (1 for virtio-blk, 2 for virtio-net).
    pub queues: u16,
    /// First guest-physical address past RAM (below the hole), or an
    /// address far above 4 GiB when RAM reaches the hole.
    pub outside: u64,
    /// The end of RAM when it is below the hole.
    pub ram_end: Option<u64>,
}

impl Transport {
    /// `mem_mib` is `vmkit.mem_mib`.
    pub fn new(mmio: Mmio, queues: u16, mem_mib: Option<u64>) -> Self {
        let ram_end = mem_mib
            .and_then(|m| m.checked_mul(MIB))
            .filter(|end| (16 * MIB..MMIO_HOLE_START).contains(end));
        Self {
            mmio,
            queues,
            outside: ram_end.unwrap_or(1 << 40),
            ram_end,
        }
    }
}

/// The raw queue's memory: descriptor table, available ring, used ring, a
/// page each (queues of up to 256 entries).
pub static RING: Dma<0x3000> = Dma::new();
/// The memory of a device's other queues while one is driven by hand: set
/// up well-formed and left empty.
pub static RING2: Dma<0x3000> = Dma::new();
const AVAIL: usize = 0x1000;
const USED: usize = 0x2000;

/// Guest-physical address of the raw queue's descriptor table, available
/// ring and used ring.
pub fn ring_addrs() -> (u64, u64, u64) {
    (RING.addr(0), RING.addr(AVAIL), RING.addr(USED))
}

/// TSC-based timeouts.
pub struct Clock {
    hz: u64,
}

impl Clock {
    /// Calibrates against the PIT (50 ms); assumes 3 GHz if that fails.
    pub fn new() -> Self {
        Self {
            hz: pit::tsc_hz().unwrap_or(3_000_000_000),
        }
    }

    pub fn cycles(&self, ms: u64) -> u64 {
        self.hz / 1000 * ms
    }

    /// Spins for `ms` milliseconds.
    pub fn sleep(&self, ms: u64) {
        let start = cpu::rdtsc();
        while cpu::rdtsc().wrapping_sub(start) < self.cycles(ms) {
            core::hint::spin_loop();
        }
    }
}

/// A fixed-size text buffer (longer text is cut).
pub struct Line {
    buf: [u8; 320],
    len: usize,
}

impl Line {
    pub fn new() -> Self {
        Self {
            buf: [0; 320],
            len: 0,
        }
    }

    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                break;
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Resets the device (Status 0) and checks that Status reads 0.
pub fn reset(mmio: &Mmio) -> Result<(), u32> {
    mmio.write(virtio::STATUS, 0);
    match mmio.read(virtio::STATUS) {
        0 => Ok(()),
        s => Err(s),
    }
}

/// Resets the device and negotiates `wanted & offered` (as
/// [`Mmio::negotiate`]); the device is left at FEATURES_OK.
pub fn negotiate(mmio: &Mmio, wanted: u64) -> Result<u64, &'static str> {
    mmio.negotiate(wanted)
}

/// Queue registers of the selected queue, written as given (no checks).
pub struct QueueLayout {
    pub size: u32,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

impl QueueLayout {
    /// The raw queue's own memory with `size` entries.
    pub fn standard(size: u32) -> Self {
        Self::in_ring(&RING, size)
    }

    /// `ring` with `size` entries.
    pub fn in_ring(ring: &Dma<0x3000>, size: u32) -> Self {
        Self {
            size,
            desc: ring.addr(0),
            driver: ring.addr(AVAIL),
            device: ring.addr(USED),
        }
    }
}

/// Programs every queue of `t` but `except` well-formed in [`RING2`]
/// (emptied; the device never gets a chain from them).
pub fn program_others(t: &Transport, except: u16, size: u16) {
    RING2.fill(0, 0x3000, 0);
    for q in (0..t.queues).filter(|&q| q != except) {
        program_queue(&t.mmio, q, &QueueLayout::in_ring(&RING2, u32::from(size)));
    }
}

/// Programs queue `index` with `layout` and sets QueueReady.
pub fn program_queue(mmio: &Mmio, index: u16, layout: &QueueLayout) {
    mmio.write(virtio::QUEUE_SEL, u32::from(index));
    mmio.write(virtio::QUEUE_NUM, layout.size);
    let w64 = |low: u64, high: u64, v: u64| {
        mmio.write(low, v as u32);
        mmio.write(high, (v >> 32) as u32);
    };
    w64(virtio::QUEUE_DESC_LOW, virtio::QUEUE_DESC_HIGH, layout.desc);
    w64(
        virtio::QUEUE_DRIVER_LOW,
        virtio::QUEUE_DRIVER_HIGH,
        layout.driver,
    );
    w64(
        virtio::QUEUE_DEVICE_LOW,
        virtio::QUEUE_DEVICE_HIGH,
        layout.device,
    );
    mmio.write(virtio::QUEUE_READY, 1);
}

/// Sets DRIVER_OK (no interrupt routing: the pin stays masked) and returns
/// the Status read back.
pub fn driver_ok(mmio: &Mmio) -> u32 {
    let status = virtio::STATUS_ACKNOWLEDGE
        | virtio::STATUS_DRIVER
        | virtio::STATUS_FEATURES_OK
        | virtio::STATUS_DRIVER_OK;
    mmio.write(virtio::STATUS, status);
    mmio.read(virtio::STATUS)
}

/// A split virtqueue in [`RING`], driven by hand.
pub struct Raw {
    pub mmio: Mmio,
    pub index: u16,
    pub size: u16,
    avail_idx: u16,
    used_seen: u16,
}

/// What [`Raw::wait`] saw.
#[derive(Clone, Copy)]
pub struct Waited {
    /// Index of the first new used entry.
    pub first: u16,
    /// New used entries.
    pub used: u16,
    /// The Status register at the end.
    pub status: u32,
}

impl Raw {
    /// Resets the device, negotiates `wanted`, sets queue `index` up with
    /// `size` entries in [`RING`] (and the device's other queues in
    /// [`RING2`], never used), sets DRIVER_OK. Errors name the step.
    pub fn start(t: &Transport, wanted: u64, index: u16, size: u16) -> Result<Self, &'static str> {
        let mmio = t.mmio;
        negotiate(&mmio, wanted)?;
        RING.fill(0, 0x3000, 0);
        program_others(t, index, size);
        program_queue(&mmio, index, &QueueLayout::standard(u32::from(size)));
        let status = driver_ok(&mmio);
        if status & virtio::STATUS_DRIVER_OK == 0 || status & NEEDS_RESET != 0 {
            return Err("the device refused DRIVER_OK on a well-formed queue");
        }
        Ok(Self {
            mmio,
            index,
            size,
            avail_idx: 0,
            used_seen: 0,
        })
    }

    /// Writes descriptor `i` of the table.
    pub fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = 16 * usize::from(i);
        RING.write(d, addr);
        RING.write(d + 8, len);
        RING.write(d + 12, flags);
        RING.write(d + 14, next);
    }

    /// Puts `heads` in the available ring and publishes them (avail.idx),
    /// then notifies.
    pub fn publish(&mut self, heads: &[u16]) {
        for &h in heads {
            let slot = usize::from(self.avail_idx % self.size);
            RING.write(AVAIL + 4 + 2 * slot, h);
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        fence(Ordering::SeqCst);
        RING.write(AVAIL + 2, self.avail_idx);
        fence(Ordering::SeqCst);
        self.notify();
    }

    /// Writes `bufs` (address, length, flags without NEXT) on consecutive
    /// descriptors from `first`, each but the last chained to the next;
    /// returns the index after the last.
    pub fn chain(&self, first: u16, bufs: &[(u64, u32, u16)]) -> u16 {
        let mut i = first;
        for (k, &(addr, len, flags)) in bufs.iter().enumerate() {
            let flags = if k + 1 == bufs.len() {
                flags
            } else {
                flags | DESC_NEXT
            };
            self.desc(i, addr, len, flags, i + 1);
            i += 1;
        }
        i
    }

    /// Puts `head` in the available ring but publishes an index the queue
    /// size + 7 ahead of it, notifies, and waits up to 500 ms for it.
    pub fn publish_ahead(&mut self, head: u16, clock: &Clock) -> Waited {
        self.put(head);
        self.set_avail_idx(self.size + 7);
        self.wait(1, clock, 500)
    }

    /// 2000 notifications; returns how many used entries the device added
    /// in the 200 ms after them.
    pub fn notification_storm(&mut self, clock: &Clock) -> u16 {
        for _ in 0..2000 {
            self.notify();
        }
        self.wait(1, clock, 200).used
    }

    /// Puts `head` in the next slot of the available ring without
    /// publishing it.
    pub fn put(&mut self, head: u16) {
        let slot = usize::from(self.avail_idx % self.size);
        RING.write(AVAIL + 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Writes `idx` to avail.idx as is (and notifies).
    pub fn set_avail_idx(&mut self, idx: u16) {
        fence(Ordering::SeqCst);
        RING.write(AVAIL + 2, idx);
        fence(Ordering::SeqCst);
        self.notify();
    }

    pub fn notify(&self) {
        self.mmio.write(virtio::QUEUE_NOTIFY, u32::from(self.index));
    }

    pub fn used_idx(&self) -> u16 {
        RING.read(USED + 2)
    }

    /// The `k`-th used entry since the queue started: (id, len).
    pub fn used(&self, k: u16) -> (u32, u32) {
        let slot = USED + 4 + 8 * usize::from(k % self.size);
        (RING.read(slot), RING.read(slot + 4))
    }

    /// Waits for `n` new used entries, for at most `ms` milliseconds; once
    /// the device sets NEEDS_RESET, for at most 100 ms more; once all `n`
    /// are back, up to 50 ms more for NEEDS_RESET. Marks what it saw
    /// consumed.
    pub fn wait(&mut self, n: u16, clock: &Clock, ms: u64) -> Waited {
        let start = cpu::rdtsc();
        let mut limit = clock.cycles(ms);
        let mut last_status_check = start;
        let mut reset_seen = false;
        let mut settle_until = u64::MAX;
        loop {
            let got = self.used_idx().wrapping_sub(self.used_seen);
            let now = cpu::rdtsc();
            if got >= n && (reset_seen || now.wrapping_sub(start) > settle_until) {
                break;
            }
            if got >= n && settle_until == u64::MAX {
                // Every entry is back; a device may set NEEDS_RESET just
                // after returning the chains of the same notification:
                // give it 50 ms.
                settle_until = now.wrapping_sub(start) + clock.cycles(50);
            }
            if now.wrapping_sub(start) > limit {
                break;
            }
            // Status reads are exits: once per millisecond.
            if now.wrapping_sub(last_status_check) > clock.cycles(1) {
                last_status_check = now;
                let status = self.mmio.read(virtio::STATUS);
                if status & NEEDS_RESET != 0 && !reset_seen {
                    reset_seen = true;
                    limit = limit.min(now.wrapping_sub(start) + clock.cycles(100));
                }
            }
            core::hint::spin_loop();
        }
        fence(Ordering::Acquire);
        let first = self.used_seen;
        let got = self.used_idx().wrapping_sub(first);
        self.used_seen = first.wrapping_add(got);
        Waited {
            first,
            used: got,
            status: self.mmio.read(virtio::STATUS),
        }
    }
}

/// Resets the device, naming what came before in the error.
fn reset_or(t: &Transport, what: &str, out: &mut Line) -> Result<(), ()> {
    reset(&t.mmio).map_err(|s| {
        let _ = write!(out, "{what}: Status {s:#x} after reset");
    })
}

fn negotiate_or(t: &Transport, what: &str, out: &mut Line) -> Result<(), ()> {
    negotiate(&t.mmio, virtio::F_VERSION_1)
        .map(|_| ())
        .map_err(|e| {
            let _ = write!(out, "{what}: negotiation: {e}");
        })
}

/// Bad queue layouts, on each queue of the device in turn (the others
/// well-formed): the device must not start (NEEDS_RESET, or DRIVER_OK not
/// kept), and must not touch memory.
pub fn group_queue(t: &Transport, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    let (desc, driver, device) = ring_addrs();
    let lay = QueueLayout::standard;
    let ram_end = t.ram_end.unwrap_or(MMIO_HOLE_START);
    let (mut tried, mut needs_reset, mut refused) = (0, 0, 0);
    for q in 0..t.queues {
        negotiate_or(t, "QueueNumMax", out)?;
        t.mmio.write(virtio::QUEUE_SEL, u32::from(q));
        let max = t.mmio.read(virtio::QUEUE_NUM_MAX);
        let layouts: [(&str, QueueLayout); 13] = [
            ("size 100", lay(100)),
            ("size 3", lay(3)),
            ("size 0", lay(0)),
            ("size 2 x QueueNumMax", lay(max * 2)),
            ("size 65536", lay(0x1_0000)),
            (
                "descriptor table at +8",
                QueueLayout {
                    desc: desc + 8,
                    ..lay(16)
                },
            ),
            (
                "driver area at +1",
                QueueLayout {
                    driver: driver + 1,
                    ..lay(16)
                },
            ),
            (
                "device area at +2",
                QueueLayout {
                    device: device + 2,
                    ..lay(16)
                },
            ),
            (
                "descriptor table in the hole",
                QueueLayout {
                    desc: HOLE,
                    ..lay(16)
                },
            ),
            (
                "device area in the LAPIC page",
                QueueLayout {
                    device: LAPIC,
                    ..lay(16)
                },
            ),
            (
                "driver area beyond RAM",
                QueueLayout {
                    driver: t.outside,
                    ..lay(16)
                },
            ),
            (
                "device area across the end of RAM",
                QueueLayout {
                    device: ram_end - 64,
                    ..lay(16)
                },
            ),
            (
                "descriptor table at 2^64-4 KiB",
                QueueLayout {
                    desc: u64::MAX - 0xfff,
                    ..lay(16)
                },
            ),
        ];
        for (what, layout) in &layouts {
            negotiate_or(t, what, out)?;
            RING.fill(0, 0x3000, 0);
            program_others(t, q, 16);
            program_queue(&t.mmio, q, layout);
            let status = driver_ok(&t.mmio);
            tried += 1;
            if status & NEEDS_RESET != 0 {
                needs_reset += 1;
            } else if status & virtio::STATUS_DRIVER_OK == 0 {
                refused += 1;
            } else {
                let _ = write!(
                    out,
                    "queue {q}, {what}: the device started (status {status:#x})"
                );
                return Err(());
            }
            // Notifications must do nothing now.
            for n in 0..t.queues {
                t.mmio.write(virtio::QUEUE_NOTIFY, u32::from(n));
            }
            clock.sleep(2);
            reset_or(t, what, out)?;
        }
    }
    let _ = write!(
        out,
        "{tried} bad layouts: NEEDS_RESET at DRIVER_OK for {needs_reset}, DRIVER_OK refused for {refused}"
    );
    Ok(())
}

/// Notifications of absent queues, before DRIVER_OK, and a storm on an
/// empty queue.
pub fn group_notify(t: &Transport, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    negotiate_or(t, "setup", out)?;
    RING.fill(0, 0x3000, 0);
    program_others(t, 0, 64);
    program_queue(&t.mmio, 0, &QueueLayout::standard(64));
    // Before DRIVER_OK: the queues are configured but not running.
    for q in [0, 1, 7] {
        t.mmio.write(virtio::QUEUE_NOTIFY, q);
    }
    let status = driver_ok(&t.mmio);
    if status & NEEDS_RESET != 0 || status & virtio::STATUS_DRIVER_OK == 0 {
        let _ = write!(
            out,
            "early notifications broke the device: status {status:#x}"
        );
        return Err(());
    }
    let queues = u32::from(t.queues);
    let mut absent = 0;
    for q in [queues, queues + 1, 0xffff, 0x8000_0000, u32::MAX] {
        for _ in 0..4 {
            t.mmio.write(virtio::QUEUE_NOTIFY, q);
            absent += 1;
        }
    }
    for _ in 0..5000 {
        t.mmio.write(virtio::QUEUE_NOTIFY, 0);
    }
    clock.sleep(10);
    let status = t.mmio.read(virtio::STATUS);
    if status & NEEDS_RESET != 0 {
        let _ = write!(
            out,
            "notifications of absent queues set NEEDS_RESET (status {status:#x})"
        );
        return Err(());
    }
    let _ = write!(
        out,
        "{absent} notifications of absent queues and 5000 of an empty queue ignored"
    );
    Ok(())
}

/// Status writes out of order.
pub fn group_status_seq(t: &Transport, _clock: &Clock, out: &mut Line) -> Result<(), ()> {
    use virtio::{
        STATUS, STATUS_ACKNOWLEDGE as ACK, STATUS_DRIVER as DRV, STATUS_DRIVER_OK as DOK,
        STATUS_FEATURES_OK as FOK,
    };
    let m = &t.mmio;
    let read = || m.read(STATUS);
    let expect = |out: &mut Line, what: &str, got: u32, want: u32| {
        if got == want {
            Ok(())
        } else {
            let _ = write!(out, "{what}: Status reads {got:#x}, expected {want:#x}");
            Err(())
        }
    };
    // DRIVER_OK before FEATURES_OK.
    reset_or(t, "start", out)?;
    m.write(STATUS, ACK);
    m.write(STATUS, ACK | DRV);
    m.write(STATUS, ACK | DRV | DOK);
    expect(out, "DRIVER_OK before FEATURES_OK", read(), ACK | DRV)?;
    // FEATURES_OK with a feature the device does not offer (bit 63).
    m.write(virtio::DEVICE_FEATURES_SEL, 1);
    let high = m.read(virtio::DEVICE_FEATURES);
    m.write(virtio::DRIVER_FEATURES_SEL, 0);
    m.write(virtio::DRIVER_FEATURES, 0);
    m.write(virtio::DRIVER_FEATURES_SEL, 1);
    m.write(virtio::DRIVER_FEATURES, (high & 1) | 0x8000_0000);
    m.write(STATUS, ACK | DRV | FOK);
    let got = read();
    if high & 0x8000_0000 == 0 {
        expect(out, "FEATURES_OK with unoffered feature 63", got, ACK | DRV)?;
    }
    // Clearing bits other than by reset.
    negotiate_or(t, "clearing bits", out)?;
    m.write(STATUS, ACK);
    expect(
        out,
        "clearing DRIVER and FEATURES_OK",
        read(),
        ACK | DRV | FOK,
    )?;
    // NEEDS_RESET and undefined bits from the driver.
    m.write(STATUS, ACK | DRV | FOK | NEEDS_RESET);
    expect(
        out,
        "NEEDS_RESET written by the driver",
        read(),
        ACK | DRV | FOK,
    )?;
    m.write(STATUS, ACK | DRV | FOK | 0x100);
    expect(out, "undefined bit 8", read(), ACK | DRV | FOK)?;
    // FAILED, then anything.
    m.write(STATUS, ACK | DRV | FOK | FAILED);
    m.write(STATUS, ACK | DRV | FOK | FAILED | DOK);
    expect(
        out,
        "DRIVER_OK after the driver gave up (0x80)",
        read(),
        ACK | DRV | FOK | FAILED,
    )?;
    let _ = write!(
        out,
        "DRIVER_OK before FEATURES_OK, FEATURES_OK with an unoffered feature, cleared bits, \
         NEEDS_RESET and undefined bits from the driver, DRIVER_OK after the driver gave up (0x80): all ignored"
    );
    Ok(())
}

/// Configuration writes anywhere in the window, and writes to read-only
/// registers. `field` names what `snapshot` reads of the device's
/// configuration (the capacity, the MAC address and status), which the
/// writes must not change.
pub fn group_config(
    t: &Transport,
    field: &str,
    snapshot: fn(&Mmio) -> u64,
    out: &mut Line,
) -> Result<(), ()> {
    let m = &t.mmio;
    negotiate_or(t, "setup", out)?;
    let before = snapshot(m);
    m.write(virtio::CONFIG, 0xffff_ffff);
    m.write(virtio::CONFIG + 4, 0xffff_ffff);
    m.write8(virtio::CONFIG + 0x3f, 0xff);
    m.write16(virtio::CONFIG + 0x22, 0xffff);
    m.write(virtio::CONFIG + 0xefc, 0xdead_beef);
    m.write8(virtio::CONFIG + 0xeff, 0xff);
    m.write16(virtio::CONFIG + 0xefe, 0xffff);
    // Read-only registers.
    for reg in [
        virtio::MAGIC_VALUE,
        virtio::VERSION,
        virtio::DEVICE_ID,
        0x00c,
        virtio::DEVICE_FEATURES,
        virtio::QUEUE_NUM_MAX,
        0x060,
        virtio::CONFIG_GENERATION,
    ] {
        m.write(reg, 0xffff_ffff);
    }
    // Unaligned and narrow register writes.
    m.write8(virtio::STATUS + 1, 0xff);
    m.write16(virtio::QUEUE_SEL + 2, 0xffff);
    let after = snapshot(m);
    if after != before {
        let _ = write!(out, "the {field} changed from {before:#x} to {after:#x}");
        return Err(());
    }
    let tail = m.read(virtio::CONFIG + 0xefc);
    if m.read(virtio::MAGIC_VALUE) != virtio::MAGIC || m.read(virtio::VERSION) != 2 {
        let _ = write!(out, "MagicValue or Version changed");
        return Err(());
    }
    let _ = write!(
        out,
        "writes to the {field}, at config offset 0xefc and to read-only registers ignored \
         ({field} {after:#x}, offset 0xefc reads {tail:#x})"
    );
    Ok(())
}

/// A group of attacks on device `D`: writes what the device did, or what
/// went wrong, to the line.
pub type Group<D> = fn(&D, &Clock, &mut Line) -> Result<(), ()>;

/// Runs each of `groups` on `dev`, then `normal_io(dev, group, line)`
/// (reset the device and prove it works), printing `ok <prefix>-<group>:
/// <what the device did>, normal I/O after reset ok` or a FAIL line.
pub fn run_groups<D>(
    r: &mut Report,
    prefix: &str,
    dev: &D,
    clock: &Clock,
    groups: &[(&str, Group<D>)],
    mut normal_io: impl FnMut(&D, &str, &mut Line) -> Result<(), ()>,
) {
    let mut name = Line::new();
    let mut out = Line::new();
    let mut after = Line::new();
    for &(group, f) in groups {
        name.clear();
        out.clear();
        after.clear();
        let _ = write!(name, "{prefix}-{group}");
        let result = f(dev, clock, &mut out);
        let recovered = normal_io(dev, group, &mut after);
        match (result, recovered) {
            (Ok(()), Ok(())) => r.pass(
                name.as_str(),
                format_args!("{}, normal I/O after reset ok", out.as_str()),
            ),
            (Err(()), Ok(())) => {
                r.fail::<()>(
                    name.as_str(),
                    format_args!("{} (normal I/O after reset ok)", out.as_str()),
                );
            }
            (_, Err(())) => {
                r.fail::<()>(
                    name.as_str(),
                    format_args!("{}; then {}", out.as_str(), after.as_str()),
                );
            }
        }
    }
}
