//! Loading a kernel into guest memory and choosing its boot protocol.
//!
//! Three kinds of image are accepted, told apart by their magic numbers:
//!
//! - an ELF `vmlinux` (or the minimal test guest) with a PVH entry note
//!   (`XEN_ELFNOTE_PHYS32_ENTRY`): [`BootProtocol::Pvh`], 32-bit protected
//!   mode at the note's address;
//! - an ELF without that note (or with [`ProtocolChoice::Linux64`]):
//!   [`BootProtocol::Linux64`], the Linux 64-bit boot protocol at `e_entry`;
//! - a bzImage: [`BootProtocol::BzImage`], the 64-bit boot protocol at the
//!   protected-mode kernel's 64-bit entry (see [`crate::bzimage`]).
//!
//! linux-loader's [`Elf`] and [`BzImage`](linux_loader::loader::BzImage)
//! do the loading. The ELF loader is called without a "highmem start" limit
//! because the minimal guest has a segment at 0x8000 (its
//! application-processor start-up code); instead, every loadable segment is
//! checked here first: it must lie in guest RAM and must not overlap any
//! boot structure of [`crate::layout`].

use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::str::FromStr;

use linux_loader::bootparam::setup_header;
use linux_loader::elf::{
    EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, ELFMAG0, ELFMAG1, ELFMAG2, ELFMAG3, EM_X86_64,
    Elf64_Ehdr, Elf64_Phdr, PT_LOAD,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{Elf, Error as LoaderError, KernelLoader, bzimage, elf};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryBackend, ReadVolatile};

use crate::bzimage::{is_bzimage, load_bzimage};
use crate::layout::{
    ACPI_END, ACPI_START, BOOT_GDT_START, BOOT_STACK_POINTER, CMDLINE_MAX_SIZE, CMDLINE_START,
    EBDA_START, PML4_START, PVH_INFO_START, ZERO_PAGE_START,
};
use crate::paging::PAGE_TABLES_END;
use crate::{Error, Result};

/// The highest address an initrd may occupy for ELF kernels (PVH and the
/// 64-bit protocol), as for a bzImage that does not say: 2 GiB - 1.
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BootProtocol {
    /// The Linux 64-bit boot protocol with an ELF kernel: long mode, paging
    /// on the boot page tables, `RIP` = the ELF entry, `RSI` = the zero
    /// page.
    Linux64,
    /// The PVH boot protocol (Xen's `docs/misc/pvh.pandoc`, used by Linux
    /// with `CONFIG_PVH`): 32-bit protected mode, paging off, `EIP` = the
    /// `XEN_ELFNOTE_PHYS32_ENTRY` address, `EBX` = the `hvm_start_info` at
    /// [`crate::layout::PVH_INFO_START`].
    Pvh,
    /// The Linux 64-bit boot protocol with a bzImage: as [`Self::Linux64`],
    /// entered at the protected-mode kernel's 64-bit entry, with the
    /// kernel's setup header copied into the zero page.
    BzImage(setup_header),
}

/// Which entry of an ELF kernel to use; a bzImage always boots with the
/// 64-bit protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProtocolChoice {
    /// PVH when the ELF has a PVH entry note, the 64-bit protocol otherwise.
    #[default]
    Auto,
    /// The 64-bit boot protocol at `e_entry`, even with a PVH note.
    Linux64,
    /// PVH; an error for a kernel without a PVH entry note or a bzImage.
    Pvh,
}

impl FromStr for ProtocolChoice {
    type Err = String;

    /// Parses `auto`, `linux64` or `pvh`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "linux64" => Ok(Self::Linux64),
            "pvh" => Ok(Self::Pvh),
            _ => Err(format!(
                "unknown boot protocol {s:?} (expected auto, linux64 or pvh)"
            )),
        }
    }
}

