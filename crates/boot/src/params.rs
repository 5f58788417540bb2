//! Linux boot parameters: the e820 memory map, the "zero page"
//! (`struct boot_params`), the command line, and [`configure_system`].

use linux_loader::bootparam::{E820_MAX_ENTRIES_ZEROPAGE, boot_e820_entry, boot_params};
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::load_cmdline;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::gdt::write_gdt_idt;
use crate::initrd::InitrdRange;
use crate::layout::{
    ACPI_END, ACPI_START, CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIMEM_START, ZERO_PAGE_START,
};
use crate::loader::{BootProtocol, KernelEntry};
use crate::mptable::setup_mptable;
use crate::paging::setup_page_tables;
use crate::pvh::write_start_info;
use crate::{Error, Result};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;
/// e820 type of ACPI tables (reclaimable once the OS has read them).
pub const E820_ACPI: u32 = 3;

/// What [`configure_system`] needs to know beyond the command line and the
/// vCPU count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BootInfo {
    /// The kernel's boot protocol: which boot parameters to write.
    pub protocol: BootProtocol,
    /// The initrd, if one was loaded.
    pub initrd: Option<InitrdRange>,
    /// The ACPI RSDP, if ACPI tables were written.
    pub rsdp: Option<GuestAddress>,
}

impl BootInfo {
    /// The boot information for `kernel`, without initrd or ACPI.
    pub fn new(kernel: &KernelEntry) -> Self {
        BootInfo {
            protocol: kernel.protocol,
            initrd: None,
            rsdp: None,
        }
    }
}

impl Default for BootInfo {
    /// The 64-bit boot protocol with an ELF kernel, without initrd or ACPI.
    fn default() -> Self {
        BootInfo {
            protocol: BootProtocol::Linux64,
            initrd: None,
            rsdp: None,
        }
    }
}

/// `boot_params.hdr.boot_flag`.
pub const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `boot_params.hdr.header`: "HdrS".
pub const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// `boot_params.hdr.type_of_loader`: a loader without an assigned ID.
pub const KERNEL_LOADER_OTHER: u8 = 0xff;
/// `boot_params.hdr.kernel_alignment`: 16 MiB.
pub const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;

/// One entry of the e820 memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First guest physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// [`E820_RAM`], [`E820_RESERVED`] or [`E820_ACPI`].
    pub kind: u32,
}

/// The guest RAM ranges, sorted, with adjacent regions merged.
pub(crate) fn ram_ranges<M: GuestMemoryBackend>(mem: &M) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = mem
        .iter()
        .map(|r| (r.start_addr().raw_value(), r.len()))
        .filter(|&(_, len)| len > 0)
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, len) in ranges {
        match merged.last_mut() {
            Some((s, l)) if s.checked_add(*l) == Some(start) => *l += len,
            _ => merged.push((start, len)),
        }
    }
    merged
}

/// The e820 map of `mem`, derived from its regions: RAM
/// `[0, EBDA_START)`, reserved `[EBDA_START, ACPI_START)` (EBDA, MP table,
/// VGA and option ROM area), ACPI `[ACPI_START, ACPI_END)` (the BIOS area,
/// holding the RSDP and the ACPI tables), RAM `[HIMEM_START, end of the
/// first region)`, and one RAM entry for every region above (for instance
/// the one above the 32-bit MMIO hole).
///
/// The sizes of all entries add up to the guest memory size, and no entry
/// covers an address without memory behind it.
///
/// Guest memory must start at address 0 and reach past `HIMEM_START`.
pub fn e820_entries<M: GuestMemoryBackend>(mem: &M) -> Result<Vec<E820Entry>> {
    let ranges = ram_ranges(mem);
    let (first_start, first_len) = ranges
        .first()
        .copied()
        .ok_or_else(|| Error::MemoryLayout("guest memory has no regions".into()))?;
    if first_start != 0 || first_len <= HIMEM_START {
        return Err(Error::MemoryLayout(format!(
            "guest memory must start with RAM covering 0..{HIMEM_START:#x} and beyond; \
             its first range is {first_start:#x}..{:#x}",
            first_start.saturating_add(first_len)
        )));
    }
    let mut entries = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: ACPI_START - EBDA_START,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: ACPI_START,
            size: ACPI_END - ACPI_START,
            kind: E820_ACPI,
        },
        E820Entry {
            addr: HIMEM_START,
            size: first_len - HIMEM_START,
            kind: E820_RAM,
        },
    ];
    entries.extend(ranges[1..].iter().map(|&(addr, size)| E820Entry {
        addr,
        size,
        kind: E820_RAM,
    }));
    Ok(entries)
}

