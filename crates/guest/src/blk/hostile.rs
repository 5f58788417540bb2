//! `vmkit.hostile` on a virtio-blk disk: groups of requests a malicious
//! driver sends (see `crate::hostile`), each followed by a reset and normal
//! I/O. Every group prints `ok hostile-disk<i>-<group>: <what the device
//! did>, normal I/O after reset ok` or a `FAIL` line.
//!
//! A request group passes when each request was either answered with an
//! error status (IOERR or UNSUPP; OK only where the request is harmless,
//! e.g. zero-length) and a used length no larger than the chain's
//! device-writable bytes, or left unanswered (status byte untouched, used
//! length 0 or never returned) with DEVICE_NEEDS_RESET set; and when no
//! guest memory outside the status bytes changed. Hostile writes aim at
//! sectors the host test checks stay unchanged.

use core::fmt::Write;

use super::{
    BUF, Blk, DMA, Fail, PATTERN, Req, S_IOERR, S_OK, SECTOR, T_DISCARD, T_FLUSH, T_GET_ID, T_IN,
    T_OUT, T_WRITE_ZEROES,
};
use crate::Report;
use crate::hostile::{
    self as h, Clock, DESC_INDIRECT, DESC_NEXT, DESC_WRITE, F_INDIRECT_DESC, HOLE, IOAPIC, LAPIC,
    Line, NEEDS_RESET, Raw, Transport,
};
use crate::virtio::{self, Dma, Mmio};

const S_UNSUPP: u8 = 2;
const UNWRITTEN: u8 = 0xff;

/// Headers, segments, status bytes, canaries, a data buffer and indirect
/// tables of the hostile requests.
static AREA: Dma<0x4000> = Dma::new();
const HDR: usize = 0x000;
const SEG: usize = 0x200;
const STAT: usize = 0x400;
/// `STAT + MAX_REQS..DATA`: must never change.
const CANARY_BYTE: u8 = 0xc3;
/// A data buffer the device may be pointed at, but never legitimately
/// writes in a hostile group: it must keep [`DATA_BYTE`].
const DATA: usize = 0x800;
const DATA_LEN: usize = 0x800;
const DATA_BYTE: u8 = 0x5a;
const IND: usize = 0x1000;
const IND2: usize = 0x3000;
const MAX_REQS: usize = 24;

/// The first sectors of the disk, read before the first group; normal I/O
/// after each reset must read the same.
static REF: Dma<0x1000> = Dma::new();
const REF_SECTORS: u64 = 8;

/// Entries of the raw queue.
const QSIZE: u16 = 64;
const MS: u64 = 3000;

const R: u16 = 0;
const W: u16 = DESC_WRITE;

#[derive(Clone, Copy)]
struct Hreq {
    head: u16,
    slot: usize,
    /// Device-writable bytes of the chain's distinct descriptors.
    writable: u64,
    allow_ok: bool,
    what: &'static str,
    used: bool,
}

const NO_REQ: Hreq = Hreq {
    head: 0,
    slot: 0,
    writable: 0,
    allow_ok: false,
    what: "",
    used: false,
};

/// What the device did with a group's requests.
#[derive(Default)]
struct Tally {
    ioerr: u32,
    unsupp: u32,
    ok: u32,
    unanswered: u32,
    not_used: u32,
    needs_reset: bool,
}

impl core::fmt::Display for Tally {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut sep = "";
        for (n, what) in [
            (self.ioerr, "IOERR"),
            (self.unsupp, "UNSUPP"),
            (self.ok, "OK (harmless)"),
            (self.unanswered, "returned unanswered"),
            (self.not_used, "not returned"),
        ] {
            if n > 0 {
                write!(f, "{sep}{n} {what}")?;
                sep = ", ";
            }
        }
        if self.needs_reset {
            write!(f, "{sep}NEEDS_RESET set")?;
        }
        Ok(())
    }
}

/// The disk under test.
struct Dev {
    t: Transport,
    mmio: Mmio,
    irq: u32,
    capacity: u64,
    read_only: bool,
    /// First guest-physical address past RAM (below the hole), or an
    /// address far above 4 GiB when RAM reaches the hole.
    outside: u64,
    ram_end: Option<u64>,
}

