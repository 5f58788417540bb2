//! `vmkit.hostile` on a virtio-net device: groups of chains a malicious
//! driver puts on the transmit and receive queues (see `crate::hostile`),
//! then the transport groups, each followed by a reset and normal I/O (an
//! ARP exchange with `vmkit.peer` and one marked frame). Every group prints
//! `ok hostile-net<i>-<group>: <what the device did>, normal I/O after
//! reset ok` or a `FAIL` line.
//!
//! No chain of a group is one the device may use: every one must come back
//! with used length 0 (dropped), or stay unreturned with
//! DEVICE_NEEDS_RESET set; the device must write no byte of the group's
//! memory. Frames of hostile transmit chains carry [`HOSTILE_MARK`] after an
//! [`ETHERTYPE`] header, and the frame normal I/O sends after each group
//! carries `vmkit-ok net<i>-<group>`: the host test captures that
//! EtherType on its bridge and checks that every ok frame arrived and no
//! hostile one did.

use core::fmt::Write;

use smoltcp::wire::{EthernetAddress, Ipv4Address};

use super::{Net, arp_request};
use crate::Report;
use crate::hostile::{
    self as h, Clock, DESC_INDIRECT, DESC_NEXT, DESC_WRITE, F_INDIRECT_DESC, HOLE, IOAPIC, LAPIC,
    Line, NEEDS_RESET, Raw, Transport,
};
use crate::virtio::{self, Dma, Mmio};

/// EtherType of every frame this module sends: IEEE 802 local
/// experimental 1.
const ETHERTYPE: u16 = 0x88b5;
/// Payload of the frames of hostile transmit chains; none may reach the
/// wire.
const HOSTILE_MARK: &[u8] = b"vmkit-hostile";

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
/// `struct virtio_net_hdr_v1`; `flags` and `gso_type` are its first bytes.
const HDR_LEN: usize = 12;
const FRAME_LEN: usize = 60;

/// The group's memory: transmit slots (a header and a frame each), a data
/// buffer and indirect tables. The device must write none of it.
static AREA: Dma<0x4000> = Dma::new();
const SLOTS: usize = 0x000;
const SLOT: usize = 0x80;
const MAX_CHAINS: usize = 16;
const DATA: usize = SLOTS + SLOT * MAX_CHAINS;
const DATA_LEN: usize = 0x800;
const DATA_BYTE: u8 = 0x5a;
const IND: usize = 0x1000;
const IND2: usize = 0x3000;
const _: () = assert!(DATA + DATA_LEN <= IND);
/// [`AREA`] as it was when the chains were published.
static SNAP: Dma<0x4000> = Dma::new();

/// Entries of the raw queue.
const QSIZE: u16 = 64;
const MS: u64 = 3000;

const R: u16 = 0;
const W: u16 = DESC_WRITE;

const ARP_TRIES: u32 = 3;

/// The device under test.
struct Dev {
    t: Transport,
    irq: u32,
    index: usize,
    ip: Ipv4Address,
    peer: Ipv4Address,
    /// Its MAC address, from the first normal I/O.
    mac: EthernetAddress,
}

impl Dev {
    fn mmio(&self) -> Mmio {
        self.t.mmio
    }
}

#[derive(Clone, Copy)]
struct Chain {
    head: u16,
    what: &'static str,
    used: bool,
}

const NO_CHAIN: Chain = Chain {
    head: 0,
    what: "",
    used: false,
};

/// What the device did with a group's chains.
#[derive(Default)]
struct Tally {
    dropped: u32,
    not_used: u32,
    needs_reset: bool,
}

impl core::fmt::Display for Tally {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut sep = "";
        if self.dropped > 0 {
            write!(f, "{} dropped (used length 0)", self.dropped)?;
            sep = ", ";
        }
        if self.not_used > 0 {
            write!(f, "{sep}{} not returned", self.not_used)?;
            sep = ", ";
        }
        if self.needs_reset {
            write!(f, "{sep}NEEDS_RESET set")?;
        }
        Ok(())
    }
}

/// One batch of hostile chains on a raw queue.
struct Batch {
    raw: Raw,
    next: u16,
    chains: [Chain; MAX_CHAINS],
    n: usize,
}

impl Batch {
    fn new(raw: Raw) -> Self {
        AREA.fill(0, 0x4000, 0);
        AREA.fill(DATA, DATA_LEN, DATA_BYTE);
        Self {
            raw,
            next: 0,
            chains: [NO_CHAIN; MAX_CHAINS],
            n: 0,
        }
    }

