//! How devices interrupt the driver, and how the transport reaches the
//! VMM's interrupt and notification plumbing without knowing the
//! hypervisor.

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// The reasons in virtio-mmio's InterruptStatus register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptType {
    /// A used ring was updated (bit 0).
    UsedRing,
    /// The configuration space or the device status changed (bit 1). The
    /// virtio-mmio transport also increments ConfigGeneration: trigger it
    /// after the configuration changed.
    ConfigChange,
}

/// What a device calls to interrupt its driver. The transport implements
/// it: it records the reason where the driver will read it and raises the
/// device's interrupt line.
pub trait Interrupt: Send + Sync {
    /// Interrupts the driver for `kind`. Devices decide whether an
    /// interrupt is needed at all (`Queue::needs_notification`, which
    /// honours VIRTIO_RING_F_EVENT_IDX) before calling this.
    fn trigger(&self, kind: InterruptType) -> io::Result<()>;

    /// The device hit an error it cannot recover from without a reset:
    /// the transport sets DEVICE_NEEDS_RESET in the device status and
    /// interrupts the driver with [`InterruptType::ConfigChange`].
    ///
    /// The default (for interrupts that have no device status, such as a
    /// test's) returns an [`io::ErrorKind::Unsupported`] error.
    fn signal_needs_reset(&self) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this interrupt has no device status",
        ))
    }
}

/// A device's interrupt line, as the VMM wires it (an irqfd registered with
/// the hypervisor, so raising it does not go through the VMM).
pub trait IrqLine: Send + Sync {
    /// Raises the line (an edge).
    fn trigger(&self) -> io::Result<()>;
}

impl IrqLine for EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

/// Registration of queue notification addresses, as the VMM wires them
/// (ioeventfd with the hypervisor): a guest write of `datamatch` at `addr`
/// must signal `fd` instead of exiting to the VMM.
pub trait NotifyRegistrar: Send + Sync {
    /// Routes 32-bit writes of `datamatch` at guest physical `addr` to `fd`.
    fn register(&self, fd: &EventFd, addr: u64, datamatch: u32) -> io::Result<()>;
    /// Undoes [`NotifyRegistrar::register`].
    fn unregister(&self, fd: &EventFd, addr: u64, datamatch: u32) -> io::Result<()>;
}
