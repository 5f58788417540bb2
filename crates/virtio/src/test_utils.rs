//! Helpers for tests of device crates: an interrupt line that counts, a
//! notification registrar that records (and can play the hypervisor's
//! ioeventfd), a driver that programs an [`MmioTransport`] through its
//! registers, and [`capture_log`] (from
//! [`vmkit_devices::test_utils`], re-exported) to see what a test made a
//! device log.
//!
//! [`MmioTransport`]: crate::MmioTransport

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_DEVICE_FEATURES, VIRTIO_MMIO_DEVICE_FEATURES_SEL, VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    VIRTIO_MMIO_QUEUE_DESC_HIGH, VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_READY, VIRTIO_MMIO_QUEUE_SEL, VIRTIO_MMIO_QUEUE_USED_HIGH,
    VIRTIO_MMIO_QUEUE_USED_LOW, VIRTIO_MMIO_STATUS,
};
pub use virtio_queue::mock;
use vmkit_devices::BusDevice;
pub use vmkit_devices::test_utils::{LogLine, capture_log, limited_lines, warnings};
use vmm_sys_util::eventfd::EventFd;

use crate::{IrqLine, NotifyRegistrar};

/// An interrupt line that counts how often it was raised.
#[derive(Debug, Default)]
pub struct RecordingIrq {
    count: AtomicU64,
}

impl RecordingIrq {
    /// A line raised zero times.
    pub fn new() -> Self {
        Self::default()
    }

    /// How often the line was raised.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }
}

impl IrqLine for RecordingIrq {
    fn trigger(&self) -> io::Result<()> {
        self.count.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// A registrar that registers nothing: every notification then reaches the
/// transport as a `QueueNotify` write.
#[derive(Debug, Default)]
pub struct NoopNotify;

impl NotifyRegistrar for NoopNotify {
    fn register(&self, _fd: &EventFd, _addr: u64, _datamatch: u32) -> io::Result<()> {
        Ok(())
    }

    fn unregister(&self, _fd: &EventFd, _addr: u64, _datamatch: u32) -> io::Result<()> {
        Ok(())
    }
}

/// A registrar that records registrations and, like the hypervisor's
/// ioeventfd, signals the registered eventfd on [`RecordingNotify::notify`].
#[derive(Debug, Default)]
pub struct RecordingNotify {
    registered: Mutex<Vec<(u64, u32, EventFd)>>,
    unregistered: Mutex<Vec<(u64, u32)>>,
}

impl RecordingNotify {
    /// A registrar with nothing registered.
    pub fn new() -> Self {
        Self::default()
    }

    /// The (address, datamatch) pairs currently registered, in
    /// registration order.
    pub fn registrations(&self) -> Vec<(u64, u32)> {
        lock(&self.registered)
            .iter()
            .map(|(addr, data, _)| (*addr, *data))
            .collect()
    }

    /// The (address, datamatch) pairs unregistered so far.
    pub fn unregistrations(&self) -> Vec<(u64, u32)> {
        lock(&self.unregistered).clone()
    }

    /// A guest 32-bit write of `value` at `addr`: signals the eventfd
    /// registered for it and returns true, or returns false if none matches
    /// (the write would exit to the VMM).
    pub fn notify(&self, addr: u64, value: u32) -> io::Result<bool> {
        let registered = lock(&self.registered);
        match registered
            .iter()
            .find(|(a, d, _)| *a == addr && *d == value)
        {
            Some((_, _, fd)) => fd.write(1).map(|()| true),
            None => Ok(false),
        }
    }

    /// Whether `fd` is the eventfd registered for (`addr`, `datamatch`)
    /// (same open file, compared by signalling one and reading the other).
    pub fn is_registered_fd(&self, fd: &EventFd, addr: u64, datamatch: u32) -> io::Result<bool> {
        if !self.notify(addr, datamatch)? {
            return Ok(false);
        }
        match fd.read() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl NotifyRegistrar for RecordingNotify {
    fn register(&self, fd: &EventFd, addr: u64, datamatch: u32) -> io::Result<()> {
        let mut registered = lock(&self.registered);
        if registered
            .iter()
            .any(|(a, d, _)| *a == addr && *d == datamatch)
        {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        registered.push((addr, datamatch, fd.try_clone()?));
        Ok(())
    }

    fn unregister(&self, _fd: &EventFd, addr: u64, datamatch: u32) -> io::Result<()> {
        let mut registered = lock(&self.registered);
        let Some(pos) = registered
            .iter()
            .position(|(a, d, _)| *a == addr && *d == datamatch)
        else {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        };
        registered.remove(pos);
        lock(&self.unregistered).push((addr, datamatch));
        Ok(())
    }
}

/// Where a driver put one split virtqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueSetup {
    /// Queue index.
    pub index: u16,
    /// QueueNum.
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Driver area (available ring) address.
    pub driver: u64,
    /// Device area (used ring) address.
    pub device: u64,
}

/// A virtio-mmio driver for tests: programs a transport through 32-bit
/// register accesses, as the Linux driver does.
pub struct MmioDriver<'a> {
    bus: &'a mut dyn BusDevice,
}

impl std::fmt::Debug for MmioDriver<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioDriver").finish_non_exhaustive()
    }
}

impl<'a> MmioDriver<'a> {
    /// A driver for the register window of `bus`.
    pub fn new(bus: &'a mut dyn BusDevice) -> Self {
        MmioDriver { bus }
    }

