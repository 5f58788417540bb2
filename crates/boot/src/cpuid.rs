//! The CPUID a vCPU sees: what the hypervisor supports, plus this VM's
//! topology (one package, one core per vCPU, one thread per core, APIC ID =
//! vCPU index).
//!
//! No feature bit the hypervisor does not report is added, with two
//! exceptions that describe the virtual machine rather than the processor:
//! leaf 1 ECX bit 31 ("running under a hypervisor") and, with more than
//! one vCPU, leaf 1 EDX bit 28 (HTT), which tells the guest that
//! `EBX[23:16]` holds a valid logical processor count.

use vmkit_hypervisor::{CpuIdEntry, Vcpu};

use crate::mptable::MAX_CPUS;
use crate::{Error, Result};

/// Leaf 1 ECX: the guest runs under a hypervisor.
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: `EBX[23:16]` is the number of logical processors.
pub const LEAF1_EDX_HTT: u32 = 1 << 28;
/// CLFLUSH line size in 8-byte units (64 bytes), leaf 1 `EBX[15:8]`.
pub const CLFLUSH_LINE_SIZE: u32 = 8;

/// x2APIC topology level types (leaf 0xB/0x1F `ECX[15:8]`).
const LEVEL_TYPE_INVALID: u32 = 0;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Leaf 0 EBX of AMD processors ("Auth" of "AuthenticAMD") and Hygon
/// processors ("Hygo" of "HygonGenuine").
const VENDOR_AMD_EBX: u32 = u32::from_le_bytes(*b"Auth");
const VENDOR_HYGON_EBX: u32 = u32::from_le_bytes(*b"Hygo");

/// Bits needed to hold an APIC ID below `n` (ceil(log2(n))).
fn id_bits(n: u8) -> u32 {
    match n {
        0 | 1 => 0,
        n => u32::BITS - u32::from(n - 1).leading_zeros(),
    }
}

fn check_cpu(cpu_index: u8, num_cpus: u8) -> Result<()> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(Error::InvalidCpuCount(num_cpus));
    }
    if cpu_index >= num_cpus {
        return Err(Error::InvalidCpuIndex {
            index: cpu_index,
            num_cpus,
        });
    }
    Ok(())
}

fn topology_leaf(function: u32, apic_id: u32, num_cpus: u8) -> [CpuIdEntry; 3] {
    let entry = |index: u32, eax: u32, ebx: u32, level_type: u32| CpuIdEntry {
        function,
        index,
        flags: CpuIdEntry::FLAG_SIGNIFICANT_INDEX,
        eax,
        ebx,
        ecx: index | (level_type << 8),
        edx: apic_id,
    };
    [
        // One thread per core: nothing to shift away to reach the core ID.
        entry(0, 0, 1, LEVEL_TYPE_SMT),
        // All vCPUs are cores of one package.
        entry(1, id_bits(num_cpus), u32::from(num_cpus), LEVEL_TYPE_CORE),
        // Ends the enumeration.
        entry(2, 0, 0, LEVEL_TYPE_INVALID),
    ]
}

/// Builds the CPUID table of vCPU `cpu_index` of `num_cpus` from the
/// hypervisor's `supported` leaves.
///
/// - leaf 1: `EBX[31:24]` initial APIC ID = `cpu_index`, `EBX[23:16]` logical
///   processor count = `num_cpus`, `EBX[15:8]` CLFLUSH size = 64 bytes, ECX
///   bit 31 (hypervisor) set;
/// - leaf 4 (deterministic cache parameters): `EAX[31:26]` cores per package
///   minus one, `EAX[25:14]` logical processors sharing the cache minus one
///   (1 for L1/L2, all vCPUs for L3);
/// - leaves 0xB and 0x1F (x2APIC topology), if reported: SMT level of one
///   thread, core level of `num_cpus`, EDX = APIC ID on every subleaf;
/// - on AMD, leaves 0x8000_0008 ECX (core count, APIC ID size) and
///   0x8000_001E (extended APIC ID, core ID), if reported;
/// - every other leaf, the hypervisor signature leaves 0x4000_0000.. among
///   them, as reported.
pub fn build_cpuid(
    supported: &[CpuIdEntry],
    cpu_index: u8,
    num_cpus: u8,
) -> Result<Vec<CpuIdEntry>> {
    check_cpu(cpu_index, num_cpus)?;
    let apic_id = u32::from(cpu_index);
    let cpus = u32::from(num_cpus);
    let is_amd = supported
        .iter()
        .find(|e| e.function == 0)
        .is_some_and(|e| e.ebx == VENDOR_AMD_EBX || e.ebx == VENDOR_HYGON_EBX);

    let mut out = Vec::with_capacity(supported.len() + 4);
    let mut topology_done = Vec::new();
    for entry in supported {
        let mut e = *entry;
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0xff) | (CLFLUSH_LINE_SIZE << 8) | (cpus << 16) | (apic_id << 24);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if num_cpus > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            4 if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { cpus - 1 } else { 0 };
                e.eax &= !(0xfc00_0000 | 0x03ff_c000);
                e.eax |= ((cpus - 1) << 26) | (sharing << 14);
            }
            0xb | 0x1f => {
                if !topology_done.contains(&e.function) {
                    topology_done.push(e.function);
                    out.extend(topology_leaf(e.function, apic_id, num_cpus));
                }
                continue;
            }
            0x8000_0008 if is_amd => {
                e.ecx &= !0xf0ff;
                e.ecx |= (id_bits(num_cpus) << 12) | (cpus - 1);
            }
            0x8000_001e if is_amd => {
                e.eax = apic_id;
                e.ebx = (e.ebx & !0xffff) | apic_id;
                e.ecx &= !0x7ff;
            }
            _ => {}
        }
        out.push(e);
    }
    Ok(out)
}

