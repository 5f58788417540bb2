//! The virtio-net device model (virtio 1.2, 5.1): features, configuration
//! space, and activation onto a [`QueueWorker`].

use std::sync::Arc;

use libc::c_uint;
use log::{error, warn};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vmkit_virtio::{
    ActivatedQueue, Error as VirtioError, GuestMemoryMmap, Interrupt, QueueWorker, VirtioDevice,
};
use vmm_sys_util::eventfd::EventFd;

use crate::handler::{BACKEND_TOKEN, RX_QUEUE, TX_QUEUE};
use crate::log_limits::NetLogLimits;
use crate::{Error, MacAddr, NetHandler, NetStats, Result, Tap, VNET_HDR_LEN};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;

const fn bit(b: u32) -> u64 {
    1u64 << b
}

/// The features a [`Net`] offers: VERSION_1, RING_EVENT_IDX,
/// RING_INDIRECT_DESC, MAC, STATUS, MRG_RXBUF, CSUM, GUEST_CSUM,
/// HOST_TSO4/TSO6/UFO and GUEST_TSO4/TSO6/UFO.
pub const fn device_features() -> u64 {
    bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_RING_F_EVENT_IDX)
        | bit(VIRTIO_RING_F_INDIRECT_DESC)
        | bit(VIRTIO_NET_F_MAC)
        | bit(VIRTIO_NET_F_STATUS)
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_HOST_TSO4)
        | bit(VIRTIO_NET_F_HOST_TSO6)
        | bit(VIRTIO_NET_F_HOST_UFO)
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_TSO6)
        | bit(VIRTIO_NET_F_GUEST_UFO)
}

/// The tap offloads (TUNSETOFFLOAD flags) matching the VIRTIO_NET_F_GUEST_*
/// features a driver accepted: what the host may hand it unsegmented or
/// without checksums.
pub fn tap_offload_flags(features: u64) -> c_uint {
    let has = |b| features & bit(b) != 0;
    let mut flags = 0;
    // The kernel ignores segmentation offloads without checksum offload,
    // and the spec ties them the same way.
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        flags |= libc::TUN_F_CSUM;
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            flags |= libc::TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            flags |= libc::TUN_F_TSO6;
        }
        if has(VIRTIO_NET_F_GUEST_UFO) {
            flags |= libc::TUN_F_UFO;
        }
    }
    flags
}

/// Checks the dependencies between features (virtio 1.2, 5.1.3.1).
fn check_dependencies(features: u64) -> std::result::Result<(), String> {
    let has = |b| features & bit(b) != 0;
    let needs = [
        (
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_CSUM,
            "GUEST_TSO4",
            "GUEST_CSUM",
        ),
        (
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_CSUM,
            "GUEST_TSO6",
            "GUEST_CSUM",
        ),
        (
            VIRTIO_NET_F_GUEST_UFO,
            VIRTIO_NET_F_GUEST_CSUM,
            "GUEST_UFO",
            "GUEST_CSUM",
        ),
        (
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_CSUM,
            "HOST_TSO4",
            "CSUM",
        ),
        (
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_CSUM,
            "HOST_TSO6",
            "CSUM",
        ),
        (VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_CSUM, "HOST_UFO", "CSUM"),
    ];
    for (feature, needed, name, needed_name) in needs {
        if has(feature) && !has(needed) {
            return Err(format!(
                "VIRTIO_NET_F_{name} needs VIRTIO_NET_F_{needed_name}"
            ));
        }
    }
    Ok(())
}

/// A virtio-net device over a [`Tap`], with one RX queue (0) and one TX
/// queue (1).
///
/// The configuration space holds the MAC address and the link status
/// (always up). The device runs its queues on its own thread (a
/// [`QueueWorker`]) between [`VirtioDevice::activate`] and
/// [`VirtioDevice::reset`]; the tap's offloads follow the features the
/// driver accepts.
#[derive(Debug)]
pub struct Net {
    tap: Arc<Tap>,
    mac: MacAddr,
    config_space: [u8; 8],
    acked_features: u64,
    stats: Arc<NetStats>,
    worker: Option<QueueWorker<NetHandler<Arc<Tap>>>>,
    /// Notification eventfds of a failed activation, kept for the
    /// transport.
    idle_notify: Vec<EventFd>,
    /// The limits on what the driver can make the device log, shared with
    /// every activation's handler and kept across resets.
    log: Arc<NetLogLimits>,
}

