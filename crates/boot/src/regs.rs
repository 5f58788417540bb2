//! Registers of the boot vCPU for the Linux 64-bit boot protocol and for
//! PVH.
//!
//! The 64-bit boot protocol (Documentation/arch/x86/boot.rst, "64-bit Boot
//! Protocol") enters the kernel in long mode with paging on, the page
//! tables identity-mapping the loaded kernel, zero page and command line,
//! a GDT with `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18), interrupts off and
//! `%rsi` holding the address of `struct boot_params`.
//!
//! PVH (Xen's docs/misc/pvh.pandoc, "x86/HVM direct boot ABI") enters in
//! 32-bit protected mode with paging off: CS a flat 32-bit code segment, DS,
//! ES and SS flat 32-bit data segments, TR a 32-bit TSS (base 0, limit
//! 0x67), CR0 = PE (| ET), CR4 = 0, EFER = 0, EFLAGS with IF, TF and VM
//! clear, and `%ebx` holding the address of `struct hvm_start_info`.

use vm_memory::{Address, GuestAddress, GuestMemoryBackend};
use vmkit_hypervisor::{FpuState, Regs, Segment, Vcpu};

use crate::gdt::{
    CODE32_INDEX, CODE64_INDEX, DATA_INDEX, TSS32_BUSY_FLAGS, TSS64_BUSY_FLAGS, boot_gdt,
    boot_gdtr, boot_idtr, gdt_entry, segment_from_gdt, write_gdt_idt,
};
use crate::layout::{BOOT_STACK_POINTER, PML4_START, PVH_INFO_START, ZERO_PAGE_START};
use crate::paging::setup_page_tables;
use crate::{Error, Result};

/// CR0: protected mode enable.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0: monitor coprocessor.
pub const X86_CR0_MP: u64 = 1 << 1;
/// CR0: extension type (always 1).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0: native x87 error reporting.
pub const X86_CR0_NE: u64 = 1 << 5;
/// CR0: supervisor writes honour read-only pages.
pub const X86_CR0_WP: u64 = 1 << 16;
/// CR0: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension (required for long mode).
pub const X86_CR4_PAE: u64 = 1 << 5;
/// CR4: the OS supports FXSAVE/FXRSTOR (enables SSE).
pub const X86_CR4_OSFXSR: u64 = 1 << 9;
/// CR4: the OS handles SIMD floating point exceptions.
pub const X86_CR4_OSXMMEXCPT: u64 = 1 << 10;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;

/// CR0 of the boot vCPU. CD and NW (set at reset) are cleared: caches on.
pub const BOOT_CR0: u64 =
    X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_WP | X86_CR0_PG;
/// CR4 of the boot vCPU.
pub const BOOT_CR4: u64 = X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
/// EFER of the boot vCPU.
pub const BOOT_EFER: u64 = EFER_LME | EFER_LMA;
/// CR0 at the PVH entry: protected mode, paging off.
pub const PVH_CR0: u64 = X86_CR0_PE | X86_CR0_ET;
/// Limit of the 32-bit TSS TR describes at the PVH entry.
pub const PVH_TSS_LIMIT: u32 = 0x67;
/// RFLAGS of the boot vCPU: only the always-one bit 1 (interrupts off).
pub const BOOT_RFLAGS: u64 = 0x2;
/// x87 control word after `FNINIT`.
pub const BOOT_FCW: u16 = 0x37f;
/// MXCSR at reset: all SIMD exceptions masked.
pub const BOOT_MXCSR: u32 = 0x1f80;

/// Sets the general purpose registers of the boot vCPU: `RIP = entry`,
/// `RSI = ZERO_PAGE_START` (the boot protocol's `boot_params` pointer),
/// `RSP = RBP = BOOT_STACK_POINTER`, `RFLAGS = 0x2`, everything else 0.
pub fn setup_regs(vcpu: &dyn Vcpu, entry: GuestAddress) -> Result<()> {
    let regs = Regs {
        rip: entry.raw_value(),
        rsi: ZERO_PAGE_START,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rflags: BOOT_RFLAGS,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(|source| Error::Vcpu {
        op: "set the general purpose registers",
        source,
    })
}

/// Sets the general purpose registers of the boot vCPU for the PVH entry:
/// `RIP = entry`, `RBX = PVH_INFO_START` (the `hvm_start_info`),
/// `RFLAGS = 0x2`, everything else 0 except `RSP = BOOT_STACK_POINTER`
/// (not part of the ABI, which gives no stack: a convenience).
pub fn setup_pvh_regs(vcpu: &dyn Vcpu, entry: GuestAddress) -> Result<()> {
    let regs = Regs {
        rip: entry.raw_value(),
        rbx: PVH_INFO_START,
        rsp: BOOT_STACK_POINTER,
        rflags: BOOT_RFLAGS,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(|source| Error::Vcpu {
        op: "set the general purpose registers",
        source,
    })
}

/// Writes the boot GDT and IDT to guest memory and puts the vCPU in 32-bit
/// protected mode with paging off, as the PVH ABI says: CS = 0x08 (flat
/// 32-bit code), DS, ES, FS, GS, SS = 0x18 (flat data), TR a busy 32-bit
/// TSS of limit 0x67, CR0 = PE|ET, CR3 = 0, CR4 = 0, EFER = 0.
pub fn setup_pvh_sregs<M: GuestMemoryBackend>(mem: &M, vcpu: &dyn Vcpu) -> Result<()> {
    write_gdt_idt(mem)?;
    let mut sregs = vcpu.sregs().map_err(|source| Error::Vcpu {
        op: "read the special registers",
        source,
    })?;
    let gdt = boot_gdt();
    let code = segment_from_gdt(gdt[usize::from(CODE32_INDEX)], CODE32_INDEX);
    let data = segment_from_gdt(gdt[usize::from(DATA_INDEX)], DATA_INDEX);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt_entry(TSS32_BUSY_FLAGS, 0, PVH_TSS_LIMIT), 0);
    sregs.gdt = boot_gdtr();
    sregs.idt = boot_idtr();
    sregs.cr0 = PVH_CR0;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs).map_err(|source| Error::Vcpu {
        op: "set the special registers",
        source,
    })
}

