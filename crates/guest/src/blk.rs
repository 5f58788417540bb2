//! virtio-blk disks on virtio-mmio: find them on the command line, set each
//! up, run the `blk-*` checks and, on request, a 4 KiB random-read bench.
//!
//! Devices come from `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` (Linux's
//! format); the i-th virtio-blk device in command-line order is `disk<i>`.
//! One disk is set up at a time, in this module's static ring and DMA area
//! ([`RING`], [`DMA`]), and reset before the next. The transport (probing,
//! feature negotiation, the virtqueue) is `virtio`'s.

use core::fmt;

use crate::Report;
use crate::bootparams;
use crate::cpu;
use crate::irq;
use crate::pit;
use crate::println;
use crate::virtio::{self, Buf, Dma, Mmio, Queue, QueueError, Ring};

mod hostile;

const BLK_F_SEG_MAX: u64 = 1 << 2;
const BLK_F_RO: u64 = 1 << 5;
const BLK_F_BLK_SIZE: u64 = 1 << 6;
const BLK_F_FLUSH: u64 = 1 << 9;
const BLK_F_DISCARD: u64 = 1 << 13;
const BLK_F_WRITE_ZEROES: u64 = 1 << 14;
/// What the driver accepts when offered. VERSION_1 is required.
const DRIVER_FEATURES: u64 = virtio::F_VERSION_1
    | virtio::F_RING_EVENT_IDX
    | BLK_F_SEG_MAX
    | BLK_F_RO
    | BLK_F_BLK_SIZE
    | BLK_F_FLUSH
    | BLK_F_DISCARD
    | BLK_F_WRITE_ZEROES;

/// `struct virtio_blk_config` offsets.
const CFG_CAPACITY: u64 = 0;
const CFG_SEG_MAX: u64 = 12;
const CFG_BLK_SIZE: u64 = 20;
const CFG_MAX_DISCARD_SECTORS: u64 = 36;
const CFG_MAX_WRITE_ZEROES_SECTORS: u64 = 48;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
/// Written into each status byte before submission: the device must
/// overwrite it.
const S_UNWRITTEN: u8 = 0xff;

/// Requests in flight at most, each with its own header, status byte and
/// payload slot.
const SLOTS: usize = 32;
/// Bytes of data buffer per slot; [`BUF`] is `SLOTS * SLOT_BYTES` = 1 MiB.
const SLOT_BYTES: usize = 32 << 10;

/// Layout of [`DMA`]: request headers, 16 bytes per slot.
const HEADERS: usize = 0;
/// DISCARD / WRITE_ZEROES segments, 16 bytes per slot.
const SEGMENTS: usize = 0x200;
/// Status bytes, one per slot.
const STATUS_BYTES: usize = 0x400;
/// A data buffer of `SLOT_BYTES` the driver fills for writes.
const PATTERN: usize = 0x1000;
/// The 1 MiB data buffer: `SLOTS` slots of `SLOT_BYTES`.
const BUF: usize = PATTERN + SLOT_BYTES;
const BUF_BYTES: usize = SLOTS * SLOT_BYTES;
const DMA_BYTES: usize = BUF + BUF_BYTES;

const _: () = assert!(HEADERS + 16 * SLOTS <= SEGMENTS && SEGMENTS + 16 * SLOTS <= STATUS_BYTES);
const _: () = assert!(STATUS_BYTES + SLOTS <= PATTERN);

/// The disk's virtqueue 0.
static RING: Ring = Ring::new();
/// Request headers, status bytes and data buffers of the disk being checked.
static DMA: Dma<DMA_BYTES> = Dma::new();

const SECTOR: u64 = 512;
const SECTORS_PER_SLOT: u64 = SLOT_BYTES as u64 / SECTOR;
/// Data descriptors per request at most.
const MAX_SEGS: u32 = 4;
/// Bytes covered by `blk-read`'s CRC.
const CRC_BYTES: u64 = 1 << 20;
/// GET_ID's buffer.
const ID_BYTES: u32 = 20;
/// Most `vmkit.fill` parameters.
const MAX_FILLS: usize = 16;
/// Most `vmkit.blk-bench` parameters.
const MAX_BENCHES: usize = 8;
/// Block stride of the bench, in 4 KiB blocks (odd: it visits every block
/// of a disk with a power-of-two size).
const BENCH_STRIDE: u64 = 0x9e37_79b9;

/// One request: for IN/OUT/GET_ID `len` bytes at `addr` in `segs` data
/// descriptors; for DISCARD/WRITE_ZEROES `len` sectors from `sector`.
#[derive(Clone, Copy)]
struct Req {
    kind: u32,
    sector: u64,
    addr: u64,
    len: u32,
    segs: u32,
}

