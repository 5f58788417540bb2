//! [`KvmVcpu`]: a KVM vCPU file descriptor and its run loop.

use kvm_bindings::{CpuId, Msrs, Xsave, kvm_cpuid_entry2, kvm_msr_entry, kvm_xsave};
use kvm_ioctls::VcpuFd;

use super::convert::{fpu_from_xsave, fpu_to_xsave};
use crate::{
    CpuIdEntry, Error, FpuState, LapicState, MsrEntry, Regs, Result, SpecialRegs, Vcpu, VcpuExit,
};

/// A KVM vCPU.
///
/// `KVM_GET_FPU`/`KVM_SET_FPU` do not transfer MXCSR (KVM ignores the
/// field), so [`Vcpu::fpu`] and [`Vcpu::set_fpu`] use the legacy area of
/// the vCPU's XSAVE image instead (`KVM_GET_XSAVE2`/`KVM_SET_XSAVE`).
#[derive(Debug)]
pub struct KvmVcpu {
    fd: VcpuFd,
    /// Number of 32-bit words past the 4 KiB `kvm_xsave` that this vCPU's
    /// XSAVE image may use (`KVM_CAP_XSAVE2`, queried once the vCPU
    /// existed).
    xsave_fam_len: usize,
    /// Whether `KVM_GET_XSAVE2` exists (Linux 5.17+).
    xsave2: bool,
}

/// What one `KVM_RUN` produced, with no borrow of the vCPU left.
///
/// The data-carrying exits keep kvm-ioctls' slices as raw parts, so that
/// [`KvmVcpu::run`] can end the borrow `VcpuFd::run` holds (needed to read
/// the run area again for internal errors) and rebuild the slices with the
/// lifetime of `&mut self`.
enum RunOutcome {
    /// A complete exit that borrows nothing.
    Exit(VcpuExit<'static>),
    IoOut(u16, *const u8, usize),
    IoIn(u16, *mut u8, usize),
    MmioRead(u64, *mut u8, usize),
    MmioWrite(u64, *const u8, usize),
    /// `KVM_EXIT_INTERNAL_ERROR`: details are in `kvm_run.internal`.
    InternalError,
    /// `KVM_RUN` failed with `EAGAIN`; run again.
    Retry,
}

/// The largest number of data words `kvm_run.internal.data` holds.
const INTERNAL_ERROR_MAX_DATA: usize = 16;

impl KvmVcpu {
    /// Wraps `fd`. `xsave2_size` is `KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)`
    /// on the VM, queried after the vCPU was created (0 or less when the
    /// kernel lacks it).
    pub(super) fn new(fd: VcpuFd, xsave2_size: i32) -> Self {
        let size = usize::try_from(xsave2_size).unwrap_or(0);
        let extra = size.saturating_sub(std::mem::size_of::<kvm_xsave>());
        KvmVcpu {
            fd,
            xsave_fam_len: extra.div_ceil(std::mem::size_of::<u32>()),
            xsave2: size > 0,
        }
    }

    /// Reads the vCPU's XSAVE image.
    fn xsave(&self) -> Result<Xsave> {
        let mut xsave = Xsave::new(self.xsave_fam_len)
            .map_err(|e| Error::InvalidArgument(format!("XSAVE area: {e}")))?;
        if self.xsave2 {
            // SAFETY: `xsave` holds the size KVM_CAP_XSAVE2 reported after
            // this vCPU was created. That size covers every XSTATE feature
            // the process may give a guest, and those permissions are locked
            // once a vCPU exists, so KVM never writes past the buffer.
            unsafe { self.fd.get_xsave2(&mut xsave) }
                .map_err(|e| Error::ioctl("KVM_GET_XSAVE2", e))?;
        } else {
            // Without KVM_CAP_XSAVE2 there are no dynamic XSTATE features
            // and the image is the plain 4 KiB `kvm_xsave`.
            let legacy = self
                .fd
                .get_xsave()
                .map_err(|e| Error::ioctl("KVM_GET_XSAVE", e))?;
            // SAFETY: only the fixed-size `region` is written, never the
            // FAM length, so the wrapper's length invariant still holds.
            unsafe { xsave.as_mut_fam_struct() }.xsave.region = legacy.region;
        }
        Ok(xsave)
    }

    /// The underlying `kvm-ioctls` handle, for what the traits do not cover.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The underlying `kvm-ioctls` handle, mutably (e.g. for
    /// `set_kvm_immediate_exit`).
    pub fn fd_mut(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }

    /// Sets `kvm_run.immediate_exit`: while it is set, [`Vcpu::run`]
    /// returns [`VcpuExit::Interrupted`] without entering the guest. A VMM
    /// sets it from a signal handler (or before signalling the vCPU thread)
    /// to stop a vCPU race-free, and clears it before running again.
    pub fn set_immediate_exit(&mut self, exit: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(exit));
    }

