//! Per-vCPU boot state: MSRs, local APIC, and [`configure_vcpu`], which
//! sets everything a vCPU needs before its first run.

use log::warn;
use vm_memory::GuestMemoryBackend;
use vmkit_hypervisor::{CpuIdEntry, MsrEntry, Vcpu};

use crate::cpuid::setup_cpuid;
use crate::loader::{BootProtocol, KernelEntry};
use crate::regs::{setup_fpu, setup_pvh_regs, setup_pvh_sregs, setup_regs, setup_sregs};
use crate::{Error, Result};

/// `IA32_TIME_STAMP_COUNTER`.
pub const MSR_IA32_TSC: u32 = 0x10;
/// `IA32_SYSENTER_CS`.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// `IA32_SYSENTER_ESP`.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// `IA32_SYSENTER_EIP`.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// `IA32_MISC_ENABLE`.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// `IA32_MTRR_DEF_TYPE`.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// `IA32_STAR`: SYSCALL/SYSRET segment selectors.
pub const MSR_STAR: u32 = 0xc000_0081;
/// `IA32_LSTAR`: 64-bit SYSCALL target.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// `IA32_CSTAR`: compatibility mode SYSCALL target.
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// `IA32_FMASK`: SYSCALL RFLAGS mask.
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// `IA32_KERNEL_GS_BASE`: the GS base `SWAPGS` swaps in.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// `IA32_MISC_ENABLE`: fast string operations enabled.
pub const MISC_ENABLE_FAST_STRING: u64 = 1 << 0;
/// `IA32_MTRR_DEF_TYPE`: MTRRs enabled, default type write-back.
pub const MTRR_DEF_TYPE_ENABLED_WB: u64 = (1 << 11) | 6;

/// Local APIC register offset of LVT LINT0.
pub const APIC_LVT_LINT0: usize = 0x350;
/// Local APIC register offset of LVT LINT1.
pub const APIC_LVT_LINT1: usize = 0x360;
/// LVT delivery mode NMI.
pub const APIC_MODE_NMI: u32 = 0x4;
/// LVT delivery mode ExtINT.
pub const APIC_MODE_EXTINT: u32 = 0x7;

/// One boot MSR: index, name, value, and whether boot fails without it.
struct BootMsr {
    index: u32,
    name: &'static str,
    data: u64,
    required: bool,
}

/// The MSRs every vCPU starts with (those Firecracker sets). The SYSCALL
/// and SYSENTER MSRs are architectural on every x86_64 processor and are
/// required; the TSC, MISC_ENABLE and the MTRR default type are best
/// effort, since some hypervisors refuse some MSR writes.
const BOOT_MSRS: &[BootMsr] = &[
    BootMsr {
        index: MSR_IA32_SYSENTER_CS,
        name: "IA32_SYSENTER_CS",
        data: 0,
        required: true,
    },
    BootMsr {
        index: MSR_IA32_SYSENTER_ESP,
        name: "IA32_SYSENTER_ESP",
        data: 0,
        required: true,
    },
    BootMsr {
        index: MSR_IA32_SYSENTER_EIP,
        name: "IA32_SYSENTER_EIP",
        data: 0,
        required: true,
    },
    BootMsr {
        index: MSR_STAR,
        name: "IA32_STAR",
        data: 0,
        required: true,
    },
    BootMsr {
        index: MSR_CSTAR,
        name: "IA32_CSTAR",
        data: 0,
        required: true,
    },
    BootMsr {
        index: MSR_KERNEL_GS_BASE,
        name: "IA32_KERNEL_GS_BASE",
        data: 0,
        required: true,
    },
    BootMsr {
        index: MSR_SYSCALL_MASK,
        name: "IA32_FMASK",
        data: 0,
        required: true,
    },
    BootMsr {
        index: MSR_LSTAR,
        name: "IA32_LSTAR",
        data: 0,
        required: true,
    },
    BootMsr {
        index: MSR_IA32_TSC,
        name: "IA32_TIME_STAMP_COUNTER",
        data: 0,
        required: false,
    },
    BootMsr {
        index: MSR_IA32_MISC_ENABLE,
        name: "IA32_MISC_ENABLE",
        data: MISC_ENABLE_FAST_STRING,
        required: false,
    },
    BootMsr {
        index: MSR_MTRR_DEF_TYPE,
        name: "IA32_MTRR_DEF_TYPE",
        data: MTRR_DEF_TYPE_ENABLED_WB,
        required: false,
    },
];

/// The MSR values [`setup_msrs`] writes, in order.
pub fn boot_msr_entries() -> Vec<MsrEntry> {
    BOOT_MSRS
        .iter()
        .map(|m| MsrEntry {
            index: m.index,
            data: m.data,
        })
        .collect()
}

