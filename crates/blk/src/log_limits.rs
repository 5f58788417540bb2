//! The limits on the log lines a driver can make a block device print.

use vmkit_virtio::LogLimiter;

/// One [`LogLimiter`] per kind of event a driver can repeat at will, so a
/// flood of one kind does not hide the first occurrences of another.
///
/// A [`Block`](crate::Block) keeps one for its whole life
/// ([`Block::log_limits`](crate::Block::log_limits)) and shares it with the
/// [`RequestProcessor`](crate::RequestProcessor) and
/// [`BlockHandler`](crate::BlockHandler) of every activation: resetting the
/// device does not start the counts over. A transport that runs the queue
/// itself (vhost-user) gives them to its processor
/// ([`RequestProcessor::with_log_limits`](crate::RequestProcessor::with_log_limits))
/// and logs its own lines about the queue through the same limiters.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use vmkit_blk::{BlockLogLimits, BlockConfig, DiskId, RequestProcessor, QUEUE_SIZE};
/// use vmkit_disk::DiskImage;
/// # let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-blk-doc").unwrap();
/// # let path = dir.as_path().join("disk.img");
/// # std::fs::File::create(&path).unwrap().set_len(1 << 20).unwrap();
/// # let spec: vmkit_disk::DiskSpec = path.display().to_string().parse()?;
/// # let disk: Arc<dyn DiskImage> = vmkit_disk::open_disk(&spec)?.into();
///
/// let log = Arc::new(BlockLogLimits::default());
/// let config = BlockConfig::new(disk.as_ref(), QUEUE_SIZE);
/// let processor = RequestProcessor::new(disk, config, DiskId::from_index(0))
///     .with_log_limits(Arc::clone(&log));
/// assert!(Arc::ptr_eq(processor.log_limits(), &log));
/// if let Some(n) = log.ring.tick() {
///     log::warn!("virtio-blk: the ring is broken ({n} ring errors so far)");
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct BlockLogLimits {
    /// Chains that cannot be answered (loops, chains cut short, no status
    /// byte) and broken rings (an available index too far ahead, used
    /// entries or event indexes that cannot be written or read).
    pub ring: LogLimiter,
    /// Requests answered with an error status for the driver's fault
    /// (bad header, buffers, sectors, unsupported type, ...).
    pub request: LogLimiter,
    /// Requests the disk failed (VIRTIO_BLK_S_IOERR from the backend).
    pub disk: LogLimiter,
    /// Driver writes to the read-only configuration space.
    pub config: LogLimiter,
    /// Host-side failures met at the driver's pace: interrupting the
    /// driver, signalling DEVICE_NEEDS_RESET.
    pub host: LogLimiter,
}
