//! The queue handler a block device runs on its event loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use log::{error, warn};
use virtio_queue::{Queue, QueueT};
use vmkit_virtio::{
    GuestMemoryMmap, Interrupt, InterruptType, QueueHandler, add_used, avail_index_invalid,
    pop_chain,
};

use crate::log_limits::BlockLogLimits;
use crate::{RequestBuffers, RequestProcessor};

/// Counters of a block device, shared with whoever watches it (benchmarks,
/// metrics). They survive resets.
#[derive(Debug, Default)]
pub struct BlockStats {
    requests_completed: AtomicU64,
    interrupts_sent: AtomicU64,
    queue_notifications: AtomicU64,
}

impl BlockStats {
    /// Descriptor chains returned to the driver (successful or not).
    pub fn requests_completed(&self) -> u64 {
        self.requests_completed.load(Ordering::Relaxed)
    }

    /// Used-ring interrupts raised.
    pub fn interrupts_sent(&self) -> u64 {
        self.interrupts_sent.load(Ordering::Relaxed)
    }

    /// Times the queue was processed after a driver notification.
    pub fn queue_notifications(&self) -> u64 {
        self.queue_notifications.load(Ordering::Relaxed)
    }
}

/// Drains the request queue of a block device: pops chains, executes them
/// with a [`RequestProcessor`], returns them to the used ring and
/// interrupts the driver when the queue says it wants to be interrupted
/// (which, with VIRTIO_RING_F_EVENT_IDX, suppresses most interrupts).
///
/// What the driver breaks is logged through the processor's
/// [`LogLimiter`](vmkit_virtio::LogLimiter)s: at most ten lines per kind,
/// then one per power of two.
pub struct BlockHandler {
    mem: GuestMemoryMmap,
    queue: Queue,
    processor: RequestProcessor,
    interrupt: Arc<dyn Interrupt>,
    stats: Arc<BlockStats>,
    /// The processor's log limits.
    log: Arc<BlockLogLimits>,
    /// The driver broke the queue; the device asked for a reset.
    needs_reset: bool,
    /// The available index is invalid: nothing more is processed until
    /// the device is reset (which builds a new handler).
    stopped: bool,
}