/// Writes the boot MSRs (see [`boot_msr_entries`]).
///
/// `Vcpu::set_msrs` stops at the first MSR the hypervisor refuses; this
/// function logs a refused optional MSR with `log::warn!`, skips it and
/// writes the rest. A refused required MSR (SYSENTER, SYSCALL, kernel GS
/// base) is an error. Returns how many MSRs were written.
pub fn setup_msrs(vcpu: &dyn Vcpu) -> Result<usize> {
    let entries = boot_msr_entries();
    let mut pos = 0;
    let mut written = 0;
    while pos < entries.len() {
        let n = vcpu
            .set_msrs(&entries[pos..])
            .map_err(|source| Error::Vcpu {
                op: "set the MSRs",
                source,
            })?;
        // Never trust a count beyond what was asked.
        let n = n.min(entries.len() - pos);
        written += n;
        pos += n;
        if let Some(msr) = BOOT_MSRS.get(pos) {
            if msr.required {
                return Err(Error::MsrRefused {
                    index: msr.index,
                    name: msr.name,
                });
            }
            warn!(
                "the hypervisor refused MSR {:#x} ({} = {:#x}); continuing without it",
                msr.index, msr.name, msr.data
            );
            pos += 1;
        }
    }
    Ok(written)
}

/// Sets `reg`'s LVT delivery mode (bits 10:8) to `mode`.
fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Programs the local APIC's LVT LINT0 for ExtINT delivery (the 8259 PIC's
/// output, virtual wire mode) and LINT1 for NMI delivery, as the MP
/// specification's default configuration and Firecracker do.
pub fn setup_lapic(vcpu: &dyn Vcpu) -> Result<()> {
    let mut lapic = vcpu.lapic().map_err(|source| Error::Vcpu {
        op: "read the local APIC",
        source,
    })?;
    for (offset, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        // The offsets are constants inside the 1 KiB register page.
        let reg = lapic.reg(offset).unwrap_or(0);
        lapic.set_reg(offset, with_delivery_mode(reg, mode));
    }
    vcpu.set_lapic(&lapic).map_err(|source| Error::Vcpu {
        op: "set the local APIC",
        source,
    })
}

