//! The e820 memory map: the zero page's, or the PVH start_info's memory map
//! (same entry types).

use crate::Report;
use crate::cpu;
use crate::mem;
use crate::mem::{MIB, MMIO_HOLE_END, MMIO_HOLE_START};

/// Usable RAM.
const E820_RAM: u32 = 1;

/// Most e820 entries checked (the zero page holds 128,
/// `E820_MAX_ENTRIES_ZEROPAGE`; a longer PVH memory map fails the check).
pub const E820_MAX: usize = 128;

/// A memory map in guest memory: `count` entries `stride` bytes apart
/// from `table`, each starting with address (u64), size (u64) and type
/// (u32), the layout of both `boot_e820_entry` and `hvm_memmap_table_entry`.
#[derive(Clone, Copy)]
pub struct E820Map {
    /// The entry count the boot structure claims (may exceed [`E820_MAX`]).
    count: usize,
    table: u64,
    stride: u64,
}

impl E820Map {
    /// The map of `count` entries at `table`; the caller has checked that
    /// the first `min(count, E820_MAX)` entries are readable.
    pub fn new(count: usize, table: u64, stride: u64) -> Self {
        Self {
            count,
            table,
            stride,
        }
    }

    fn e820_count(&self) -> usize {
        self.count
    }

    /// Entry `i < min(count, E820_MAX)` as (address, size, type).
    fn e820_entry(&self, i: usize) -> (u64, u64, u32) {
        let entry = self.table + i as u64 * self.stride;
        (
            mem::read(entry),
            mem::read(entry + 8),
            mem::read(entry + 16),
        )
    }
}

/// Check `e820`: entries sorted and disjoint, no RAM in the MMIO hole, this
/// image inside RAM, and the sizes adding up to `vmkit.mem_mib` MiB.
pub fn check(bp: Option<E820Map>, mem_mib: Option<&str>, r: &mut Report) -> Option<()> {
    const CHECK: &str = "e820";
    let Some(bp) = bp else {
        return r.fail(CHECK, format_args!("no usable boot_params or start_info"));
    };
    let Some(mem_mib) = mem_mib else {
        return r.fail(
            CHECK,
            format_args!("vmkit.mem_mib missing from the command line"),
        );
    };
    let Ok(mem_mib) = mem_mib.parse::<u64>() else {
        return r.fail(
            CHECK,
            format_args!("vmkit.mem_mib={mem_mib} is not a number"),
        );
    };
    let n = bp.e820_count();
    if n == 0 || n > E820_MAX {
        return r.fail(
            CHECK,
            format_args!("e820_entries is {n}, expected 1..={E820_MAX}"),
        );
    }

    let mut total: u64 = 0;
    let mut prev_end: u64 = 0;
    for i in 0..n {
        let (addr, size, kind) = bp.e820_entry(i);
        let Some(end) = addr.checked_add(size).filter(|_| size != 0) else {
            return r.fail(
                CHECK,
                format_args!("entry {i} [{addr:#x} +{size:#x}] is empty or wraps"),
            );
        };
        if addr < prev_end {
            return r.fail(
                    CHECK,
                    format_args!("entry {i} at {addr:#x} overlaps or precedes the previous one ending at {prev_end:#x}"),
                )
                ;
        }
        if kind == E820_RAM && addr < MMIO_HOLE_END && end > MMIO_HOLE_START {
            return r.fail(
                CHECK,
                format_args!("RAM entry {i} [{addr:#x}, {end:#x}) is in the MMIO hole"),
            );
        }
        prev_end = end;
        total += size;
    }

    for (start, end) in cpu::image_ranges() {
        let inside = (0..n)
            .map(|i| bp.e820_entry(i))
            .any(|(addr, size, kind)| kind == E820_RAM && addr <= start && end <= addr + size);
        if !inside {
            return r.fail(
                CHECK,
                format_args!("the guest image [{start:#x}, {end:#x}) is not inside one RAM entry"),
            );
        }
    }

    if total != mem_mib * MIB {
        return r.fail(
            CHECK,
            format_args!(
                "{n} entries cover {} MiB ({total:#x} bytes), vmkit.mem_mib is {mem_mib}",
                total / MIB
            ),
        );
    }
    r.pass(CHECK, format_args!("{n} entries cover {} MiB", total / MIB));
    Some(())
}