impl std::fmt::Debug for BlockHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockHandler")
            .field("queue", &self.queue)
            .field("processor", &self.processor)
            .field("stats", &self.stats)
            .field("needs_reset", &self.needs_reset)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl BlockHandler {
    /// A handler for `queue` in `mem`.
    pub fn new(
        mem: GuestMemoryMmap,
        queue: Queue,
        processor: RequestProcessor,
        interrupt: Arc<dyn Interrupt>,
        stats: Arc<BlockStats>,
    ) -> Self {
        BlockHandler {
            log: Arc::clone(processor.log_limits()),
            mem,
            queue,
            processor,
            interrupt,
            stats,
            needs_reset: false,
            stopped: false,
        }
    }

    /// Whether the handler found the queue broken and asked the driver for
    /// a reset (DEVICE_NEEDS_RESET, through [`Interrupt::signal_needs_reset`]).
    pub fn needs_reset(&self) -> bool {
        self.needs_reset
    }

    /// Whether the handler stopped processing the queue (an invalid
    /// available index) until the device is reset.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    fn signal_needs_reset(&mut self) {
        signal_needs_reset(&mut self.needs_reset, self.interrupt.as_ref(), &self.log);
    }

    /// The queue, as the handler left it.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Processes every available request. Returns the number completed.
    ///
    /// A chain that cannot be answered ([`crate::ChainError`]: a loop, a
    /// chain cut short, no usable status byte) is returned with used length
    /// 0 unexecuted, and the device signals DEVICE_NEEDS_RESET; later
    /// chains are still served. An available index more than a queue size
    /// ahead (virtio 1.2 §2.7.13.3: the driver never makes more than the
    /// queue size available) also signals DEVICE_NEEDS_RESET, and then the
    /// queue is not touched again until the device is reset: further
    /// notifications cost one check each.
    pub fn process_queue(&mut self) -> usize {
        if self.stopped {
            return 0;
        }
        let event_idx = self.queue.event_idx_enabled();
        let mut completed = 0usize;
        let mut empty_rounds = 0;
        // Scratch storage shared by the requests of this batch.
        let mut buffers = RequestBuffers::new();
        loop {
            if event_idx {
                // No notifications while we drain; re-enabled below.
                if let Err(e) = self.queue.disable_notification(&self.mem)
                    && let Some(n) = self.log.ring.tick()
                {
                    warn!("virtio-blk: cannot disable notifications: {e} ({n} ring errors so far)");
                }
            }
            let mut popped = 0usize;
            while let Some(chain) = pop_chain(&mut self.queue, &self.mem) {
                popped += 1;
                let head = chain.head_index();
                let len = match self.processor.process_chain(&self.mem, chain, &mut buffers) {
                    Ok(len) => len,
                    Err(e) => {
                        if let Some(n) = self.log.ring.tick() {
                            warn!(
                                "virtio-blk: chain {head}: {e}; returned unanswered, \
                                 the device needs a reset ({n} ring errors so far)"
                            );
                        }
                        signal_needs_reset(
                            &mut self.needs_reset,
                            self.interrupt.as_ref(),
                            &self.log,
                        );
                        0
                    }
                };
                if let Err(e) = add_used(&mut self.queue, &self.mem, head, len) {
                    if let Some(n) = self.log.ring.tick() {
                        warn!(
                            "virtio-blk: cannot return descriptor {head} to the used ring: {e} \
                             ({n} ring errors so far)"
                        );
                    }
                    signal_needs_reset(&mut self.needs_reset, self.interrupt.as_ref(), &self.log);
                    continue;
                }
                completed += 1;
            }
            if avail_index_invalid(&self.queue, &self.mem) {
                if let Some(n) = self.log.ring.tick() {
                    warn!(
                        "virtio-blk: available index is more than {} entries ahead; \
                         the device needs a reset and stops processing ({n} ring errors so far)",
                        self.queue.size()
                    );
                }
                self.signal_needs_reset();
                self.stopped = true;
                break;
            }
            if !event_idx {
                break;
            }
            empty_rounds = if popped == 0 { empty_rounds + 1 } else { 0 };
            match self.queue.enable_notification(&self.mem) {
                // The driver added requests while notifications were off
                // (or just before we re-enabled them): go again.
                Ok(true) if empty_rounds < 2 => continue,
                Ok(true) => {
                    // The available index says there is work but nothing
                    // can be popped. Don't spin.
                    if let Some(n) = self.log.ring.tick() {
                        warn!(
                            "virtio-blk: available ring index is invalid ({n} ring errors so far)"
                        );
                    }
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    if let Some(n) = self.log.ring.tick() {
                        warn!(
                            "virtio-blk: cannot enable notifications: {e} ({n} ring errors so far)"
                        );
                    }
                    break;
                }
            }
        }
        if completed == 0 {
            return 0;
        }
        self.stats
            .requests_completed
            .fetch_add(completed as u64, Ordering::Relaxed);
        match self.queue.needs_notification(&self.mem) {
            Ok(true) => match self.interrupt.trigger(InterruptType::UsedRing) {
                Ok(()) => {
                    self.stats.interrupts_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    if let Some(n) = self.log.host.tick() {
                        error!(
                            "virtio-blk: cannot interrupt the driver: {e} ({n} host errors so far)"
                        );
                    }
                }
            },
            Ok(false) => {}
            Err(e) => {
                if let Some(n) = self.log.ring.tick() {
                    warn!("virtio-blk: cannot read used_event: {e} ({n} ring errors so far)");
                }
            }
        }
        completed
    }
}

/// Sets DEVICE_NEEDS_RESET once: `sent` records that it was.
fn signal_needs_reset(sent: &mut bool, interrupt: &dyn Interrupt, log: &BlockLogLimits) {
    if *sent {
        return;
    }
    *sent = true;
    if let Err(e) = interrupt.signal_needs_reset()
        && let Some(n) = log.host.tick()
    {
        error!("virtio-blk: cannot signal DEVICE_NEEDS_RESET: {e} ({n} host errors so far)");
    }
}

impl QueueHandler for BlockHandler {
    fn process_queue(&mut self, index: u16) {
        if index != 0 {
            warn!("virtio-blk: notification for unknown queue {index}");
            return;
        }
        self.stats
            .queue_notifications
            .fetch_add(1, Ordering::Relaxed);
        BlockHandler::process_queue(self);
    }
}
