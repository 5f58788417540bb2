//! [`KvmVm`]: a KVM virtual machine file descriptor.

use kvm_bindings::{
    KVM_MEM_READONLY, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::vcpu::KvmVcpu;
use crate::{DataMatch, Error, IoEventAddress, Result, UserMemoryRegion, Vcpu, Vm};

/// Guest physical address of the three pages KVM uses for the real-mode
/// TSS on Intel hosts (`KVM_SET_TSS_ADDR`).
///
/// It sits just below the 4 GiB boundary, under the BIOS and the IOAPIC
/// and LAPIC windows (0xfec0_0000 and up), in a hole that guest memory
/// must not cover: 0xfffb_d000..0xfffc_0000. Firecracker uses the same
/// address.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// Guest physical address of the one page KVM uses for the identity-map
/// page table of real-mode guests on Intel hosts without unrestricted
/// guest support (`KVM_SET_IDENTITY_MAP_ADDR`): the page just below
/// [`KVM_TSS_ADDRESS`], 0xfffb_c000..0xfffb_d000.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// A KVM virtual machine.
///
/// Every method takes `&self`; the type is `Send + Sync` so that device
/// threads can register irqfds and ioeventfds while vCPU threads run.
#[derive(Debug)]
pub struct KvmVm {
    fd: VmFd,
    read_only_memory: bool,
}

impl KvmVm {
    pub(super) fn new(fd: VmFd, read_only_memory: bool) -> Self {
        KvmVm {
            fd,
            read_only_memory,
        }
    }

    /// The underlying `kvm-ioctls` handle, for what the traits do not cover.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Like [`Vm::create_vcpu`], but returns the concrete [`KvmVcpu`].
    pub fn create_kvm_vcpu(&self, id: u32) -> Result<KvmVcpu> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(|e| Error::ioctl("KVM_CREATE_VCPU", e))?;
        // Queried now that a vCPU exists: the guest XSTATE permissions it
        // depends on are locked from here on.
        let xsave2_size = self.fd.check_extension_int(Cap::Xsave2);
        Ok(KvmVcpu::new(fd, xsave2_size))
    }
}

/// The `kvm-ioctls` form of an ioeventfd address.
fn ioevent_address(addr: IoEventAddress) -> kvm_ioctls::IoEventAddress {
    match addr {
        IoEventAddress::Pio(port) => kvm_ioctls::IoEventAddress::Pio(port),
        IoEventAddress::Mmio(gpa) => kvm_ioctls::IoEventAddress::Mmio(gpa),
    }
}

impl Vm for KvmVm {
    /// `KVM_SET_USER_MEMORY_REGION`. A read-only region needs
    /// `KVM_CAP_READONLY_MEM` ([`Error::MissingCapability`] otherwise).
    unsafe fn set_user_memory_region(&self, region: UserMemoryRegion) -> Result<()> {
        if region.read_only && !self.read_only_memory {
            return Err(Error::MissingCapability("KVM_CAP_READONLY_MEM"));
        }
        let kvm_region = kvm_userspace_memory_region {
            slot: region.slot,
            flags: if region.read_only {
                KVM_MEM_READONLY
            } else {
                0
            },
            guest_phys_addr: region.guest_phys_addr,
            memory_size: region.memory_size,
            userspace_addr: region.userspace_addr,
        };
        // SAFETY: the caller guarantees (this method's contract) that
        // `userspace_addr .. + memory_size` is a mapping of this process that
        // stays valid while the slot is registered; KVM checks the rest
        // (alignment, overlap) and we return its error.
        unsafe { self.fd.set_user_memory_region(kvm_region) }
            .map_err(|e| Error::ioctl("KVM_SET_USER_MEMORY_REGION", e))
    }

    /// Sets the TSS ([`KVM_TSS_ADDRESS`]) and identity map
    /// ([`KVM_IDENTITY_MAP_ADDRESS`]) addresses, then `KVM_CREATE_IRQCHIP`.
    /// Must be called before any vCPU is created.
    fn create_irq_chip(&self) -> Result<()> {
        self.fd
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(|e| Error::ioctl("KVM_SET_IDENTITY_MAP_ADDR", e))?;
        // The TSS address is an `unsigned long` in the ioctl; x86_64 only.
        self.fd
            .set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(|e| Error::ioctl("KVM_SET_TSS_ADDR", e))?;
        self.fd
            .create_irq_chip()
            .map_err(|e| Error::ioctl("KVM_CREATE_IRQCHIP", e))
    }

    /// `KVM_CREATE_PIT2` with `KVM_PIT_SPEAKER_DUMMY` (port 0x61 is
    /// emulated in the kernel). Needs [`Vm::create_irq_chip`] first (KVM
    /// fails with `ENOENT` otherwise).
    fn create_pit(&self) -> Result<()> {
        let config = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd
            .create_pit2(config)
            .map_err(|e| Error::ioctl("KVM_CREATE_PIT2", e))
    }

    fn set_irq_line(&self, gsi: u32, active: bool) -> Result<()> {
        self.fd
            .set_irq_line(gsi, active)
            .map_err(|e| Error::ioctl("KVM_IRQ_LINE", e))
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .register_irqfd(fd, gsi)
            .map_err(|e| Error::ioctl("KVM_IRQFD", e))
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .unregister_irqfd(fd, gsi)
            .map_err(|e| Error::ioctl("KVM_IRQFD (deassign)", e))
    }

    fn register_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
    ) -> Result<()> {
        let addr = ioevent_address(addr);
        match datamatch {
            DataMatch::Any => self.fd.register_ioevent(fd, &addr, NoDatamatch),
            DataMatch::U32(v) => self.fd.register_ioevent(fd, &addr, v),
            DataMatch::U64(v) => self.fd.register_ioevent(fd, &addr, v),
        }
        .map_err(|e| Error::ioctl("KVM_IOEVENTFD", e))
    }

    fn unregister_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
    ) -> Result<()> {
        let addr = ioevent_address(addr);
        match datamatch {
            DataMatch::Any => self.fd.unregister_ioevent(fd, &addr, NoDatamatch),
            DataMatch::U32(v) => self.fd.unregister_ioevent(fd, &addr, v),
            DataMatch::U64(v) => self.fd.unregister_ioevent(fd, &addr, v),
        }
        .map_err(|e| Error::ioctl("KVM_IOEVENTFD (deassign)", e))
    }

    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>> {
        Ok(Box::new(self.create_kvm_vcpu(id)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The identity map page ends where the three TSS pages begin, and both
    // stay below 4 GiB.
    const _: () = assert!(KVM_IDENTITY_MAP_ADDRESS + 0x1000 == KVM_TSS_ADDRESS);
    const _: () = assert!(KVM_TSS_ADDRESS + 3 * 0x1000 <= 0x1_0000_0000);

    #[test]
    fn ioevent_addresses_map() {
        assert!(matches!(
            ioevent_address(IoEventAddress::Pio(0x3f8)),
            kvm_ioctls::IoEventAddress::Pio(0x3f8)
        ));
        assert!(matches!(
            ioevent_address(IoEventAddress::Mmio(0xd000_0000)),
            kvm_ioctls::IoEventAddress::Mmio(0xd000_0000)
        ));
    }
}
