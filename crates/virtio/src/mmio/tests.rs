use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as ACK, VIRTIO_CONFIG_S_DRIVER as DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FAILED as FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET as NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;
use vmkit_devices::BusDevice;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::test_utils::{
    LogLine, MmioDriver, NoopNotify, QueueSetup, RecordingIrq, RecordingNotify, capture_log,
};

const BASE: u64 = 0xd000_0000;
const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
const INDIRECT: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;
const DEVICE_FEATURES: u64 = VERSION_1 | EVENT_IDX | INDIRECT | 1 << 3 | 1 << 40;
const DUMMY_ID: u32 = 0x42;

/// What a queue looked like when handed to the device.
#[derive(Debug, PartialEq, Eq)]
struct SeenQueue {
    index: u16,
    size: u16,
    desc: u64,
    driver: u64,
    device: u64,
    event_idx: bool,
    ready: bool,
}

#[derive(Default)]
struct Record {
    acked: Vec<u64>,
    activations: Vec<Vec<SeenQueue>>,
    resets: usize,
    interrupt: Option<Arc<dyn Interrupt>>,
    notify: Vec<EventFd>,
    config: [u8; 16],
    config_reads: usize,
}

struct Dummy {
    rec: Arc<Mutex<Record>>,
    max: Vec<u16>,
    features: u64,
    refused: u64,
    fail_activate: bool,
}

impl Dummy {
    fn new(max: &[u16]) -> (Self, Arc<Mutex<Record>>) {
        let rec = Arc::new(Mutex::new(Record::default()));
        (
            Dummy {
                rec: rec.clone(),
                max: max.to_vec(),
                features: DEVICE_FEATURES,
                refused: 0,
                fail_activate: false,
            },
            rec,
        )
    }

    fn rec(&self) -> MutexGuard<'_, Record> {
        self.rec.lock().unwrap()
    }
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        DUMMY_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn ack_features(&mut self, features: u64) -> Result<()> {
        if features & self.refused != 0 {
            return Err(Error::Features(format!("{features:#x}")));
        }
        self.rec().acked.push(features);
        Ok(())
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut rec = self.rec();
        rec.config_reads += 1;
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| rec.config.get(o as usize).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut rec = self.rec();
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = offset
                .checked_add(i as u64)
                .and_then(|o| rec.config.get_mut(o as usize))
            {
                *slot = *b;
            }
        }
    }

    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<()> {
        if self.fail_activate {
            return Err(Error::Activate("told to fail".into()));
        }
        let mut rec = self.rec();
        let seen = queues
            .iter()
            .map(|q| SeenQueue {
                index: q.index,
                size: q.queue.size(),
                desc: q.queue.desc_table(),
                driver: q.queue.avail_ring(),
                device: q.queue.used_ring(),
                event_idx: q.queue.event_idx_enabled(),
                ready: q.queue.ready(),
            })
            .collect();
        rec.activations.push(seen);
        rec.interrupt = Some(interrupt);
        rec.notify = queues.into_iter().map(|q| q.notify).collect();
        Ok(())
    }

    fn reset(&mut self) -> Vec<EventFd> {
        let mut rec = self.rec();
        rec.resets += 1;
        rec.interrupt = None;
        std::mem::take(&mut rec.notify)
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

struct Fixture {
    t: MmioTransport,
    rec: Arc<Mutex<Record>>,
    irq: Arc<RecordingIrq>,
    notify: Arc<RecordingNotify>,
    mem: GuestMemoryMmap,
}

impl Fixture {
    fn with(dummy: Dummy, rec: Arc<Mutex<Record>>) -> Self {
        let irq = Arc::new(RecordingIrq::new());
        let notify = Arc::new(RecordingNotify::new());
        let mem = memory();
        let t = MmioTransport::new(
            Box::new(dummy),
            mem.clone(),
            irq.clone(),
            notify.clone(),
            BASE,
        )
        .unwrap();
        Fixture {
            t,
            rec,
            irq,
            notify,
            mem,
        }
    }

    fn new(max: &[u16]) -> Self {
        let (dummy, rec) = Dummy::new(max);
        Self::with(dummy, rec)
    }

    fn rec(&self) -> MutexGuard<'_, Record> {
        self.rec.lock().unwrap()
    }

    fn read(&mut self, offset: u32) -> u32 {
        MmioDriver::new(&mut self.t).read(offset)
    }

    fn write(&mut self, offset: u32, value: u32) {
        MmioDriver::new(&mut self.t).write(offset, value)
    }

    fn driver(&mut self) -> MmioDriver<'_> {
        MmioDriver::new(&mut self.t)
    }
}

/// Queue placements from virtio-queue's driver-side mock.
fn mock_setup(mem: &GuestMemoryMmap, index: u16, start: u64, size: u16) -> QueueSetup {
    let mock = MockSplitQueue::create(mem, GuestAddress(start), size);
    QueueSetup {
        index,
        size,
        desc: mock.desc_table_addr().0,
        driver: mock.avail_addr().0,
        device: mock.used_addr().0,
    }
}

fn seen(q: QueueSetup, event_idx: bool) -> SeenQueue {
    SeenQueue {
        index: q.index,
        size: q.size,
        desc: q.desc,
        driver: q.driver,
        device: q.device,
        event_idx,
        ready: true,
    }
}