impl Req {
    fn name(&self) -> &'static str {
        match self.kind {
            T_IN => "IN",
            T_OUT => "OUT",
            T_FLUSH => "FLUSH",
            T_GET_ID => "GET_ID",
            T_DISCARD => "DISCARD",
            T_WRITE_ZEROES => "WRITE_ZEROES",
            _ => "?",
        }
    }
}

/// Why a request or a check failed.
enum Fail {
    Timeout(usize),
    BadUsedId(u32),
    Status(Req, u8),
    Mismatch {
        sector: u64,
        offset: usize,
        got: u8,
        want: u8,
    },
    TooLong(u32),
    Broken,
}

impl From<QueueError> for Fail {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::BadUsedId(id) => Fail::BadUsedId(id),
        }
    }
}

struct StatusName(u8);

impl fmt::Display for StatusName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("OK"),
            1 => f.write_str("IOERR"),
            2 => f.write_str("UNSUPP"),
            S_UNWRITTEN => f.write_str("never written (0xff)"),
            s => write!(f, "{s:#04x}"),
        }
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Timeout(n) => write!(
                f,
                "no completion within the timeout, {n} requests in flight"
            ),
            Fail::BadUsedId(id) => write!(f, "device used id {id}, not a chain in flight"),
            Fail::Status(req, s) => match req.kind {
                T_IN | T_OUT => write!(
                    f,
                    "{} of {} bytes at sector {}: status {}",
                    req.name(),
                    req.len,
                    req.sector,
                    StatusName(*s)
                ),
                T_DISCARD | T_WRITE_ZEROES => write!(
                    f,
                    "{} of sectors {}..{}: status {}",
                    req.name(),
                    req.sector,
                    req.sector + u64::from(req.len),
                    StatusName(*s)
                ),
                _ => write!(f, "{}: status {}", req.name(), StatusName(*s)),
            },
            Fail::Mismatch {
                sector,
                offset,
                got,
                want,
            } => write!(
                f,
                "sector {sector} byte {offset} reads {got:#04x}, expected {want:#04x}"
            ),
            Fail::TooLong(n) => write!(f, "a {n}-descriptor chain does not fit the queue"),
            Fail::Broken => f.write_str("not tried: the queue broke in an earlier request"),
        }
    }
}

/// `vmkit.fill=<disk>:<first sector>:<count>:<byte as 2 hex digits>`.
#[derive(Clone, Copy)]
struct Fill {
    disk: usize,
    first: u64,
    count: u64,
    byte: u8,
}

fn parse_fill(s: &str) -> Option<Fill> {
    let mut it = s.split(':');
    let dec = |t: Option<&str>| -> Option<u64> {
        let t = t?;
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse().ok())?
    };
    let disk = usize::try_from(dec(it.next())?).ok()?;
    let first = dec(it.next())?;
    let count = dec(it.next())?;
    let byte = it.next()?;
    if byte.len() != 2 || !byte.bytes().all(|b| b.is_ascii_hexdigit()) || it.next().is_some() {
        return None;
    }
    let byte = u8::from_str_radix(byte, 16).ok()?;
    Some(Fill {
        disk,
        first,
        count,
        byte,
    })
}

/// CRC-32 (IEEE 802.3, zlib's `crc32`): reflected 0xedb88320, table-driven.
struct Crc32(u32);

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

impl Crc32 {
    fn new() -> Self {
        Self(0xffff_ffff)
    }

    fn update(&mut self, bytes: &[u8]) {
        let mut c = self.0;
        for &b in bytes {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    fn finish(&self) -> u32 {
        self.0 ^ 0xffff_ffff
    }
}

/// A number with two decimals: `num / den` rounded to hundredths.
struct Ratio(u64, u64);

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hundredths = match self.1 {
            0 => 0,
            den => (u128::from(self.0) * 100 + u128::from(den) / 2) / u128::from(den),
        };
        write!(f, "{}.{:02}", hundredths / 100, hundredths % 100)
    }
}

/// The disk's GET_ID string, quoted, non-printable bytes escaped.
struct Id<'a>(&'a [u8]);

impl fmt::Display for Id<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for &b in self.0.iter().take_while(|&&b| b != 0) {
            match b {
                b'"' | b'\\' => write!(f, "\\{}", b as char)?,
                0x20..=0x7e => write!(f, "{}", b as char)?,
                _ => write!(f, "\\x{b:02x}")?,
            }
        }
        f.write_str("\"")
    }
}

/// A virtio-blk device set up and DRIVER_OK.
struct Blk {
    mmio: Mmio,
    irq: u8,
    q: Queue,
    features: u64,
    capacity: u64,
    seg_max: u32,
    max_discard: u32,
    max_write_zeroes: u32,
    /// Requests completed.
    requests: u64,
    /// Set when a request timed out or the device returned a bad used
    /// entry: the queue state is unknown, no request is issued any more.
    broken: bool,
}