/// Where a loaded kernel is and how to enter it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KernelEntry {
    /// The boot vCPU's first instruction: the ELF entry, the PVH entry, or
    /// the bzImage's 64-bit entry (load address + 0x200).
    pub entry: GuestAddress,
    /// The boot protocol `entry` belongs to.
    pub protocol: BootProtocol,
    /// Lowest address the kernel occupies.
    pub start: GuestAddress,
    /// First address after everything the kernel occupies: the highest
    /// ELF segment's `p_paddr + p_memsz`, or for a bzImage the end of the
    /// memory its decompressor uses (`init_size`). An initrd goes above.
    pub end: GuestAddress,
}

impl KernelEntry {
    /// The highest address the initrd may occupy: the bzImage's
    /// `initrd_addr_max`, [`DEFAULT_INITRD_ADDR_MAX`] for ELF kernels.
    pub fn initrd_addr_max(&self) -> u64 {
        match &self.protocol {
            BootProtocol::BzImage(hdr) if hdr.initrd_addr_max != 0 => {
                u64::from(hdr.initrd_addr_max)
            }
            _ => DEFAULT_INITRD_ADDR_MAX,
        }
    }
}

/// The guest memory ranges a kernel segment must not overwrite.
pub const BOOT_STRUCTURES: &[(&str, u64, u64)] = &[
    ("boot GDT/IDT page", BOOT_GDT_START & !0xfff, 0x1000),
    (
        "boot stack and zero page",
        (BOOT_STACK_POINTER & !0xfff),
        ZERO_PAGE_START + 0x1000,
    ),
    ("boot page tables", PML4_START, PAGE_TABLES_END),
    (
        "PVH start_info page",
        PVH_INFO_START,
        PVH_INFO_START + 0x1000,
    ),
    (
        "kernel command line",
        CMDLINE_START,
        CMDLINE_START + CMDLINE_MAX_SIZE as u64,
    ),
    ("EBDA and MP table", EBDA_START, ACPI_START),
    ("ACPI tables", ACPI_START, ACPI_END),
];

/// What linux-loader's error means, for a user.
pub(crate) fn describe(e: &LoaderError) -> &'static str {
    match e {
        LoaderError::Elf(e) => match e {
            elf::Error::InvalidElfMagicNumber => "invalid ELF magic",
            elf::Error::BigEndianElfOnLittle => "big-endian ELF on a little-endian machine",
            elf::Error::InvalidProgramHeaderSize => "invalid program header entry size",
            elf::Error::InvalidProgramHeaderOffset => "invalid program header table offset",
            elf::Error::InvalidProgramHeaderAddress => "a segment address overflows",
            elf::Error::InvalidEntryAddress => "invalid entry point address",
            elf::Error::Overflow => "an address computation overflows",
            elf::Error::ReadElfHeader => "the file is too short for an ELF header",
            elf::Error::ReadKernelImage => {
                "a segment's data runs past the end of the file (truncated image?)"
            }
            elf::Error::ReadProgramHeader => {
                "the program header table runs past the end of the file"
            }
            elf::Error::SeekKernelStart
            | elf::Error::SeekElfStart
            | elf::Error::SeekProgramHeader
            | elf::Error::SeekNoteHeader => "cannot seek in the image file",
            elf::Error::ReadNoteHeader => "an ELF note runs past the end of the file",
            elf::Error::InvalidPvhNote => "invalid PVH entry note",
            elf::Error::Align => "invalid ELF note alignment",
        },
        LoaderError::Bzimage(e) => match e {
            bzimage::Error::ReadBzImageCompressedKernel => {
                "the protected-mode kernel does not fit in guest memory"
            }
            bzimage::Error::Underflow => "the file is shorter than its setup sectors",
            _ => "invalid bzImage",
        },
        LoaderError::MemoryOverflow => "a segment ends beyond the 64-bit address space",
        LoaderError::InvalidKernelStartAddress => "invalid kernel start address",
        _ => "the kernel loader failed",
    }
}

