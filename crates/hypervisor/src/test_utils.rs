//! A recording test double of [`Hypervisor`], [`Vm`] and [`Vcpu`], for unit
//! tests of the layers above (memory, boot, devices) without `/dev/kvm`.
//!
//! - [`MockHypervisor`] hands out [`MockVm`]s and reports a configurable
//!   CPUID, MSR list and vCPU limit.
//! - [`MockVm`] records what is done to it (memory slots, irqchip, PIT,
//!   irq line changes, irqfds, ioeventfds, vCPUs) and lets the test read it
//!   back. It rejects what KVM rejects (misaligned or overlapping memory
//!   slots, a PIT without irqchip, duplicate ioeventfds, ...) with the same
//!   errno, so that a mistake fails in the unit test too.
//! - [`MockVcpu`] stores the registers set on it and returns them from the
//!   getters; [`Vcpu::run`] returns the exits scripted with
//!   [`MockVcpu::push_exit`], then [`VcpuExit::Shutdown`].
//!
//! A [`MockVcpu`] is a cheap handle: clones share the state, so the test
//! keeps one (from [`MockVm::vcpu`]) while the code under test owns the
//! `Box<dyn Vcpu>` that [`Vm::create_vcpu`] returned.
//!
//! Other crates use it as a dev-dependency with the `test-utils` feature:
//!
//! ```toml
//! [dev-dependencies]
//! vmkit-hypervisor = { workspace = true, features = ["test-utils"] }
//! ```
//!
//! ```
//! use std::sync::Arc;
//! use vmkit_hypervisor::test_utils::{MockExit, MockVm};
//! use vmkit_hypervisor::{UserMemoryRegion, Vcpu, VcpuExit, Vm};
//!
//! # fn main() -> vmkit_hypervisor::Result<()> {
//! let vm = Arc::new(MockVm::new());
//! let region = UserMemoryRegion {
//!     slot: 0,
//!     guest_phys_addr: 0,
//!     memory_size: 0x10_0000,
//!     userspace_addr: 0x7f00_0000_0000,
//!     read_only: false,
//! };
//! // SAFETY: the mock never touches the host memory.
//! unsafe { vm.set_user_memory_region(region)? };
//! assert_eq!(vm.memory_regions(), vec![region]);
//!
//! let mut vcpu = vm.create_vcpu(0)?;
//! vm.vcpu(0).unwrap().push_exit(MockExit::IoOut { port: 0x3f8, data: vec![b'A'] });
//! assert!(matches!(vcpu.run()?, VcpuExit::IoOut { port: 0x3f8, data } if data == b"A"));
//! assert!(matches!(vcpu.run()?, VcpuExit::Shutdown));
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vmm_sys_util::eventfd::EventFd;

use crate::{
    CpuIdEntry, DataMatch, DescriptorTable, Error, FpuState, Hypervisor, IoEventAddress,
    LapicState, MsrEntry, Regs, Result, Segment, SpecialRegs, UserMemoryRegion, Vcpu, VcpuExit, Vm,
};

/// Page size the mock checks memory slot alignment against.
const PAGE_SIZE: u64 = 4096;
/// Number of user memory slots KVM offers on x86_64 (`KVM_USER_MEM_SLOTS`).
pub const MOCK_MAX_MEMORY_SLOTS: u32 = 32764;
/// At most this many CPUID entries are accepted, like the KVM backend.
const MAX_CPUID_ENTRIES: usize = 256;
/// At most this many MSRs per call, like the KVM backend.
const MAX_MSR_ENTRIES: usize = 256;

/// Locks `m`, ignoring poisoning (a panicking test thread must not hide the
/// state from the test that inspects it).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The error KVM gives for `op` with `errno`.
fn kvm_error(op: &'static str, errno: i32) -> Error {
    Error::ioctl(op, io::Error::from_raw_os_error(errno))
}

/// A [`Vm`] operation, to make it fail with [`MockVm::fail_on`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum VmOp {
    /// [`Vm::set_user_memory_region`].
    SetUserMemoryRegion,
    /// [`Vm::create_irq_chip`].
    CreateIrqChip,
    /// [`Vm::create_pit`].
    CreatePit,
    /// [`Vm::set_irq_line`].
    SetIrqLine,
    /// [`Vm::register_irqfd`].
    RegisterIrqfd,
    /// [`Vm::unregister_irqfd`].
    UnregisterIrqfd,
    /// [`Vm::register_ioevent`].
    RegisterIoevent,
    /// [`Vm::unregister_ioevent`].
    UnregisterIoevent,
    /// [`Vm::create_vcpu`].
    CreateVcpu,
}

impl VmOp {
    /// The KVM ioctl the operation stands for, used in the injected error.
    fn ioctl_name(self) -> &'static str {
        match self {
            VmOp::SetUserMemoryRegion => "KVM_SET_USER_MEMORY_REGION",
            VmOp::CreateIrqChip => "KVM_CREATE_IRQCHIP",
            VmOp::CreatePit => "KVM_CREATE_PIT2",
            VmOp::SetIrqLine => "KVM_IRQ_LINE",
            VmOp::RegisterIrqfd => "KVM_IRQFD",
            VmOp::UnregisterIrqfd => "KVM_IRQFD (deassign)",
            VmOp::RegisterIoevent => "KVM_IOEVENTFD",
            VmOp::UnregisterIoevent => "KVM_IOEVENTFD (deassign)",
            VmOp::CreateVcpu => "KVM_CREATE_VCPU",
        }
    }
}

/// A test double of [`Hypervisor`].
///
/// By default it allows 254 vCPUs, reports a small CPUID (leaves 0, 1,
/// 0x8000_0000 and 0x8000_0001 of a 64-bit "GenuineIntel" CPU with an
/// APIC) and a few common MSRs; the `with_*` methods replace them.
#[derive(Debug)]
pub struct MockHypervisor {
    max_vcpus: u32,
    cpuid: Vec<CpuIdEntry>,
    msrs: Vec<u32>,
    vms: Mutex<Vec<Arc<MockVm>>>,
}

