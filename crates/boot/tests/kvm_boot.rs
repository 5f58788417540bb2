//! Boots a hand-assembled 64-bit "kernel" on real KVM with the state this
//! crate prepares: long mode, paging, stack, zero page pointer, CPUID and
//! the identity map up to the local APIC.
//!
//! Fails (does not skip) when `/dev/kvm` exists; skips only without it.

use std::io::Cursor;
use std::path::Path;

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmkit_boot::acpi::{AcpiConfig, AcpiPm, setup_acpi};
use vmkit_boot::{BootInfo, BootProtocol, configure_system, configure_vcpu, load_kernel};
use vmkit_hypervisor::kvm::KvmHypervisor;
use vmkit_hypervisor::{Hypervisor, UserMemoryRegion, VcpuExit};

const KERNEL_ADDR: u64 = 0x10_0000;

/// The guest program; every `out 0x80, eax` reports one value, `out 0x81`
/// says it is done.
const GUEST_CODE: &[u8] = &[
    0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // mov rax, 0x1122334455667788
    0x50, // push rax
    0x5b, // pop rbx
    0x48, 0xc1, 0xeb, 0x20, // shr rbx, 32
    0x89, 0xd8, // mov eax, ebx
    0xe7, 0x80, // out 0x80, eax             -> 0x11223344 (64-bit code, stack)
    0x8b, 0x86, 0x02, 0x02, 0x00, 0x00, // mov eax, [rsi + 0x202]
    0xe7, 0x80, // out 0x80, eax             -> "HdrS" (rsi = zero page)
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
    0x0f, 0xa2, // cpuid
    0x89, 0xd8, // mov eax, ebx
    0xe7, 0x80, // out 0x80, eax             -> leaf 1 EBX
    0xb8, 0x30, 0x00, 0xe0, 0xfe, // mov eax, 0xfee00030
    0x8b, 0x00, // mov eax, [rax]
    0xe7, 0x80, // out 0x80, eax             -> local APIC version register
    0xe6, 0x81, // out 0x81, al
    0xf4, // hlt
];

/// A minimal ELF executable with one PT_LOAD segment holding `code` at
/// `addr`, entry point `addr`.
fn elf_image(addr: u64, code: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&62u16.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&addr.to_le_bytes());
    out.extend_from_slice(&64u64.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&5u32.to_le_bytes());
    for v in [
        120u64,
        addr,
        addr,
        code.len() as u64,
        code.len() as u64,
        0x1000,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(code);
    out
}