/// Sets the CPUID of vCPU `cpu_index` of `num_cpus`, built by
/// [`build_cpuid`] from the hypervisor's `supported` leaves.
pub fn setup_cpuid(
    vcpu: &dyn Vcpu,
    supported: &[CpuIdEntry],
    cpu_index: u8,
    num_cpus: u8,
) -> Result<()> {
    let entries = build_cpuid(supported, cpu_index, num_cpus)?;
    vcpu.set_cpuid(&entries).map_err(|source| Error::Vcpu {
        op: "set the CPUID",
        source,
    })
}

/// The guest physical address width the `supported` CPUID leaves report
/// (leaf 0x8000_0008 EAX[7:0]), or 36 bits, the architectural minimum with
/// PAE, when the leaf is missing or zero.
pub fn phys_addr_bits(supported: &[CpuIdEntry]) -> u8 {
    supported
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map(|e| (e.eax & 0xff) as u8)
        .filter(|&bits| bits != 0)
        .unwrap_or(36)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_vcpu::TestVcpu;

    fn leaf(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> CpuIdEntry {
        CpuIdEntry {
            function,
            index,
            flags: 0,
            eax,
            ebx,
            ecx,
            edx,
        }
    }

    /// Leaves as reported by this project's KVM (an Intel signature, from
    /// KVM_GET_SUPPORTED_CPUID), abridged.
    pub(crate) fn supported_intel() -> Vec<CpuIdEntry> {
        let mut v = vec![
            leaf(0, 0, 0x24, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            leaf(1, 0, 0xa0671, 0x0002_0800, 0x8120_2000, 0x0f8b_fbff),
            leaf(4, 0, 0x0400_0121, 0x02c0_003f, 0x3f, 0),
            leaf(4, 1, 0x0400_0122, 0x03c0_003f, 0x3f, 0),
            leaf(4, 2, 0x0400_0143, 0x03c0_003f, 0x7ff, 0),
            leaf(4, 3, 0x0400_4163, 0x03c0_003f, 0x77fff, 0),
            leaf(4, 4, 0, 0, 0, 0),
            leaf(0xb, 0, 0, 0, 0, 0),
            leaf(0x1f, 0, 0, 0, 0, 0),
            leaf(0x4000_0000, 0, 0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d),
            leaf(0x4000_0001, 0, 0x0100_7efb, 0, 0, 0),
            leaf(0x8000_0000, 0, 0x8000_0008, 0, 0, 0),
            leaf(0x8000_0008, 0, 0x3930, 0, 0, 0),
        ];
        for e in v
            .iter_mut()
            .filter(|e| [4, 0xb, 0x1f].contains(&e.function))
        {
            e.flags = CpuIdEntry::FLAG_SIGNIFICANT_INDEX;
        }
        v
    }

    fn find(v: &[CpuIdEntry], function: u32, index: u32) -> CpuIdEntry {
        *v.iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("leaf {function:#x}/{index} missing"))
    }

    #[test]
    fn leaf1_carries_apic_id_and_counts() {
        let v = build_cpuid(&supported_intel(), 3, 4).unwrap();
        let l1 = find(&v, 1, 0);
        assert_eq!(l1.ebx >> 24, 3, "APIC ID");
        assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical processors");
        assert_eq!((l1.ebx >> 8) & 0xff, 8, "CLFLUSH 64 bytes");
        assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit");
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        // Nothing else of the reported features changed.
        assert_eq!(l1.ecx, 0x8120_2000);
        assert_eq!(l1.edx & !LEAF1_EDX_HTT, 0x0f8b_fbff);
        assert_eq!(l1.eax, 0xa0671);

        let single = build_cpuid(&supported_intel(), 0, 1).unwrap();
        assert_eq!(find(&single, 1, 0).edx, 0x0f8b_fbff, "no HTT for one vCPU");
    }

    #[test]
    fn x2apic_topology_per_subleaf() {
        for cpu in 0..5u8 {
            let v = build_cpuid(&supported_intel(), cpu, 5).unwrap();
            for function in [0xb, 0x1f] {
                let subleaves: Vec<_> = v.iter().filter(|e| e.function == function).collect();
                assert_eq!(subleaves.len(), 3);
                for e in &subleaves {
                    assert_eq!(e.edx, u32::from(cpu), "x2APIC ID in EDX");
                    assert_eq!(e.ecx & 0xff, e.index);
                    assert_eq!(e.flags, CpuIdEntry::FLAG_SIGNIFICANT_INDEX);
                }
                let smt = find(&v, function, 0);
                assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8), (0, 1, 1));
                let core = find(&v, function, 1);
                assert_eq!((core.eax, core.ebx, core.ecx >> 8), (3, 5, 2));
                assert_eq!(find(&v, function, 2).ecx >> 8, 0, "end of levels");
            }
        }
    }

    #[test]
    fn leaf4_core_counts() {
        let v = build_cpuid(&supported_intel(), 0, 6).unwrap();
        for index in 0..4 {
            let e = find(&v, 4, index);
            assert_eq!(e.eax >> 26, 5, "cores per package - 1");
            let level = (e.eax >> 5) & 7;
            let sharing = (e.eax >> 14) & 0xfff;
            assert_eq!(sharing, if level == 3 { 5 } else { 0 }, "subleaf {index}");
            assert_eq!(
                e.eax & 0x3fff,
                find(&supported_intel(), 4, index).eax & 0x3fff
            );
        }
        assert_eq!(find(&v, 4, 4).eax, 0, "terminating subleaf untouched");
    }

    #[test]
    fn keeps_hypervisor_leaves_and_adds_none() {
        let supported = supported_intel();
        let v = build_cpuid(&supported, 1, 2).unwrap();
        assert_eq!(find(&v, 0x4000_0000, 0), find(&supported, 0x4000_0000, 0));
        assert_eq!(find(&v, 0x4000_0001, 0), find(&supported, 0x4000_0001, 0));
        assert_eq!(
            find(&v, 0x8000_0008, 0),
            find(&supported, 0x8000_0008, 0),
            "Intel"
        );
        // Only the topology leaves grew subleaves.
        assert_eq!(v.len(), supported.len() + 4);

        // A hypervisor without leaf 0xB/0x1F gets none added.
        let without: Vec<_> = supported
            .iter()
            .copied()
            .filter(|e| e.function != 0xb && e.function != 0x1f)
            .collect();
        let v = build_cpuid(&without, 0, 2).unwrap();
        assert!(v.iter().all(|e| e.function != 0xb && e.function != 0x1f));
    }

    #[test]
    fn amd_core_count_leaves() {
        let supported = vec![
            leaf(0, 0, 0x10, u32::from_le_bytes(*b"Auth"), 0, 0),
            leaf(1, 0, 0x800f12, 0, 0, 0),
            leaf(0x8000_0008, 0, 0x3030, 0, 0xffff, 0),
            leaf(0x8000_001e, 0, 0x77, 0x0103, 0x0102, 0),
        ];
        let v = build_cpuid(&supported, 2, 3).unwrap();
        let e = find(&v, 0x8000_0008, 0);
        assert_eq!(e.ecx & 0xff, 2, "NC = cores - 1");
        assert_eq!((e.ecx >> 12) & 0xf, 2, "APIC ID size");
        let e = find(&v, 0x8000_001e, 0);
        assert_eq!((e.eax, e.ebx, e.ecx), (2, 2, 0), "APIC ID, core ID, node 0");
    }

    #[test]
    fn bad_counts_are_errors() {
        let s = supported_intel();
        assert!(matches!(
            build_cpuid(&s, 0, 0),
            Err(Error::InvalidCpuCount(0))
        ));
        assert!(matches!(
            build_cpuid(&s, 0, 33),
            Err(Error::InvalidCpuCount(33))
        ));
        assert!(matches!(
            build_cpuid(&s, 2, 2),
            Err(Error::InvalidCpuIndex {
                index: 2,
                num_cpus: 2
            })
        ));
    }

    #[test]
    fn setup_cpuid_sets_the_table() {
        let vcpu = TestVcpu::default();
        setup_cpuid(&vcpu, &supported_intel(), 1, 2).unwrap();
        let set = vcpu.state().cpuid.clone().unwrap();
        assert_eq!(set, build_cpuid(&supported_intel(), 1, 2).unwrap());
    }

    #[test]
    fn id_bits_is_ceil_log2() {
        let got: Vec<_> = [1u8, 2, 3, 4, 5, 8, 9, 32]
            .iter()
            .map(|&n| id_bits(n))
            .collect();
        assert_eq!(got, [0, 1, 2, 2, 3, 3, 4, 5]);
    }

    #[test]
    fn phys_addr_bits_come_from_leaf_0x80000008() {
        assert_eq!(
            phys_addr_bits(&[leaf(0x8000_0008, 0, 0x3930, 0, 0, 0)]),
            0x30
        );
        assert_eq!(phys_addr_bits(&[leaf(0x8000_0008, 0, 0x3027, 0, 0, 0)]), 39);
        assert_eq!(phys_addr_bits(&[leaf(0x8000_0008, 0, 0, 0, 0, 0)]), 36);
        assert_eq!(phys_addr_bits(&[leaf(1, 0, 0x30, 0, 0, 0)]), 36);
    }
}
