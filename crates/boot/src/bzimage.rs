//! bzImage kernels through the Linux 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst).
//!
//! The setup header at offset `0x1f1` is read and checked: the magic
//! `"HdrS"`, boot protocol 2.06 or later (`cmdline_size`), `LOADED_HIGH` in
//! `loadflags` (a bzImage, not a zImage), and `XLF_KERNEL_64` in
//! `xloadflags` (protocol 2.12), without which there is no 64-bit entry. The
//! protected-mode kernel (everything after the `setup_sects + 1` setup
//! sectors) is loaded by linux-loader's
//! [`BzImage`] at its `pref_address` when the
//! kernel is relocatable and fits there, at 1 MiB otherwise; the entry is
//! 0x200 past the load address. The setup header goes into the zero page as
//! the protocol says: bytes `0x1f1` up to `0x202 + (byte at 0x201)` copied
//! from the image, then the loader's fields filled in (see
//! [`crate::params`]).
//!
//! The kernel's footprint ([`KernelEntry::end`]) covers what its
//! decompressor uses: `init_size` bytes from the load address, and from
//! `pref_address` (`LOAD_PHYSICAL_ADDR`), where a kernel loaded lower
//! decompresses itself to. The initrd is placed above it.

use std::io::{ErrorKind, Read, Seek, SeekFrom};

use linux_loader::bootparam::{LOADED_HIGH, XLF_KERNEL_64, setup_header};
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryBackend, ReadVolatile};

use crate::layout::HIMEM_START;
use crate::loader::{BootProtocol, KernelEntry};
use crate::{Error, Result};

/// Offset of the setup header in the image (and in the zero page).
pub const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// Offset of the `"HdrS"` magic.
pub const HDRS_OFFSET: u64 = 0x202;
/// `"HdrS"`, little endian.
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// Oldest boot protocol accepted: 2.06, which has `cmdline_size`.
pub const MIN_PROTOCOL: u16 = 0x0206;
/// Boot protocol that added `xloadflags` (and with it `XLF_KERNEL_64`).
pub const XLOADFLAGS_PROTOCOL: u16 = 0x020c;
/// Offset of the 64-bit entry from the protected-mode kernel's load
/// address.
pub const ENTRY_64_OFFSET: u64 = 0x200;

/// Size of linux-loader's `setup_header` (`0x1f1..0x26c`).
const HEADER_SIZE: usize = std::mem::size_of::<setup_header>();

/// Whether `image` has a bzImage setup header (`"HdrS"` at 0x202). Leaves
/// the position anywhere.
pub fn is_bzimage<F: Read + Seek>(image: &mut F) -> Result<bool> {
    let mut magic = [0u8; 4];
    image
        .seek(SeekFrom::Start(HDRS_OFFSET))
        .map_err(Error::KernelRead)?;
    match image.read_exact(&mut magic) {
        Ok(()) => Ok(u32::from_le_bytes(magic) == HDRS_MAGIC),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(Error::KernelRead(e)),
    }
}

/// Reads the setup header of `image` and checks it can be booted through
/// the 64-bit entry. Bytes past the header's declared end (`0x202 + byte at
/// 0x201`) are zero, as in the zero page the protocol asks for.
pub fn read_setup_header<F: Read + Seek>(image: &mut F) -> Result<setup_header> {
    let mut hdr = setup_header::default();
    image
        .seek(SeekFrom::Start(SETUP_HEADER_OFFSET))
        .map_err(Error::KernelRead)?;
    let buf = hdr.as_mut_slice();
    image.read_exact(buf).map_err(|e| match e.kind() {
        ErrorKind::UnexpectedEof => {
            Error::InvalidBzImage("the file is too short for a setup header".into())
        }
        _ => Error::KernelRead(e),
    })?;
    // The header ends at 0x202 + the jump's 8-bit displacement (byte 0x201).
    let declared_end = HDRS_OFFSET as usize + usize::from(buf[0x201 - 0x1f1]);
    let len = declared_end - SETUP_HEADER_OFFSET as usize;
    if len < HEADER_SIZE {
        buf[len..].fill(0);
    }
    check_setup_header(&hdr)?;
    Ok(hdr)
}

