//! The limits on the log lines a driver can make a network device print.

use vmkit_virtio::LogLimiter;

/// One [`LogLimiter`] per kind of event a driver can repeat at will, so a
/// flood of one kind does not hide the first occurrences of another.
///
/// A [`Net`](crate::Net) keeps one for its whole life
/// ([`Net::log_limits`](crate::Net::log_limits)) and shares it with the
/// [`NetHandler`](crate::NetHandler) (and its [`Rx`](crate::rx::Rx) and
/// [`Tx`](crate::tx::Tx)) of every activation: resetting the device does not
/// start the counts over. An `Rx` or a `Tx` made on its own counts in
/// limits of its own until given the device's
/// ([`Rx::set_log_limits`](crate::rx::Rx::set_log_limits),
/// [`Tx::set_log_limits`](crate::tx::Tx::set_log_limits)), which is what
/// another transport running them (vhost-user) does, logging its own lines
/// about the queues through the same limiters.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use vmkit_net::NetLogLimits;
/// use vmkit_net::tx::Tx;
///
/// // One set of limits for the life of a device, whatever its resets.
/// let log = Arc::new(NetLogLimits::default());
/// for _reset in 0..3 {
///     let mut tx = Tx::new(0);
///     tx.set_log_limits(Arc::clone(&log));
///     // ... serve the TX queue until the next reset ...
/// }
/// if let Some(n) = log.ring.tick() {
///     log::warn!("virtio-net: TX: the ring is broken ({n} ring errors so far)");
/// }
/// assert_eq!(log.ring.count(), 1);
/// ```
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct NetLogLimits {
    /// TX chains dropped (malformed, offloads not negotiated, refused by
    /// the backend).
    pub tx_dropped: LogLimiter,
    /// Frames from the backend dropped (larger than the driver's buffers,
    /// malformed).
    pub rx_dropped: LogLimiter,
    /// RX chains returned unused (unusable as receive buffers).
    pub rx_bad_chains: LogLimiter,
    /// Broken rings, either queue: an available index too far ahead, used
    /// entries or event indexes that cannot be written or read.
    pub ring: LogLimiter,
    /// Driver writes to the read-only configuration space.
    pub config: LogLimiter,
    /// Host-side failures met at the driver's pace: interrupting the
    /// driver, signalling DEVICE_NEEDS_RESET, watching or reading the
    /// backend, clearing the tap's offloads on reset.
    pub host: LogLimiter,
}
