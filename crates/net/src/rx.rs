//! The receive queue (virtio 1.2, 5.1.6.3 and 5.1.6.4): frames from a
//! [`NetBackend`] into the buffers the driver posts, independent of the
//! transport and of the tap.
//!
//! # Buffers
//!
//! Chains the driver makes available are popped into a list held by the
//! device (checked once: device-writable only, inside guest memory, at
//! least a header long; a bad chain goes back with used length 0). Frames
//! are read from the backend only while that list is not empty: when it is,
//! [`Rx::process`] re-enables driver notifications and reports
//! [`RxStatus::NeedBuffers`], and the caller stops watching the backend
//! until the driver notifies the queue.
//!
//! # Reading a frame
//!
//! The tap cannot say how long its next frame is without reading it, and a
//! read into buffers that are too small truncates the frame, loses the rest
//! and returns only what it stored. So every read into guest buffers gets
//! one more byte, of host memory, after them: a frame that reaches it did
//! not fit. Then:
//!
//! - Without VIRTIO_NET_F_MRG_RXBUF a frame must fit in one chain, the
//!   oldest held one: the frame is read straight into it (one `readv`, no
//!   copy). A frame larger than that chain is dropped, counted and logged,
//!   and the chain is kept for the next frame.
//! - With VIRTIO_NET_F_MRG_RXBUF a frame may span several chains. When the
//!   held chains hold the largest frame the driver can be sent (its bound:
//!   a header plus [`MAX_FRAME_LEN`] bytes with VIRTIO_NET_F_GUEST_TSO4,
//!   TSO6, UFO, USO4 or USO6, else a header plus a 1500-byte-MTU Ethernet
//!   frame with a VLAN tag), the frame is read straight into as many of
//!   them as cover the bound, followed by the rest of a host buffer of one
//!   frame (the stash) in place of the extra byte: a frame larger than the
//!   bound (a tap with a larger MTU) is not lost, its tail is copied from
//!   the stash into the next held chains, and the bound grows to it so that
//!   the next such frame goes straight in. Otherwise (the driver is short
//!   of buffers) the frame is read into the stash and copied into the
//!   guest's buffers as soon as they hold it; meanwhile the backend is not
//!   read. A stashed frame is dropped only when every descriptor of the
//!   queue is already held and it still does not fit. A driver that keeps
//!   its ring full (Linux does) never takes the copying path.
//!
//! Within one [`Rx::process`] call the I/O vectors of the held chains are
//! gathered once and reused from frame to frame: a chain is looked up in
//! guest memory once, however many frames are read while it is held.
//!
//! The header comes from the tap; the device sets `num_buffers` (the number
//! of chains used, 1 without MRG_RXBUF) and clears `flags` if the driver did
//! not negotiate VIRTIO_NET_F_GUEST_CSUM. The used entries of a frame are
//! published with a single used index update, so a driver never sees a
//! frame's first buffer before its last.

use std::collections::VecDeque;
use std::io;
use std::num::Wrapping;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use log::{debug, error, warn};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_GUEST_USO4, VIRTIO_NET_F_GUEST_USO6,
    VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};
use vmkit_virtio::{GuestMemoryMmap, add_used, avail_index_invalid, pop_chain};

use crate::header::{FLAGS_OFFSET, NUM_BUFFERS_OFFSET};
use crate::log_limits::NetLogLimits;
use crate::tap::IOV_MAX;
use crate::{MAX_FRAME_LEN, NetBackend, VNET_HDR_LEN};

/// Size of the used ring's header (flags, idx) and of one used element.
const USED_RING_HEADER: u64 = 4;
const USED_ELEM: u64 = 8;
/// Size of the available ring's header (flags, idx) and of one entry.
const AVAIL_RING_HEADER: u64 = 4;
const AVAIL_ELEM: u64 = 2;

/// The largest frame a driver without guest segmentation offloads is sent
/// by a tap of the usual 1500-byte MTU: the payload, the Ethernet header
/// (14 bytes) and a VLAN tag (4 bytes).
const MTU_FRAME_LEN: usize = 1500 + 14 + 4;

/// The stash: any frame with its header, and one byte more to tell a frame
/// that is too large.
const STASH_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN + 1;

