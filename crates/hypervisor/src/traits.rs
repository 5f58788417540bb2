//! The `Hypervisor`, `Vm` and `Vcpu` traits and the exits a vCPU reports.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::{CpuIdEntry, FpuState, LapicState, MsrEntry, Regs, Result, SpecialRegs};

/// The host side of a hypervisor: what it supports, and VM creation.
pub trait Hypervisor: Send + Sync {
    /// Creates a new, empty virtual machine.
    fn create_vm(&self) -> Result<Arc<dyn Vm>>;

    /// The largest number of vCPUs one VM may have.
    fn max_vcpus(&self) -> u32;

    /// The CPUID leaves the hypervisor can expose to a guest, with every
    /// feature it supports set (`KVM_GET_SUPPORTED_CPUID`).
    fn supported_cpuid(&self) -> Result<Vec<CpuIdEntry>>;

    /// The MSR indices the hypervisor lets a VMM save and restore.
    fn supported_msrs(&self) -> Result<Vec<u32>>;
}

/// A guest physical memory slot backed by host memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserMemoryRegion {
    /// Slot number, unique within the VM.
    pub slot: u32,
    /// Guest physical address of the first byte.
    pub guest_phys_addr: u64,
    /// Size in bytes (a multiple of the host page size).
    pub memory_size: u64,
    /// Host virtual address of the first byte.
    pub userspace_addr: u64,
    /// Guest writes fault to the VMM as MMIO instead of reaching memory.
    pub read_only: bool,
}

/// Where an ioeventfd listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEventAddress {
    /// An I/O port.
    Pio(u64),
    /// A guest physical MMIO address.
    Mmio(u64),
}

/// Which writes an ioeventfd matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataMatch {
    /// Every write of any length.
    Any,
    /// 32-bit writes of this value.
    U32(u32),
    /// 64-bit writes of this value.
    U64(u64),
}

/// A virtual machine: memory, interrupt controllers, event registration and
/// vCPUs.
///
/// All methods take `&self` so that device threads can register events
/// while vCPU threads run.
pub trait Vm: Send + Sync {
    /// Maps host memory into the guest physical address space, or replaces
    /// or removes (size 0) the slot's mapping.
    ///
    /// # Safety
    ///
    /// `region.userspace_addr .. + region.memory_size` must be a valid host
    /// mapping of this process that stays mapped for as long as the slot is
    /// registered; the guest may read and write it at any time.
    unsafe fn set_user_memory_region(&self, region: UserMemoryRegion) -> Result<()>;

    /// Creates the in-kernel interrupt controllers (PIC, IOAPIC, and a local
    /// APIC in every vCPU created afterwards).
    fn create_irq_chip(&self) -> Result<()>;

    /// Creates the in-kernel i8254 programmable interval timer.
    fn create_pit(&self) -> Result<()>;

    /// Raises or lowers an interrupt line of the in-kernel irqchip.
    fn set_irq_line(&self, gsi: u32, active: bool) -> Result<()>;

    /// Makes a write to `fd` inject an edge on interrupt line `gsi`, without
    /// the VMM's involvement (irqfd).
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()>;

    /// Removes an irqfd registered with [`Vm::register_irqfd`].
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()>;

    /// Makes a guest write at `addr` signal `fd` instead of exiting to the
    /// VMM (ioeventfd).
    fn register_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
    ) -> Result<()>;

    /// Removes an ioeventfd registered with [`Vm::register_ioevent`].
    fn unregister_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
    ) -> Result<()>;

    /// Creates vCPU number `id` (its initial APIC ID).
    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>>;
}

/// Why [`Vcpu::run`] returned to the VMM.
///
/// Data-carrying exits borrow the vCPU's shared run area: for
/// [`VcpuExit::IoIn`] and [`VcpuExit::MmioRead`] the VMM fills `data`, and
/// the next [`Vcpu::run`] hands it to the guest.
#[derive(Debug)]
pub enum VcpuExit<'a> {
    /// The guest wrote `data` to I/O port `port`.
    IoOut {
        /// The port.
        port: u16,
        /// The bytes written (1, 2 or 4).
        data: &'a [u8],
    },
    /// The guest reads `data.len()` bytes from I/O port `port`.
    IoIn {
        /// The port.
        port: u16,
        /// Where the VMM puts the value read.
        data: &'a mut [u8],
    },
    /// The guest reads from an address with no memory behind it.
    MmioRead {
        /// Guest physical address.
        addr: u64,
        /// Where the VMM puts the value read.
        data: &'a mut [u8],
    },
    /// The guest writes to an address with no memory behind it.
    MmioWrite {
        /// Guest physical address.
        addr: u64,
        /// The bytes written.
        data: &'a [u8],
    },
    /// The vCPU executed `hlt` with interrupts the in-kernel irqchip cannot
    /// wake it from (only without an in-kernel local APIC).
    Halt,
    /// The guest shut down (a triple fault on x86).
    Shutdown,
    /// The hypervisor failed internally, for example in its instruction
    /// emulator (KVM `suberror` 1).
    InternalError {
        /// KVM_INTERNAL_ERROR_* sub-error code.
        suberror: u32,
        /// Extra diagnostic words from the hypervisor.
        data: Vec<u64>,
    },
    /// The guest asked for a system event (reset, shutdown, crash).
    SystemEvent {
        /// KVM_SYSTEM_EVENT_* type.
        kind: u32,
        /// Event-specific data words.
        data: Vec<u64>,
    },
    /// The hypervisor could not enter the guest.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
        /// The host CPU that tried.
        cpu: u32,
    },
    /// The run was interrupted by a signal (or `immediate_exit`) before or
    /// while the guest ran; the VMM may simply run again.
    Interrupted,
    /// An exit this crate does not model; the number is the backend's
    /// exit reason.
    Unsupported(u32),
}

/// A virtual CPU.
pub trait Vcpu: Send {
    /// Runs the guest until it needs the VMM.
    fn run(&mut self) -> Result<VcpuExit<'_>>;

    /// Reads the general purpose registers.
    fn regs(&self) -> Result<Regs>;
    /// Writes the general purpose registers.
    fn set_regs(&self, regs: &Regs) -> Result<()>;

    /// Reads the segment, control and descriptor table registers.
    fn sregs(&self) -> Result<SpecialRegs>;
    /// Writes the segment, control and descriptor table registers.
    fn set_sregs(&self, sregs: &SpecialRegs) -> Result<()>;

    /// Reads the FPU/SSE state.
    fn fpu(&self) -> Result<FpuState>;
    /// Writes the FPU/SSE state.
    fn set_fpu(&self, fpu: &FpuState) -> Result<()>;

    /// Reads the MSRs whose indices are in `entries`, filling their data.
    /// Returns how many were read (reading stops at the first refused one).
    fn msrs(&self, entries: &mut [MsrEntry]) -> Result<usize>;
    /// Writes MSRs; returns how many were written (writing stops at the
    /// first refused one).
    fn set_msrs(&self, entries: &[MsrEntry]) -> Result<usize>;

    /// Sets the CPUID leaves the guest sees.
    fn set_cpuid(&self, entries: &[CpuIdEntry]) -> Result<()>;

    /// Reads the local APIC registers.
    fn lapic(&self) -> Result<LapicState>;
    /// Writes the local APIC registers.
    fn set_lapic(&self, lapic: &LapicState) -> Result<()>;
}