    /// Runs `KVM_RUN` once and classifies the result.
    fn run_once(&mut self) -> Result<RunOutcome> {
        use kvm_ioctls::VcpuExit as K;
        let outcome = match self.fd.run() {
            Ok(exit) => match exit {
                K::IoOut(port, data) => RunOutcome::IoOut(port, data.as_ptr(), data.len()),
                K::IoIn(port, data) => RunOutcome::IoIn(port, data.as_mut_ptr(), data.len()),
                K::MmioRead(addr, data) => {
                    RunOutcome::MmioRead(addr, data.as_mut_ptr(), data.len())
                }
                K::MmioWrite(addr, data) => RunOutcome::MmioWrite(addr, data.as_ptr(), data.len()),
                K::InternalError => RunOutcome::InternalError,
                other => RunOutcome::Exit(owned_exit(other)),
            },
            Err(e) => match e.errno() {
                libc::EINTR => RunOutcome::Exit(VcpuExit::Interrupted),
                // An AP that waits for INIT/SIPI: KVM blocked until an event
                // arrived, then asks to be run again.
                libc::EAGAIN => RunOutcome::Retry,
                _ => return Err(Error::ioctl("KVM_RUN", e)),
            },
        };
        Ok(outcome)
    }

    /// The `KVM_EXIT_INTERNAL_ERROR` details from the run area.
    fn internal_error(&mut self) -> VcpuExit<'static> {
        let run = self.fd.get_kvm_run();
        // SAFETY: `run` is the vCPU's mapped `kvm_run`, and `internal` is a
        // plain struct of integers (`u32`, `u32`, `[u64; 16]`), for which
        // every bit pattern is valid; KVM filled it for this exit (the exit
        // reason was KVM_EXIT_INTERNAL_ERROR).
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let ndata = usize::try_from(internal.ndata)
            .unwrap_or(usize::MAX)
            .min(INTERNAL_ERROR_MAX_DATA)
            .min(internal.data.len());
        VcpuExit::InternalError {
            suberror: internal.suberror,
            data: internal.data[..ndata].to_vec(),
        }
    }
}

