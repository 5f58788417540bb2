//! The transmit queue (virtio 1.2, 5.1.6.2): frames the driver sends, each
//! a descriptor chain of device-readable buffers holding the virtio-net
//! header and the Ethernet frame, written to a [`NetBackend`] with one
//! gathering write straight from guest memory.
//!
//! Independent of the transport and of the tap. The guest is hostile: a
//! chain with a device-writable descriptor, a header shorter than
//! [`VNET_HDR_LEN`], a frame larger than [`MAX_FRAME_LEN`], a buffer outside
//! guest memory, or offloads the driver did not negotiate is dropped with a
//! log line and returned to the driver (used length 0, as for every TX
//! chain); the queue keeps going.

use std::io;
use std::sync::Arc;

use log::warn;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryBackend, VolatileSlice};
use vmkit_virtio::{GuestMemoryMmap, add_used, avail_index_invalid, pop_chain};

use crate::header::{FLAGS_OFFSET, GSO_TYPE_OFFSET};
use crate::log_limits::NetLogLimits;
use crate::tap::IOV_MAX;
use crate::{MAX_FRAME_LEN, NetBackend, VNET_HDR_LEN};

/// Why a TX chain was dropped.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// A device-writable descriptor in a TX chain.
    #[error("descriptor {0} of the chain is device-writable")]
    WritableDescriptor(usize),
    /// Less than a virtio-net header.
    #[error("chain of {0} bytes is shorter than the {VNET_HDR_LEN}-byte header")]
    HeaderTooShort(usize),
    /// A frame above [`MAX_FRAME_LEN`].
    #[error("frame of more than {MAX_FRAME_LEN} bytes (after the header)")]
    FrameTooLarge,
    /// A buffer outside guest memory.
    #[error("descriptor of {len} bytes at {addr:#x} is outside guest memory")]
    BadAddress {
        /// Guest physical address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// More pieces than one `writev` takes.
    #[error("chain needs more than {IOV_MAX} I/O vectors")]
    TooManySegments,
    /// The header asks for an offload the driver did not negotiate (or
    /// that does not exist).
    #[error("header flags {flags:#x} gso_type {gso_type:#x}: {what}")]
    Offload {
        /// The header's flags.
        flags: u8,
        /// The header's gso_type.
        gso_type: u8,
        /// What is wrong.
        what: &'static str,
    },
    /// The chain ends on a descriptor that still has `VIRTQ_DESC_F_NEXT`:
    /// virtio-queue stopped following it (a loop, more descriptors than the
    /// queue or indirect table, a bad next or indirect descriptor).
    #[error(
        "chain cut short after {0} descriptors (loop, too long, or a bad next/indirect descriptor)"
    )]
    Truncated(usize),
    /// The backend refused the frame.
    #[error("backend write failed: {0}")]
    Backend(#[source] io::Error),
}

/// What one [`Tx::process`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxOutcome {
    /// Frames written to the backend.
    pub frames: u64,
    /// Their bytes, virtio-net headers not counted.
    pub bytes: u64,
    /// Chains dropped (malformed, or refused by the backend).
    pub dropped: u64,
    /// Chains returned to the used ring (sent or dropped).
    pub completed: u64,
    /// The driver broke the queue (a chain cut short, an available index
    /// more than a queue size ahead): the device should signal
    /// DEVICE_NEEDS_RESET.
    pub needs_reset: bool,
}

/// Sends what the driver puts on a TX queue.
#[derive(Debug)]
pub struct Tx {
    features: u64,
    /// Counts drops and broken rings, for the log.
    log: Arc<NetLogLimits>,
}

fn has(features: u64, bit: u32) -> bool {
    features & (1u64 << bit) != 0
}

impl Tx {
    /// A transmitter for a driver that accepted `features`: they say which
    /// offloads (VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_*) headers may ask
    /// for.
    pub fn new(features: u64) -> Self {
        Tx {
            features,
            log: Arc::default(),
        }
    }

    /// Counts what it logs in `log` (a device's limits, kept across
    /// resets: see [`NetLogLimits`]) instead of limits of its own.
    pub fn set_log_limits(&mut self, log: Arc<NetLogLimits>) {
        self.log = log;
    }

    /// Checks a header's offload requests against the negotiated features.
    fn check_offloads(&self, hdr: &[u8; VNET_HDR_LEN]) -> Result<(), TxError> {
        let flags = hdr[FLAGS_OFFSET];
        let gso_type = hdr[GSO_TYPE_OFFSET];
        let err = |what| {
            Err(TxError::Offload {
                flags,
                gso_type,
                what,
            })
        };
        if u32::from(flags) & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
            && !has(self.features, VIRTIO_NET_F_CSUM)
        {
            return err("checksum offload without VIRTIO_NET_F_CSUM");
        }
        let gso = u32::from(gso_type);
        if gso & VIRTIO_NET_HDR_GSO_ECN != 0 && !has(self.features, VIRTIO_NET_F_HOST_ECN) {
            return err("ECN without VIRTIO_NET_F_HOST_ECN");
        }
        match gso & !VIRTIO_NET_HDR_GSO_ECN {
            VIRTIO_NET_HDR_GSO_NONE => Ok(()),
            VIRTIO_NET_HDR_GSO_TCPV4 if has(self.features, VIRTIO_NET_F_HOST_TSO4) => Ok(()),
            VIRTIO_NET_HDR_GSO_TCPV6 if has(self.features, VIRTIO_NET_F_HOST_TSO6) => Ok(()),
            VIRTIO_NET_HDR_GSO_UDP if has(self.features, VIRTIO_NET_F_HOST_UFO) => Ok(()),
            VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6 | VIRTIO_NET_HDR_GSO_UDP => {
                err("segmentation offload the driver did not negotiate")
            }
            _ => err("unknown gso_type"),
        }
    }

