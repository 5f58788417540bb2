//! The Intel MultiProcessor Specification 1.4 table, through which a guest
//! finds its processors, its IOAPIC and how the ISA interrupts are wired.
//!
//! The MP floating pointer structure and, right after it, the MP
//! configuration table are written at `EBDA_START`, the first kilobyte of
//! the extended BIOS data area, where a guest looks for the "_MP_"
//! signature (MP spec 1.4, 4.0 "MP Configuration Table"). The table
//! describes one processor per vCPU (local APIC ID = vCPU index, vCPU 0 the
//! bootstrap processor), one ISA bus, one IOAPIC at `IOAPIC_START` whose
//! pins 0-23 receive ISA IRQs 0-23, and the local interrupts of every local
//! APIC: ExtINT on LINT0 and NMI on LINT1.

use std::mem::size_of;

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use crate::layout::{APIC_START, EBDA_START, HIMEM_START, IOAPIC_START};
use crate::{Error, Result};

/// The largest number of vCPUs the MP table describes.
///
/// With 32 processor entries the whole table (floating pointer and
/// configuration table, 924 bytes) still fits in the 1 KiB at
/// `EBDA_START..0xa0000`, the EBDA proper, under the legacy VGA window and
/// well below `HIMEM_START`. The local APIC IDs 0-31, the IOAPIC ID
/// (`num_cpus + 1` = 33 at most) and the broadcast ID 0xff then all stay
/// distinct in the 8-bit xAPIC ID space, and the count fits every CPUID
/// field that reports it (leaf 4 `EAX[31:26]` holds at most 64 cores).
pub const MAX_CPUS: u8 = 32;

/// Number of IOAPIC input pins, all wired to the ISA IRQ of the same number.
pub const IOAPIC_PINS: u8 = 24;

const MPC_SIGNATURE: [u8; 4] = *b"PCMP";
const MPF_SIGNATURE: [u8; 4] = *b"_MP_";
const MP_SPEC_REV: u8 = 4;
const OEM_ID: [u8; 8] = *b"VMKIT   ";
const PRODUCT_ID: [u8; 12] = *b"000000000000";
const BUS_TYPE_ISA: [u8; 6] = *b"ISA   ";

const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;

const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOTPROCESSOR: u8 = 1 << 1;
const MPC_APIC_USABLE: u8 = 1 << 0;
/// Family 6 signature and FPU|APIC feature flags, as Firecracker reports.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;

const MP_IRQ_TYPE_INT: u8 = 0;
const MP_IRQ_TYPE_NMI: u8 = 1;
const MP_IRQ_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger mode "conform to the bus" (edge, active high on ISA).
const MP_IRQ_FLAGS_DEFAULT: u16 = 0;
const MP_APIC_ALL: u8 = 0xff;
const ISA_BUS_ID: u8 = 0;

/// MP floating pointer structure (MP spec table 4-1), 16 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpFloatingPointer {
    signature: [u8; 4],
    physptr: u32,
    length: u8,
    specification: u8,
    checksum: u8,
    feature1: u8,
    feature2: u8,
    feature3: [u8; 3],
}

/// MP configuration table header (MP spec table 4-2), 44 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpConfigHeader {
    signature: [u8; 4],
    length: u16,
    spec: u8,
    checksum: u8,
    oem: [u8; 8],
    product_id: [u8; 12],
    oem_ptr: u32,
    oem_size: u16,
    oem_count: u16,
    lapic: u32,
    ext_length: u16,
    ext_checksum: u8,
    reserved: u8,
}

/// Processor entry (MP spec table 4-4), 20 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpProcessor {
    entry_type: u8,
    apic_id: u8,
    apic_version: u8,
    cpu_flags: u8,
    cpu_signature: u32,
    feature_flags: u32,
    reserved: [u32; 2],
}

/// Bus entry (MP spec table 4-8), 8 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpBus {
    entry_type: u8,
    bus_id: u8,
    bus_type: [u8; 6],
}

/// IOAPIC entry (MP spec table 4-10), 8 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpIoApic {
    entry_type: u8,
    apic_id: u8,
    apic_version: u8,
    flags: u8,
    apic_addr: u32,
}

