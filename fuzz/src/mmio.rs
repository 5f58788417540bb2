//! `mmio_transport`: a hostile driver programming an [`MmioTransport`].
//!
//! The fuzz input is a small device (queue count and maximum sizes,
//! feature bits, whether it refuses features or activation) and a sequence
//! of register reads and writes of any size at any offset, interleaved with
//! well-formed initialisation sequences and device-side events (used-ring
//! and configuration interrupts, DEVICE_NEEDS_RESET). After every step the
//! harness checks, against a shadow of what the driver programmed:
//!
//! - Status only has bits the spec defines, set in the initialisation order
//!   (DRIVER_OK ⇒ FEATURES_OK ⇒ DRIVER ⇒ ACKNOWLEDGE); bits only appear
//!   when the driver wrote them (DEVICE_NEEDS_RESET only from the device)
//!   and only disappear at reset, which clears everything;
//! - FEATURES_OK only with driver features the device offered, VERSION_1
//!   among them, acknowledged by the device;
//! - the device is activated only at DRIVER_OK, once per reset, with
//!   exactly the queues the driver made ready, each valid in guest memory
//!   with the size and addresses the driver wrote; a failed activation sets
//!   DEVICE_NEEDS_RESET;
//! - registers read back what they must (MagicValue, Version, DeviceID,
//!   VendorID, DeviceFeatures, QueueNumMax, QueueReady, ConfigGeneration,
//!   the configuration space); accesses that are not 32-bit and aligned
//!   read as zero and change nothing;
//! - QueueNotify signals exactly the eventfd of the notified queue, and
//!   only while the device runs.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use arbitrary::{Result, Unstructured};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::GuestAddress;
use vmkit_devices::BusDevice;
use vmkit_virtio::test_utils::{NoopNotify, QueueSetup, RecordingIrq};
use vmkit_virtio::{
    ActivatedQueue, GuestMemoryMmap, Interrupt, InterruptType, MMIO_MAGIC_VALUE, MMIO_VENDOR_ID,
    MMIO_VERSION, MmioTransport, VirtioDevice, read_config_space,
};
use vmm_sys_util::eventfd::EventFd;

const DEVICE_TYPE: u32 = 0x2a;
const MEM_SIZE: u64 = 0x1_0000;
const CONFIG_LEN: usize = 24;

const ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
const FAILED: u32 = VIRTIO_CONFIG_S_FAILED;
const KNOWN: u32 = ACK | DRIVER | FEATURES_OK | DRIVER_OK | NEEDS_RESET | FAILED;

/// Runs one input.
pub fn run(data: &[u8]) {
    let _ = fuzz(&mut Unstructured::new(data));
}

/// One queue as the device got it at activation.
struct Active {
    index: u16,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    notify: EventFd,
}

/// What the fake device saw, shared with the harness.
#[derive(Default)]
struct DeviceLog {
    acked: Option<u64>,
    active: bool,
    activations: u64,
    queues: Vec<Active>,
    interrupt: Option<Arc<dyn Interrupt>>,
    config: [u8; CONFIG_LEN],
}

