//! The MP configuration table (Intel MultiProcessor Specification 1.4).

use crate::Report;
use crate::cpu;
use crate::mem;

/// Where the MP floating pointer may be: the last KiB of base memory and
/// the BIOS ROM area (spec 1.4, section 4).
const SEARCH_AREAS: [(u64, u64); 2] = [(0x9_fc00, 0xa_0000), (0xf_0000, 0x10_0000)];
const FLOATING_SIGNATURE: u32 = u32::from_le_bytes(*b"_MP_");
const FLOATING_SIZE: u64 = 16;
const CONFIG_SIGNATURE: u32 = u32::from_le_bytes(*b"PCMP");
/// Size of the configuration table header.
const CONFIG_HEADER_SIZE: u64 = 44;

/// Entry types and their sizes.
const ENTRY_PROCESSOR: u8 = 0;
const PROCESSOR_ENTRY_SIZE: u64 = 20;
const OTHER_ENTRY_SIZE: u64 = 8;
/// `cpu_flags` bits of a processor entry.
const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOTSTRAP: u8 = 1 << 1;

/// The processors the MP table lists as enabled.
pub struct Cpus {
    apic_ids: [u8; 256],
    count: usize,
    bsp: u8,
    lapic: u64,
}

impl Cpus {
    /// Local APIC IDs of the enabled processors, in table order.
    pub fn apic_ids(&self) -> &[u8] {
        &self.apic_ids[..self.count]
    }

    /// The bootstrap processor's local APIC ID.
    pub fn bsp(&self) -> u8 {
        self.bsp
    }

    /// Physical address of the local APIC registers.
    pub fn lapic(&self) -> u64 {
        self.lapic
    }
}

fn byte(addr: u64) -> u8 {
    mem::read(addr)
}

fn checksum(addr: u64, len: u64) -> u8 {
    mem::bytes(addr, len)
        .iter()
        .fold(0u8, |sum, &b| sum.wrapping_add(b))
}

/// Address of the first floating pointer with the right signature.
fn find_floating_pointer() -> Option<u64> {
    SEARCH_AREAS.iter().find_map(|&(start, end)| {
        (start..end)
            .step_by(16)
            .find(|&addr| mem::read::<u32>(addr) == FLOATING_SIGNATURE)
    })
}

/// Check `mptable`: the floating pointer and the configuration table are
/// found and their checksums hold, exactly one enabled BSP whose APIC ID is
/// ours, and as many enabled processors as `vmkit.cpus`.
pub fn check(cpus_param: Option<&str>, r: &mut Report) -> Option<Cpus> {
    const CHECK: &str = "mptable";
    let Some(expected) = cpus_param else {
        return r.fail(
            CHECK,
            format_args!("vmkit.cpus missing from the command line"),
        );
    };
    let Ok(expected) = expected.parse::<usize>() else {
        return r.fail(CHECK, format_args!("vmkit.cpus={expected} is not a number"));
    };

    let Some(fp) = find_floating_pointer() else {
        return r.fail(
            CHECK,
            format_args!("no \"_MP_\" floating pointer in 0x9fc00..0xa0000 or 0xf0000..0x100000"),
        );
    };
    // `fp` is 16-byte aligned in a search area: its 16 bytes are readable. The
    // configuration table is read only after `mem::readable` accepted it.
    let length = byte(fp + 8);
    if u64::from(length) * 16 != FLOATING_SIZE {
        return r.fail(
            CHECK,
            format_args!("floating pointer at {fp:#x} has length {length}, expected 1"),
        );
    }
    if checksum(fp, FLOATING_SIZE) != 0 {
        return r.fail(
            CHECK,
            format_args!("floating pointer at {fp:#x}: bad checksum"),
        );
    }
    let default_config = byte(fp + 11);
    if default_config != 0 {
        return r.fail(
            CHECK,
            format_args!(
                "floating pointer selects default configuration {default_config}, no table"
            ),
        );
    }
    let table = u64::from(mem::read::<u32>(fp + 4));
    if !mem::readable(table, CONFIG_HEADER_SIZE) {
        return r.fail(
            CHECK,
            format_args!("configuration table address {table:#x} is not in low memory"),
        );
    }
    let signature = mem::read::<u32>(table);
    if signature != CONFIG_SIGNATURE {
        return r.fail(CHECK, format_args!("no \"PCMP\" signature at {table:#x}"));
    }
    let length = u64::from(mem::read::<u16>(table + 4));
    if length < CONFIG_HEADER_SIZE || !mem::readable(table, length) {
        return r.fail(
            CHECK,
            format_args!("configuration table at {table:#x} has bad length {length}"),
        );
    }
    if checksum(table, length) != 0 {
        return r.fail(
            CHECK,
            format_args!("configuration table at {table:#x}: bad checksum"),
        );
    }
    let entry_count = mem::read::<u16>(table + 34);
    let lapic = u64::from(mem::read::<u32>(table + 36));

    let mut cpus = Cpus {
        apic_ids: [0; 256],
        count: 0,
        bsp: 0,
        lapic,
    };
    let mut bsps = 0;
    let mut offset = CONFIG_HEADER_SIZE;
    for i in 0..entry_count {
        let entry = table + offset;
        let kind = if offset < length { byte(entry) } else { 0 };
        let size = match kind {
            ENTRY_PROCESSOR => PROCESSOR_ENTRY_SIZE,
            1..=4 => OTHER_ENTRY_SIZE,
            _ => return r.fail(CHECK, format_args!("entry {i} has unknown type {kind}")),
        };
        if offset + size > length {
            return r.fail(
                CHECK,
                format_args!("entry {i} runs past the table length {length}"),
            );
        }
        offset += size;
        if kind != ENTRY_PROCESSOR {
            continue;
        }
        let (id, flags) = (byte(entry + 1), byte(entry + 3));
        if flags & CPU_ENABLED == 0 {
            continue;
        }
        if cpus.apic_ids().contains(&id) {
            return r.fail(CHECK, format_args!("APIC ID {id} is listed twice"));
        }
        cpus.apic_ids[cpus.count] = id;
        cpus.count += 1;
        if flags & CPU_BOOTSTRAP != 0 {
            bsps += 1;
            cpus.bsp = id;
        }
    }

    let me = cpu::apic_id();
    if bsps != 1 {
        return r.fail(
            CHECK,
            format_args!("{bsps} enabled processors are flagged BSP, expected 1"),
        );
    }
    if cpus.bsp != me {
        return r.fail(
            CHECK,
            format_args!("the BSP's APIC ID is {}, but this CPU's is {me}", cpus.bsp),
        );
    }
    if cpus.count != expected {
        return r.fail(
            CHECK,
            format_args!("{} enabled CPUs, vmkit.cpus is {expected}", cpus.count),
        );
    }
    r.pass(CHECK, format_args!("{} CPUs, BSP apic id {me}", cpus.count));
    Some(cpus)
}