/// Checks the command line and builds linux-loader's [`Cmdline`] from it.
fn build_cmdline(cmdline: &str) -> Result<Cmdline> {
    if let Some(pos) = cmdline.bytes().position(|b| b == 0) {
        return Err(Error::CmdlineNul(pos));
    }
    if cmdline.len() > CMDLINE_MAX_SIZE - 1 {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(Error::Cmdline)?;
    cl.insert_str(cmdline).map_err(Error::Cmdline)?;
    Ok(cl)
}

/// Writes the command line at `CMDLINE_START` (NUL-terminated) and returns
/// its length without the NUL.
///
/// The command line must be printable ASCII (surrounding blanks are
/// trimmed), without NUL, and at most `CMDLINE_MAX_SIZE - 1` bytes long.
pub fn write_cmdline<M: GuestMemoryBackend>(mem: &M, cmdline: &str) -> Result<u32> {
    let cl = build_cmdline(cmdline)?;
    let len = cl.as_cstring().map_err(Error::Cmdline)?.as_bytes().len();
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(|source| Error::Load {
        msg: "the command line does not fit in guest memory",
        source,
    })?;
    // At most CMDLINE_MAX_SIZE - 1, checked above.
    Ok(len as u32)
}

/// Writes the zero page at `ZERO_PAGE_START` for the 64-bit boot protocol.
///
/// For an ELF kernel ([`BootProtocol::Linux64`]) the setup header is made
/// up: boot flag, "HdrS", 16 MiB kernel alignment, and `cmdline_size` =
/// the command line's length (`cmdline_len`). For a bzImage the kernel's own
/// setup header is copied in (up to its declared end), keeping its
/// `cmdline_size`, which the command line must not exceed. Then, for both,
/// the loader's fields: `type_of_loader` 0xff, `cmd_line_ptr`, the initrd
/// (`ramdisk_image`, `ramdisk_size`), the ACPI RSDP (`acpi_rsdp_addr`,
/// boot protocol 2.14) and the e820 map.
pub fn write_zero_page<M: GuestMemoryBackend>(
    mem: &M,
    cmdline_len: u32,
    boot: &BootInfo,
    e820: &[E820Entry],
) -> Result<()> {
    if e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(Error::TooManyE820Entries(e820.len()));
    }
    let mut params = boot_params::default();
    match boot.protocol {
        BootProtocol::BzImage(hdr) => {
            let max = hdr.cmdline_size;
            if cmdline_len > max {
                return Err(Error::CmdlineTooLong {
                    len: cmdline_len as usize,
                    max: max as usize,
                });
            }
            params.hdr = hdr;
        }
        BootProtocol::Linux64 | BootProtocol::Pvh => {
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
            params.hdr.cmdline_size = cmdline_len;
        }
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    if let Some(initrd) = boot.initrd {
        // Placed below initrd_addr_max, itself below 4 GiB.
        params.hdr.ramdisk_image = initrd.addr.0 as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    params.acpi_rsdp_addr = boot.rsdp.map_or(0, |a| a.0);
    for (slot, e) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    // Bounded by E820_MAX_ENTRIES_ZEROPAGE (128), checked above.
    params.e820_entries = e820.len() as u8;

    let bp = BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&bp, mem).map_err(Error::BootParams)
}

/// Writes everything the guest reads from memory at boot, except the
/// kernel, the initrd and the ACPI tables: the command line, the boot
/// parameters of `boot.protocol` with the e820 map (the zero page, or the
/// PVH `hvm_start_info` with its memory map and module list), the MP table
/// for `num_cpus` vCPUs, the boot GDT and IDT, and the boot page tables.
pub fn configure_system<M: GuestMemoryBackend>(
    mem: &M,
    cmdline: &str,
    num_cpus: u8,
    boot: &BootInfo,
) -> Result<()> {
    if num_cpus == 0 || num_cpus > crate::MAX_CPUS {
        return Err(Error::InvalidCpuCount(num_cpus));
    }
    let cmdline_len = write_cmdline(mem, cmdline)?;
    let e820 = e820_entries(mem)?;
    match boot.protocol {
        BootProtocol::Pvh => write_start_info(mem, boot, &e820)?,
        BootProtocol::Linux64 | BootProtocol::BzImage(_) => {
            write_zero_page(mem, cmdline_len, boot, &e820)?
        }
    }
    setup_mptable(mem, num_cpus)?;
    write_gdt_idt(mem)?;
    setup_page_tables(mem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn mem(ranges: &[(u64, u64)]) -> GuestMemoryMmap<()> {
        let r: Vec<_> = ranges
            .iter()
            .map(|&(a, l)| (GuestAddress(a), l as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&r).unwrap()
    }

    fn u8_at(m: &GuestMemoryMmap<()>, a: u64) -> u8 {
        m.read_obj(GuestAddress(a)).unwrap()
    }
    fn u16_at(m: &GuestMemoryMmap<()>, a: u64) -> u16 {
        let mut b = [0u8; 2];
        m.read_slice(&mut b, GuestAddress(a)).unwrap();
        u16::from_le_bytes(b)
    }
    fn u32_at(m: &GuestMemoryMmap<()>, a: u64) -> u32 {
        let mut b = [0u8; 4];
        m.read_slice(&mut b, GuestAddress(a)).unwrap();
        u32::from_le_bytes(b)
    }
    fn u64_at(m: &GuestMemoryMmap<()>, a: u64) -> u64 {
        let mut b = [0u8; 8];
        m.read_slice(&mut b, GuestAddress(a)).unwrap();
        u64::from_le_bytes(b)
    }

    #[test]
    fn e820_one_region() {
        let m = mem(&[(0, 128 * MIB)]);
        let e = e820_entries(&m).unwrap();
        assert_eq!(
            e,
            [
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x40400,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0xe0000,
                    size: 0x20000,
                    kind: E820_ACPI
                },
                E820Entry {
                    addr: 0x10_0000,
                    size: 127 * MIB,
                    kind: E820_RAM
                },
            ]
        );
        assert_eq!(e.iter().map(|e| e.size).sum::<u64>(), 128 * MIB);
    }

    #[test]
    fn e820_around_the_mmio_hole() {
        // What vmkit-memory lays out for 4 GiB: 3 GiB below the 32-bit MMIO
        // hole (0xc000_0000..4 GiB), the rest above it.
        let m = mem(&[(0, 3 * GIB), (4 * GIB, GIB)]);
        let e = e820_entries(&m).unwrap();
        assert_eq!(e.len(), 5);
        assert_eq!(
            e[3],
            E820Entry {
                addr: MIB,
                size: 3 * GIB - MIB,
                kind: E820_RAM
            }
        );
        assert_eq!(
            e[4],
            E820Entry {
                addr: 4 * GIB,
                size: GIB,
                kind: E820_RAM
            }
        );
        assert_eq!(e.iter().map(|e| e.size).sum::<u64>(), 4 * GIB);
        for entry in &e {
            let end = entry.addr + entry.size;
            assert!(
                end <= 0xc000_0000 || entry.addr >= 4 * GIB,
                "{entry:?} in the hole"
            );
        }
    }

    #[test]
    fn e820_merges_adjacent_regions() {
        let m = mem(&[(0, 2 * MIB), (2 * MIB, 2 * MIB), (4 * GIB, MIB)]);
        let e = e820_entries(&m).unwrap();
        assert_eq!(
            e[3],
            E820Entry {
                addr: MIB,
                size: 3 * MIB,
                kind: E820_RAM
            }
        );
        assert_eq!(e[4].addr, 4 * GIB);
        assert_eq!(e.iter().map(|e| e.size).sum::<u64>(), 5 * MIB);
    }

    #[test]
    fn e820_needs_low_memory() {
        assert!(matches!(
            e820_entries(&mem(&[(MIB, 4 * MIB)])),
            Err(Error::MemoryLayout(_))
        ));
        assert!(matches!(
            e820_entries(&mem(&[(0, MIB)])),
            Err(Error::MemoryLayout(_))
        ));
    }

    #[test]
    fn zero_page_fields_at_boot_protocol_offsets() {
        let m = mem(&[(0, 3 * GIB), (4 * GIB, GIB)]);
        let cmdline = "console=ttyS0 reboot=k panic=1";
        configure_system(&m, cmdline, 2, &BootInfo::default()).unwrap();
        let zp = ZERO_PAGE_START;

        // Documentation/arch/x86/boot.rst and zero-page.rst offsets.
        assert_eq!(u16_at(&m, zp + 0x1fe), 0xaa55, "boot_flag");
        assert_eq!(u32_at(&m, zp + 0x202), 0x5372_6448, "header");
        let mut magic = [0u8; 4];
        m.read_slice(&mut magic, GuestAddress(zp + 0x202)).unwrap();
        assert_eq!(&magic, b"HdrS");
        assert_eq!(u8_at(&m, zp + 0x210), 0xff, "type_of_loader");
        assert_eq!(u32_at(&m, zp + 0x230), 0x100_0000, "kernel_alignment");
        assert_eq!(u32_at(&m, zp + 0x228), 0x20000, "cmd_line_ptr");
        assert_eq!(u32_at(&m, zp + 0x238), cmdline.len() as u32, "cmdline_size");

        // The command line itself, NUL-terminated.
        let mut buf = vec![0u8; cmdline.len() + 1];
        m.read_slice(&mut buf, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&buf[..cmdline.len()], cmdline.as_bytes());
        assert_eq!(buf[cmdline.len()], 0);

        // e820: count at 0x1e8, 20-byte entries at 0x2d0.
        assert_eq!(u8_at(&m, zp + 0x1e8), 5, "e820_entries");
        let expected = e820_entries(&m).unwrap();
        let mut total = 0;
        for (i, e) in expected.iter().enumerate() {
            let at = zp + 0x2d0 + 20 * i as u64;
            assert_eq!(u64_at(&m, at), e.addr, "entry {i} addr");
            assert_eq!(u64_at(&m, at + 8), e.size, "entry {i} size");
            assert_eq!(u32_at(&m, at + 16), e.kind, "entry {i} type");
            total += u64_at(&m, at + 8);
        }
        assert_eq!(u32_at(&m, zp + 0x2d0 + 20 + 16), E820_RESERVED);
        assert_eq!(u32_at(&m, zp + 0x2d0 + 2 * 20 + 16), E820_ACPI);
        assert_eq!(u64_at(&m, zp + 0x2d0 + 2 * 20), 0xe0000);
        assert_eq!(u64_at(&m, zp + 0x2d0 + 4 * 20), 4 * GIB);
        assert_eq!(total, 4 * GIB);
        // Nothing after the last entry.
        assert_eq!(u64_at(&m, zp + 0x2d0 + 5 * 20 + 8), 0);
        // No initrd, no RSDP.
        assert_eq!(u32_at(&m, zp + 0x218), 0, "ramdisk_image");
        assert_eq!(u64_at(&m, zp + 0x070), 0, "acpi_rsdp_addr");

        // configure_system also wrote the MP table, GDT and page tables.
        let mut mp = [0u8; 4];
        m.read_slice(&mut mp, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&mp, b"_MP_");
        assert_eq!(u64_at(&m, 0x500 + 0x10), 0x00af_9b00_0000_ffff);
        assert_eq!(u64_at(&m, 0x9000), 0xa007);
    }

    #[test]
    fn zero_page_carries_initrd_and_rsdp() {
        let m = mem(&[(0, 256 * MIB)]);
        let boot = BootInfo {
            protocol: BootProtocol::Linux64,
            initrd: Some(InitrdRange {
                addr: GuestAddress(0xff0_0000),
                size: 0xabcde,
            }),
            rsdp: Some(GuestAddress(0xe0000)),
        };
        configure_system(&m, "x", 1, &boot).unwrap();
        let zp = ZERO_PAGE_START;
        assert_eq!(u32_at(&m, zp + 0x218), 0xff0_0000, "ramdisk_image");
        assert_eq!(u32_at(&m, zp + 0x21c), 0xabcde, "ramdisk_size");
        assert_eq!(u64_at(&m, zp + 0x070), 0xe0000, "acpi_rsdp_addr");
    }

    #[test]
    fn bzimage_setup_header_is_copied_into_the_zero_page() {
        use crate::bzimage::tests::{Synth, synth};
        let m = mem(&[(0, 256 * MIB)]);
        let image = synth(&Synth::default());
        let kernel = crate::load_kernel(&m, &mut std::io::Cursor::new(&image)).unwrap();
        let boot = BootInfo {
            initrd: Some(InitrdRange {
                addr: GuestAddress(0x800_0000),
                size: 0x1000,
            }),
            rsdp: Some(GuestAddress(0xe0000)),
            ..BootInfo::new(&kernel)
        };
        configure_system(&m, "console=ttyS0", 1, &boot).unwrap();
        let zp = ZERO_PAGE_START;
        let mut hdr = vec![0u8; 0x26c - 0x1f1];
        m.read_slice(&mut hdr, GuestAddress(zp + 0x1f1)).unwrap();
        // Copied from the image except the loader's fields.
        for off in 0x1f1..0x26c {
            let loader_field = matches!(off, 0x210 | 0x214..=0x21f | 0x228..=0x22b);
            if !loader_field {
                assert_eq!(hdr[off - 0x1f1], image[off], "byte {off:#x}");
            }
        }
        assert_eq!(u8_at(&m, zp + 0x210), 0xff, "type_of_loader");
        assert_eq!(u32_at(&m, zp + 0x214), 0x100_0000, "code32_start");
        assert_eq!(u32_at(&m, zp + 0x218), 0x800_0000, "ramdisk_image");
        assert_eq!(u32_at(&m, zp + 0x21c), 0x1000, "ramdisk_size");
        assert_eq!(u32_at(&m, zp + 0x228), 0x20000, "cmd_line_ptr");
        assert_eq!(u32_at(&m, zp + 0x238), 2047, "the kernel's cmdline_size");
        assert_eq!(u64_at(&m, zp + 0x070), 0xe0000, "acpi_rsdp_addr");
        assert_eq!(u8_at(&m, zp + 0x1e8), 4, "e820_entries");

        // The kernel's cmdline_size is the limit.
        let long = "x".repeat(2048);
        let err = configure_system(&m, &long, 1, &boot).unwrap_err();
        assert!(
            matches!(
                err,
                Error::CmdlineTooLong {
                    len: 2048,
                    max: 2047
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn cmdline_limits() {
        let m = mem(&[(0, 16 * MIB)]);
        let longest = "a".repeat(CMDLINE_MAX_SIZE - 1);
        assert_eq!(write_cmdline(&m, &longest).unwrap(), 4095);
        assert_eq!(u8_at(&m, CMDLINE_START + 4095), 0);

        let too_long = "a".repeat(CMDLINE_MAX_SIZE);
        let err = configure_system(&m, &too_long, 1, &BootInfo::default()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::CmdlineTooLong {
                    len: 4096,
                    max: 4095
                }
            ),
            "{err}"
        );

        let err = configure_system(&m, "console=ttyS0\0init=/bin/sh", 1, &BootInfo::default())
            .unwrap_err();
        assert!(matches!(err, Error::CmdlineNul(13)), "{err}");

        let err = configure_system(&m, "root=/dev/vda\tro", 1, &BootInfo::default()).unwrap_err();
        assert!(matches!(err, Error::Cmdline(_)), "{err}");

        assert_eq!(write_cmdline(&m, "").unwrap(), 0);
        assert_eq!(u8_at(&m, CMDLINE_START), 0);
    }

    #[test]
    fn configure_system_checks_cpu_count() {
        let m = mem(&[(0, 16 * MIB)]);
        assert!(matches!(
            configure_system(&m, "", 0, &BootInfo::default()),
            Err(Error::InvalidCpuCount(0))
        ));
        assert!(matches!(
            configure_system(&m, "", 33, &BootInfo::default()),
            Err(Error::InvalidCpuCount(33))
        ));
    }
}