impl Default for MockHypervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl MockHypervisor {
    /// A mock with the default limits, CPUID and MSR list.
    pub fn new() -> Self {
        // "GenuineIntel" in EBX, EDX, ECX order.
        let vendor = |s: &[u8; 4]| u32::from_le_bytes(*s);
        MockHypervisor {
            max_vcpus: 254,
            cpuid: vec![
                CpuIdEntry {
                    function: 0,
                    eax: 1,
                    ebx: vendor(b"Genu"),
                    edx: vendor(b"ineI"),
                    ecx: vendor(b"ntel"),
                    ..Default::default()
                },
                CpuIdEntry {
                    function: 1,
                    eax: 0x0006_06a6,
                    // SSE2 SSE FXSR PAE MSR TSC APIC ... (bits 0-26 subset).
                    edx: 0x0789_a3f9 | (1 << 9),
                    // SSE3 and x2APIC.
                    ecx: 1 | (1 << 21),
                    ..Default::default()
                },
                CpuIdEntry {
                    function: 0x8000_0000,
                    eax: 0x8000_0001,
                    ..Default::default()
                },
                CpuIdEntry {
                    function: 0x8000_0001,
                    // LM, NX, SYSCALL.
                    edx: (1 << 29) | (1 << 20) | (1 << 11),
                    // LAHF/SAHF in long mode.
                    ecx: 1,
                    ..Default::default()
                },
            ],
            msrs: vec![
                0x10,        // IA32_TSC
                0x1b,        // IA32_APIC_BASE
                0x174,       // IA32_SYSENTER_CS
                0x175,       // IA32_SYSENTER_ESP
                0x176,       // IA32_SYSENTER_EIP
                0x277,       // IA32_PAT
                0xc000_0080, // EFER
                0xc000_0081, // STAR
                0xc000_0082, // LSTAR
                0xc000_0084, // SFMASK
                0xc000_0100, // FS_BASE
                0xc000_0101, // GS_BASE
                0xc000_0102, // KERNEL_GS_BASE
            ],
            vms: Mutex::new(Vec::new()),
        }
    }

    /// Sets what [`Hypervisor::max_vcpus`] reports and what the VMs created
    /// afterwards enforce.
    pub fn with_max_vcpus(mut self, max_vcpus: u32) -> Self {
        self.max_vcpus = max_vcpus;
        self
    }

    /// Sets what [`Hypervisor::supported_cpuid`] reports.
    pub fn with_cpuid(mut self, cpuid: Vec<CpuIdEntry>) -> Self {
        self.cpuid = cpuid;
        self
    }

    /// Sets what [`Hypervisor::supported_msrs`] reports.
    pub fn with_msrs(mut self, msrs: Vec<u32>) -> Self {
        self.msrs = msrs;
        self
    }

    /// Like [`Hypervisor::create_vm`], but returns the concrete [`MockVm`].
    pub fn create_mock_vm(&self) -> Arc<MockVm> {
        let vm = Arc::new(MockVm::with_max_vcpus(self.max_vcpus));
        lock(&self.vms).push(Arc::clone(&vm));
        vm
    }

    /// The VMs created so far, oldest first.
    pub fn vms(&self) -> Vec<Arc<MockVm>> {
        lock(&self.vms).clone()
    }
}

impl Hypervisor for MockHypervisor {
    fn create_vm(&self) -> Result<Arc<dyn Vm>> {
        Ok(self.create_mock_vm())
    }

    fn max_vcpus(&self) -> u32 {
        self.max_vcpus
    }

    fn supported_cpuid(&self) -> Result<Vec<CpuIdEntry>> {
        Ok(self.cpuid.clone())
    }

    fn supported_msrs(&self) -> Result<Vec<u32>> {
        Ok(self.msrs.clone())
    }
}

/// An ioeventfd registered on a [`MockVm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MockIoEvent {
    /// The eventfd's file descriptor number.
    pub fd: RawFd,
    /// Where it listens.
    pub addr: IoEventAddress,
    /// Which writes it matches.
    pub datamatch: DataMatch,
}

impl MockIoEvent {
    /// The access length KVM is given for this datamatch (0: any).
    fn len(&self) -> u32 {
        match self.datamatch {
            DataMatch::Any => 0,
            DataMatch::U32(_) => 4,
            DataMatch::U64(_) => 8,
        }
    }

    /// KVM's `ioeventfd_check_collision`: same bus and address, and the
    /// lengths and datamatches cannot tell the two apart.
    fn collides_with(&self, other: &MockIoEvent) -> bool {
        self.addr == other.addr
            && (self.len() == 0
                || other.len() == 0
                || (self.len() == other.len()
                    && (self.datamatch == DataMatch::Any
                        || other.datamatch == DataMatch::Any
                        || self.datamatch == other.datamatch)))
    }
}

#[derive(Debug, Default)]
struct VmState {
    slots: BTreeMap<u32, UserMemoryRegion>,
    region_calls: Vec<UserMemoryRegion>,
    irq_chip: bool,
    pit: bool,
    irq_lines: Vec<(u32, bool)>,
    irqfds: Vec<(RawFd, u32)>,
    ioevents: Vec<MockIoEvent>,
    vcpus: Vec<MockVcpu>,
    failing: BTreeSet<VmOp>,
}

impl VmState {
    fn check_fail(&self, op: VmOp) -> Result<()> {
        if self.failing.contains(&op) {
            Err(kvm_error(op.ioctl_name(), libc::EIO))
        } else {
            Ok(())
        }
    }

