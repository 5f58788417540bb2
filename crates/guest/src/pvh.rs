//! The PVH boot protocol's `struct hvm_start_info`.
//!
//! Offsets are those of Xen's `public/arch-x86/hvm/start_info.h`: the
//! version 0 fields, then (version 1) the memory map.

use crate::Report;
use crate::e820::E820Map;
use crate::mem;

/// `magic`: `XEN_HVM_START_MAGIC_VALUE`.
pub const MAGIC: u32 = 0x336e_c578;
/// `version`.
const VERSION: u64 = 4;
/// `nr_modules`: entries of the module list.
const NR_MODULES: u64 = 12;
/// `modlist_paddr`: the module list, `struct hvm_modlist_entry[nr_modules]`.
const MODLIST_PADDR: u64 = 16;
/// `cmdline_paddr`: the NUL-terminated command line (0: none).
const CMDLINE_PADDR: u64 = 24;
/// `rsdp_paddr`: the ACPI RSDP (0: none given).
const RSDP_PADDR: u64 = 32;
/// `memmap_paddr`: the memory map, `struct hvm_memmap_table_entry[]` (v1).
const MEMMAP_PADDR: u64 = 40;
/// `memmap_entries` (v1).
const MEMMAP_ENTRIES: u64 = 48;
/// Size of the version 1 structure (`reserved` at 52 included).
const SIZE_V1: u64 = 56;
/// Size of one `struct hvm_memmap_table_entry`: addr, size, type, reserved.
const MEMMAP_ENTRY_SIZE: u64 = 24;
/// Size of one `struct hvm_modlist_entry`: paddr, size, cmdline_paddr,
/// reserved.
const MODLIST_ENTRY_SIZE: u64 = 32;

/// The longest command line read (Linux's x86 `COMMAND_LINE_SIZE` is 2048;
/// vmkit allows 4096 bytes, NUL included).
pub const CMDLINE_MAX: u64 = 4096;

/// A `struct hvm_start_info` at a validated address.
#[derive(Clone, Copy)]
pub struct StartInfo {
    base: u64,
}

impl StartInfo {
    fn u32(&self, offset: u64) -> u32 {
        mem::read(self.base + offset)
    }

    fn u64(&self, offset: u64) -> u64 {
        mem::read(self.base + offset)
    }

    /// Check `pvh` and return the structure: the magic, version 1 or later
    /// (this guest needs the memory map), the memory map and the module
    /// list readable, and a command line given.
    pub fn check(base: u64, r: &mut Report) -> Option<Self> {
        const CHECK: &str = "pvh";
        if !mem::readable(base, SIZE_V1) {
            return r.fail(
                CHECK,
                format_args!("start_info pointer {base:#x} (%ebx) is not in low memory"),
            );
        }
        let si = Self { base };
        let magic = si.u32(0);
        if magic != MAGIC {
            return r.fail(
                CHECK,
                format_args!(
                    "start_info at {base:#x}: magic {magic:#010x}, expected {MAGIC:#010x}"
                ),
            );
        }
        let version = si.u32(VERSION);
        if version < 1 {
            return r.fail(
                CHECK,
                format_args!("start_info version {version} has no memory map (version 1 does)"),
            );
        }
        let (memmap, entries) = (si.u64(MEMMAP_PADDR), si.u32(MEMMAP_ENTRIES));
        if !mem::readable(memmap, u64::from(entries) * MEMMAP_ENTRY_SIZE) {
            return r.fail(
                CHECK,
                format_args!(
                    "memmap_paddr {memmap:#x} with {entries} entries is not in low memory"
                ),
            );
        }
        let (modlist, modules) = (si.u64(MODLIST_PADDR), si.u32(NR_MODULES));
        if modules != 0 && !mem::readable(modlist, u64::from(modules) * MODLIST_ENTRY_SIZE) {
            return r.fail(
                CHECK,
                format_args!(
                    "modlist_paddr {modlist:#x} with {modules} modules is not in low memory"
                ),
            );
        }
        for i in 0..u64::from(modules) {
            let entry = modlist + i * MODLIST_ENTRY_SIZE;
            let (paddr, size) = (mem::read::<u64>(entry), mem::read::<u64>(entry + 8));
            if !mem::readable(paddr, size) {
                return r.fail(
                    CHECK,
                    format_args!("module {i} at {paddr:#x} size {size:#x} is not in low memory"),
                );
            }
        }
        let cmdline = si.cmdline();
        if cmdline == 0 {
            return r.fail(CHECK, format_args!("cmdline_paddr is 0"));
        }
        r.pass(
            CHECK,
            format_args!(
                "start_info at {base:#x}, version {version}, {entries} memmap entries, cmdline at {cmdline:#x}, {modules} modules"
            ),
        );
        Some(si)
    }

    /// `cmdline_paddr`.
    pub fn cmdline(&self) -> u64 {
        self.u64(CMDLINE_PADDR)
    }

    /// `rsdp_paddr` (0: not given).
    pub fn rsdp(&self) -> u64 {
        self.u64(RSDP_PADDR)
    }

    /// The memory map, in e820 terms (`hvm_memmap_table_entry` types are the
    /// e820 types); `check` found all its entries readable.
    pub fn e820_map(&self) -> E820Map {
        let count = self.u32(MEMMAP_ENTRIES) as usize;
        E820Map::new(count, self.u64(MEMMAP_PADDR), MEMMAP_ENTRY_SIZE)
    }
}
