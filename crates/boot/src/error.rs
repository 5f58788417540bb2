//! The error type of the boot crate.

use vmkit_hypervisor::Error as HypervisorError;

/// Errors while preparing guest memory and vCPU state for boot.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing a boot structure to guest memory failed (usually: guest
    /// memory does not cover its address).
    #[error("cannot write the {what} to guest memory at {addr:#x}: {source}")]
    GuestMemory {
        /// Which structure was being written.
        what: &'static str,
        /// Its guest physical address.
        addr: u64,
        /// The error from vm-memory.
        source: vm_memory::GuestMemoryError,
    },
    /// Guest memory does not have the shape the x86_64 boot layout needs.
    #[error("unsupported guest memory layout: {0}")]
    MemoryLayout(String),
    /// A vCPU state operation failed.
    #[error("cannot {op} of vCPU: {source}")]
    Vcpu {
        /// What was being done (e.g. "set the special registers").
        op: &'static str,
        /// The hypervisor's error.
        source: HypervisorError,
    },
    /// The hypervisor refused to set an MSR the boot state needs.
    #[error("the hypervisor refused to set the required MSR {index:#x} ({name})")]
    MsrRefused {
        /// MSR index.
        index: u32,
        /// Its architectural name.
        name: &'static str,
    },
    /// The vCPU count is out of range.
    #[error("invalid number of vCPUs {0}: must be between 1 and {max}", max = crate::MAX_CPUS)]
    InvalidCpuCount(u8),
    /// A vCPU index is not below the vCPU count.
    #[error("vCPU index {index} is out of range for {num_cpus} vCPUs")]
    InvalidCpuIndex {
        /// The index given.
        index: u8,
        /// The vCPU count given.
        num_cpus: u8,
    },
    /// The kernel command line does not fit its buffer.
    #[error("the kernel command line is {len} bytes long; at most {max} bytes fit")]
    CmdlineTooLong {
        /// Its length in bytes.
        len: usize,
        /// The largest length accepted (the buffer minus the NUL).
        max: usize,
    },
    /// The kernel command line contains a NUL byte.
    #[error("the kernel command line contains a NUL byte at offset {0}")]
    CmdlineNul(usize),
    /// The kernel command line was refused (for example a non-printable
    /// character).
    #[error("invalid kernel command line: {0}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// The e820 map has more entries than the zero page holds.
    #[error("the e820 map has {0} entries; the zero page holds at most {max}", max = linux_loader::bootparam::E820_MAX_ENTRIES_ZEROPAGE)]
    TooManyE820Entries(usize),
    /// Reading the kernel image failed.
    #[error("cannot read the kernel image: {0}")]
    KernelRead(#[source] std::io::Error),
    /// The kernel image is neither an ELF file nor a bzImage.
    #[error("not an ELF or bzImage kernel image: {0}")]
    NotElf(&'static str),
    /// The bzImage's setup header is unusable.
    #[error("invalid bzImage: {0}")]
    InvalidBzImage(String),
    /// The bzImage's boot protocol is older than this loader supports.
    #[error(
        "the bzImage uses boot protocol {major}.{minor:02}; at least 2.06 is needed \
         (for cmdline_size)",
        major = version >> 8,
        minor = version & 0xff
    )]
    BzImageTooOld {
        /// The setup header's `version` field.
        version: u16,
    },
    /// The bzImage has no 64-bit entry point.
    #[error(
        "the bzImage has no 64-bit entry point (boot protocol {major}.{minor:02}, \
         xloadflags {xloadflags:#x}: XLF_KERNEL_64 needs protocol 2.12 and bit 0)",
        major = version >> 8,
        minor = version & 0xff
    )]
    BzImageNot64Bit {
        /// The setup header's `version` field.
        version: u16,
        /// The setup header's `xloadflags` field.
        xloadflags: u16,
    },
    /// The kernel does not fit in guest RAM.
    #[error("the kernel ({start:#x}..{end:#x}) is not inside guest RAM")]
    KernelOutsideRam {
        /// Where it would be loaded.
        start: u64,
        /// End (exclusive) of the memory it needs.
        end: u64,
    },
    /// The PVH boot protocol was asked for a kernel without a PVH entry.
    #[error("the kernel has no PVH entry point (no XEN_ELFNOTE_PHYS32_ENTRY note)")]
    NoPvhEntry,
    /// Reading the initrd failed.
    #[error("cannot read the initrd: {0}")]
    InitrdRead(#[source] std::io::Error),
    /// The initrd is empty.
    #[error("the initrd is empty")]
    InitrdEmpty,
    /// The initrd does not fit between the kernel and its highest address.
    #[error(
        "the initrd ({size} bytes) does not fit in guest RAM between the kernel end \
         {kernel_end:#x} and {limit:#x}"
    )]
    InitrdTooLarge {
        /// Its size in bytes.
        size: u64,
        /// End of the kernel.
        kernel_end: u64,
        /// First address the initrd may not reach (min of `initrd_addr_max + 1`
        /// and the end of low RAM).
        limit: u64,
    },
    /// The ACPI tables do not fit their area.
    #[error("the ACPI tables need {size:#x} bytes; {max:#x} fit at {start:#x}")]
    AcpiTooLarge {
        /// Bytes needed.
        size: u64,
        /// Bytes available.
        max: u64,
        /// Start of the area.
        start: u64,
    },
    /// The ACPI description is invalid.
    #[error("invalid ACPI description: {0}")]
    AcpiConfig(String),
    /// The kernel image is an ELF file this loader cannot use.
    #[error("invalid ELF kernel image: {0}")]
    InvalidElf(String),
    /// A loadable segment of the kernel would overwrite a boot structure.
    #[error(
        "ELF kernel segment {index} ({start:#x}..{end:#x}) overlaps the {structure} \
         at {structure_start:#x}..{structure_end:#x}"
    )]
    SegmentOverlap {
        /// Program header index.
        index: usize,
        /// First guest physical address of the segment.
        start: u64,
        /// End (exclusive) of the segment.
        end: u64,
        /// The boot structure it overlaps.
        structure: &'static str,
        /// First address of the structure.
        structure_start: u64,
        /// End (exclusive) of the structure.
        structure_end: u64,
    },
    /// A loadable segment of the kernel lies (partly) outside guest RAM.
    #[error("ELF kernel segment {index} ({start:#x}..{end:#x}) is not inside guest RAM")]
    SegmentOutsideRam {
        /// Program header index.
        index: usize,
        /// First guest physical address of the segment.
        start: u64,
        /// End (exclusive) of the segment.
        end: u64,
    },
    /// linux-loader failed to load the kernel.
    #[error("cannot load the kernel image: {msg}")]
    Load {
        /// What went wrong, in words.
        msg: &'static str,
        /// linux-loader's error.
        source: linux_loader::loader::Error,
    },
    /// linux-loader failed to write the zero page.
    #[error("cannot write the zero page: {0}")]
    BootParams(#[source] linux_loader::configurator::Error),
    /// linux-loader failed to write the PVH start_info.
    #[error("cannot write the PVH start_info: {0}")]
    PvhStartInfo(#[source] linux_loader::configurator::Error),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
