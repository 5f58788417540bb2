//! The ACPI tables, checked for what Linux relies on (ACPI 6.5, chapter 5):
//! the RSDP and XSDT (or RSDT) with every table they list, the MADT's CPUs
//! and IOAPIC, the FADT's flags and DSDT, and, walking the DSDT's AML
//! ([`aml`](crate::aml)), the virtio-mmio devices (`_HID` `LNRO0005`) that
//! kernels without `virtio_mmio.device=` support find there.

use crate::Report;
use crate::aml::{self, Crs, Summary};
use crate::bootparams;
use crate::cpu;
use crate::mem;
use crate::mptable::Cpus;
use crate::virtio;

/// The RSDP's signature.
const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";
/// Bytes the ACPI 1.0 checksum covers.
const RSDP_V1_SIZE: u64 = 20;
/// Bytes the extended checksum covers (`ACPI_RSDP_XCHECKSUM_LENGTH`).
const RSDP_V2_SIZE: u64 = 36;
/// The BIOS data area's pointer to the EBDA (a real-mode segment).
const EBDA_SEGMENT_PTR: u64 = 0x40e;
/// Bytes of the EBDA searched.
const EBDA_SEARCH_SIZE: u64 = 1024;
/// The BIOS read-only area searched for the RSDP.
const BIOS_AREA: (u64, u64) = (0xe_0000, 0x10_0000);

/// Size of the common table header.
const HEADER_SIZE: u64 = 36;
/// Largest table this guest reads.
const TABLE_MAX: u64 = 1 << 20;
/// Most tables the XSDT may list.
const MAX_TABLES: usize = 32;

/// The `_HID` of a virtio-mmio device (what Linux's virtio_mmio driver
/// matches in ACPI).
const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// Most virtio-mmio devices compared.
const MAX_VIRTIO: usize = 32;

/// FADT fields.
const FADT_DSDT: u64 = 40;
const FADT_PM1A_CNT_BLK: u64 = 64;
const FADT_FLAGS: u64 = 112;
const FADT_MINOR_VERSION: u64 = 131;
const FADT_X_DSDT: u64 = 140;
const FADT_X_PM1A_CNT_BLK: u64 = 172;
const FADT_SLEEP_CONTROL_REG: u64 = 244;
/// `HW_REDUCED_ACPI` in the FADT flags.
const FADT_HW_REDUCED: u32 = 1 << 20;

/// MADT: the local APIC address, then the interrupt controller structures.
const MADT_LAPIC_ADDR: u64 = 36;
const MADT_ENTRIES: u64 = 44;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_LAPIC_OVERRIDE: u8 = 5;
const MADT_LOCAL_X2APIC: u8 = 9;
/// Local (x2)APIC flags: Enabled.
const MADT_ENABLED: u32 = 1 << 0;

/// A table whose header, length and checksum were checked.
#[derive(Clone, Copy)]
struct Table {
    signature: [u8; 4],
    addr: u64,
    len: u64,
}

impl Table {
    fn bytes(&self) -> &'static [u8] {
        mem::bytes(self.addr, self.len)
    }

    fn u8(&self, offset: u64) -> Option<u8> {
        (offset < self.len).then(|| mem::read(self.addr + offset))
    }

    fn u32(&self, offset: u64) -> Option<u32> {
        (offset + 4 <= self.len).then(|| mem::read(self.addr + offset))
    }

    fn u64(&self, offset: u64) -> Option<u64> {
        (offset + 8 <= self.len).then(|| mem::read(self.addr + offset))
    }

    fn revision(&self) -> u8 {
        self.bytes()[8]
    }

    fn name(&self) -> &str {
        // `check_table` accepted only ASCII letters, digits and '_'.
        core::str::from_utf8(&self.signature).unwrap_or("????")
    }
}

/// What check `acpi` found.
struct Tables {
    list: [Table; MAX_TABLES],
    count: usize,
    /// The DSDT the FADT points to, if a FADT was listed.
    dsdt: Option<Table>,
}

impl Tables {
    fn find(&self, signature: &[u8; 4]) -> Option<Table> {
        self.list[..self.count]
            .iter()
            .find(|t| &t.signature == signature)
            .copied()
    }
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b))
}

