//! Guest RAM: size checks, creation (anonymous host mappings laid out by
//! [`layout::ram_regions`]) and registration with a [`Vm`].

use std::io;

use vm_memory::mmap::{FromRangesError, MmapRegionError};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};
use vmkit_hypervisor::{UserMemoryRegion, Vm};

use crate::layout;
use crate::{Error, GuestMemoryMmap, Result};

/// The host's page size in bytes.
pub fn host_page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant; it has no memory
    // effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    // sysconf cannot fail for _SC_PAGESIZE; 4 KiB is the x86_64 page size.
    u64::try_from(size).unwrap_or(4096)
}

/// Checks that `size` bytes of RAM can be laid out for a guest whose
/// physical addresses are `phys_bits` wide (CPUID 0x8000_0008 EAX\[7:0\]).
///
/// Fails with [`Error::ZeroSize`], [`Error::Unaligned`] (not a multiple of
/// the host page size), [`Error::InvalidPhysBits`] (outside 32..=52) or
/// [`Error::TooLarge`] (RAM would end above `1 << phys_bits` once shifted
/// past the MMIO hole).
pub fn check_size(size: u64, phys_bits: u8) -> Result<()> {
    if size == 0 {
        return Err(Error::ZeroSize);
    }
    let page_size = host_page_size();
    if !size.is_multiple_of(page_size) {
        return Err(Error::Unaligned { size, page_size });
    }
    let max = layout::max_ram_size(phys_bits).ok_or(Error::InvalidPhysBits(phys_bits))?;
    if size > max {
        return Err(Error::TooLarge {
            requested: size,
            max,
        });
    }
    Ok(())
}

/// The host's RAM plus swap in bytes (`sysinfo(2)`).
///
/// This ignores cgroup memory limits, which may be lower.
pub fn host_memory_size() -> Result<u64> {
    // SAFETY: `libc::sysinfo` is plain old data, for which all-zero bytes
    // are a valid value.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable `struct sysinfo`, the only memory
    // the call writes.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return Err(Error::HostMemory(io::Error::last_os_error()));
    }
    let unit = u64::from(info.mem_unit.max(1));
    // `c_ulong` is `u64` on the 64-bit targets vm-memory supports.
    let total = (info.totalram as u64).saturating_add(info.totalswap as u64);
    Ok(total.saturating_mul(unit))
}

/// Checks that the host's RAM and swap could back `size` bytes of guest
/// memory ([`Error::ExceedsHostMemory`] otherwise).
///
/// [`create_guest_memory`] maps guest RAM with `MAP_NORESERVE` (as
/// vm-memory does), so the kernel accepts mappings larger than the host can
/// back and the process is killed only when the guest touches too much of
/// it. Whether to allow such overcommit is the VMM's policy; a VMM that does
/// not want it calls this first.
pub fn check_host_memory(size: u64) -> Result<()> {
    let available = host_memory_size()?;
    if size > available {
        return Err(Error::ExceedsHostMemory {
            requested: size,
            available,
        });
    }
    Ok(())
}

