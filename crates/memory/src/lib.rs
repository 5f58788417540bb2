//! Guest memory layout, allocation and registration, on vm-memory.
//!
//! - [`layout`]: the x86_64 guest physical address layout (RAM around the
//!   MMIO hole below 4 GiB, the device MMIO window, device interrupt lines).
//! - [`create_guest_memory`]: guest RAM as a vm-memory [`GuestMemoryMmap`],
//!   with checks a user can act on ([`check_size`], [`check_host_memory`]).
//! - [`register_guest_memory`]: hands the RAM to a
//!   [`Vm`](vmkit_hypervisor::Vm), one memory slot per region.
//! - [`SystemAllocator`]: device MMIO ranges and interrupt lines.
//!
//! # Example
//!
//! ```
//! use vmkit_memory::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
//! use vmkit_memory::{SystemAllocator, create_guest_memory, layout};
//!
//! // 512 MiB for a guest with 39-bit physical addresses.
//! let mem = create_guest_memory(512 << 20, 39)?;
//! assert_eq!(mem.num_regions(), 1);
//! mem.write_obj(0x1234u16, GuestAddress(0x1000))?;
//!
//! let mut alloc = SystemAllocator::new()?;
//! let mmio = alloc.allocate_mmio(0x1000, 0x1000)?;
//! assert!(mmio.start() >= layout::DEVICE_MMIO_START);
//! let irq = alloc.allocate_irq()?;
//! assert_eq!(irq, layout::IRQ_BASE);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod allocator;
mod error;
mod guest;
pub mod layout;

pub use allocator::SystemAllocator;
pub use error::{Error, Result};
pub use guest::{
    check_host_memory, check_size, create_guest_memory, host_memory_size, host_page_size,
    register_guest_memory,
};
pub use vm_allocator::RangeInclusive;
pub use vm_memory;

/// Guest RAM: vm-memory's mmap-backed guest memory, without dirty-page
/// tracking.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
