//! vmkit: reusable virtualization building blocks.
//!
//! Each building block is its own crate, re-exported here under a short
//! name:
//!
//! | module | crate | what it is |
//! |---|---|---|
//! | [`hypervisor`] | vmkit-hypervisor | `Hypervisor`/`Vm`/`Vcpu` traits and the KVM backend |
//! | [`memory`] | vmkit-memory | guest memory layout, allocation and registration |
//! | [`boot`] | vmkit-boot | x86_64 boot: long mode, kernel loading, zero page, MP table |
//! | [`devices`] | vmkit-devices | port-I/O and MMIO buses, serial, i8042, exit device |
//! | [`virtio`] | vmkit-virtio | the `VirtioDevice` trait and the virtio-mmio transport |
//! | [`disk`] | vmkit-disk | the `DiskImage` trait and disk image formats |
//! | [`blk`] | vmkit-blk | virtio-blk over any `DiskImage` |
//! | [`net`] | vmkit-net | tap devices, bridge helpers and virtio-net |
//!
//! [`guest`] holds vmkit's minimal guest, built from `crates/guest` by this
//! package's build script. The modules [`vcpu`], [`virtio_mmio`], [`acpi`]
//! and [`overhead`] are the composition pieces a VMM needs between the
//! crates: the vCPU run loop, wiring a virtio device to the VM, describing
//! the devices in ACPI, and measuring the VMM's own memory.
#![deny(missing_docs)]

pub mod acpi;
pub mod guest;
pub mod overhead;
pub mod vcpu;
pub mod virtio_mmio;

/// Errors of the composition helpers: the crates' own errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the hypervisor.
    #[error(transparent)]
    Hypervisor(#[from] vmkit_hypervisor::Error),
    /// From guest memory or the address allocator.
    #[error(transparent)]
    Memory(#[from] vmkit_memory::Error),
    /// From the buses.
    #[error(transparent)]
    Devices(#[from] vmkit_devices::Error),
    /// From the virtio transport.
    #[error(transparent)]
    Virtio(#[from] vmkit_virtio::Error),
    /// From the host.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Result type of the composition helpers.
pub type Result<T> = std::result::Result<T, Error>;

pub use vmkit_blk as blk;
pub use vmkit_boot as boot;
pub use vmkit_devices as devices;
pub use vmkit_disk as disk;
pub use vmkit_hypervisor as hypervisor;
pub use vmkit_memory as memory;
pub use vmkit_net as net;
pub use vmkit_virtio as virtio;