impl Blk {
    /// The virtio 1.2 §3.1.1 initialization sequence of a block device
    /// found by [`virtio::probe`]. Errors name the step.
    fn init(mmio: Mmio, irq: u32) -> Result<Self, &'static str> {
        let Ok(irq) = u8::try_from(irq) else {
            return Err("irq beyond the IOAPIC's pins");
        };
        let features = mmio.negotiate(DRIVER_FEATURES)?;
        let q = Queue::setup(
            mmio,
            0,
            &RING,
            virtio::QUEUE_MAX,
            features & virtio::F_RING_EVENT_IDX != 0,
        )
        .map_err(|_| "queue 0 setup failed (QueueReady already set or QueueNumMax 0)")?;

        // Device config, consistent under ConfigGeneration.
        let field = |mmio: &Mmio, feature: u64, offset: u64| -> u32 {
            if features & feature != 0 {
                mmio.config32(offset)
            } else {
                0
            }
        };
        let (capacity, seg_max, max_discard, max_write_zeroes) = mmio.read_config(|mmio| {
            let capacity = u64::from(mmio.config32(CFG_CAPACITY))
                | u64::from(mmio.config32(CFG_CAPACITY + 4)) << 32;
            let seg_max = field(mmio, BLK_F_SEG_MAX, CFG_SEG_MAX);
            let _blk_size = field(mmio, BLK_F_BLK_SIZE, CFG_BLK_SIZE);
            let max_discard = field(mmio, BLK_F_DISCARD, CFG_MAX_DISCARD_SECTORS);
            let max_write_zeroes = field(mmio, BLK_F_WRITE_ZEROES, CFG_MAX_WRITE_ZEROES_SECTORS);
            (capacity, seg_max, max_discard, max_write_zeroes)
        })?;

