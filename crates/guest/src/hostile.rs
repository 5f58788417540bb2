//! `vmkit.hostile`: after its normal checks, the guest drives each virtio
//! device as a malicious driver would, then resets it and proves it still
//! works. This module holds what the device-specific groups share: a raw
//! split virtqueue whose descriptors, rings and indices are written by hand
//! ([`Raw`]), bounded TSC waits ([`Clock`]), and a small line buffer for
//! check names and details ([`Line`]). The groups themselves are
//! `blk::hostile` and `net::hostile`.
//!
//! A raw queue is set up without interrupts (the device's IOAPIC pin stays
//! masked) and polled; every wait ends after a bounded number of TSC
//! cycles.

use core::fmt;
use core::sync::atomic::{Ordering, fence};

use crate::cpu;
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

/// The raw queue's memory: descriptor table, available ring, used ring, a
/// page each (queues of up to 256 entries).
pub static RING: Dma<0x3000> = Dma::new();
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
        let (desc, driver, device) = ring_addrs();
        Self {
            size,
            desc,
            driver,
            device,
        }
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
    /// `size` entries in [`RING`] (and `others` with the same memory
    /// layout but never used), sets DRIVER_OK. Errors name the step.
    pub fn start(mmio: Mmio, wanted: u64, index: u16, size: u16) -> Result<Self, &'static str> {
        negotiate(&mmio, wanted)?;
        RING.fill(0, 0x3000, 0);
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
    /// the device sets NEEDS_RESET, for at most 100 ms more. Marks what it
    /// saw consumed.
    pub fn wait(&mut self, n: u16, clock: &Clock, ms: u64) -> Waited {
        let start = cpu::rdtsc();
        let mut limit = clock.cycles(ms);
        let mut last_status_check = start;
        let mut reset_seen = false;
        loop {
            let got = self.used_idx().wrapping_sub(self.used_seen);
            let now = cpu::rdtsc();
            if got >= n {
                break;
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
