//! ACPI tables for a hardware-reduced x86 platform, built with rust-vmm's
//! `acpi_tables` crate (no hand-packed AML).
//!
//! The tables go into the ACPI area of [`crate::layout`]
//! (`0xe0000..0x100000`, an ACPI entry of the e820 map), in this order,
//! each 16-byte aligned:
//!
//! - the RSDP (revision 2) at [`RSDP_START`] = `0xe0000`, where a guest
//!   scanning the BIOS area finds it; it is also passed in the zero page's
//!   `acpi_rsdp_addr` and PVH's `rsdp_paddr`;
//! - the DSDT: `\_S5` (sleep type [`AcpiPm::s5_sleep_type`]) and, in
//!   `\_SB`, the COM1 UART (`PNP0501`, its I/O ports and IRQ) and one
//!   `LNRO0005` device per virtio-mmio window, `VR00`, `VR01`, ... (`_UID`
//!   = index), as QEMU's microvm describes them;
//! - the FADT (revision 6.5): `HW_REDUCED_ACPI`, `x_dsdt`, the sleep
//!   control and status registers and the reset register (all 8-bit I/O
//!   ports of [`AcpiPm`]) with `RESET_REG_SUP`; `IAPC_BOOT_ARCH` says no
//!   VGA and no CMOS RTC;
//! - the MADT: one enabled local APIC per vCPU (ACPI processor UID = local
//!   APIC ID = vCPU index), the IOAPIC at `0xfec00000` (ID as in the MP
//!   table, GSI base 0), a local APIC NMI on LINT1 of every processor, and
//!   `PCAT_COMPAT` (the in-kernel 8259 pair exists);
//! - the XSDT, listing the FADT and the MADT.
//!
//! No interrupt source override is needed: KVM's default GSI routing wires
//! ISA IRQ n to IOAPIC pin n (GSI n), which is ACPI's default identity
//! mapping, and every line here is edge-triggered and active-high, the ISA
//! default (the PIT on IRQ 0 included: KVM's PIT raises GSI 0 = pin 0).
//!
//! The virtio-mmio interrupts are declared `Interrupt (ResourceConsumer,
//! Edge, ActiveHigh, Exclusive)`. QEMU's microvm declares them Level
//! because its virtio-mmio line is a real level line; ours is an irqfd,
//! which pulses the GSI (an edge). Programmed level-triggered, the IOAPIC
//! would drop a pulse that arrives while the previous interrupt awaits its
//! EOI (remote IRR set), losing the notification; edge-triggered, the
//! local APIC keeps it pending. Firecracker declares its virtio-mmio
//! devices the same way.
//!
//! # Example
//!
//! ```
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vmkit_boot::acpi::{AcpiConfig, AcpiPm, AcpiUart, VirtioMmioDesc, setup_acpi};
//!
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
//! let config = AcpiConfig {
//!     num_cpus: 2,
//!     uart: Some(AcpiUart { port: 0x3f8, irq: 4 }),
//!     virtio_mmio: vec![VirtioMmioDesc { base: 0xc000_0000, irq: 5 }],
//!     pm: AcpiPm { sleep_control_port: 0x600, sleep_status_port: 0x601,
//!                  reset_port: 0x602, reset_value: 0xfe, s5_sleep_type: 5 },
//! };
//! let rsdp = setup_acpi(&mem, &config).unwrap();
//! assert_eq!(rsdp, GuestAddress(0xe0000));
//! ```

use acpi_tables::aml::{
    self, Device, EISAName, IO, Interrupt, Memory32Fixed, Name, Package, ResourceTemplate, Scope,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use zerocopy::{Immutable, IntoBytes};

use crate::layout::{ACPI_END, APIC_START, IOAPIC_START, RSDP_START};
use crate::mptable::{IOAPIC_PINS, ioapic_id};
use crate::{Error, MAX_CPUS, Result};

/// OEM ID of every table.
pub const OEM_ID: [u8; 6] = *b"VMKIT ";
/// OEM revision of every table.
pub const OEM_REVISION: u32 = 1;
/// Size of a virtio-mmio register window as declared in `_CRS`.
pub const VIRTIO_MMIO_WINDOW: u32 = 0x1000;
/// `_HID` of a virtio-mmio device (Linux's `virtio_mmio` ACPI match).
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// `_HID` of a 16550A-compatible UART.
pub const UART_HID: &str = "PNP0501";
/// Number of I/O ports of the UART.
pub const UART_PORTS: u8 = 8;
/// MADT flag: the platform also has dual 8259 PICs.
pub const MADT_PCAT_COMPAT: u32 = 1 << 0;
/// FADT `IAPC_BOOT_ARCH`: VGA not present.
pub const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;
/// FADT `IAPC_BOOT_ARCH`: CMOS RTC not present.
pub const IAPC_BOOT_ARCH_NO_CMOS_RTC: u16 = 1 << 5;
/// Alignment of each table in the ACPI area.
const TABLE_ALIGN: u64 = 16;

/// A virtio-mmio device to describe: its 4 KiB window and its GSI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioDesc {
    /// Base of the register window (below 4 GiB).
    pub base: u64,
    /// Its interrupt line (GSI = IOAPIC pin, below 24).
    pub irq: u32,
}