/// Prepares vCPU `cpu_index` of `num_cpus` for its first run.
///
/// Every vCPU gets its CPUID (built from `supported_cpuid`, the
/// hypervisor's `supported_cpuid()`), the boot MSRs, the FPU state and its
/// local APIC LINT0/LINT1 set-up. The boot vCPU (`kernel` = `Some`, the
/// loaded kernel) also gets its registers and special registers for the
/// kernel's boot protocol: long mode at `kernel.entry` for the 64-bit boot
/// protocol (which writes the boot GDT, IDT and page tables to `mem`),
/// 32-bit protected mode for PVH. Application processors (`kernel` =
/// `None`) keep their
/// reset state: with the in-kernel irqchip, KVM holds every vCPU other
/// than vCPU 0 in wait-for-SIPI, and the guest starts them with INIT/SIPI.
///
/// The vCPU must have been created with the in-kernel irqchip in place
/// (its local APIC is read and written).
pub fn configure_vcpu<M: GuestMemoryBackend>(
    vcpu: &dyn Vcpu,
    mem: &M,
    cpu_index: u8,
    num_cpus: u8,
    supported_cpuid: &[CpuIdEntry],
    kernel: Option<&KernelEntry>,
) -> Result<()> {
    setup_cpuid(vcpu, supported_cpuid, cpu_index, num_cpus)?;
    setup_msrs(vcpu)?;
    setup_fpu(vcpu)?;
    setup_lapic(vcpu)?;
    match kernel {
        Some(k) if k.protocol == BootProtocol::Pvh => {
            setup_pvh_regs(vcpu, k.entry)?;
            setup_pvh_sregs(mem, vcpu)?;
        }
        Some(k) => {
            setup_regs(vcpu, k.entry)?;
            setup_sregs(mem, vcpu)?;
        }
        None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuid::tests::supported_intel;
    use crate::test_vcpu::TestVcpu;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    fn msr(vcpu: &TestVcpu, index: u32) -> Option<u64> {
        vcpu.state()
            .msrs
            .iter()
            .find(|m| m.index == index)
            .map(|m| m.data)
    }

    #[test]
    fn writes_every_boot_msr() {
        let vcpu = TestVcpu::default();
        assert_eq!(setup_msrs(&vcpu).unwrap(), BOOT_MSRS.len());
        for index in [0x174, 0x175, 0x176, 0xc000_0081, 0xc000_0082, 0xc000_0083] {
            assert_eq!(msr(&vcpu, index), Some(0), "{index:#x}");
        }
        assert_eq!(msr(&vcpu, 0xc000_0084), Some(0));
        assert_eq!(msr(&vcpu, 0xc000_0102), Some(0));
        assert_eq!(msr(&vcpu, 0x10), Some(0));
        assert_eq!(msr(&vcpu, 0x1a0), Some(1), "FAST_STRING");
        assert_eq!(msr(&vcpu, 0x2ff), Some(0x806));
        assert_eq!(
            vcpu.state().calls,
            ["set_msrs"],
            "one call when all are accepted"
        );
    }

    #[test]
    fn refused_optional_msrs_are_skipped() {
        let vcpu = TestVcpu::default();
        vcpu.state_mut().refused_msrs = vec![MSR_IA32_TSC, MSR_IA32_MISC_ENABLE];
        assert_eq!(setup_msrs(&vcpu).unwrap(), BOOT_MSRS.len() - 2);
        assert_eq!(msr(&vcpu, MSR_IA32_TSC), None);
        assert_eq!(msr(&vcpu, MSR_IA32_MISC_ENABLE), None);
        // The one after the refused ones was still written.
        assert_eq!(msr(&vcpu, MSR_MTRR_DEF_TYPE), Some(0x806));
    }

    #[test]
    fn refused_required_msr_is_an_error() {
        let vcpu = TestVcpu::default();
        vcpu.state_mut().refused_msrs = vec![MSR_LSTAR];
        let err = setup_msrs(&vcpu).unwrap_err();
        assert!(
            matches!(
                err,
                Error::MsrRefused {
                    index: 0xc000_0082,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("IA32_LSTAR"));
    }

    #[test]
    fn lapic_lint0_extint_lint1_nmi() {
        let vcpu = TestVcpu::default();
        {
            let mut s = vcpu.state_mut();
            // Reset values: masked, fixed mode; keep the mask and other bits.
            s.lapic.set_reg(APIC_LVT_LINT0, 0x0001_0000);
            s.lapic.set_reg(APIC_LVT_LINT1, 0x0001_0400);
            s.lapic.set_reg(0x20, 0x0300_0000);
        }
        setup_lapic(&vcpu).unwrap();
        let s = vcpu.state();
        assert_eq!(s.lapic.reg(APIC_LVT_LINT0), Some(0x0001_0700));
        assert_eq!(s.lapic.reg(APIC_LVT_LINT1), Some(0x0001_0400));
        assert_eq!(s.lapic.reg(0x20), Some(0x0300_0000), "APIC ID untouched");
    }

    #[test]
    fn boot_cpu_gets_registers_aps_do_not() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let bsp = TestVcpu::default();
        let kernel = KernelEntry {
            entry: GuestAddress(0x10_0000),
            protocol: BootProtocol::Linux64,
            start: GuestAddress(0x10_0000),
            end: GuestAddress(0x10_1000),
        };
        configure_vcpu(&bsp, &mem, 0, 2, &supported_intel(), Some(&kernel)).unwrap();
        let s = bsp.state();
        for call in [
            "set_cpuid",
            "set_msrs",
            "set_fpu",
            "set_lapic",
            "set_regs",
            "set_sregs",
        ] {
            assert!(
                s.calls.contains(&call),
                "BSP: {call} missing from {:?}",
                s.calls
            );
        }
        assert_eq!(s.regs.rip, 0x10_0000);
        assert_eq!(s.sregs.cr3, 0x9000);

        let ap = TestVcpu::default();
        configure_vcpu(&ap, &mem, 1, 2, &supported_intel(), None).unwrap();
        let s = ap.state();
        for call in ["set_cpuid", "set_msrs", "set_fpu", "set_lapic"] {
            assert!(
                s.calls.contains(&call),
                "AP: {call} missing from {:?}",
                s.calls
            );
        }
        assert!(!s.calls.contains(&"set_regs") && !s.calls.contains(&"set_sregs"));
        let cpuid = s.cpuid.as_ref().unwrap();
        let leaf1 = cpuid.iter().find(|e| e.function == 1).unwrap();
        assert_eq!(leaf1.ebx >> 24, 1, "AP's APIC ID");
    }

    #[test]
    fn pvh_kernel_starts_in_protected_mode() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let bsp = TestVcpu::default();
        let kernel = KernelEntry {
            entry: GuestAddress(0x10_0040),
            protocol: BootProtocol::Pvh,
            start: GuestAddress(0x10_0000),
            end: GuestAddress(0x10_1000),
        };
        configure_vcpu(&bsp, &mem, 0, 1, &supported_intel(), Some(&kernel)).unwrap();
        let s = bsp.state();
        assert_eq!((s.regs.rip, s.regs.rbx), (0x10_0040, 0xf000));
        assert_eq!((s.sregs.cr0, s.sregs.efer, s.sregs.cs.l), (0x11, 0, 0));
    }

    #[test]
    fn bad_cpu_index_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vcpu = TestVcpu::default();
        let err = configure_vcpu(&vcpu, &mem, 2, 2, &supported_intel(), None).unwrap_err();
        assert!(matches!(err, Error::InvalidCpuIndex { .. }));
        assert!(vcpu.state().calls.is_empty(), "nothing set on error");
    }
}