/// The largest frame, header included, a driver that accepted `features`
/// can be sent: with a guest segmentation offload a 64 KiB GSO packet,
/// else an MTU-sized frame.
fn frame_bound(features: u64) -> usize {
    let gso = [
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_GUEST_USO4,
        VIRTIO_NET_F_GUEST_USO6,
    ]
    .iter()
    .any(|&b| features & (1 << b) != 0);
    VNET_HDR_LEN + if gso { MAX_FRAME_LEN } else { MTU_FRAME_LEN }
}

/// A chain popped from the available ring and held until a frame fills it.
#[derive(Debug)]
struct RxChain {
    head: u16,
    /// How many device-writable buffers it has: the next ones of
    /// `Rx::held_bufs`.
    bufs: usize,
    /// Their total length.
    len: usize,
    /// Descriptors of the queue's table the chain occupies (1 for an
    /// indirect chain).
    ring_descs: usize,
    /// How many I/O vectors it takes in the current [`Gather`] (set when
    /// the gather reaches it).
    slices: usize,
}

/// Why a chain posted for RX is unusable.
#[derive(Debug, thiserror::Error)]
enum ChainError {
    #[error("descriptor {0} is device-readable")]
    Readable(usize),
    #[error("descriptor of {len} bytes at {addr:#x} is outside guest memory")]
    BadAddress { addr: u64, len: u32 },
    #[error("{0} bytes is less than the {VNET_HDR_LEN}-byte header")]
    TooShort(usize),
    #[error("more than {IOV_MAX} buffers")]
    TooManyBuffers,
    #[error(
        "chain cut short after {0} descriptors (loop, too long, or a bad next/indirect descriptor)"
    )]
    Truncated(usize),
}

/// Why [`Rx::process`] returned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RxStatus {
    /// The backend has no more frames: wait until it is readable.
    #[default]
    Drained,
    /// The driver has no (or not enough) buffers: stop watching the backend
    /// until the driver notifies the queue. Driver notifications are
    /// enabled.
    NeedBuffers,
    /// The frame budget ran out with buffers and maybe frames left: call
    /// again (after other work).
    Budget,
    /// The backend failed (logged): stop watching it until the driver
    /// notifies the queue.
    BackendFailed,
}

/// What one [`Rx::process`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxOutcome {
    /// Frames delivered to the driver.
    pub frames: u64,
    /// Their bytes, virtio-net headers not counted.
    pub bytes: u64,
    /// Frames dropped (larger than the guest's buffers, or malformed).
    pub dropped: u64,
    /// Chains the driver posted that were unusable (returned with used
    /// length 0).
    pub bad_chains: u64,
    /// Frames delivered through the host buffer (MRG_RXBUF with the driver
    /// short of buffers), included in `frames`.
    pub copied: u64,
    /// Used ring entries added.
    pub used: u64,
    /// Why the call returned.
    pub status: RxStatus,
    /// The driver broke the queue (a chain cut short, an available index
    /// more than a queue size ahead): the device should signal
    /// DEVICE_NEEDS_RESET.
    pub needs_reset: bool,
}

/// Receives frames into the buffers the driver posts on an RX queue.
#[derive(Debug)]
pub struct Rx {
    mrg_rxbuf: bool,
    guest_csum: bool,
    /// The largest frame, header included, the backend is expected to hand
    /// out: [`frame_bound`] of the features, raised to any larger frame
    /// seen. With MRG_RXBUF, frames are read straight into the held chains
    /// once they cover it.
    frame_bound: usize,
    held: VecDeque<RxChain>,
    /// The buffers of the held chains, in order, each inside guest memory.
    held_bufs: VecDeque<(GuestAddress, usize)>,
    held_bytes: usize,
    held_descs: usize,
    /// One frame read from the backend before the driver had room for it
    /// ([`STASH_LEN`] bytes with MRG_RXBUF, else empty).
    stash: Vec<u8>,
    stash_len: usize,
    /// The used entries of the frame being completed (kept for its
    /// allocation).
    entries: Vec<(u16, u32)>,
    /// Whether driver notifications are enabled (used flags / avail_event).
    notify_enabled: bool,
    /// `next_used` when the driver was last considered for an interrupt.
    signalled_used: Wrapping<u16>,
    /// Counts drops, bad chains and broken rings, for the log.
    log: Arc<NetLogLimits>,
    spilled: u64,
}