/// One batch of hostile requests on a raw queue.
struct Batch {
    raw: Raw,
    next: u16,
    reqs: [Hreq; MAX_REQS],
    n: usize,
}

impl Batch {
    fn new(raw: Raw) -> Self {
        AREA.fill(0, 0x4000, 0);
        AREA.fill(STAT, DATA - STAT, CANARY_BYTE);
        AREA.fill(DATA, DATA_LEN, DATA_BYTE);
        Self {
            raw,
            next: 0,
            reqs: [NO_REQ; MAX_REQS],
            n: 0,
        }
    }

    fn hdr(&self, slot: usize, kind: u32, sector: u64) -> u64 {
        let at = HDR + 16 * slot;
        AREA.write(at, kind);
        AREA.write(at + 4, 0u32);
        AREA.write(at + 8, sector);
        AREA.addr(at)
    }

    fn status(&self, slot: usize) -> u64 {
        AREA.write(STAT + slot, UNWRITTEN);
        AREA.addr(STAT + slot)
    }

    fn seg(&self, slot: usize, sector: u64, count: u32) -> u64 {
        let at = SEG + 16 * slot;
        AREA.write(at, sector);
        AREA.write(at + 8, count);
        AREA.write(at + 12, 0u32);
        AREA.addr(at)
    }

    /// Records a request whose descriptors the caller wrote; `head` is its
    /// head, `writable` the device-writable bytes of its distinct
    /// descriptors.
    fn record(&mut self, what: &'static str, head: u16, writable: u64, allow_ok: bool) {
        self.reqs[self.n] = Hreq {
            head,
            slot: self.n,
            writable,
            allow_ok,
            what,
            used: false,
        };
        self.n += 1;
    }

    /// A chain of `bufs` (addr, len, flags without NEXT) on consecutive
    /// descriptors.
    fn chain(&mut self, what: &'static str, bufs: &[(u64, u32, u16)], allow_ok: bool) {
        let head = self.next;
        let writable = bufs
            .iter()
            .filter(|b| b.2 & DESC_WRITE != 0)
            .map(|b| u64::from(b.1))
            .sum();
        self.next = self.raw.chain(head, bufs);
        self.record(what, head, writable, allow_ok);
    }

    /// `[header(kind, sector), data.., status]`.
    fn req(&mut self, what: &'static str, kind: u32, sector: u64, data: &[(u64, u32, u16)]) {
        self.req_ok(what, kind, sector, data, false)
    }

    fn req_ok(
        &mut self,
        what: &'static str,
        kind: u32,
        sector: u64,
        data: &[(u64, u32, u16)],
        allow_ok: bool,
    ) {
        let slot = self.n;
        let mut bufs = [(0u64, 0u32, 0u16); 6];
        bufs[0] = (self.hdr(slot, kind, sector), 16, R);
        bufs[1..=data.len()].copy_from_slice(data);
        bufs[data.len() + 1] = (self.status(slot), 1, W);
        self.chain(what, &bufs[..data.len() + 2], allow_ok);
    }

    /// Publishes the batch, waits and checks what came back, adding to
    /// `t`.
    fn run(&mut self, clock: &Clock, t: &mut Tally, out: &mut Line) -> Result<(), ()> {
        let mut heads = [0u16; MAX_REQS];
        for (k, r) in self.reqs[..self.n].iter().enumerate() {
            heads[k] = r.head;
        }
        self.raw.publish(&heads[..self.n]);
        let waited = self.raw.wait(self.n as u16, clock, MS);
        self.check(waited, t, out)
    }