/// Converts a kvm-ioctls exit that needs nothing from the run area after
/// it returns (the data-carrying ones are handled by the caller).
fn owned_exit(exit: kvm_ioctls::VcpuExit<'_>) -> VcpuExit<'static> {
    use kvm_bindings::*;
    use kvm_ioctls::VcpuExit as K;
    match exit {
        K::Hlt => VcpuExit::Halt,
        K::Shutdown => VcpuExit::Shutdown,
        K::Intr => VcpuExit::Interrupted,
        K::FailEntry(reason, cpu) => VcpuExit::FailEntry { reason, cpu },
        K::SystemEvent(kind, data) => VcpuExit::SystemEvent {
            kind,
            data: data.to_vec(),
        },
        // The rest carry nothing this crate models; report the exit reason.
        K::IoOut(..) | K::IoIn(..) => VcpuExit::Unsupported(KVM_EXIT_IO),
        K::MmioRead(..) | K::MmioWrite(..) => VcpuExit::Unsupported(KVM_EXIT_MMIO),
        K::InternalError => VcpuExit::Unsupported(KVM_EXIT_INTERNAL_ERROR),
        K::Unknown => VcpuExit::Unsupported(KVM_EXIT_UNKNOWN),
        K::Exception => VcpuExit::Unsupported(KVM_EXIT_EXCEPTION),
        K::Hypercall(_) => VcpuExit::Unsupported(KVM_EXIT_HYPERCALL),
        K::Debug(_) => VcpuExit::Unsupported(KVM_EXIT_DEBUG),
        K::IrqWindowOpen => VcpuExit::Unsupported(KVM_EXIT_IRQ_WINDOW_OPEN),
        K::SetTpr => VcpuExit::Unsupported(KVM_EXIT_SET_TPR),
        K::TprAccess => VcpuExit::Unsupported(KVM_EXIT_TPR_ACCESS),
        K::S390Sieic => VcpuExit::Unsupported(KVM_EXIT_S390_SIEIC),
        K::S390Reset => VcpuExit::Unsupported(KVM_EXIT_S390_RESET),
        K::Dcr => VcpuExit::Unsupported(KVM_EXIT_DCR),
        K::Nmi => VcpuExit::Unsupported(KVM_EXIT_NMI),
        K::Osi => VcpuExit::Unsupported(KVM_EXIT_OSI),
        K::PaprHcall => VcpuExit::Unsupported(KVM_EXIT_PAPR_HCALL),
        K::S390Ucontrol => VcpuExit::Unsupported(KVM_EXIT_S390_UCONTROL),
        K::Watchdog => VcpuExit::Unsupported(KVM_EXIT_WATCHDOG),
        K::S390Tsch => VcpuExit::Unsupported(KVM_EXIT_S390_TSCH),
        K::Epr => VcpuExit::Unsupported(KVM_EXIT_EPR),
        K::S390Stsi => VcpuExit::Unsupported(KVM_EXIT_S390_STSI),
        K::IoapicEoi(_) => VcpuExit::Unsupported(KVM_EXIT_IOAPIC_EOI),
        K::Hyperv => VcpuExit::Unsupported(KVM_EXIT_HYPERV),
        K::X86Rdmsr(_) => VcpuExit::Unsupported(KVM_EXIT_X86_RDMSR),
        K::X86Wrmsr(_) => VcpuExit::Unsupported(KVM_EXIT_X86_WRMSR),
        K::MemoryFault { .. } => VcpuExit::Unsupported(KVM_EXIT_MEMORY_FAULT),
        K::Unsupported(reason) => VcpuExit::Unsupported(reason),
    }
}

impl Vcpu for KvmVcpu {
    /// `KVM_RUN`, retried on `EAGAIN`; `EINTR` and `KVM_EXIT_INTR` give
    /// [`VcpuExit::Interrupted`].
    fn run(&mut self) -> Result<VcpuExit<'_>> {
        loop {
            let exit = match self.run_once()? {
                RunOutcome::Retry => continue,
                RunOutcome::Exit(exit) => exit,
                RunOutcome::InternalError => self.internal_error(),
                // The four data-carrying arms below rebuild kvm-ioctls'
                // slices. Their common safety argument: the pointer and
                // length are those of the slice kvm-ioctls returned for this
                // very exit, which lies inside the `kvm_run` mapping owned by
                // `self.fd` (unmapped only when `self.fd` drops). Nothing has
                // touched the mapping since, and the rebuilt slice borrows
                // `self` mutably, so no other reference to it exists while
                // the slice lives.
                RunOutcome::IoOut(port, ptr, len) => VcpuExit::IoOut {
                    port,
                    // SAFETY: see above; kvm-ioctls' slice was `&[u8]`-usable.
                    data: unsafe { std::slice::from_raw_parts(ptr, len) },
                },
                RunOutcome::IoIn(port, ptr, len) => VcpuExit::IoIn {
                    port,
                    // SAFETY: see above; kvm-ioctls' slice was `&mut [u8]`.
                    data: unsafe { std::slice::from_raw_parts_mut(ptr, len) },
                },
                RunOutcome::MmioRead(addr, ptr, len) => VcpuExit::MmioRead {
                    addr,
                    // SAFETY: see above; kvm-ioctls' slice was `&mut [u8]`.
                    data: unsafe { std::slice::from_raw_parts_mut(ptr, len) },
                },
                RunOutcome::MmioWrite(addr, ptr, len) => VcpuExit::MmioWrite {
                    addr,
                    // SAFETY: see above; kvm-ioctls' slice was `&[u8]`-usable.
                    data: unsafe { std::slice::from_raw_parts(ptr, len) },
                },
            };
            return Ok(exit);
        }
    }

    fn regs(&self) -> Result<Regs> {
        self.fd
            .get_regs()
            .map(Regs::from)
            .map_err(|e| Error::ioctl("KVM_GET_REGS", e))
    }

    fn set_regs(&self, regs: &Regs) -> Result<()> {
        self.fd
            .set_regs(&(*regs).into())
            .map_err(|e| Error::ioctl("KVM_SET_REGS", e))
    }

    fn sregs(&self) -> Result<SpecialRegs> {
        self.fd
            .get_sregs()
            .map(SpecialRegs::from)
            .map_err(|e| Error::ioctl("KVM_GET_SREGS", e))
    }

    fn set_sregs(&self, sregs: &SpecialRegs) -> Result<()> {
        self.fd
            .set_sregs(&(*sregs).into())
            .map_err(|e| Error::ioctl("KVM_SET_SREGS", e))
    }

    /// Reads the x87/SSE state from the XSAVE image (`KVM_GET_FPU` would
    /// not report MXCSR).
    fn fpu(&self) -> Result<FpuState> {
        Ok(fpu_from_xsave(
            &self.xsave()?.as_fam_struct_ref().xsave.region,
        ))
    }

    /// Writes the x87/SSE state into the XSAVE image (`KVM_SET_FPU` would
    /// ignore MXCSR). KVM rejects reserved MXCSR bits with `EINVAL`.
    fn set_fpu(&self, fpu: &FpuState) -> Result<()> {
        let mut xsave = self.xsave()?;
        // SAFETY: only the fixed-size `region` is written, never the FAM
        // length, so the wrapper's length invariant still holds.
        fpu_to_xsave(fpu, &mut unsafe { xsave.as_mut_fam_struct() }.xsave.region);
        // SAFETY: `xsave` was sized from KVM_CAP_XSAVE2 (see `xsave`), so
        // KVM reads no more than the buffer holds.
        unsafe { self.fd.set_xsave2(&xsave) }.map_err(|e| Error::ioctl("KVM_SET_XSAVE", e))
    }

    fn msrs(&self, entries: &mut [MsrEntry]) -> Result<usize> {
        let mut msrs = msrs_from(entries)?;
        let read = self
            .fd
            .get_msrs(&mut msrs)
            .map_err(|e| Error::ioctl("KVM_GET_MSRS", e))?;
        let read = read.min(entries.len());
        for (entry, kvm_entry) in entries.iter_mut().zip(msrs.as_slice()).take(read) {
            entry.data = kvm_entry.data;
        }
        Ok(read)
    }

    fn set_msrs(&self, entries: &[MsrEntry]) -> Result<usize> {
        let msrs = msrs_from(entries)?;
        self.fd
            .set_msrs(&msrs)
            .map_err(|e| Error::ioctl("KVM_SET_MSRS", e))
    }

    fn set_cpuid(&self, entries: &[CpuIdEntry]) -> Result<()> {
        let kvm_entries: Vec<kvm_cpuid_entry2> = entries.iter().map(|&e| e.into()).collect();
        let cpuid = CpuId::from_entries(&kvm_entries)
            .map_err(|e| Error::InvalidArgument(format!("{} CPUID entries: {e}", entries.len())))?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|e| Error::ioctl("KVM_SET_CPUID2", e))
    }

    fn lapic(&self) -> Result<LapicState> {
        self.fd
            .get_lapic()
            .map(LapicState::from)
            .map_err(|e| Error::ioctl("KVM_GET_LAPIC", e))
    }

    fn set_lapic(&self, lapic: &LapicState) -> Result<()> {
        self.fd
            .set_lapic(&(*lapic).into())
            .map_err(|e| Error::ioctl("KVM_SET_LAPIC", e))
    }
}