/// Runs checks `acpi`, `madt`, `fadt`, `acpi-virtio` and, if the FADT has a
/// sleep control register, `acpi-s5`. `rsdp` is the address the boot
/// structure gave (0: search for it, as Linux does).
pub fn check(rsdp: u64, cmdline: Option<&str>, cpus: Option<&Cpus>, r: &mut Report) {
    let tables = check_tables(rsdp, r);
    let tables = tables.as_ref();
    let cpus_param = cmdline.and_then(|line| bootparams::param(line, "vmkit.cpus"));
    check_madt(tables, cpus_param, cpus, r);
    let sleep_control = check_fadt(tables, r);
    let mut virtio = Virtio::default();
    let summary = walk_dsdt(tables, &mut virtio);
    check_virtio(tables, summary.as_ref(), &virtio, cmdline, r);
    if let Some(gas) = sleep_control {
        check_s5(gas, summary.as_ref(), r);
    }
}

/// The RSDP: at `hint` if non-zero (only there), else the first one with a
/// valid ACPI 1.0 checksum in the EBDA's first KiB or `0xe0000..0xfffff`,
/// 16-byte aligned (Linux's `acpi_find_root_pointer`).
fn find_rsdp(hint: u64, r: &mut Report) -> Option<u64> {
    const CHECK: &str = "acpi";
    if hint != 0 {
        if !mem::readable(hint, RSDP_V1_SIZE) {
            return r.fail(
                CHECK,
                format_args!("RSDP address {hint:#x} from the boot structure is not in low memory"),
            );
        }
        if mem::bytes(hint, 8) != RSDP_SIGNATURE {
            return r.fail(
                CHECK,
                format_args!("no \"RSD PTR \" signature at {hint:#x}, the RSDP address given"),
            );
        }
        return Some(hint);
    }
    let ebda = u64::from(mem::read::<u16>(EBDA_SEGMENT_PTR)) << 4;
    let mut areas = [(0, 0), BIOS_AREA];
    if ebda >= 0x400 && mem::readable(ebda, EBDA_SEARCH_SIZE) {
        areas[0] = (ebda, ebda + EBDA_SEARCH_SIZE);
    }
    let mut bad = None;
    for (start, end) in areas {
        for addr in (start..end).step_by(16) {
            if mem::bytes(addr, 8) != RSDP_SIGNATURE {
                continue;
            }
            if checksum(mem::bytes(addr, RSDP_V1_SIZE)) == 0 {
                return Some(addr);
            }
            bad.get_or_insert(addr);
        }
    }
    match bad {
        Some(addr) => r.fail(
            CHECK,
            format_args!("\"RSD PTR \" at {addr:#x} has a bad checksum, and no other RSDP found"),
        ),
        None => r.fail(CHECK, format_args!("no RSDP found")),
    }
}

/// The table at `addr`, if its header is readable, its length sane, its
/// signature ASCII (and `expect`, if given) and its checksum zero; else the
/// reason.
fn table_at(addr: u64, expect: Option<&[u8; 4]>) -> Result<Table, TableError> {
    if !mem::readable(addr, HEADER_SIZE) {
        return Err(TableError::Unreadable(addr));
    }
    let mut signature = [0u8; 4];
    signature.copy_from_slice(mem::bytes(addr, 4));
    if !signature
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || c == b'_')
    {
        return Err(TableError::Signature(addr, signature));
    }
    if expect.is_some_and(|e| *e != signature) {
        return Err(TableError::Signature(addr, signature));
    }
    let len = u64::from(mem::read::<u32>(addr + 4));
    if !(HEADER_SIZE..=TABLE_MAX).contains(&len) || !mem::readable(addr, len) {
        return Err(TableError::Length(addr, signature, len));
    }
    let table = Table {
        signature,
        addr,
        len,
    };
    if checksum(table.bytes()) != 0 {
        return Err(TableError::Checksum(addr, signature));
    }
    Ok(table)
}

enum TableError {
    Unreadable(u64),
    Signature(u64, [u8; 4]),
    Length(u64, [u8; 4], u64),
    Checksum(u64, [u8; 4]),
}

