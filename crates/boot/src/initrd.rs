//! Placing and loading the initial ramdisk.
//!
//! The initrd goes page-aligned as high as possible in low RAM (the first
//! RAM range, below the 32-bit MMIO hole), no higher than the kernel's
//! `initrd_addr_max` (the bzImage header's, 2 GiB - 1 for ELF kernels), and
//! above the kernel's footprint ([`KernelEntry::end`]). That is where
//! bootloaders put it and where the kernel's early code does not
//! overwrite it. Its address and size then go into the zero page
//! (`ramdisk_image`, `ramdisk_size`) or the PVH module list (module 0).

use std::io::{Seek, SeekFrom};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile};

use crate::loader::KernelEntry;
use crate::params::ram_ranges;
use crate::{Error, Result};

/// Alignment of the initrd's start.
pub const INITRD_ALIGN: u64 = 0x1000;

/// Where the initrd is in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdRange {
    /// First guest physical address.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

/// The end (exclusive) of the RAM range that starts at address 0.
fn low_ram_end<M: GuestMemoryBackend>(mem: &M) -> u64 {
    match ram_ranges(mem).first() {
        Some(&(0, len)) => len,
        _ => 0,
    }
}

/// Chooses where an initrd of `size` bytes goes: the highest
/// [`INITRD_ALIGN`]-aligned address such that it ends at or below both
/// `addr_max + 1` and the end of low RAM, and starts at or above
/// `kernel_end`.
pub fn place_initrd<M: GuestMemoryBackend>(
    mem: &M,
    size: u64,
    kernel_end: GuestAddress,
    addr_max: u64,
) -> Result<InitrdRange> {
    if size == 0 {
        return Err(Error::InitrdEmpty);
    }
    let limit = addr_max.saturating_add(1).min(low_ram_end(mem));
    limit
        .checked_sub(size)
        .map(|top| top & !(INITRD_ALIGN - 1))
        .filter(|&addr| addr >= kernel_end.0)
        .map(|addr| InitrdRange {
            addr: GuestAddress(addr),
            size,
        })
        .ok_or(Error::InitrdTooLarge {
            size,
            kernel_end: kernel_end.0,
            limit,
        })
}