fn lock(log: &Mutex<DeviceLog>) -> MutexGuard<'_, DeviceLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// A device that checks what the transport hands it.
struct FakeDevice {
    max_sizes: Vec<u16>,
    features: u64,
    refuse_features: bool,
    fail_activation: bool,
    mem: GuestMemoryMmap,
    log: Arc<Mutex<DeviceLog>>,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn ack_features(&mut self, features: u64) -> vmkit_virtio::Result<()> {
        let mut log = lock(&self.log);
        assert!(!log.active, "features acknowledged while the device runs");
        assert_eq!(
            features & !self.features,
            0,
            "features the device did not offer"
        );
        assert_ne!(
            features & (1 << VIRTIO_F_VERSION_1),
            0,
            "a legacy driver accepted"
        );
        if self.refuse_features {
            return Err(vmkit_virtio::Error::Features(
                "refused by the fuzzer".into(),
            ));
        }
        log.acked = Some(features);
        Ok(())
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&lock(&self.log).config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut log = lock(&self.log);
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| log.config.get_mut(o))
            {
                *slot = *b;
            }
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> vmkit_virtio::Result<()> {
        let mut log = lock(&self.log);
        assert!(!log.active, "activated twice without a reset");
        assert!(
            log.acked.is_some(),
            "activated without acknowledged features"
        );
        let mut last = None;
        for q in &queues {
            let max = *self
                .max_sizes
                .get(usize::from(q.index))
                .unwrap_or_else(|| panic!("queue {} does not exist", q.index));
            assert!(
                last.is_none_or(|l| l < q.index),
                "queues out of order or twice"
            );
            last = Some(q.index);
            let size = q.queue.size();
            assert!(
                size.is_power_of_two() && size <= max,
                "queue {} of size {size} (max {max})",
                q.index
            );
            assert!(q.queue.ready(), "queue {} not ready", q.index);
            assert!(
                q.queue.is_valid(&mem),
                "queue {} invalid in guest memory",
                q.index
            );
            assert!(q.queue.is_valid(&self.mem));
        }
        if self.fail_activation {
            if std::env::var_os("VMKIT_FUZZ_TRACE").is_some() {
                eprintln!("mmio: activation failed on purpose");
            }
            return Err(vmkit_virtio::Error::Activate("failed by the fuzzer".into()));
        }
        log.active = true;
        log.activations += 1;
        if std::env::var_os("VMKIT_FUZZ_TRACE").is_some() {
            eprintln!("mmio: activated with {} queues", queues.len());
        }
        log.interrupt = Some(interrupt);
        log.queues = queues
            .into_iter()
            .map(|q| Active {
                index: q.index,
                size: q.queue.size(),
                desc: q.queue.desc_table(),
                avail: q.queue.avail_ring(),
                used: q.queue.used_ring(),
                notify: q.notify,
            })
            .collect();
        Ok(())
    }

    fn reset(&mut self) -> Vec<EventFd> {
        let mut log = lock(&self.log);
        log.active = false;
        log.acked = None;
        log.interrupt = None;
        std::mem::take(&mut log.queues)
            .into_iter()
            .map(|q| q.notify)
            .collect()
    }
}

/// What the driver programmed, by the spec's rules.
#[derive(Clone, Copy, Debug, Default)]
struct ShadowQueue {
    size: u32,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

struct Harness {
    transport: MmioTransport,
    log: Arc<Mutex<DeviceLog>>,
    irq: Arc<RecordingIrq>,
    max_sizes: Vec<u16>,
    features: u64,
    dev_sel: u32,
    drv_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<ShadowQueue>,
    generation: u32,
    irq_count: u64,
}

fn set_low(reg: &mut u64, v: u32) {
    *reg = (*reg & !0xffff_ffff) | u64::from(v);
}

fn set_high(reg: &mut u64, v: u32) {
    *reg = (*reg & 0xffff_ffff) | (u64::from(v) << 32);
}

impl Harness {
    fn shadow_reset(&mut self) {
        self.dev_sel = 0;
        self.drv_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for (q, &max) in self.queues.iter_mut().zip(&self.max_sizes) {
            *q = ShadowQueue {
                size: u32::from(max),
                ..Default::default()
            };
        }
    }

    fn read(&mut self, offset: u64, size: usize) -> u64 {
        let mut data = [0xa5u8; 8];
        self.transport.read(offset, &mut data[..size]);
        let mut v = [0u8; 8];
        v[..size].copy_from_slice(&data[..size]);
        u64::from_le_bytes(v)
    }

