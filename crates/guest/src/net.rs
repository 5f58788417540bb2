//! The virtio-net driver (virtio 1.2 §5.1) on virtio-mmio, as a smoltcp
//! [`Device`].
//!
//! It negotiates VERSION_1 (required), EVENT_IDX, MAC, STATUS and
//! MRG_RXBUF when offered, and no offload: smoltcp computes and checks
//! every checksum itself, and frames are never longer than 1514 bytes.
//! Every frame carries the 12-byte `virtio_net_hdr_v1` (all zero on
//! transmit). Receive queue 0 is kept full of buffers; transmit queue 1
//! gets one descriptor per frame (header and frame together). The driver
//! polls both used rings and keeps interrupts suppressed (`used_event` half
//! the index space ahead); it notifies only when a queue's `avail_event`
//! asks for it, once per [`Net::flush`] (after each pass of the stack).
//!
//! With MRG_RXBUF the receive buffers are 1 KiB, so a full-size frame
//! spans two of them (`num_buffers` = 2) and is reassembled; without it
//! they are 2 KiB, enough for any frame.

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Ipv4Address,
};

use crate::irq;
use crate::virtio::{self, Buf, Dma, Mmio, Queue, QueueError, Ring};

pub mod hostile;

pub const NET_F_MAC: u64 = 1 << 5;
pub const NET_F_MRG_RXBUF: u64 = 1 << 15;
pub const NET_F_STATUS: u64 = 1 << 16;
/// What the driver accepts when offered. VERSION_1 is required.
const DRIVER_FEATURES: u64 =
    virtio::F_VERSION_1 | virtio::F_RING_EVENT_IDX | NET_F_MAC | NET_F_MRG_RXBUF | NET_F_STATUS;

/// `struct virtio_net_config` offsets.
const CFG_MAC: u64 = 0;
const CFG_STATUS: u64 = 6;
const S_LINK_UP: u16 = 1;

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;

/// `struct virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset, num_buffers.
const HDR_LEN: usize = 12;
const HDR_NUM_BUFFERS: usize = 10;
/// Largest Ethernet frame without FCS (MTU 1500) and with a VLAN tag.
pub const MAX_FRAME: usize = 1518;
/// What smoltcp may send: 1500-byte IP packets in untagged frames.
const MTU: usize = 1514;

/// Receive memory: 256 buffers of 1 KiB with MRG_RXBUF, else 128 of 2 KiB.
const RX_BYTES: usize = 256 << 10;
const RX_BUF_MRG: usize = 1 << 10;
const RX_BUF_PLAIN: usize = 2 << 10;
const _: () = assert!(RX_BUF_PLAIN >= HDR_LEN + MAX_FRAME);
/// Transmit buffers, header and frame each.
const TX_SLOTS: usize = 64;
const TX_BUF: usize = 2 << 10;
const _: () = assert!(TX_BUF >= HDR_LEN + MTU);

static RX_RING: Ring = Ring::new();
static TX_RING: Ring = Ring::new();
static RX_DMA: Dma<RX_BYTES> = Dma::new();
static TX_DMA: Dma<{ TX_SLOTS * TX_BUF }> = Dma::new();
/// Where a frame spread over several receive buffers is put together.
static REASSEMBLY: Dma<2048> = Dma::new();
const _: () = assert!(2048 >= MAX_FRAME);

/// Counters of the receive and transmit paths.
#[derive(Clone, Copy, Default)]
pub struct Stats {
    pub tx_packets: u64,
    pub tx_notifications: u64,
    pub rx_packets: u64,
    /// Frames that came in more than one buffer (`num_buffers` > 1).
    pub rx_merged: u64,
    pub rx_notifications: u64,
    pub interrupts: u64,
    /// Receive buffers the device returned malformed (too short, too long,
    /// `num_buffers` 0, a frame beyond [`MAX_FRAME`]), dropped.
    pub rx_errors: u64,
}

/// A frame spread over several buffers, being put together.
struct Partial {
    expected: u16,
    got: u16,
    len: usize,
    /// Longer than [`MAX_FRAME`]: the rest is consumed and dropped.
    overflow: bool,
}

/// A received frame: in one buffer, or reassembled.
#[derive(Clone, Copy)]
enum Frame {
    /// Bytes `HDR_LEN..HDR_LEN + len` of receive buffer `slot`.
    Single { slot: u16, len: usize },
    /// The first `len` bytes of [`REASSEMBLY`].
    Merged { len: usize },
}

/// The receive queue and its buffers.
struct Rx {
    q: Queue,
    buf_len: usize,
    mrg: bool,
    slot_of_head: [u16; virtio::QUEUE_MAX],
    partial: Option<Partial>,
    /// The device returned a used id not in flight: no more receiving.
    fault: Option<QueueError>,
    packets: u64,
    merged: u64,
    errors: u64,
    /// ARP replies from this address are noted in `arp_reply`.
    arp_watch: Option<Ipv4Address>,
    arp_reply: Option<EthernetAddress>,
}