    /// Transmit slot `slot`: a header with `flags` and `gso_type`, then a
    /// broadcast frame from `mac` carrying [`HOSTILE_MARK`]. Returns the
    /// header's address; the frame follows it.
    fn frame(&self, slot: usize, mac: EthernetAddress, flags: u8, gso_type: u8) -> u64 {
        let at = SLOTS + SLOT * slot;
        AREA.fill(at, SLOT, 0);
        AREA.write(at, flags);
        AREA.write(at + 1, gso_type);
        let f = at + HDR_LEN;
        AREA.fill(f, 6, 0xff);
        for (k, &b) in mac.0.iter().enumerate() {
            AREA.write(f + 6 + k, b);
        }
        AREA.write(f + 12, (ETHERTYPE >> 8) as u8);
        AREA.write(f + 13, ETHERTYPE as u8);
        for (k, &b) in HOSTILE_MARK.iter().enumerate() {
            AREA.write(f + 14 + k, b);
        }
        AREA.addr(at)
    }

    fn record(&mut self, what: &'static str, head: u16) {
        self.chains[self.n] = Chain {
            head,
            what,
            used: false,
        };
        self.n += 1;
    }

    /// A chain of `bufs` (addr, len, flags without NEXT) on consecutive
    /// descriptors.
    fn chain(&mut self, what: &'static str, bufs: &[(u64, u32, u16)]) {
        let head = self.next;
        self.next = self.raw.chain(head, bufs);
        self.record(what, head);
    }

    /// Publishes the batch, waits and checks what came back.
    fn run(&mut self, clock: &Clock, t: &mut Tally, out: &mut Line) -> Result<(), ()> {
        let mut heads = [0u16; MAX_CHAINS];
        for (k, c) in self.chains[..self.n].iter().enumerate() {
            heads[k] = c.head;
        }
        snapshot();
        self.raw.publish(&heads[..self.n]);
        let waited = self.raw.wait(self.n as u16, clock, MS);
        self.check(waited, t, out)
    }

    fn check(&mut self, waited: h::Waited, t: &mut Tally, out: &mut Line) -> Result<(), ()> {
        for k in 0..waited.used {
            let (id, len) = self.raw.used(waited.first.wrapping_add(k));
            let Some(c) = self.chains[..self.n]
                .iter_mut()
                .find(|c| !c.used && u32::from(c.head) == id)
            else {
                let _ = write!(out, "used id {id} is not a chain in flight");
                return Err(());
            };
            c.used = true;
            if len != 0 {
                let _ = write!(
                    out,
                    "{}: used length {len} for a chain the device may not fill",
                    c.what
                );
                return Err(());
            }
            t.dropped += 1;
        }
        t.not_used += self.chains[..self.n].iter().filter(|c| !c.used).count() as u32;
        t.needs_reset |= waited.status & NEEDS_RESET != 0;
        if t.not_used > 0 && !t.needs_reset {
            let _ = write!(
                out,
                "{t}: chains left unreturned without NEEDS_RESET (status {:#x})",
                waited.status
            );
            return Err(());
        }
        unchanged(out)
    }
}

/// Records [`AREA`] in [`SNAP`].
fn snapshot() {
    for at in 0..0x4000 {
        SNAP.write(at, AREA.read::<u8>(at));
    }
}

/// [`AREA`] is as [`snapshot`] recorded it.
fn unchanged(out: &mut Line) -> Result<(), ()> {
    for at in 0..0x4000 {
        let (now, was): (u8, u8) = (AREA.read(at), SNAP.read(at));
        if now != was {
            let _ = write!(
                out,
                "the device wrote guest memory it was only shown (offset {at:#x}: {was:#04x} -> {now:#04x})"
            );
            return Err(());
        }
    }
    Ok(())
}

fn start(dev: &Dev, queue: u16, out: &mut Line) -> Result<Batch, ()> {
    match Raw::start(&dev.t, virtio::F_VERSION_1 | F_INDIRECT_DESC, queue, QSIZE) {
        Ok(raw) => Ok(Batch::new(raw)),
        Err(e) => {
            let _ = write!(out, "raw queue {queue} setup: {e}");
            Err(())
        }
    }
}

fn data() -> u64 {
    AREA.addr(DATA)
}