#[test]
fn boot_vcpu_runs_64bit_code_on_kvm() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("skipped: no /dev/kvm on this machine");
        return;
    }
    let hv = KvmHypervisor::new().expect("/dev/kvm exists but cannot be opened");
    let vm = hv.create_vm().unwrap();
    vm.create_irq_chip().unwrap();

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    for (slot, region) in mem.iter().enumerate() {
        let host = mem.get_host_address(region.start_addr()).unwrap();
        // SAFETY: `host .. host + len` is the mapping of `region`, owned by
        // `mem`, which outlives the VM (declared after it, dropped first).
        unsafe {
            vm.set_user_memory_region(UserMemoryRegion {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
                read_only: false,
            })
        }
        .unwrap();
    }

    let num_cpus = 2;
    let kernel = load_kernel(&mem, &mut Cursor::new(elf_image(KERNEL_ADDR, GUEST_CODE))).unwrap();
    assert_eq!(kernel.entry, GuestAddress(KERNEL_ADDR));
    assert_eq!(kernel.protocol, BootProtocol::Linux64, "no PVH note");
    configure_system(&mem, "console=ttyS0", num_cpus, &BootInfo::new(&kernel)).unwrap();

    let supported = hv.supported_cpuid().unwrap();
    let mut vcpus: Vec<_> = (0..num_cpus)
        .map(|i| vm.create_vcpu(u32::from(i)).unwrap())
        .collect();
    for (i, vcpu) in vcpus.iter().enumerate() {
        let entry = (i == 0).then_some(&kernel);
        configure_vcpu(vcpu.as_ref(), &mem, i as u8, num_cpus, &supported, entry).unwrap();
    }
    // The application processor was left in its reset state.
    let ap_sregs = vcpus[1].sregs().unwrap();
    assert_eq!(ap_sregs.cr0 & 0x8000_0000, 0, "AP paging off until SIPI");

    let bsp = &mut vcpus[0];
    let mut reported = Vec::new();
    let mut done = false;
    for _ in 0..100 {
        match bsp.run().unwrap() {
            VcpuExit::IoOut { port: 0x80, data } => {
                let mut b = [0u8; 4];
                b[..data.len()].copy_from_slice(data);
                reported.push(u32::from_le_bytes(b));
            }
            VcpuExit::IoOut { port: 0x81, .. } => {
                done = true;
                break;
            }
            VcpuExit::Interrupted => {}
            other => {
                let exit = format!("{other:?}");
                let regs = bsp.regs().unwrap();
                panic!("unexpected exit {exit} at rip {:#x}: {regs:x?}", regs.rip);
            }
        }
    }
    assert!(done, "guest did not finish; reported {reported:x?}");
    assert_eq!(reported.len(), 4, "{reported:x?}");
    assert_eq!(reported[0], 0x1122_3344, "64-bit code with a working stack");
    assert_eq!(
        reported[1],
        u32::from_le_bytes(*b"HdrS"),
        "RSI points at the zero page"
    );
    assert_eq!(reported[2] >> 24, 0, "leaf 1 EBX: APIC ID of the BSP");
    assert_eq!(
        (reported[2] >> 16) & 0xff,
        2,
        "leaf 1 EBX: logical processor count"
    );
    assert_eq!(
        reported[3] & 0xff,
        0x14,
        "local APIC reached through the identity map"
    );

    let regs = bsp.regs().unwrap();
    assert_eq!(regs.rsp, 0x6ff0, "stack balanced");
    assert_eq!(regs.rsi, 0x7000);
}

/// 32-bit code for the PVH entry: reports what EBX points at, CR0 and the
/// RSDP signature the BIOS-area scan would find.
const PVH_CODE: &[u8] = &[
    0x8b, 0x03, // mov eax, [ebx]           -> hvm_start_info.magic
    0xe7, 0x80, // out 0x80, eax
    0x0f, 0x20, 0xc0, // mov eax, cr0       -> PE|ET, no PG
    0xe7, 0x80, // out 0x80, eax
    0x8b, 0x43, 0x20, // mov eax, [ebx+0x20] -> rsdp_paddr
    0xe7, 0x80, // out 0x80, eax
    0xa1, 0x00, 0x00, 0x0e, 0x00, // mov eax, [0xe0000] -> "RSD "
    0xe7, 0x80, // out 0x80, eax
    0x89, 0xd8, // mov eax, ebx
    0xe7, 0x80, // out 0x80, eax            -> EBX itself
    0xe6, 0x81, // out 0x81, al
    0xf4, // hlt
];

/// `elf_image` plus a PT_NOTE holding a XEN_ELFNOTE_PHYS32_ENTRY note
/// (name "Xen", type 18) for `pvh_entry`; `e_entry` stays `addr`.
fn elf_image_with_pvh_note(addr: u64, code: &[u8], pvh_entry: u32) -> Vec<u8> {
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes()); // n_namesz
    note.extend_from_slice(&4u32.to_le_bytes()); // n_descsz
    note.extend_from_slice(&18u32.to_le_bytes()); // n_type
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&pvh_entry.to_le_bytes());
    let code_off = 64 + 2 * 56;
    let note_off = code_off + code.len() as u64;
    let mut out = Vec::new();
    out.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&62u16.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&addr.to_le_bytes());
    out.extend_from_slice(&64u64.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 2, 64, 0, 0] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    // PT_LOAD
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&5u32.to_le_bytes());
    for v in [
        code_off,
        addr,
        addr,
        code.len() as u64,
        code.len() as u64,
        0x1000,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    // PT_NOTE
    out.extend_from_slice(&4u32.to_le_bytes());
    out.extend_from_slice(&4u32.to_le_bytes());
    for v in [note_off, 0, 0, note.len() as u64, note.len() as u64, 4] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(code);
    out.extend_from_slice(&note);
    out
}