/// I/O interrupt assignment (table 4-12) and local interrupt assignment
/// (table 4-14) entries share this 8-byte layout; `dst_apic_pin` is the
/// IOAPIC INTIN pin or the local APIC LINTIN pin.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpInterrupt {
    entry_type: u8,
    irq_type: u8,
    irq_flags: u16,
    src_bus_id: u8,
    src_bus_irq: u8,
    dst_apic_id: u8,
    dst_apic_pin: u8,
}

// SAFETY: each type is `repr(C, packed)`, so it has no padding, and it is
// made only of integers and integer arrays, for which every bit pattern is
// a valid value.
unsafe impl ByteValued for MpFloatingPointer {}
// SAFETY: as above: packed, integers only.
unsafe impl ByteValued for MpConfigHeader {}
// SAFETY: as above: packed, integers only.
unsafe impl ByteValued for MpProcessor {}
// SAFETY: as above: packed, integers only.
unsafe impl ByteValued for MpBus {}
// SAFETY: as above: packed, integers only.
unsafe impl ByteValued for MpIoApic {}
// SAFETY: as above: packed, integers only.
unsafe impl ByteValued for MpInterrupt {}

// The sizes the MP specification gives.
const _: () = assert!(size_of::<MpFloatingPointer>() == 16);
const _: () = assert!(size_of::<MpConfigHeader>() == 44);
const _: () = assert!(size_of::<MpProcessor>() == 20);
const _: () = assert!(size_of::<MpBus>() == 8);
const _: () = assert!(size_of::<MpIoApic>() == 8);
const _: () = assert!(size_of::<MpInterrupt>() == 8);

/// Size of the floating pointer plus configuration table for `num_cpus`.
pub const fn mptable_size(num_cpus: u8) -> usize {
    size_of::<MpFloatingPointer>()
        + size_of::<MpConfigHeader>()
        + num_cpus as usize * size_of::<MpProcessor>()
        + size_of::<MpBus>()
        + size_of::<MpIoApic>()
        + IOAPIC_PINS as usize * size_of::<MpInterrupt>()
        + 2 * size_of::<MpInterrupt>()
}

// The table for MAX_CPUS fits the first KiB of the EBDA.
const _: () = assert!(EBDA_START + mptable_size(MAX_CPUS) as u64 <= 0xa_0000);
const _: () = assert!(0xa_0000 <= HIMEM_START);
const _: () = assert!((MAX_CPUS as u16 + 1) < MP_APIC_ALL as u16);

/// Two's complement of the byte sum, so that the bytes plus the checksum
/// add up to 0 modulo 256.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b)))
}

/// The IOAPIC's MP ID for `num_cpus` vCPUs (just above the local APICs).
pub fn ioapic_id(num_cpus: u8) -> u8 {
    num_cpus + 1
}