impl Rx {
    /// Gives receive buffer `slot` to the device (published at the next
    /// kick). A descriptor is free: the buffer's own, just consumed.
    fn post(&mut self, slot: u16) {
        let buf = Buf {
            addr: RX_DMA.addr(usize::from(slot) * self.buf_len),
            len: self.buf_len as u32,
            write: true,
        };
        if let Some(head) = self.q.add(&[buf]) {
            self.slot_of_head[usize::from(head)] = slot;
        }
    }

    /// The next complete frame, if any.
    fn next(&mut self) -> Option<Frame> {
        if self.fault.is_some() {
            return None;
        }
        loop {
            let (head, len) = match self.q.pop() {
                Ok(Some(c)) => c,
                Ok(None) => return None,
                Err(e) => {
                    self.fault = Some(e);
                    return None;
                }
            };
            let slot = self.slot_of_head[usize::from(head)];
            let len = len as usize;
            let at = usize::from(slot) * self.buf_len;
            let Some(mut p) = self.partial.take() else {
                if len < HDR_LEN || len > self.buf_len {
                    self.errors += 1;
                    self.post(slot);
                    continue;
                }
                let buffers = if self.mrg {
                    RX_DMA.read::<u16>(at + HDR_NUM_BUFFERS)
                } else {
                    1
                };
                match buffers {
                    0 => {
                        self.errors += 1;
                        self.post(slot);
                    }
                    1 => {
                        self.packets += 1;
                        return Some(Frame::Single {
                            slot,
                            len: len - HDR_LEN,
                        });
                    }
                    n => {
                        let data = len - HDR_LEN;
                        reassemble_at(0, RX_DMA.bytes(at + HDR_LEN, data));
                        self.partial = Some(Partial {
                            expected: n,
                            got: 1,
                            len: data,
                            overflow: false,
                        });
                        self.post(slot);
                    }
                }
                continue;
            };
            // A further buffer of a merged frame: all of it is frame data.
            let len = len.min(self.buf_len);
            if p.len + len > MAX_FRAME {
                p.overflow = true;
            } else {
                reassemble_at(p.len, RX_DMA.bytes(at, len));
                p.len += len;
            }
            p.got += 1;
            self.post(slot);
            if p.got < p.expected {
                self.partial = Some(p);
            } else if p.overflow {
                self.errors += 1;
            } else {
                self.packets += 1;
                self.merged += 1;
                return Some(Frame::Merged { len: p.len });
            }
        }
    }

    /// Notes `frame`'s sender if it is an ARP reply from the watched peer.
    fn note_arp(&mut self, frame: &[u8]) {
        if let Some(peer) = self.arp_watch
            && let Some(mac) = arp_reply_from(frame, peer)
        {
            self.arp_reply = Some(mac);
        }
    }

    /// The bytes of `frame`, valid until it is released.
    fn bytes(&self, frame: Frame) -> &'static [u8] {
        match frame {
            Frame::Single { slot, len } => {
                RX_DMA.bytes(usize::from(slot) * self.buf_len + HDR_LEN, len)
            }
            Frame::Merged { len } => REASSEMBLY.bytes(0, len),
        }
    }

    /// Done with `frame`: its buffer goes back to the device.
    fn release(&mut self, frame: Frame) {
        if let Frame::Single { slot, .. } = frame {
            self.post(slot);
        }
    }
}

/// The sender's MAC address if `frame` is an ARP reply from `peer`.
fn arp_reply_from(frame: &[u8], peer: Ipv4Address) -> Option<EthernetAddress> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    let packet = ArpPacket::new_checked(eth.payload()).ok()?;
    match ArpRepr::parse(&packet).ok()? {
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr,
            source_protocol_addr,
            ..
        } if source_protocol_addr == peer => Some(source_hardware_addr),
        _ => None,
    }
}

/// A 60-byte broadcast ARP request (who has `peer`? tell `ip`), padded.
pub fn arp_request(frame: &mut [u8], mac: EthernetAddress, ip: Ipv4Address, peer: Ipv4Address) {
    frame.fill(0);
    let eth = EthernetRepr {
        src_addr: mac,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: peer,
    };
    let mut f = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.emit(&mut f);
    arp.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
}

/// Copies `bytes` into [`REASSEMBLY`] at `offset` (in bounds: callers
/// keep `offset + len <= MAX_FRAME`).
fn reassemble_at(offset: usize, bytes: &[u8]) {
    // SAFETY: only `Rx` uses the reassembly buffer, and no slice of it is
    // alive while a frame is being put together (a `Merged` frame is
    // consumed before `Rx::next` runs again); the device never sees it.
    let dst = unsafe { REASSEMBLY.bytes_mut(offset, bytes.len()) };
    dst.copy_from_slice(bytes);
}