/// The I/O vectors of the oldest held chains, in order, gathered once and
/// reused for every frame of one [`Rx::process`] call (they borrow guest
/// memory, so they do not outlive it): a frame's read takes the live ones
/// plus a tail of host memory, and the chains a frame used are dropped from
/// the front.
struct Gather<'a> {
    iov: Vec<VolatileSlice<'a>>,
    /// The first live entry of `iov`; those before it belong to chains
    /// already used.
    start: usize,
    /// How many of the oldest held chains the live entries cover.
    chains: usize,
    /// How many entries of `Rx::held_bufs` those chains have.
    bufs: usize,
    /// Their bytes.
    bytes: usize,
    /// The last chain covered is cut short (no room for more vectors in one
    /// read): no chain can be added.
    capped: bool,
    /// One byte of host memory.
    overflow: VolatileSlice<'a>,
    /// The stash (with MRG_RXBUF).
    stash: Option<VolatileSlice<'a>>,
}

impl Gather<'_> {
    fn live(&self) -> usize {
        self.iov.len() - self.start
    }

    fn reset(&mut self) {
        self.iov.clear();
        self.start = 0;
        self.chains = 0;
        self.bufs = 0;
        self.bytes = 0;
        self.capped = false;
    }

    /// Forgets the vectors of the `n` oldest chains of `held`, which are
    /// about to be popped.
    fn consume(&mut self, held: &VecDeque<RxChain>, n: usize) {
        if n == 0 {
            return;
        }
        if self.capped || n >= self.chains {
            self.reset();
            return;
        }
        for chain in held.iter().take(n) {
            self.start += chain.slices;
            self.bufs -= chain.bufs;
            self.bytes -= chain.len;
        }
        self.chains -= n;
        // Move the live vectors to the front once the dead ones outnumber
        // them: each vector moves at most once per chain consumed after it.
        if self.start > self.live() {
            self.iov.drain(..self.start);
            self.start = 0;
        }
    }
}

/// Writes `data` at byte `offset` of the buffers `bufs`.
fn write_at<'b>(
    mem: &GuestMemoryMmap,
    bufs: impl IntoIterator<Item = &'b (GuestAddress, usize)>,
    mut offset: usize,
    mut data: &[u8],
) -> vm_memory::GuestMemoryResult<()> {
    for &(addr, len) in bufs {
        if data.is_empty() {
            break;
        }
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = data.len().min(len - offset);
        // `offset < len` and the buffer lies in guest memory.
        mem.write_slice(&data[..n], addr.unchecked_add(offset as u64))?;
        data = &data[n..];
        offset = 0;
    }
    Ok(())
}

/// Copies `src` (host memory) to byte `offset` of the buffers `bufs`.
fn copy_at<'b>(
    mem: &GuestMemoryMmap,
    bufs: impl IntoIterator<Item = &'b (GuestAddress, usize)>,
    mut offset: usize,
    src: VolatileSlice<'_>,
) -> vm_memory::GuestMemoryResult<()> {
    let mut done = 0;
    for &(addr, len) in bufs {
        if done == src.len() {
            break;
        }
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = (src.len() - done).min(len - offset);
        // `offset < len` and the buffer lies in guest memory.
        for dst in GuestMemoryBackend::get_slices(mem, addr.unchecked_add(offset as u64), n) {
            let dst = dst?;
            src.subslice(done, dst.len())?.copy_to_volatile_slice(dst);
            done += dst.len();
        }
        offset = 0;
    }
    Ok(())
}

impl Rx {
    /// A receiver for a driver that accepted `features`, on `queue` as the
    /// transport handed it over.
    pub fn new(features: u64, queue: &Queue) -> Self {
        Rx {
            mrg_rxbuf: features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
            guest_csum: features & (1 << VIRTIO_NET_F_GUEST_CSUM) != 0,
            frame_bound: frame_bound(features),
            held: VecDeque::new(),
            held_bufs: VecDeque::new(),
            held_bytes: 0,
            held_descs: 0,
            stash: Vec::new(),
            stash_len: 0,
            entries: Vec::new(),
            notify_enabled: true,
            signalled_used: Wrapping(queue.next_used()),
            log: Arc::default(),
            spilled: 0,
        }
    }