    /// A 32-bit aligned register read, and what it must return.
    fn check_read(&mut self, offset: u64, size: usize) {
        let value = self.read(offset, size);
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            let mut want = [0u8; 8];
            read_config_space(
                &lock(&self.log).config,
                offset - u64::from(VIRTIO_MMIO_CONFIG),
                &mut want[..size],
            );
            assert_eq!(
                value,
                u64::from_le_bytes(want),
                "config read at {offset:#x}"
            );
            return;
        }
        if size != 4 || !offset.is_multiple_of(4) {
            assert_eq!(value, 0, "{size}-byte register read at {offset:#x}");
            return;
        }
        let value = value as u32;
        let sel = self.queue_sel as usize;
        let status = self.transport.status();
        match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => assert_eq!(value, MMIO_MAGIC_VALUE),
            VIRTIO_MMIO_VERSION => assert_eq!(value, MMIO_VERSION),
            VIRTIO_MMIO_DEVICE_ID => assert_eq!(value, DEVICE_TYPE),
            VIRTIO_MMIO_VENDOR_ID => assert_eq!(value, MMIO_VENDOR_ID),
            VIRTIO_MMIO_DEVICE_FEATURES => {
                let want = match self.dev_sel {
                    0 => self.features as u32,
                    1 => (self.features >> 32) as u32,
                    _ => 0,
                };
                assert_eq!(value, want, "DeviceFeatures word {}", self.dev_sel);
            }
            VIRTIO_MMIO_QUEUE_NUM_MAX => {
                let want = self.max_sizes.get(sel).map_or(0, |&m| u32::from(m));
                assert_eq!(value, want, "QueueNumMax of queue {sel}");
            }
            VIRTIO_MMIO_QUEUE_READY => {
                let want = self.queues.get(sel).map_or(0, |q| u32::from(q.ready));
                assert_eq!(value, want, "QueueReady of queue {sel}");
            }
            VIRTIO_MMIO_INTERRUPT_STATUS => {
                assert_eq!(value & !(VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG), 0);
            }
            VIRTIO_MMIO_STATUS => assert_eq!(value, status),
            VIRTIO_MMIO_CONFIG_GENERATION => assert_eq!(value, self.generation),
            _ => assert_eq!(
                value, 0,
                "read of write-only or unknown register {offset:#x}"
            ),
        }
    }

    /// A write as the driver does it, with the shadow updated by the spec's
    /// rules for what the device accepts.
    fn write(&mut self, offset: u64, size: usize, value: u64) {
        let bytes = value.to_le_bytes();
        let status_before = self.transport.status();
        let active_before = lock(&self.log).active;
        self.transport.write(offset, &bytes[..size]);
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) || size != 4 || !offset.is_multiple_of(4) {
            return;
        }
        let value = value as u32;
        let sel = self.queue_sel as usize;
        let configurable = status_before & DRIVER_OK == 0;
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.dev_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.drv_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                if status_before & DRIVER != 0 && status_before & FEATURES_OK == 0 {
                    match self.drv_sel {
                        0 => set_low(&mut self.driver_features, value),
                        1 => set_high(&mut self.driver_features, value),
                        _ => {}
                    }
                }
                assert_eq!(self.transport.driver_features(), self.driver_features);
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_READY => {
                if let Some(q) = self.queues.get_mut(sel)
                    && configurable
                    && value <= 1
                {
                    q.ready = value == 1;
                }
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => self.check_notify(value, active_before),
            VIRTIO_MMIO_STATUS => self.check_status_write(value, status_before, active_before),
            reg => {
                if let Some(q) = self.queues.get_mut(sel)
                    && configurable
                    && !q.ready
                {
                    match reg {
                        VIRTIO_MMIO_QUEUE_NUM => q.size = value,
                        VIRTIO_MMIO_QUEUE_DESC_LOW => set_low(&mut q.desc, value),
                        VIRTIO_MMIO_QUEUE_DESC_HIGH => set_high(&mut q.desc, value),
                        VIRTIO_MMIO_QUEUE_AVAIL_LOW => set_low(&mut q.avail, value),
                        VIRTIO_MMIO_QUEUE_AVAIL_HIGH => set_high(&mut q.avail, value),
                        VIRTIO_MMIO_QUEUE_USED_LOW => set_low(&mut q.used, value),
                        VIRTIO_MMIO_QUEUE_USED_HIGH => set_high(&mut q.used, value),
                        _ => {}
                    }
                }
            }
        }
    }

    fn check_notify(&mut self, value: u32, active: bool) {
        let log = lock(&self.log);
        for q in &log.queues {
            let signalled = match q.notify.read() {
                Ok(_) => true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                Err(e) => panic!("reading a notification eventfd: {e}"),
            };
            let want = active && u32::from(q.index) == value;
            assert_eq!(
                signalled, want,
                "QueueNotify {value}: queue {} signalled",
                q.index
            );
        }
    }

    fn check_status_write(&mut self, value: u32, before: u32, active_before: bool) {
        let after = self.transport.status();
        let log = lock(&self.log);
        if value == 0 {
            assert_eq!(after, 0, "status after reset");
            assert!(!log.active, "the device runs after a reset");
            assert!(log.acked.is_none(), "features survive a reset");
            drop(log);
            assert_eq!(
                self.transport.interrupt_status(),
                0,
                "InterruptStatus after reset"
            );
            self.shadow_reset();
            return;
        }
        assert_eq!(
            after & before,
            before,
            "status {before:#x} lost bits ({after:#x}) without a reset"
        );
        let added = after & !before & !NEEDS_RESET;
        assert_eq!(
            added & !value,
            0,
            "status bits {added:#x} the driver did not write ({value:#x})"
        );
        if added & FEATURES_OK != 0 {
            let f = self.driver_features;
            assert_eq!(
                log.acked,
                Some(f),
                "FEATURES_OK without the device acknowledging {f:#x}"
            );
            assert_eq!(f & !self.features, 0);
            assert_ne!(f & (1 << VIRTIO_F_VERSION_1), 0);
        }
        if added & DRIVER_OK != 0 {
            assert!(!active_before);
            if log.active {
                // Exactly the ready queues, as the driver programmed them.
                let ready: Vec<usize> = (0..self.queues.len())
                    .filter(|&i| self.queues[i].ready)
                    .collect();
                let got: Vec<usize> = log.queues.iter().map(|q| usize::from(q.index)).collect();
                assert_eq!(got, ready, "activated queues");
                for q in &log.queues {
                    let s = self.queues[usize::from(q.index)];
                    assert_eq!(u32::from(q.size), s.size, "queue {} size", q.index);
                    assert_eq!(
                        (q.desc, q.avail, q.used),
                        (s.desc, s.avail, s.used),
                        "queue {} rings",
                        q.index
                    );
                }
                assert_eq!(after & NEEDS_RESET, 0);
            } else {
                assert_ne!(
                    after & NEEDS_RESET,
                    0,
                    "a failed activation must set DEVICE_NEEDS_RESET"
                );
            }
        } else {
            assert_eq!(log.active, active_before, "activation without DRIVER_OK");
        }
    }

    fn check_state(&mut self) {
        let status = self.transport.status();
        assert_eq!(status & !KNOWN, 0, "undefined status bits {status:#x}");
        for (bit, needs) in [
            (DRIVER, ACK),
            (FEATURES_OK, DRIVER),
            (DRIVER_OK, FEATURES_OK),
        ] {
            if status & bit != 0 {
                assert_ne!(
                    status & needs,
                    0,
                    "status {status:#x}: {bit:#x} without {needs:#x}"
                );
            }
        }
        let log = lock(&self.log);
        assert_eq!(self.transport.is_activated(), log.active);
        if log.active {
            assert_ne!(status & DRIVER_OK, 0, "running without DRIVER_OK");
        }
        assert_eq!(self.transport.config_generation(), self.generation);
        let irqs = self.irq.count();
        assert!(irqs >= self.irq_count, "the interrupt count went down");
        self.irq_count = irqs;
    }
}