    fn check(&mut self, waited: h::Waited, t: &mut Tally, out: &mut Line) -> Result<(), ()> {
        for k in 0..waited.used {
            let (id, len) = self.raw.used(waited.first.wrapping_add(k));
            let Some(r) = self.reqs[..self.n]
                .iter_mut()
                .find(|r| !r.used && u32::from(r.head) == id)
            else {
                let _ = write!(out, "used id {id} is not a chain in flight");
                return Err(());
            };
            r.used = true;
            if u64::from(len) > r.writable {
                let _ = write!(
                    out,
                    "{}: used length {len} exceeds the chain's {} device-writable bytes",
                    r.what, r.writable
                );
                return Err(());
            }
            let status: u8 = AREA.read(STAT + r.slot);
            match status {
                UNWRITTEN if len == 0 => t.unanswered += 1,
                UNWRITTEN => {
                    let _ = write!(
                        out,
                        "{}: used length {len} but the status byte was never written",
                        r.what
                    );
                    return Err(());
                }
                S_IOERR => t.ioerr += 1,
                S_UNSUPP => t.unsupp += 1,
                S_OK if r.allow_ok => t.ok += 1,
                s => {
                    let _ = write!(
                        out,
                        "{}: status {s:#04x} (expected IOERR or UNSUPP)",
                        r.what
                    );
                    return Err(());
                }
            }
        }
        for r in &self.reqs[..self.n] {
            if !r.used {
                t.not_used += 1;
            }
        }
        t.needs_reset |= waited.status & NEEDS_RESET != 0;
        if (t.unanswered > 0 || t.not_used > 0) && !t.needs_reset {
            let _ = write!(
                out,
                "{t}: requests left unanswered without NEEDS_RESET (status {:#x})",
                waited.status
            );
            return Err(());
        }
        check_memory(out)
    }
}

/// The canaries and the data buffer are as the batch left them.
fn check_memory(out: &mut Line) -> Result<(), ()> {
    for at in STAT + MAX_REQS..DATA {
        let b: u8 = AREA.read(at);
        if b != CANARY_BYTE {
            let _ = write!(
                out,
                "guest memory next to the status bytes changed (offset {at:#x} = {b:#04x})"
            );
            return Err(());
        }
    }
    for at in DATA..DATA + DATA_LEN {
        let b: u8 = AREA.read(at);
        if b != DATA_BYTE {
            let _ = write!(
                out,
                "a buffer no request could legitimately fill changed (byte {} = {b:#04x})",
                at - DATA
            );
            return Err(());
        }
    }
    Ok(())
}

fn start(dev: &Dev, out: &mut Line) -> Result<Batch, ()> {
    match Raw::start(&dev.t, virtio::F_VERSION_1 | F_INDIRECT_DESC, 0, QSIZE) {
        Ok(raw) => Ok(Batch::new(raw)),
        Err(e) => {
            let _ = write!(out, "raw queue setup: {e}");
            Err(())
        }
    }
}

fn data() -> u64 {
    AREA.addr(DATA)
}

/// Descriptors at addresses that are not RAM.
fn group_addr(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    let mut b = start(dev, out)?;
    let mut t = Tally::default();
    b.req("IN beyond RAM", T_IN, 0, &[(dev.outside, 512, W)]);
    b.req("IN into the MMIO hole", T_IN, 0, &[(HOLE, 512, W)]);
    b.req("IN into the LAPIC page", T_IN, 0, &[(LAPIC, 512, W)]);
    b.req("IN into the IOAPIC page", T_IN, 0, &[(IOAPIC, 512, W)]);
    b.req(
        "IN into its own registers",
        T_IN,
        0,
        &[(dev.mmio.base(), 512, W)],
    );
    if let Some(end) = dev.ram_end {
        b.req("IN across the end of RAM", T_IN, 0, &[(end - 512, 1024, W)]);
    }
    b.req(
        "IN half into the hole",
        T_IN,
        0,
        &[(data(), 512, W), (HOLE, 512, W)],
    );
    b.req(
        "IN wrapping the address space",
        T_IN,
        0,
        &[(u64::MAX - 511, 512, W)],
    );
    b.req("OUT from the MMIO hole", T_OUT, 0, &[(HOLE, 512, R)]);
    b.req("OUT from the LAPIC page", T_OUT, 1, &[(LAPIC, 512, R)]);
    let slot = b.n;
    let st = b.status(slot);
    b.chain(
        "header in the MMIO hole",
        &[(HOLE, 16, R), (data(), 512, R), (st, 1, W)],
        false,
    );
    b.run(clock, &mut t, out)?;
    let _ = write!(out, "{t}");
    Ok(())
}

