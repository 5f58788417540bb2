//! The error type of this crate.

use std::io;

/// Errors of guest memory creation, registration and address allocation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The guest was given no memory.
    #[error("the guest memory size is 0")]
    ZeroSize,
    /// The memory size is not a whole number of host pages.
    #[error(
        "the guest memory size {size:#x} is not a multiple of the host page size {page_size:#x}"
    )]
    Unaligned {
        /// The requested size in bytes.
        size: u64,
        /// The host page size in bytes.
        page_size: u64,
    },
    /// The guest physical address width is not one an x86_64 CPU reports.
    #[error("invalid guest physical address width {0} bits (expected 32 to 52)")]
    InvalidPhysBits(u8),
    /// The memory does not fit below the guest's physical address limit.
    #[error(
        "{requested} bytes of guest memory do not fit in the guest physical address space: at most {max} bytes"
    )]
    TooLarge {
        /// The requested size in bytes.
        requested: u64,
        /// The largest size that fits, in bytes.
        max: u64,
    },
    /// The memory is larger than the host's RAM and swap together.
    #[error("{requested} bytes of guest memory exceed the host's RAM and swap ({available} bytes)")]
    ExceedsHostMemory {
        /// The requested size in bytes.
        requested: u64,
        /// The host's total RAM plus swap in bytes.
        available: u64,
    },
    /// The host's memory size could not be read.
    #[error("cannot read the host's memory size: {0}")]
    HostMemory(#[source] io::Error),
    /// The host could not map memory for the guest.
    #[error("cannot map {size} bytes of host memory for guest RAM at {guest_addr:#x}: {source}")]
    Mmap {
        /// Guest physical address of the region.
        guest_addr: u64,
        /// Size of the region in bytes.
        size: u64,
        /// The error from `mmap(2)`.
        source: io::Error,
    },
    /// vm-memory rejected the guest memory regions.
    #[error("cannot build the guest memory: {0}")]
    GuestMemory(#[source] vm_memory::mmap::FromRangesError),
    /// The hypervisor refused a memory slot.
    #[error("cannot register guest memory slot {slot} ({size} bytes at {guest_addr:#x}): {source}")]
    RegisterMemory {
        /// The slot number.
        slot: u32,
        /// Guest physical address of the region.
        guest_addr: u64,
        /// Size of the region in bytes.
        size: u64,
        /// The hypervisor's error.
        source: vmkit_hypervisor::Error,
    },
    /// No free, suitably aligned range of the device MMIO window is large
    /// enough.
    #[error("no free device MMIO range of {size:#x} bytes aligned to {align:#x}")]
    MmioExhausted {
        /// The requested size in bytes.
        size: u64,
        /// The requested alignment in bytes.
        align: u64,
    },
    /// Every device interrupt line is in use.
    #[error("no free device interrupt line")]
    IrqExhausted,
    /// An allocation request or release was invalid (zero size, alignment
    /// not a power of two, range or line not allocated).
    #[error("invalid allocation request: {0}")]
    Allocator(#[source] vm_allocator::Error),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