    /// Counts what it logs in `log` (a device's limits, kept across
    /// resets: see [`NetLogLimits`]) instead of limits of its own.
    pub fn set_log_limits(&mut self, log: Arc<NetLogLimits>) {
        self.log = log;
    }

    /// Chains popped from the queue and not yet used.
    pub fn held_chains(&self) -> usize {
        self.held.len()
    }

    /// Their total length in bytes.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Whether a frame waits in the host buffer for the driver to post
    /// room for it.
    pub fn has_stashed_frame(&self) -> bool {
        self.stash_len > 0
    }

    /// Frames (with MRG_RXBUF) larger than the device expected for the
    /// negotiated features and than the buffers it read them into, whose
    /// tail went through the host buffer. Each raises what the device
    /// expects, so the next frame of that size goes straight in.
    pub fn spilled_frames(&self) -> u64 {
        self.spilled
    }

    /// Checks the descriptors of the chain at `head`, appending its buffers
    /// to `bufs` (left as they were if the chain is unusable);
    /// `ring_descs` is set to the number of descriptors.
    fn parse_chain(
        mem: &GuestMemoryMmap,
        bufs: &mut VecDeque<(GuestAddress, usize)>,
        head: u16,
        chain: impl IntoIterator<Item = Descriptor>,
    ) -> Result<RxChain, ChainError> {
        let mark = bufs.len();
        let result = Self::parse_descriptors(mem, bufs, chain);
        let count = bufs.len() - mark;
        match result {
            Ok((total, ring_descs)) => Ok(RxChain {
                head,
                bufs: count,
                len: total,
                ring_descs,
                slices: 0,
            }),
            Err(e) => {
                bufs.truncate(mark);
                Err(e)
            }
        }
    }

    /// The checks of [`Rx::parse_chain`]. Returns the chain's length and
    /// its number of descriptors.
    fn parse_descriptors(
        mem: &GuestMemoryMmap,
        bufs: &mut VecDeque<(GuestAddress, usize)>,
        chain: impl IntoIterator<Item = Descriptor>,
    ) -> Result<(usize, usize), ChainError> {
        let mut total = 0usize;
        let mut count = 0usize;
        let mut nbufs = 0usize;
        let mut last_has_next = false;
        for (i, desc) in chain.into_iter().enumerate() {
            count += 1;
            last_has_next = desc.has_next();
            if !desc.is_write_only() {
                return Err(ChainError::Readable(i));
            }
            let len = desc.len() as usize;
            if len == 0 {
                continue;
            }
            if !GuestMemoryBackend::check_range(mem, desc.addr(), len) {
                return Err(ChainError::BadAddress {
                    addr: desc.addr().0,
                    len: desc.len(),
                });
            }
            if nbufs == IOV_MAX {
                return Err(ChainError::TooManyBuffers);
            }
            bufs.push_back((desc.addr(), len));
            nbufs += 1;
            total += len;
        }
        if last_has_next {
            return Err(ChainError::Truncated(count));
        }
        if total < VNET_HDR_LEN {
            return Err(ChainError::TooShort(total));
        }
        Ok((total, count))
    }

    /// How many descriptors of the queue's table the chain at `head`
    /// occupies: 1 if the head refers to an indirect table, else `count`.
    fn ring_descs(mem: &GuestMemoryMmap, queue: &Queue, head: u16, count: usize) -> usize {
        if count <= 1 {
            // One descriptor, or an indirect table of one: 1 either way.
            return 1;
        }
        let addr = queue.desc_table().wrapping_add(u64::from(head) * 16);
        match mem.read_obj::<Descriptor>(GuestAddress(addr)) {
            Ok(desc) if desc.refers_to_indirect_table() => 1,
            _ => count.max(1),
        }
    }