/// The checks of [`read_setup_header`] on a header already read.
pub fn check_setup_header(hdr: &setup_header) -> Result<()> {
    let magic = hdr.header;
    if magic != HDRS_MAGIC {
        return Err(Error::InvalidBzImage(format!(
            "no \"HdrS\" magic (found {magic:#x})"
        )));
    }
    let version = hdr.version;
    if version < MIN_PROTOCOL {
        return Err(Error::BzImageTooOld { version });
    }
    if hdr.loadflags & LOADED_HIGH == 0 {
        return Err(Error::InvalidBzImage(
            "LOADED_HIGH is clear in loadflags: a zImage, which loads at 0x10000".into(),
        ));
    }
    let xloadflags = hdr.xloadflags;
    if version < XLOADFLAGS_PROTOCOL || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Error::BzImageNot64Bit {
            version,
            xloadflags,
        });
    }
    Ok(())
}

/// Where the protected-mode kernel goes and how far its footprint reaches,
/// for `payload` bytes of it: `(load address, end)`.
pub fn placement<M: GuestMemoryBackend>(
    mem: &M,
    hdr: &setup_header,
    payload: u64,
) -> Result<(u64, u64)> {
    let init_size = u64::from(hdr.init_size);
    let pref = hdr.pref_address;
    let need = payload.max(init_size);
    let fits = |addr: u64| {
        addr.checked_add(need).is_some()
            && usize::try_from(need).is_ok_and(|n| mem.check_range(GuestAddress(addr), n))
    };
    let load = if hdr.relocatable_kernel != 0 && pref >= HIMEM_START && fits(pref) {
        pref
    } else {
        HIMEM_START
    };
    // A kernel loaded below LOAD_PHYSICAL_ADDR (= pref_address) decompresses
    // itself there: that must be RAM too.
    let decompressed_end = if pref > load {
        pref.saturating_add(init_size)
    } else {
        0
    };
    let end = load.saturating_add(need).max(decompressed_end);
    let in_ram = fits(load)
        && (decompressed_end == 0
            || usize::try_from(init_size).is_ok_and(|n| mem.check_range(GuestAddress(pref), n)));
    if !in_ram {
        return Err(Error::KernelOutsideRam { start: load, end });
    }
    Ok((load, end))
}