impl TableError {
    /// Reports the error; `what` says where the address came from.
    fn report(&self, check: &str, what: &str, r: &mut Report) {
        let sig = |s: &[u8; 4]| -> [char; 4] {
            s.map(|c| if c.is_ascii_graphic() { c as char } else { '?' })
        };
        match self {
            TableError::Unreadable(addr) => r.fail::<()>(
                check,
                format_args!("table address {addr:#x} ({what}) is not in low memory"),
            ),
            TableError::Signature(addr, s) => {
                let [a, b, c, d] = sig(s);
                r.fail::<()>(
                    check,
                    format_args!(
                        "table at {addr:#x} ({what}): unexpected signature \"{a}{b}{c}{d}\""
                    ),
                )
            }
            TableError::Length(addr, s, len) => {
                let [a, b, c, d] = sig(s);
                r.fail::<()>(
                    check,
                    format_args!(
                        "{a}{b}{c}{d} at {addr:#x} ({what}): length {len} is not in {HEADER_SIZE}..={TABLE_MAX} or not in low memory"
                    ),
                )
            }
            TableError::Checksum(addr, s) => {
                let [a, b, c, d] = sig(s);
                r.fail::<()>(
                    check,
                    format_args!("{a}{b}{c}{d} at {addr:#x} ({what}): bad checksum"),
                )
            }
        };
    }
}

/// Check `acpi`: the RSDP (checksum, and the extended checksum from
/// revision 2), the XSDT (revision 2; the RSDT before) and every table it
/// lists, plus the DSDT the FADT points to: header readable, length sane,
/// checksum zero.
fn check_tables(hint: u64, r: &mut Report) -> Option<Tables> {
    const CHECK: &str = "acpi";
    let rsdp = find_rsdp(hint, r)?;
    if checksum(mem::bytes(rsdp, RSDP_V1_SIZE)) != 0 {
        return r.fail(CHECK, format_args!("RSDP at {rsdp:#x}: bad checksum"));
    }
    let revision = mem::read::<u8>(rsdp + 15);
    let (root, entry_size, root_sig) = if revision >= 2 {
        if !mem::readable(rsdp, RSDP_V2_SIZE) {
            return r.fail(
                CHECK,
                format_args!("RSDP at {rsdp:#x} runs past low memory"),
            );
        }
        let length = mem::read::<u32>(rsdp + 20);
        if u64::from(length) < RSDP_V2_SIZE {
            return r.fail(
                CHECK,
                format_args!("RSDP at {rsdp:#x}: revision {revision} with length {length}"),
            );
        }
        if checksum(mem::bytes(rsdp, RSDP_V2_SIZE)) != 0 {
            return r.fail(
                CHECK,
                format_args!("RSDP at {rsdp:#x}: bad extended checksum"),
            );
        }
        (mem::read::<u64>(rsdp + 24), 8, b"XSDT")
    } else {
        (u64::from(mem::read::<u32>(rsdp + 16)), 4, b"RSDT")
    };
    let (root_name, listed) = if entry_size == 8 {
        ("XSDT", "listed in the XSDT")
    } else {
        ("RSDT", "listed in the RSDT")
    };
    let root = match table_at(root, Some(root_sig)) {
        Ok(t) => t,
        Err(e) => {
            e.report(CHECK, "the RSDP's root table", r);
            return None;
        }
    };
    let entries = (root.len - HEADER_SIZE) / entry_size;
    if !(root.len - HEADER_SIZE).is_multiple_of(entry_size) {
        return r.fail(
            CHECK,
            format_args!(
                "{root_name} length {} is not a whole number of entries",
                root.len
            ),
        );
    }
    if entries as usize > MAX_TABLES {
        return r.fail(
            CHECK,
            format_args!("{root_name} lists {entries} tables, this guest reads {MAX_TABLES}"),
        );
    }
    let mut tables = Tables {
        list: [Table {
            signature: [0; 4],
            addr: 0,
            len: 0,
        }; MAX_TABLES],
        count: 0,
        dsdt: None,
    };
    for i in 0..entries {
        let offset = HEADER_SIZE + i * entry_size;
        let addr = if entry_size == 8 {
            root.u64(offset)
        } else {
            root.u32(offset).map(u64::from)
        };
        // `entries` was computed from the length: the entry is inside.
        let addr = addr.unwrap_or(0);
        match table_at(addr, None) {
            Ok(t) => {
                tables.list[tables.count] = t;
                tables.count += 1;
            }
            Err(e) => {
                e.report(CHECK, listed, r);
                return None;
            }
        }
    }
    if let Some(fadt) = tables.find(b"FACP") {
        let Some(dsdt) = fadt_dsdt(&fadt) else {
            return r.fail(CHECK, format_args!("FACP has neither X_DSDT nor DSDT"));
        };
        match table_at(dsdt, Some(b"DSDT")) {
            Ok(t) => tables.dsdt = Some(t),
            Err(e) => {
                e.report(CHECK, "the FACP's DSDT", r);
                return None;
            }
        }
    }
    let names = Names(&tables);
    r.pass(
        CHECK,
        format_args!(
            "RSDP at {rsdp:#x} rev {revision}, {root_name} with {entries} tables: {names}"
        ),
    );
    Some(tables)
}