/// The serial port to describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiUart {
    /// First of its 8 I/O ports.
    pub port: u16,
    /// Its ISA IRQ.
    pub irq: u32,
}

/// The power-management device the FADT points at: 8-bit I/O registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiPm {
    /// The sleep control register: the guest writes `SLP_TYPx << 2 |
    /// SLP_EN (1 << 5)` there to enter a sleep state (S5: power off).
    pub sleep_control_port: u16,
    /// The sleep status register (`WAK_STS`, bit 7).
    pub sleep_status_port: u16,
    /// The reset register.
    pub reset_port: u16,
    /// The value the guest writes to the reset register to reset.
    pub reset_value: u8,
    /// The `SLP_TYPx` value of S5, in the DSDT's `\_S5` package.
    pub s5_sleep_type: u8,
}

/// What the ACPI tables describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs (1 to [`MAX_CPUS`]).
    pub num_cpus: u8,
    /// The COM1 UART, if there is one.
    pub uart: Option<AcpiUart>,
    /// The virtio-mmio devices, in `_UID` order.
    pub virtio_mmio: Vec<VirtioMmioDesc>,
    /// The power-off and reset registers.
    pub pm: AcpiPm,
}

/// One table and where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTable {
    /// Its signature: `RSDP` (for `"RSD PTR "`), `XSDT`, `FACP`, `APIC` or
    /// `DSDT`.
    pub name: &'static str,
    /// Its guest physical address.
    pub addr: u64,
    /// Its bytes, checksums included.
    pub bytes: Vec<u8>,
}

/// The tables [`build_acpi_tables`] made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    /// Where the RSDP is.
    pub rsdp: GuestAddress,
    /// Every table, the RSDP first.
    pub tables: Vec<AcpiTable>,
}

impl AcpiTables {
    /// The table named `name` (see [`AcpiTable::name`]).
    pub fn table(&self, name: &str) -> Option<&AcpiTable> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Writes every table to guest memory.
    pub fn write_to<M: GuestMemoryBackend>(&self, mem: &M) -> Result<()> {
        for t in &self.tables {
            mem.write_slice(&t.bytes, GuestAddress(t.addr))
                .map_err(|source| Error::GuestMemory {
                    what: t.name,
                    addr: t.addr,
                    source,
                })?;
        }
        Ok(())
    }
}

/// MADT Local APIC NMI structure (ACPI 6.5, 5.2.12.7), which
/// `acpi_tables` 0.2 lacks.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
struct LocalApicNmi {
    r#type: u8,
    length: u8,
    /// 0xff: every processor.
    processor_uid: u8,
    /// MPS INTI flags (0: conforms to the bus).
    flags: [u8; 2],
    /// LINTn input.
    lint: u8,
}

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

const _: () = assert!(std::mem::size_of::<LocalApicNmi>() == 6);

/// 8-bit table id: `VMKIT` + the signature's first three letters.
fn table_id(sig: &[u8; 4]) -> [u8; 8] {
    let mut id = *b"VMKIT   ";
    id[5..].copy_from_slice(&sig[..3]);
    id
}

fn to_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// Two's complement of the byte sum.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b)))
}