    /// Sends one chain (its descriptors in order, e.g. a
    /// `virtio_queue::DescriptorChain`): checks it and writes header and
    /// frame to `backend` with one gathering write. Returns the frame's
    /// length (header not counted).
    pub fn send_chain<B: NetBackend + ?Sized>(
        &self,
        mem: &GuestMemoryMmap,
        chain: impl IntoIterator<Item = Descriptor>,
        backend: &B,
    ) -> Result<usize, TxError> {
        let mut slices: Vec<VolatileSlice<'_>> = Vec::new();
        let mut total = 0usize;
        let mut count = 0usize;
        let mut last_has_next = false;
        for (i, desc) in chain.into_iter().enumerate() {
            count += 1;
            last_has_next = desc.has_next();
            if desc.is_write_only() {
                return Err(TxError::WritableDescriptor(i));
            }
            let len = desc.len() as usize;
            total += len;
            if total > VNET_HDR_LEN + MAX_FRAME_LEN {
                return Err(TxError::FrameTooLarge);
            }
            for slice in GuestMemoryBackend::get_slices(mem, desc.addr(), len) {
                let slice = slice.map_err(|_| TxError::BadAddress {
                    addr: desc.addr().0,
                    len: desc.len(),
                })?;
                if slices.len() == IOV_MAX {
                    return Err(TxError::TooManySegments);
                }
                slices.push(slice);
            }
        }
        if last_has_next {
            return Err(TxError::Truncated(count));
        }
        if total < VNET_HDR_LEN {
            return Err(TxError::HeaderTooShort(total));
        }
        let mut hdr = [0u8; VNET_HDR_LEN];
        let mut filled = 0;
        for slice in &slices {
            if filled == hdr.len() {
                break;
            }
            filled += slice.copy_to(&mut hdr[filled..]);
        }
        self.check_offloads(&hdr)?;
        backend.write_frame(&slices).map_err(TxError::Backend)?;
        Ok(total - VNET_HDR_LEN)
    }

    /// Sends every chain on `queue`, returning each to the used ring.
    ///
    /// With VIRTIO_RING_F_EVENT_IDX, driver notifications stay off while
    /// the queue is drained and are re-enabled (avail_event) before
    /// returning, checking once more for chains added meanwhile. Whether to
    /// interrupt the driver is the caller's call (`needs_notification`).
    pub fn process<B: NetBackend + ?Sized>(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        backend: &B,
    ) -> TxOutcome {
        let event_idx = queue.event_idx_enabled();
        let mut outcome = TxOutcome::default();
        let mut empty_rounds = 0;
        loop {
            if event_idx
                && let Err(e) = queue.disable_notification(mem)
                && let Some(n) = self.log.ring.tick()
            {
                warn!("virtio-net: TX: cannot disable notifications: {e} ({n} ring errors so far)");
            }
            let mut popped = 0usize;
            while let Some(chain) = pop_chain(queue, mem) {
                popped += 1;
                let head = chain.head_index();
                match self.send_chain(mem, chain, backend) {
                    Ok(len) => {
                        outcome.frames += 1;
                        outcome.bytes += len as u64;
                    }
                    Err(e) => {
                        if matches!(e, TxError::Truncated(_)) {
                            outcome.needs_reset = true;
                        }
                        outcome.dropped += 1;
                        if let Some(n) = self.log.tx_dropped.tick() {
                            warn!(
                                "virtio-net: TX: dropping chain {head}: {e} ({n} dropped so far)"
                            );
                        }
                    }
                }
                if let Err(e) = add_used(queue, mem, head, 0) {
                    if let Some(n) = self.log.ring.tick() {
                        warn!(
                            "virtio-net: TX: cannot return descriptor {head}: {e} \
                             ({n} ring errors so far)"
                        );
                    }
                    outcome.needs_reset = true;
                    continue;
                }
                outcome.completed += 1;
            }
            if avail_index_invalid(queue, mem) {
                if let Some(n) = self.log.ring.tick() {
                    warn!(
                        "virtio-net: TX: available index more than a queue size ahead \
                         ({n} ring errors so far)"
                    );
                }
                outcome.needs_reset = true;
                break;
            }
            if !event_idx {
                break;
            }
            empty_rounds = if popped == 0 { empty_rounds + 1 } else { 0 };
            match queue.enable_notification(mem) {
                Ok(true) if empty_rounds < 2 => continue,
                Ok(true) => {
                    if let Some(n) = self.log.ring.tick() {
                        warn!(
                            "virtio-net: TX: available ring index is invalid ({n} ring errors so far)"
                        );
                    }
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    if let Some(n) = self.log.ring.tick() {
                        warn!(
                            "virtio-net: TX: cannot enable notifications: {e} ({n} ring errors so far)"
                        );
                    }
                    break;
                }
            }
        }
        outcome
    }
}