/// Creates `size` bytes of guest RAM, laid out by
/// [`layout::ram_regions`], each region an anonymous private host mapping
/// (`MAP_NORESERVE`, see [`check_host_memory`]).
///
/// `phys_bits` is the guest's physical address width; see [`check_size`]
/// for the checks made. A mapping the host refuses is [`Error::Mmap`] with
/// the OS error.
pub fn create_guest_memory(size: u64, phys_bits: u8) -> Result<GuestMemoryMmap> {
    check_size(size, phys_bits)?;
    let regions = layout::ram_regions(size)
        .into_iter()
        .map(|(addr, len)| {
            GuestRegionMmap::from_range(addr, len, None).map_err(|e| match e {
                FromRangesError::MmapRegion(MmapRegionError::Mmap(source)) => Error::Mmap {
                    guest_addr: addr.0,
                    size: len as u64,
                    source,
                },
                e => Error::GuestMemory(e),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    GuestMemoryMmap::from_regions(regions).map_err(|e| Error::GuestMemory(e.into()))
}

/// Registers every region of `mem` with `vm`, in address order, as slots
/// 0, 1, ... (writable, no dirty logging).
///
/// On error, the slots registered before the failing one stay registered.
///
/// # Safety
///
/// The VM lets the guest read and write the host memory of `mem` at any
/// time, without borrowing it. The caller must keep the mappings of `mem`
/// alive (keep `mem` or a clone of it, which shares the mappings) for as
/// long as the slots stay registered, that is until they are removed or the
/// VM is destroyed; it must not register other memory in the same slots
/// while relying on these ones.
pub unsafe fn register_guest_memory(vm: &dyn Vm, mem: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in (0u32..).zip(mem.iter()) {
        let guest_addr = region.start_addr().0;
        let size = region.len();
        let memory_region = UserMemoryRegion {
            slot,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: region.as_ptr() as u64,
            read_only: false,
        };
        // SAFETY: `region` is a live mapping of `size` bytes at `as_ptr()`
        // owned by `mem` (vm-memory unmaps it only when the last clone of
        // `mem` drops), and the caller guarantees that `mem` outlives the
        // slot, as this function's contract requires.
        unsafe { vm.set_user_memory_region(memory_region) }.map_err(|source| {
            Error::RegisterMemory {
                slot,
                guest_addr,
                size,
                source,
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vm_memory::{Bytes, GuestAddress};
    use vmkit_hypervisor::{DataMatch, IoEventAddress, Vcpu};
    use vmm_sys_util::eventfd::EventFd;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const TIB: u64 = 1 << 40;

    /// A `Vm` that records memory slots and can be told to refuse one.
    #[derive(Default)]
    struct RecordingVm {
        regions: Mutex<Vec<UserMemoryRegion>>,
        refuse_slot: Option<u32>,
    }

    fn unsupported() -> vmkit_hypervisor::Error {
        vmkit_hypervisor::Error::MissingCapability("not in this test double")
    }

    impl Vm for RecordingVm {
        unsafe fn set_user_memory_region(
            &self,
            region: UserMemoryRegion,
        ) -> vmkit_hypervisor::Result<()> {
            if self.refuse_slot == Some(region.slot) {
                return Err(vmkit_hypervisor::Error::ioctl(
                    "KVM_SET_USER_MEMORY_REGION",
                    io::Error::from_raw_os_error(libc::EEXIST),
                ));
            }
            self.regions.lock().unwrap().push(region);
            Ok(())
        }
        fn create_irq_chip(&self) -> vmkit_hypervisor::Result<()> {
            Err(unsupported())
        }
        fn create_pit(&self) -> vmkit_hypervisor::Result<()> {
            Err(unsupported())
        }
        fn set_irq_line(&self, _: u32, _: bool) -> vmkit_hypervisor::Result<()> {
            Err(unsupported())
        }
        fn register_irqfd(&self, _: &EventFd, _: u32) -> vmkit_hypervisor::Result<()> {
            Err(unsupported())
        }
        fn unregister_irqfd(&self, _: &EventFd, _: u32) -> vmkit_hypervisor::Result<()> {
            Err(unsupported())
        }
        fn register_ioevent(
            &self,
            _: &EventFd,
            _: IoEventAddress,
            _: DataMatch,
        ) -> vmkit_hypervisor::Result<()> {
            Err(unsupported())
        }
        fn unregister_ioevent(
            &self,
            _: &EventFd,
            _: IoEventAddress,
            _: DataMatch,
        ) -> vmkit_hypervisor::Result<()> {
            Err(unsupported())
        }
        fn create_vcpu(&self, _: u32) -> vmkit_hypervisor::Result<Box<dyn Vcpu>> {
            Err(unsupported())
        }
    }

    fn regions_of(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
        mem.iter().map(|r| (r.start_addr().0, r.len())).collect()
    }

    #[test]
    fn creates_one_region_below_the_hole() {
        let mem = create_guest_memory(256 * MIB, 39).unwrap();
        assert_eq!(regions_of(&mem), vec![(0, 256 * MIB)]);
        // The memory is usable: write at the last byte, read it back.
        mem.write_obj(0xa5u8, GuestAddress(256 * MIB - 1)).unwrap();
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(256 * MIB - 1)).unwrap(),
            0xa5
        );
        assert!(mem.write_obj(0u8, GuestAddress(256 * MIB)).is_err());
    }

    #[test]
    fn creates_two_regions_around_the_hole() {
        let mem = create_guest_memory(5 * GIB, 39).unwrap();
        assert_eq!(regions_of(&mem), vec![(0, 3 * GIB), (1 << 32, 2 * GIB)]);
        // Nothing is mapped in the hole.
        assert!(mem.read_obj::<u8>(GuestAddress(0xc000_0000)).is_err());
        assert!(mem.read_obj::<u8>(GuestAddress(0xfee0_0000)).is_err());
        mem.write_obj(7u64, GuestAddress(5 * GIB + GIB - 8))
            .unwrap();
    }

    #[test]
    fn rejects_zero_and_unaligned_sizes() {
        assert!(matches!(create_guest_memory(0, 39), Err(Error::ZeroSize)));
        let page = host_page_size();
        match create_guest_memory(256 * MIB + 1, 39) {
            Err(Error::Unaligned { size, page_size }) => {
                assert_eq!(size, 256 * MIB + 1);
                assert_eq!(page_size, page);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            create_guest_memory(page / 2, 39),
            Err(Error::Unaligned { .. })
        ));
    }

    #[test]
    fn rejects_sizes_beyond_the_phys_address_width() {
        // 39 bits: 512 GiB of address space, minus the 1 GiB hole.
        let max39 = (1 << 39) - GIB;
        check_size(max39, 39).unwrap();
        match create_guest_memory(max39 + host_page_size(), 39) {
            Err(Error::TooLarge { requested, max }) => {
                assert_eq!(requested, max39 + host_page_size());
                assert_eq!(max, max39);
            }
            other => panic!("{other:?}"),
        }
        // 512 GiB of RAM would end at 513 GiB.
        assert!(matches!(
            check_size(512 * GIB, 39),
            Err(Error::TooLarge { .. })
        ));
        // 46 bits: 64 TiB of address space.
        check_size(64 * TIB - GIB, 46).unwrap();
        assert!(matches!(
            create_guest_memory(64 * TIB, 46),
            Err(Error::TooLarge { requested, max }) if requested == 64 * TIB && max == 64 * TIB - GIB
        ));
        assert!(matches!(
            create_guest_memory(100 * TIB, 46),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(check_size(GIB, 0), Err(Error::InvalidPhysBits(0))));
        assert!(matches!(
            check_size(GIB, 64),
            Err(Error::InvalidPhysBits(64))
        ));
    }

    #[test]
    fn failing_mmap_is_an_error_with_the_os_error() {
        // 200 TiB fits a 52-bit guest but no x86_64 Linux process can map it
        // without an address hint: user space below 47 bits is 128 TiB.
        match create_guest_memory(200 * TIB, 52) {
            Err(Error::Mmap {
                guest_addr,
                size,
                source,
            }) => {
                assert_eq!(guest_addr, 1 << 32);
                assert_eq!(size, 200 * TIB - 3 * GIB);
                assert_eq!(source.raw_os_error(), Some(libc::ENOMEM));
            }
            other => panic!("{other:?}"),
        }
        // 100 TiB may or may not be mappable (MAP_NORESERVE), depending on
        // the host's address space; either way it is no panic, and no host
        // has the RAM and swap to back it.
        if let Err(e) = create_guest_memory(100 * TIB, 52) {
            assert!(matches!(e, Error::Mmap { .. }), "{e:?}");
        }
        assert!(matches!(
            check_host_memory(100 * TIB),
            Err(Error::ExceedsHostMemory { requested, available })
                if requested == 100 * TIB && available < 100 * TIB
        ));
    }

    #[test]
    fn host_memory_is_what_proc_meminfo_says() {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib = |key: &str| -> u64 {
            let line = meminfo.lines().find(|l| l.starts_with(key)).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        let expected = (kib("MemTotal:") + kib("SwapTotal:")) * 1024;
        assert_eq!(host_memory_size().unwrap(), expected);
        check_host_memory(expected).unwrap();
        assert!(matches!(
            check_host_memory(expected + 1),
            Err(Error::ExceedsHostMemory { available, .. }) if available == expected
        ));
    }

    #[test]
    fn registers_one_slot_per_region() {
        for (size, expected) in [
            (256 * MIB, vec![(0, 256 * MIB)]),
            (3 * GIB, vec![(0, 3 * GIB)]),
            (5 * GIB, vec![(0, 3 * GIB), (1 << 32, 2 * GIB)]),
        ] {
            let mem = create_guest_memory(size, 39).unwrap();
            let vm = RecordingVm::default();
            // SAFETY: `mem` outlives `vm`, which only records the regions.
            unsafe { register_guest_memory(&vm, &mem) }.unwrap();

            let recorded = vm.regions.lock().unwrap().clone();
            assert_eq!(recorded.len(), expected.len());
            for ((slot, region), (gpa, len)) in (0u32..).zip(&recorded).zip(&expected) {
                let host = mem.get_host_address(GuestAddress(*gpa)).unwrap() as u64;
                assert_eq!(
                    *region,
                    UserMemoryRegion {
                        slot,
                        guest_phys_addr: *gpa,
                        memory_size: *len,
                        userspace_addr: host,
                        read_only: false,
                    }
                );
            }
        }
    }

    #[test]
    fn registration_error_names_the_slot() {
        let mem = create_guest_memory(5 * GIB, 39).unwrap();
        let vm = RecordingVm {
            refuse_slot: Some(1),
            ..Default::default()
        };
        // SAFETY: `mem` outlives `vm`, which only records the regions.
        match unsafe { register_guest_memory(&vm, &mem) } {
            Err(Error::RegisterMemory {
                slot: 1,
                guest_addr: 0x1_0000_0000,
                size,
                ..
            }) => assert_eq!(size, 2 * GIB),
            other => panic!("{other:?}"),
        }
        assert_eq!(vm.regions.lock().unwrap().len(), 1);
    }
}