    /// Pops every available chain into the held list.
    fn refill(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue, out: &mut RxOutcome) -> usize {
        let mut popped = 0;
        while let Some(chain) = pop_chain(queue, mem) {
            popped += 1;
            let head = chain.head_index();
            match Self::parse_chain(mem, &mut self.held_bufs, head, chain) {
                Ok(mut rx_chain) => {
                    rx_chain.ring_descs = Self::ring_descs(mem, queue, head, rx_chain.ring_descs);
                    self.held_bytes += rx_chain.len;
                    self.held_descs += rx_chain.ring_descs;
                    self.held.push_back(rx_chain);
                }
                Err(e) => {
                    if matches!(e, ChainError::Truncated(_)) {
                        out.needs_reset = true;
                    }
                    out.bad_chains += 1;
                    if let Some(n) = self.log.rx_bad_chains.tick() {
                        warn!(
                            "virtio-net: RX: unusable chain {head}: {e}; returned unused \
                             ({n} so far)"
                        );
                    }
                    match self.publish(mem, queue, &[(head, 0)]) {
                        Ok(()) => out.used += 1,
                        Err(e) => {
                            if let Some(n) = self.log.ring.tick() {
                                warn!(
                                    "virtio-net: RX: cannot return descriptor {head}: {e} \
                                     ({n} ring errors so far)"
                                );
                            }
                            out.needs_reset = true;
                        }
                    }
                }
            }
        }
        popped
    }

    /// Adds `entries` (head, length) to the used ring with one update of
    /// the used index, so that the driver sees all of them or none.
    fn publish(
        &self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        entries: &[(u16, u32)],
    ) -> Result<(), virtio_queue::Error> {
        let Some((&(last_head, last_len), rest)) = entries.split_last() else {
            return Ok(());
        };
        let start = queue.next_used();
        let size = queue.size();
        for (i, &(head, len)) in rest.iter().enumerate() {
            // Heads come from popped chains, so they are below the size.
            let pos = start
                .wrapping_add(i as u16)
                .checked_rem(size)
                .ok_or(virtio_queue::Error::InvalidSize)?;
            let addr = queue
                .used_ring()
                .checked_add(USED_RING_HEADER + u64::from(pos) * USED_ELEM)
                .ok_or(virtio_queue::Error::AddressOverflow)?;
            let mut elem = [0u8; USED_ELEM as usize];
            elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
            elem[4..].copy_from_slice(&len.to_le_bytes());
            mem.write_slice(&elem, GuestAddress(addr))
                .map_err(virtio_queue::Error::GuestMemory)?;
        }
        // add_used writes the last element and then stores the used index
        // with release ordering: the elements written above are visible to
        // the driver before the index that covers them.
        queue.set_next_used(start.wrapping_add(rest.len() as u16));
        if let Err(e) = add_used(queue, mem, last_head, last_len) {
            queue.set_next_used(start);
            return Err(e);
        }
        Ok(())
    }

    /// Whether the driver must be interrupted for the used entries added
    /// since the last call: always without VIRTIO_RING_F_EVENT_IDX, else
    /// when the used index moved past `used_event` (the test of
    /// `Queue::needs_notification`, over every entry added since the last
    /// call, which that method cannot see once entries are published
    /// together).
    pub fn needs_interrupt(&mut self, mem: &GuestMemoryMmap, queue: &Queue) -> bool {
        let new = Wrapping(queue.next_used());
        let old = std::mem::replace(&mut self.signalled_used, new);
        if new == old {
            return false;
        }
        if !queue.event_idx_enabled() {
            return true;
        }
        // The used entries must be visible before used_event is read.
        fence(Ordering::SeqCst);
        let addr = queue
            .avail_ring()
            .wrapping_add(AVAIL_RING_HEADER + u64::from(queue.size()) * AVAIL_ELEM);
        match mem.load::<u16>(GuestAddress(addr), Ordering::Acquire) {
            Ok(used_event) => {
                let used_event = Wrapping(u16::from_le(used_event));
                new - used_event - Wrapping(1) < new - old
            }
            Err(e) => {
                if let Some(n) = self.log.ring.tick() {
                    warn!("virtio-net: RX: cannot read used_event: {e} ({n} ring errors so far)");
                }
                true
            }
        }
    }

    /// Enables driver notifications and pops what the driver added
    /// meanwhile. Returns whether anything was popped.
    fn wait_for_buffers(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        out: &mut RxOutcome,
    ) -> bool {
        self.notify_enabled = true;
        match queue.enable_notification(mem) {
            Ok(true) => {
                if self.refill(mem, queue, out) > 0 {
                    return true;
                }
                if avail_index_invalid(queue, mem) {
                    if let Some(n) = self.log.ring.tick() {
                        warn!(
                            "virtio-net: RX: available index more than a queue size ahead \
                             ({n} ring errors so far)"
                        );
                    }
                    out.needs_reset = true;
                }
                false
            }
            Ok(false) => false,
            Err(e) => {
                if let Some(n) = self.log.ring.tick() {
                    warn!(
                        "virtio-net: RX: cannot enable notifications: {e} ({n} ring errors so far)"
                    );
                }
                false
            }
        }
    }

