//! The vhost-user virtio-blk back end.

use std::io;
use std::path::Path;
use std::sync::Arc;

use log::{error, info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;
use vmkit_blk::{
    Block, BlockConfig, BlockLogLimits, DiskId, QUEUE_SIZE, RequestBuffers, RequestProcessor,
};
use vmkit_disk::DiskImage;
use vmkit_virtio::{
    GuestMemoryMmap, VirtioDevice, add_used, avail_index_invalid, pop_chain, rings_in_memory,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::log_limits::FeatureLogLimits;
use crate::{Error, Memory, Result};

/// The request queue's index.
const REQUEST_QUEUE: u16 = 0;

/// A virtio-blk back end over a [`DiskImage`], with one request queue.
///
/// The device model (features, configuration space, feature checks) is
/// [`vmkit_blk::Block`]'s and requests are executed by
/// [`vmkit_blk::RequestProcessor`], so a guest sees the same device as
/// with vmkit's own VMM. Offered on top: VHOST_USER_F_PROTOCOL_FEATURES,
/// with the CONFIG protocol feature so that the front end reads the
/// configuration space (capacity, limits) from here.
///
/// What the driver can repeat at will (bad requests, broken rings,
/// notifications of a queue that cannot be served, feature negotiations) is
/// logged through [`LogLimiter`](vmkit_virtio::LogLimiter)s kept for the
/// back end's whole life: the device model's
/// ([`Block::log_limits`]), shared with the request processor, and the
/// back end's own for feature negotiations. A vhost-user reset does not
/// start them over.
#[derive(Debug)]
pub struct VhostUserBlk {
    /// The device model; never activated (the queue runs here).
    block: Block,
    disk: Arc<dyn DiskImage>,
    processor: RequestProcessor,
    mem: Memory,
    /// Whether the front end's feature selection passed `Block`'s checks;
    /// the queue is not served otherwise.
    features_ok: bool,
    /// The device model's log limits, shared with `processor`.
    log: Arc<BlockLogLimits>,
    /// The back end's own.
    feature_log: FeatureLogLimits,
    /// Requests completed and front-end signals, logged when the back end
    /// goes.
    completed: u64,
    signals: u64,
}

impl VhostUserBlk {
    /// A back end over `disk` whose GET_ID returns `id`.
    pub fn new(disk: Arc<dyn DiskImage>, id: DiskId) -> Self {
        let block = Block::new(Arc::clone(&disk), id);
        let log = block.log_limits();
        let processor = RequestProcessor::new(Arc::clone(&disk), *block.config(), id)
            .with_log_limits(Arc::clone(&log));
        VhostUserBlk {
            block,
            disk,
            processor,
            mem: Memory::new(GuestMemoryMmap::new()),
            features_ok: false,
            log,
            feature_log: FeatureLogLimits::default(),
            completed: 0,
            signals: 0,
        }
    }

    /// The limits the back end advertises and enforces.
    pub fn config(&self) -> &BlockConfig {
        self.block.config()
    }

    /// The configuration space (`struct virtio_blk_config`) the front end
    /// reads.
    pub fn config_space(&self) -> Vec<u8> {
        self.config().to_bytes()
    }

    /// The guest memory the back end works on; the front end's regions once
    /// it has sent them.
    pub fn memory(&self) -> Memory {
        self.mem.clone()
    }

    /// Serves one front end on `socket` until it disconnects (see
    /// [`serve`](crate::serve)), then flushes the disk. The disk is closed
    /// when the last reference to it goes, which is on return unless the
    /// caller kept one.
    pub fn serve(self, socket: &Path) -> Result<()> {
        let disk = Arc::clone(&self.disk);
        let mem = self.memory();
        let served = crate::serve("vmkit-vhost-user-blk", socket, self, mem, &[]);
        let flushed = disk.flush().map_err(Error::Flush);
        served.and(flushed)
    }

    /// Executes every available request and returns the chains to the used
    /// ring, signalling the front end when the driver asked for it
    /// (VIRTIO_RING_F_EVENT_IDX's used_event, or every time without it).
    ///
    /// A queue that cannot be served (features refused, rings outside the
    /// front end's memory) or that the driver broke (an available index
    /// more than a queue size ahead, head indexes past the queue) is
    /// logged through the limiters and left alone until the next
    /// notification.
    fn process_queue(&mut self, vring: &VringRwLock) {
        if !self.features_ok {
            if let Some(n) = self.feature_log.refused.tick() {
                warn!(
                    "virtio-blk: queue notified before a valid feature selection; ignored \
                     ({n} feature errors so far)"
                );
            }
            return;
        }
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        // Not `Queue::is_valid`, which logs (unlimited) what it finds wrong.
        if !queue.ready() || !rings_in_memory(queue, mem) {
            if let Some(n) = self.log.ring.tick() {
                warn!(
                    "virtio-blk: the request queue is not valid (size or ring addresses) \
                     ({n} ring errors so far)"
                );
            }
            return;
        }
        let event_idx = queue.event_idx_enabled();
        let mut completed = 0u64;
        let mut empty_rounds = 0;
        let mut buffers = RequestBuffers::new();
        loop {
            if event_idx
                && let Err(e) = queue.disable_notification(mem)
                && let Some(n) = self.log.ring.tick()
            {
                warn!("virtio-blk: cannot disable notifications: {e} ({n} ring errors so far)");
            }
            let mut popped = 0usize;
            while let Some(chain) = pop_chain(queue, mem) {
                popped += 1;
                let head = chain.head_index();
                let len = self.processor.process(mem, chain, &mut buffers);
                if let Err(e) = add_used(queue, mem, head, len) {
                    if let Some(n) = self.log.ring.tick() {
                        warn!(
                            "virtio-blk: cannot return descriptor {head} to the used ring: {e} \
                             ({n} ring errors so far)"
                        );
                    }
                    continue;
                }
                completed += 1;
            }
            if avail_index_invalid(queue, mem) {
                if let Some(n) = self.log.ring.tick() {
                    warn!(
                        "virtio-blk: available index is more than {} entries ahead; ignored \
                         ({n} ring errors so far)",
                        queue.size()
                    );
                }
                break;
            }
            if !event_idx {
                break;
            }
            empty_rounds = if popped == 0 { empty_rounds + 1 } else { 0 };
            match queue.enable_notification(mem) {
                // Requests were added while notifications were off.
                Ok(true) if empty_rounds < 2 => continue,
                Ok(true) => {
                    // The available index says there is work but nothing
                    // can be popped: the driver broke the ring. Don't spin.
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
            return;
        }
        self.completed += completed;
        match state.needs_notification() {
            Ok(true) => match state.signal_used_queue() {
                Ok(()) => self.signals += 1,
                Err(e) => {
                    if let Some(n) = self.log.host.tick() {
                        error!(
                            "virtio-blk: cannot signal the front end: {e} ({n} host errors so far)"
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
    }
}

impl Drop for VhostUserBlk {
    fn drop(&mut self) {
        info!(
            "virtio-blk: {} requests completed, {} signals",
            self.completed, self.signals
        );
    }
}

impl VhostUserBackendMut for VhostUserBlk {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        1
    }

    fn max_queue_size(&self) -> usize {
        usize::from(QUEUE_SIZE)
    }

    fn features(&self) -> u64 {
        self.block.device_features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&mut self, features: u64) {
        let virtio = features & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        match self.block.ack_features(virtio) {
            Ok(()) => {
                self.features_ok = true;
                if let Some(n) = self.feature_log.accepted.tick() {
                    info!("virtio-blk: driver features {virtio:#x} ({n} negotiations so far)");
                }
            }
            Err(e) => {
                self.features_ok = false;
                if let Some(n) = self.feature_log.refused.tick() {
                    error!(
                        "virtio-blk: {e}; the queue will not be served ({n} feature errors so far)"
                    );
                }
            }
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
    }

    fn reset_device(&mut self) {
        self.features_ok = false;
        // Nothing runs on the Block itself; this clears its features.
        let _ = self.block.reset();
    }

    fn set_event_idx(&mut self, _enabled: bool) {
        // The queue knows (vhost-user-backend sets it on the vring).
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        crate::daemon::config_bytes(&self.block, offset, size)
    }

    fn set_config(&mut self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // The configuration space is read-only: logged and ignored, as the
        // in-VMM device does. (An error would end the connection.)
        self.block.write_config(u64::from(offset), buf);
        Ok(())
    }

    fn update_memory(&mut self, mem: Memory) -> io::Result<()> {
        self.mem = mem;
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        crate::daemon::exit_event("virtio-blk")
    }

    fn stop_vring(&mut self, _queue_index: u32) -> io::Result<()> {
        // Requests complete synchronously: nothing is in flight. Make what
        // completed durable while the front end stops the device.
        if let Err(e) = self.disk.flush()
            && let Some(n) = self.log.disk.tick()
        {
            error!("virtio-blk: flushing the disk failed: {e} ({n} disk errors so far)");
        }
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        // An error would end the event loop: problems are logged instead.
        if !evset.contains(EventSet::IN) {
            warn!("virtio-blk: unexpected events {evset:?} on source {device_event}");
            return Ok(());
        }
        match (device_event, vrings.get(usize::from(device_event))) {
            (REQUEST_QUEUE, Some(vring)) => self.process_queue(vring),
            _ => warn!("virtio-blk: event on unknown source {device_event}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    use vm_memory::GuestAddress;
    use vmkit_disk::MemDisk;
    use vmkit_virtio::test_utils::{capture_log, limited_lines, warnings};

    use super::*;

    const NOTIFICATIONS: u64 = 100_000;

    fn backend() -> (VhostUserBlk, VringRwLock) {
        let disk = Arc::new(MemDisk::new(1 << 20, false));
        let mut blk = VhostUserBlk::new(disk, DiskId::from_index(0));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let memory = Memory::new(mem);
        blk.update_memory(memory.clone()).unwrap();
        let vring = VringRwLock::new(memory, QUEUE_SIZE).unwrap();
        (blk, vring)
    }

    fn notify(blk: &mut VhostUserBlk, vring: &VringRwLock) {
        blk.handle_event(REQUEST_QUEUE, EventSet::IN, std::slice::from_ref(vring), 0)
            .unwrap();
    }

    #[test]
    fn a_flood_of_notifications_of_an_unserved_queue_logs_a_few_lines() {
        let (mut blk, vring) = backend();
        // Features refused (no VIRTIO_F_VERSION_1), then notifications.
        let ((), lines) = capture_log(|| {
            blk.acked_features(0);
            for _ in 0..NOTIFICATIONS {
                notify(&mut blk, &vring);
            }
        });
        let lines = warnings(&lines);
        assert_eq!(lines.len(), limited_lines(NOTIFICATIONS + 1), "{lines:#?}");
        assert!(lines.iter().all(|l| l.ends_with("feature errors so far)")));

        // Features accepted, rings outside memory: the first line of its
        // kind, and the flood of it limited the same way, renegotiations
        // and all.
        vring
            .set_queue_info(0x10_0000, 0x10_1000, 0x10_2000)
            .unwrap();
        vring.set_queue_ready(true);
        let ((), lines) = capture_log(|| {
            for i in 0..NOTIFICATIONS {
                if i % 1000 == 0 {
                    blk.acked_features(1 << VIRTIO_F_VERSION_1);
                }
                notify(&mut blk, &vring);
            }
        });
        let lines = warnings(&lines);
        assert_eq!(lines.len(), limited_lines(NOTIFICATIONS), "{lines:#?}");
        assert_eq!(
            lines[0],
            "virtio-blk: the request queue is not valid (size or ring addresses) \
             (1 ring errors so far)"
        );
        assert!(lines.iter().all(|l| l.ends_with("ring errors so far)")));
    }
}
