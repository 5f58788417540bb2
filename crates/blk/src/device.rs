//! The virtio-blk device model: features, configuration space, and
//! activation onto a [`QueueWorker`].

use std::sync::Arc;

use log::{error, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vmkit_disk::DiskImage;
use vmkit_virtio::{
    ActivatedQueue, Error as VirtioError, GuestMemoryMmap, Interrupt, QueueWorker, VirtioDevice,
};
use vmm_sys_util::eventfd::EventFd;

use crate::log_limits::BlockLogLimits;
use crate::{BlockConfig, BlockHandler, BlockStats, DiskId, QUEUE_SIZE, RequestProcessor};

/// A virtio-blk device over a [`DiskImage`], with one request queue.
///
/// The device runs its queue on its own thread (a [`QueueWorker`]) between
/// [`VirtioDevice::activate`] and [`VirtioDevice::reset`].
#[derive(Debug)]
pub struct Block {
    disk: Arc<dyn DiskImage>,
    id: DiskId,
    config: BlockConfig,
    config_space: Vec<u8>,
    avail_features: u64,
    acked_features: u64,
    stats: Arc<BlockStats>,
    worker: Option<QueueWorker<BlockHandler>>,
    /// Notification eventfds of a failed activation, kept for the
    /// transport.
    idle_notify: Vec<EventFd>,
    /// The limits on what the driver can make the device log, shared with
    /// every activation's processor and handler and kept across resets.
    log: Arc<BlockLogLimits>,
}

impl Block {
    /// A device over `disk` (a `Box<dyn DiskImage>` or an
    /// `Arc<dyn DiskImage>`) whose GET_ID returns `id`.
    pub fn new(disk: impl Into<Arc<dyn DiskImage>>, id: DiskId) -> Self {
        let disk = disk.into();
        let config = BlockConfig::new(disk.as_ref(), QUEUE_SIZE);
        let bit = |b: u32| 1u64 << b;
        let mut avail_features = bit(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_RING_F_EVENT_IDX)
            | bit(VIRTIO_RING_F_INDIRECT_DESC)
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH);
        if disk.is_read_only() {
            avail_features |= bit(VIRTIO_BLK_F_RO);
        } else {
            avail_features |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        Block {
            config_space: config.to_bytes(),
            disk,
            id,
            config,
            avail_features,
            acked_features: 0,
            stats: Arc::new(BlockStats::default()),
            worker: None,
            idle_notify: Vec::new(),
            log: Arc::default(),
        }
    }

    /// The limits on what the driver can make the device log, kept for the
    /// device's life; a transport running the queue itself (vhost-user)
    /// gives them to its [`RequestProcessor`] and counts in them too.
    pub fn log_limits(&self) -> Arc<BlockLogLimits> {
        Arc::clone(&self.log)
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<BlockStats> {
        Arc::clone(&self.stats)
    }

    /// The limits the device advertises and enforces.
    pub fn config(&self) -> &BlockConfig {
        &self.config
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether the device is processing its queue.
    pub fn is_active(&self) -> bool {
        self.worker.is_some()
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) -> vmkit_virtio::Result<()> {
        let unknown = features & !self.avail_features;
        if unknown != 0 {
            return Err(VirtioError::Features(format!(
                "virtio-blk does not offer features {unknown:#x}"
            )));
        }
        if features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(VirtioError::Features(
                "virtio-blk needs VIRTIO_F_VERSION_1 (no legacy interface)".into(),
            ));
        }
        self.acked_features = features;
        Ok(())
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        vmkit_virtio::read_config_space(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if let Some(n) = self.log.config.tick() {
            warn!(
                "virtio-blk: ignoring driver write of {} bytes at config offset {offset} \
                 (the configuration space is read-only; {n} such writes so far)",
                data.len()
            );
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        mut queues: Vec<ActivatedQueue>,
    ) -> vmkit_virtio::Result<()> {
        if self.worker.is_some() {
            return Err(VirtioError::Activate("virtio-blk is already active".into()));
        }
        if queues.len() != 1 || queues[0].index != 0 {
            let n = queues.len();
            self.idle_notify
                .extend(queues.into_iter().map(|q| q.notify));
            return Err(VirtioError::Activate(format!(
                "virtio-blk has one queue, got {n}"
            )));
        }
        let Some(ActivatedQueue {
            index,
            mut queue,
            notify,
        }) = queues.pop()
        else {
            unreachable!("checked above");
        };
        // Not `Queue::is_valid`, which logs (unlimited) what it finds wrong.
        if !queue.ready() || !vmkit_virtio::rings_in_memory(&queue, &mem) {
            self.idle_notify.push(notify);
            return Err(VirtioError::Activate(
                "virtio-blk request queue is not valid (size or ring addresses)".into(),
            ));
        }
        queue.set_event_idx(self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        let processor = RequestProcessor::new(Arc::clone(&self.disk), self.config, self.id)
            .with_log_limits(Arc::clone(&self.log));
        let handler = BlockHandler::new(mem, queue, processor, interrupt, Arc::clone(&self.stats));
        let worker = QueueWorker::spawn("vmkit-blk".into(), handler, vec![(index, notify)], vec![])
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
                Err(e) => error!("virtio-blk: stopping the queue worker failed: {e}"),
            }
        }
        fds
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::Queue;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmkit_disk::MemDisk;
    use vmkit_virtio::InterruptType;

    use super::*;

    fn bit(b: u32) -> u64 {
        1u64 << b
    }

    #[derive(Default)]
    struct CountingInterrupt(AtomicU64);

    impl Interrupt for CountingInterrupt {
        fn trigger(&self, _: InterruptType) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn block(read_only: bool) -> Block {
        let mut data = vec![0u8; 1 << 20];
        data[512..1024].fill(0x5a);
        Block::new(
            Box::new(MemDisk::with_contents(data, read_only)) as Box<dyn DiskImage>,
            DiskId::from_index(1),
        )
    }

    #[test]
    fn features_follow_writability() {
        let common = bit(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_RING_F_EVENT_IDX)
            | bit(VIRTIO_RING_F_INDIRECT_DESC)
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH);
        let rw = block(false);
        assert_eq!(
            rw.device_features(),
            common | bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES)
        );
        assert_eq!(block(true).device_features(), common | bit(VIRTIO_BLK_F_RO));
        assert_eq!(rw.device_type(), 2);
        assert_eq!(rw.queue_max_sizes(), &[256]);
    }

    #[test]
    fn ack_features_checks_the_selection() {
        let mut dev = block(true);
        assert!(
            dev.ack_features(bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_BLK_F_DISCARD))
                .is_err()
        );
        assert!(
            dev.ack_features(bit(VIRTIO_BLK_F_FLUSH)).is_err(),
            "legacy driver"
        );
        let features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX);
        dev.ack_features(features).unwrap();
        assert_eq!(dev.acked_features(), features);
    }

    #[test]
    fn config_space_reads_at_any_offset_and_ignores_writes() {
        let mut dev = block(false);
        let mut all = [0u8; 96];
        dev.read_config(0, &mut all);
        assert_eq!(u64::from_le_bytes(all[..8].try_into().unwrap()), 2048);
        // Unaligned, partial and past-the-end reads.
        let mut two = [0xffu8; 2];
        dev.read_config(1, &mut two);
        assert_eq!(two, [8, 0]);
        let mut seg_max = [0u8; 4];
        dev.read_config(12, &mut seg_max);
        assert_eq!(u32::from_le_bytes(seg_max), 254);
        let mut tail = [0xffu8; 8];
        dev.read_config(92, &mut tail);
        assert_eq!(tail, [0; 8]);
        dev.read_config(u64::MAX - 2, &mut tail);
        assert_eq!(tail, [0; 8]);

        dev.write_config(0, &[1, 2, 3, 4]);
        dev.write_config(32, &[1]);
        let mut after = [0u8; 96];
        dev.read_config(0, &mut after);
        assert_eq!(after, all);
    }

    #[test]
    fn activate_serves_the_queue_until_reset() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let mut dev = block(false);
        dev.ack_features(bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX))
            .unwrap();

        // A read of sector 1 (0x5a bytes).
        let (hdr, data, status) = (0x1_0000u64, 0x2_0000u64, 0x1_1000u64);
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        raw[8..].copy_from_slice(&1u64.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(hdr)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let next = VRING_DESC_F_NEXT as u16;
        let write = VRING_DESC_F_WRITE as u16;
        let descs: Vec<RawDescriptor> = vec![
            Descriptor::new(hdr, 16, next, 1).into(),
            Descriptor::new(data, 512, next | write, 2).into(),
            Descriptor::new(status, 1, write, 0).into(),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();

        let queue: Queue = vq.create_queue().unwrap();
        let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = Arc::new(CountingInterrupt::default());
        dev.activate(
            mem.clone(),
            irq.clone(),
            vec![ActivatedQueue {
                index: 0,
                queue,
                notify: notify.try_clone().unwrap(),
            }],
        )
        .unwrap();
        assert!(dev.is_active());
        notify.write(1).unwrap();

        let deadline = Instant::now() + Duration::from_secs(10);
        while vq.used().idx().load() == 0 {
            assert!(Instant::now() < deadline, "the device never answered");
            std::thread::sleep(Duration::from_millis(1));
        }
        let elem = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!((elem.id(), elem.len()), (0, 513));
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(status)).unwrap(),
            VIRTIO_BLK_S_OK as u8
        );
        let mut buf = [0u8; 512];
        mem.read_slice(&mut buf, GuestAddress(data)).unwrap();
        assert_eq!(buf, [0x5a; 512]);

        let fds = dev.reset();
        assert_eq!(fds.len(), 1);
        assert!(!dev.is_active());
        assert_eq!(dev.acked_features(), 0);
        let stats = dev.stats();
        assert_eq!(stats.requests_completed(), 1);
        assert_eq!(stats.queue_notifications(), 1);
        // used_event is 0 in the mock ring: the first completion interrupts.
        assert_eq!(stats.interrupts_sent(), 1);
        assert_eq!(irq.0.load(Ordering::SeqCst), 1);
        assert!(dev.reset().is_empty());
    }

    #[test]
    fn a_flood_of_config_writes_logs_a_few_lines() {
        let mut dev = block(false);
        let ((), lines) = vmkit_virtio::test_utils::capture_log(|| {
            for i in 0..100_000u64 {
                dev.write_config(i % 64, &[1, 2, 3, 4]);
            }
        });
        // 1..=10, then 16, 32, ..., 65536.
        assert_eq!(lines.len(), 23, "{lines:#?}");
        assert!(lines.iter().all(|l| l.level == log::Level::Warn));
        assert!(
            lines[22].message.ends_with("65536 such writes so far)"),
            "{}",
            lines[22].message
        );
    }

    /// Activates `dev` on a fresh queue, has it serve a read of `sector`,
    /// resets it and returns the status byte.
    fn serve_one_read(dev: &mut Block, sector: u64) -> u8 {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        dev.ack_features(bit(VIRTIO_F_VERSION_1)).unwrap();
        let (hdr, data, status) = (0x1_0000u64, 0x2_0000u64, 0x1_1000u64);
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        raw[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(hdr)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let next = VRING_DESC_F_NEXT as u16;
        let write = VRING_DESC_F_WRITE as u16;
        let descs: Vec<RawDescriptor> = vec![
            Descriptor::new(hdr, 16, next, 1).into(),
            Descriptor::new(data, 512, next | write, 2).into(),
            Descriptor::new(status, 1, write, 0).into(),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        dev.activate(
            mem.clone(),
            Arc::new(CountingInterrupt::default()),
            vec![ActivatedQueue {
                index: 0,
                queue: vq.create_queue().unwrap(),
                notify: notify.try_clone().unwrap(),
            }],
        )
        .unwrap();
        notify.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while vq.used().idx().load() == 0 {
            assert!(Instant::now() < deadline, "the device never answered");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(dev.reset().len(), 1);
        mem.read_obj::<u8>(GuestAddress(status)).unwrap()
    }

    #[test]
    fn log_counts_survive_resets() {
        // A driver that resets the device does not get ten fresh lines per
        // activation: every activation counts in the device's limits.
        let mut dev = block(false);
        let past_the_end = 1 << 20;
        for activation in 1..=3 {
            assert_eq!(
                serve_one_read(&mut dev, past_the_end),
                VIRTIO_BLK_S_IOERR as u8
            );
            assert_eq!(dev.log.request.count(), activation);
        }
        assert_eq!(serve_one_read(&mut dev, 1), VIRTIO_BLK_S_OK as u8);
        assert_eq!(dev.log.request.count(), 3);
        assert_eq!(dev.stats().requests_completed(), 4);
    }

    #[test]
    fn activate_rejects_wrong_queues_and_keeps_their_eventfds() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let mut dev = block(false);
        let queue = |index| ActivatedQueue {
            index,
            queue: vq.create_queue().unwrap(),
            notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        };
        let irq = Arc::new(CountingInterrupt::default());
        assert!(
            dev.activate(mem.clone(), irq.clone(), vec![queue(0), queue(1)])
                .is_err()
        );
        assert!(dev.activate(mem.clone(), irq.clone(), vec![]).is_err());
        // A queue whose rings lie outside guest memory.
        let mut bad = queue(0);
        bad.queue = Queue::new(QUEUE_SIZE).unwrap();
        bad.queue.set_ready(true);
        bad.queue
            .set_desc_table_address(Some(0xffff_0000), Some(0x10));
        assert!(dev.activate(mem.clone(), irq, vec![bad]).is_err());
        assert!(!dev.is_active());
        assert_eq!(dev.reset().len(), 3);
    }
}