/// Runs one batch that `fill` writes on `queue`, appending the tally.
fn batch(
    dev: &Dev,
    queue: u16,
    clock: &Clock,
    out: &mut Line,
    fill: impl FnOnce(&mut Batch),
) -> Result<(), ()> {
    let mut b = start(dev, queue, out)?;
    let mut t = Tally::default();
    fill(&mut b);
    b.run(clock, &mut t, out)?;
    let _ = write!(out, "{t}");
    Ok(())
}

/// Transmit chains with buffers that are not RAM.
fn group_tx_addr(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    batch(dev, TX_QUEUE, clock, out, |b| {
        let hdr = |b: &Batch, slot| b.frame(slot, dev.mac, 0, 0);
        let hl = HDR_LEN as u32;
        let fl = FRAME_LEN as u32;
        for (what, at) in [
            ("frame in the MMIO hole", HOLE),
            ("frame in the LAPIC page", LAPIC),
            ("frame in the IOAPIC page", IOAPIC),
            ("frame beyond RAM", dev.t.outside),
            ("frame in the device's registers", dev.mmio().base()),
            ("frame wrapping the address space", u64::MAX - 59),
        ] {
            let hd = hdr(b, b.n);
            b.chain(what, &[(hd, hl, R), (at, fl, R)]);
        }
        if let Some(end) = dev.t.ram_end {
            let hd = hdr(b, b.n);
            b.chain(
                "frame across the end of RAM",
                &[(hd, hl, R), (end - 30, fl, R)],
            );
        }
        let hd = hdr(b, b.n);
        b.chain(
            "header in the MMIO hole",
            &[(HOLE, hl, R), (hd + u64::from(hl), fl, R)],
        );
        let hd = hdr(b, b.n);
        b.chain(
            "a whole frame, then the MMIO hole",
            &[(hd, hl + fl, R), (HOLE, fl, R)],
        );
    })
}

/// Transmit chains too short for a header, and frames too large.
fn group_tx_len(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    batch(dev, TX_QUEUE, clock, out, |b| {
        let hd = b.frame(0, dev.mac, 0, 0);
        let fr = hd + HDR_LEN as u64;
        let hl = HDR_LEN as u32;
        b.chain("two descriptors of 0 bytes", &[(hd, 0, R), (fr, 0, R)]);
        b.chain("8 bytes: less than a header", &[(hd, 8, R)]);
        b.chain("a header and nothing else", &[(hd, hl, R)]);
        b.chain("a chain of 0xffffffff bytes", &[(hd, u32::MAX, R)]);
        b.chain(
            "a frame of 80,000 bytes",
            &[(hd, hl, R), (fr, 40_000, R), (fr, 40_000, R)],
        );
        b.chain("0 bytes in the MMIO hole", &[(HOLE, 0, R)]);
    })
}

/// Transmit headers asking for offloads the driver did not negotiate.
fn group_tx_offload(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    batch(dev, TX_QUEUE, clock, out, |b| {
        let len = (HDR_LEN + FRAME_LEN) as u32;
        for (what, flags, gso_type) in [
            ("NEEDS_CSUM without VIRTIO_NET_F_CSUM", 1, 0),
            ("GSO_TCPV4 without HOST_TSO4", 0, 1),
            ("GSO_UDP without HOST_UFO", 0, 3),
            ("GSO_TCPV6 without HOST_TSO6", 0, 4),
            ("GSO_ECN without HOST_ECN", 0, 0x81),
            ("gso_type 0x42", 0, 0x42),
            ("flags 0xff", 0xff, 0),
        ] {
            let hd = b.frame(b.n, dev.mac, flags, gso_type);
            b.chain(what, &[(hd, len, R)]);
        }
    })
}

/// Device-writable buffers in transmit chains: the device must not write
/// them (or send the frame).
fn group_tx_dir(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    batch(dev, TX_QUEUE, clock, out, |b| {
        let hl = HDR_LEN as u32;
        let fl = FRAME_LEN as u32;
        let hd = b.frame(b.n, dev.mac, 0, 0);
        b.chain("a frame in a device-writable buffer", &[(hd, hl + fl, W)]);
        let hd = b.frame(b.n, dev.mac, 0, 0);
        b.chain(
            "a device-writable frame after its header",
            &[(hd, hl, R), (hd + u64::from(hl), fl, W)],
        );
        let hd = b.frame(b.n, dev.mac, 0, 0);
        b.chain(
            "a device-writable buffer after the frame",
            &[(hd, hl + fl, R), (data(), 64, W)],
        );
        let hd = b.frame(b.n, dev.mac, 0, 0);
        b.chain(
            "a device-writable header",
            &[(data(), hl, W), (hd + u64::from(hl), fl, R)],
        );
    })
}