/// The hidden state of TR: a busy 64-bit TSS (base 0).
///
/// The boot GDT's four slots are fixed (null, unused, `__BOOT_CS`,
/// `__BOOT_DS`) and hold no TSS descriptor, so TR keeps selector 0, as
/// after a KVM vCPU reset; its cached descriptor is a busy 64-bit TSS
/// because VM entry in IA-32e mode requires that type. A guest that takes
/// interrupts from CPL3 loads its own TSS (with `RSP0`) with `ltr`.
fn boot_tr() -> Segment {
    segment_from_gdt(gdt_entry(TSS64_BUSY_FLAGS, 0, 0xfffff), 0)
}

/// Writes the boot GDT, IDT and page tables to guest memory and puts the
/// vCPU in 64-bit long mode on them: CS = 0x10 (64-bit code), DS, ES, FS,
/// GS, SS = 0x18, TR a busy 64-bit TSS, CR0 = PE|MP|ET|NE|WP|PG,
/// CR3 = `PML4_START`, CR4 = PAE|OSFXSR|OSXMMEXCPT, EFER = LME|LMA.
///
/// The vCPU's other special registers (APIC base, LDT, interrupt bitmap)
/// are read back from the hypervisor and kept.
pub fn setup_sregs<M: GuestMemoryBackend>(mem: &M, vcpu: &dyn Vcpu) -> Result<()> {
    write_gdt_idt(mem)?;
    setup_page_tables(mem)?;

    let mut sregs = vcpu.sregs().map_err(|source| Error::Vcpu {
        op: "read the special registers",
        source,
    })?;
    let gdt = boot_gdt();
    let code = segment_from_gdt(gdt[usize::from(CODE64_INDEX)], CODE64_INDEX);
    let data = segment_from_gdt(gdt[usize::from(DATA_INDEX)], DATA_INDEX);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = boot_tr();
    sregs.gdt = boot_gdtr();
    sregs.idt = boot_idtr();
    sregs.cr0 = BOOT_CR0;
    sregs.cr3 = PML4_START;
    sregs.cr4 = BOOT_CR4;
    sregs.efer = BOOT_EFER;
    vcpu.set_sregs(&sregs).map_err(|source| Error::Vcpu {
        op: "set the special registers",
        source,
    })
}