    /// KVM's checks of `KVM_SET_USER_MEMORY_REGION`, then the update.
    fn set_region(&mut self, region: UserMemoryRegion) -> Result<()> {
        const OP: &str = "KVM_SET_USER_MEMORY_REGION";
        let einval = || kvm_error(OP, libc::EINVAL);
        if region.slot >= MOCK_MAX_MEMORY_SLOTS
            || !region.memory_size.is_multiple_of(PAGE_SIZE)
            || !region.guest_phys_addr.is_multiple_of(PAGE_SIZE)
            || !region.userspace_addr.is_multiple_of(PAGE_SIZE)
            || region
                .guest_phys_addr
                .checked_add(region.memory_size)
                .is_none()
            || region
                .userspace_addr
                .checked_add(region.memory_size)
                .is_none()
        {
            return Err(einval());
        }
        let old = self.slots.get(&region.slot).copied();
        if region.memory_size == 0 {
            // Deleting a slot that does not exist is an error in KVM.
            self.slots.remove(&region.slot).ok_or_else(einval)?;
            return Ok(());
        }
        if let Some(old) = old {
            // KVM lets an existing slot move, but not change size, host
            // address or read-only flag.
            if old.memory_size != region.memory_size
                || old.userspace_addr != region.userspace_addr
                || old.read_only != region.read_only
            {
                return Err(einval());
            }
        }
        let end = region.guest_phys_addr + region.memory_size;
        let overlaps = self.slots.values().any(|other| {
            other.slot != region.slot
                && region.guest_phys_addr < other.guest_phys_addr + other.memory_size
                && other.guest_phys_addr < end
        });
        if overlaps {
            return Err(kvm_error(OP, libc::EEXIST));
        }
        self.slots.insert(region.slot, region);
        Ok(())
    }
}

/// A test double of [`Vm`] that records every call.
///
/// The accessors return snapshots; the recorded state is shared with the
/// `Arc<dyn Vm>` the code under test holds.
#[derive(Debug)]
pub struct MockVm {
    max_vcpus: u32,
    state: Mutex<VmState>,
}

impl Default for MockVm {
    fn default() -> Self {
        Self::new()
    }
}

impl MockVm {
    /// An empty VM allowing 254 vCPUs.
    pub fn new() -> Self {
        Self::with_max_vcpus(254)
    }

    /// An empty VM allowing vCPU ids `0..max_vcpus`.
    pub fn with_max_vcpus(max_vcpus: u32) -> Self {
        MockVm {
            max_vcpus,
            state: Mutex::new(VmState::default()),
        }
    }

    /// Makes every later call of `op` fail with `EIO` (an
    /// [`Error::Ioctl`]), to test error paths.
    pub fn fail_on(&self, op: VmOp) {
        lock(&self.state).failing.insert(op);
    }

    /// The memory slots currently registered, by slot number (removed
    /// slots are gone; a replaced slot shows its latest mapping).
    pub fn memory_regions(&self) -> Vec<UserMemoryRegion> {
        lock(&self.state).slots.values().copied().collect()
    }

    /// Every successful [`Vm::set_user_memory_region`] call, in order
    /// (including removals, which have `memory_size` 0).
    pub fn memory_region_calls(&self) -> Vec<UserMemoryRegion> {
        lock(&self.state).region_calls.clone()
    }

    /// Whether [`Vm::create_irq_chip`] succeeded.
    pub fn has_irq_chip(&self) -> bool {
        lock(&self.state).irq_chip
    }

    /// Whether [`Vm::create_pit`] succeeded.
    pub fn has_pit(&self) -> bool {
        lock(&self.state).pit
    }

    /// Every [`Vm::set_irq_line`] call as `(gsi, active)`, in order.
    pub fn irq_lines(&self) -> Vec<(u32, bool)> {
        lock(&self.state).irq_lines.clone()
    }

    /// The irqfds currently registered, as `(eventfd number, gsi)`.
    pub fn irqfds(&self) -> Vec<(RawFd, u32)> {
        lock(&self.state).irqfds.clone()
    }

    /// The ioeventfds currently registered, in registration order.
    pub fn ioevents(&self) -> Vec<MockIoEvent> {
        lock(&self.state).ioevents.clone()
    }

    /// Handles on the vCPUs created so far, in creation order.
    pub fn vcpus(&self) -> Vec<MockVcpu> {
        lock(&self.state).vcpus.clone()
    }

    /// A handle on vCPU `id`, if it was created.
    pub fn vcpu(&self, id: u32) -> Option<MockVcpu> {
        lock(&self.state).vcpus.iter().find(|v| v.id == id).cloned()
    }
}

impl Vm for MockVm {
    /// Checks `region` as KVM does (page alignment, slot number, overlap,
    /// what an existing slot may change) and records it; never touches the
    /// host memory.
    unsafe fn set_user_memory_region(&self, region: UserMemoryRegion) -> Result<()> {
        let mut st = lock(&self.state);
        st.check_fail(VmOp::SetUserMemoryRegion)?;
        st.set_region(region)?;
        st.region_calls.push(region);
        Ok(())
    }

    fn create_irq_chip(&self) -> Result<()> {
        let mut st = lock(&self.state);
        st.check_fail(VmOp::CreateIrqChip)?;
        if !st.vcpus.is_empty() {
            // KVM refuses the identity map address once vCPUs exist.
            return Err(kvm_error("KVM_SET_IDENTITY_MAP_ADDR", libc::EINVAL));
        }
        if st.irq_chip {
            return Err(kvm_error("KVM_CREATE_IRQCHIP", libc::EEXIST));
        }
        st.irq_chip = true;
        Ok(())
    }

