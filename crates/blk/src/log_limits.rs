//! The limits on the log lines a driver can make a block device print.

use vmkit_virtio::LogLimiter;

/// One [`LogLimiter`] per kind of event a driver can repeat at will, so a
/// flood of one kind does not hide the first occurrences of another.
///
/// A [`Block`](crate::Block) keeps one for its whole life and shares it
/// with the [`RequestProcessor`](crate::RequestProcessor) and
/// [`BlockHandler`](crate::BlockHandler) of every activation: resetting the
/// device does not start the counts over.
#[derive(Debug, Default)]
pub(crate) struct BlockLogLimits {
    /// Chains that cannot be answered (loops, chains cut short, no status
    /// byte) and broken rings (an available index too far ahead, used
    /// entries or event indexes that cannot be written or read).
    pub(crate) ring: LogLimiter,
    /// Requests answered with an error status for the driver's fault
    /// (bad header, buffers, sectors, unsupported type, ...).
    pub(crate) request: LogLimiter,
    /// Requests the disk failed (VIRTIO_BLK_S_IOERR from the backend).
    pub(crate) disk: LogLimiter,
    /// Driver writes to the read-only configuration space.
    pub(crate) config: LogLimiter,
    /// Host-side failures met at the driver's pace: interrupting the
    /// driver, signalling DEVICE_NEEDS_RESET.
    pub(crate) host: LogLimiter,
}
