//! Where the x86_64 boot structures live in guest physical memory.
//!
//! The low megabyte follows the PC conventions Linux expects; everything the
//! VMM writes before the first instruction runs is listed here so that the
//! pieces cannot overlap. `0x1000..0x6000` and `0x8000..0x9000` are left free
//! for the guest (the minimal guest puts its application-processor start-up
//! code at `0x8000`, SIPI vector `0x08`).
//!
//! | range | what |
//! |---|---|
//! | `0x0500..0x0528` | boot GDT and IDT |
//! | `0x6000..0x7000` | boot stack (64-bit entries) |
//! | `0x7000..0x8000` | zero page (`struct boot_params`) |
//! | `0x9000..0xf000` | boot page tables (PML4, PDPT, 4 page directories) |
//! | `0xf000..0x10000` | PVH `hvm_start_info`, module list and memory map |
//! | `0x20000..0x21000` | kernel command line |
//! | `0x9fc00..0xa0000` | EBDA: MP floating pointer and table |
//! | `0xe0000..0x100000` | ACPI: RSDP at `0xe0000`, then DSDT, FADT, MADT, XSDT |
//! | `0x100000..` | kernel, then the initrd as high as possible in low RAM |

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
/// The PVH `struct hvm_start_info` (56 bytes), in the page after the boot
/// page tables, written only for the PVH boot protocol. EBX holds this
/// address at the PVH entry.
pub const PVH_INFO_START: u64 = 0xf000;
/// The PVH module list (`struct hvm_modlist_entry`, 32 bytes each: the
/// initrd is module 0), in the same page.
pub const PVH_MODLIST_START: u64 = PVH_INFO_START + 0x40;
/// Largest number of PVH modules (the room between the module list and the
/// memory map).
pub const PVH_MAX_MODULES: usize = 6;
/// The PVH memory map (`struct hvm_memmap_table_entry`, 24 bytes each: the
/// same map as the zero page's e820), to the end of the page.
pub const PVH_MEMMAP_START: u64 = PVH_INFO_START + 0x100;
/// Largest number of PVH memory map entries that fit the page.
pub const PVH_MAX_MEMMAP_ENTRIES: usize =
    ((PVH_INFO_START + 0x1000 - PVH_MEMMAP_START) / 24) as usize;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line, terminating NUL included.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the extended BIOS data area; the MP table is written here, and
/// the e820 map marks `EBDA_START..HIMEM_START` reserved.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of the ACPI tables area: the BIOS read-only area where a guest
/// that scans for the RSDP (`0xe0000..0x100000`, 16-byte boundaries) finds
/// it. The e820 map marks `ACPI_START..ACPI_END` as ACPI tables (type 3).
pub const ACPI_START: u64 = 0xe_0000;
/// End (exclusive) of the ACPI tables area.
pub const ACPI_END: u64 = HIMEM_START;
/// The ACPI RSDP (first thing in the ACPI area).
pub const RSDP_START: u64 = ACPI_START;
/// Where kernels are loaded (the first byte above the legacy megabyte).
pub const HIMEM_START: u64 = 0x10_0000;
/// The local APIC's MMIO page.
pub const APIC_START: u64 = 0xfee0_0000;
/// The IOAPIC's MMIO page.
pub const IOAPIC_START: u64 = 0xfec0_0000;

// The PVH page holds its module list and memory map without overlap, and
// the memory map holds every e820 entry the zero page can.
const _: () = assert!(PVH_MODLIST_START + 32 * PVH_MAX_MODULES as u64 <= PVH_MEMMAP_START);
const _: () = assert!(PVH_MAX_MEMMAP_ENTRIES >= 128);
const _: () = assert!(PVH_INFO_START + 0x1000 <= CMDLINE_START);
const _: () = assert!(EBDA_START < ACPI_START && ACPI_END <= HIMEM_START);
