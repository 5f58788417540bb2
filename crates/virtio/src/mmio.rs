//! The virtio-mmio transport, version 2 (virtio 1.2, §4.2.2): the register
//! window a driver programs to negotiate features, set up queues and drive
//! the device status, plugged into vmkit's MMIO bus as a
//! [`BusDevice`](vmkit_devices::BusDevice).
//!
//! Queue notifications do not go through this code on the fast path: at
//! construction every queue gets an eventfd registered (through
//! [`NotifyRegistrar`]) at `QueueNotify` with the queue index as datamatch,
//! so a notification signals the device's event loop without an exit to the
//! VMM. A `QueueNotify` write that does reach [`MmioTransport`] (a VMM
//! without ioeventfd, a value no registration matches) is still delivered,
//! by signalling the same eventfd, and counted in [`MmioStats`].
//!
//! What the driver gets wrong (bad register accesses, queue set-up out of
//! turn, bad status writes, failed activations) is ignored and logged, each
//! kind through its own [`LogLimiter`](crate::LogLimiter) for the life of
//! the transport, so a hostile driver cannot flood the log.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use log::{debug, error, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_CONFIG_GENERATION, VIRTIO_MMIO_DEVICE_FEATURES,
    VIRTIO_MMIO_DEVICE_FEATURES_SEL, VIRTIO_MMIO_DEVICE_ID, VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING,
    VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_MAGIC_VALUE,
    VIRTIO_MMIO_QUEUE_AVAIL_HIGH, VIRTIO_MMIO_QUEUE_AVAIL_LOW, VIRTIO_MMIO_QUEUE_DESC_HIGH,
    VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_NUM_MAX, VIRTIO_MMIO_QUEUE_READY, VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_QUEUE_USED_HIGH, VIRTIO_MMIO_QUEUE_USED_LOW, VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_VENDOR_ID, VIRTIO_MMIO_VERSION,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmkit_devices::BusDevice;
use vmm_sys_util::eventfd::EventFd;

use crate::{
    ActivatedQueue, Error, GuestMemoryMmap, Interrupt, InterruptType, IrqLine, LogLimiter,
    NotifyRegistrar, Result, VirtioDevice,
};

/// Size of one virtio-mmio device's register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// "virt" in little endian, the value of the MagicValue register.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;

/// The virtio-mmio version this transport implements (the modern one).
pub const MMIO_VERSION: u32 = 2;

/// The VendorID register's value ("VMKT"; the spec leaves it free).
pub const MMIO_VENDOR_ID: u32 = 0x544b_4d56;

const STATUS_ACKNOWLEDGE: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const STATUS_DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const STATUS_DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const STATUS_FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const STATUS_NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
const STATUS_FAILED: u32 = VIRTIO_CONFIG_S_FAILED;
const STATUS_KNOWN: u32 = STATUS_ACKNOWLEDGE
    | STATUS_DRIVER
    | STATUS_DRIVER_OK
    | STATUS_FEATURES_OK
    | STATUS_NEEDS_RESET
    | STATUS_FAILED;

const INT_VRING: u32 = VIRTIO_MMIO_INT_VRING;
const INT_CONFIG: u32 = VIRTIO_MMIO_INT_CONFIG;

/// Counters of one transport, as returned by [`MmioTransport::stats`].
///
/// Divided by the number of requests a device completed, they give the
/// notifications and interrupts per request. Notifications that went
/// through the ioeventfd never reach the transport: the device's event loop
/// counts those ([`QueueWorker::notifications`](crate::QueueWorker::notifications)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmioStats {
    /// `QueueNotify` writes that exited to the VMM (zero when every
    /// notification hits its ioeventfd).
    pub notify_exits: u64,
    /// Used-ring interrupts raised on the device's line.
    pub used_ring_interrupts: u64,
    /// Configuration-change interrupts raised on the device's line.
    pub config_interrupts: u64,
}

/// The transport's half of [`Interrupt`]: the InterruptStatus register, the
/// configuration generation and the interrupt line, shared with the device's
/// event loop.
struct MmioInterrupt {
    status: AtomicU32,
    config_generation: AtomicU32,
    needs_reset: AtomicBool,
    irq: Arc<dyn IrqLine>,
    used_ring_interrupts: AtomicU64,
    config_interrupts: AtomicU64,
}