/// Status bytes the device cannot write.
fn group_status(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    let mut b = start(dev, out)?;
    let mut t = Tally::default();
    for (what, st, len, flags) in [
        ("status in the MMIO hole", HOLE, 1, W),
        ("status in the LAPIC page", LAPIC, 1, W),
        ("status beyond RAM", dev.outside, 1, W),
        (
            "device-readable status",
            AREA.addr(STAT + MAX_REQS - 1),
            1,
            R,
        ),
        ("status of 0 bytes", AREA.addr(STAT + MAX_REQS - 2), 0, W),
    ] {
        let slot = b.n;
        b.status(slot);
        // An IN into the data buffer: if the device executed it, the
        // buffer would change.
        let hdr = b.hdr(slot, T_IN, 0);
        b.chain(
            what,
            &[(hdr, 16, R), (data(), 512, W), (st, len, flags)],
            false,
        );
        // The data buffer is writable in these chains; only the status is
        // bad, and the request must not run.
        b.reqs[b.n - 1].writable = u64::from(len) * u64::from(flags & W != 0);
    }
    // The last two point into the canaries: a device that wrote them is
    // caught there.
    let slot = b.n;
    let hdr = b.hdr(slot, T_OUT, 2);
    b.status(slot);
    b.chain(
        "OUT with its status in the hole",
        &[(hdr, 16, R), (data(), 512, R), (HOLE + 0x1000, 1, W)],
        false,
    );
    b.run(clock, &mut t, out)?;
    let _ = write!(out, "{t}");
    Ok(())
}

/// Descriptor loops and chains that leave the table.
fn group_loop(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    let mut b = start(dev, out)?;
    let mut t = Tally::default();
    let d = data();
    // 0 -> 1 -> 1 -> ...: an IN whose data descriptor points at itself.
    let hdr = b.hdr(0, T_IN, 0);
    b.status(0);
    b.raw.desc(0, hdr, 16, DESC_NEXT, 1);
    b.raw.desc(1, d, 512, W | DESC_NEXT, 1);
    b.record("data descriptor looping on itself", 0, 512, false);
    // 2 -> 3 -> 4 -> 2: an OUT whose status leads back to its header.
    let hdr = b.hdr(1, T_OUT, 3);
    let st = b.status(1);
    b.raw.desc(2, hdr, 16, DESC_NEXT, 3);
    b.raw.desc(3, d, 512, DESC_NEXT, 4);
    b.raw.desc(4, st, 1, W | DESC_NEXT, 2);
    b.record("status looping back to the header", 2, 1, false);
    // 5 -> 200: next beyond the table.
    let hdr = b.hdr(2, T_IN, 0);
    let st = b.status(2);
    b.raw.desc(5, hdr, 16, DESC_NEXT, 6);
    b.raw.desc(6, st, 1, W | DESC_NEXT, 200);
    b.record("next beyond the table", 5, 1, false);
    // 7 -> indirect table whose entries are indirect (nested).
    let hdr = b.hdr(3, T_IN, 0);
    b.status(3);
    for k in 0..2 {
        AREA.write(IND2 + 16 * k, AREA.addr(IND2));
        AREA.write(IND2 + 16 * k + 8, 32u32);
        AREA.write(IND2 + 16 * k + 12, DESC_INDIRECT);
        AREA.write(IND2 + 16 * k + 14, 0u16);
    }
    b.raw.desc(7, hdr, 16, DESC_NEXT, 8);
    b.raw.desc(8, AREA.addr(IND2), 32, DESC_INDIRECT, 0);
    b.record("nested indirect tables", 7, 0, false);
    b.run(clock, &mut t, out)?;
    let _ = write!(out, "{t}");
    Ok(())
}