    /// Reads the 32-bit register at `offset`.
    pub fn read(&mut self, offset: u32) -> u32 {
        let mut data = [0u8; 4];
        self.bus.read(u64::from(offset), &mut data);
        u32::from_le_bytes(data)
    }

    /// Writes the 32-bit register at `offset`.
    pub fn write(&mut self, offset: u32, value: u32) {
        self.bus.write(u64::from(offset), &value.to_le_bytes());
    }

    /// Sets `bits` in the Status register, keeping those set.
    pub fn add_status(&mut self, bits: u32) {
        let status = self.read(VIRTIO_MMIO_STATUS);
        self.write(VIRTIO_MMIO_STATUS, status | bits);
    }

    /// The 64 device feature bits.
    pub fn device_features(&mut self) -> u64 {
        self.write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let low = self.read(VIRTIO_MMIO_DEVICE_FEATURES);
        self.write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let high = self.read(VIRTIO_MMIO_DEVICE_FEATURES);
        u64::from(low) | (u64::from(high) << 32)
    }

    /// Resets the device, sets ACKNOWLEDGE and DRIVER, writes `features`
    /// and sets FEATURES_OK. Returns whether the device kept FEATURES_OK.
    pub fn negotiate(&mut self, features: u64) -> bool {
        self.write(VIRTIO_MMIO_STATUS, 0);
        self.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.add_status(VIRTIO_CONFIG_S_DRIVER);
        self.write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.write(VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
        self.write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.write(VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
        self.add_status(VIRTIO_CONFIG_S_FEATURES_OK);
        self.read(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK != 0
    }

    /// Programs one queue and sets it ready.
    pub fn setup_queue(&mut self, q: QueueSetup) {
        self.write(VIRTIO_MMIO_QUEUE_SEL, u32::from(q.index));
        self.write(VIRTIO_MMIO_QUEUE_NUM, u32::from(q.size));
        self.write(VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc as u32);
        self.write(VIRTIO_MMIO_QUEUE_DESC_HIGH, (q.desc >> 32) as u32);
        self.write(VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.driver as u32);
        self.write(VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (q.driver >> 32) as u32);
        self.write(VIRTIO_MMIO_QUEUE_USED_LOW, q.device as u32);
        self.write(VIRTIO_MMIO_QUEUE_USED_HIGH, (q.device >> 32) as u32);
        self.write(VIRTIO_MMIO_QUEUE_READY, 1);
    }

    /// Sets DRIVER_OK and returns the Status register read back.
    pub fn driver_ok(&mut self) -> u32 {
        self.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
        self.read(VIRTIO_MMIO_STATUS)
    }

    /// The whole initialisation: [`MmioDriver::negotiate`], every queue of
    /// `queues`, DRIVER_OK. Returns the final Status register.
    pub fn init(&mut self, features: u64, queues: &[QueueSetup]) -> u32 {
        if !self.negotiate(features) {
            return self.read(VIRTIO_MMIO_STATUS);
        }
        for q in queues {
            self.setup_queue(*q);
        }
        self.driver_ok()
    }
}