/// Sets the x87/SSE state: control word 0x37f, MXCSR 0x1f80, registers 0.
pub fn setup_fpu(vcpu: &dyn Vcpu) -> Result<()> {
    let fpu = FpuState {
        fcw: BOOT_FCW,
        mxcsr: BOOT_MXCSR,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|source| Error::Vcpu {
        op: "set the FPU state",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_vcpu::TestVcpu;
    use vm_memory::{Bytes, GuestMemoryMmap};
    use vmkit_hypervisor::SpecialRegs;

    #[test]
    fn regs_follow_the_64bit_boot_protocol() {
        let vcpu = TestVcpu::default();
        setup_regs(&vcpu, GuestAddress(0x100_0000)).unwrap();
        let r = vcpu.state().regs;
        assert_eq!(r.rip, 0x100_0000);
        assert_eq!(r.rsi, 0x7000);
        assert_eq!((r.rsp, r.rbp), (0x6ff0, 0x6ff0));
        assert_eq!(r.rflags, 0x2);
        assert_eq!((r.rax, r.rbx, r.rdi), (0, 0, 0));
    }

    #[test]
    fn sregs_enter_long_mode_and_write_tables() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vcpu = TestVcpu::default();
        vcpu.state_mut().sregs = SpecialRegs {
            apic_base: 0xfee0_0900,
            cr0: 0x6000_0010,
            ..Default::default()
        };
        setup_sregs(&mem, &vcpu).unwrap();
        let s = vcpu.state().sregs;

        assert_eq!(s.cs.selector, 0x10);
        assert_eq!((s.cs.l, s.cs.db, s.cs.type_, s.cs.present), (1, 0, 0xb, 1));
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!(seg.selector, 0x18);
            assert_eq!((seg.type_, seg.s, seg.present, seg.db), (3, 1, 1, 1));
            assert_eq!(seg.limit, 0xffff_ffff);
        }
        assert_eq!(
            (s.tr.type_, s.tr.s, s.tr.present, s.tr.unusable),
            (0xb, 0, 1, 0)
        );
        assert_eq!((s.gdt.base, s.gdt.limit), (0x500, 31));
        assert_eq!((s.idt.base, s.idt.limit), (0x520, 7));
        assert_eq!(s.cr0, 0x8001_0033, "PE|MP|ET|NE|WP|PG, CD/NW cleared");
        assert_eq!(s.cr3, 0x9000);
        assert_eq!(s.cr4, 0x620, "PAE|OSFXSR|OSXMMEXCPT");
        assert_eq!(s.efer, 0x500, "LME|LMA");
        assert_eq!(s.apic_base, 0xfee0_0900, "kept from the vCPU");

        // The segments' hidden state matches the descriptors in memory.
        let cs_desc: u64 = mem.read_obj(GuestAddress(s.gdt.base + 0x10)).unwrap();
        let ds_desc: u64 = mem.read_obj(GuestAddress(s.gdt.base + 0x18)).unwrap();
        assert_eq!(segment_from_gdt(cs_desc, 2), s.cs);
        assert_eq!(segment_from_gdt(ds_desc, 3), s.ds);
        let pml4: u64 = mem.read_obj(GuestAddress(s.cr3)).unwrap();
        assert_eq!(pml4, 0xa007);
    }

    #[test]
    fn pvh_entry_state_follows_the_pvh_abi() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vcpu = TestVcpu::default();
        vcpu.state_mut().sregs = SpecialRegs {
            apic_base: 0xfee0_0900,
            cr0: 0x6000_0010,
            efer: 0x500,
            cr4: 0x20,
            ..Default::default()
        };
        setup_pvh_regs(&vcpu, GuestAddress(0x100_1000)).unwrap();
        setup_pvh_sregs(&mem, &vcpu).unwrap();
        let r = vcpu.state().regs;
        assert_eq!(r.rip, 0x100_1000);
        assert_eq!(r.rbx, 0xf000, "EBX = hvm_start_info");
        assert_eq!(
            r.rflags & (1 << 9 | 1 << 8 | 1 << 17),
            0,
            "IF, TF, VM clear"
        );
        let s = vcpu.state().sregs;
        assert_eq!(s.cr0, 0x11, "PE|ET, paging off");
        assert_eq!((s.cr3, s.cr4, s.efer), (0, 0, 0));
        // CS: flat 32-bit code.
        assert_eq!(
            (s.cs.base, s.cs.limit, s.cs.db, s.cs.l, s.cs.type_, s.cs.s),
            (0, 0xffff_ffff, 1, 0, 0xb, 1)
        );
        // DS, ES, SS: flat 32-bit read/write data.
        for seg in [s.ds, s.es, s.ss] {
            assert_eq!(
                (seg.base, seg.limit, seg.db, seg.type_ & 0xa, seg.present),
                (0, 0xffff_ffff, 1, 0x2, 1)
            );
        }
        assert_eq!(
            (s.tr.base, s.tr.limit, s.tr.type_, s.tr.s, s.tr.present),
            (0, 0x67, 0xb, 0, 1),
            "a busy 32-bit TSS"
        );
        assert_eq!(s.apic_base, 0xfee0_0900, "kept from the vCPU");
        // CS's hidden state is the descriptor at its selector in the GDT.
        let desc: u64 = mem
            .read_obj(GuestAddress(s.gdt.base + u64::from(s.cs.selector)))
            .unwrap();
        assert_eq!(segment_from_gdt(desc, 1), s.cs);
        assert_eq!(s.cs.selector, 0x08);
    }

    #[test]
    fn fpu_state() {
        let vcpu = TestVcpu::default();
        setup_fpu(&vcpu).unwrap();
        let f = vcpu.state().fpu;
        assert_eq!((f.fcw, f.mxcsr, f.fsw), (0x37f, 0x1f80, 0));
    }

    #[test]
    fn hypervisor_errors_are_reported() {
        let vcpu = TestVcpu::default();
        vcpu.state_mut().fail = true;
        let err = setup_regs(&vcpu, GuestAddress(0)).unwrap_err();
        assert!(
            err.to_string().contains("general purpose registers"),
            "{err}"
        );
    }
}