/// Chains longer than the queue: by next chaining (every descriptor of
/// the table, the last leading back to the first) and by indirect tables
/// with more entries than the queue.
fn group_long(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    let mut t = Tally::default();
    let mut b = start(dev, out)?;
    let d = data();
    let hdr = b.hdr(0, T_OUT, 4);
    let st = b.status(0);
    b.raw.desc(0, hdr, 16, DESC_NEXT, 1);
    for i in 1..QSIZE - 1 {
        b.raw.desc(i, d, 512, DESC_NEXT, i + 1);
    }
    b.raw.desc(QSIZE - 1, st, 1, W | DESC_NEXT, 0);
    b.record("a chain through all 64 descriptors and back", 0, 1, false);
    b.run(clock, &mut t, out)?;
    h::reset(&dev.mmio).map_err(|s| {
        let _ = write!(out, "Status {s:#x} after reset");
    })?;

    let mut b = start(dev, out)?;
    // 302 entries: header, 300 data descriptors, status.
    let hdr = b.hdr(0, T_OUT, 5);
    let st = b.status(0);
    let entry = |k: usize, addr: u64, len: u32, flags: u16| {
        let at = IND + 16 * k;
        AREA.write(at, addr);
        AREA.write(at + 8, len);
        AREA.write(at + 12, flags);
        AREA.write(at + 14, (k + 1) as u16);
    };
    entry(0, hdr, 16, DESC_NEXT);
    for k in 1..=300 {
        entry(k, d, 512, DESC_NEXT);
    }
    entry(301, st, 1, W);
    b.raw.desc(0, AREA.addr(IND), 16 * 302, DESC_INDIRECT, 0);
    b.record("an indirect table of 302 entries", 0, 1, false);
    // A table the size of 65536 entries, and one of 1.5 entries.
    b.status(1);
    b.raw.desc(1, AREA.addr(IND), 16 << 16, DESC_INDIRECT, 0);
    b.record("an indirect table of 65536 entries", 1, 0, false);
    b.status(2);
    b.raw.desc(2, AREA.addr(IND), 24, DESC_INDIRECT, 0);
    b.record("an indirect table of 24 bytes", 2, 0, false);
    b.run(clock, &mut t, out)?;
    let _ = write!(out, "{t}");
    Ok(())
}

/// Zero and huge lengths.
fn group_len(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    let mut b = start(dev, out)?;
    let mut t = Tally::default();
    let d = data();
    for (what, hlen) in [("header of 0 bytes", 0u32), ("header of 8 bytes", 8)] {
        let slot = b.n;
        let hdr = b.hdr(slot, T_IN, 0);
        let st = b.status(slot);
        b.chain(what, &[(hdr, hlen, R), (d, 512, W), (st, 1, W)], false);
        b.reqs[b.n - 1].writable = 1;
    }
    b.req("IN of 0xffffffff bytes", T_IN, 0, &[(d, u32::MAX, W)]);
    b.req("IN of 511 bytes", T_IN, 0, &[(d, 511, W)]);
    b.req(
        "GET_ID into 0xffffffff bytes",
        T_GET_ID,
        0,
        &[(d, u32::MAX, W)],
    );
    b.req("OUT of 0xffffffff bytes", T_OUT, 6, &[(d, u32::MAX, R)]);
    b.req_ok("IN of 0 bytes", T_IN, 0, &[(d, 0, W)], true);
    b.req_ok(
        "OUT of 0 bytes from the hole",
        T_OUT,
        7,
        &[(HOLE, 0, R)],
        true,
    );
    let slot = b.n;
    let hdr = b.hdr(slot, T_FLUSH, 0);
    let st = b.status(slot);
    b.chain(
        "FLUSH with a status of 0xffffffff bytes",
        &[(hdr, 16, R), (st, u32::MAX, W)],
        true,
    );
    b.run(clock, &mut t, out)?;
    let _ = write!(out, "{t}");
    Ok(())
}

/// Device-readable buffers where writable ones are needed, and vice versa.
fn group_dir(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    let mut b = start(dev, out)?;
    let mut t = Tally::default();
    let d = data();
    b.req("IN into a device-readable buffer", T_IN, 0, &[(d, 512, R)]);
    b.req(
        "OUT from a device-writable buffer",
        T_OUT,
        8,
        &[(d, 512, W)],
    );
    b.req(
        "OUT from mixed buffers",
        T_OUT,
        9,
        &[(d, 512, R), (d + 512, 512, W)],
    );
    b.req(
        "GET_ID into a device-readable buffer",
        T_GET_ID,
        0,
        &[(d, 20, R)],
    );
    let seg = b.seg(b.n, 10, 1);
    b.req(
        "DISCARD with a device-writable segment",
        T_DISCARD,
        0,
        &[(seg, 16, W)],
    );
    let slot = b.n;
    let hdr = b.hdr(slot, T_IN, 0);
    let st = b.status(slot);
    b.chain(
        "device-writable header",
        &[(hdr, 16, W), (d, 512, R), (st, 1, W)],
        false,
    );
    b.run(clock, &mut t, out)?;
    let _ = write!(out, "{t}");
    Ok(())
}