fn check(config: &AcpiConfig) -> Result<()> {
    if config.num_cpus == 0 || config.num_cpus > MAX_CPUS {
        return Err(Error::InvalidCpuCount(config.num_cpus));
    }
    if config.virtio_mmio.len() > 100 {
        return Err(Error::AcpiConfig(format!(
            "{} virtio-mmio devices; at most 100 (VR00..VR99)",
            config.virtio_mmio.len()
        )));
    }
    let irqs = config
        .virtio_mmio
        .iter()
        .map(|d| d.irq)
        .chain(config.uart.map(|u| u.irq));
    for irq in irqs {
        if irq >= u32::from(IOAPIC_PINS) {
            return Err(Error::AcpiConfig(format!(
                "IRQ {irq} is not an IOAPIC pin (0..{IOAPIC_PINS})"
            )));
        }
    }
    for d in &config.virtio_mmio {
        if d.base > u64::from(u32::MAX - VIRTIO_MMIO_WINDOW + 1) {
            return Err(Error::AcpiConfig(format!(
                "virtio-mmio window at {:#x} is not below 4 GiB",
                d.base
            )));
        }
    }
    Ok(())
}

/// The DSDT's AML: `\_S5` and the devices in `\_SB`.
fn dsdt_aml(config: &AcpiConfig) -> Vec<u8> {
    let mut aml = Vec::new();
    let s5_type = config.pm.s5_sleep_type;
    let s5 = Package::new(vec![&s5_type, &aml::ZERO, &aml::ZERO, &aml::ZERO]);
    Name::new("_S5_".into(), &s5).to_aml_bytes(&mut aml);

    let mut devices = Vec::new();
    if let Some(uart) = config.uart {
        let hid = Name::new("_HID".into(), &EISAName::new(UART_HID));
        let uid = Name::new("_UID".into(), &aml::ZERO);
        let io = IO::new(uart.port, uart.port, 0, UART_PORTS);
        let irq = Interrupt::new(true, true, false, false, uart.irq);
        let crs = Name::new("_CRS".into(), &ResourceTemplate::new(vec![&io, &irq]));
        Device::new("COM1".into(), vec![&hid, &uid, &crs]).to_aml_bytes(&mut devices);
    }
    for (i, d) in config.virtio_mmio.iter().enumerate() {
        let name = format!("VR{i:02}");
        let hid = Name::new("_HID".into(), &VIRTIO_MMIO_HID);
        // At most 100 devices, checked.
        let uid = Name::new("_UID".into(), &(i as u32));
        let cca = Name::new("_CCA".into(), &aml::ONE);
        // Below 4 GiB, checked.
        let window = Memory32Fixed::new(true, d.base as u32, VIRTIO_MMIO_WINDOW);
        // Consumer, edge, active high, exclusive: see the module doc.
        let irq = Interrupt::new(true, true, false, false, d.irq);
        let crs = Name::new("_CRS".into(), &ResourceTemplate::new(vec![&window, &irq]));
        Device::new(name.as_str().into(), vec![&hid, &uid, &cca, &crs]).to_aml_bytes(&mut devices);
    }
    aml.extend(Scope::raw("\\_SB_".into(), devices));
    aml
}

fn build_dsdt(config: &AcpiConfig) -> Vec<u8> {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, table_id(b"DSDT"), OEM_REVISION);
    dsdt.append_slice(&dsdt_aml(config));
    dsdt.as_slice().to_vec()
}

fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn build_fadt(pm: &AcpiPm, dsdt: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, table_id(b"FACP"), OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .dsdt_64(dsdt);
    fadt.reset_reg = io_register(pm.reset_port);
    fadt.reset_value = pm.reset_value;
    fadt.sleep_control_reg = io_register(pm.sleep_control_port);
    fadt.sleep_status_reg = io_register(pm.sleep_status_port);
    fadt.iapc_boot_arch = (IAPC_BOOT_ARCH_NO_VGA | IAPC_BOOT_ARCH_NO_CMOS_RTC).into();
    to_bytes(&fadt.finalize())
}

fn build_madt(num_cpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        table_id(b"APIC"),
        OEM_REVISION,
        LocalInterruptController::Address(APIC_START as u32),
    );
    for cpu in 0..num_cpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(ioapic_id(num_cpus), IOAPIC_START as u32, 0));
    madt.add_structure(LocalApicNmi {
        r#type: 4,
        length: 6,
        processor_uid: 0xff,
        flags: [0; 2],
        lint: 1,
    });
    let mut bytes = to_bytes(&madt);
    // acpi_tables 0.2 leaves the MADT flags 0 with no setter: set
    // PCAT_COMPAT (offset 40) and redo the checksum (offset 9).
    bytes[40..44].copy_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    bytes[9] = 0;
    bytes[9] = checksum(&bytes);
    bytes
}

fn align(addr: u64) -> u64 {
    addr.next_multiple_of(TABLE_ALIGN)
}