/// A driver that brings a two-queue device up.
fn bring_up(f: &mut Fixture, features: u64) -> (QueueSetup, QueueSetup) {
    let q0 = mock_setup(&f.mem, 0, 0x1000, 256);
    let q1 = mock_setup(&f.mem, 1, 0x8000, 16);
    let status = f.driver().init(features, &[q0, q1]);
    assert_eq!(status, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    (q0, q1)
}

#[test]
fn full_init_sequence_by_registers() {
    let mut f = Fixture::new(&[256, 64]);
    assert_eq!(f.read(VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(&f.read(VIRTIO_MMIO_MAGIC_VALUE).to_le_bytes(), b"virt");
    assert_eq!(f.read(VIRTIO_MMIO_VERSION), 2);
    assert_eq!(f.read(VIRTIO_MMIO_DEVICE_ID), DUMMY_ID);
    assert_eq!(f.read(VIRTIO_MMIO_VENDOR_ID), MMIO_VENDOR_ID);
    assert_eq!(f.read(VIRTIO_MMIO_STATUS), 0);

    f.write(VIRTIO_MMIO_STATUS, 0);
    f.write(VIRTIO_MMIO_STATUS, ACK);
    f.write(VIRTIO_MMIO_STATUS, ACK | DRIVER);
    assert_eq!(f.read(VIRTIO_MMIO_STATUS), ACK | DRIVER);

    f.write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    let low = f.read(VIRTIO_MMIO_DEVICE_FEATURES);
    f.write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    let high = f.read(VIRTIO_MMIO_DEVICE_FEATURES);
    f.write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
    assert_eq!(f.read(VIRTIO_MMIO_DEVICE_FEATURES), 0);
    assert_eq!(u64::from(low) | u64::from(high) << 32, DEVICE_FEATURES);

    // The driver takes EVENT_IDX (low word), VERSION_1 and bit 40 (high
    // word), not INDIRECT_DESC nor bit 3.
    let wanted = VERSION_1 | EVENT_IDX | 1 << 40;
    f.write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    f.write(VIRTIO_MMIO_DRIVER_FEATURES, (wanted >> 32) as u32);
    f.write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    f.write(VIRTIO_MMIO_DRIVER_FEATURES, wanted as u32);
    f.write(VIRTIO_MMIO_STATUS, ACK | DRIVER | FEATURES_OK);
    assert_eq!(f.read(VIRTIO_MMIO_STATUS), ACK | DRIVER | FEATURES_OK);
    assert_eq!(f.rec().acked, vec![wanted]);

    let q0 = mock_setup(&f.mem, 0, 0x1000, 128);
    let q1 = mock_setup(&f.mem, 1, 0x2_0000, 64);
    for q in [q0, q1] {
        f.write(VIRTIO_MMIO_QUEUE_SEL, u32::from(q.index));
        assert_eq!(f.read(VIRTIO_MMIO_QUEUE_READY), 0);
        let max = f.read(VIRTIO_MMIO_QUEUE_NUM_MAX);
        assert_eq!(max, [256, 64][usize::from(q.index)]);
        f.write(VIRTIO_MMIO_QUEUE_NUM, u32::from(q.size));
        f.write(VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc as u32);
        f.write(VIRTIO_MMIO_QUEUE_DESC_HIGH, (q.desc >> 32) as u32);
        f.write(VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.driver as u32);
        f.write(VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (q.driver >> 32) as u32);
        f.write(VIRTIO_MMIO_QUEUE_USED_LOW, q.device as u32);
        f.write(VIRTIO_MMIO_QUEUE_USED_HIGH, (q.device >> 32) as u32);
        f.write(VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(f.read(VIRTIO_MMIO_QUEUE_READY), 1);
    }
    // No third queue.
    f.write(VIRTIO_MMIO_QUEUE_SEL, 2);
    assert_eq!(f.read(VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    assert_eq!(f.read(VIRTIO_MMIO_QUEUE_READY), 0);
    assert!(f.rec().activations.is_empty());

    f.write(VIRTIO_MMIO_STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(
        f.read(VIRTIO_MMIO_STATUS),
        ACK | DRIVER | FEATURES_OK | DRIVER_OK
    );
    assert!(f.t.is_activated());
    assert_eq!(f.t.driver_features(), wanted);
    assert_eq!(
        f.rec().activations,
        vec![vec![seen(q0, true), seen(q1, true)]]
    );
    // The device got the eventfds registered at QueueNotify.
    let notify = std::mem::take(&mut f.rec().notify);
    assert_eq!(notify.len(), 2);
    for (index, evt) in notify.iter().enumerate() {
        assert!(
            f.notify
                .is_registered_fd(evt, BASE + 0x50, index as u32)
                .unwrap()
        );
    }
    assert!(
        !f.notify
            .is_registered_fd(&notify[0], BASE + 0x50, 1)
            .unwrap()
    );
    // Nothing went through the VMM.
    assert_eq!(f.t.stats(), MmioStats::default());
}

#[test]
fn without_event_idx_queues_are_plain_and_only_ready_ones_activate() {
    let mut f = Fixture::new(&[256, 64]);
    let q1 = mock_setup(&f.mem, 1, 0x8000, 32);
    let status = f.driver().init(VERSION_1, &[q1]);
    assert_eq!(status, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(f.rec().activations, vec![vec![seen(q1, false)]]);
}

#[test]
fn notifications_registered_at_queue_notify_and_unregistered_on_drop() {
    let f = Fixture::new(&[8, 8, 8]);
    let expected = vec![(BASE + 0x50, 0), (BASE + 0x50, 1), (BASE + 0x50, 2)];
    assert_eq!(f.notify.registrations(), expected);
    assert_eq!(f.t.notify_addr(), BASE + 0x50);
    let notify = f.notify.clone();
    drop(f);
    assert!(notify.registrations().is_empty());
    assert_eq!(notify.unregistrations(), expected);
}

#[test]
fn refused_features_leave_features_ok_clear() {
    let mut f = Fixture::new(&[16]);
    // A legacy driver: no VERSION_1.
    assert!(!f.driver().negotiate(EVENT_IDX));
    assert_eq!(f.read(VIRTIO_MMIO_STATUS), ACK | DRIVER);
    // DRIVER_OK without FEATURES_OK does nothing.
    let q = mock_setup(&f.mem, 0, 0x1000, 16);
    f.driver().setup_queue(q);
    assert_eq!(f.driver().driver_ok(), ACK | DRIVER);
    assert!(f.rec().activations.is_empty());

    // A feature the device does not offer.
    assert!(!f.driver().negotiate(VERSION_1 | 1 << 50));
    // Offered, but the device refuses the combination.
    let (mut dummy, rec) = Dummy::new(&[16]);
    dummy.refused = INDIRECT;
    let mut f = Fixture::with(dummy, rec);
    assert!(!f.driver().negotiate(VERSION_1 | INDIRECT));
    assert!(f.rec().acked.is_empty());
    assert!(f.driver().negotiate(VERSION_1 | EVENT_IDX));
    assert_eq!(f.rec().acked, vec![VERSION_1 | EVENT_IDX]);
}

fn needs_reset_after(f: &mut Fixture, q: QueueSetup) {
    let status = f.driver().init(VERSION_1, &[q]);
    assert_eq!(
        status,
        ACK | DRIVER | FEATURES_OK | DRIVER_OK | NEEDS_RESET,
        "{q:?}"
    );
    assert!(f.rec().activations.is_empty(), "{q:?}");
    assert!(!f.t.is_activated());
    // The driver hears of it through a configuration interrupt.
    assert_eq!(f.read(VIRTIO_MMIO_INTERRUPT_STATUS), 2);
    assert_eq!(f.irq.count(), 1);
    // Reset clears it, and a good configuration works.
    f.write(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(f.read(VIRTIO_MMIO_STATUS), 0);
    assert_eq!(f.read(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    let good = mock_setup(&f.mem, 0, 0x1000, 64);
    assert_eq!(
        f.driver().init(VERSION_1, &[good]),
        ACK | DRIVER | FEATURES_OK | DRIVER_OK
    );
    assert_eq!(f.rec().activations.len(), 1);
    f.write(VIRTIO_MMIO_STATUS, 0);
    f.rec().activations.clear();
    f.write(VIRTIO_MMIO_INTERRUPT_ACK, 0xffff_ffff);
}

#[test]
fn bad_queues_make_driver_ok_need_reset() {
    let mem = memory();
    let good = mock_setup(&mem, 0, 0x1000, 64);
    let cases = [
        QueueSetup { size: 100, ..good },
        QueueSetup { size: 512, ..good },
        QueueSetup { size: 0, ..good },
        QueueSetup {
            desc: good.desc + 8,
            ..good
        },
        QueueSetup {
            driver: good.driver + 1,
            ..good
        },
        QueueSetup {
            device: good.device + 2,
            ..good
        },
        // Rings past the end of guest memory.
        QueueSetup {
            desc: 0xf_fff0,
            ..good
        },
        QueueSetup {
            device: 1 << 40,
            ..good
        },
    ];
    for q in cases {
        let mut f = Fixture::new(&[256]);
        needs_reset_after(&mut f, q);
    }
    // A QueueNum above 16 bits.
    let mut f = Fixture::new(&[256]);
    f.driver().negotiate(VERSION_1);
    f.driver().setup_queue(good);
    f.write(VIRTIO_MMIO_QUEUE_READY, 0);
    f.write(VIRTIO_MMIO_QUEUE_NUM, 0x1_0040);
    f.write(VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(f.driver().driver_ok() & NEEDS_RESET, NEEDS_RESET);
    assert!(f.rec().activations.is_empty());
}

#[test]
fn failed_activation_needs_reset() {
    let (mut dummy, rec) = Dummy::new(&[64]);
    dummy.fail_activate = true;
    let mut f = Fixture::with(dummy, rec);
    let q = mock_setup(&f.mem, 0, 0x1000, 64);
    assert_eq!(
        f.driver().init(VERSION_1, &[q]),
        ACK | DRIVER | FEATURES_OK | DRIVER_OK | NEEDS_RESET
    );
    assert_eq!(f.read(VIRTIO_MMIO_INTERRUPT_STATUS), 2);
    // Until reset, the driver cannot move the status on.
    f.write(VIRTIO_MMIO_STATUS, 0xf | NEEDS_RESET);
    assert_eq!(
        f.read(VIRTIO_MMIO_STATUS),
        ACK | DRIVER | FEATURES_OK | DRIVER_OK | NEEDS_RESET
    );
    f.driver().add_status(FAILED);
    assert_eq!(f.read(VIRTIO_MMIO_STATUS) & FAILED, FAILED);
}

#[test]
fn out_of_order_status_writes_are_ignored() {
    let mut f = Fixture::new(&[16]);
    f.write(VIRTIO_MMIO_STATUS, DRIVER);
    assert_eq!(f.read(VIRTIO_MMIO_STATUS), 0);
    f.write(VIRTIO_MMIO_STATUS, ACK | FEATURES_OK);
    // ACK is taken, FEATURES_OK (before DRIVER) is not.
    assert_eq!(f.read(VIRTIO_MMIO_STATUS), ACK);
    f.write(VIRTIO_MMIO_STATUS, ACK | DRIVER | DRIVER_OK);
    assert_eq!(f.read(VIRTIO_MMIO_STATUS), ACK | DRIVER);
    // Clearing a bit other than by reset.
    f.write(VIRTIO_MMIO_STATUS, ACK);
    assert_eq!(f.read(VIRTIO_MMIO_STATUS), ACK | DRIVER);
    // Undefined bits.
    f.write(VIRTIO_MMIO_STATUS, ACK | DRIVER | 0x10);
    f.write(VIRTIO_MMIO_STATUS, ACK | DRIVER | 0x100);
    assert_eq!(f.read(VIRTIO_MMIO_STATUS), ACK | DRIVER);
    // The driver cannot set NEEDS_RESET.
    f.write(VIRTIO_MMIO_STATUS, ACK | DRIVER | NEEDS_RESET);
    assert_eq!(f.read(VIRTIO_MMIO_STATUS), ACK | DRIVER);
    // Features before DRIVER are ignored.
    f.write(VIRTIO_MMIO_STATUS, 0);
    f.write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    f.write(VIRTIO_MMIO_DRIVER_FEATURES, 1);
    assert_eq!(f.t.driver_features(), 0);
    assert!(f.rec().acked.is_empty());
}

#[test]
fn writes_after_driver_ok_are_ignored() {
    let mut f = Fixture::new(&[256, 64]);
    let (q0, q1) = bring_up(&mut f, VERSION_1 | EVENT_IDX);
    let features = f.t.driver_features();

    f.write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    f.write(VIRTIO_MMIO_DRIVER_FEATURES, 0);
    f.write(VIRTIO_MMIO_QUEUE_SEL, 0);
    f.write(VIRTIO_MMIO_QUEUE_NUM, 2);
    f.write(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x10);
    f.write(VIRTIO_MMIO_QUEUE_READY, 0);
    f.write(VIRTIO_MMIO_STATUS, ACK);
    f.write(VIRTIO_MMIO_STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(f.t.driver_features(), features);
    assert_eq!(f.read(VIRTIO_MMIO_QUEUE_READY), 1);
    assert_eq!(
        f.read(VIRTIO_MMIO_STATUS),
        ACK | DRIVER | FEATURES_OK | DRIVER_OK
    );
    // Activated once, with what was set before DRIVER_OK.
    assert_eq!(
        f.rec().activations,
        vec![vec![seen(q0, true), seen(q1, true)]]
    );
    assert_eq!(f.rec().acked.len(), 1);

    // A ready queue cannot be changed before DRIVER_OK either.
    let mut f = Fixture::new(&[256]);
    let q = mock_setup(&f.mem, 0, 0x1000, 64);
    f.driver().negotiate(VERSION_1);
    f.driver().setup_queue(q);
    f.write(VIRTIO_MMIO_QUEUE_NUM, 128);
    f.write(VIRTIO_MMIO_QUEUE_USED_LOW, 0x4_0000);
    f.driver().driver_ok();
    assert_eq!(f.rec().activations, vec![vec![seen(q, false)]]);
}

#[test]
fn interrupt_status_and_ack() {
    let mut f = Fixture::new(&[256, 64]);
    bring_up(&mut f, VERSION_1);
    let interrupt = f.rec().interrupt.clone().unwrap();
    assert_eq!(f.read(VIRTIO_MMIO_INTERRUPT_STATUS), 0);

    interrupt.trigger(InterruptType::UsedRing).unwrap();
    assert_eq!(f.read(VIRTIO_MMIO_INTERRUPT_STATUS), 1);
    assert_eq!(f.irq.count(), 1);
    let generation = f.read(VIRTIO_MMIO_CONFIG_GENERATION);
    interrupt.trigger(InterruptType::ConfigChange).unwrap();
    assert_eq!(f.read(VIRTIO_MMIO_INTERRUPT_STATUS), 3);
    assert_eq!(f.read(VIRTIO_MMIO_CONFIG_GENERATION), generation + 1);
    assert_eq!(f.irq.count(), 2);

    f.write(VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(f.read(VIRTIO_MMIO_INTERRUPT_STATUS), 2);
    interrupt.trigger(InterruptType::UsedRing).unwrap();
    f.write(VIRTIO_MMIO_INTERRUPT_ACK, 3);
    assert_eq!(f.read(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    // InterruptStatus is read-only.
    f.write(VIRTIO_MMIO_INTERRUPT_STATUS, 3);
    assert_eq!(f.read(VIRTIO_MMIO_INTERRUPT_STATUS), 0);

    assert_eq!(
        f.t.stats(),
        MmioStats {
            notify_exits: 0,
            used_ring_interrupts: 2,
            config_interrupts: 1,
        }
    );

    // A fatal device error.
    interrupt.signal_needs_reset().unwrap();
    assert_eq!(f.read(VIRTIO_MMIO_STATUS) & NEEDS_RESET, NEEDS_RESET);
    assert_eq!(f.read(VIRTIO_MMIO_INTERRUPT_STATUS), 2);
    assert_eq!(f.irq.count(), 4);
}

#[test]
fn config_space_any_size_and_generation() {
    let mut f = Fixture::new(&[16]);
    f.t.write(0x100, &[1, 2, 3, 4, 5, 6, 7, 8]);
    f.t.write(0x10a, &[0xaa, 0xbb]);
    f.t.write(0x10f, &[0xcc]);
    let mut eight = [0u8; 8];
    f.t.read(0x100, &mut eight);
    assert_eq!(eight, [1, 2, 3, 4, 5, 6, 7, 8]);
    let mut two = [0u8; 2];
    f.t.read(0x10a, &mut two);
    assert_eq!(two, [0xaa, 0xbb]);
    let mut one = [0u8; 1];
    f.t.read(0x10f, &mut one);
    assert_eq!(one, [0xcc]);
    // Past the device's 16 bytes: zeros.
    let mut four = [0xffu8; 4];
    f.t.read(0x10e, &mut four);
    assert_eq!(four, [0, 0xcc, 0, 0]);
    f.t.read(0xffc, &mut four);
    assert_eq!(four, [0; 4]);
    assert_eq!(f.rec().config[..8], [1, 2, 3, 4, 5, 6, 7, 8]);

    assert_eq!(f.read(VIRTIO_MMIO_CONFIG_GENERATION), 0);
    f.t.device_mut().write_config(0, &[9]);
    f.t.config_changed().unwrap();
    assert_eq!(f.read(VIRTIO_MMIO_CONFIG_GENERATION), 1);
    assert_eq!(f.read(VIRTIO_MMIO_INTERRUPT_STATUS), 2);
    assert_eq!(f.irq.count(), 1);
    assert_eq!(f.t.stats().config_interrupts, 1);
}

#[test]
fn bad_register_accesses_are_ignored() {
    let mut f = Fixture::new(&[16]);
    let mut two = [0xffu8; 2];
    f.t.read(0, &mut two);
    assert_eq!(two, [0, 0]);
    let mut eight = [0xffu8; 8];
    f.t.read(0, &mut eight);
    assert_eq!(eight, [0; 8]);
    let mut four = [0xffu8; 4];
    f.t.read(0x2, &mut four);
    assert_eq!(four, [0; 4]);
    // Status written with a 1-byte, a 2-byte and an unaligned access.
    f.t.write(0x70, &[1]);
    f.t.write(0x70, &[1, 0]);
    f.t.write(0x71, &[1, 0, 0, 0]);
    assert_eq!(f.read(VIRTIO_MMIO_STATUS), 0);
    // Read-only registers.
    f.write(VIRTIO_MMIO_MAGIC_VALUE, 0);
    f.write(VIRTIO_MMIO_QUEUE_NUM_MAX, 2);
    assert_eq!(f.read(VIRTIO_MMIO_MAGIC_VALUE), MMIO_MAGIC_VALUE);
    assert_eq!(f.read(VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
    // Write-only and unknown registers read as zero.
    f.write(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
    assert_eq!(f.read(VIRTIO_MMIO_QUEUE_DESC_LOW), 0);
    assert_eq!(f.read(0xc0), 0);
    // Queue writes for an absent queue.
    f.write(VIRTIO_MMIO_QUEUE_SEL, 7);
    f.write(VIRTIO_MMIO_QUEUE_NUM, 8);
    f.write(VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(f.read(VIRTIO_MMIO_QUEUE_READY), 0);
    f.write(VIRTIO_MMIO_QUEUE_SEL, u32::MAX);
    assert_eq!(f.read(VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
}

/// The warnings and errors among `lines`.
fn warnings(lines: &[LogLine]) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| l.level <= log::Level::Warn)
        .map(|l| l.message.as_str())
        .collect()
}

/// How many lines `events` events of one kind may cost: the first ten,
/// then one per power of two.
fn limited_lines(events: u64) -> usize {
    (1..=events)
        .filter(|&n| n <= 10 || n.is_power_of_two())
        .count()
}

#[test]
fn a_flood_of_bad_register_writes_logs_a_few_lines() {
    let mut f = Fixture::new(&[16]);
    let ((), lines) = capture_log(|| {
        for i in 0..100_000u32 {
            // Read-only, unknown, wrong size, unaligned.
            match i % 4 {
                0 => f.write(VIRTIO_MMIO_MAGIC_VALUE, i),
                1 => f.write(0xc0, i),
                2 => f.t.write(0x30, &[1, 2]),
                _ => f.t.write(0x31, &i.to_le_bytes()),
            }
        }
    });
    let lines = warnings(&lines);
    // 1..=10, then 16, 32, ..., 65536.
    assert_eq!(lines.len(), 23, "{lines:#?}");
    assert_eq!(lines.len(), limited_lines(100_000));
    assert!(
        lines[0].ends_with("(1 bad register accesses so far)"),
        "{}",
        lines[0]
    );
    assert!(
        lines[22].ends_with("(65536 bad register accesses so far)"),
        "{}",
        lines[22]
    );
    // The transport still works.
    assert_eq!(f.read(VIRTIO_MMIO_MAGIC_VALUE), MMIO_MAGIC_VALUE);
    assert_eq!(f.read(VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
}

#[test]
fn a_flood_of_queue_and_status_mistakes_logs_a_few_lines() {
    let mut f = Fixture::new(&[16]);
    let ((), lines) = capture_log(|| {
        for i in 0..50_000u32 {
            // Queue registers of an absent queue, a notification of an
            // absent queue, QueueNum not a power of two.
            f.write(VIRTIO_MMIO_QUEUE_SEL, 5);
            f.write(VIRTIO_MMIO_QUEUE_DESC_LOW, i);
            f.write(VIRTIO_MMIO_QUEUE_NOTIFY, 9);
            f.write(VIRTIO_MMIO_QUEUE_SEL, 0);
            f.write(VIRTIO_MMIO_QUEUE_NUM, 3);
            // DRIVER before ACKNOWLEDGE; DriverFeatures before DRIVER.
            f.write(VIRTIO_MMIO_STATUS, DRIVER);
            f.write(VIRTIO_MMIO_DRIVER_FEATURES, i);
        }
    });
    let lines = warnings(&lines);
    // 150,000 queue mistakes (no notification reaches the transport
    // before activation: those are debug lines, not counted) and 100,000
    // status mistakes.
    let queue = lines
        .iter()
        .filter(|l| l.contains("queue errors so far"))
        .count();
    let status = lines
        .iter()
        .filter(|l| l.contains("status errors so far"))
        .count();
    assert_eq!(queue, limited_lines(100_000), "{lines:#?}");
    assert_eq!(status, limited_lines(100_000), "{lines:#?}");
    assert_eq!(lines.len(), queue + status, "{lines:#?}");
}

#[test]
fn one_kind_of_mistake_does_not_hide_another() {
    let (mut dummy, rec) = Dummy::new(&[64]);
    dummy.fail_activate = true;
    let mut f = Fixture::with(dummy, rec);
    let ((), flood) = capture_log(|| {
        for _ in 0..100_000 {
            f.write(VIRTIO_MMIO_VERSION, 1);
            f.write(VIRTIO_MMIO_QUEUE_SEL, 3);
            f.write(VIRTIO_MMIO_QUEUE_READY, 1);
        }
    });
    assert_eq!(warnings(&flood).len(), 2 * limited_lines(100_000));
    // The first status mistake and the first failed activation are
    // logged, with their own counts.
    let q = mock_setup(&f.mem, 0, 0x1000, 64);
    let ((), lines) = capture_log(|| {
        f.write(VIRTIO_MMIO_STATUS, DRIVER);
        f.driver().init(VERSION_1, &[q]);
    });
    let lines = warnings(&lines);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].contains("status bit") && lines[0].ends_with("(1 status errors so far)"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("not activated") && lines[1].ends_with("(1 failed activations so far)"),
        "{}",
        lines[1]
    );
    assert_eq!(f.read(VIRTIO_MMIO_STATUS) & NEEDS_RESET, NEEDS_RESET);
}

#[test]
fn a_reset_does_not_start_the_count_over() {
    // A driver cannot get ten fresh lines per reset.
    let (mut dummy, rec) = Dummy::new(&[64]);
    dummy.fail_activate = true;
    let mut f = Fixture::with(dummy, rec);
    let q = mock_setup(&f.mem, 0, 0x1000, 64);
    let ((), lines) = capture_log(|| {
        for _ in 0..2000 {
            f.write(VIRTIO_MMIO_MAGIC_VALUE, 0);
            assert_eq!(f.driver().init(VERSION_1, &[q]) & NEEDS_RESET, NEEDS_RESET);
            f.write(VIRTIO_MMIO_STATUS, 0);
        }
    });
    let lines = warnings(&lines);
    let register = lines
        .iter()
        .filter(|l| l.contains("bad register accesses so far"))
        .count();
    let activation = lines
        .iter()
        .filter(|l| l.contains("failed activations so far"))
        .count();
    assert_eq!(register, limited_lines(2000));
    assert_eq!(activation, limited_lines(2000));
    assert_eq!(lines.len(), register + activation, "{lines:#?}");
    assert_eq!(f.rec().resets, 2 * 2000);
}

#[test]
fn queues_outside_memory_in_a_reset_loop_log_a_few_lines() {
    // virtio-queue's own validity check prints an error of its own for
    // every bad queue; the transport's does not.
    let mut f = Fixture::new(&[64]);
    let good = mock_setup(&f.mem, 0, 0x1000, 64);
    let bad = QueueSetup {
        device: 0xf_fff8,
        ..good
    };
    let ((), lines) = capture_log(|| {
        for _ in 0..1000 {
            let status = f.driver().init(VERSION_1, &[bad]);
            assert_eq!(status & NEEDS_RESET, NEEDS_RESET);
            f.write(VIRTIO_MMIO_STATUS, 0);
        }
    });
    let lines = warnings(&lines);
    assert_eq!(lines.len(), limited_lines(1000), "{lines:#?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("rings outside guest memory") && l.contains("failed activations")),
        "{lines:#?}"
    );
    assert!(f.rec().activations.is_empty());
}

#[test]
fn reset_returns_to_initial_values() {
    let mut f = Fixture::new(&[256, 64]);
    let initial: Vec<u32> = (0..0x100)
        .step_by(4)
        .map(|off| f.read(off))
        .collect::<Vec<_>>();
    bring_up(&mut f, VERSION_1 | EVENT_IDX);
    let interrupt = f.rec().interrupt.clone().unwrap();
    interrupt.trigger(InterruptType::UsedRing).unwrap();
    f.write(VIRTIO_MMIO_QUEUE_SEL, 1);
    f.write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    // (The driver's first reset, before ACKNOWLEDGE, was one.)
    let resets = f.rec().resets;
    assert!(f.t.is_activated());

    f.write(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(f.rec().resets, resets + 1);
    assert!(!f.t.is_activated());
    assert_eq!(f.t.driver_features(), 0);
    let after: Vec<u32> = (0..0x100).step_by(4).map(|off| f.read(off)).collect();
    assert_eq!(after, initial);
    for sel in 0..2 {
        f.write(VIRTIO_MMIO_QUEUE_SEL, sel);
        assert_eq!(f.read(VIRTIO_MMIO_QUEUE_READY), 0);
    }
    // The notifications stay registered.
    assert_eq!(f.notify.registrations().len(), 2);
    assert!(f.notify.unregistrations().is_empty());

    // A second bring-up gets fresh queues and working eventfds. Queue 0 is
    // left at its default size (the maximum).
    let q0 = mock_setup(&f.mem, 0, 0x1000, 256);
    f.driver().negotiate(VERSION_1);
    let mut drv = f.driver();
    drv.write(VIRTIO_MMIO_QUEUE_SEL, 0);
    drv.write(VIRTIO_MMIO_QUEUE_DESC_LOW, q0.desc as u32);
    drv.write(VIRTIO_MMIO_QUEUE_AVAIL_LOW, q0.driver as u32);
    drv.write(VIRTIO_MMIO_QUEUE_USED_LOW, q0.device as u32);
    drv.write(VIRTIO_MMIO_QUEUE_READY, 1);
    drv.driver_ok();
    assert_eq!(f.rec().activations.len(), 2);
    assert_eq!(f.rec().activations[1], vec![seen(q0, false)]);
    let evt = f.rec().notify.remove(0);
    assert!(f.notify.is_registered_fd(&evt, BASE + 0x50, 0).unwrap());
}

#[test]
fn queue_notify_exit_signals_the_queue() {
    let (dummy, rec) = Dummy::new(&[256, 64]);
    let irq = Arc::new(RecordingIrq::new());
    let mut t =
        MmioTransport::new(Box::new(dummy), memory(), irq, Arc::new(NoopNotify), BASE).unwrap();
    let mut drv = MmioDriver::new(&mut t);
    // Before activation: counted, not delivered.
    drv.write(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    let mem = memory();
    let q0 = mock_setup(&mem, 0, 0x1000, 256);
    let q1 = mock_setup(&mem, 1, 0x8000, 16);
    drv.init(VERSION_1, &[q0, q1]);
    let notify: Vec<EventFd> = std::mem::take(&mut rec.lock().unwrap().notify);
    assert!(notify[1].read().is_err(), "stale notification delivered");

    drv.write(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    drv.write(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    drv.write(VIRTIO_MMIO_QUEUE_NOTIFY, 9);
    assert_eq!(notify[1].read().unwrap(), 2);
    assert!(notify[0].read().is_err());
    assert_eq!(t.stats().notify_exits, 4);
}

struct FailingRegistrar {
    inner: RecordingNotify,
    fail_at: u32,
}

impl NotifyRegistrar for FailingRegistrar {
    fn register(&self, fd: &EventFd, addr: u64, datamatch: u32) -> io::Result<()> {
        if datamatch == self.fail_at {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.inner.register(fd, addr, datamatch)
    }

    fn unregister(&self, fd: &EventFd, addr: u64, datamatch: u32) -> io::Result<()> {
        self.inner.unregister(fd, addr, datamatch)
    }
}

#[test]
fn construction_errors() {
    let irq = Arc::new(RecordingIrq::new());
    let (mut legacy, _) = Dummy::new(&[16]);
    legacy.features = EVENT_IDX;
    let r = MmioTransport::new(
        Box::new(legacy),
        memory(),
        irq.clone(),
        Arc::new(NoopNotify),
        BASE,
    );
    assert!(matches!(r, Err(Error::Features(_))), "{r:?}");

    for max in [0, 100, 65535] {
        let (dummy, _) = Dummy::new(&[16, max]);
        let r = MmioTransport::new(
            Box::new(dummy),
            memory(),
            irq.clone(),
            Arc::new(NoopNotify),
            BASE,
        );
        assert!(matches!(r, Err(Error::InvalidQueue(_))), "{max}: {r:?}");
    }

    let (dummy, _) = Dummy::new(&[16]);
    let r = MmioTransport::new(
        Box::new(dummy),
        memory(),
        irq.clone(),
        Arc::new(NoopNotify),
        u64::MAX - 0x10,
    );
    assert!(matches!(r, Err(Error::InvalidQueue(_))), "{r:?}");

    // A registration failure undoes the earlier ones.
    let registrar = Arc::new(FailingRegistrar {
        inner: RecordingNotify::new(),
        fail_at: 2,
    });
    let (dummy, _) = Dummy::new(&[16, 16, 16]);
    let r = MmioTransport::new(Box::new(dummy), memory(), irq, registrar.clone(), BASE);
    assert!(matches!(r, Err(Error::Io(_))), "{r:?}");
    assert!(registrar.inner.registrations().is_empty());
    assert_eq!(
        registrar.inner.unregistrations(),
        vec![(BASE + 0x50, 0), (BASE + 0x50, 1)]
    );
}

/// xorshift64*, so the sequence is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_register_traffic_never_panics() {
    const REGISTERS: [u32; 24] = [
        VIRTIO_MMIO_MAGIC_VALUE,
        VIRTIO_MMIO_VERSION,
        VIRTIO_MMIO_DEVICE_ID,
        VIRTIO_MMIO_DEVICE_FEATURES,
        VIRTIO_MMIO_DEVICE_FEATURES_SEL,
        VIRTIO_MMIO_DRIVER_FEATURES,
        VIRTIO_MMIO_DRIVER_FEATURES_SEL,
        VIRTIO_MMIO_QUEUE_SEL,
        VIRTIO_MMIO_QUEUE_NUM_MAX,
        VIRTIO_MMIO_QUEUE_NUM,
        VIRTIO_MMIO_QUEUE_READY,
        VIRTIO_MMIO_QUEUE_NOTIFY,
        VIRTIO_MMIO_INTERRUPT_STATUS,
        VIRTIO_MMIO_INTERRUPT_ACK,
        VIRTIO_MMIO_STATUS,
        VIRTIO_MMIO_STATUS,
        VIRTIO_MMIO_QUEUE_DESC_LOW,
        VIRTIO_MMIO_QUEUE_DESC_HIGH,
        VIRTIO_MMIO_QUEUE_AVAIL_LOW,
        VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
        VIRTIO_MMIO_QUEUE_USED_LOW,
        VIRTIO_MMIO_QUEUE_USED_HIGH,
        VIRTIO_MMIO_CONFIG_GENERATION,
        VIRTIO_MMIO_CONFIG,
    ];
    const ACCESSES: u64 = 200_000;
    let mut f = Fixture::new(&[256, 64, 1]);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut activations = 0;
    let ((), lines) = capture_log(|| {
        for _ in 0..ACCESSES {
            let offset = match rng.below(8) {
                0 => rng.below(MMIO_WINDOW_SIZE),
                _ => u64::from(REGISTERS[rng.below(REGISTERS.len() as u64) as usize]),
            };
            let len = [4, 4, 4, 1, 2, 8, 0][rng.below(7) as usize];
            let value = match rng.below(4) {
                // Small values hit selectors, sizes, status bits and indices.
                0 => rng.below(0x100),
                1 => 1 << rng.below(64),
                2 => rng.below(4) << 30,
                _ => rng.next(),
            };
            if rng.below(2) == 0 {
                let bytes = value.to_le_bytes();
                f.t.write(offset, &bytes[..len]);
            } else {
                let mut data = [0u8; 8];
                f.t.read(offset, &mut data[..len]);
            }
            // Sometimes play a well-behaved driver, so the state machine gets
            // past DRIVER_OK and random traffic hits an activated device.
            if rng.below(20_000) == 0 {
                let q = mock_setup(&f.mem, 0, 0x1000, 256);
                f.driver().init(VERSION_1 | EVENT_IDX, &[q]);
            }
            let status = f.read(VIRTIO_MMIO_STATUS);
            assert_eq!(status & !0xcf, 0, "undefined status bits {status:#x}");
            if status & DRIVER_OK != 0 {
                assert_eq!(status & FEATURES_OK, FEATURES_OK);
            }
            assert_eq!(f.read(VIRTIO_MMIO_MAGIC_VALUE), MMIO_MAGIC_VALUE);
            activations = f.rec().activations.len();
            // Whatever got activated had valid queues.
            if let Some(last) = f.rec().activations.last() {
                for q in last {
                    assert!(q.size.is_power_of_two() && q.size <= [256, 64, 1][q.index as usize]);
                }
            }
        }
    });
    assert!(activations > 0, "the driver never got the device running");
    // Whatever the traffic, at most a few dozen lines per kind of mistake
    // (register, queue, status, activation, host) reach the log.
    let lines = warnings(&lines);
    assert!(!lines.is_empty());
    assert!(
        lines.len() <= 5 * limited_lines(ACCESSES),
        "{} lines: {lines:#?}",
        lines.len()
    );
}