/// Sectors past the end, and sector * 512 overflowing.
fn group_sector(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    let mut b = start(dev, out)?;
    let mut t = Tally::default();
    let d = data();
    let cap = dev.capacity;
    b.req("IN at the capacity", T_IN, cap, &[(d, 512, W)]);
    b.req("IN across the end", T_IN, cap - 1, &[(d, 1024, W)]);
    b.req("IN at sector 2^64-1", T_IN, u64::MAX, &[(d, 512, W)]);
    b.req(
        "IN at sector 2^55 (byte offset 2^64)",
        T_IN,
        1 << 55,
        &[(d, 512, W)],
    );
    b.req(
        "IN at sector 2^64/512+1",
        T_IN,
        u64::MAX / 512 + 1,
        &[(d, 512, W)],
    );
    b.req("OUT at the capacity", T_OUT, cap, &[(d, 512, R)]);
    b.req("OUT across the end", T_OUT, cap - 1, &[(d, 1024, R)]);
    b.req("OUT at sector 2^64-1", T_OUT, u64::MAX, &[(d, 512, R)]);
    b.req("OUT at sector 2^55", T_OUT, 1 << 55, &[(d, 512, R)]);
    for (what, kind, sector, count) in [
        ("WRITE_ZEROES wrapping", T_WRITE_ZEROES, u64::MAX - 1, 4u32),
        ("WRITE_ZEROES past the end", T_WRITE_ZEROES, cap, 1),
        ("DISCARD past the end", T_DISCARD, cap - 1, 2),
        ("DISCARD of 2^32-1 sectors", T_DISCARD, 0, u32::MAX),
    ] {
        let seg = b.seg(b.n, sector, count);
        b.req(what, kind, 0, &[(seg, 16, R)]);
    }
    b.run(clock, &mut t, out)?;
    let _ = write!(out, "{t}");
    Ok(())
}

/// The available index jumping more than the queue size ahead, then a
/// storm of notifications.
fn group_avail(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    let mut b = start(dev, out)?;
    let mut t = Tally::default();
    // A well-formed IN: if the device ran it, the data buffer would change.
    b.req(
        "IN behind an available index 71 ahead",
        T_IN,
        0,
        &[(data(), 512, W)],
    );
    // Put the head in slot 0 but publish an index far ahead.
    let head = b.reqs[0].head;
    let waited = b.raw.publish_ahead(head, clock);
    b.check(waited, &mut t, out)?;
    if !t.needs_reset {
        let _ = write!(out, "{t}: NEEDS_RESET not set");
        return Err(());
    }
    let used = b.raw.notification_storm(clock);
    if used != 0 {
        let _ = write!(
            out,
            "{t}; then used {used} entries after a notification storm"
        );
        return Err(());
    }
    check_memory(out)?;
    let _ = write!(out, "{t}, 2000 notifications after it ignored");
    Ok(())
}

/// Resets the device and checks it works: initialise it normally, read
/// the first sectors (the same as before the first group) and, on a
/// writable disk with a `vmkit.fill` range, rewrite the range's first
/// sector with its byte and read it back. With `save`, records the
/// sectors instead of comparing.
fn normal_io(dev: &Dev, fill: Option<(u64, u8)>, save: bool, out: &mut Line) -> Result<(), ()> {
    if let Err(s) = h::reset(&dev.mmio) {
        let _ = write!(out, "Status {s:#x} after reset");
        return Err(());
    }
    let mut blk = match Blk::init(dev.mmio, dev.irq) {
        Ok(blk) => blk,
        Err(e) => {
            let _ = write!(out, "init after reset: {e}");
            dev.mmio.write(virtio::STATUS, 0);
            return Err(());
        }
    };
    let result = normal_io_on(&mut blk, dev, fill, save, out);
    blk.reset();
    result
}

