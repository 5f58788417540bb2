//! The queue handler a block device runs on its event loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use log::{error, warn};
use virtio_queue::{Queue, QueueT};
use vmkit_virtio::{GuestMemoryMmap, Interrupt, InterruptType, QueueHandler};

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
pub struct BlockHandler {
    mem: GuestMemoryMmap,
    queue: Queue,
    processor: RequestProcessor,
    interrupt: Arc<dyn Interrupt>,
    stats: Arc<BlockStats>,
}

impl std::fmt::Debug for BlockHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockHandler")
            .field("queue", &self.queue)
            .field("processor", &self.processor)
            .field("stats", &self.stats)
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
            mem,
            queue,
            processor,
            interrupt,
            stats,
        }
    }

    /// The queue, as the handler left it.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Processes every available request. Returns the number completed.
    pub fn process_queue(&mut self) -> usize {
        let event_idx = self.queue.event_idx_enabled();
        let mut completed = 0usize;
        let mut empty_rounds = 0;
        // Scratch storage shared by the requests of this batch.
        let mut buffers = RequestBuffers::new();
        loop {
            if event_idx {
                // No notifications while we drain; re-enabled below.
                if let Err(e) = self.queue.disable_notification(&self.mem) {
                    warn!("virtio-blk: cannot disable notifications: {e}");
                }
            }
            let mut popped = 0usize;
            while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
                popped += 1;
                let head = chain.head_index();
                let len = self.processor.process(&self.mem, chain, &mut buffers);
                if let Err(e) = self.queue.add_used(&self.mem, head, len) {
                    warn!("virtio-blk: cannot return descriptor {head} to the used ring: {e}");
                    continue;
                }
                completed += 1;
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
                    // can be popped: the driver broke the ring. Don't spin.
                    warn!("virtio-blk: available ring index is invalid");
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    warn!("virtio-blk: cannot enable notifications: {e}");
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
                Err(e) => error!("virtio-blk: cannot interrupt the driver: {e}"),
            },
            Ok(false) => {}
            Err(e) => warn!("virtio-blk: cannot read used_event: {e}"),
        }
        completed
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