#[test]
fn pvh_entry_runs_32bit_code_on_kvm() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("skipped: no /dev/kvm on this machine");
        return;
    }
    let hv = KvmHypervisor::new().expect("/dev/kvm exists but cannot be opened");
    let vm = hv.create_vm().unwrap();
    vm.create_irq_chip().unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    for (slot, region) in mem.iter().enumerate() {
        let host = mem.get_host_address(region.start_addr()).unwrap();
        // SAFETY: `host .. host + len` is the mapping of `region`, owned by
        // `mem`, which outlives the VM (declared after it, dropped first).
        unsafe {
            vm.set_user_memory_region(UserMemoryRegion {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
                read_only: false,
            })
        }
        .unwrap();
    }

    // e_entry is a hlt far from the PVH code: only the note's entry works.
    let pvh_entry = KERNEL_ADDR + 0x10;
    let mut code = vec![0xf4; 0x10];
    code.extend_from_slice(PVH_CODE);
    let image = elf_image_with_pvh_note(KERNEL_ADDR, &code, pvh_entry as u32);
    let kernel = load_kernel(&mem, &mut Cursor::new(image)).unwrap();
    assert_eq!(kernel.protocol, BootProtocol::Pvh);
    assert_eq!(kernel.entry, GuestAddress(pvh_entry));
    let acpi = AcpiConfig {
        num_cpus: 1,
        uart: None,
        virtio_mmio: Vec::new(),
        pm: AcpiPm {
            sleep_control_port: 0x600,
            sleep_status_port: 0x601,
            reset_port: 0x602,
            reset_value: 0xfe,
            s5_sleep_type: 5,
        },
    };
    let boot = BootInfo {
        rsdp: Some(setup_acpi(&mem, &acpi).unwrap()),
        ..BootInfo::new(&kernel)
    };
    configure_system(&mem, "console=ttyS0", 1, &boot).unwrap();

    let mut vcpu = vm.create_vcpu(0).unwrap();
    let supported = hv.supported_cpuid().unwrap();
    configure_vcpu(vcpu.as_ref(), &mem, 0, 1, &supported, Some(&kernel)).unwrap();
    let mut reported = Vec::new();
    let mut done = false;
    for _ in 0..100 {
        match vcpu.run().unwrap() {
            VcpuExit::IoOut { port: 0x80, data } => {
                let mut b = [0u8; 4];
                b[..data.len()].copy_from_slice(data);
                reported.push(u32::from_le_bytes(b));
            }
            VcpuExit::IoOut { port: 0x81, .. } => {
                done = true;
                break;
            }
            VcpuExit::Interrupted => {}
            other => {
                let exit = format!("{other:?}");
                let regs = vcpu.regs().unwrap();
                panic!("unexpected exit {exit} at rip {:#x}: {regs:x?}", regs.rip);
            }
        }
    }
    assert!(done, "guest did not finish; reported {reported:x?}");
    assert_eq!(
        reported,
        [
            0x336e_c578,
            0x11,
            0xe0000,
            u32::from_le_bytes(*b"RSD "),
            0xf000
        ],
        "magic, CR0 = PE|ET, rsdp_paddr, RSDP signature, EBX"
    );
    let sregs = vcpu.sregs().unwrap();
    assert_eq!(
        (sregs.efer, sregs.cr4, sregs.cs.db, sregs.cs.l),
        (0, 0, 1, 0)
    );
}