        mmio.driver_ok(irq)?;
        Ok(Self {
            mmio,
            irq,
            q,
            features,
            capacity,
            seg_max,
            max_discard,
            max_write_zeroes,
            requests: 0,
            broken: false,
        })
    }

    /// Resets the device and stops routing its interrupts.
    fn reset(&self) {
        self.mmio.reset(self.irq);
    }

    fn has(&self, feature: u64) -> bool {
        self.features & feature != 0
    }

    /// Waits for the next completion: poll the used ring; when it is empty,
    /// ask for an interrupt on the next entry (used_event) and poll on.
    fn wait(&mut self, in_flight: usize) -> Result<(u16, u32), Fail> {
        if let Some(c) = self.q.pop()? {
            return Ok(c);
        }
        self.q.want_interrupt();
        let mut got = Ok(None);
        let q = &mut self.q;
        virtio::spin_until(|| {
            got = q.pop();
            !matches!(got, Ok(None))
        });
        match got? {
            Some(c) => Ok(c),
            None => Err(Fail::Timeout(in_flight)),
        }
    }

    /// Runs requests `make(i, slot)` for i = 0, 1, ... until it returns
    /// `None`, with up to `depth` in flight, calling `done(i, slot, req,
    /// status)` on each completion (data in the slot's buffers is valid
    /// then). Stops issuing at the first error, drains, returns it.
    fn run(
        &mut self,
        depth: usize,
        mut make: impl FnMut(usize, usize) -> Option<Req>,
        mut done: impl FnMut(usize, usize, &Req, u8) -> Result<(), Fail>,
    ) -> Result<usize, Fail> {
        if self.broken {
            return Err(Fail::Broken);
        }
        let result = self.run_inner(depth, &mut make, &mut done);
        if matches!(result, Err(Fail::Timeout(_) | Fail::BadUsedId(_))) {
            self.broken = true;
        }
        result
    }

    fn run_inner(
        &mut self,
        depth: usize,
        make: &mut impl FnMut(usize, usize) -> Option<Req>,
        done: &mut impl FnMut(usize, usize, &Req, u8) -> Result<(), Fail>,
    ) -> Result<usize, Fail> {
        let depth = depth.clamp(1, SLOTS);
        let mut slots: [Option<(usize, Req)>; SLOTS] = [None; SLOTS];
        let mut slot_of_head = [0u8; virtio::QUEUE_MAX];
        let mut pending: Option<(usize, usize, Req)> = None;
        let mut issued = 0;
        let mut exhausted = false;
        let mut in_flight = 0;
        let mut err: Option<Fail> = None;
        loop {
            while err.is_none() && in_flight < depth {
                let (i, slot, req) = match pending.take() {
                    Some(p) => p,
                    None if exhausted => break,
                    None => {
                        // `in_flight < depth <= SLOTS`: a slot is free.
                        let slot = slots.iter().position(Option::is_none).unwrap_or(0);
                        match make(issued, slot) {
                            Some(req) => {
                                issued += 1;
                                (issued - 1, slot, req)
                            }
                            None => {
                                exhausted = true;
                                break;
                            }
                        }
                    }
                };
                let mut bufs = [Buf {
                    addr: 0,
                    len: 0,
                    write: false,
                }; 2 + MAX_SEGS as usize];
                let n = self.chain(slot, &req, &mut bufs);
                match self.q.add(&bufs[..n]) {
                    Some(head) => {
                        slots[slot] = Some((i, req));
                        slot_of_head[usize::from(head)] = slot as u8;
                        in_flight += 1;
                    }
                    None if in_flight == 0 => {
                        err = Some(Fail::TooLong(n as u32));
                    }
                    None => {
                        pending = Some((i, slot, req));
                        break;
                    }
                }
            }
            self.q.kick();
            if in_flight == 0 {
                break;
            }
            let mut next = Some(self.wait(in_flight)?);
            while let Some((head, _len)) = next {
                let slot = usize::from(slot_of_head[usize::from(head)]);
                let Some((i, req)) = slots[slot].take() else {
                    return Err(Fail::BadUsedId(u32::from(head)));
                };
                in_flight -= 1;
                self.requests += 1;
                let status: u8 = DMA.read(STATUS_BYTES + slot);
                if let Err(e) = done(i, slot, &req, status) {
                    err.get_or_insert(e);
                }
                next = self.q.pop()?;
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(issued),
        }
    }

    /// Writes the header (and DISCARD/WRITE_ZEROES segment) of `req` into
    /// `slot` and the chain's buffers into `bufs`; returns their number.
    fn chain(&self, slot: usize, req: &Req, bufs: &mut [Buf]) -> usize {
        let header = HEADERS + 16 * slot;
        let rw = matches!(req.kind, T_IN | T_OUT);
        DMA.write(header, req.kind);
        DMA.write(header + 4, 0u32);
        DMA.write(header + 8, if rw { req.sector } else { 0 });
        bufs[0] = Buf {
            addr: DMA.addr(header),
            len: 16,
            write: false,
        };
        let mut n = 1;
        match req.kind {
            T_IN | T_OUT | T_GET_ID => {
                let mut segs = req.segs.clamp(1, MAX_SEGS);
                if self.has(BLK_F_SEG_MAX) && self.seg_max > 0 {
                    segs = segs.min(self.seg_max);
                }
                // Whole sectors per segment where the length allows.
                let sectors = req.len.div_ceil(SECTOR as u32);
                let per_seg = sectors.div_ceil(segs).max(1) * SECTOR as u32;
                let mut offset = 0;
                while offset < req.len {
                    let len = per_seg.min(req.len - offset);
                    bufs[n] = Buf {
                        addr: req.addr + u64::from(offset),
                        len,
                        write: req.kind != T_OUT,
                    };
                    n += 1;
                    offset += len;
                }
            }
            T_DISCARD | T_WRITE_ZEROES => {
                let seg = SEGMENTS + 16 * slot;
                DMA.write(seg, req.sector);
                DMA.write(seg + 8, req.len);
                DMA.write(seg + 12, 0u32); // flags: no unmap
                bufs[n] = Buf {
                    addr: DMA.addr(seg),
                    len: 16,
                    write: false,
                };
                n += 1;
            }
            _ => {}
        }
        let status = STATUS_BYTES + slot;
        DMA.write(status, S_UNWRITTEN);
        bufs[n] = Buf {
            addr: DMA.addr(status),
            len: 1,
            write: true,
        };
        n + 1
    }

    /// One request on its own; returns its status.
    fn single(&mut self, req: Req) -> Result<u8, Fail> {
        let mut status = S_UNWRITTEN;
        let mut req = Some(req);
        self.run(
            1,
            |_, _| req.take(),
            |_, _, _, s| {
                status = s;
                Ok(())
            },
        )?;
        Ok(status)
    }

    fn expect_ok(&mut self, req: Req) -> Result<(), Fail> {
        match self.single(req)? {
            S_OK => Ok(()),
            s => Err(Fail::Status(req, s)),
        }
    }

    /// Proves that completions raise interrupts: asks for one on the next
    /// used entry *before* issuing a request (so the device cannot complete
    /// it unseen and let the driver find it by polling), then waits for the
    /// interrupt count to rise. Returns the interrupts counted meanwhile.
    fn irq_probe(&mut self) -> Result<u64, Fail> {
        let before = irq::count(self.irq);
        self.q.want_interrupt();
        self.expect_ok(Req {
            kind: T_GET_ID,
            sector: 0,
            addr: DMA.addr(BUF + BUF_BYTES - SLOT_BYTES),
            len: ID_BYTES,
            segs: 1,
        })?;
        let irq = self.irq;
        if !virtio::spin_until(|| irq::count(irq) > before) {
            return Err(Fail::Timeout(0));
        }
        Ok(irq::count(self.irq) - before)
    }

    fn flush(&mut self) -> Result<(), Fail> {
        self.expect_ok(Req {
            kind: T_FLUSH,
            sector: 0,
            addr: 0,
            len: 0,
            segs: 0,
        })
    }

    /// Writes `SLOT_BYTES`-sized chunks of the pattern buffer over sectors
    /// `first..first + count`, 32 in flight.
    fn write_pattern(&mut self, first: u64, count: u64) -> Result<(), Fail> {
        let end = first + count;
        self.run(
            SLOTS,
            |i, _| {
                let sector = first + i as u64 * SECTORS_PER_SLOT;
                (sector < end).then(|| Req {
                    kind: T_OUT,
                    sector,
                    addr: DMA.addr(PATTERN),
                    len: ((end - sector).min(SECTORS_PER_SLOT) * SECTOR) as u32,
                    segs: MAX_SEGS,
                })
            },
            ok_status,
        )
        .map(drop)
    }

    /// Reads sectors `first..first + count` and checks every byte is `byte`.
    fn verify(&mut self, first: u64, count: u64, byte: u8) -> Result<(), Fail> {
        let end = first + count;
        self.run(
            SLOTS,
            |i, slot| {
                let sector = first + i as u64 * SECTORS_PER_SLOT;
                (sector < end).then(|| Req {
                    kind: T_IN,
                    sector,
                    addr: DMA.addr(BUF + slot * SLOT_BYTES),
                    len: ((end - sector).min(SECTORS_PER_SLOT) * SECTOR) as u32,
                    segs: MAX_SEGS,
                })
            },
            |_, slot, req, status| {
                ok_status(0, slot, req, status)?;
                let data = DMA.bytes(BUF + slot * SLOT_BYTES, req.len as usize);
                match data.iter().position(|&b| b != byte) {
                    None => Ok(()),
                    Some(at) => Err(Fail::Mismatch {
                        sector: req.sector + (at as u64) / SECTOR,
                        offset: at % SECTOR as usize,
                        got: data[at],
                        want: byte,
                    }),
                }
            },
        )
        .map(drop)
    }

    /// DISCARD or WRITE_ZEROES over sectors `first..first + count`, in
    /// requests of at most `max` sectors (0: no limit given).
    fn zero_or_discard(&mut self, kind: u32, first: u64, count: u64, max: u32) -> Result<(), Fail> {
        let max = if max == 0 {
            u64::from(u32::MAX)
        } else {
            u64::from(max)
        };
        let end = first + count;
        self.run(
            SLOTS,
            |i, _| {
                let sector = first + i as u64 * max;
                (sector < end).then(|| Req {
                    kind,
                    sector,
                    addr: 0,
                    len: (end - sector).min(max) as u32,
                    segs: 0,
                })
            },
            ok_status,
        )
        .map(drop)
    }

    /// Rewrites, flushes and verifies the fill range.
    fn fill(&mut self, f: &Fill) -> Result<(), Fail> {
        DMA.fill(PATTERN, SLOT_BYTES, f.byte);
        self.write_pattern(f.first, f.count)?;
        self.flush()?;
        self.verify(f.first, f.count, f.byte)
    }

    /// `count` 4 KiB reads at depth `depth`, one second's worth; returns
    /// (requests, TSC cycles, notifications, interrupts).
    fn bench(&mut self, depth: usize, tsc_hz: u64) -> Result<(u64, u64, u64, u64), Fail> {
        let blocks = self.capacity / 8;
        let notifications = self.q.notifications;
        let interrupts = irq::count(self.irq);
        let start = cpu::rdtsc();
        let n = self.run(
            depth,
            |i, slot| {
                if cpu::rdtsc().wrapping_sub(start) >= tsc_hz {
                    return None;
                }
                let block =
                    (u128::from(i as u64) * u128::from(BENCH_STRIDE) % u128::from(blocks)) as u64;
                Some(Req {
                    kind: T_IN,
                    sector: block * 8,
                    addr: DMA.addr(BUF + slot * SLOT_BYTES),
                    len: 4096,
                    segs: 1,
                })
            },
            ok_status,
        )?;
        let cycles = cpu::rdtsc().wrapping_sub(start);
        Ok((
            n as u64,
            cycles,
            self.q.notifications - notifications,
            irq::count(self.irq) - interrupts,
        ))
    }
}