fn read_exact<F: Read>(image: &mut F, buf: &mut [u8], short: &'static str) -> Result<()> {
    image.read_exact(buf).map_err(|e| match e.kind() {
        ErrorKind::UnexpectedEof => Error::InvalidElf(short.to_string()),
        _ => Error::KernelRead(e),
    })
}

/// Reads and checks the ELF header and program headers.
fn read_headers<F: Read + Seek>(image: &mut F) -> Result<(Elf64_Ehdr, Vec<Elf64_Phdr>)> {
    image.rewind().map_err(Error::KernelRead)?;
    let mut ehdr = Elf64_Ehdr::default();
    let buf = ehdr.as_mut_slice();
    let mut got = 0;
    while got < buf.len() {
        match image.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::KernelRead(e)),
        }
    }
    let id = &buf[..got];
    if id.len() < 4 || id[..4] != [ELFMAG0, ELFMAG1, ELFMAG2, ELFMAG3] {
        return Err(Error::NotElf("invalid magic"));
    }
    if got < buf.len() {
        return Err(Error::NotElf("the file is shorter than an ELF header"));
    }
    if ehdr.e_ident[EI_CLASS] != ELFCLASS64 {
        return Err(Error::InvalidElf("not a 64-bit ELF file".into()));
    }
    if ehdr.e_ident[EI_DATA] != ELFDATA2LSB {
        return Err(Error::InvalidElf("not a little-endian ELF file".into()));
    }
    if ehdr.e_machine != EM_X86_64 {
        return Err(Error::InvalidElf(format!(
            "built for ELF machine {}, not x86_64 ({EM_X86_64})",
            ehdr.e_machine
        )));
    }
    if usize::from(ehdr.e_phentsize) != std::mem::size_of::<Elf64_Phdr>() {
        return Err(Error::InvalidElf(format!(
            "program header entries are {} bytes, not {}",
            ehdr.e_phentsize,
            std::mem::size_of::<Elf64_Phdr>()
        )));
    }
    image
        .seek(SeekFrom::Start(ehdr.e_phoff))
        .map_err(Error::KernelRead)?;
    let mut phdrs = Vec::with_capacity(usize::from(ehdr.e_phnum));
    for _ in 0..ehdr.e_phnum {
        let mut ph = Elf64_Phdr::default();
        read_exact(
            image,
            ph.as_mut_slice(),
            "the program header table runs past the end of the file",
        )?;
        phdrs.push(ph);
    }
    Ok((ehdr, phdrs))
}

/// Checks that every loadable segment lies in guest RAM and clear of the
/// boot structures and that the entry point is inside one; returns the
/// loaded ranges.
fn check_segments<M: GuestMemoryBackend>(
    mem: &M,
    ehdr: &Elf64_Ehdr,
    phdrs: &[Elf64_Phdr],
) -> Result<Vec<(u64, u64)>> {
    let mut ranges = Vec::new();
    let mut entry_loaded = false;
    for (index, ph) in phdrs.iter().enumerate() {
        if ph.p_type != PT_LOAD || ph.p_memsz == 0 {
            continue;
        }
        let start = ph.p_paddr;
        let end = start.checked_add(ph.p_memsz).ok_or_else(|| {
            Error::InvalidElf(format!(
                "segment {index} at {start:#x} of {:#x} bytes overflows the address space",
                ph.p_memsz
            ))
        })?;
        if ph.p_filesz > ph.p_memsz {
            return Err(Error::InvalidElf(format!(
                "segment {index} has more file data ({:#x}) than memory size ({:#x})",
                ph.p_filesz, ph.p_memsz
            )));
        }
        for &(structure, s_start, s_end) in BOOT_STRUCTURES {
            if start < s_end && s_start < end {
                return Err(Error::SegmentOverlap {
                    index,
                    start,
                    end,
                    structure,
                    structure_start: s_start,
                    structure_end: s_end,
                });
            }
        }
        let in_ram =
            usize::try_from(ph.p_memsz).is_ok_and(|len| mem.check_range(GuestAddress(start), len));
        if !in_ram {
            return Err(Error::SegmentOutsideRam { index, start, end });
        }
        entry_loaded |= (start..end).contains(&ehdr.e_entry);
        ranges.push((start, end));
    }
    if ranges.is_empty() {
        return Err(Error::InvalidElf("no loadable segment".into()));
    }
    if !entry_loaded {
        return Err(Error::InvalidElf(format!(
            "the entry point {:#x} is outside every loadable segment",
            ehdr.e_entry
        )));
    }
    Ok(ranges)
}

