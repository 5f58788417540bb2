//! Lossless conversions between this crate's register types and the KVM
//! structures of `kvm-bindings`.
//!
//! Every conversion exists in both directions and copies every
//! architectural field; the only fields dropped are KVM's padding, which
//! is zero on the way in. The round-trip unit tests below check that no
//! field is lost or swapped.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_dtable, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment,
    kvm_sregs,
};

use crate::{
    CpuIdEntry, DescriptorTable, FpuState, LapicState, MsrEntry, Regs, Segment, SpecialRegs,
};

impl From<kvm_regs> for Regs {
    fn from(r: kvm_regs) -> Self {
        Regs {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        }
    }
}

impl From<Regs> for kvm_regs {
    fn from(r: Regs) -> Self {
        kvm_regs {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        }
    }
}

impl From<kvm_segment> for Segment {
    fn from(s: kvm_segment) -> Self {
        Segment {
            base: s.base,
            limit: s.limit,
            selector: s.selector,
            type_: s.type_,
            present: s.present,
            dpl: s.dpl,
            db: s.db,
            s: s.s,
            l: s.l,
            g: s.g,
            avl: s.avl,
            unusable: s.unusable,
        }
    }
}

impl From<Segment> for kvm_segment {
    fn from(s: Segment) -> Self {
        kvm_segment {
            base: s.base,
            limit: s.limit,
            selector: s.selector,
            type_: s.type_,
            present: s.present,
            dpl: s.dpl,
            db: s.db,
            s: s.s,
            l: s.l,
            g: s.g,
            avl: s.avl,
            unusable: s.unusable,
            padding: 0,
        }
    }
}

impl From<kvm_dtable> for DescriptorTable {
    fn from(d: kvm_dtable) -> Self {
        DescriptorTable {
            base: d.base,
            limit: d.limit,
        }
    }
}

impl From<DescriptorTable> for kvm_dtable {
    fn from(d: DescriptorTable) -> Self {
        kvm_dtable {
            base: d.base,
            limit: d.limit,
            padding: [0; 3],
        }
    }
}

impl From<kvm_sregs> for SpecialRegs {
    fn from(s: kvm_sregs) -> Self {
        SpecialRegs {
            cs: s.cs.into(),
            ds: s.ds.into(),
            es: s.es.into(),
            fs: s.fs.into(),
            gs: s.gs.into(),
            ss: s.ss.into(),
            tr: s.tr.into(),
            ldt: s.ldt.into(),
            gdt: s.gdt.into(),
            idt: s.idt.into(),
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
            interrupt_bitmap: s.interrupt_bitmap,
        }
    }
}

impl From<SpecialRegs> for kvm_sregs {
    fn from(s: SpecialRegs) -> Self {
        kvm_sregs {
            cs: s.cs.into(),
            ds: s.ds.into(),
            es: s.es.into(),
            fs: s.fs.into(),
            gs: s.gs.into(),
            ss: s.ss.into(),
            tr: s.tr.into(),
            ldt: s.ldt.into(),
            gdt: s.gdt.into(),
            idt: s.idt.into(),
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
            interrupt_bitmap: s.interrupt_bitmap,
        }
    }
}