/// Descriptor loops, a next beyond the table and nested indirect tables,
/// on queue `queue` with buffers flagged `dir`.
fn loops(b: &mut Batch, dev: &Dev, dir: u16) {
    let hl = HDR_LEN as u32;
    let fl = FRAME_LEN as u32;
    let hd = if dir == R {
        b.frame(0, dev.mac, 0, 0)
    } else {
        data()
    };
    let fr = hd + u64::from(hl);
    // 0 -> 0.
    b.raw.desc(0, hd, hl + fl, dir | DESC_NEXT, 0);
    b.record("a descriptor chained to itself", 0);
    // 1 -> 2 -> 1.
    b.raw.desc(1, hd, hl, dir | DESC_NEXT, 2);
    b.raw.desc(2, fr, fl, dir | DESC_NEXT, 1);
    b.record("a frame looping back to its header", 1);
    // 3 -> 200.
    b.raw.desc(3, hd, hl + fl, dir | DESC_NEXT, 200);
    b.record("next beyond the table", 3);
    // 4 -> an indirect table whose entries are indirect.
    for k in 0..2 {
        AREA.write(IND2 + 16 * k, AREA.addr(IND2));
        AREA.write(IND2 + 16 * k + 8, 32u32);
        AREA.write(IND2 + 16 * k + 12, DESC_INDIRECT);
        AREA.write(IND2 + 16 * k + 14, 0u16);
    }
    b.raw.desc(4, hd, hl, dir | DESC_NEXT, 5);
    b.raw.desc(5, AREA.addr(IND2), 32, DESC_INDIRECT, 0);
    b.record("nested indirect tables", 4);
}

/// Chains longer than the queue (every descriptor, the last leading back
/// to the first) or than 2^32 bytes, and indirect tables of impossible
/// sizes.
fn long(dev: &Dev, queue: u16, dir: u16, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    let mut t = Tally::default();
    let mut b = start(dev, queue, out)?;
    let hd = if dir == R {
        b.frame(0, dev.mac, 0, 0)
    } else {
        data()
    };
    b.raw.desc(0, hd, HDR_LEN as u32, dir | DESC_NEXT, 1);
    for i in 1..QSIZE - 1 {
        b.raw
            .desc(i, hd + HDR_LEN as u64, 32, dir | DESC_NEXT, i + 1);
    }
    b.raw.desc(QSIZE - 1, hd, 32, dir | DESC_NEXT, 0);
    b.record("a chain through all 64 descriptors and back", 0);
    b.run(clock, &mut t, out)?;
    h::reset(&dev.mmio()).map_err(|s| {
        let _ = write!(out, "Status {s:#x} after reset");
    })?;

    let mut b = start(dev, queue, out)?;
    b.raw.desc(0, AREA.addr(IND), 16 << 16, DESC_INDIRECT, 0);
    b.record("an indirect table of 65536 entries", 0);
    b.raw.desc(1, AREA.addr(IND), 24, DESC_INDIRECT, 0);
    b.record("an indirect table of 24 bytes", 1);
    b.raw.desc(2, HOLE, 32, DESC_INDIRECT, 0);
    b.record("an indirect table in the MMIO hole", 2);
    // virtio 1.2 2.7.5.2: no chain longer than 2^32 bytes in total.
    b.raw.desc(3, hd, 16, dir | DESC_NEXT, 4);
    b.raw.desc(4, hd, u32::MAX, dir, 0);
    b.record("a chain of more than 2^32 bytes", 3);
    b.run(clock, &mut t, out)?;
    let _ = write!(out, "{t}");
    Ok(())
}

fn group_tx_loop(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    batch(dev, TX_QUEUE, clock, out, |b| loops(b, dev, R))
}

fn group_tx_long(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    long(dev, TX_QUEUE, R, clock, out)
}