    /// Holding buffers: driver notifications would only cost exits.
    fn quiet(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) {
        if self.notify_enabled {
            self.notify_enabled = false;
            if let Err(e) = queue.disable_notification(mem)
                && let Some(n) = self.log.ring.tick()
            {
                warn!("virtio-net: RX: cannot disable notifications: {e} ({n} ring errors so far)");
            }
        }
    }

    fn drop_frame(&mut self, out: &mut RxOutcome, why: std::fmt::Arguments<'_>) {
        out.dropped += 1;
        if let Some(n) = self.log.rx_dropped.tick() {
            warn!("virtio-net: RX: dropping a frame: {why} ({n} dropped so far)");
        }
    }

    /// The backend handed out a frame of `len` bytes (header included, at
    /// most a header plus [`MAX_FRAME_LEN`]): expect frames that large from
    /// now on.
    fn saw_frame(&mut self, len: usize) {
        if self.mrg_rxbuf && len > self.frame_bound {
            debug!(
                "virtio-net: RX: a {len}-byte frame, more than the {} bytes expected; \
                 gathering buffers for {len} from now on",
                self.frame_bound
            );
            self.frame_bound = len;
        }
    }

    /// Hands the first `len` bytes of the held chains (already holding a
    /// frame) to the driver: fixes the header, publishes the used entries.
    fn complete(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        gather: &mut Gather<'_>,
        len: usize,
        out: &mut RxOutcome,
    ) {
        self.entries.clear();
        let mut remaining = len;
        for chain in &self.held {
            let n = remaining.min(chain.len);
            // A chain's length fits in u32 (virtio limits chains to 4 GiB).
            self.entries.push((chain.head, n as u32));
            remaining -= n;
            if remaining == 0 || !self.mrg_rxbuf {
                break;
            }
        }
        let Some(first) = self.held.front() else {
            return;
        };
        // At most the queue size (32768).
        let num_buffers = (self.entries.len() as u16).to_le_bytes();
        // Without GUEST_CSUM the driver expects flags 0 (the tap may set
        // DATA_VALID).
        let clear_flags = !self.guest_csum;
        // The header is usually inside the first gathered vector, which is
        // the first chain's first buffer when the gather covers the chain.
        let header = gather
            .iov
            .get(gather.start)
            .filter(|slice| gather.chains > 0 && slice.len() >= VNET_HDR_LEN);
        let result = match header {
            Some(header) => header
                .write_slice(&num_buffers, NUM_BUFFERS_OFFSET)
                .and_then(|()| {
                    if clear_flags {
                        header.write_slice(&[0], FLAGS_OFFSET)
                    } else {
                        Ok(())
                    }
                })
                .map_err(vm_memory::GuestMemoryError::from),
            None => {
                let first_bufs = self.held_bufs.range(..first.bufs);
                write_at(mem, first_bufs.clone(), NUM_BUFFERS_OFFSET, &num_buffers).and_then(|()| {
                    if clear_flags {
                        write_at(mem, first_bufs, FLAGS_OFFSET, &[0])
                    } else {
                        Ok(())
                    }
                })
            }
        };
        if let Err(e) = result {
            self.drop_frame(out, format_args!("cannot write its header: {e}"));
            return;
        }
        if let Err(e) = self.publish(mem, queue, &self.entries) {
            self.drop_frame(out, format_args!("cannot publish its used entries: {e}"));
            return;
        }
        let used = self.entries.len();
        gather.consume(&self.held, used);
        for _ in 0..used {
            if let Some(chain) = self.held.pop_front() {
                self.held_bufs.drain(..chain.bufs);
                self.held_bytes -= chain.len;
                self.held_descs -= chain.ring_descs;
            }
        }
        out.frames += 1;
        out.bytes += (len - VNET_HDR_LEN) as u64;
        out.used += used as u64;
    }