impl MmioInterrupt {
    fn raise(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::AcqRel);
        if bit == INT_CONFIG {
            self.config_interrupts.fetch_add(1, Ordering::Relaxed);
        } else {
            self.used_ring_interrupts.fetch_add(1, Ordering::Relaxed);
        }
        self.irq.trigger()
    }
}

impl Interrupt for MmioInterrupt {
    fn trigger(&self, kind: InterruptType) -> io::Result<()> {
        match kind {
            InterruptType::UsedRing => self.raise(INT_VRING),
            InterruptType::ConfigChange => {
                self.config_generation.fetch_add(1, Ordering::AcqRel);
                self.raise(INT_CONFIG)
            }
        }
    }

    fn signal_needs_reset(&self) -> io::Result<()> {
        if self.needs_reset.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.raise(INT_CONFIG)
    }
}

/// The limits on the log lines a driver can trigger through one transport,
/// one per kind of mistake so that a flood of one kind does not hide
/// another. They live as long as the transport: a device reset does not
/// start them over.
#[derive(Debug, Default)]
struct MmioLog {
    /// Accesses of the wrong size or alignment, writes of read-only or
    /// unknown registers.
    register: LogLimiter,
    /// Queue registers written when they cannot be (after DRIVER_OK, for a
    /// ready or absent queue) or with bad values; notifications of absent
    /// queues.
    queue: LogLimiter,
    /// Status and feature negotiation: status writes out of order or with
    /// undefined bits, DriverFeatures writes out of turn, features refused,
    /// FAILED.
    status: LogLimiter,
    /// DRIVER_OK refused: the queues or the device could not start.
    activation: LogLimiter,
    /// Host-side failures met at the driver's pace (signalling a queue's
    /// eventfd, raising the interrupt after a failed activation).
    host: LogLimiter,
}

/// What the driver wrote for one queue, applied to a [`Queue`] and
/// validated at DRIVER_OK.
#[derive(Clone, Copy, Debug)]
struct QueueRegs {
    max_size: u16,
    size: u32,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueRegs {
    fn new(max_size: u16) -> Self {
        QueueRegs {
            max_size,
            size: u32::from(max_size),
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    /// Builds the queue the device gets, or says why it cannot.
    fn build(&self, mem: &GuestMemoryMmap, event_idx: bool) -> std::result::Result<Queue, String> {
        let mut queue = Queue::new(self.max_size).map_err(|e| format!("max size: {e}"))?;
        let size = u16::try_from(self.size).map_err(|_| format!("size {}", self.size))?;
        queue
            .try_set_size(size)
            .map_err(|e| format!("size {size} (max {}): {e}", self.max_size))?;
        queue
            .try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(|e| format!("descriptor table {:#x}: {e}", self.desc))?;
        queue
            .try_set_avail_ring_address(GuestAddress(self.driver))
            .map_err(|e| format!("driver area {:#x}: {e}", self.driver))?;
        queue
            .try_set_used_ring_address(GuestAddress(self.device))
            .map_err(|e| format!("device area {:#x}: {e}", self.device))?;
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        // Checked here rather than with `Queue::is_valid`, which prints an
        // unlimited error line of its own for each bad queue.
        if !crate::rings_in_memory(&queue, mem) {
            return Err(format!(
                "rings outside guest memory (desc {:#x}, driver {:#x}, device {:#x}, size {size})",
                self.desc, self.driver, self.device
            ));
        }
        Ok(queue)
    }
}

fn set_low(reg: &mut u64, value: u32) {
    *reg = (*reg & !0xffff_ffff) | u64::from(value);
}

fn set_high(reg: &mut u64, value: u32) {
    *reg = (*reg & 0xffff_ffff) | (u64::from(value) << 32);
}

/// A virtio device behind a virtio-mmio (version 2) register window.
///
/// Put it on the MMIO bus at `base` with length [`MMIO_WINDOW_SIZE`]; the
/// bus hands it offsets within the window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<MmioInterrupt>,
    registrar: Arc<dyn NotifyRegistrar>,
    notify_addr: u64,
    /// One per queue, registered at `notify_addr` with its index as
    /// datamatch for the transport's whole life; devices get clones.
    notify_evts: Vec<EventFd>,
    queues: Vec<QueueRegs>,
    device_features: u64,
    device_features_sel: u32,
    driver_features: u64,
    driver_features_sel: u32,
    queue_sel: u32,
    status: u32,
    activated: bool,
    notify_exits: AtomicU64,
    log: MmioLog,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("notify_addr", &self.notify_addr)
            .field("status", &self.status())
            .field("driver_features", &self.driver_features)
            .field("queues", &self.queues)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Wraps `device` in a register window at guest physical `base`.
    ///
    /// Creates one notification eventfd per queue and registers it with
    /// `notify` at `base + 0x50` (QueueNotify) with the queue index as
    /// datamatch; they stay registered until the transport is dropped.
    /// Interrupts are raised on `irq`.
    ///
    /// Fails if the device offers no `VIRTIO_F_VERSION_1` (this transport
    /// is modern-only), has a queue whose maximum size is not a power of two
    /// between 1 and 32768, or if an eventfd cannot be created or
    /// registered.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq: Arc<dyn IrqLine>,
        notify: Arc<dyn NotifyRegistrar>,
        base: u64,
    ) -> Result<Self> {
        let device_features = device.device_features();
        if device_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(Error::Features(
                "the device does not offer VIRTIO_F_VERSION_1".into(),
            ));
        }
        let max_sizes = device.queue_max_sizes();
        if max_sizes.len() > usize::from(u16::MAX) {
            return Err(Error::InvalidQueue(format!(
                "{} queues, at most {} supported",
                max_sizes.len(),
                u16::MAX
            )));
        }
        let mut queues = Vec::with_capacity(max_sizes.len());
        for (index, &max) in max_sizes.iter().enumerate() {
            Queue::new(max).map_err(|e| {
                Error::InvalidQueue(format!("queue {index}: maximum size {max}: {e}"))
            })?;
            queues.push(QueueRegs::new(max));
        }
        let notify_addr = base
            .checked_add(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY))
            .ok_or_else(|| Error::InvalidQueue(format!("base address {base:#x} overflows")))?;