/// The available index jumping more than the queue size ahead of a
/// well-formed chain (a marked frame for transmit, a buffer for receive),
/// then a storm of notifications: NEEDS_RESET, and the chain never used.
fn avail(dev: &Dev, queue: u16, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    let mut b = start(dev, queue, out)?;
    let mut t = Tally::default();
    if queue == TX_QUEUE {
        let hd = b.frame(0, dev.mac, 0, 0);
        b.chain(
            "a frame behind an available index 71 ahead",
            &[(hd, (HDR_LEN + FRAME_LEN) as u32, R)],
        );
    } else {
        b.chain(
            "a buffer behind an available index 71 ahead",
            &[(data(), DATA_LEN as u32, W)],
        );
    }
    snapshot();
    let head = b.chains[0].head;
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
    unchanged(out)?;
    let _ = write!(out, "{t}, 2000 notifications after it ignored");
    Ok(())
}

fn group_tx_avail(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    avail(dev, TX_QUEUE, clock, out)
}

/// Receive buffers that are not RAM.
fn group_rx_addr(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    batch(dev, RX_QUEUE, clock, out, |b| {
        for (what, at, len) in [
            ("buffer in the MMIO hole", HOLE, 2048),
            ("buffer in the LAPIC page", LAPIC, 2048),
            ("buffer in the IOAPIC page", IOAPIC, 2048),
            ("buffer beyond RAM", dev.t.outside, 2048),
            ("buffer in the device's registers", dev.mmio().base(), 256),
            ("buffer wrapping the address space", u64::MAX - 2047, 2048),
        ] {
            b.chain(what, &[(at, len, W)]);
        }
        if let Some(end) = dev.t.ram_end {
            b.chain("buffer across the end of RAM", &[(end - 1024, 2048, W)]);
        }
        b.chain(
            "a buffer, then the MMIO hole",
            &[(data(), 1024, W), (HOLE, 1024, W)],
        );
    })
}

/// Receive chains shorter than a header, or longer than RAM.
fn group_rx_len(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    batch(dev, RX_QUEUE, clock, out, |b| {
        let d = data();
        b.chain("a buffer of 0 bytes", &[(d, 0, W)]);
        b.chain("a buffer of 8 bytes", &[(d, 8, W)]);
        b.chain("two buffers of 4 bytes", &[(d, 4, W), (d + 4, 4, W)]);
        b.chain("0 bytes in the MMIO hole", &[(HOLE, 0, W)]);
        b.chain("a buffer of 0xffffffff bytes", &[(d, u32::MAX, W)]);
    })
}

/// Device-readable buffers in receive chains: the device must not write
/// them.
fn group_rx_dir(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    batch(dev, RX_QUEUE, clock, out, |b| {
        let d = data();
        b.chain("a device-readable buffer", &[(d, 2048, R)]);
        b.chain(
            "a device-readable buffer after a writable one",
            &[(d, 1024, W), (d + 1024, 1024, R)],
        );
        b.chain(
            "a device-readable buffer before a writable one",
            &[(d, 1024, R), (d + 1024, 1024, W)],
        );
    })
}

fn group_rx_loop(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    batch(dev, RX_QUEUE, clock, out, |b| loops(b, dev, W))
}

fn group_rx_long(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    long(dev, RX_QUEUE, W, clock, out)
}

fn group_rx_avail(dev: &Dev, clock: &Clock, out: &mut Line) -> Result<(), ()> {
    avail(dev, RX_QUEUE, clock, out)
}

/// The MAC address and status fields of the configuration.
fn config_mac_status(m: &Mmio) -> u64 {
    (0..8).fold(0, |v, k| v | u64::from(m.config8(k)) << (8 * k))
}

/// A broadcast frame from `mac` carrying `vmkit-ok net<index>-<group>`.
fn ok_frame(frame: &mut [u8], mac: EthernetAddress, index: usize, group: &str) {
    frame.fill(0);
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&mac.0);
    frame[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    let mut text = Line::new();
    let _ = write!(text, "vmkit-ok net{index}-{group}");
    let text = text.as_str().as_bytes();
    let n = text.len().min(frame.len() - 14);
    frame[14..14 + n].copy_from_slice(&text[..n]);
}

/// Resets the device and checks it works: initialise it normally, resolve
/// `vmkit.peer` by ARP, send an `ok` frame for `group` and see the device
/// take it. Returns the device's MAC address.
fn normal_io(dev: &Dev, group: &str, clock: &Clock, out: &mut Line) -> Result<EthernetAddress, ()> {
    if let Err(s) = h::reset(&dev.mmio()) {
        let _ = write!(out, "Status {s:#x} after reset");
        return Err(());
    }
    let mut net = match Net::init(dev.mmio(), dev.irq, dev.index) {
        Ok(net) => net,
        Err(e) => {
            let _ = write!(out, "init after reset: {e}");
            dev.mmio().write(virtio::STATUS, 0);
            return Err(());
        }
    };
    let result = normal_io_on(&mut net, dev, group, clock, out);
    net.reset();
    result.map(|()| net.mac)
}