/// Builds the tables for `config`, laid out from [`RSDP_START`].
pub fn build_acpi_tables(config: &AcpiConfig) -> Result<AcpiTables> {
    check(config)?;
    let rsdp_len = to_bytes(&Rsdp::new(OEM_ID, 0)).len() as u64;
    let dsdt_addr = align(RSDP_START + rsdp_len);
    let dsdt = build_dsdt(config);
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64);
    let fadt = build_fadt(&config.pm, dsdt_addr);
    let madt_addr = align(fadt_addr + fadt.len() as u64);
    let madt = build_madt(config.num_cpus);
    let xsdt_addr = align(madt_addr + madt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, table_id(b"XSDT"), OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = to_bytes(&xsdt);
    let end = xsdt_addr + xsdt.len() as u64;
    if end > ACPI_END {
        return Err(Error::AcpiTooLarge {
            size: end - RSDP_START,
            max: ACPI_END - RSDP_START,
            start: RSDP_START,
        });
    }
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    let table = |name, addr, bytes| AcpiTable { name, addr, bytes };
    Ok(AcpiTables {
        rsdp: GuestAddress(RSDP_START),
        tables: vec![
            table("RSDP", RSDP_START, rsdp),
            table("DSDT", dsdt_addr, dsdt),
            table("FACP", fadt_addr, fadt),
            table("APIC", madt_addr, madt),
            table("XSDT", xsdt_addr, xsdt),
        ],
    })
}