    /// Extends `gather` over the held chains until it covers `want` bytes
    /// (or all of them; without MRG_RXBUF only the first chain), leaving
    /// room for one more I/O vector.
    fn gather<'a>(&mut self, mem: &'a GuestMemoryMmap, gather: &mut Gather<'a>, want: usize) {
        while !gather.capped
            && gather.chains < self.held.len()
            && (gather.chains == 0 || (self.mrg_rxbuf && gather.bytes < want))
        {
            let Some(chain) = self.held.get_mut(gather.chains) else {
                break;
            };
            let mut slices = 0;
            'bufs: for &(addr, len) in self.held_bufs.range(gather.bufs..gather.bufs + chain.bufs) {
                for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
                    // Checked when popped; guest memory does not change.
                    let Ok(slice) = slice else {
                        gather.capped = true;
                        break 'bufs;
                    };
                    if gather.live() == IOV_MAX - 1 {
                        gather.capped = true;
                        break 'bufs;
                    }
                    gather.bytes += slice.len();
                    gather.iov.push(slice);
                    slices += 1;
                }
            }
            chain.slices = slices;
            gather.chains += 1;
            gather.bufs += chain.bufs;
        }
    }

    /// Reads one frame from `backend`, straight into the held buffers when
    /// they can take the largest frame expected, else into the stash.
    /// Returns false when the backend has no frame.
    fn receive_one<'a, B: NetBackend + ?Sized>(
        &mut self,
        mem: &'a GuestMemoryMmap,
        queue: &mut Queue,
        backend: &B,
        gather: &mut Gather<'a>,
        out: &mut RxOutcome,
    ) -> io::Result<bool> {
        let want = if self.mrg_rxbuf { self.frame_bound } else { 0 };
        self.gather(mem, gather, want);
        let capacity = gather.bytes;
        if capacity < want {
            return self.read_into_stash(backend, gather, out);
        }
        // After the guest's buffers: with MRG_RXBUF, when a frame might
        // still be larger than they are, the rest of the stash (a frame
        // reaching its last byte is too large for any buffers); else one
        // byte (a frame reaching it did not fit).
        let spill = match gather.stash {
            Some(stash) if capacity < STASH_LEN - 1 => stash.offset(capacity).ok(),
            _ => None,
        };
        gather.iov.push(spill.unwrap_or(gather.overflow));
        let read = backend.read_frame(&gather.iov[gather.start..]);
        gather.iov.pop();
        let n = match read {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(e) => return Err(e),
        };
        if n < VNET_HDR_LEN {
            self.drop_frame(out, format_args!("{n} bytes is shorter than the header"));
        } else if n <= capacity {
            self.saw_frame(n);
            self.complete(mem, queue, gather, n, out);
        } else if spill.is_some() && n < STASH_LEN {
            self.saw_frame(n);
            self.spill(mem, queue, gather, n, out);
        } else {
            self.drop_frame(
                out,
                format_args!("{n} bytes do not fit the guest's {capacity}-byte buffer"),
            );
        }
        Ok(true)
    }

    /// A frame of `len` bytes was read with its first `gather.bytes` in the
    /// gathered chains and the rest in the stash, at the same offsets.
    /// Copies the rest into the next held chains if they hold it, else
    /// moves the whole frame to the stash to wait for buffers.
    fn spill(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        gather: &mut Gather<'_>,
        len: usize,
        out: &mut RxOutcome,
    ) {
        let Some(stash) = gather.stash else {
            return;
        };
        self.spilled += 1;
        let head_len = gather.bytes;
        if self.held_bytes >= len {
            let copied = stash
                .subslice(head_len, len - head_len)
                .map_err(vm_memory::GuestMemoryError::from)
                .and_then(|tail| copy_at(mem, &self.held_bufs, head_len, tail));
            match copied {
                Ok(()) => self.complete(mem, queue, gather, len, out),
                Err(e) => {
                    self.drop_frame(out, format_args!("cannot copy it into guest memory: {e}"))
                }
            }
            return;
        }
        let mut at = 0;
        for slice in &gather.iov[gather.start..] {
            match stash.subslice(at, slice.len()) {
                Ok(dst) => slice.copy_to_volatile_slice(dst),
                Err(e) => {
                    self.drop_frame(out, format_args!("cannot stash it: {e}"));
                    return;
                }
            }
            at += slice.len();
        }
        self.stash_len = len;
    }

    fn read_into_stash<B: NetBackend + ?Sized>(
        &mut self,
        backend: &B,
        gather: &Gather<'_>,
        out: &mut RxOutcome,
    ) -> io::Result<bool> {
        // Present with MRG_RXBUF, the only mode that stashes.
        let Some(stash) = gather.stash else {
            return Ok(false);
        };
        let n = match backend.read_frame(&[stash]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(e) => return Err(e),
        };
        if !(VNET_HDR_LEN..STASH_LEN).contains(&n) {
            self.drop_frame(out, format_args!("backend frame of {n} bytes"));
        } else {
            self.saw_frame(n);
            self.stash_len = n;
        }
        Ok(true)
    }

    /// Copies the stashed frame into the held buffers if they hold it.
    /// Returns false when the driver must post more buffers first.
    fn deliver_stash(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        gather: &mut Gather<'_>,
        out: &mut RxOutcome,
    ) -> bool {
        let len = self.stash_len;
        if self.held_bytes < len {
            if self.held_descs < usize::from(queue.size()) {
                return false;
            }
            self.stash_len = 0;
            let held = self.held_bytes;
            self.drop_frame(
                out,
                format_args!("{len} bytes exceed the {held} bytes of a full RX queue"),
            );
            return true;
        }
        self.stash_len = 0;
        let copied = gather
            .stash
            .ok_or(vm_memory::GuestMemoryError::InvalidBackendAddress)
            .and_then(|stash| Ok(stash.subslice(0, len)?))
            .and_then(|frame| copy_at(mem, &self.held_bufs, 0, frame));
        if let Err(e) = copied {
            self.drop_frame(out, format_args!("cannot copy it into guest memory: {e}"));
            return true;
        }
        self.complete(mem, queue, gather, len, out);
        out.copied += 1;
        true
    }

    /// Moves frames from `backend` into the driver's buffers until the
    /// backend is drained, the driver runs out of buffers, or `budget`
    /// frames were handled. Pops newly posted chains as it goes.
    ///
    /// Whether to interrupt the driver afterwards: [`Rx::needs_interrupt`].
    pub fn process<B: NetBackend + ?Sized>(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        backend: &B,
        budget: u64,
    ) -> RxOutcome {
        if self.mrg_rxbuf && self.stash.len() != STASH_LEN {
            self.stash = vec![0; STASH_LEN];
        }
        let mut stash = std::mem::take(&mut self.stash);
        let mut overflow = [0u8; 1];
        let mut gather = Gather {
            iov: Vec::with_capacity(64),
            start: 0,
            chains: 0,
            bufs: 0,
            bytes: 0,
            capped: false,
            overflow: VolatileSlice::from(&mut overflow[..]),
            stash: (!stash.is_empty()).then(|| VolatileSlice::from(&mut stash[..])),
        };
        let out = self.run(mem, queue, backend, budget, &mut gather);
        drop(gather);
        self.stash = stash;
        out
    }

    fn run<'a, B: NetBackend + ?Sized>(
        &mut self,
        mem: &'a GuestMemoryMmap,
        queue: &mut Queue,
        backend: &B,
        budget: u64,
        gather: &mut Gather<'a>,
    ) -> RxOutcome {
        let mut out = RxOutcome::default();
        loop {
            if out.frames + out.dropped >= budget {
                out.status = RxStatus::Budget;
                return out;
            }
            self.refill(mem, queue, &mut out);
            if self.stash_len > 0 {
                if self.deliver_stash(mem, queue, gather, &mut out) {
                    continue;
                }
                if self.wait_for_buffers(mem, queue, &mut out) {
                    continue;
                }
                out.status = RxStatus::NeedBuffers;
                return out;
            }
            if self.held.is_empty() {
                if self.wait_for_buffers(mem, queue, &mut out) {
                    continue;
                }
                out.status = RxStatus::NeedBuffers;
                return out;
            }
            self.quiet(mem, queue);
            match self.receive_one(mem, queue, backend, gather, &mut out) {
                Ok(true) => {}
                Ok(false) => {
                    out.status = RxStatus::Drained;
                    return out;
                }
                Err(e) => {
                    if let Some(n) = self.log.host.tick() {
                        error!(
                            "virtio-net: RX: reading from the backend failed: {e} \
                             ({n} host errors so far)"
                        );
                    }
                    out.status = RxStatus::BackendFailed;
                    return out;
                }
            }
        }
    }
}