    fn create_pit(&self) -> Result<()> {
        let mut st = lock(&self.state);
        st.check_fail(VmOp::CreatePit)?;
        if !st.irq_chip {
            return Err(kvm_error("KVM_CREATE_PIT2", libc::ENOENT));
        }
        if st.pit {
            return Err(kvm_error("KVM_CREATE_PIT2", libc::EEXIST));
        }
        st.pit = true;
        Ok(())
    }

    fn set_irq_line(&self, gsi: u32, active: bool) -> Result<()> {
        let mut st = lock(&self.state);
        st.check_fail(VmOp::SetIrqLine)?;
        if !st.irq_chip {
            return Err(kvm_error("KVM_IRQ_LINE", libc::ENXIO));
        }
        st.irq_lines.push((gsi, active));
        Ok(())
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        let mut st = lock(&self.state);
        st.check_fail(VmOp::RegisterIrqfd)?;
        if !st.irq_chip {
            return Err(kvm_error("KVM_IRQFD", libc::EINVAL));
        }
        let raw = fd.as_raw_fd();
        if st.irqfds.iter().any(|&(f, _)| f == raw) {
            return Err(kvm_error("KVM_IRQFD", libc::EBUSY));
        }
        st.irqfds.push((raw, gsi));
        Ok(())
    }

    /// Removes the irqfd; like KVM, succeeds when there is none.
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        let mut st = lock(&self.state);
        st.check_fail(VmOp::UnregisterIrqfd)?;
        let raw = fd.as_raw_fd();
        st.irqfds.retain(|&entry| entry != (raw, gsi));
        Ok(())
    }

    fn register_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
    ) -> Result<()> {
        let mut st = lock(&self.state);
        st.check_fail(VmOp::RegisterIoevent)?;
        let event = MockIoEvent {
            fd: fd.as_raw_fd(),
            addr,
            datamatch,
        };
        if st.ioevents.iter().any(|e| e.collides_with(&event)) {
            return Err(kvm_error("KVM_IOEVENTFD", libc::EEXIST));
        }
        st.ioevents.push(event);
        Ok(())
    }

    /// Removes the exactly matching ioeventfd; `ENOENT` when there is none.
    fn unregister_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
    ) -> Result<()> {
        let mut st = lock(&self.state);
        st.check_fail(VmOp::UnregisterIoevent)?;
        let event = MockIoEvent {
            fd: fd.as_raw_fd(),
            addr,
            datamatch,
        };
        let pos = st
            .ioevents
            .iter()
            .position(|e| *e == event)
            .ok_or_else(|| kvm_error("KVM_IOEVENTFD (deassign)", libc::ENOENT))?;
        st.ioevents.remove(pos);
        Ok(())
    }

    /// Creates a [`MockVcpu`] in the x86 reset state; it has a local APIC
    /// when the irqchip was created first. Ids must be below the VM's
    /// limit and unique.
    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>> {
        let mut st = lock(&self.state);
        st.check_fail(VmOp::CreateVcpu)?;
        if id >= self.max_vcpus {
            return Err(kvm_error("KVM_CREATE_VCPU", libc::EINVAL));
        }
        if st.vcpus.iter().any(|v| v.id == id) {
            return Err(kvm_error("KVM_CREATE_VCPU", libc::EEXIST));
        }
        let vcpu = MockVcpu::with_lapic(id, st.irq_chip);
        st.vcpus.push(vcpu.clone());
        Ok(Box::new(vcpu))
    }
}

/// An exit scripted on a [`MockVcpu`]; the owned form of [`VcpuExit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MockExit {
    /// [`VcpuExit::IoOut`] with these bytes.
    IoOut {
        /// The port.
        port: u16,
        /// The bytes written.
        data: Vec<u8>,
    },
    /// [`VcpuExit::IoIn`] of `len` bytes (zero-filled for the VMM to fill).
    IoIn {
        /// The port.
        port: u16,
        /// Access size.
        len: usize,
    },
    /// [`VcpuExit::MmioRead`] of `len` bytes (zero-filled).
    MmioRead {
        /// Guest physical address.
        addr: u64,
        /// Access size.
        len: usize,
    },
    /// [`VcpuExit::MmioWrite`] with these bytes.
    MmioWrite {
        /// Guest physical address.
        addr: u64,
        /// The bytes written.
        data: Vec<u8>,
    },
    /// [`VcpuExit::Halt`].
    Halt,
    /// [`VcpuExit::Shutdown`].
    Shutdown,
    /// [`VcpuExit::InternalError`].
    InternalError {
        /// Sub-error code.
        suberror: u32,
        /// Diagnostic words.
        data: Vec<u64>,
    },
    /// [`VcpuExit::SystemEvent`].
    SystemEvent {
        /// Event type.
        kind: u32,
        /// Event data words.
        data: Vec<u64>,
    },
    /// [`VcpuExit::FailEntry`].
    FailEntry {
        /// Entry failure reason.
        reason: u64,
        /// Host CPU.
        cpu: u32,
    },
    /// [`VcpuExit::Interrupted`].
    Interrupted,
    /// [`VcpuExit::Unsupported`].
    Unsupported(u32),
    /// `run()` fails with an [`Error::Ioctl`] for `KVM_RUN` with this errno.
    Error(i32),
}

#[derive(Debug)]
struct VcpuState {
    regs: Regs,
    sregs: SpecialRegs,
    fpu: FpuState,
    lapic: Option<LapicState>,
    cpuid: Vec<CpuIdEntry>,
    msrs: BTreeMap<u32, u64>,
    refused_msrs: BTreeSet<u32>,
    exits: VecDeque<MockExit>,
    read_replies: Vec<Vec<u8>>,
    runs: usize,
}