fn ok_status(_: usize, _: usize, req: &Req, status: u8) -> Result<(), Fail> {
    match status {
        S_OK => Ok(()),
        s => Err(Fail::Status(*req, s)),
    }
}

/// Parameters of the blk checks from the command line.
struct Params {
    fills: [Option<Fill>; MAX_FILLS],
    benches: [Option<usize>; MAX_BENCHES],
}

fn parse_params(cmdline: &str, r: &mut Report) -> Params {
    let mut p = Params {
        fills: [None; MAX_FILLS],
        benches: [None; MAX_BENCHES],
    };
    let mut n = 0;
    for value in bootparams::params(cmdline, "vmkit.fill") {
        match parse_fill(value) {
            None => {
                r.fail::<()>(
                    "blk-fill",
                    format_args!("vmkit.fill={value} is malformed (expected <disk>:<first sector>:<count>:<hex byte>)"),
                );
            }
            Some(_) if n == MAX_FILLS => {
                r.fail::<()>(
                    "blk-fill",
                    format_args!("vmkit.fill={value}: more than {MAX_FILLS} fills"),
                );
            }
            Some(f) => {
                p.fills[n] = Some(f);
                n += 1;
            }
        }
    }
    let mut n = 0;
    for value in bootparams::params(cmdline, "vmkit.blk-bench") {
        let disk = (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
            .then(|| value.parse::<usize>().ok())
            .flatten();
        match disk {
            None => {
                r.fail::<()>(
                    "blk-bench",
                    format_args!("vmkit.blk-bench={value} is malformed (expected a disk index)"),
                );
            }
            Some(_) if n == MAX_BENCHES => {
                r.fail::<()>(
                    "blk-bench",
                    format_args!("vmkit.blk-bench={value}: more than {MAX_BENCHES} benches"),
                );
            }
            Some(d) => {
                p.benches[n] = Some(d);
                n += 1;
            }
        }
    }
    p
}

/// Runs the `blk-*` checks on every virtio-blk device of the command line.
pub fn check(cmdline: Option<&str>, r: &mut Report) {
    let Some(cmdline) = cmdline else { return };
    let params = parse_params(cmdline, r);
    let mut tsc_hz = None;
    let mut disks = 0;
    for value in bootparams::params(cmdline, "virtio_mmio.device") {
        let Some(dev) = virtio::parse_device(value) else {
            r.fail::<()>(
                "blk-init",
                format_args!(
                    "virtio_mmio.device={value} is malformed (expected <size>@<base>:<irq>[:<id>])"
                ),
            );
            continue;
        };
        let mmio = match virtio::probe(&dev) {
            Ok((mmio, virtio::DEVICE_ID_BLOCK)) => mmio,
            Ok(_) => continue, // another kind of virtio device
            Err(why) => {
                // Not known to be a disk: reported, not named.
                r.fail::<()>(
                    "blk-init",
                    format_args!("virtio-mmio at {:#x} irq {}: {why}", dev.base, dev.irq),
                );
                continue;
            }
        };
        let disk = disks;
        disks += 1;
        let mut blk = match Blk::init(mmio, dev.irq) {
            Ok(blk) => blk,
            Err(why) => {
                r.fail::<()>(
                    "blk-init",
                    format_args!(
                        "disk{disk} virtio-mmio at {:#x} irq {}: {why}",
                        dev.base, dev.irq
                    ),
                );
                // Leave it reset, with no queue pointing at our memory.
                mmio.write(virtio::STATUS, 0);
                continue;
            }
        };
        r.pass(
            "blk-init",
            format_args!(
                "disk{disk} virtio-mmio at {:#x} irq {}, features {:#x}",
                dev.base, dev.irq, blk.features
            ),
        );
        check_disk(&mut blk, disk, &params, &mut tsc_hz, r);
        blk.reset();
        if crate::hostile::enabled(cmdline) {
            let fill = params
                .fills
                .iter()
                .flatten()
                .find(|f| {
                    f.disk == disk
                        && f.count > 0
                        && f.first
                            .checked_add(f.count)
                            .is_some_and(|e| e <= blk.capacity)
                })
                .map(|f| (f.first, f.byte));
            let mem_mib = bootparams::param(cmdline, "vmkit.mem_mib").and_then(|m| m.parse().ok());
            let target = hostile::Target {
                mmio,
                irq: dev.irq,
                disk,
                capacity: blk.capacity,
                read_only: blk.has(BLK_F_RO),
                mem_mib,
                fill,
            };
            hostile::run(target, r);
        }
    }
    for f in params.fills.iter().flatten().filter(|f| f.disk >= disks) {
        r.fail::<()>(
            "blk-fill",
            format_args!("disk{} does not exist ({disks} disks)", f.disk),
        );
    }
    for &d in params.benches.iter().flatten().filter(|&&d| d >= disks) {
        r.fail::<()>(
            "blk-bench",
            format_args!("disk{d} does not exist ({disks} disks)"),
        );
    }
}

fn check_disk(
    blk: &mut Blk,
    disk: usize,
    params: &Params,
    tsc_hz: &mut Option<Option<u64>>,
    r: &mut Report,
) {
    // blk-read: CRC of the first MiB, 32 requests of 32 KiB in flight.
    let bytes = CRC_BYTES.min(blk.capacity.saturating_mul(SECTOR));
    let read = blk.run(
        SLOTS,
        |i, _| {
            let offset = i as u64 * SLOT_BYTES as u64;
            (offset < bytes).then(|| Req {
                kind: T_IN,
                sector: offset / SECTOR,
                addr: DMA.addr(BUF + offset as usize),
                len: (bytes - offset).min(SLOT_BYTES as u64) as u32,
                segs: MAX_SEGS,
            })
        },
        ok_status,
    );
    let first_sector_read = match read {
        Ok(_) => {
            let mut crc = Crc32::new();
            crc.update(DMA.bytes(BUF, bytes as usize));
            r.pass(
                "blk-read",
                format_args!(
                    "disk{disk} sectors={} crc32={:08x}",
                    blk.capacity,
                    crc.finish()
                ),
            );
            bytes >= SECTOR
        }
        Err(e) => {
            r.fail::<()>("blk-read", format_args!("disk{disk}: {e}"));
            false
        }
    };

    // blk-get-id: 20 bytes, NUL-padded; the buffer is cleared first.
    let id_offset = BUF + BUF_BYTES - SLOT_BYTES;
    DMA.fill(id_offset, ID_BYTES as usize, 0);
    let get_id = Req {
        kind: T_GET_ID,
        sector: 0,
        addr: DMA.addr(id_offset),
        len: ID_BYTES,
        segs: 1,
    };
    match blk.expect_ok(get_id) {
        Ok(()) => r.pass(
            "blk-get-id",
            format_args!("disk{disk} {}", Id(DMA.bytes(id_offset, ID_BYTES as usize))),
        ),
        Err(e) => {
            r.fail::<()>("blk-get-id", format_args!("disk{disk}: {e}"));
        }
    }

    // blk-flush.
    if !blk.has(BLK_F_FLUSH) {
        r.fail::<()>(
            "blk-flush",
            format_args!("disk{disk}: VIRTIO_BLK_F_FLUSH not offered"),
        );
    } else {
        match blk.flush() {
            Ok(()) => r.pass("blk-flush", format_args!("disk{disk}")),
            Err(e) => {
                r.fail::<()>("blk-flush", format_args!("disk{disk}: {e}"));
            }
        }
    }

    // blk-readonly: an OUT of the inverted sector 0 must fail with IOERR,
    // and sector 0 must read back unchanged.
    if blk.has(BLK_F_RO) {
        readonly(blk, disk, first_sector_read, r);
    }

    for f in params.fills.iter().flatten().filter(|f| f.disk == disk) {
        fill(blk, disk, f, r);
    }

    // Completions found by polling need no interrupt, so the count so far
    // may be 0; one probe request that asked for an interrupt settles it.
    let probe = blk.irq_probe();
    let (interrupts, requests) = (irq::count(blk.irq), blk.requests);
    if let Err(e) = probe {
        r.fail::<()>(
            "blk-irq",
            format_args!("disk{disk}: no interrupt for a request that asked for one: {e}"),
        );
    } else if interrupts > 0 {
        r.pass(
            "blk-irq",
            format_args!("disk{disk} {interrupts} interrupts for {requests} requests"),
        );
    } else {
        r.fail::<()>(
            "blk-irq",
            format_args!("disk{disk} 0 interrupts for {requests} requests"),
        );
    }

    for _ in params.benches.iter().flatten().filter(|&&d| d == disk) {
        bench(blk, disk, tsc_hz, r);
    }
}

fn readonly(blk: &mut Blk, disk: usize, first_sector_read: bool, r: &mut Report) {
    const CHECK: &str = "blk-readonly";
    if !first_sector_read {
        r.fail::<()>(CHECK, format_args!("disk{disk}: sector 0 was not read"));
        return;
    }
    let original = DMA.bytes(BUF, SECTOR as usize);
    for (k, &b) in original.iter().enumerate() {
        DMA.write(PATTERN + k, !b);
    }
    let out = Req {
        kind: T_OUT,
        sector: 0,
        addr: DMA.addr(PATTERN),
        len: SECTOR as u32,
        segs: 1,
    };
    match blk.single(out) {
        Err(e) => {
            r.fail::<()>(CHECK, format_args!("disk{disk}: {e}"));
            return;
        }
        Ok(S_IOERR) => {}
        Ok(s) => {
            r.fail::<()>(
                CHECK,
                format_args!(
                    "disk{disk}: OUT to sector 0 of a read-only disk got status {}, expected IOERR",
                    StatusName(s)
                ),
            );
            return;
        }
    }
    let back = PATTERN + SECTOR as usize;
    let read = Req {
        kind: T_IN,
        addr: DMA.addr(back),
        ..out
    };
    if let Err(e) = blk.expect_ok(read) {
        r.fail::<()>(
            CHECK,
            format_args!("disk{disk}: reading sector 0 back: {e}"),
        );
        return;
    }
    let original = DMA.bytes(BUF, SECTOR as usize);
    if DMA.bytes(back, SECTOR as usize) != original {
        r.fail::<()>(
            CHECK,
            format_args!("disk{disk}: refused the write with IOERR, but sector 0 changed"),
        );
        return;
    }
    r.pass(CHECK, format_args!("disk{disk} refused a write with IOERR"));
}

fn fill(blk: &mut Blk, disk: usize, f: &Fill, r: &mut Report) {
    let (first, count, byte) = (f.first, f.count, f.byte);
    let Some(end) = first
        .checked_add(count)
        .filter(|&end| count > 0 && end <= blk.capacity)
    else {
        r.fail::<()>(
            "blk-fill",
            format_args!(
                "disk{disk}: sectors {first}+{count} are empty or beyond the capacity {}",
                blk.capacity
            ),
        );
        return;
    };
    if blk.has(BLK_F_RO) {
        r.fail::<()>(
            "blk-fill",
            format_args!("disk{disk} is read-only; not writing it"),
        );
        return;
    }
    if let Err(e) = blk.fill(f) {
        r.fail::<()>("blk-fill", format_args!("disk{disk}: {e}"));
        return;
    }
    r.pass(
        "blk-fill",
        format_args!("disk{disk} sectors {first}..{end} = {byte:#04x}"),
    );

    let mut changed = false;
    if blk.has(BLK_F_WRITE_ZEROES) {
        changed = true;
        let max = blk.max_write_zeroes;
        match blk
            .zero_or_discard(T_WRITE_ZEROES, first, count, max)
            .and_then(|()| blk.verify(first, count, 0))
        {
            Ok(()) => r.pass(
                "blk-write-zeroes",
                format_args!("disk{disk} sectors {first}..{end} read back as zeros"),
            ),
            Err(e) => {
                r.fail::<()>("blk-write-zeroes", format_args!("disk{disk}: {e}"));
            }
        }
    }
    if blk.has(BLK_F_DISCARD) {
        changed = true;
        let max = blk.max_discard;
        match blk.zero_or_discard(T_DISCARD, first, count, max) {
            Ok(()) => r.pass(
                "blk-discard",
                format_args!("disk{disk} sectors {first}..{end} discarded"),
            ),
            Err(e) => {
                r.fail::<()>("blk-discard", format_args!("disk{disk}: {e}"));
            }
        }
    }
    if changed {
        match blk.fill(f) {
            Ok(()) => r.pass(
                "blk-refill",
                format_args!("disk{disk} sectors {first}..{end} = {byte:#04x}"),
            ),
            Err(e) => {
                r.fail::<()>("blk-refill", format_args!("disk{disk}: {e}"));
            }
        }
    }
}

fn bench(blk: &mut Blk, disk: usize, tsc_hz: &mut Option<Option<u64>>, r: &mut Report) {
    let Some(hz) = *tsc_hz.get_or_insert_with(pit::tsc_hz) else {
        r.fail::<()>(
            "blk-bench",
            format_args!("disk{disk}: the PIT's channel 2 output never rose; no TSC frequency"),
        );
        return;
    };
    if blk.capacity < 8 {
        r.fail::<()>(
            "blk-bench",
            format_args!("disk{disk} is smaller than 4 KiB"),
        );
        return;
    }
    for depth in [1, SLOTS] {
        match blk.bench(depth, hz) {
            Ok((n, cycles, notifications, interrupts)) => println!(
                "bench blk-read-4k qd={depth} requests={n} iops={} notifications/req={} interrupts/req={}",
                (u128::from(n) * u128::from(hz) / u128::from(cycles.max(1))) as u64,
                Ratio(notifications, n),
                Ratio(interrupts, n),
            ),
            Err(e) => {
                r.fail::<()>("blk-bench", format_args!("disk{disk} qd={depth}: {e}"));
                return;
            }
        }
    }
}