/// Builds the `Msrs` FAM wrapper for `entries` (at most
/// `KVM_MAX_MSR_ENTRIES`).
fn msrs_from(entries: &[MsrEntry]) -> Result<Msrs> {
    let kvm_entries: Vec<kvm_msr_entry> = entries.iter().map(|&e| e.into()).collect();
    Msrs::from_entries(&kvm_entries)
        .map_err(|e| Error::InvalidArgument(format!("{} MSR entries: {e}", entries.len())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{KVM_MAX_MSR_ENTRIES, kvm_debug_exit_arch};

    #[test]
    fn owned_exits_map() {
        use kvm_ioctls::VcpuExit as K;
        assert!(matches!(owned_exit(K::Hlt), VcpuExit::Halt));
        assert!(matches!(owned_exit(K::Shutdown), VcpuExit::Shutdown));
        assert!(matches!(owned_exit(K::Intr), VcpuExit::Interrupted));
        assert!(matches!(
            owned_exit(K::FailEntry(0x80000021, 3)),
            VcpuExit::FailEntry {
                reason: 0x80000021,
                cpu: 3
            }
        ));
        match owned_exit(K::SystemEvent(2, &[7, 8])) {
            VcpuExit::SystemEvent { kind, data } => {
                assert_eq!(kind, 2);
                assert_eq!(data, vec![7, 8]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            owned_exit(K::Debug(kvm_debug_exit_arch::default())),
            VcpuExit::Unsupported(4)
        ));
        assert!(matches!(
            owned_exit(K::IrqWindowOpen),
            VcpuExit::Unsupported(7)
        ));
        assert!(matches!(
            owned_exit(K::Unsupported(1234)),
            VcpuExit::Unsupported(1234)
        ));
    }

    #[test]
    fn too_many_msrs_is_invalid_argument() {
        let entries = vec![MsrEntry::default(); KVM_MAX_MSR_ENTRIES + 1];
        assert!(matches!(
            msrs_from(&entries),
            Err(Error::InvalidArgument(_))
        ));
        let msrs = msrs_from(&[MsrEntry {
            index: 0x174,
            data: 0x10,
        }])
        .unwrap();
        assert_eq!(msrs.as_slice().len(), 1);
        assert_eq!(msrs.as_slice()[0].index, 0x174);
        assert_eq!(msrs.as_slice()[0].data, 0x10);
    }
}
