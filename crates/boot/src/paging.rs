//! Identity-mapping boot page tables for 64-bit entry.
//!
//! One PML4 entry points at one PDPT whose first [`IDENTITY_MAP_GIB`]
//! entries point at as many page directories; each page directory maps
//! 1 GiB with 2 MiB pages, so guest virtual address == guest physical
//! address for the whole 32-bit space (RAM, the local APIC, the IOAPIC and
//! MMIO devices).
//!
//! Every level has the User/Supervisor bit set. The minimal test guest runs
//! its work at CPL3 on these very tables (on this project's KVM, CPL0 code
//! goes through a slow instruction emulator while CPL3 code runs natively),
//! and a user-mode access needs U/S at every level of the walk. A Linux
//! kernel replaces these tables with its own in its first instructions, so
//! the bit costs it nothing.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::layout::{IDENTITY_MAP_GIB, PDE_START, PDPTE_START, PML4_START};
use crate::{Error, Result};

/// Entry flag: present.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Entry flag: writable.
pub const PTE_RW: u64 = 1 << 1;
/// Entry flag: accessible from user mode (CPL3).
pub const PTE_USER: u64 = 1 << 2;
/// Page directory entry flag: maps a 2 MiB page.
pub const PTE_PS: u64 = 1 << 7;

/// Flags of the PML4 and PDPT entries (0x7).
pub const TABLE_FLAGS: u64 = PTE_PRESENT | PTE_RW | PTE_USER;
/// Flags of the 2 MiB page directory entries (0x87).
pub const PAGE_2M_FLAGS: u64 = PTE_PRESENT | PTE_RW | PTE_USER | PTE_PS;

const PAGE_SIZE: usize = 0x1000;
const ENTRIES_PER_TABLE: u64 = 512;
const PAGE_2M: u64 = 2 << 20;

// The page directories must fit between PDE_START and the next boot
// structure, and the PDPT must come after the PML4 without overlap.
const _: () = assert!(PDPTE_START >= PML4_START + PAGE_SIZE as u64);
const _: () = assert!(PDE_START >= PDPTE_START + PAGE_SIZE as u64);
const _: () = assert!(IDENTITY_MAP_GIB <= ENTRIES_PER_TABLE);

/// First address after the boot page tables.
pub const PAGE_TABLES_END: u64 = PDE_START + IDENTITY_MAP_GIB * PAGE_SIZE as u64;

// The page directories end before the PVH start_info page.
const _: () = assert!(PAGE_TABLES_END <= crate::layout::PVH_INFO_START);

fn write(mem: &impl GuestMemoryBackend, what: &'static str, addr: u64, bytes: &[u8]) -> Result<()> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| Error::GuestMemory { what, addr, source })
}

/// Writes the identity-mapping page tables at `PML4_START`, `PDPTE_START`
/// and `PDE_START`; the value for CR3 is `PML4_START`.
///
/// Whole table pages are written, so entries left over in guest memory
/// from an earlier boot are cleared.
pub fn setup_page_tables<M: GuestMemoryBackend>(mem: &M) -> Result<()> {
    let mut pml4 = vec![0u8; PAGE_SIZE];
    pml4[..8].copy_from_slice(&(PDPTE_START | TABLE_FLAGS).to_le_bytes());
    write(mem, "boot PML4", PML4_START, &pml4)?;

    let mut pdpt = vec![0u8; PAGE_SIZE];
    for (i, entry) in pdpt
        .chunks_exact_mut(8)
        .take(IDENTITY_MAP_GIB as usize)
        .enumerate()
    {
        let pd = PDE_START + (i * PAGE_SIZE) as u64;
        entry.copy_from_slice(&(pd | TABLE_FLAGS).to_le_bytes());
    }
    write(mem, "boot PDPT", PDPTE_START, &pdpt)?;

    let mut pds = vec![0u8; IDENTITY_MAP_GIB as usize * PAGE_SIZE];
    for (n, entry) in pds.chunks_exact_mut(8).enumerate() {
        let page = n as u64 * PAGE_2M;
        entry.copy_from_slice(&(page | PAGE_2M_FLAGS).to_le_bytes());
    }
    write(mem, "boot page directories", PDE_START, &pds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn read(mem: &GuestMemoryMmap<()>, addr: u64) -> u64 {
        mem.read_obj(GuestAddress(addr)).unwrap()
    }

    #[test]
    fn identity_maps_four_gib_with_user_pages() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        // Dirty the tables' pages to check stale entries are cleared.
        mem.write_slice(&[0xffu8; 0x6000], GuestAddress(PML4_START))
            .unwrap();
        setup_page_tables(&mem).unwrap();

        assert_eq!(read(&mem, PML4_START), 0xa007, "PML4[0] -> PDPT, P|RW|US");
        for i in 1..512 {
            assert_eq!(read(&mem, PML4_START + i * 8), 0, "PML4[{i}]");
        }
        for i in 0..4 {
            assert_eq!(
                read(&mem, PDPTE_START + i * 8),
                (0xb000 + i * 0x1000) | 0x7,
                "PDPT[{i}]"
            );
        }
        for i in 4..512 {
            assert_eq!(read(&mem, PDPTE_START + i * 8), 0, "PDPT[{i}]");
        }
        for n in 0..4 * 512u64 {
            let e = read(&mem, PDE_START + n * 8);
            assert_eq!(e & 0xfff, 0x87, "PD entry {n} flags");
            assert_eq!(e & !0xfff, n << 21, "PD entry {n} maps 2 MiB * {n}");
        }
        // The last entry maps the page holding the local APIC (0xfee00000).
        let apic_entry = PDE_START + (0xfee0_0000u64 >> 21) * 8;
        assert_eq!(read(&mem, apic_entry), 0xfee0_0000 | 0x87);
        assert_eq!(PAGE_TABLES_END, 0xf000);
    }

    #[test]
    fn missing_memory_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0xa000)]).unwrap();
        assert!(matches!(
            setup_page_tables(&mem),
            Err(Error::GuestMemory {
                what: "boot PDPT",
                addr: 0xa000,
                ..
            })
        ));
    }
}