/// The listed tables' signatures, then the DSDT's.
struct Names<'a>(&'a Tables);

impl core::fmt::Display for Names<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        for (i, t) in self.0.list[..self.0.count].iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(t.name())?;
        }
        if self.0.dsdt.is_some() {
            f.write_str(" DSDT")?;
        }
        Ok(())
    }
}

/// The DSDT address Linux uses: X_DSDT if the FADT has it and it is
/// non-zero, else DSDT.
fn fadt_dsdt(fadt: &Table) -> Option<u64> {
    fadt.u64(FADT_X_DSDT)
        .filter(|&x| x != 0)
        .or_else(|| fadt.u32(FADT_DSDT).map(u64::from).filter(|&d| d != 0))
}

/// Check `madt`: the enabled local APIC and x2APIC entries are as many as
/// `vmkit.cpus`, the same APIC IDs as the MP table's (when it was valid),
/// ours among them; the local APIC address is the MP table's; an IOAPIC is
/// listed.
fn check_madt(
    tables: Option<&Tables>,
    cpus_param: Option<&str>,
    cpus: Option<&Cpus>,
    r: &mut Report,
) {
    const CHECK: &str = "madt";
    let Some(tables) = tables else {
        r.fail::<()>(CHECK, format_args!("no valid ACPI tables"));
        return;
    };
    let Some(madt) = tables.find(b"APIC") else {
        r.fail::<()>(CHECK, format_args!("the XSDT lists no APIC table"));
        return;
    };
    let Some(expected) = cpus_param.and_then(|n| n.parse::<usize>().ok()) else {
        r.fail::<()>(
            CHECK,
            format_args!("vmkit.cpus missing from the command line or not a number"),
        );
        return;
    };
    let Some(mut lapic) = madt.u32(MADT_LAPIC_ADDR).map(u64::from) else {
        r.fail::<()>(
            CHECK,
            format_args!("APIC table is {} bytes, too short", madt.len),
        );
        return;
    };
    let mut ids = [0u32; 256];
    let mut count = 0;
    let mut ioapic = None;
    let mut offset = MADT_ENTRIES;
    while offset < madt.len {
        let kind = madt.u8(offset).unwrap_or(0);
        let len = u64::from(madt.u8(offset + 1).unwrap_or(0));
        if len < 2 || offset + len > madt.len {
            r.fail::<()>(
                CHECK,
                format_args!("entry at offset {offset} (type {kind}) has bad length {len}"),
            );
            return;
        }
        let (id, flags) = match (kind, len) {
            (MADT_LOCAL_APIC, 8) => (madt.u8(offset + 3).map(u32::from), madt.u32(offset + 4)),
            (MADT_LOCAL_X2APIC, 16) => (madt.u32(offset + 4), madt.u32(offset + 8)),
            (MADT_IO_APIC, 12) => {
                ioapic = ioapic.or(madt.u32(offset + 4));
                (None, None)
            }
            (MADT_LAPIC_OVERRIDE, 12) => {
                lapic = madt.u64(offset + 4).unwrap_or(lapic);
                (None, None)
            }
            (MADT_LOCAL_APIC | MADT_LOCAL_X2APIC | MADT_IO_APIC | MADT_LAPIC_OVERRIDE, _) => {
                r.fail::<()>(
                    CHECK,
                    format_args!("entry at offset {offset} (type {kind}) has length {len}"),
                );
                return;
            }
            _ => (None, None),
        };
        offset += len;
        let (Some(id), Some(flags)) = (id, flags) else {
            continue;
        };
        if flags & MADT_ENABLED == 0 {
            continue;
        }
        if ids[..count].contains(&id) {
            r.fail::<()>(CHECK, format_args!("APIC ID {id} is listed twice"));
            return;
        }
        if count == ids.len() {
            r.fail::<()>(CHECK, format_args!("more than {} enabled CPUs", ids.len()));
            return;
        }
        ids[count] = id;
        count += 1;
    }
    let ids = &ids[..count];
    let me = u32::from(cpu::apic_id());
    if count != expected {
        r.fail::<()>(
            CHECK,
            format_args!("{count} enabled CPUs, vmkit.cpus is {expected}"),
        );
        return;
    }
    if !ids.contains(&me) {
        r.fail::<()>(CHECK, format_args!("this CPU's APIC ID {me} is not listed"));
        return;
    }
    if let Some(cpus) = cpus {
        if let Some(&missing) = cpus
            .apic_ids()
            .iter()
            .find(|&&id| !ids.contains(&u32::from(id)))
        {
            r.fail::<()>(
                CHECK,
                format_args!("APIC ID {missing} is in the MP table but not in the MADT"),
            );
            return;
        }
        if lapic != cpus.lapic() {
            r.fail::<()>(
                CHECK,
                format_args!(
                    "local APIC address {lapic:#x}, the MP table says {:#x}",
                    cpus.lapic()
                ),
            );
            return;
        }
    }
    let Some(ioapic) = ioapic else {
        r.fail::<()>(CHECK, format_args!("no IOAPIC entry"));
        return;
    };
    r.pass(CHECK, format_args!("{count} CPUs, IOAPIC at {ioapic:#x}"));
}