fn register(u: &mut Unstructured<'_>) -> Result<u64> {
    const REGS: &[u32] = &[
        VIRTIO_MMIO_MAGIC_VALUE,
        VIRTIO_MMIO_VERSION,
        VIRTIO_MMIO_DEVICE_ID,
        VIRTIO_MMIO_VENDOR_ID,
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
        VIRTIO_MMIO_QUEUE_DESC_LOW,
        VIRTIO_MMIO_QUEUE_DESC_HIGH,
        VIRTIO_MMIO_QUEUE_AVAIL_LOW,
        VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
        VIRTIO_MMIO_QUEUE_USED_LOW,
        VIRTIO_MMIO_QUEUE_USED_HIGH,
        VIRTIO_MMIO_CONFIG_GENERATION,
    ];
    Ok(match u.int_in_range(0..=9u8)? {
        0..=6 => u64::from(*u.choose(REGS)?),
        7 => u64::from(VIRTIO_MMIO_CONFIG) + u64::from(u.int_in_range(0..=32u8)?),
        8 => u64::from(u.int_in_range(0..=0x1ffu16)?),
        _ => u.arbitrary()?,
    })
}

fn value_for(u: &mut Unstructured<'_>, h: &Harness, offset: u64) -> Result<u64> {
    if !u.ratio(3, 4)? {
        return u.arbitrary();
    }
    let status = h.transport.status();
    Ok(u64::from(match offset as u32 {
        VIRTIO_MMIO_STATUS => {
            let next = *u.choose(&[ACK, DRIVER, FEATURES_OK, DRIVER_OK, FAILED, NEEDS_RESET, 0])?;
            if u.ratio(3, 4)? { status | next } else { next }
        }
        VIRTIO_MMIO_QUEUE_NUM => 1 << u.int_in_range(0..=16u32)?,
        VIRTIO_MMIO_QUEUE_SEL | VIRTIO_MMIO_QUEUE_NOTIFY => u.int_in_range(0..=4u32)?,
        VIRTIO_MMIO_DEVICE_FEATURES_SEL | VIRTIO_MMIO_DRIVER_FEATURES_SEL => {
            u.int_in_range(0..=2u32)?
        }
        VIRTIO_MMIO_DRIVER_FEATURES => {
            let word = if h.drv_sel == 1 {
                (h.features >> 32) as u32
            } else {
                h.features as u32
            };
            word & u.arbitrary::<u32>()?
        }
        VIRTIO_MMIO_QUEUE_READY => u.int_in_range(0..=2u32)?,
        VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_USED_LOW => {
            (u32::from(u.arbitrary::<u16>()?) & !1) % (MEM_SIZE as u32)
        }
        VIRTIO_MMIO_QUEUE_DESC_HIGH
        | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
        | VIRTIO_MMIO_QUEUE_USED_HIGH => {
            if u.ratio(7, 8)? {
                0
            } else {
                u.arbitrary()?
            }
        }
        _ => u.arbitrary()?,
    }))
}