/// Reads the whole of `image` into guest memory where [`place_initrd`]
/// puts it for `kernel`.
pub fn load_initrd<M, F>(mem: &M, image: &mut F, kernel: &KernelEntry) -> Result<InitrdRange>
where
    M: GuestMemoryBackend,
    F: ReadVolatile + Seek,
{
    let size = image.seek(SeekFrom::End(0)).map_err(Error::InitrdRead)?;
    image.rewind().map_err(Error::InitrdRead)?;
    let range = place_initrd(mem, size, kernel.end, kernel.initrd_addr_max())?;
    // The range is inside low RAM, so its size fits usize.
    let len = usize::try_from(size).unwrap_or(usize::MAX);
    mem.read_exact_volatile_from(range.addr, image, len)
        .map_err(|e| {
            Error::InitrdRead(std::io::Error::other(format!(
                "{e} (the file changed while it was read?)"
            )))
        })?;
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::BootProtocol;
    use std::io::Cursor;
    use vm_memory::{Bytes, GuestMemoryMmap};

    const MIB: u64 = 1 << 20;

    fn mem(ranges: &[(u64, u64)]) -> GuestMemoryMmap<()> {
        let r: Vec<_> = ranges
            .iter()
            .map(|&(a, l)| (GuestAddress(a), l as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&r).unwrap()
    }

    fn elf_kernel(end: u64) -> KernelEntry {
        KernelEntry {
            entry: GuestAddress(0x100_0000),
            protocol: BootProtocol::Linux64,
            start: GuestAddress(0x100_0000),
            end: GuestAddress(end),
        }
    }

    #[test]
    fn fits_page_aligned_at_the_top_of_low_ram() {
        let m = mem(&[(0, 256 * MIB)]);
        let r = place_initrd(&m, 0x1234, GuestAddress(0x200_0000), 0x7fff_ffff).unwrap();
        assert_eq!(r.addr, GuestAddress(256 * MIB - 0x2000));
        assert_eq!(r.size, 0x1234);
        assert_eq!(r.addr.0 % 0x1000, 0);
        assert!(r.addr.0 + r.size <= 256 * MIB);

        // Above 4 GiB there is more RAM, but the initrd stays low.
        let m = mem(&[(0, 3 << 30), (4 << 30, 1 << 30)]);
        let r = place_initrd(&m, 0x1000, GuestAddress(0x200_0000), u64::MAX).unwrap();
        assert_eq!(r.addr, GuestAddress((3 << 30) - 0x1000));
    }

    #[test]
    fn respects_initrd_addr_max() {
        let m = mem(&[(0, 3 << 30)]);
        // A bzImage saying 0x37ffffff (the pre-2.03 default).
        let r = place_initrd(&m, 0x10_0000, GuestAddress(0x200_0000), 0x37ff_ffff).unwrap();
        assert_eq!(r.addr, GuestAddress(0x3800_0000 - 0x10_0000));
        assert!(
            r.addr.0 + r.size - 1 <= 0x37ff_ffff,
            "last byte below the max"
        );
        // ELF kernels: 2 GiB - 1.
        let r = place_initrd(&m, 0x1001, GuestAddress(0x200_0000), 0x7fff_ffff).unwrap();
        assert_eq!(r.addr, GuestAddress(0x8000_0000 - 0x2000));
    }

    #[test]
    fn too_large_or_empty_is_an_error() {
        let m = mem(&[(0, 64 * MIB)]);
        // Exactly fits between the kernel end and the top.
        let r = place_initrd(&m, 32 * MIB, GuestAddress(32 * MIB), 0x7fff_ffff).unwrap();
        assert_eq!(r.addr, GuestAddress(32 * MIB));
        // One byte more would overlap the kernel.
        let err = place_initrd(&m, 32 * MIB + 1, GuestAddress(32 * MIB), 0x7fff_ffff).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InitrdTooLarge {
                    limit: 0x400_0000,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("does not fit"), "{err}");
        // Larger than all of RAM.
        let err = place_initrd(&m, 128 * MIB, GuestAddress(0), u64::MAX).unwrap_err();
        assert!(matches!(err, Error::InitrdTooLarge { .. }), "{err:?}");
        assert!(matches!(
            place_initrd(&m, 0, GuestAddress(0), u64::MAX),
            Err(Error::InitrdEmpty)
        ));
    }

    #[test]
    fn loads_the_file_contents() {
        let m = mem(&[(0, 64 * MIB)]);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let r = load_initrd(&m, &mut Cursor::new(&data), &elf_kernel(0x200_0000)).unwrap();
        assert_eq!(r.size, 10_000);
        assert_eq!(r.addr, GuestAddress(64 * MIB - 0x3000));
        let mut got = vec![0u8; data.len()];
        m.read_slice(&mut got, r.addr).unwrap();
        assert_eq!(got, data);
    }

    #[test]
    fn bzimage_initrd_addr_max_is_used() {
        let m = mem(&[(0, 3 << 30)]);
        let mut hdr = linux_loader::bootparam::setup_header {
            initrd_addr_max: 0x0fff_ffff,
            ..Default::default()
        };
        let mut k = elf_kernel(0x200_0000);
        k.protocol = BootProtocol::BzImage(hdr);
        assert_eq!(k.initrd_addr_max(), 0x0fff_ffff);
        let r = load_initrd(&m, &mut Cursor::new(vec![1u8; 100]), &k).unwrap();
        assert_eq!(r.addr, GuestAddress(0x1000_0000 - 0x1000));
        hdr.initrd_addr_max = 0;
        k.protocol = BootProtocol::BzImage(hdr);
        assert_eq!(k.initrd_addr_max(), 0x7fff_ffff, "unset: the default");
    }
}
