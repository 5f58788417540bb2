//! The limits on the log lines a driver can make a network device print.

use vmkit_virtio::LogLimiter;

/// One [`LogLimiter`] per kind of event a driver can repeat at will, so a
/// flood of one kind does not hide the first occurrences of another.
///
/// A [`Net`](crate::Net) keeps one for its whole life and shares it with
/// the [`NetHandler`](crate::NetHandler) (and its [`Rx`](crate::rx::Rx) and
/// [`Tx`](crate::tx::Tx)) of every activation: resetting the device does not
/// start the counts over. An `Rx` or a `Tx` made on its own counts in
/// limits of its own.
#[derive(Debug, Default)]
pub(crate) struct NetLogLimits {
    /// TX chains dropped (malformed, offloads not negotiated, refused by
    /// the backend).
    pub(crate) tx_dropped: LogLimiter,
    /// Frames from the backend dropped (larger than the driver's buffers,
    /// malformed).
    pub(crate) rx_dropped: LogLimiter,
    /// RX chains returned unused (unusable as receive buffers).
    pub(crate) rx_bad_chains: LogLimiter,
    /// Broken rings, either queue: an available index too far ahead, used
    /// entries or event indexes that cannot be written or read.
    pub(crate) ring: LogLimiter,
    /// Driver writes to the read-only configuration space.
    pub(crate) config: LogLimiter,
    /// Host-side failures met at the driver's pace: interrupting the
    /// driver, signalling DEVICE_NEEDS_RESET, watching or reading the
    /// backend, clearing the tap's offloads on reset.
    pub(crate) host: LogLimiter,
}