impl From<kvm_fpu> for FpuState {
    fn from(f: kvm_fpu) -> Self {
        FpuState {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<FpuState> for kvm_fpu {
    fn from(f: FpuState) -> Self {
        kvm_fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            pad1: 0,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            pad2: 0,
        }
    }
}

impl From<kvm_lapic_state> for LapicState {
    fn from(l: kvm_lapic_state) -> Self {
        // `c_char` is `i8` on x86_64; `as u8` reinterprets the bits.
        LapicState {
            regs: l.regs.map(|b| b as u8),
        }
    }
}

impl From<LapicState> for kvm_lapic_state {
    fn from(l: LapicState) -> Self {
        // Reinterprets each byte's bits as `c_char`, the inverse of the above.
        kvm_lapic_state {
            regs: l.regs.map(|b| b as std::os::raw::c_char),
        }
    }
}

impl From<kvm_cpuid_entry2> for CpuIdEntry {
    fn from(e: kvm_cpuid_entry2) -> Self {
        CpuIdEntry {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        }
    }
}

impl From<CpuIdEntry> for kvm_cpuid_entry2 {
    fn from(e: CpuIdEntry) -> Self {
        kvm_cpuid_entry2 {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
            padding: [0; 3],
        }
    }
}

impl From<kvm_msr_entry> for MsrEntry {
    fn from(e: kvm_msr_entry) -> Self {
        MsrEntry {
            index: e.index,
            data: e.data,
        }
    }
}

impl From<MsrEntry> for kvm_msr_entry {
    fn from(e: MsrEntry) -> Self {
        kvm_msr_entry {
            index: e.index,
            reserved: 0,
            data: e.data,
        }
    }
}

/// Size of the `u32` region of `struct kvm_xsave`.
pub(super) const XSAVE_REGION_WORDS: usize = 1024;

/// Byte offsets in the FXSAVE legacy area (first 512 bytes of an XSAVE
/// image, 64-bit format) and of XSTATE_BV in the XSAVE header.
mod fxsave {
    pub const FCW: usize = 0;
    pub const FSW: usize = 2;
    pub const FTW: usize = 4;
    pub const FOP: usize = 6;
    pub const FIP: usize = 8;
    pub const FDP: usize = 16;
    pub const MXCSR: usize = 24;
    pub const ST: usize = 32;
    pub const XMM: usize = 160;
    pub const LEGACY_END: usize = 512;
    pub const XSTATE_BV: usize = 512;
    /// XSTATE_BV bits of the x87 and SSE components.
    pub const X87_SSE: u64 = 0b11;
}

/// The first `N` bytes of an XSAVE region, little-endian.
fn region_bytes<const N: usize>(region: &[u32; XSAVE_REGION_WORDS]) -> [u8; N] {
    let mut bytes = [0u8; N];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(region) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    bytes
}

/// Decodes the x87/SSE state from a `kvm_xsave` region.
///
/// `KVM_GET_FPU` does not report MXCSR, so the KVM backend reads the whole
/// FPU state from the XSAVE image instead.
pub(super) fn fpu_from_xsave(region: &[u32; XSAVE_REGION_WORDS]) -> FpuState {
    use fxsave::*;
    let b: [u8; LEGACY_END] = region_bytes(region);
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |o: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(v)
    };
    let mut fpu = FpuState {
        fcw: u16_at(FCW),
        fsw: u16_at(FSW),
        ftwx: b[FTW],
        last_opcode: u16_at(FOP),
        last_ip: u64_at(FIP),
        last_dp: u64_at(FDP),
        mxcsr: u32::from_le_bytes([b[MXCSR], b[MXCSR + 1], b[MXCSR + 2], b[MXCSR + 3]]),
        ..FpuState::default()
    };
    for (i, st) in fpu.fpr.iter_mut().enumerate() {
        st.copy_from_slice(&b[ST + 16 * i..ST + 16 * (i + 1)]);
    }
    for (i, xmm) in fpu.xmm.iter_mut().enumerate() {
        xmm.copy_from_slice(&b[XMM + 16 * i..XMM + 16 * (i + 1)]);
    }
    fpu
}

/// Encodes the x87/SSE state into a `kvm_xsave` region, keeping the other
/// bytes (MXCSR_MASK, reserved fields, other components), and marks the
/// x87 and SSE components as present in XSTATE_BV so that KVM loads them.
pub(super) fn fpu_to_xsave(fpu: &FpuState, region: &mut [u32; XSAVE_REGION_WORDS]) {
    use fxsave::*;
    let mut b: [u8; LEGACY_END + 8] = region_bytes(region);
    b[FCW..FCW + 2].copy_from_slice(&fpu.fcw.to_le_bytes());
    b[FSW..FSW + 2].copy_from_slice(&fpu.fsw.to_le_bytes());
    b[FTW] = fpu.ftwx;
    b[FOP..FOP + 2].copy_from_slice(&fpu.last_opcode.to_le_bytes());
    b[FIP..FIP + 8].copy_from_slice(&fpu.last_ip.to_le_bytes());
    b[FDP..FDP + 8].copy_from_slice(&fpu.last_dp.to_le_bytes());
    b[MXCSR..MXCSR + 4].copy_from_slice(&fpu.mxcsr.to_le_bytes());
    for (i, st) in fpu.fpr.iter().enumerate() {
        b[ST + 16 * i..ST + 16 * (i + 1)].copy_from_slice(st);
    }
    for (i, xmm) in fpu.xmm.iter().enumerate() {
        b[XMM + 16 * i..XMM + 16 * (i + 1)].copy_from_slice(xmm);
    }
    let mut bv = [0u8; 8];
    bv.copy_from_slice(&b[XSTATE_BV..XSTATE_BV + 8]);
    let bv = u64::from_le_bytes(bv) | X87_SSE;
    b[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&bv.to_le_bytes());
    for (word, chunk) in region.iter_mut().zip(b.chunks_exact(4)) {
        *word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fpu_xsave_round_trip_and_layout() {
        let mut fpu = FpuState {
            fcw: 0x037f,
            fsw: 0x3800,
            ftwx: 0x81,
            last_opcode: 0x07ff,
            last_ip: 0x1122_3344_5566_7788,
            last_dp: 0x99aa_bbcc_ddee_ff00,
            mxcsr: 0xff80,
            ..FpuState::default()
        };
        for (i, r) in fpu.fpr.iter_mut().enumerate() {
            *r = [0x10 + i as u8; 16];
        }
        for (i, r) in fpu.xmm.iter_mut().enumerate() {
            *r = [0x80 + i as u8; 16];
        }
        let mut region = [0u32; XSAVE_REGION_WORDS];
        region[7] = 0xffff; // MXCSR_MASK, kept
        region[130] = 0xdead; // past the header's XSTATE_BV, kept
        region[128] = 1 << 2; // XSTATE_BV: AVX already present, kept
        fpu_to_xsave(&fpu, &mut region);
        // Architectural positions (FXSAVE64 layout).
        assert_eq!(region[0], 0x3800_037f, "FSW:FCW");
        assert_eq!(region[1], 0x07ff_0081, "FOP:FTW");
        assert_eq!((region[2], region[3]), (0x5566_7788, 0x1122_3344), "FIP");
        assert_eq!(region[6], 0xff80, "MXCSR");
        assert_eq!(region[7], 0xffff, "MXCSR_MASK untouched");
        assert_eq!(region[8], 0x1010_1010, "ST0");
        assert_eq!(region[40], 0x8080_8080, "XMM0");
        assert_eq!(region[103], 0x8f8f_8f8f, "XMM15");
        assert_eq!(region[128], 0b111, "XSTATE_BV gains x87 and SSE");
        assert_eq!(region[130], 0xdead);
        assert_eq!(fpu_from_xsave(&region), fpu);
    }

    /// A segment whose every field holds a different value.
    fn segment(seed: u8) -> Segment {
        Segment {
            base: 0x1111_2222_3333_4400 | u64::from(seed),
            limit: 0x000f_ff00 | u32::from(seed),
            selector: 0x0100 | u16::from(seed),
            type_: seed.wrapping_add(1) & 0xf,
            present: 1,
            dpl: 3,
            db: 1,
            s: 1,
            l: 0,
            g: 1,
            avl: 1,
            unusable: 0,
        }
    }

    #[test]
    fn regs_round_trip() {
        let regs = Regs {
            rax: 1,
            rbx: 2,
            rcx: 3,
            rdx: 4,
            rsi: 5,
            rdi: 6,
            rsp: 7,
            rbp: 8,
            r8: 9,
            r9: 10,
            r10: 11,
            r11: 12,
            r12: 13,
            r13: 14,
            r14: 15,
            r15: 16,
            rip: 17,
            rflags: 18,
        };
        let k: kvm_regs = regs.into();
        assert_eq!(k.rsp, 7);
        assert_eq!(k.rbp, 8);
        assert_eq!(k.rip, 17);
        assert_eq!(Regs::from(k), regs);
    }

    #[test]
    fn sregs_round_trip() {
        let sregs = SpecialRegs {
            cs: segment(1),
            ds: segment(2),
            es: segment(3),
            fs: segment(4),
            gs: segment(5),
            ss: segment(6),
            tr: segment(7),
            ldt: segment(8),
            gdt: DescriptorTable {
                base: 0x500,
                limit: 0x27,
            },
            idt: DescriptorTable {
                base: 0x600,
                limit: 0xfff,
            },
            cr0: 0x8000_0033,
            cr2: 0xdead,
            cr3: 0x9000,
            cr4: 0x620,
            cr8: 5,
            efer: 0x500,
            apic_base: 0xfee0_0900,
            interrupt_bitmap: [1, 2, 3, 1 << 63],
        };
        let k: kvm_sregs = sregs.into();
        assert_eq!(k.cs.selector, segment(1).selector);
        assert_eq!(k.ss.base, segment(6).base);
        assert_eq!(k.tr.type_, segment(7).type_);
        assert_eq!(k.gdt.limit, 0x27);
        assert_eq!(k.idt.base, 0x600);
        assert_eq!(k.cr3, 0x9000);
        assert_eq!(k.interrupt_bitmap[3], 1 << 63);
        assert_eq!(SpecialRegs::from(k), sregs);
    }

    #[test]
    fn kvm_sregs_round_trip_keeps_every_field() {
        // The other direction: a kvm_sregs with non-zero values survives
        // kvm -> ours -> kvm unchanged (its padding is zero).
        let mut k = kvm_sregs::default();
        k.fs.base = 0x7fff_0000;
        k.fs.unusable = 1;
        k.fs.avl = 1;
        k.gs.l = 1;
        k.efer = 0xd01;
        k.cr8 = 0xf;
        let back: kvm_sregs = SpecialRegs::from(k).into();
        assert_eq!(back, k);
    }

    #[test]
    fn fpu_round_trip() {
        let mut fpu = FpuState {
            fcw: 0x37f,
            fsw: 0x1234,
            ftwx: 0xaa,
            last_opcode: 0x7ff,
            last_ip: 0x1122_3344_5566_7788,
            last_dp: 0x8877_6655_4433_2211,
            mxcsr: 0x1f80,
            ..FpuState::default()
        };
        for (i, r) in fpu.fpr.iter_mut().enumerate() {
            *r = [i as u8 + 1; 16];
        }
        for (i, r) in fpu.xmm.iter_mut().enumerate() {
            *r = [0x40 + i as u8; 16];
        }
        let k: kvm_fpu = fpu.into();
        assert_eq!(k.fcw, 0x37f);
        assert_eq!(k.ftwx, 0xaa);
        assert_eq!(k.xmm[15], [0x4f; 16]);
        assert_eq!(k.fpr[7], [8; 16]);
        assert_eq!(FpuState::from(k), fpu);
    }

    #[test]
    fn lapic_round_trip_keeps_high_bytes() {
        let mut lapic = LapicState::default();
        for (i, b) in lapic.regs.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert!(lapic.set_reg(0x350, 0x0001_0700));
        let k: kvm_lapic_state = lapic.into();
        // 0xff survives as c_char -1 and back.
        assert_eq!(k.regs[0xff] as u8, 0xff);
        let back = LapicState::from(k);
        assert_eq!(back, lapic);
        assert_eq!(back.reg(0x350), Some(0x0001_0700));
    }

    #[test]
    fn cpuid_entry_round_trip() {
        let e = CpuIdEntry {
            function: 7,
            index: 1,
            flags: CpuIdEntry::FLAG_SIGNIFICANT_INDEX,
            eax: 0xa,
            ebx: 0xb,
            ecx: 0xc,
            edx: 0xd,
        };
        let k: kvm_cpuid_entry2 = e.into();
        assert_eq!((k.function, k.index, k.flags), (7, 1, 1));
        assert_eq!((k.eax, k.ebx, k.ecx, k.edx), (0xa, 0xb, 0xc, 0xd));
        assert_eq!(CpuIdEntry::from(k), e);
    }

    #[test]
    fn msr_entry_round_trip() {
        let e = MsrEntry {
            index: 0xc000_0080,
            data: 0xffff_0000_1234_5678,
        };
        let k: kvm_msr_entry = e.into();
        assert_eq!(k.index, 0xc000_0080);
        assert_eq!(k.reserved, 0);
        assert_eq!(k.data, 0xffff_0000_1234_5678);
        assert_eq!(MsrEntry::from(k), e);
    }
}