/// The transmit queue and its buffers.
struct Tx {
    q: Queue,
    slot_of_head: [u8; virtio::QUEUE_MAX],
    free: [u8; TX_SLOTS],
    num_free: usize,
    fault: Option<QueueError>,
    packets: u64,
}

impl Tx {
    /// Takes back the buffers of frames the device has sent.
    fn reclaim(&mut self) {
        while self.fault.is_none() {
            match self.q.pop() {
                Ok(Some((head, _))) => {
                    self.free[self.num_free] = self.slot_of_head[usize::from(head)];
                    self.num_free += 1;
                }
                Ok(None) => break,
                Err(e) => self.fault = Some(e),
            }
        }
    }

    /// Whether a buffer is free, after reclaiming (and, if none was, after
    /// publishing what is queued so the device gets to it).
    fn ready(&mut self) -> bool {
        if self.fault.is_some() {
            return false;
        }
        self.reclaim();
        if self.num_free == 0 {
            self.q.kick();
            self.reclaim();
        }
        self.num_free > 0
    }

    /// Queues a frame of `len` bytes that `fill` writes; needs [`Tx::ready`].
    fn send<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
        assert!(
            self.num_free > 0 && len <= TX_BUF - HDR_LEN,
            "transmit without a free buffer or beyond the MTU"
        );
        self.num_free -= 1;
        let slot = self.free[self.num_free];
        let at = usize::from(slot) * TX_BUF;
        // SAFETY: slot `slot` was free: no request in flight uses it and no
        // other slice of it is alive; this one ends with this function.
        let buf = unsafe { TX_DMA.bytes_mut(at, HDR_LEN + len) };
        buf[..HDR_LEN].fill(0);
        let result = fill(&mut buf[HDR_LEN..]);
        let chain = [Buf {
            addr: TX_DMA.addr(at),
            len: (HDR_LEN + len) as u32,
            write: false,
        }];
        // As many descriptors as slots: one is free.
        if let Some(head) = self.q.add(&chain) {
            self.slot_of_head[usize::from(head)] = slot;
            self.packets += 1;
        }
        result
    }
}

/// A virtio-net device set up and DRIVER_OK.
pub struct Net {
    mmio: Mmio,
    irq: u8,
    pub features: u64,
    pub mac: EthernetAddress,
    rx: Rx,
    tx: Tx,
}