/// A test double of [`Vcpu`]; clones are handles on the same state.
///
/// It starts in the x86 reset state KVM reports for a new vCPU (real mode,
/// CS:IP = f000:fff0, CR0 = 0x6000_0010, FCW = 0x37f, APIC base
/// 0xfee0_0900 for vCPU 0 and 0xfee0_0800 for the others).
#[derive(Clone, Debug)]
pub struct MockVcpu {
    id: u32,
    state: Arc<Mutex<VcpuState>>,
    /// The data of the exit last returned by `run` (per handle).
    exit_data: Vec<u8>,
    /// The last exit was a read whose data the VMM fills.
    pending_read: bool,
}

impl MockVcpu {
    /// A standalone vCPU `id` with a local APIC.
    pub fn new(id: u32) -> Self {
        Self::with_lapic(id, true)
    }

    fn with_lapic(id: u32, lapic: bool) -> Self {
        let lapic = lapic.then(|| {
            // The registers KVM sets at reset: APIC ID, version, destination
            // format, spurious vector; every LVT masked except LINT0 of
            // vCPU 0, which is ExtINT (the 8259 is wired to it).
            let mut l = LapicState::default();
            l.set_reg(0x20, id << 24);
            l.set_reg(0x30, 0x0005_0014);
            l.set_reg(0xe0, 0xffff_ffff);
            l.set_reg(0xf0, 0xff);
            for lvt in (0x320..=0x370).step_by(0x10) {
                l.set_reg(lvt, 0x1_0000);
            }
            if id == 0 {
                l.set_reg(0x350, 0x700);
            }
            l
        });
        MockVcpu {
            id,
            state: Arc::new(Mutex::new(VcpuState {
                regs: reset_regs(),
                sregs: reset_sregs(id),
                fpu: FpuState {
                    fcw: 0x37f,
                    ..FpuState::default()
                },
                lapic,
                cpuid: Vec::new(),
                msrs: BTreeMap::new(),
                refused_msrs: BTreeSet::new(),
                exits: VecDeque::new(),
                read_replies: Vec::new(),
                runs: 0,
            })),
            exit_data: Vec::new(),
            pending_read: false,
        }
    }

    /// The vCPU id it was created with.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Appends an exit for a later [`Vcpu::run`] to return.
    pub fn push_exit(&self, exit: MockExit) {
        lock(&self.state).exits.push_back(exit);
    }

    /// Appends several exits, in order.
    pub fn push_exits(&self, exits: impl IntoIterator<Item = MockExit>) {
        lock(&self.state).exits.extend(exits);
    }

    /// How many times [`Vcpu::run`] was called (on any handle).
    pub fn run_count(&self) -> usize {
        lock(&self.state).runs
    }

    /// The bytes the VMM put in each [`VcpuExit::IoIn`] /
    /// [`VcpuExit::MmioRead`] exit, in order. Like KVM, the mock takes the
    /// reply when the vCPU runs again, so the last read shows up only
    /// after the next [`Vcpu::run`].
    pub fn read_replies(&self) -> Vec<Vec<u8>> {
        lock(&self.state).read_replies.clone()
    }

    /// The CPUID entries last set with [`Vcpu::set_cpuid`].
    pub fn cpuid(&self) -> Vec<CpuIdEntry> {
        lock(&self.state).cpuid.clone()
    }

    /// The value last written to MSR `index`, if any.
    pub fn msr(&self, index: u32) -> Option<u64> {
        lock(&self.state).msrs.get(&index).copied()
    }

    /// Makes [`Vcpu::msrs`] and [`Vcpu::set_msrs`] stop at MSR `index`,
    /// as KVM does for an MSR it refuses.
    pub fn refuse_msr(&self, index: u32) {
        lock(&self.state).refused_msrs.insert(index);
    }

    /// Whether the vCPU has a local APIC (the VM had an irqchip).
    pub fn has_lapic(&self) -> bool {
        lock(&self.state).lapic.is_some()
    }
}

/// The general purpose registers of a new KVM vCPU.
fn reset_regs() -> Regs {
    Regs {
        rip: 0xfff0,
        rflags: 0x2,
        // The CPU signature KVM puts in EDX at reset (family 6).
        rdx: 0x600,
        ..Regs::default()
    }
}

/// The special registers of a new KVM vCPU.
fn reset_sregs(id: u32) -> SpecialRegs {
    let data = Segment {
        limit: 0xffff,
        type_: 3,
        present: 1,
        s: 1,
        ..Segment::default()
    };
    let table = DescriptorTable {
        base: 0,
        limit: 0xffff,
    };
    SpecialRegs {
        cs: Segment {
            base: 0xffff_0000,
            selector: 0xf000,
            type_: 0xb,
            ..data
        },
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: Segment {
            type_: 0xb,
            s: 0,
            ..data
        },
        ldt: Segment {
            type_: 2,
            s: 0,
            ..data
        },
        gdt: table,
        idt: table,
        cr0: 0x6000_0010,
        apic_base: if id == 0 { 0xfee0_0900 } else { 0xfee0_0800 },
        ..SpecialRegs::default()
    }
}