fn normal_io_on(
    net: &mut Net,
    dev: &Dev,
    group: &str,
    clock: &Clock,
    out: &mut Line,
) -> Result<(), ()> {
    let mac = net.mac;
    net.watch_arp(dev.peer);
    let mut resolved = false;
    for _ in 0..ARP_TRIES {
        if !net.send_raw(60, |f| arp_request(f, mac, dev.ip, dev.peer)) {
            let _ = write!(out, "no transmit buffer for an ARP request after reset");
            return Err(());
        }
        net.flush();
        let start = crate::cpu::rdtsc();
        while crate::cpu::rdtsc().wrapping_sub(start) < clock.cycles(1000) {
            net.drain_rx();
            if net.arp_reply().is_some() {
                resolved = true;
                break;
            }
        }
        if resolved {
            break;
        }
    }
    net.unwatch_arp();
    if !resolved {
        let _ = write!(
            out,
            "no ARP reply from {} after reset ({} requests)",
            dev.peer, ARP_TRIES
        );
        return Err(());
    }
    if !net.send_raw(60, |f| ok_frame(f, mac, dev.index, group)) {
        let _ = write!(out, "no transmit buffer for the ok frame after reset");
        return Err(());
    }
    net.flush();
    let start = crate::cpu::rdtsc();
    while !net.tx_done() {
        if crate::cpu::rdtsc().wrapping_sub(start) > clock.cycles(1000) {
            let _ = write!(
                out,
                "the device did not take the ok frame within 1 s after reset"
            );
            return Err(());
        }
    }
    Ok(())
}

type Group = h::Group<Dev>;

/// A network device to run the hostile groups on.
pub struct Target {
    pub mmio: Mmio,
    pub irq: u32,
    /// Its index (`net<i>`).
    pub index: usize,
    /// `vmkit.ip` and `vmkit.peer`: the normal I/O after each group is an
    /// ARP exchange with the peer.
    pub ip: Ipv4Address,
    pub peer: Ipv4Address,
    /// `vmkit.mem_mib`.
    pub mem_mib: Option<u64>,
}

/// Runs every hostile group on a network device.
pub fn run(target: Target, r: &mut Report) {
    let Target {
        mmio,
        irq,
        index,
        ip,
        peer,
        mem_mib,
    } = target;
    let mut dev = Dev {
        t: Transport::new(mmio, 2, mem_mib),
        irq,
        index,
        ip,
        peer,
        mac: EthernetAddress([0; 6]),
    };
    let clock = Clock::new();
    let mut name = Line::new();
    let mut out = Line::new();
    let _ = write!(name, "hostile-net{index}");
    match normal_io(&dev, "before", &clock, &mut out) {
        Ok(mac) => dev.mac = mac,
        Err(()) => {
            r.fail::<()>(
                name.as_str(),
                format_args!("net{index} before the hostile groups: {}", out.as_str()),
            );
            return;
        }
    }
    let groups: [(&str, Group); 17] = [
        ("tx-addr", group_tx_addr),
        ("tx-len", group_tx_len),
        ("tx-offload", group_tx_offload),
        ("tx-dir", group_tx_dir),
        ("tx-loop", group_tx_loop),
        ("tx-long", group_tx_long),
        ("tx-avail", group_tx_avail),
        ("rx-addr", group_rx_addr),
        ("rx-len", group_rx_len),
        ("rx-dir", group_rx_dir),
        ("rx-loop", group_rx_loop),
        ("rx-long", group_rx_long),
        ("rx-avail", group_rx_avail),
        ("queue", |d, c, o| h::group_queue(&d.t, c, o)),
        ("notify", |d, c, o| h::group_notify(&d.t, c, o)),
        ("status-seq", |d, c, o| h::group_status_seq(&d.t, c, o)),
        ("config", |d, _, o| {
            h::group_config(&d.t, "MAC address and status", config_mac_status, o)
        }),
    ];
    h::run_groups(r, name.as_str(), &dev, &clock, &groups, |d, g, o| {
        normal_io(d, g, &clock, o).map(|_| ())
    });
}