fn fuzz(u: &mut Unstructured<'_>) -> Result<()> {
    let mem =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("memory");
    let nqueues = u.int_in_range(1..=3usize)?;
    let mut max_sizes = Vec::new();
    for _ in 0..nqueues {
        max_sizes.push(*u.choose(&[1u16, 2, 4, 16, 256, 1024, 32768])?);
    }
    let features = (1u64 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | (u64::from(u.arbitrary::<u16>()?) << 8)
        | (u64::from(u.arbitrary::<u8>()?) << 40);
    let log = Arc::new(Mutex::new(DeviceLog::default()));
    lock(&log).config = std::array::from_fn(|i| i as u8 ^ 0x5a);
    let device = FakeDevice {
        max_sizes: max_sizes.clone(),
        features,
        refuse_features: u.ratio(1, 16)?,
        fail_activation: u.ratio(1, 16)?,
        mem: mem.clone(),
        log: log.clone(),
    };
    let irq = Arc::new(RecordingIrq::new());
    let transport = MmioTransport::new(
        Box::new(device),
        mem,
        irq.clone(),
        Arc::new(NoopNotify),
        0xd000_0000,
    )
    .expect("transport");
    let mut h = Harness {
        transport,
        log,
        irq,
        queues: vec![ShadowQueue::default(); nqueues],
        max_sizes,
        features,
        dev_sel: 0,
        drv_sel: 0,
        driver_features: 0,
        queue_sel: 0,
        generation: 0,
        irq_count: 0,
    };
    h.shadow_reset();
    h.check_state();

    let steps = u.int_in_range(0..=200usize)?;
    for _ in 0..steps {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=19u8)? {
            0..=6 => {
                let offset = register(u)?;
                let size = *u.choose(&[4usize, 4, 4, 1, 2, 8])?;
                h.check_read(offset, size);
            }
            7..=14 => {
                let offset = register(u)?;
                let size = if u.ratio(7, 8)? {
                    4
                } else {
                    *u.choose(&[1usize, 2, 8])?
                };
                let value = value_for(u, &h, offset)?;
                h.write(offset, size, value);
            }
            15 => {
                // A driver's whole initialisation, with fuzzed features and
                // queues (mostly valid).
                let features = h.features & (u.arbitrary::<u64>()? | (1 << VIRTIO_F_VERSION_1));
                let mut setups = Vec::new();
                for index in 0..h.max_sizes.len() as u16 {
                    if u.ratio(1, 4)? {
                        continue;
                    }
                    let max = h.max_sizes[usize::from(index)];
                    let size = if u.ratio(7, 8)? {
                        max.min(256)
                    } else {
                        u.arbitrary()?
                    };
                    let base = u64::from(index) * 0x4000;
                    setups.push(QueueSetup {
                        index,
                        size,
                        desc: base,
                        driver: base + 0x1000,
                        device: if u.ratio(15, 16)? {
                            base + 0x2000
                        } else {
                            u.arbitrary()?
                        },
                    });
                }
                h.write(u64::from(VIRTIO_MMIO_STATUS), 4, 0);
                h.check_state();
                let mut steps: Vec<(u32, u64)> = vec![
                    (VIRTIO_MMIO_STATUS, u64::from(ACK)),
                    (VIRTIO_MMIO_STATUS, u64::from(ACK | DRIVER)),
                    (VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0),
                    (VIRTIO_MMIO_DRIVER_FEATURES, features & 0xffff_ffff),
                    (VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1),
                    (VIRTIO_MMIO_DRIVER_FEATURES, features >> 32),
                    (VIRTIO_MMIO_STATUS, u64::from(ACK | DRIVER | FEATURES_OK)),
                ];
                for q in &setups {
                    steps.extend([
                        (VIRTIO_MMIO_QUEUE_SEL, u64::from(q.index)),
                        (VIRTIO_MMIO_QUEUE_NUM, u64::from(q.size)),
                        (VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc & 0xffff_ffff),
                        (VIRTIO_MMIO_QUEUE_DESC_HIGH, q.desc >> 32),
                        (VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.driver & 0xffff_ffff),
                        (VIRTIO_MMIO_QUEUE_AVAIL_HIGH, q.driver >> 32),
                        (VIRTIO_MMIO_QUEUE_USED_LOW, q.device & 0xffff_ffff),
                        (VIRTIO_MMIO_QUEUE_USED_HIGH, q.device >> 32),
                        (VIRTIO_MMIO_QUEUE_READY, 1),
                    ]);
                }
                steps.push((
                    VIRTIO_MMIO_STATUS,
                    u64::from(ACK | DRIVER | FEATURES_OK | DRIVER_OK),
                ));
                for (reg, value) in steps {
                    h.write(u64::from(reg), 4, value);
                    h.check_state();
                }
            }
            16 => {
                let interrupt = lock(&h.log).interrupt.clone();
                if let Some(i) = interrupt {
                    let _ = i.trigger(InterruptType::UsedRing);
                    assert_ne!(h.transport.interrupt_status() & VIRTIO_MMIO_INT_VRING, 0);
                }
            }
            17 => {
                h.transport.config_changed().expect("config interrupt");
                h.generation = h.generation.wrapping_add(1);
                assert_ne!(h.transport.interrupt_status() & VIRTIO_MMIO_INT_CONFIG, 0);
            }
            18 => {
                let interrupt = lock(&h.log).interrupt.clone();
                if let Some(i) = interrupt {
                    i.signal_needs_reset().expect("needs reset");
                    assert_ne!(h.transport.status() & NEEDS_RESET, 0);
                }
            }
            _ => {
                let offset = u64::from(VIRTIO_MMIO_CONFIG) + u64::from(u.int_in_range(0..=40u8)?);
                let size = *u.choose(&[1usize, 2, 4, 8])?;
                let value = u.arbitrary()?;
                h.write(offset, size, value);
                h.check_read(offset, size);
            }
        }
        h.check_state();
    }
    Ok(())
}
