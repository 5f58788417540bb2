//! The PVH boot parameters: `struct hvm_start_info` with its memory map and
//! module list (Xen's `xen/include/public/arch-x86/hvm/start_info.h`,
//! version 1), written with linux-loader's [`PvhBootConfigurator`].
//!
//! Everything sits in the page at
//! [`crate::layout::PVH_INFO_START`]: `hvm_start_info` at
//! its start (EBX at the PVH entry), the module list at
//! [`PVH_MODLIST_START`] (the initrd is module 0) and the memory map (the
//! same entries as the zero page's e820 map) at [`PVH_MEMMAP_START`]. The
//! command line is the one at [`CMDLINE_START`].

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    XEN_HVM_START_MAGIC_VALUE, hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::layout::{
    CMDLINE_START, PVH_INFO_START, PVH_MAX_MEMMAP_ENTRIES, PVH_MEMMAP_START, PVH_MODLIST_START,
};
use crate::params::{BootInfo, E820Entry};
use crate::{Error, Result};

/// `hvm_start_info.version` written: 1 (has the memory map fields).
pub const PVH_START_INFO_VERSION: u32 = 1;

/// The `hvm_start_info` for `boot` and a memory map of `memmap_entries`
/// entries.
pub fn start_info(boot: &BootInfo, memmap_entries: u32) -> hvm_start_info {
    hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: PVH_START_INFO_VERSION,
        flags: 0,
        nr_modules: u32::from(boot.initrd.is_some()),
        modlist_paddr: if boot.initrd.is_some() {
            PVH_MODLIST_START
        } else {
            0
        },
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: boot.rsdp.map_or(0, |a| a.0),
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries,
        reserved: 0,
    }
}

/// Writes `hvm_start_info`, the memory map `e820` and the module list (the
/// initrd of `boot`, if any) to their places in the PVH page.
pub fn write_start_info<M: GuestMemoryBackend>(
    mem: &M,
    boot: &BootInfo,
    e820: &[E820Entry],
) -> Result<()> {
    if e820.len() > PVH_MAX_MEMMAP_ENTRIES {
        return Err(Error::TooManyE820Entries(e820.len()));
    }
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            // The e820 type numbers are Xen's XEN_HVM_MEMMAP_TYPE_* numbers.
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    // Bounded by PVH_MAX_MEMMAP_ENTRIES, checked above.
    let info = start_info(boot, memmap.len() as u32);
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if let Some(initrd) = boot.initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr.0,
            size: initrd.size,
            cmdline_paddr: 0,
            reserved: 0,
        };
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(Error::PvhStartInfo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::initrd::InitrdRange;
    use crate::loader::BootProtocol;
    use crate::params::{configure_system, e820_entries};
    use vm_memory::{Bytes, GuestMemoryMmap};

    fn u32_at(m: &GuestMemoryMmap<()>, a: u64) -> u32 {
        m.read_obj(GuestAddress(a)).unwrap()
    }
    fn u64_at(m: &GuestMemoryMmap<()>, a: u64) -> u64 {
        m.read_obj(GuestAddress(a)).unwrap()
    }

    #[test]
    fn start_info_fields_at_pvh_abi_offsets() {
        // The offsets of start_info.h (version 1), from raw bytes.
        let m = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 3 << 30),
            (GuestAddress(4 << 30), 1 << 30),
        ])
        .unwrap();
        let boot = BootInfo {
            protocol: BootProtocol::Pvh,
            initrd: Some(InitrdRange {
                addr: GuestAddress(0x7f00_0000),
                size: 0x12345,
            }),
            rsdp: Some(GuestAddress(0xe0000)),
        };
        configure_system(&m, "console=ttyS0 panic=1", 2, &boot).unwrap();
        let si = 0xf000;
        assert_eq!(u32_at(&m, si), 0x336e_c578, "magic at 0x00");
        assert_eq!(u32_at(&m, si + 0x04), 1, "version at 0x04");
        assert_eq!(u32_at(&m, si + 0x08), 0, "flags at 0x08");
        assert_eq!(u32_at(&m, si + 0x0c), 1, "nr_modules at 0x0c");
        let modlist = u64_at(&m, si + 0x10);
        assert_eq!(modlist, 0xf040, "modlist_paddr at 0x10");
        assert_eq!(
            u64_at(&m, si + 0x18),
            CMDLINE_START,
            "cmdline_paddr at 0x18"
        );
        assert_eq!(u64_at(&m, si + 0x20), 0xe0000, "rsdp_paddr at 0x20");
        let memmap = u64_at(&m, si + 0x28);
        assert_eq!(memmap, 0xf100, "memmap_paddr at 0x28");
        let n = u32_at(&m, si + 0x30);
        assert_eq!(n, 5, "memmap_entries at 0x30");
        assert_eq!(std::mem::size_of::<hvm_start_info>(), 0x38);

        // The command line it points at.
        let mut cl = [0u8; 22];
        m.read_slice(&mut cl, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&cl, b"console=ttyS0 panic=1\0");

        // Module 0: the initrd (paddr, size, cmdline_paddr, reserved).
        assert_eq!(u64_at(&m, modlist), 0x7f00_0000);
        assert_eq!(u64_at(&m, modlist + 8), 0x12345);
        assert_eq!(u64_at(&m, modlist + 16), 0);

        // The memory map: 24-byte entries (addr, size, type, reserved),
        // the same as the e820 map, adding up to the memory size.
        let e820 = e820_entries(&m).unwrap();
        let mut total = 0;
        for (i, e) in e820.iter().enumerate() {
            let at = memmap + 24 * i as u64;
            assert_eq!(u64_at(&m, at), e.addr, "entry {i}");
            assert_eq!(u64_at(&m, at + 8), e.size, "entry {i}");
            assert_eq!(u32_at(&m, at + 16), e.kind, "entry {i}");
            total += u64_at(&m, at + 8);
        }
        assert_eq!(u32_at(&m, memmap + 24 * 2 + 16), 3, "the ACPI area");
        assert_eq!(total, 4 << 30);

        // No zero page for PVH.
        assert_eq!(u32_at(&m, 0x7000 + 0x202), 0, "no HdrS");
    }

    #[test]
    fn no_initrd_no_modules() {
        let info = start_info(&BootInfo::default(), 4);
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
        assert_eq!(info.rsdp_paddr, 0);
        assert_eq!(info.memmap_entries, 4);
    }
}