        let mut transport = MmioTransport {
            device,
            mem,
            interrupt: Arc::new(MmioInterrupt {
                status: AtomicU32::new(0),
                config_generation: AtomicU32::new(0),
                needs_reset: AtomicBool::new(false),
                irq,
                used_ring_interrupts: AtomicU64::new(0),
                config_interrupts: AtomicU64::new(0),
            }),
            registrar: notify,
            notify_addr,
            notify_evts: Vec::with_capacity(queues.len()),
            queues,
            device_features,
            device_features_sel: 0,
            driver_features: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            status: 0,
            activated: false,
            notify_exits: AtomicU64::new(0),
            log: MmioLog::default(),
        };
        // On an error, Drop unregisters the eventfds registered so far.
        for index in 0..transport.queues.len() {
            let evt = EventFd::new(libc::EFD_NONBLOCK)?;
            transport
                .registrar
                .register(&evt, notify_addr, index as u32)?;
            transport.notify_evts.push(evt);
        }
        Ok(transport)
    }

    /// The device behind the transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device behind the transport, to change it (for a configuration
    /// change, follow with [`MmioTransport::config_changed`]).
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// The guest physical address notifications are registered at
    /// (`base + 0x50`).
    pub fn notify_addr(&self) -> u64 {
        self.notify_addr
    }

    /// The Status register as the driver reads it.
    pub fn status(&self) -> u32 {
        let mut status = self.status;
        if self.interrupt.needs_reset.load(Ordering::Acquire) {
            status |= STATUS_NEEDS_RESET;
        }
        status
    }

    /// The InterruptStatus register as the driver reads it.
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt.status.load(Ordering::Acquire)
    }

    /// The ConfigGeneration register as the driver reads it.
    pub fn config_generation(&self) -> u32 {
        self.interrupt.config_generation.load(Ordering::Acquire)
    }

    /// The features the driver accepted (valid once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Whether the device was activated (DRIVER_OK accepted) and not reset
    /// since.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The interrupt the device gets at activation, for code outside the
    /// device that must interrupt the driver.
    pub fn interrupt(&self) -> Arc<dyn Interrupt> {
        self.interrupt.clone()
    }

    /// Tells the driver the device configuration changed: increments
    /// ConfigGeneration and raises a configuration-change interrupt.
    ///
    /// Change the configuration through [`MmioTransport::device_mut`] and
    /// call this under the same lock of the transport, so a driver reading
    /// the configuration never sees half of a change with an unchanged
    /// generation.
    pub fn config_changed(&self) -> io::Result<()> {
        self.interrupt.trigger(InterruptType::ConfigChange)
    }

    /// The transport's counters.
    pub fn stats(&self) -> MmioStats {
        MmioStats {
            notify_exits: self.notify_exits.load(Ordering::Relaxed),
            used_ring_interrupts: self.interrupt.used_ring_interrupts.load(Ordering::Relaxed),
            config_interrupts: self.interrupt.config_interrupts.load(Ordering::Relaxed),
        }
    }

    fn selected_queue(&self) -> Option<&QueueRegs> {
        self.queues.get(self.queue_sel as usize)
    }

    /// The selected queue, if the driver may still configure it.
    fn configurable_queue(&mut self, reg: &str) -> Option<&mut QueueRegs> {
        if self.status & STATUS_DRIVER_OK != 0 {
            if let Some(n) = self.log.queue.tick() {
                warn!("virtio-mmio: {reg} write after DRIVER_OK ignored ({n} queue errors so far)");
            }
            return None;
        }
        let sel = self.queue_sel;
        match self.queues.get_mut(sel as usize) {
            None => {
                if let Some(n) = self.log.queue.tick() {
                    warn!(
                        "virtio-mmio: {reg} write for absent queue {sel} ignored \
                         ({n} queue errors so far)"
                    );
                }
                None
            }
            Some(q) if q.ready => {
                if let Some(n) = self.log.queue.tick() {
                    warn!(
                        "virtio-mmio: {reg} write for ready queue {sel} ignored \
                         ({n} queue errors so far)"
                    );
                }
                None
            }
            Some(q) => Some(q),
        }
    }

    fn read_register(&self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => MMIO_VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size.into()),
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready.into()),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status(),
            VIRTIO_MMIO_STATUS => self.status(),
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation(),
            _ => {
                debug!("virtio-mmio: read of write-only or unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM => {
                if let Some(q) = self.configurable_queue("QueueNum") {
                    // Validated against QueueNumMax at DRIVER_OK, where a
                    // bad size makes the device need a reset.
                    q.size = value;
                    let max = q.max_size;
                    if (value == 0 || !value.is_power_of_two() || value > u32::from(max))
                        && let Some(n) = self.log.queue.tick()
                    {
                        warn!(
                            "virtio-mmio: QueueNum {value} is not a power of two <= {max} \
                             ({n} queue errors so far)"
                        );
                    }
                }
            }
            VIRTIO_MMIO_QUEUE_READY => self.write_queue_ready(value),
            VIRTIO_MMIO_QUEUE_DESC_LOW => {
                if let Some(q) = self.configurable_queue("QueueDescLow") {
                    set_low(&mut q.desc, value);
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                if let Some(q) = self.configurable_queue("QueueDescHigh") {
                    set_high(&mut q.desc, value);
                }
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => {
                if let Some(q) = self.configurable_queue("QueueDriverLow") {
                    set_low(&mut q.driver, value);
                }
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                if let Some(q) = self.configurable_queue("QueueDriverHigh") {
                    set_high(&mut q.driver, value);
                }
            }
            VIRTIO_MMIO_QUEUE_USED_LOW => {
                if let Some(q) = self.configurable_queue("QueueDeviceLow") {
                    set_low(&mut q.device, value);
                }
            }
            VIRTIO_MMIO_QUEUE_USED_HIGH => {
                if let Some(q) = self.configurable_queue("QueueDeviceHigh") {
                    set_high(&mut q.device, value);
                }
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => self.write_queue_notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!value, Ordering::AcqRel);
            }
            VIRTIO_MMIO_STATUS => self.write_status(value),
            _ => {
                if let Some(n) = self.log.register.tick() {
                    warn!(
                        "virtio-mmio: write of read-only or unknown register {offset:#x} ignored \
                         ({n} bad register accesses so far)"
                    );
                }
            }
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & STATUS_DRIVER == 0 || self.status & STATUS_FEATURES_OK != 0 {
            if let Some(n) = self.log.status.tick() {
                warn!(
                    "virtio-mmio: DriverFeatures write in status {:#x} ignored \
                     ({n} status errors so far)",
                    self.status
                );
            }
            return;
        }
        match self.driver_features_sel {
            0 => set_low(&mut self.driver_features, value),
            1 => set_high(&mut self.driver_features, value),
            sel if value != 0 => {
                if let Some(n) = self.log.status.tick() {
                    warn!(
                        "virtio-mmio: DriverFeatures {value:#x} for absent word {sel} ignored \
                         ({n} status errors so far)"
                    );
                }
            }
            _ => {}
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        if self.status & STATUS_DRIVER_OK != 0 {
            if let Some(n) = self.log.queue.tick() {
                warn!(
                    "virtio-mmio: QueueReady write after DRIVER_OK ignored ({n} queue errors so far)"
                );
            }
            return;
        }
        let sel = self.queue_sel;
        let Some(q) = self.queues.get_mut(sel as usize) else {
            if let Some(n) = self.log.queue.tick() {
                warn!(
                    "virtio-mmio: QueueReady write for absent queue {sel} ignored \
                     ({n} queue errors so far)"
                );
            }
            return;
        };
        match value {
            0 => q.ready = false,
            1 => q.ready = true,
            _ => {
                if let Some(n) = self.log.queue.tick() {
                    warn!(
                        "virtio-mmio: QueueReady value {value} ignored ({n} queue errors so far)"
                    );
                }
            }
        }
    }

    fn write_queue_notify(&mut self, value: u32) {
        self.notify_exits.fetch_add(1, Ordering::Relaxed);
        if !self.activated {
            debug!("virtio-mmio: notification of queue {value} before activation ignored");
            return;
        }
        match self.notify_evts.get(value as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1)
                    && let Some(n) = self.log.host.tick()
                {
                    error!("virtio-mmio: signalling queue {value}: {e} ({n} host errors so far)");
                }
            }
            None => {
                if let Some(n) = self.log.queue.tick() {
                    warn!(
                        "virtio-mmio: notification of absent queue {value} ignored \
                         ({n} queue errors so far)"
                    );
                }
            }
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let current = self.status;
        // NEEDS_RESET is the device's bit: the driver writes it back (it
        // writes what it read plus a bit) but cannot set or clear it.
        let wanted = value & !STATUS_NEEDS_RESET;
        if wanted & current != current {
            if let Some(n) = self.log.status.tick() {
                warn!(
                    "virtio-mmio: status {value:#x} clears bits of {current:#x} other than by \
                     reset; ignored ({n} status errors so far)"
                );
            }
            return;
        }
        if wanted & !STATUS_KNOWN != 0 {
            if let Some(n) = self.log.status.tick() {
                warn!(
                    "virtio-mmio: status {value:#x} has undefined bits; ignored \
                     ({n} status errors so far)"
                );
            }
            return;
        }
        let added = wanted & !current;
        if added & STATUS_FAILED != 0 {
            if let Some(n) = self.log.status.tick() {
                warn!(
                    "virtio-mmio: the driver gave up on the device (FAILED) \
                     ({n} status errors so far)"
                );
            }
            self.status |= STATUS_FAILED;
        }
        let added = added & !STATUS_FAILED;
        if added == 0 {
            return;
        }
        if self.status & STATUS_FAILED != 0 || self.status() & STATUS_NEEDS_RESET != 0 {
            if let Some(n) = self.log.status.tick() {
                warn!(
                    "virtio-mmio: status {value:#x} in status {:#x} ignored until reset \
                     ({n} status errors so far)",
                    self.status()
                );
            }
            return;
        }
        // Bits in the order of the initialisation sequence (§3.1.1), each
        // requiring the previous one.
        for (bit, needs) in [
            (STATUS_ACKNOWLEDGE, 0),
            (STATUS_DRIVER, STATUS_ACKNOWLEDGE),
            (STATUS_FEATURES_OK, STATUS_DRIVER),
            (STATUS_DRIVER_OK, STATUS_FEATURES_OK),
        ] {
            if added & bit == 0 {
                continue;
            }
            if self.status & needs != needs {
                if let Some(n) = self.log.status.tick() {
                    warn!(
                        "virtio-mmio: status bit {bit:#x} set before {needs:#x} (status {:#x}); \
                         ignored ({n} status errors so far)",
                        self.status
                    );
                }
                return;
            }
            match bit {
                STATUS_FEATURES_OK if !self.accept_features() => return,
                STATUS_DRIVER_OK => {
                    self.status |= STATUS_DRIVER_OK;
                    self.activate();
                    return;
                }
                _ => {}
            }
            self.status |= bit;
        }
    }

    /// Whether the driver's features can be accepted (FEATURES_OK).
    fn accept_features(&mut self) -> bool {
        let features = self.driver_features;
        if features & !self.device_features != 0 {
            if let Some(n) = self.log.status.tick() {
                warn!(
                    "virtio-mmio: driver features {features:#x} not offered by the device \
                     ({:#x}); FEATURES_OK refused ({n} status errors so far)",
                    self.device_features
                );
            }
            return false;
        }
        if features & (1 << VIRTIO_F_VERSION_1) == 0 {
            if let Some(n) = self.log.status.tick() {
                warn!(
                    "virtio-mmio: driver features {features:#x} lack VIRTIO_F_VERSION_1 \
                     (legacy driver); FEATURES_OK refused ({n} status errors so far)"
                );
            }
            return false;
        }
        if let Err(e) = self.device.ack_features(features) {
            if let Some(n) = self.log.status.tick() {
                warn!(
                    "virtio-mmio: device refused features {features:#x}: {e} \
                     ({n} status errors so far)"
                );
            }
            return false;
        }
        true
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        match self.activated_queues(event_idx) {
            Ok(queues) => {
                match self
                    .device
                    .activate(self.mem.clone(), self.interrupt.clone(), queues)
                {
                    Ok(()) => self.activated = true,
                    Err(e) => self.fail_activation(&format!("the device failed to start: {e}")),
                }
            }
            Err(e) => self.fail_activation(&e),
        }
    }

    fn activated_queues(
        &self,
        event_idx: bool,
    ) -> std::result::Result<Vec<ActivatedQueue>, String> {
        let mut queues = Vec::new();
        for (index, regs) in self.queues.iter().enumerate() {
            if !regs.ready {
                continue;
            }
            let queue = regs
                .build(&self.mem, event_idx)
                .map_err(|e| format!("queue {index}: {e}"))?;
            let notify = self
                .notify_evts
                .get(index)
                .ok_or_else(|| format!("queue {index}: no notification eventfd"))?
                .try_clone()
                .map_err(|e| format!("queue {index}: cloning the eventfd: {e}"))?;
            queues.push(ActivatedQueue {
                index: index as u16,
                queue,
                notify,
            });
        }
        Ok(queues)
    }

    fn fail_activation(&mut self, why: &str) {
        if let Some(n) = self.log.activation.tick() {
            error!(
                "virtio-mmio: device type {} not activated: {why}; NEEDS_RESET \
                 ({n} failed activations so far)",
                self.device.device_type()
            );
        }
        if let Err(e) = self.interrupt.signal_needs_reset()
            && let Some(n) = self.log.host.tick()
        {
            error!(
                "virtio-mmio: raising the configuration interrupt: {e} ({n} host errors so far)"
            );
        }
    }

    /// Device reset (Status written with 0): the device stops and every
    /// register returns to its initial value; the notification eventfds
    /// stay registered.
    fn reset(&mut self) {
        // The device is reset even if it never started: it may hold
        // acknowledged features.
        drop(self.device.reset());
        self.activated = false;
        for evt in &self.notify_evts {
            // Drain notifications the stopped device did not consume.
            let _ = evt.read();
        }
        for q in &mut self.queues {
            *q = QueueRegs::new(q.max_size);
        }
        self.device_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt.status.store(0, Ordering::Release);
        self.interrupt.needs_reset.store(false, Ordering::Release);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(config_offset) = offset.checked_sub(u64::from(VIRTIO_MMIO_CONFIG)) {
            self.device.read_config(config_offset, data);
            return;
        }
        // offset < 0x100 here.
        if data.len() != 4 || !offset.is_multiple_of(4) {
            if let Some(n) = self.log.register.tick() {
                warn!(
                    "virtio-mmio: {}-byte read at register offset {offset:#x} ignored \
                     ({n} bad register accesses so far)",
                    data.len()
                );
            }
            return;
        }
        let value = self.read_register(offset as u32);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(config_offset) = offset.checked_sub(u64::from(VIRTIO_MMIO_CONFIG)) {
            self.device.write_config(config_offset, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            if let Some(n) = self.log.register.tick() {
                warn!(
                    "virtio-mmio: {}-byte write at register offset {offset:#x} ignored \
                     ({n} bad register accesses so far)",
                    data.len()
                );
            }
            return;
        };
        if !offset.is_multiple_of(4) {
            if let Some(n) = self.log.register.tick() {
                warn!(
                    "virtio-mmio: unaligned write at register offset {offset:#x} ignored \
                     ({n} bad register accesses so far)"
                );
            }
            return;
        }
        self.write_register(offset as u32, u32::from_le_bytes(bytes));
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        for (index, evt) in self.notify_evts.iter().enumerate() {
            if let Err(e) = self
                .registrar
                .unregister(evt, self.notify_addr, index as u32)
            {
                error!("virtio-mmio: unregistering the notification of queue {index}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