/// A Generic Address Structure's address space and address.
#[derive(Clone, Copy)]
struct Gas {
    space: u8,
    addr: u64,
}

impl core::fmt::Display for Gas {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self.space {
            0 => f.write_str("SystemMemory")?,
            1 => f.write_str("SystemIO")?,
            s => write!(f, "space {s:#x}")?,
        }
        write!(f, ":{:#x}", self.addr)
    }
}

/// Check `fadt`: HW-reduced (or else a PM1a control block, which Linux then
/// needs), and the DSDT pointer (X_DSDT, or DSDT when X_DSDT is 0 or
/// absent) leading to a valid DSDT; where both are set they agree. Returns
/// the sleep control register, if the FADT has one.
fn check_fadt(tables: Option<&Tables>, r: &mut Report) -> Option<Gas> {
    const CHECK: &str = "fadt";
    let Some(tables) = tables else {
        return r.fail(CHECK, format_args!("no valid ACPI tables"));
    };
    let Some(fadt) = tables.find(b"FACP") else {
        return r.fail(CHECK, format_args!("the XSDT lists no FACP table"));
    };
    let Some(flags) = fadt.u32(FADT_FLAGS) else {
        return r.fail(CHECK, format_args!("FACP is {} bytes, too short", fadt.len));
    };
    let hw_reduced = flags & FADT_HW_REDUCED != 0;
    let pm1a_cnt = fadt.u32(FADT_PM1A_CNT_BLK).unwrap_or(0) != 0
        || fadt.u64(FADT_X_PM1A_CNT_BLK + 4).unwrap_or(0) != 0;
    if !hw_reduced && !pm1a_cnt {
        return r.fail(
            CHECK,
            format_args!("flags {flags:#x}: not HW-reduced, and no PM1a control block"),
        );
    }
    let x_dsdt = fadt.u64(FADT_X_DSDT).unwrap_or(0);
    let dsdt32 = u64::from(fadt.u32(FADT_DSDT).unwrap_or(0));
    if x_dsdt != 0 && dsdt32 != 0 && x_dsdt != dsdt32 {
        return r.fail(
            CHECK,
            format_args!("X_DSDT {x_dsdt:#x} and DSDT {dsdt32:#x} disagree"),
        );
    }
    // `check_tables` validated the DSDT that `fadt_dsdt` chose.
    let Some(dsdt) = tables.dsdt else {
        return r.fail(CHECK, format_args!("no valid DSDT"));
    };
    let minor = fadt.u8(FADT_MINOR_VERSION).unwrap_or(0) & 0x0f;
    let pointer = if x_dsdt != 0 { "X_DSDT" } else { "DSDT" };
    r.pass(
        CHECK,
        format_args!(
            "rev {}.{minor}, {}, {pointer} -> DSDT at {:#x} ({} bytes)",
            fadt.revision(),
            if hw_reduced {
                "HW-reduced"
            } else {
                "PM1a control block"
            },
            dsdt.addr,
            dsdt.len
        ),
    );
    let addr = fadt.u64(FADT_SLEEP_CONTROL_REG + 4).unwrap_or(0);
    let space = fadt.u8(FADT_SLEEP_CONTROL_REG).unwrap_or(0);
    (addr != 0).then_some(Gas { space, addr })
}

