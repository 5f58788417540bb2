//! virtio for vmkit: the [`VirtioDevice`] trait that device crates
//! implement, and the virtio-mmio (version 2) transport that carries their
//! queues, on rust-vmm's virtio-queue.
//!
//! The crate does not know the hypervisor: queue notifications reach
//! devices through [`NotifyRegistrar`] (ioeventfd) and interrupts leave
//! through [`IrqLine`] (irqfd), two small traits the VMM implements.
//!
//! Every warning or error a driver can trigger goes through a
//! [`LogLimiter`], so a hostile guest cannot flood the VMM's log; device
//! crates use it too, and drive their queues with [`pop_chain`],
//! [`add_used`], [`avail_index_invalid`] and [`rings_in_memory`], which
//! spare them virtio-queue's own unlimited error lines.
//!
//! # Example
//!
//! A device on a virtio-mmio window, as a VMM wires it (here without a
//! hypervisor: the registrar records nothing and the interrupt line is a
//! plain eventfd).
//!
//! ```
//! use std::io;
//! use std::sync::Arc;
//!
//! use vm_memory::GuestAddress;
//! use vmkit_devices::BusDevice;
//! use vmkit_virtio::{
//!     ActivatedQueue, GuestMemoryMmap, Interrupt, MmioTransport, NotifyRegistrar, VirtioDevice,
//!     MMIO_MAGIC_VALUE,
//! };
//! use vmm_sys_util::eventfd::EventFd;
//!
//! /// A device with one queue and no configuration space.
//! struct Nothing;
//!
//! impl VirtioDevice for Nothing {
//!     fn device_type(&self) -> u32 { 0x1000 }
//!     fn queue_max_sizes(&self) -> &[u16] { &[256] }
//!     fn device_features(&self) -> u64 { 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1 }
//!     fn ack_features(&mut self, _features: u64) -> vmkit_virtio::Result<()> { Ok(()) }
//!     fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
//!     fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
//!     fn activate(
//!         &mut self,
//!         _mem: GuestMemoryMmap,
//!         _interrupt: Arc<dyn Interrupt>,
//!         _queues: Vec<ActivatedQueue>,
//!     ) -> vmkit_virtio::Result<()> {
//!         Ok(())
//!     }
//!     fn reset(&mut self) -> Vec<EventFd> { Vec::new() }
//! }
//!
//! /// A VMM would call KVM_IOEVENTFD here.
//! struct NoIoeventfd;
//!
//! impl NotifyRegistrar for NoIoeventfd {
//!     fn register(&self, _fd: &EventFd, _addr: u64, _datamatch: u32) -> io::Result<()> { Ok(()) }
//!     fn unregister(&self, _fd: &EventFd, _addr: u64, _datamatch: u32) -> io::Result<()> { Ok(()) }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)])?;
//! // A VMM registers this eventfd as an irqfd.
//! let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
//! let mut transport = MmioTransport::new(
//!     Box::new(Nothing),
//!     mem,
//!     irq,
//!     Arc::new(NoIoeventfd),
//!     0xd000_0000,
//! )?;
//! assert_eq!(transport.notify_addr(), 0xd000_0050);
//!
//! // What a vCPU's MMIO exit at 0xd000_0000 turns into.
//! let mut magic = [0u8; 4];
//! transport.read(0, &mut magic);
//! assert_eq!(u32::from_le_bytes(magic), MMIO_MAGIC_VALUE);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod device;
mod interrupt;
mod mmio;
mod queue;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
mod worker;

pub use device::{ActivatedQueue, VirtioDevice, read_config_space};
pub use interrupt::{Interrupt, InterruptType, IrqLine, NotifyRegistrar};
pub use mmio::{
    MMIO_MAGIC_VALUE, MMIO_VENDOR_ID, MMIO_VERSION, MMIO_WINDOW_SIZE, MmioStats, MmioTransport,
};
pub use queue::{add_used, avail_index_invalid, pop_chain, rings_in_memory};
pub use worker::{QueueHandler, QueueWorker};

pub use virtio_queue;
/// The limiter of guest-triggered log lines, from vmkit-devices (where
/// the legacy devices use it too).
pub use vmkit_devices::LogLimiter;

/// Guest memory as vmkit maps it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Errors of the virtio layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The driver's feature selection cannot work with this device.
    #[error("unsupported feature combination: {0}")]
    Features(String),
    /// The device could not start.
    #[error("activation failed: {0}")]
    Activate(String),
    /// A device's queue description cannot be served (a maximum size that
    /// is not a power of two up to 32768, too many queues).
    #[error("invalid queue: {0}")]
    InvalidQueue(String),
    /// An I/O error from an eventfd, a thread or a backend.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
