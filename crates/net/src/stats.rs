//! Counters of a virtio-net device.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::rx::RxOutcome;
use crate::tx::TxOutcome;

/// Counters of a network device, shared with whoever watches it
/// (benchmarks, metrics). They survive resets.
///
/// Packets per notification is `tx_packets / tx_notifications` (and the
/// same for RX buffers); packets per interrupt is
/// `(rx_packets + tx_packets) / interrupts`.
#[derive(Debug, Default)]
pub struct NetStats {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
    tx_notifications: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    rx_dropped: AtomicU64,
    rx_bad_chains: AtomicU64,
    rx_copied: AtomicU64,
    rx_notifications: AtomicU64,
    rx_backend_wakeups: AtomicU64,
    rx_paused: AtomicU64,
    interrupts: AtomicU64,
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn add(c: &AtomicU64, n: u64) {
    if n != 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

impl NetStats {
    /// Frames sent to the tap.
    pub fn tx_packets(&self) -> u64 {
        get(&self.tx_packets)
    }

    /// Their bytes (virtio-net headers not counted).
    pub fn tx_bytes(&self) -> u64 {
        get(&self.tx_bytes)
    }

    /// TX chains dropped: malformed, offloads not negotiated, or refused by
    /// the tap.
    pub fn tx_dropped(&self) -> u64 {
        get(&self.tx_dropped)
    }

    /// Times the TX queue was processed after a driver notification.
    pub fn tx_notifications(&self) -> u64 {
        get(&self.tx_notifications)
    }

    /// Frames delivered to the driver.
    pub fn rx_packets(&self) -> u64 {
        get(&self.rx_packets)
    }

    /// Their bytes (virtio-net headers not counted).
    pub fn rx_bytes(&self) -> u64 {
        get(&self.rx_bytes)
    }

    /// Frames from the tap dropped because they did not fit the driver's
    /// buffers.
    pub fn rx_dropped(&self) -> u64 {
        get(&self.rx_dropped)
    }

    /// RX chains the driver posted that were unusable (returned with used
    /// length 0).
    pub fn rx_bad_chains(&self) -> u64 {
        get(&self.rx_bad_chains)
    }

    /// Frames that went through the device's one-frame host buffer (with
    /// MRG_RXBUF, when the driver was short of buffers) instead of straight
    /// into guest memory. Included in `rx_packets`.
    pub fn rx_copied(&self) -> u64 {
        get(&self.rx_copied)
    }

    /// Times the RX queue was processed after a driver notification (new
    /// buffers).
    pub fn rx_notifications(&self) -> u64 {
        get(&self.rx_notifications)
    }

    /// Times the device woke up because the tap had frames.
    pub fn rx_backend_wakeups(&self) -> u64 {
        get(&self.rx_backend_wakeups)
    }

    /// Times the device stopped reading the tap for want of driver
    /// buffers.
    pub fn rx_paused(&self) -> u64 {
        get(&self.rx_paused)
    }

    /// Used-ring interrupts raised (both queues).
    pub fn interrupts(&self) -> u64 {
        get(&self.interrupts)
    }

    pub(crate) fn add_tx(&self, out: &TxOutcome) {
        add(&self.tx_packets, out.frames);
        add(&self.tx_bytes, out.bytes);
        add(&self.tx_dropped, out.dropped);
    }

    pub(crate) fn add_rx(&self, out: &RxOutcome) {
        add(&self.rx_packets, out.frames);
        add(&self.rx_bytes, out.bytes);
        add(&self.rx_dropped, out.dropped);
        add(&self.rx_bad_chains, out.bad_chains);
        add(&self.rx_copied, out.copied);
    }

    pub(crate) fn tx_notified(&self) {
        add(&self.tx_notifications, 1);
    }

    pub(crate) fn rx_notified(&self) {
        add(&self.rx_notifications, 1);
    }

    pub(crate) fn rx_woken(&self) {
        add(&self.rx_backend_wakeups, 1);
    }

    pub(crate) fn rx_pause(&self) {
        add(&self.rx_paused, 1);
    }

    pub(crate) fn interrupted(&self) {
        add(&self.interrupts, 1);
    }
}

impl std::fmt::Display for NetStats {
    /// One line: packets, bytes and drops each way, and what they cost in
    /// queue notifications and interrupts.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tx {} packets {} bytes {} dropped {} notifications; \
             rx {} packets {} bytes {} dropped {} notifications; {} interrupts",
            self.tx_packets(),
            self.tx_bytes(),
            self.tx_dropped(),
            self.tx_notifications(),
            self.rx_packets(),
            self.rx_bytes(),
            self.rx_dropped(),
            self.rx_notifications(),
            get(&self.interrupts),
        )
    }
}
