//! Loading an ELF kernel (vmlinux, or the minimal test guest) into guest
//! memory.
//!
//! linux-loader's [`Elf`] does the loading. It is called without a
//! "highmem start" limit because the minimal guest has a segment at 0x8000
//! (its application-processor start-up code); instead, every loadable
//! segment is checked here first: it must lie in guest RAM and must not
//! overlap any boot structure of [`crate::layout`].

use std::io::{ErrorKind, Read, Seek, SeekFrom};

use linux_loader::elf::{
    EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, ELFMAG0, ELFMAG1, ELFMAG2, ELFMAG3, EM_X86_64,
    Elf64_Ehdr, Elf64_Phdr, PT_LOAD,
};
use linux_loader::loader::{Elf, Error as LoaderError, KernelLoader, elf};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryBackend, ReadVolatile};

use crate::layout::{
    BOOT_GDT_START, BOOT_STACK_POINTER, CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIMEM_START,
    PML4_START, ZERO_PAGE_START,
};
use crate::paging::PAGE_TABLES_END;
use crate::{Error, Result};

/// Where a loaded kernel starts and ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelEntry {
    /// The ELF entry point, for the boot vCPU's RIP.
    pub entry: GuestAddress,
    /// First address after the highest loaded segment (`p_paddr +
    /// p_memsz`), where an initrd or other payload may follow.
    pub end: GuestAddress,
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
        "kernel command line",
        CMDLINE_START,
        CMDLINE_START + CMDLINE_MAX_SIZE as u64,
    ),
    ("EBDA and MP table", EBDA_START, HIMEM_START),
];

/// What linux-loader's error means, for a user.
fn describe(e: &LoaderError) -> &'static str {
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
/// boot structures, that the entry point is inside one, and returns the
/// end of the highest one.
fn check_segments<M: GuestMemoryBackend>(
    mem: &M,
    ehdr: &Elf64_Ehdr,
    phdrs: &[Elf64_Phdr],
) -> Result<u64> {
    let mut end_max = None;
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
        end_max = end_max.max(Some(end));
    }
    let end = end_max.ok_or_else(|| Error::InvalidElf("no loadable segment".into()))?;
    if !entry_loaded {
        return Err(Error::InvalidElf(format!(
            "the entry point {:#x} is outside every loadable segment",
            ehdr.e_entry
        )));
    }
    Ok(end)
}

/// Loads the ELF kernel `image` into `mem` at its segments' physical
/// addresses (`p_paddr`) and returns its entry point and end.
///
/// Opening the file is the caller's business. The image must be a 64-bit
/// little-endian x86_64 ELF file whose loadable segments all lie in guest
/// RAM and clear of the boot structures (see [`BOOT_STRUCTURES`]); errors
/// name the segment and the structure. The image is read with
/// [`ReadVolatile`] straight into guest memory, which `std::fs::File` and
/// `std::io::Cursor` implement.
pub fn load_kernel<M, F>(mem: &M, image: &mut F) -> Result<KernelEntry>
where
    M: GuestMemoryBackend,
    F: Read + ReadVolatile + Seek,
{
    let (ehdr, phdrs) = read_headers(image)?;
    let end = check_segments(mem, &ehdr, &phdrs)?;
    Elf::load(mem, None, image, None).map_err(|source| Error::Load {
        msg: describe(&source),
        source,
    })?;
    Ok(KernelEntry {
        entry: GuestAddress(ehdr.e_entry),
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
        assert_eq!(err.to_string(), "not an ELF kernel image: invalid magic");

        let err = load_kernel(&m, &mut Cursor::new(Vec::new())).unwrap_err();
        assert_eq!(err.to_string(), "not an ELF kernel image: invalid magic");

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

    #[test]
    fn truncated_image_is_explained() {
        let m = mem();
        let mut image = build_elf(0x10_0000, &[seg(0x10_0000, &[0xf4; 64])]);
        image.truncate(image.len() - 10);
        let err = load_kernel(&m, &mut Cursor::new(&image)).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