/// Loads the kernel `image` (ELF or bzImage) into `mem` and returns where
/// it is and how to enter it, PVH when an ELF kernel has a PVH entry note
/// (see [`load_kernel_with`]).
pub fn load_kernel<M, F>(mem: &M, image: &mut F) -> Result<KernelEntry>
where
    M: GuestMemoryBackend,
    F: Read + ReadVolatile + Seek,
{
    load_kernel_with(mem, image, ProtocolChoice::Auto)
}

/// Loads the kernel `image` into `mem` for the boot protocol `choice`.
///
/// Opening the file is the caller's business. An ELF image must be a
/// 64-bit little-endian x86_64 ELF file whose loadable segments all lie in
/// guest RAM and clear of the boot structures (see [`BOOT_STRUCTURES`]);
/// errors name the segment and the structure. A bzImage is checked and
/// placed as [`crate::bzimage`] says. The image is read with
/// [`ReadVolatile`] straight into guest memory, which `std::fs::File` and
/// `std::io::Cursor` implement.
pub fn load_kernel_with<M, F>(mem: &M, image: &mut F, choice: ProtocolChoice) -> Result<KernelEntry>
where
    M: GuestMemoryBackend,
    F: Read + ReadVolatile + Seek,
{
    if is_bzimage(image)? {
        if choice == ProtocolChoice::Pvh {
            return Err(Error::NoPvhEntry);
        }
        return load_bzimage(mem, image);
    }
    load_elf(mem, image, choice)
}