impl Vcpu for MockVcpu {
    /// Returns the next scripted exit, or [`VcpuExit::Shutdown`] when the
    /// script is empty.
    fn run(&mut self) -> Result<VcpuExit<'_>> {
        let next = {
            let mut st = lock(&self.state);
            if std::mem::take(&mut self.pending_read) {
                st.read_replies.push(self.exit_data.clone());
            }
            st.runs += 1;
            st.exits.pop_front().unwrap_or(MockExit::Shutdown)
        };
        let exit = match next {
            MockExit::IoOut { port, data } => {
                self.exit_data = data;
                VcpuExit::IoOut {
                    port,
                    data: &self.exit_data,
                }
            }
            MockExit::IoIn { port, len } => {
                self.exit_data = vec![0; len];
                self.pending_read = true;
                VcpuExit::IoIn {
                    port,
                    data: &mut self.exit_data,
                }
            }
            MockExit::MmioRead { addr, len } => {
                self.exit_data = vec![0; len];
                self.pending_read = true;
                VcpuExit::MmioRead {
                    addr,
                    data: &mut self.exit_data,
                }
            }
            MockExit::MmioWrite { addr, data } => {
                self.exit_data = data;
                VcpuExit::MmioWrite {
                    addr,
                    data: &self.exit_data,
                }
            }
            MockExit::Halt => VcpuExit::Halt,
            MockExit::Shutdown => VcpuExit::Shutdown,
            MockExit::InternalError { suberror, data } => {
                VcpuExit::InternalError { suberror, data }
            }
            MockExit::SystemEvent { kind, data } => VcpuExit::SystemEvent { kind, data },
            MockExit::FailEntry { reason, cpu } => VcpuExit::FailEntry { reason, cpu },
            MockExit::Interrupted => VcpuExit::Interrupted,
            MockExit::Unsupported(reason) => VcpuExit::Unsupported(reason),
            MockExit::Error(errno) => return Err(kvm_error("KVM_RUN", errno)),
        };
        Ok(exit)
    }

    fn regs(&self) -> Result<Regs> {
        Ok(lock(&self.state).regs)
    }

    fn set_regs(&self, regs: &Regs) -> Result<()> {
        lock(&self.state).regs = *regs;
        Ok(())
    }

    fn sregs(&self) -> Result<SpecialRegs> {
        Ok(lock(&self.state).sregs)
    }

    fn set_sregs(&self, sregs: &SpecialRegs) -> Result<()> {
        lock(&self.state).sregs = *sregs;
        Ok(())
    }

    fn fpu(&self) -> Result<FpuState> {
        Ok(lock(&self.state).fpu)
    }

    fn set_fpu(&self, fpu: &FpuState) -> Result<()> {
        lock(&self.state).fpu = *fpu;
        Ok(())
    }

    /// Returns the values last written (0 for MSRs never written), stopping
    /// at the first refused MSR.
    fn msrs(&self, entries: &mut [MsrEntry]) -> Result<usize> {
        if entries.len() > MAX_MSR_ENTRIES {
            return Err(Error::InvalidArgument(format!(
                "{} MSR entries: more than {MAX_MSR_ENTRIES}",
                entries.len()
            )));
        }
        let st = lock(&self.state);
        let mut read = 0;
        for entry in entries.iter_mut() {
            if st.refused_msrs.contains(&entry.index) {
                break;
            }
            entry.data = st.msrs.get(&entry.index).copied().unwrap_or(0);
            read += 1;
        }
        Ok(read)
    }

    /// Stores the values, stopping at the first refused MSR.
    fn set_msrs(&self, entries: &[MsrEntry]) -> Result<usize> {
        if entries.len() > MAX_MSR_ENTRIES {
            return Err(Error::InvalidArgument(format!(
                "{} MSR entries: more than {MAX_MSR_ENTRIES}",
                entries.len()
            )));
        }
        let mut st = lock(&self.state);
        let mut written = 0;
        for entry in entries {
            if st.refused_msrs.contains(&entry.index) {
                break;
            }
            st.msrs.insert(entry.index, entry.data);
            written += 1;
        }
        Ok(written)
    }

    fn set_cpuid(&self, entries: &[CpuIdEntry]) -> Result<()> {
        if entries.len() > MAX_CPUID_ENTRIES {
            return Err(Error::InvalidArgument(format!(
                "{} CPUID entries: more than {MAX_CPUID_ENTRIES}",
                entries.len()
            )));
        }
        lock(&self.state).cpuid = entries.to_vec();
        Ok(())
    }

    /// Fails with `EINVAL`, as KVM does, when the VM had no irqchip.
    fn lapic(&self) -> Result<LapicState> {
        lock(&self.state)
            .lapic
            .ok_or_else(|| kvm_error("KVM_GET_LAPIC", libc::EINVAL))
    }

    /// Fails with `EINVAL`, as KVM does, when the VM had no irqchip.
    fn set_lapic(&self, lapic: &LapicState) -> Result<()> {
        let mut st = lock(&self.state);
        match st.lapic.as_mut() {
            Some(l) => {
                *l = *lapic;
                Ok(())
            }
            None => Err(kvm_error("KVM_SET_LAPIC", libc::EINVAL)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(slot: u32, gpa: u64, size: u64) -> UserMemoryRegion {
        UserMemoryRegion {
            slot,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: 0x7f00_0000_0000 + gpa,
            read_only: false,
        }
    }

    fn errno(err: Error) -> Option<i32> {
        match err {
            Error::Ioctl { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    #[test]
    fn records_memory_regions_and_checks_them_like_kvm() {
        let vm = MockVm::new();
        let low = region(0, 0, 0x10_0000);
        let high = region(1, 0x1_0000_0000, 0x2000);
        // SAFETY: the mock never touches host memory.
        unsafe {
            vm.set_user_memory_region(high).unwrap();
            vm.set_user_memory_region(low).unwrap();
        }
        assert_eq!(vm.memory_regions(), vec![low, high]);
        assert_eq!(vm.memory_region_calls(), vec![high, low]);

        // SAFETY (block): the mock never touches host memory.
        unsafe {
            // Overlap with slot 0.
            let e = vm.set_user_memory_region(region(2, 0xf_f000, 0x2000));
            assert_eq!(errno(e.unwrap_err()), Some(libc::EEXIST));
            // Misaligned address and size; slot number too large.
            let e = vm.set_user_memory_region(region(2, 0x20_0800, 0x1000));
            assert_eq!(errno(e.unwrap_err()), Some(libc::EINVAL));
            let e = vm.set_user_memory_region(region(2, 0x20_0000, 0x1001));
            assert_eq!(errno(e.unwrap_err()), Some(libc::EINVAL));
            let e = vm.set_user_memory_region(region(MOCK_MAX_MEMORY_SLOTS, 0x20_0000, 0x1000));
            assert_eq!(errno(e.unwrap_err()), Some(libc::EINVAL));
            // An existing slot may not change size.
            let e = vm.set_user_memory_region(region(1, 0x1_0000_0000, 0x4000));
            assert_eq!(errno(e.unwrap_err()), Some(libc::EINVAL));
            // Removing a slot, then removing it again.
            vm.set_user_memory_region(region(1, 0, 0)).unwrap();
            let e = vm.set_user_memory_region(region(1, 0, 0));
            assert_eq!(errno(e.unwrap_err()), Some(libc::EINVAL));
        }
        assert_eq!(vm.memory_regions(), vec![low]);
        assert_eq!(vm.memory_region_calls().len(), 3);
    }

    #[test]
    fn interrupt_controllers_follow_kvm_ordering() {
        let vm = MockVm::new();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        assert_eq!(errno(vm.create_pit().unwrap_err()), Some(libc::ENOENT));
        assert_eq!(
            errno(vm.set_irq_line(4, true).unwrap_err()),
            Some(libc::ENXIO)
        );
        assert_eq!(
            errno(vm.register_irqfd(&evt, 4).unwrap_err()),
            Some(libc::EINVAL)
        );
        vm.create_irq_chip().unwrap();
        assert_eq!(errno(vm.create_irq_chip().unwrap_err()), Some(libc::EEXIST));
        vm.create_pit().unwrap();
        assert!(vm.has_irq_chip() && vm.has_pit());

        vm.set_irq_line(4, true).unwrap();
        vm.set_irq_line(4, false).unwrap();
        assert_eq!(vm.irq_lines(), vec![(4, true), (4, false)]);

        vm.register_irqfd(&evt, 5).unwrap();
        assert_eq!(
            errno(vm.register_irqfd(&evt, 6).unwrap_err()),
            Some(libc::EBUSY)
        );
        assert_eq!(vm.irqfds(), vec![(evt.as_raw_fd(), 5)]);
        vm.unregister_irqfd(&evt, 5).unwrap();
        assert!(vm.irqfds().is_empty());
    }

    #[test]
    fn ioevents_collide_like_kvm() {
        let vm = MockVm::new();
        let a = EventFd::new(0).unwrap();
        let b = EventFd::new(0).unwrap();
        let addr = IoEventAddress::Mmio(0xd000_0050);
        vm.register_ioevent(&a, addr, DataMatch::U32(1)).unwrap();
        vm.register_ioevent(&b, addr, DataMatch::U32(2)).unwrap();
        // Same length and value, or any length: collision.
        let e = vm.register_ioevent(&b, addr, DataMatch::U32(1));
        assert_eq!(errno(e.unwrap_err()), Some(libc::EEXIST));
        let e = vm.register_ioevent(&b, addr, DataMatch::Any);
        assert_eq!(errno(e.unwrap_err()), Some(libc::EEXIST));
        // The port space is separate.
        vm.register_ioevent(&b, IoEventAddress::Pio(0xd000_0050), DataMatch::Any)
            .unwrap();
        assert_eq!(vm.ioevents().len(), 3);
        assert_eq!(
            vm.ioevents()[0],
            MockIoEvent {
                fd: a.as_raw_fd(),
                addr,
                datamatch: DataMatch::U32(1)
            }
        );
        vm.unregister_ioevent(&a, addr, DataMatch::U32(1)).unwrap();
        let e = vm.unregister_ioevent(&a, addr, DataMatch::U32(1));
        assert_eq!(errno(e.unwrap_err()), Some(libc::ENOENT));
        assert_eq!(vm.ioevents().len(), 2);
    }

    #[test]
    fn vcpus_are_unique_and_in_reset_state() {
        let vm = MockVm::with_max_vcpus(2);
        let v0 = vm.create_vcpu(0).unwrap();
        assert_eq!(errno(vm.create_vcpu(0).err().unwrap()), Some(libc::EEXIST));
        assert_eq!(errno(vm.create_vcpu(2).err().unwrap()), Some(libc::EINVAL));
        let v1 = vm.create_vcpu(1).unwrap();
        // vCPUs exist: too late for the irqchip, and there is no LAPIC.
        assert!(vm.create_irq_chip().is_err());
        assert!(v0.lapic().is_err());
        assert_eq!(v0.regs().unwrap().rip, 0xfff0);
        let s0 = v0.sregs().unwrap();
        assert_eq!((s0.cs.selector, s0.cs.base), (0xf000, 0xffff_0000));
        assert_eq!(s0.apic_base, 0xfee0_0900);
        assert_eq!(v1.sregs().unwrap().apic_base, 0xfee0_0800);
        assert_eq!(
            vm.vcpus().iter().map(MockVcpu::id).collect::<Vec<_>>(),
            [0, 1]
        );

        let vm = MockVm::new();
        vm.create_irq_chip().unwrap();
        let v = vm.create_vcpu(3).unwrap();
        let lapic = v.lapic().unwrap();
        assert_eq!(lapic.reg(0x20), Some(3 << 24));
        assert_eq!(lapic.reg(0x350), Some(0x1_0000));
    }

    #[test]
    fn vcpu_state_is_shared_with_the_test_handle() {
        let vm = MockVm::new();
        vm.create_irq_chip().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let handle = vm.vcpu(0).unwrap();

        let regs = Regs {
            rip: 0x10_0000,
            rsi: 0x7000,
            rflags: 2,
            ..Regs::default()
        };
        vcpu.set_regs(&regs).unwrap();
        assert_eq!(handle.regs().unwrap(), regs);

        let mut sregs = vcpu.sregs().unwrap();
        sregs.cr0 |= 1;
        sregs.efer = 0x500;
        vcpu.set_sregs(&sregs).unwrap();
        assert_eq!(handle.sregs().unwrap(), sregs);

        let fpu = FpuState {
            mxcsr: 0x1f80,
            ..FpuState::default()
        };
        vcpu.set_fpu(&fpu).unwrap();
        assert_eq!(handle.fpu().unwrap(), fpu);

        let mut lapic = vcpu.lapic().unwrap();
        lapic.set_reg(0x350, 0x1_0700);
        vcpu.set_lapic(&lapic).unwrap();
        assert_eq!(handle.lapic().unwrap().reg(0x350), Some(0x1_0700));

        let cpuid = vec![CpuIdEntry {
            function: 0x4000_0000,
            ..CpuIdEntry::default()
        }];
        vcpu.set_cpuid(&cpuid).unwrap();
        assert_eq!(handle.cpuid(), cpuid);
        let too_many = vec![CpuIdEntry::default(); MAX_CPUID_ENTRIES + 1];
        assert!(matches!(
            vcpu.set_cpuid(&too_many),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn msrs_stop_at_a_refused_one() {
        let vcpu = MockVcpu::new(0);
        vcpu.refuse_msr(0x10a);
        let written = vcpu
            .set_msrs(&[
                MsrEntry {
                    index: 0x174,
                    data: 0x10,
                },
                MsrEntry {
                    index: 0x10a,
                    data: 1,
                },
                MsrEntry {
                    index: 0x175,
                    data: 0x20,
                },
            ])
            .unwrap();
        assert_eq!(written, 1);
        assert_eq!(vcpu.msr(0x174), Some(0x10));
        assert_eq!(vcpu.msr(0x175), None);

        let mut entries = [
            MsrEntry {
                index: 0x174,
                data: 0,
            },
            MsrEntry {
                index: 0x176,
                data: 99,
            },
            MsrEntry {
                index: 0x10a,
                data: 5,
            },
        ];
        assert_eq!(vcpu.msrs(&mut entries).unwrap(), 2);
        assert_eq!(entries[0].data, 0x10);
        assert_eq!(entries[1].data, 0);
        assert_eq!(
            entries[2].data, 5,
            "entries after the refused one are untouched"
        );
    }

    #[test]
    fn run_returns_the_script_and_records_read_replies() {
        let mut vcpu = MockVcpu::new(0);
        let handle = vcpu.clone();
        handle.push_exits([
            MockExit::IoOut {
                port: 0x3f8,
                data: vec![b'h'],
            },
            MockExit::IoIn {
                port: 0x3fd,
                len: 1,
            },
            MockExit::MmioRead {
                addr: 0xd000_0000,
                len: 4,
            },
            MockExit::MmioWrite {
                addr: 0xd000_0070,
                data: vec![1, 0, 0, 0],
            },
            MockExit::InternalError {
                suberror: 1,
                data: vec![7],
            },
            MockExit::Error(libc::EFAULT),
            MockExit::Halt,
        ]);
        match vcpu.run().unwrap() {
            VcpuExit::IoOut { port, data } => assert_eq!((port, data), (0x3f8, &b"h"[..])),
            other => panic!("unexpected {other:?}"),
        }
        match vcpu.run().unwrap() {
            VcpuExit::IoIn { port, data } => {
                assert_eq!((port, data.len()), (0x3fd, 1));
                data[0] = 0x60;
            }
            other => panic!("unexpected {other:?}"),
        }
        match vcpu.run().unwrap() {
            VcpuExit::MmioRead { addr, data } => {
                assert_eq!((addr, data.len()), (0xd000_0000, 4));
                data.copy_from_slice(&0x7472_6976u32.to_le_bytes());
            }
            other => panic!("unexpected {other:?}"),
        }
        match vcpu.run().unwrap() {
            VcpuExit::MmioWrite { addr, data } => {
                assert_eq!((addr, data), (0xd000_0070, &[1u8, 0, 0, 0][..]))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            handle.read_replies(),
            vec![vec![0x60], 0x7472_6976u32.to_le_bytes().to_vec()]
        );
        match vcpu.run().unwrap() {
            VcpuExit::InternalError { suberror, data } => {
                assert_eq!((suberror, data), (1, vec![7]))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(errno(vcpu.run().unwrap_err()), Some(libc::EFAULT));
        assert!(matches!(vcpu.run().unwrap(), VcpuExit::Halt));
        // The script is exhausted.
        assert!(matches!(vcpu.run().unwrap(), VcpuExit::Shutdown));
        assert_eq!(handle.run_count(), 8);
    }

    #[test]
    fn hypervisor_hands_out_recorded_vms() {
        let hv = MockHypervisor::new()
            .with_max_vcpus(1)
            .with_msrs(vec![0x174]);
        assert_eq!(hv.max_vcpus(), 1);
        assert_eq!(hv.supported_msrs().unwrap(), vec![0x174]);
        let cpuid = hv.supported_cpuid().unwrap();
        let leaf0 = cpuid.iter().find(|e| e.function == 0).unwrap();
        let vendor: Vec<u8> = [leaf0.ebx, leaf0.edx, leaf0.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        assert_eq!(vendor, b"GenuineIntel");

        let vm = hv.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        assert!(vm.create_vcpu(1).is_err(), "max_vcpus is enforced");
        vm.create_vcpu(0).unwrap();
        let vms = hv.vms();
        assert_eq!(vms.len(), 1);
        assert!(vms[0].has_irq_chip());
        assert_eq!(vms[0].vcpus().len(), 1);
    }

    #[test]
    fn injected_failures() {
        let vm = MockVm::new();
        vm.fail_on(VmOp::CreateVcpu);
        let err = vm.create_vcpu(0).err().unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "KVM_CREATE_VCPU failed: {}",
                io::Error::from_raw_os_error(libc::EIO)
            )
        );
        assert!(vm.vcpus().is_empty());
        vm.create_irq_chip().unwrap();
    }
}