fn normal_io_on(
    blk: &mut Blk,
    dev: &Dev,
    fill: Option<(u64, u8)>,
    save: bool,
    out: &mut Line,
) -> Result<(), ()> {
    let fail = |out: &mut Line, what: &str, e: Fail| {
        let _ = write!(out, "{what} after reset: {e}");
    };
    let len = (REF_SECTORS.min(blk.capacity) * SECTOR) as usize;
    let read = Req {
        kind: T_IN,
        sector: 0,
        addr: DMA.addr(BUF),
        len: len as u32,
        segs: 2,
    };
    DMA.fill(BUF, len, 0xee);
    blk.expect_ok(read).map_err(|e| fail(out, "read", e))?;
    let got = DMA.bytes(BUF, len);
    if save {
        for (k, &b) in got.iter().enumerate() {
            REF.write(k, b);
        }
    } else if got != REF.bytes(0, len) {
        let _ = write!(out, "the first {len} bytes read differently after reset");
        return Err(());
    }
    if let Some((first, byte)) = fill.filter(|_| !dev.read_only) {
        DMA.fill(PATTERN, SECTOR as usize, byte);
        let write = Req {
            kind: T_OUT,
            sector: first,
            addr: DMA.addr(PATTERN),
            len: SECTOR as u32,
            segs: 1,
        };
        blk.expect_ok(write).map_err(|e| fail(out, "write", e))?;
        blk.verify(first, 1, byte)
            .map_err(|e| fail(out, "read back", e))?;
    }
    Ok(())
}

type Group = h::Group<Dev>;

/// The capacity field of the configuration.
fn config_capacity(m: &Mmio) -> u64 {
    u64::from(m.config32(0)) | u64::from(m.config32(4)) << 32
}

/// A disk to run the hostile groups on.
pub(super) struct Target {
    pub mmio: Mmio,
    pub irq: u32,
    /// Its index (`disk<i>`).
    pub disk: usize,
    pub capacity: u64,
    pub read_only: bool,
    /// `vmkit.mem_mib`.
    pub mem_mib: Option<u64>,
    /// The first sector of its `vmkit.fill` range and the byte.
    pub fill: Option<(u64, u8)>,
}

/// Runs every hostile group on a disk.
pub(super) fn run(target: Target, r: &mut Report) {
    let Target {
        mmio,
        irq,
        disk,
        capacity,
        read_only,
        mem_mib,
        fill,
    } = target;
    let t = Transport::new(mmio, 1, mem_mib);
    let dev = Dev {
        t,
        mmio,
        irq,
        capacity,
        read_only,
        outside: t.outside,
        ram_end: t.ram_end,
    };
    let mut name = Line::new();
    let mut out = Line::new();
    let _ = write!(name, "hostile-disk{disk}");
    if capacity < 2 {
        r.fail::<()>(
            name.as_str(),
            format_args!("disk{disk} has fewer than 2 sectors"),
        );
        return;
    }
    if normal_io(&dev, fill, true, &mut out).is_err() {
        r.fail::<()>(
            name.as_str(),
            format_args!("disk{disk} before the hostile groups: {}", out.as_str()),
        );
        return;
    }
    let clock = Clock::new();
    let groups: [(&str, Group); 12] = [
        ("addr", group_addr),
        ("status", group_status),
        ("loop", group_loop),
        ("long", group_long),
        ("len", group_len),
        ("dir", group_dir),
        ("sector", group_sector),
        ("avail", group_avail),
        ("queue", |d, c, o| h::group_queue(&d.t, c, o)),
        ("notify", |d, c, o| h::group_notify(&d.t, c, o)),
        ("status-seq", |d, c, o| h::group_status_seq(&d.t, c, o)),
        ("config", |d, _, o| {
            h::group_config(&d.t, "capacity", config_capacity, o)
        }),
    ];
    h::run_groups(r, name.as_str(), &dev, &clock, &groups, |d, _, o| {
        normal_io(d, fill, false, o)
    });
}