/// Writes the MP floating pointer and configuration table for `num_cpus`
/// vCPUs at `EBDA_START`.
///
/// `num_cpus` must be 1 to [`MAX_CPUS`].
pub fn setup_mptable<M: GuestMemoryBackend>(mem: &M, num_cpus: u8) -> Result<()> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(Error::InvalidCpuCount(num_cpus));
    }
    let fp_size = size_of::<MpFloatingPointer>();
    let table_addr = EBDA_START + fp_size as u64;
    let ioapic_id = ioapic_id(num_cpus);

    let mut entries: Vec<u8> = Vec::with_capacity(mptable_size(num_cpus));
    let mut count: u16 = 0;
    let mut push = |bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        count += 1;
    };
    for cpu in 0..num_cpus {
        let cpu_flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        push(
            MpProcessor {
                entry_type: MP_PROCESSOR,
                apic_id: cpu,
                apic_version: APIC_VERSION,
                cpu_flags,
                cpu_signature: CPU_SIGNATURE,
                feature_flags: CPU_FEATURES,
                reserved: [0; 2],
            }
            .as_slice(),
        );
    }
    push(
        MpBus {
            entry_type: MP_BUS,
            bus_id: ISA_BUS_ID,
            bus_type: BUS_TYPE_ISA,
        }
        .as_slice(),
    );
    push(
        MpIoApic {
            entry_type: MP_IOAPIC,
            apic_id: ioapic_id,
            apic_version: IOAPIC_VERSION,
            flags: MPC_APIC_USABLE,
            apic_addr: IOAPIC_START as u32,
        }
        .as_slice(),
    );
    for irq in 0..IOAPIC_PINS {
        push(
            MpInterrupt {
                entry_type: MP_INTSRC,
                irq_type: MP_IRQ_TYPE_INT,
                irq_flags: MP_IRQ_FLAGS_DEFAULT,
                src_bus_id: ISA_BUS_ID,
                src_bus_irq: irq,
                dst_apic_id: ioapic_id,
                dst_apic_pin: irq,
            }
            .as_slice(),
        );
    }
    for (irq_type, lint) in [(MP_IRQ_TYPE_EXTINT, 0), (MP_IRQ_TYPE_NMI, 1)] {
        push(
            MpInterrupt {
                entry_type: MP_LINTSRC,
                irq_type,
                irq_flags: MP_IRQ_FLAGS_DEFAULT,
                src_bus_id: ISA_BUS_ID,
                src_bus_irq: 0,
                dst_apic_id: MP_APIC_ALL,
                dst_apic_pin: lint,
            }
            .as_slice(),
        );
    }

    let base_len = size_of::<MpConfigHeader>() + entries.len();
    let mut header = MpConfigHeader {
        signature: MPC_SIGNATURE,
        // At most mptable_size(MAX_CPUS) < 1 KiB.
        length: base_len as u16,
        spec: MP_SPEC_REV,
        checksum: 0,
        oem: OEM_ID,
        product_id: PRODUCT_ID,
        oem_ptr: 0,
        oem_size: 0,
        oem_count: count,
        lapic: APIC_START as u32,
        ext_length: 0,
        ext_checksum: 0,
        reserved: 0,
    };
    let mut table = Vec::with_capacity(base_len);
    table.extend_from_slice(header.as_slice());
    table.extend_from_slice(&entries);
    header.checksum = checksum(&table);
    table[..size_of::<MpConfigHeader>()].copy_from_slice(header.as_slice());

    let mut fp = MpFloatingPointer {
        signature: MPF_SIGNATURE,
        physptr: table_addr as u32,
        // In 16-byte paragraphs.
        length: 1,
        specification: MP_SPEC_REV,
        ..Default::default()
    };
    fp.checksum = checksum(fp.as_slice());

    let mut all = Vec::with_capacity(fp_size + table.len());
    all.extend_from_slice(fp.as_slice());
    all.extend_from_slice(&table);
    mem.write_slice(&all, GuestAddress(EBDA_START))
        .map_err(|source| Error::GuestMemory {
            what: "MP table",
            addr: EBDA_START,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn bytes(m: &GuestMemoryMmap<()>, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        m.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, &x| s.wrapping_add(x))
    }

    fn le16(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }

    fn le32(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }

    #[derive(Debug, Default)]
    struct Parsed {
        cpus: Vec<(u8, u8)>,
        buses: Vec<Vec<u8>>,
        ioapics: Vec<(u8, u8, u32)>,
        intsrc: Vec<[u8; 8]>,
        lintsrc: Vec<[u8; 8]>,
        lapic: u32,
    }

    /// Finds and parses the table the way a guest does (Linux's
    /// `smp_scan_config` / `smp_read_mpc`), from raw bytes only.
    fn parse(m: &GuestMemoryMmap<()>) -> Parsed {
        let ebda = bytes(m, 0x9_fc00, 0x400);
        let fp_off = (0..ebda.len())
            .step_by(16)
            .find(|&o| &ebda[o..o + 4] == b"_MP_")
            .expect("no _MP_ signature on a 16-byte boundary of the EBDA");
        let fp = &ebda[fp_off..fp_off + 16];
        assert_eq!(fp[8], 1, "length in paragraphs");
        assert_eq!(fp[9], 4, "spec revision 1.4");
        assert_eq!(sum(fp), 0, "floating pointer checksum");
        assert_eq!(
            fp[11], 0,
            "feature byte 1: a configuration table is present"
        );

        let table_addr = u64::from(le32(fp, 4));
        let head = bytes(m, table_addr, 44);
        assert_eq!(&head[0..4], b"PCMP");
        let len = usize::from(le16(&head, 4));
        assert_eq!(head[6], 4, "spec revision 1.4");
        let table = bytes(m, table_addr, len);
        assert_eq!(sum(&table), 0, "configuration table checksum");
        assert_eq!(le16(&head, 40), 0, "no extended table");
        assert!(table_addr + len as u64 <= 0xa_0000);

        let mut p = Parsed {
            lapic: le32(&head, 36),
            ..Default::default()
        };
        let count = le16(&head, 34);
        let mut off = 44;
        for _ in 0..count {
            let e = &table[off..];
            let size = match e[0] {
                0 => {
                    assert_eq!(e[2], 0x14, "local APIC version");
                    assert_ne!(e[3] & 1, 0, "processor enabled");
                    p.cpus.push((e[1], e[3]));
                    20
                }
                1 => {
                    p.buses.push(e[2..8].to_vec());
                    8
                }
                2 => {
                    assert_eq!(e[3] & 1, 1, "IOAPIC usable");
                    p.ioapics.push((e[1], e[2], le32(e, 4)));
                    8
                }
                3 => {
                    p.intsrc.push(e[..8].try_into().unwrap());
                    8
                }
                4 => {
                    p.lintsrc.push(e[..8].try_into().unwrap());
                    8
                }
                t => panic!("unknown entry type {t}"),
            };
            off += size;
        }
        assert_eq!(off, len, "entries fill the base table exactly");
        p
    }

    #[test]
    fn guest_finds_every_vcpu() {
        for n in [1u8, 2, 32] {
            let m = mem();
            setup_mptable(&m, n).unwrap();
            let p = parse(&m);
            assert_eq!(p.cpus.len(), usize::from(n), "{n} vCPUs");
            let bsps: Vec<_> = p.cpus.iter().filter(|(_, f)| f & 2 != 0).collect();
            assert_eq!(bsps.len(), 1, "exactly one BSP");
            assert_eq!(bsps[0].0, 0, "the BSP is APIC ID 0");
            let ids: Vec<u8> = p.cpus.iter().map(|c| c.0).collect();
            assert_eq!(ids, (0..n).collect::<Vec<_>>());
            assert_eq!(p.lapic, 0xfee0_0000);

            assert_eq!(p.buses, [b"ISA   ".to_vec()]);
            assert_eq!(p.ioapics, [(n + 1, 0x11, 0xfec0_0000)]);
            assert_eq!(p.intsrc.len(), 24);
            for (irq, e) in p.intsrc.iter().enumerate() {
                // type INT, default flags, ISA bus, IRQ n -> IOAPIC pin n
                assert_eq!(*e, [3, 0, 0, 0, 0, irq as u8, n + 1, irq as u8]);
            }
            assert_eq!(
                p.lintsrc,
                [[4, 3, 0, 0, 0, 0, 0xff, 0], [4, 1, 0, 0, 0, 0, 0xff, 1]],
                "ExtINT on LINT0, NMI on LINT1"
            );
        }
    }

    #[test]
    fn table_size_matches_what_is_written() {
        let m = mem();
        m.write_slice(&[0xaa; 0x400], GuestAddress(EBDA_START))
            .unwrap();
        setup_mptable(&m, MAX_CPUS).unwrap();
        let size = mptable_size(MAX_CPUS);
        assert_eq!(size, 924);
        let after = bytes(&m, EBDA_START + size as u64, 1);
        assert_eq!(after, [0xaa], "nothing written past the table");
        let last = bytes(&m, EBDA_START + size as u64 - 1, 1);
        assert_eq!(last, [1], "last byte: LINT1 pin of the NMI entry");
    }

    #[test]
    fn cpu_count_limits() {
        let m = mem();
        assert!(matches!(
            setup_mptable(&m, 0),
            Err(Error::InvalidCpuCount(0))
        ));
        assert!(matches!(
            setup_mptable(&m, 33),
            Err(Error::InvalidCpuCount(33))
        ));
        assert_eq!(bytes(&m, EBDA_START, 4), [0; 4], "nothing written on error");
    }

    #[test]
    fn missing_memory_is_an_error() {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x9_0000)]).unwrap();
        assert!(matches!(
            setup_mptable(&m, 1),
            Err(Error::GuestMemory {
                what: "MP table",
                ..
            })
        ));
    }
}