impl Net {
    /// The virtio 1.2 §3.1.1 and §5.1.5 initialization of a network device
    /// found by [`virtio::probe`] (`index` names it in a made-up MAC if the
    /// device has none). Errors name the step.
    pub fn init(mmio: Mmio, irq: u32, index: usize) -> Result<Self, &'static str> {
        let Ok(irq) = u8::try_from(irq) else {
            return Err("irq beyond the IOAPIC's pins");
        };
        let features = mmio.negotiate(DRIVER_FEATURES)?;
        let event_idx = features & virtio::F_RING_EVENT_IDX != 0;
        let mrg = features & NET_F_MRG_RXBUF != 0;
        let buf_len = if mrg { RX_BUF_MRG } else { RX_BUF_PLAIN };
        let rxq = Queue::setup(mmio, RX_QUEUE, &RX_RING, RX_BYTES / buf_len, event_idx).map_err(
            |_| "receive queue 0 setup failed (QueueReady already set or QueueNumMax 0)",
        )?;
        let txq = Queue::setup(mmio, TX_QUEUE, &TX_RING, TX_SLOTS, event_idx).map_err(
            |_| "transmit queue 1 setup failed (QueueReady already set or QueueNumMax 0)",
        )?;
        let (mac, status) = mmio.read_config(|mmio| {
            let mut mac = [0u8; 6];
            for (k, b) in mac.iter_mut().enumerate() {
                *b = mmio.config8(CFG_MAC + k as u64);
            }
            let status = if features & NET_F_STATUS != 0 {
                mmio.config16(CFG_STATUS)
            } else {
                S_LINK_UP
            };
            (mac, status)
        })?;
        let mac = if features & NET_F_MAC != 0 {
            EthernetAddress(mac)
        } else {
            // Locally administered, unicast: 02:76:6d:6b ("vmk") : 00 : index.
            EthernetAddress([0x02, 0x76, 0x6d, 0x6b, 0x00, index as u8])
        };
        if !mac.is_unicast() {
            return Err("the device's MAC address is not unicast");
        }
        if status & S_LINK_UP == 0 {
            return Err("the device reports its link down (VIRTIO_NET_S_LINK_UP clear)");
        }
        let mut rx = Rx {
            q: rxq,
            buf_len,
            mrg,
            slot_of_head: [0; virtio::QUEUE_MAX],
            partial: None,
            fault: None,
            packets: 0,
            merged: 0,
            errors: 0,
            arp_watch: None,
            arp_reply: None,
        };
        // Fill the receive queue before DRIVER_OK (§5.1.5: the device may
        // deliver right after).
        for slot in 0..rx.q.size() {
            rx.post(slot);
        }
        let mut tx = Tx {
            q: txq,
            slot_of_head: [0; virtio::QUEUE_MAX],
            free: [0; TX_SLOTS],
            num_free: 0,
            fault: None,
            packets: 0,
        };
        for slot in 0..usize::from(tx.q.size()).min(TX_SLOTS) {
            tx.free[slot] = slot as u8;
            tx.num_free += 1;
        }
        rx.q.suppress_interrupts();
        tx.q.suppress_interrupts();
        mmio.driver_ok(irq)?;
        let mut net = Self {
            mmio,
            irq,
            features,
            mac,
            rx,
            tx,
        };
        net.flush();
        Ok(net)
    }

    /// Resets the device and stops routing its interrupts.
    pub fn reset(&self) {
        self.mmio.reset(self.irq);
    }

    /// Publishes new receive buffers and queued frames, notifying where
    /// the device asks for it, and keeps interrupts suppressed.
    pub fn flush(&mut self) {
        self.rx.q.kick();
        self.tx.q.kick();
        self.rx.q.suppress_interrupts();
        self.tx.q.suppress_interrupts();
    }

    /// What went wrong with the device's rings, if anything.
    pub fn fault(&self) -> Option<&'static str> {
        match (self.rx.fault, self.tx.fault) {
            (Some(QueueError::BadUsedId(_)), _) => {
                Some("the device returned a receive buffer that was not in flight")
            }
            (_, Some(QueueError::BadUsedId(_))) => {
                Some("the device returned a transmit buffer that was not in flight")
            }
            _ => None,
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            tx_packets: self.tx.packets,
            tx_notifications: self.tx.q.notifications,
            rx_packets: self.rx.packets,
            rx_merged: self.rx.merged,
            rx_notifications: self.rx.q.notifications,
            interrupts: irq::count(self.irq),
            rx_errors: self.rx.errors,
        }
    }

    /// Sends a raw Ethernet frame of `len` bytes written by `fill`, outside
    /// the stack; false if no transmit buffer is free.
    pub fn send_raw(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> bool {
        if !self.tx.ready() {
            return false;
        }
        self.tx.send(len, fill);
        true
    }

    /// From now on, notes the MAC address in any ARP reply from `peer`
    /// that passes through (see [`Net::arp_reply`]).
    pub fn watch_arp(&mut self, peer: Ipv4Address) {
        self.rx.arp_watch = Some(peer);
        self.rx.arp_reply = None;
    }

    /// Stops noting ARP replies.
    pub fn unwatch_arp(&mut self) {
        self.rx.arp_watch = None;
    }

    /// The MAC address of the watched peer, once its ARP reply came in.
    pub fn arp_reply(&self) -> Option<EthernetAddress> {
        self.rx.arp_reply
    }

    /// Without the stack: takes every frame received so far (noting a
    /// watched ARP reply), gives the buffers back and publishes them.
    pub fn drain_rx(&mut self) {
        while let Some(frame) = self.rx.next() {
            let bytes = self.rx.bytes(frame);
            self.rx.note_arp(bytes);
            self.rx.release(frame);
        }
        self.flush();
    }

    /// Whether the device has sent every frame queued so far (false after
    /// a ring fault).
    pub fn tx_done(&mut self) -> bool {
        self.tx.reclaim();
        self.tx.fault.is_none() && self.tx.num_free == usize::from(self.tx.q.size()).min(TX_SLOTS)
    }
}

/// smoltcp's token for one received frame.
pub struct RxToken<'a> {
    rx: &'a mut Rx,
    frame: Frame,
}

/// smoltcp's token to send one frame.
pub struct TxToken<'a> {
    tx: &'a mut Tx,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let bytes = self.rx.bytes(self.frame);
        self.rx.note_arp(bytes);
        let result = f(bytes);
        self.rx.release(self.frame);
        result
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.tx.send(len, f)
    }
}

impl Device for Net {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        // A reply may need a transmit buffer: take a frame only if one is
        // free (the frame waits in the ring otherwise).
        if !self.tx.ready() {
            return None;
        }
        let frame = self.rx.next()?;
        Some((
            RxToken {
                rx: &mut self.rx,
                frame,
            },
            TxToken { tx: &mut self.tx },
        ))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        self.tx.ready().then_some(TxToken { tx: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU;
        caps
    }
}