fn load_elf<M, F>(mem: &M, image: &mut F, choice: ProtocolChoice) -> Result<KernelEntry>
where
    M: GuestMemoryBackend,
    F: Read + ReadVolatile + Seek,
{
    let (ehdr, phdrs) = read_headers(image)?;
    let ranges = check_segments(mem, &ehdr, &phdrs)?;
    let loaded = Elf::load(mem, None, image, None).map_err(|source| Error::Load {
        msg: describe(&source),
        source,
    })?;
    let start = ranges.iter().map(|r| r.0).min().unwrap_or(0);
    let end = ranges.iter().map(|r| r.1).max().unwrap_or(0);
    let pvh = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr),
        _ => None,
    };
    let (entry, protocol) = match (choice, pvh) {
        (ProtocolChoice::Auto | ProtocolChoice::Pvh, Some(addr)) => (addr, BootProtocol::Pvh),
        (ProtocolChoice::Pvh, None) => return Err(Error::NoPvhEntry),
        (ProtocolChoice::Auto | ProtocolChoice::Linux64, _) => {
            (GuestAddress(ehdr.e_entry), BootProtocol::Linux64)
        }
    };
    if !ranges.iter().any(|&(s, e)| (s..e).contains(&entry.0)) {
        return Err(Error::InvalidElf(format!(
            "the PVH entry point {:#x} is outside every loadable segment",
            entry.0
        )));
    }
    Ok(KernelEntry {
        entry,
        protocol,
        start: GuestAddress(start),
        end: GuestAddress(end),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use vm_memory::{Bytes, GuestMemoryMmap};

    /// One PT_LOAD segment of an ELF built by [`build_elf`].
    struct Seg {
        paddr: u64,
        data: Vec<u8>,
        memsz: u64,
    }

    /// Hand-assembles a little-endian x86_64 ELF executable: 64-byte ELF
    /// header, program headers right after it, segment data after those.
    fn build_elf(entry: u64, segs: &[Seg]) -> Vec<u8> {
        let phoff = 64u64;
        let mut data_off = phoff + 56 * segs.len() as u64;
        let mut out = Vec::new();
        out.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&2u16.to_le_bytes()); // e_type ET_EXEC
        out.extend_from_slice(&62u16.to_le_bytes()); // e_machine EM_X86_64
        out.extend_from_slice(&1u32.to_le_bytes()); // e_version
        out.extend_from_slice(&entry.to_le_bytes()); // e_entry
        out.extend_from_slice(&phoff.to_le_bytes()); // e_phoff
        out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        out.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
        out.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
        out.extend_from_slice(&(segs.len() as u16).to_le_bytes()); // e_phnum
        out.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
        out.extend_from_slice(&[0; 4]); // e_shnum, e_shstrndx
        assert_eq!(out.len(), 64);
        for s in segs {
            out.extend_from_slice(&1u32.to_le_bytes()); // p_type PT_LOAD
            out.extend_from_slice(&7u32.to_le_bytes()); // p_flags RWX
            out.extend_from_slice(&data_off.to_le_bytes()); // p_offset
            out.extend_from_slice(&s.paddr.to_le_bytes()); // p_vaddr
            out.extend_from_slice(&s.paddr.to_le_bytes()); // p_paddr
            out.extend_from_slice(&(s.data.len() as u64).to_le_bytes()); // p_filesz
            out.extend_from_slice(&s.memsz.to_le_bytes()); // p_memsz
            out.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
            data_off += s.data.len() as u64;
        }
        for s in segs {
            out.extend_from_slice(&s.data);
        }
        out
    }

    fn seg(paddr: u64, data: &[u8]) -> Seg {
        Seg {
            paddr,
            data: data.to_vec(),
            memsz: data.len() as u64,
        }
    }

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    #[test]
    fn loads_segments_at_their_physical_addresses() {
        let code = [0xf4u8, 0xeb, 0xfd]; // hlt; jmp .-1
        let data = b"vmkit data".to_vec();
        let image = build_elf(
            0x10_0000,
            &[
                seg(0x10_0000, &code),
                Seg {
                    paddr: 0x20_0000,
                    data: data.clone(),
                    memsz: 0x2000,
                },
                // The minimal guest's AP start-up code sits at 0x8000.
                seg(0x8000, &[0xfa]),
            ],
        );
        let m = mem();
        let k = load_kernel(&m, &mut Cursor::new(&image)).unwrap();
        assert_eq!(k.entry, GuestAddress(0x10_0000));
        assert_eq!(k.end, GuestAddress(0x20_2000), "end of the highest p_memsz");

        let mut got = [0u8; 3];
        m.read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(got, code);
        let mut got = vec![0u8; data.len()];
        m.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(got, data);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x8000)).unwrap(), 0xfa);
    }

    #[test]
    fn loads_from_a_file() {
        let image = build_elf(0x10_0000, &[seg(0x10_0000, &[0x90, 0xf4])]);
        let path = std::env::temp_dir().join(format!("vmkit-boot-test-{}.elf", std::process::id()));
        std::fs::write(&path, &image).unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        let m = mem();
        let k = load_kernel(&m, &mut file);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(k.unwrap().end, GuestAddress(0x10_0002));
        assert_eq!(m.read_obj::<u16>(GuestAddress(0x10_0000)).unwrap(), 0xf490);
    }

    #[test]
    fn garbage_is_not_an_elf() {
        let m = mem();
        let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        let err = load_kernel(&m, &mut Cursor::new(&garbage)).unwrap_err();
        assert!(matches!(err, Error::NotElf(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "not an ELF or bzImage kernel image: invalid magic"
        );

        let err = load_kernel(&m, &mut Cursor::new(Vec::new())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not an ELF or bzImage kernel image: invalid magic"
        );

        let err = load_kernel(&m, &mut Cursor::new(b"\x7fELF\x02\x01".to_vec())).unwrap_err();
        assert!(
            err.to_string().contains("shorter than an ELF header"),
            "{err}"
        );
    }

    #[test]
    fn wrong_kind_of_elf_is_explained() {
        let m = mem();
        let mut image = build_elf(0x10_0000, &[seg(0x10_0000, &[0xf4])]);
        image[18] = 183; // EM_AARCH64
        let err = load_kernel(&m, &mut Cursor::new(&image)).unwrap_err();
        assert!(err.to_string().contains("machine 183, not x86_64"), "{err}");

        let mut image = build_elf(0x10_0000, &[seg(0x10_0000, &[0xf4])]);
        image[4] = 1; // ELFCLASS32
        let err = load_kernel(&m, &mut Cursor::new(&image)).unwrap_err();
        assert!(err.to_string().contains("not a 64-bit ELF"), "{err}");
    }

    #[test]
    fn segment_over_the_zero_page_is_refused() {
        let m = mem();
        let image = build_elf(0x7000, &[seg(0x7000, &[0xf4; 16])]);
        let err = load_kernel(&m, &mut Cursor::new(&image)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::SegmentOverlap {
                    index: 0,
                    structure: "boot stack and zero page",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "ELF kernel segment 0 (0x7000..0x7010) overlaps the boot stack and zero page \
             at 0x6000..0x8000"
        );
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0x7000)).unwrap(),
            0,
            "nothing loaded"
        );
    }

    #[test]
    fn every_boot_structure_is_protected() {
        let m = mem();
        for &(name, start, end) in BOOT_STRUCTURES {
            for addr in [start, end - 1] {
                let image = build_elf(0x10_0000, &[seg(0x10_0000, &[0xf4]), seg(addr, &[1])]);
                let err = load_kernel(&m, &mut Cursor::new(&image)).unwrap_err();
                assert!(
                    matches!(err, Error::SegmentOverlap { index: 1, structure, .. } if structure == name),
                    "{addr:#x}: {err:?}"
                );
            }
        }
        // A segment's zero-filled tail (p_memsz > p_filesz) counts too.
        let image = build_elf(
            0x5000,
            &[Seg {
                paddr: 0x5000,
                data: vec![0xf4],
                memsz: 0x1001,
            }],
        );
        let err = load_kernel(&m, &mut Cursor::new(&image)).unwrap_err();
        assert!(matches!(err, Error::SegmentOverlap { .. }), "{err:?}");
    }

    #[test]
    fn segment_outside_ram_is_refused() {
        let m = mem();
        let image = build_elf(0x3f_f000, &[seg(0x3f_f000, &[0xf4; 0x2000])]);
        let err = load_kernel(&m, &mut Cursor::new(&image)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::SegmentOutsideRam {
                    index: 0,
                    start: 0x3f_f000,
                    end: 0x40_1000
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn entry_outside_the_image_is_refused() {
        let m = mem();
        let image = build_elf(0x30_0000, &[seg(0x10_0000, &[0xf4])]);
        let err = load_kernel(&m, &mut Cursor::new(&image)).unwrap_err();
        assert!(err.to_string().contains("entry point 0x300000"), "{err}");
    }

    /// `build_elf` with one more program header: a PT_NOTE holding a
    /// XEN_ELFNOTE_PHYS32_ENTRY note for `pvh_entry` (appended at the end).
    fn build_elf_with_pvh_note(entry: u64, segs: &[Seg], pvh_entry: u32) -> Vec<u8> {
        let mut note = Vec::new();
        for v in [4u32, 4, 18] {
            note.extend_from_slice(&v.to_le_bytes());
        }
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&pvh_entry.to_le_bytes());
        // Re-lay the image with room for one more header.
        let mut with_room: Vec<Seg> = segs
            .iter()
            .map(|s| Seg {
                paddr: s.paddr,
                data: s.data.clone(),
                memsz: s.memsz,
            })
            .collect();
        // A dummy extra segment reserves the header slot; turned into the
        // note below (p_type 4, data appended after everything).
        with_room.push(seg(0, &[]));
        let mut out = build_elf(entry, &with_room);
        let note_off = out.len() as u64;
        out.extend_from_slice(&note);
        let ph = 64 + 56 * segs.len();
        out[ph..ph + 4].copy_from_slice(&4u32.to_le_bytes());
        out[ph + 8..ph + 16].copy_from_slice(&note_off.to_le_bytes());
        out[ph + 32..ph + 40].copy_from_slice(&(note.len() as u64).to_le_bytes());
        out[ph + 40..ph + 48].copy_from_slice(&(note.len() as u64).to_le_bytes());
        out
    }

    #[test]
    fn pvh_note_chooses_pvh_unless_linux64_is_forced() {
        let code = [0xf4u8; 0x40];
        let image = build_elf_with_pvh_note(0x10_0000, &[seg(0x10_0000, &code)], 0x10_0020);
        let m = mem();
        let k = load_kernel(&m, &mut Cursor::new(&image)).unwrap();
        assert_eq!(k.protocol, BootProtocol::Pvh);
        assert_eq!(k.entry, GuestAddress(0x10_0020), "the note's entry");
        assert_eq!(
            (k.start, k.end),
            (GuestAddress(0x10_0000), GuestAddress(0x10_0040))
        );
        assert_eq!(k.initrd_addr_max(), 0x7fff_ffff);

        let k = load_kernel_with(&m, &mut Cursor::new(&image), ProtocolChoice::Linux64).unwrap();
        assert_eq!(k.protocol, BootProtocol::Linux64);
        assert_eq!(k.entry, GuestAddress(0x10_0000), "e_entry");

        let k = load_kernel_with(&m, &mut Cursor::new(&image), ProtocolChoice::Pvh).unwrap();
        assert_eq!(k.protocol, BootProtocol::Pvh);
    }

    #[test]
    fn pvh_needs_a_note_inside_the_image() {
        let m = mem();
        let plain = build_elf(0x10_0000, &[seg(0x10_0000, &[0xf4])]);
        let k = load_kernel(&m, &mut Cursor::new(&plain)).unwrap();
        assert_eq!(k.protocol, BootProtocol::Linux64, "no note: 64-bit entry");
        let err = load_kernel_with(&m, &mut Cursor::new(&plain), ProtocolChoice::Pvh).unwrap_err();
        assert!(matches!(err, Error::NoPvhEntry), "{err:?}");

        let outside = build_elf_with_pvh_note(0x10_0000, &[seg(0x10_0000, &[0xf4])], 0x30_0000);
        let err = load_kernel(&m, &mut Cursor::new(&outside)).unwrap_err();
        assert!(
            err.to_string().contains("PVH entry point 0x300000"),
            "{err}"
        );
    }

    #[test]
    fn protocol_choice_parses() {
        assert_eq!("pvh".parse(), Ok(ProtocolChoice::Pvh));
        assert_eq!("linux64".parse(), Ok(ProtocolChoice::Linux64));
        assert_eq!("auto".parse(), Ok(ProtocolChoice::Auto));
        assert!("bzimage".parse::<ProtocolChoice>().is_err());
    }

    #[test]
    fn truncated_image_is_explained() {
        let m = mem();
        let mut image = build_elf(0x10_0000, &[seg(0x10_0000, &[0xf4; 64])]);
        image.truncate(image.len() - 10);
        let err = load_kernel(&m, &mut Cursor::new(&image)).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