/// Loads the bzImage `image` (see the module documentation).
pub fn load_bzimage<M, F>(mem: &M, image: &mut F) -> Result<KernelEntry>
where
    M: GuestMemoryBackend,
    F: Read + ReadVolatile + Seek,
{
    let mut hdr = read_setup_header(image)?;
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let setup_size = (setup_sects + 1) * 512;
    let file_size = image.seek(SeekFrom::End(0)).map_err(Error::KernelRead)?;
    let payload = file_size
        .checked_sub(setup_size)
        .filter(|&p| p > 0)
        .ok_or_else(|| {
            Error::InvalidBzImage(format!(
                "the file ({file_size} bytes) ends within its {setup_sects} setup sectors"
            ))
        })?;
    let (load, end) = placement(mem, &hdr, payload)?;
    BzImage::load(mem, Some(GuestAddress(load)), image, None).map_err(|source| Error::Load {
        msg: crate::loader::describe(&source),
        source,
    })?;
    // Where the protected-mode kernel is (boot.rst: "code32_start").
    hdr.code32_start = load as u32;
    Ok(KernelEntry {
        entry: GuestAddress(load + ENTRY_64_OFFSET),
        protocol: BootProtocol::BzImage(hdr),
        start: GuestAddress(load),
        end: GuestAddress(end),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;
    use vm_memory::{Bytes, GuestMemoryMmap};

    /// Options of a synthetic bzImage.
    pub(crate) struct Synth {
        pub version: u16,
        pub loadflags: u8,
        pub xloadflags: u16,
        pub relocatable: u8,
        pub pref_address: u64,
        pub init_size: u32,
        pub initrd_addr_max: u32,
        pub cmdline_size: u32,
        pub setup_sects: u8,
        pub payload: Vec<u8>,
    }

    impl Default for Synth {
        fn default() -> Self {
            Synth {
                version: 0x020f,
                loadflags: LOADED_HIGH,
                xloadflags: XLF_KERNEL_64,
                relocatable: 1,
                pref_address: 0x100_0000,
                init_size: 0x10_0000,
                initrd_addr_max: 0x7fff_ffff,
                cmdline_size: 2047,
                setup_sects: 2,
                payload: (0..0x3000u32).map(|i| (i * 13 + 1) as u8).collect(),
            }
        }
    }

    /// A bzImage whose setup sectors hold only the header fields this
    /// loader reads, at their boot.rst offsets.
    pub(crate) fn synth(s: &Synth) -> Vec<u8> {
        let setup = (usize::from(s.setup_sects) + 1) * 512;
        let mut img = vec![0u8; setup];
        let put = |img: &mut Vec<u8>, off: usize, bytes: &[u8]| {
            img[off..off + bytes.len()].copy_from_slice(bytes)
        };
        put(&mut img, 0x1f1, &[s.setup_sects]);
        put(&mut img, 0x1fe, &0xaa55u16.to_le_bytes());
        // jmp short to the end of a header that reaches 0x26c.
        put(&mut img, 0x200, &[0xeb, 0x6a]);
        put(&mut img, 0x202, b"HdrS");
        put(&mut img, 0x206, &s.version.to_le_bytes());
        put(&mut img, 0x211, &[s.loadflags]);
        put(&mut img, 0x214, &0x10_0000u32.to_le_bytes());
        put(&mut img, 0x22c, &s.initrd_addr_max.to_le_bytes());
        put(&mut img, 0x230, &0x20_0000u32.to_le_bytes());
        put(&mut img, 0x234, &[s.relocatable]);
        put(&mut img, 0x236, &s.xloadflags.to_le_bytes());
        put(&mut img, 0x238, &s.cmdline_size.to_le_bytes());
        put(&mut img, 0x258, &s.pref_address.to_le_bytes());
        put(&mut img, 0x260, &s.init_size.to_le_bytes());
        img.extend_from_slice(&s.payload);
        img
    }

    fn mem(size: usize) -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    #[test]
    fn good_image_loads_at_pref_address() {
        let s = Synth::default();
        let m = mem(64 << 20);
        let k = crate::load_kernel(&m, &mut Cursor::new(synth(&s))).unwrap();
        assert_eq!(k.start, GuestAddress(0x100_0000));
        assert_eq!(k.entry, GuestAddress(0x100_0200), "64-bit entry");
        assert_eq!(k.end, GuestAddress(0x110_0000), "init_size > payload");
        let BootProtocol::BzImage(hdr) = k.protocol else {
            panic!("{:?}", k.protocol)
        };
        assert_eq!({ hdr.code32_start }, 0x100_0000);
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!({ hdr.cmdline_size }, 2047);
        assert_eq!(k.initrd_addr_max(), 0x7fff_ffff);
        let mut got = vec![0u8; s.payload.len()];
        m.read_slice(&mut got, GuestAddress(0x100_0000)).unwrap();
        assert_eq!(
            got, s.payload,
            "the protected-mode kernel, setup sectors skipped"
        );
    }

    #[test]
    fn non_relocatable_or_unfitting_loads_at_1mib() {
        let m = mem(64 << 20);
        let s = Synth {
            relocatable: 0,
            ..Default::default()
        };
        let k = crate::load_kernel(&m, &mut Cursor::new(synth(&s))).unwrap();
        assert_eq!(k.start, GuestAddress(0x10_0000));
        assert_eq!(k.entry, GuestAddress(0x10_0200));
        // It decompresses to pref_address: the footprint reaches there.
        assert_eq!(k.end, GuestAddress(0x110_0000));

        // pref_address beyond RAM: at 1 MiB it would still decompress
        // itself to pref_address + init_size, which is not RAM.
        let s = Synth {
            pref_address: 0x1000_0000,
            init_size: 0x1000,
            ..Default::default()
        };
        let err = crate::load_kernel(&m, &mut Cursor::new(synth(&s))).unwrap_err();
        assert!(
            matches!(
                err,
                Error::KernelOutsideRam {
                    start: 0x10_0000,
                    end: 0x1000_1000
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn too_old_is_refused_clearly() {
        let m = mem(64 << 20);
        let s = Synth {
            version: 0x0205,
            ..Default::default()
        };
        let err = crate::load_kernel(&m, &mut Cursor::new(synth(&s))).unwrap_err();
        assert!(
            matches!(err, Error::BzImageTooOld { version: 0x0205 }),
            "{err:?}"
        );
        assert!(err.to_string().contains("boot protocol 2.05"), "{err}");
        assert!(err.to_string().contains("at least 2.06"), "{err}");
        let mut b = [0u8; 4];
        m.read_slice(&mut b, GuestAddress(0x100_0000)).unwrap();
        assert_eq!(b, [0; 4], "nothing loaded");
    }

    #[test]
    fn not_64bit_capable_is_refused() {
        let m = mem(64 << 20);
        for s in [
            Synth {
                xloadflags: 0,
                ..Default::default()
            },
            // 2.11 has no xloadflags at all.
            Synth {
                version: 0x020b,
                ..Default::default()
            },
        ] {
            let err = crate::load_kernel(&m, &mut Cursor::new(synth(&s))).unwrap_err();
            assert!(matches!(err, Error::BzImageNot64Bit { .. }), "{err:?}");
            assert!(err.to_string().contains("no 64-bit entry"), "{err}");
        }
    }

    #[test]
    fn zimage_and_truncated_images_are_refused() {
        let m = mem(64 << 20);
        let s = Synth {
            loadflags: 0,
            ..Default::default()
        };
        let err = crate::load_kernel(&m, &mut Cursor::new(synth(&s))).unwrap_err();
        assert!(err.to_string().contains("LOADED_HIGH"), "{err}");

        let s = Synth {
            payload: Vec::new(),
            ..Default::default()
        };
        let err = crate::load_kernel(&m, &mut Cursor::new(synth(&s))).unwrap_err();
        assert!(err.to_string().contains("setup sectors"), "{err}");

        // A kernel needing more than RAM (init_size 16 MiB in 8 MiB).
        let s = Synth {
            init_size: 0x100_0000,
            ..Default::default()
        };
        let err = crate::load_kernel(&mem(0x80_0000), &mut Cursor::new(synth(&s))).unwrap_err();
        assert!(matches!(err, Error::KernelOutsideRam { .. }), "{err:?}");
    }

    #[test]
    fn pvh_cannot_be_forced_on_a_bzimage() {
        let m = mem(64 << 20);
        let err = crate::load_kernel_with(
            &m,
            &mut Cursor::new(synth(&Synth::default())),
            crate::ProtocolChoice::Pvh,
        )
        .unwrap_err();
        assert!(matches!(err, Error::NoPvhEntry), "{err:?}");
    }

    #[test]
    fn header_past_its_declared_end_is_zeroed() {
        let mut img = synth(&Synth::default());
        // A 2.06-era header ends at 0x23c: jump displacement 0x3a.
        img[0x201] = 0x3a;
        img[0x206] = 0x06;
        let err = read_setup_header(&mut Cursor::new(&img)).unwrap_err();
        // xloadflags (0x236) is inside, but version 2.06 < 2.12.
        assert!(matches!(err, Error::BzImageNot64Bit { .. }), "{err:?}");
        img[0x206] = 0x0f;
        let hdr = read_setup_header(&mut Cursor::new(&img)).unwrap();
        assert_eq!({ hdr.cmdline_size }, 2047, "0x238..0x23c is inside");
        assert_eq!({ hdr.pref_address }, 0, "0x258 is past the end");
        assert_eq!({ hdr.init_size }, 0, "0x260 is past the end");
    }
}
