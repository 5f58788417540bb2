//! x86_64 vCPU state, in the hypervisor crate's own types.
//!
//! The layouts follow the KVM API (`struct kvm_regs`, `kvm_sregs`, `kvm_fpu`,
//! `kvm_lapic_state`, `kvm_cpuid_entry2`, `kvm_msr_entry`) field by field, so
//! the KVM backend converts them without loss, but they are plain Rust
//! structs that any backend or test double can produce.

/// General purpose registers, RIP and RFLAGS.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// A segment register with its hidden (descriptor cache) part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Base address.
    pub base: u64,
    /// Limit, in bytes (already scaled by the granularity bit).
    pub limit: u32,
    /// Selector.
    pub selector: u16,
    /// Type field (4 bits).
    pub type_: u8,
    /// Present bit.
    pub present: u8,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// Default operation size (D/B bit).
    pub db: u8,
    /// Descriptor type: 1 for code/data, 0 for system segments.
    pub s: u8,
    /// 64-bit code segment (L bit).
    pub l: u8,
    /// Granularity bit.
    pub g: u8,
    /// Available for system software (AVL bit).
    pub avl: u8,
    /// Marks an unusable segment.
    pub unusable: u8,
}

/// A descriptor table register (GDTR or IDTR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DescriptorTable {
    /// Linear base address.
    pub base: u64,
    /// Limit (size in bytes minus one).
    pub limit: u16,
}

/// Segment, control and descriptor table registers.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecialRegs {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
    /// Pending external interrupts, one bit per vector.
    pub interrupt_bitmap: [u64; 4],
}

/// x87 FPU and SSE state (the `FXSAVE` image's architectural fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FpuState {
    /// x87 data registers ST0-ST7, 16 bytes each (80 bits used).
    pub fpr: [[u8; 16]; 8],
    /// x87 control word.
    pub fcw: u16,
    /// x87 status word.
    pub fsw: u16,
    /// Abridged x87 tag word.
    pub ftwx: u8,
    /// Last x87 opcode.
    pub last_opcode: u16,
    /// Last x87 instruction pointer.
    pub last_ip: u64,
    /// Last x87 data pointer.
    pub last_dp: u64,
    /// XMM0-XMM15.
    pub xmm: [[u8; 16]; 16],
    /// SSE control and status register.
    pub mxcsr: u32,
}

/// The local APIC's register page (`KVM_GET_LAPIC` layout: 1 KiB, each
/// 32-bit register at its architectural offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LapicState {
    /// Raw register bytes.
    pub regs: [u8; 1024],
}

impl Default for LapicState {
    fn default() -> Self {
        LapicState { regs: [0; 1024] }
    }
}

impl LapicState {
    /// Reads the 32-bit register at `offset` (e.g. 0x350 for LVT LINT0).
    ///
    /// Returns `None` when `offset + 4` is past the register page.
    pub fn reg(&self, offset: usize) -> Option<u32> {
        let b = self.regs.get(offset..offset.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Writes the 32-bit register at `offset`.
    ///
    /// Returns `false` (and changes nothing) when `offset + 4` is past the
    /// register page.
    pub fn set_reg(&mut self, offset: usize, value: u32) -> bool {
        match offset
            .checked_add(4)
            .and_then(|end| self.regs.get_mut(offset..end))
        {
            Some(b) => {
                b.copy_from_slice(&value.to_le_bytes());
                true
            }
            None => false,
        }
    }
}

/// One CPUID leaf/subleaf (`kvm_cpuid_entry2`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuIdEntry {
    /// Leaf (EAX input).
    pub function: u32,
    /// Subleaf (ECX input), meaningful when `flags` says so.
    pub index: u32,
    /// `KVM_CPUID_FLAG_*` bits (bit 0: the index is significant).
    pub flags: u32,
    /// Output EAX.
    pub eax: u32,
    /// Output EBX.
    pub ebx: u32,
    /// Output ECX.
    pub ecx: u32,
    /// Output EDX.
    pub edx: u32,
}

impl CpuIdEntry {
    /// `flags` bit telling that `index` is significant.
    pub const FLAG_SIGNIFICANT_INDEX: u32 = 1;
}

/// One model-specific register and its value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsrEntry {
    /// MSR index.
    pub index: u32,
    /// Value.
    pub data: u64,
}
