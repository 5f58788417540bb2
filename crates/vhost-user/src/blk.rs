//! The vhost-user virtio-blk back end.

use std::io;
use std::path::Path;
use std::sync::Arc;

use log::{error, info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;
use vmkit_blk::{Block, BlockConfig, DiskId, QUEUE_SIZE, RequestBuffers, RequestProcessor};
use vmkit_disk::DiskImage;
use vmkit_virtio::{GuestMemoryMmap, VirtioDevice};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

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
    /// Whether the invalid-queue warning was logged since the last
    /// feature negotiation.
    warned_invalid: bool,
    /// Requests completed and front-end signals, logged when the back end
    /// goes.
    completed: u64,
    signals: u64,
}

impl VhostUserBlk {
    /// A back end over `disk` whose GET_ID returns `id`.
    pub fn new(disk: Arc<dyn DiskImage>, id: DiskId) -> Self {
        let block = Block::new(Arc::clone(&disk), id);
        let processor = RequestProcessor::new(Arc::clone(&disk), *block.config(), id);
        VhostUserBlk {
            block,
            disk,
            processor,
            mem: Memory::new(GuestMemoryMmap::new()),
            features_ok: false,
            warned_invalid: false,
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
    fn process_queue(&mut self, vring: &VringRwLock) {
        if !self.features_ok {
            warn!("virtio-blk: queue notified before a valid feature selection; ignored");
            return;
        }
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        if !queue.is_valid(mem) {
            if !self.warned_invalid {
                self.warned_invalid = true;
                warn!("virtio-blk: the request queue is not valid (size or ring addresses)");
            }
            return;
        }
        let event_idx = queue.event_idx_enabled();
        let mut completed = 0u64;
        let mut empty_rounds = 0;
        let mut buffers = RequestBuffers::new();
        loop {
            if event_idx && let Err(e) = queue.disable_notification(mem) {
                warn!("virtio-blk: cannot disable notifications: {e}");
            }
            let mut popped = 0usize;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                popped += 1;
                let head = chain.head_index();
                let len = self.processor.process(mem, chain, &mut buffers);
                if let Err(e) = queue.add_used(mem, head, len) {
                    warn!("virtio-blk: cannot return descriptor {head} to the used ring: {e}");
                    continue;
                }
                completed += 1;
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
            return;
        }
        self.completed += completed;
        match state.needs_notification() {
            Ok(true) => match state.signal_used_queue() {
                Ok(()) => self.signals += 1,
                Err(e) => error!("virtio-blk: cannot signal the front end: {e}"),
            },
            Ok(false) => {}
            Err(e) => warn!("virtio-blk: cannot read used_event: {e}"),
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
        self.warned_invalid = false;
        match self.block.ack_features(virtio) {
            Ok(()) => {
                self.features_ok = true;
                info!("virtio-blk: driver features {virtio:#x}");
            }
            Err(e) => {
                self.features_ok = false;
                error!("virtio-blk: {e}; the queue will not be served");
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
        if let Err(e) = self.disk.flush() {
            error!("virtio-blk: flushing the disk failed: {e}");
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
