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
//! package's build script.
#![deny(missing_docs)]

pub mod guest;

pub use vmkit_blk as blk;
pub use vmkit_boot as boot;
pub use vmkit_devices as devices;
pub use vmkit_disk as disk;
pub use vmkit_hypervisor as hypervisor;
pub use vmkit_memory as memory;
pub use vmkit_net as net;
pub use vmkit_virtio as virtio;
