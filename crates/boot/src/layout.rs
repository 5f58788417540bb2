//! Where the x86_64 boot structures live in guest physical memory.
//!
//! The low megabyte follows the PC conventions Linux expects; everything the
//! VMM writes before the first instruction runs is listed here so that the
//! pieces cannot overlap. `0x1000..0x6000` and `0x8000..0x9000` are left free
//! for the guest (the minimal guest puts its application-processor start-up
//! code at `0x8000`, SIPI vector `0x08`).

/// Boot GDT (4 entries: null, unused, 64-bit code 0x10, data 0x18).
pub const BOOT_GDT_START: u64 = 0x500;
/// Maximum number of boot GDT entries.
pub const BOOT_GDT_MAX: usize = 4;
/// Boot IDT (empty; the guest installs its own).
pub const BOOT_IDT_START: u64 = 0x520;
/// Initial stack pointer of the boot vCPU (the stack grows down from here
/// into `0x6000..0x7000`).
pub const BOOT_STACK_POINTER: u64 = 0x6ff0;
/// The Linux "zero page" (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Page map level 4 table.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table (one, covering the first 512 GiB).
pub const PDPTE_START: u64 = 0xa000;
/// First of the page directories (one per identity-mapped GiB).
pub const PDE_START: u64 = 0xb000;
/// How many GiB the boot page tables identity-map with 2 MiB pages: the
/// whole 32-bit space, so the guest reaches the local APIC, the IOAPIC and
/// MMIO devices below 4 GiB.
pub const IDENTITY_MAP_GIB: u64 = 4;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line, terminating NUL included.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the extended BIOS data area; the MP table is written here, and
/// the e820 map marks `EBDA_START..HIMEM_START` reserved.
pub const EBDA_START: u64 = 0x9fc00;
/// Where kernels are loaded (the first byte above the legacy megabyte).
pub const HIMEM_START: u64 = 0x10_0000;
/// The local APIC's MMIO page.
pub const APIC_START: u64 = 0xfee0_0000;
/// The IOAPIC's MMIO page.
pub const IOAPIC_START: u64 = 0xfec0_0000;