/// A virtio-mmio device: base, size, irq.
type VirtioDev = (u64, u64, u32);

/// The `LNRO0005` devices of the DSDT, as its walk finds them.
#[derive(Default)]
struct Virtio {
    found: [VirtioDev; MAX_VIRTIO],
    count: usize,
    /// The first device that could not be decoded: its name, AML offset
    /// and why.
    error: Option<([u8; 4], usize, VirtioError)>,
}

#[derive(Clone, Copy)]
enum VirtioError {
    CrsMethod,
    NoCrsBuffer,
    Resources(&'static str, usize),
    Counts(usize, usize),
    TooMany,
}

impl Virtio {
    /// Records `dev` if it is a virtio-mmio device.
    fn visit(&mut self, dev: &aml::Device) {
        if self.error.is_some() || !dev.hid.is_some_and(|hid| hid.is(VIRTIO_MMIO_HID)) {
            return;
        }
        match Self::decode(dev) {
            Ok(_) if self.count == MAX_VIRTIO => {
                self.error = Some((dev.name, dev.offset, VirtioError::TooMany))
            }
            Ok(found) => {
                self.found[self.count] = found;
                self.count += 1;
            }
            Err(e) => self.error = Some((dev.name, dev.offset, e)),
        }
    }

    fn decode(dev: &aml::Device) -> Result<VirtioDev, VirtioError> {
        let buf = match dev.crs {
            Some(Crs::Buffer(buf)) => buf,
            Some(Crs::Method) => return Err(VirtioError::CrsMethod),
            Some(Crs::Other) | None => return Err(VirtioError::NoCrsBuffer),
        };
        let res = aml::resources(buf).map_err(|(why, at)| VirtioError::Resources(why, at))?;
        match (res.memory, res.memory_count, res.irq()) {
            (Some((base, size)), 1, Some(irq)) => Ok((u64::from(base), u64::from(size), irq)),
            _ => Err(VirtioError::Counts(res.memory_count, res.irq_count)),
        }
    }
}

/// Walks the DSDT, recording its virtio-mmio devices in `virtio`: the walk's
/// summary, or why it stopped; `None` without a DSDT.
fn walk_dsdt(tables: Option<&Tables>, virtio: &mut Virtio) -> Option<Result<Summary, aml::Error>> {
    let dsdt = tables?.dsdt?;
    // `table_at` checked that the DSDT has at least its header.
    let aml = &dsdt.bytes()[HEADER_SIZE as usize..];
    Some(aml::walk(aml, &mut |dev| virtio.visit(dev)))
}

/// Check `acpi-virtio`: every DSDT device with `_HID` `LNRO0005` has a
/// `_CRS` buffer with one Memory32Fixed and an interrupt, and they are
/// exactly the `virtio_mmio.device=` devices of the command line (same base,
/// size and irq; no more, no fewer).
fn check_virtio(
    tables: Option<&Tables>,
    summary: Option<&Result<Summary, aml::Error>>,
    virtio: &Virtio,
    cmdline: Option<&str>,
    r: &mut Report,
) -> Option<()> {
    const CHECK: &str = "acpi-virtio";
    if tables.is_none() {
        return r.fail(CHECK, format_args!("no valid ACPI tables"));
    }
    match summary {
        None => return r.fail(CHECK, format_args!("no DSDT (the XSDT lists no FACP)")),
        Some(Err(e)) => return r.fail(CHECK, format_args!("DSDT: {e}")),
        Some(Ok(_)) => {}
    }
    if let Some((name, at, e)) = virtio.error {
        let [a, b, c, d] = name.map(char::from);
        return match e {
            VirtioError::CrsMethod => r.fail(
                CHECK,
                format_args!("device {a}{b}{c}{d} (AML offset {at:#x}): _CRS is a method"),
            ),
            VirtioError::NoCrsBuffer => r.fail(
                CHECK,
                format_args!("device {a}{b}{c}{d} (AML offset {at:#x}): no _CRS buffer"),
            ),
            VirtioError::Resources(why, off) => r.fail(
                CHECK,
                format_args!("device {a}{b}{c}{d} _CRS: {why} at byte {off}"),
            ),
            VirtioError::Counts(mems, irqs) => r.fail(
                CHECK,
                format_args!(
                    "device {a}{b}{c}{d} _CRS: {mems} Memory32Fixed and {irqs} interrupts, expected 1 and at least 1"
                ),
            ),
            VirtioError::TooMany => r.fail(
                CHECK,
                format_args!("more than {MAX_VIRTIO} {VIRTIO_MMIO_HID} devices"),
            ),
        };
    }
    let (found, count) = (&virtio.found[..virtio.count], virtio.count);

    let mut given = 0;
    for value in cmdline
        .map(|line| bootparams::params(line, "virtio_mmio.device"))
        .into_iter()
        .flatten()
    {
        let Some(dev) = virtio::parse_device(value) else {
            return r.fail(
                CHECK,
                format_args!("virtio_mmio.device={value} is malformed"),
            );
        };
        given += 1;
        let want: VirtioDev = (dev.base, dev.size, dev.irq);
        let matching = found.iter().filter(|&&f| f == want).count();
        if matching != 1 {
            return r.fail(
                CHECK,
                format_args!(
                    "virtio_mmio.device={value}: {matching} {VIRTIO_MMIO_HID} devices with base {:#x}, size {:#x}, irq {}",
                    dev.base, dev.size, dev.irq
                ),
            );
        }
    }
    if given != count {
        return r.fail(
            CHECK,
            format_args!(
                "{count} {VIRTIO_MMIO_HID} devices in the DSDT, {given} virtio_mmio.device= arguments"
            ),
        );
    }
    r.pass(
        CHECK,
        format_args!("{count} {VIRTIO_MMIO_HID} devices:{}", VirtioList(found)),
    );
    Some(())
}

/// ` 0x<base>:<irq>` per device.
struct VirtioList<'a>(&'a [VirtioDev]);

impl core::fmt::Display for VirtioList<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        for (base, _, irq) in self.0 {
            write!(f, " {base:#x}:{irq}")?;
        }
        Ok(())
    }
}

/// Check `acpi-s5`: with a sleep control register, the DSDT defines `\_S5_`
/// as a package (the sleep type Linux writes there to power off).
fn check_s5(gas: Gas, summary: Option<&Result<Summary, aml::Error>>, r: &mut Report) {
    const CHECK: &str = "acpi-s5";
    match summary.map(|s| s.as_ref().map(|s| s.s5)) {
        None => r.fail::<()>(CHECK, format_args!("no DSDT")),
        Some(Err(e)) => r.fail::<()>(CHECK, format_args!("DSDT: {e}")),
        Some(Ok(None)) => r.fail::<()>(CHECK, format_args!("no \\_S5_ in the DSDT")),
        Some(Ok(Some(false))) => r.fail::<()>(CHECK, format_args!("\\_S5_ is not a package")),
        Some(Ok(Some(true))) => {
            r.pass(CHECK, format_args!("sleep control register at {gas}"));
            None
        }
    };
}