impl Net {
    /// A device over `tap` whose driver sees the MAC address `mac` (unicast;
    /// [`MacAddr::random_local`] makes one up). Sets the tap's header length
    /// and clears its offloads until a driver accepts some.
    pub fn new(tap: Tap, mac: MacAddr) -> Result<Self> {
        if mac.is_multicast() {
            return Err(Error::MulticastMac(mac));
        }
        tap.set_vnet_hdr_len(VNET_HDR_LEN)?;
        tap.set_offload(0)?;
        let mut config_space = [0u8; 8];
        config_space[..6].copy_from_slice(&mac.octets());
        config_space[6..].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        Ok(Net {
            tap: Arc::new(tap),
            mac,
            config_space,
            acked_features: 0,
            stats: Arc::new(NetStats::default()),
            worker: None,
            idle_notify: Vec::new(),
            log: Arc::default(),
        })
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<NetStats> {
        Arc::clone(&self.stats)
    }

    /// The tap.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// The MAC address the driver sees.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether the device is processing its queues.
    pub fn is_active(&self) -> bool {
        self.worker.is_some()
    }

    /// The limits on what the driver can make the device log, kept for the
    /// device's life; a transport running the device's [`Rx`](crate::rx::Rx)
    /// and [`Tx`](crate::tx::Tx) itself (vhost-user) counts in them too.
    pub fn log_limits(&self) -> Arc<NetLogLimits> {
        Arc::clone(&self.log)
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        device_features()
    }

    fn ack_features(&mut self, features: u64) -> vmkit_virtio::Result<()> {
        let unknown = features & !device_features();
        if unknown != 0 {
            return Err(VirtioError::Features(format!(
                "virtio-net does not offer features {unknown:#x}"
            )));
        }
        if features & bit(VIRTIO_F_VERSION_1) == 0 {
            return Err(VirtioError::Features(
                "virtio-net needs VIRTIO_F_VERSION_1 (no legacy interface)".into(),
            ));
        }
        check_dependencies(features).map_err(VirtioError::Features)?;
        self.tap
            .set_offload(tap_offload_flags(features))
            .map_err(|e| VirtioError::Features(e.to_string()))?;
        self.acked_features = features;
        Ok(())
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        vmkit_virtio::read_config_space(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if let Some(n) = self.log.config.tick() {
            warn!(
                "virtio-net: ignoring driver write of {} bytes at config offset {offset} \
                 (the configuration space is read-only; {n} such writes so far)",
                data.len()
            );
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> vmkit_virtio::Result<()> {
        if self.worker.is_some() {
            self.idle_notify
                .extend(queues.into_iter().map(|q| q.notify));
            return Err(VirtioError::Activate("virtio-net is already active".into()));
        }
        let mut rx = None;
        let mut tx = None;
        let mut extra = Vec::new();
        for q in queues {
            match q.index {
                RX_QUEUE if rx.is_none() => rx = Some(q),
                TX_QUEUE if tx.is_none() => tx = Some(q),
                _ => extra.push(q),
            }
        }
        let (rx, tx) = match (rx, tx) {
            (Some(rx), Some(tx)) if extra.is_empty() => (rx, tx),
            (rx, tx) => {
                let all: Vec<ActivatedQueue> = rx.into_iter().chain(tx).chain(extra).collect();
                let n = all.len();
                self.idle_notify.extend(all.into_iter().map(|q| q.notify));
                return Err(VirtioError::Activate(format!(
                    "virtio-net needs queues 0 (RX) and 1 (TX) only, got {n} queues"
                )));
            }
        };
        let invalid = [("RX", &rx), ("TX", &tx)]
            .into_iter()
            // Not `Queue::is_valid`, which logs (unlimited) what it finds
            // wrong.
            .find(|(_, q)| !q.queue.ready() || !vmkit_virtio::rings_in_memory(&q.queue, &mem))
            .map(|(name, _)| name);
        if let Some(name) = invalid {
            self.idle_notify.push(rx.notify);
            self.idle_notify.push(tx.notify);
            return Err(VirtioError::Activate(format!(
                "virtio-net {name} queue is not valid (size or ring addresses)"
            )));
        }
        let event_idx = self.acked_features & bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        let ActivatedQueue {
            queue: mut rx_queue,
            notify: rx_notify,
            ..
        } = rx;
        let ActivatedQueue {
            queue: mut tx_queue,
            notify: tx_notify,
            ..
        } = tx;
        rx_queue.set_event_idx(event_idx);
        tx_queue.set_event_idx(event_idx);
        let handler = match NetHandler::new(
            mem,
            rx_queue,
            tx_queue,
            Arc::clone(&self.tap),
            self.acked_features,
            interrupt,
            Arc::clone(&self.stats),
        ) {
            Ok(mut h) => {
                h.set_log_limits(Arc::clone(&self.log));
                h
            }
            Err(e) => {
                self.idle_notify.push(rx_notify);
                self.idle_notify.push(tx_notify);
                return Err(VirtioError::Io(e));
            }
        };
        let ready = handler.ready_fd();
        // On a spawn error the handler and the eventfds are gone; the
        // transport gets fewer eventfds back on reset and cannot
        // re-activate, which is what an error here means anyway.
        let worker = QueueWorker::spawn(
            format!("vmkit-net-{}", self.tap.name()),
            handler,
            vec![(RX_QUEUE, rx_notify), (TX_QUEUE, tx_notify)],
            vec![(ready, BACKEND_TOKEN)],
        )
        .map_err(VirtioError::Io)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) -> Vec<EventFd> {
        self.acked_features = 0;
        let mut fds = std::mem::take(&mut self.idle_notify);
        if let Some(worker) = self.worker.take() {
            match worker.stop() {
                Ok((_handler, queues)) => fds.extend(queues.into_iter().map(|(_, fd)| fd)),
                Err(e) => error!("virtio-net: stopping the queue worker failed: {e}"),
            }
        }
        if let Err(e) = self.tap.set_offload(0)
            && let Some(n) = self.log.host.tick()
        {
            warn!("virtio-net: {e} ({n} host errors so far)");
        }
        fds
    }
}