/// Builds the tables for `config`, writes them to guest memory and returns
/// the RSDP's address, for [`BootInfo::rsdp`](crate::BootInfo::rsdp).
pub fn setup_acpi<M: GuestMemoryBackend>(mem: &M, config: &AcpiConfig) -> Result<GuestAddress> {
    let tables = build_acpi_tables(config)?;
    tables.write_to(mem)?;
    Ok(tables.rsdp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    pub(crate) fn config(num_cpus: u8, devices: u32) -> AcpiConfig {
        AcpiConfig {
            num_cpus,
            uart: Some(AcpiUart {
                port: 0x3f8,
                irq: 4,
            }),
            virtio_mmio: (0..devices)
                .map(|i| VirtioMmioDesc {
                    base: 0xc000_0000 + u64::from(i) * 0x1000,
                    irq: 5 + i,
                })
                .collect(),
            pm: AcpiPm {
                sleep_control_port: 0x600,
                sleep_status_port: 0x601,
                reset_port: 0x602,
                reset_value: 0xfe,
                s5_sleep_type: 5,
            },
        }
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, &x| s.wrapping_add(x))
    }
    fn le16(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }
    fn le32(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn le64(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn every_table_has_a_valid_checksum_and_length() {
        for (cpus, devs) in [(1, 0), (2, 3), (MAX_CPUS, 19)] {
            let t = build_acpi_tables(&config(cpus, devs)).unwrap();
            assert_eq!(t.tables.len(), 5);
            for table in &t.tables {
                let b = &table.bytes;
                assert_eq!(table.addr % 16, 0, "{}", table.name);
                if table.name == "RSDP" {
                    assert_eq!(&b[..8], b"RSD PTR ");
                    assert_eq!(sum(&b[..20]), 0, "RSDP v1 checksum");
                    assert_eq!(b[15], 2, "revision 2");
                    assert_eq!(le32(b, 20) as usize, b.len(), "RSDP length");
                    assert_eq!(b.len(), 36);
                    assert_eq!(sum(b), 0, "RSDP extended checksum");
                    continue;
                }
                assert_eq!(&b[..4], table.name.as_bytes());
                assert_eq!(le32(b, 4) as usize, b.len(), "{} length", table.name);
                assert_eq!(sum(b), 0, "{} checksum", table.name);
                assert_eq!(&b[10..16], b"VMKIT ", "{} OEM ID", table.name);
            }
            // The tables do not overlap.
            for w in t.tables.windows(2) {
                assert!(w[0].addr + w[0].bytes.len() as u64 <= w[1].addr);
            }
            let last = t.tables.last().unwrap();
            assert!(last.addr + last.bytes.len() as u64 <= ACPI_END);
        }
    }

    #[test]
    fn guest_finds_every_table_from_the_rsdp() {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let rsdp = setup_acpi(&m, &config(2, 3)).unwrap();
        assert_eq!(rsdp, GuestAddress(0xe0000));
        let read = |addr: u64, len: usize| {
            let mut v = vec![0u8; len];
            m.read_slice(&mut v, GuestAddress(addr)).unwrap();
            v
        };
        let table = |addr: u64| {
            let len = le32(&read(addr, 8), 4) as usize;
            read(addr, len)
        };
        // As Linux's acpi_find_root_pointer scans: 16-byte steps.
        let area = read(0xe0000, 0x20000);
        let at = (0..area.len())
            .step_by(16)
            .find(|&o| &area[o..o + 8] == b"RSD PTR ")
            .unwrap();
        let rsdp = &area[at..at + 36];
        let xsdt = table(le64(rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(xsdt.len(), 36 + 16, "two entries");
        let fadt = table(le64(&xsdt, 36));
        let madt = table(le64(&xsdt, 44));
        assert_eq!(&fadt[..4], b"FACP");
        assert_eq!(&madt[..4], b"APIC");

        // FADT (ACPI 6.5 table 5.9 offsets).
        assert_eq!((fadt[8], fadt[131]), (6, 5), "revision 6.5");
        let flags = le32(&fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_eq!(&fadt[116..128], &[1, 8, 0, 1, 0x02, 0x06, 0, 0, 0, 0, 0, 0]);
        assert_eq!(fadt[128], 0xfe, "RESET_VALUE");
        assert_eq!(le16(&fadt, 109), 0x24, "IAPC_BOOT_ARCH: no VGA, no CMOS");
        let dsdt = table(le64(&fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT", "X_DSDT");
        assert_eq!(le32(&fadt, 40), 0, "32-bit DSDT unused");
        assert_eq!(&fadt[244..256], &[1, 8, 0, 1, 0x00, 0x06, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&fadt[256..268], &[1, 8, 0, 1, 0x01, 0x06, 0, 0, 0, 0, 0, 0]);

        // MADT.
        assert_eq!(le32(&madt, 36), 0xfee0_0000);
        assert_eq!(le32(&madt, 40), 1, "PCAT_COMPAT");
        let mut off = 44;
        let mut lapics = Vec::new();
        let mut ioapics = Vec::new();
        let mut nmis = Vec::new();
        while off < madt.len() {
            let (ty, len) = (madt[off], usize::from(madt[off + 1]));
            let e = &madt[off..off + len];
            match ty {
                0 => lapics.push((e[2], e[3], le32(e, 4))),
                1 => ioapics.push((e[2], le32(e, 4), le32(e, 8))),
                4 => nmis.push((e[2], le16(e, 3), e[5])),
                t => panic!("unexpected MADT entry {t}"),
            }
            off += len;
        }
        assert_eq!(off, madt.len());
        assert_eq!(lapics, [(0, 0, 1), (1, 1, 1)], "uid, APIC ID, enabled");
        assert_eq!(ioapics, [(3, 0xfec0_0000, 0)], "ID as in the MP table");
        assert_eq!(nmis, [(0xff, 0, 1)], "NMI on LINT1 of all");

        // The DSDT names each virtio-mmio device and the UART.
        let count = |needle: &[u8]| dsdt.windows(needle.len()).filter(|w| w == &needle).count();
        assert_eq!(count(b"LNRO0005"), 3);
        assert_eq!(count(b"_S5_"), 1);
        assert_eq!(count(b"COM1"), 1);
        for i in 0..3u32 {
            // Memory32Fixed descriptor: 0x86, length 9, RW, base, 0x1000.
            let mut desc = vec![0x86, 9, 0, 1];
            desc.extend_from_slice(&(0xc000_0000 + i * 0x1000).to_le_bytes());
            desc.extend_from_slice(&0x1000u32.to_le_bytes());
            assert_eq!(count(&desc), 1, "device {i} window");
            // Extended interrupt: 0x89, length 6, consumer|edge, 1, GSI.
            let mut irq = vec![0x89, 6, 0, 0x03, 1];
            irq.extend_from_slice(&(5 + i).to_le_bytes());
            assert_eq!(count(&irq), 1, "device {i} interrupt");
        }
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut c = config(0, 1);
        assert!(matches!(
            build_acpi_tables(&c),
            Err(Error::InvalidCpuCount(0))
        ));
        c.num_cpus = 1;
        c.virtio_mmio[0].irq = 24;
        assert!(matches!(build_acpi_tables(&c), Err(Error::AcpiConfig(_))));
        c.virtio_mmio[0].irq = 5;
        c.virtio_mmio[0].base = 1 << 32;
        let err = build_acpi_tables(&c).unwrap_err();
        assert!(err.to_string().contains("below 4 GiB"), "{err}");
    }
}
