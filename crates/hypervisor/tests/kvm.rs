//! Integration tests of the KVM backend against the real `/dev/kvm`.
//!
//! They fail (rather than skip) when `/dev/kvm` exists but does not work;
//! only a machine without `/dev/kvm` skips them, with a printed line.
#![cfg(feature = "kvm")]

use std::io::Write;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use vmkit_hypervisor::kvm::KvmHypervisor;
use vmkit_hypervisor::{
    CpuIdEntry, DataMatch, Error, FpuState, Hypervisor, IoEventAddress, MsrEntry, Regs, Segment,
    UserMemoryRegion, Vcpu, VcpuExit, Vm,
};
use vmm_sys_util::eventfd::EventFd;

/// Opens `/dev/kvm`, or returns `None` (after saying so) when the machine
/// has none. A `/dev/kvm` that exists but cannot be used fails the test.
fn kvm() -> Option<KvmHypervisor> {
    if !Path::new("/dev/kvm").exists() {
        println!("skipping: /dev/kvm does not exist on this machine");
        return None;
    }
    Some(KvmHypervisor::new().expect("/dev/kvm exists but cannot be opened"))
}

/// Anonymous host memory mapped into a guest.
struct GuestMemory {
    ptr: NonNull<u8>,
    size: usize,
}

impl GuestMemory {
    fn new(size: usize) -> Self {
        // SAFETY: an anonymous private mapping with no address hint; the
        // result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap failed");
        GuestMemory {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned null"),
            size,
        }
    }

    fn write(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.size);
        // SAFETY: the range is inside the mapping (checked above), which
        // lives as long as `self`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(offset),
                bytes.len(),
            )
        };
    }

    fn read_u8(&self, offset: usize) -> u8 {
        assert!(offset < self.size);
        // SAFETY: inside the mapping (checked above); the guest may write
        // concurrently, hence the volatile read.
        unsafe { self.ptr.as_ptr().add(offset).read_volatile() }
    }

    /// Registers the memory as memory slot `slot` at `gpa`.
    fn map_into(&self, vm: &dyn Vm, slot: u32, gpa: u64, read_only: bool) {
        let region = UserMemoryRegion {
            slot,
            guest_phys_addr: gpa,
            memory_size: self.size as u64,
            userspace_addr: self.ptr.as_ptr() as u64,
            read_only,
        };
        // SAFETY: the mapping outlives the VM in every test (each test
        // declares its memory before its VM, so the VM is dropped first).
        unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.size) };
    }
}

const MEM_SIZE: usize = 0x4000;
const CODE: u64 = 0x1000;

/// A VM with `MEM_SIZE` bytes at 0 holding `code` at `CODE`, and vCPU 0 in
/// real mode at 0000:CODE.
fn real_mode_vm(kvm: &KvmHypervisor, code: &[u8]) -> (GuestMemory, Arc<dyn Vm>, Box<dyn Vcpu>) {
    let mem = GuestMemory::new(MEM_SIZE);
    mem.write(CODE as usize, code);
    let vm = kvm.create_vm().expect("create_vm");
    mem.map_into(&*vm, 0, 0, false);
    let vcpu = vm.create_vcpu(0).expect("create_vcpu");
    let mut sregs = vcpu.sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    vcpu.set_regs(&Regs {
        rip: CODE,
        rflags: 2,
        ..Regs::default()
    })
    .unwrap();
    (mem, vm, vcpu)
}

#[test]
fn real_mode_guest_exits_in_order() {
    let Some(kvm) = kvm() else { return };
    #[rustfmt::skip]
    let code = [
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'A',       // mov al, 'A'
        0xee,             // out dx, al          -> IoOut 0x3f8 "A"
        0xec,             // in al, dx           -> IoIn 0x3f8, we answer 0x42
        0x88, 0xc3,       // mov bl, al
        0xa0, 0x00, 0x80, // mov al, [0x8000]    -> MmioRead 0x8000 (unmapped), we answer 0x5a
        0x00, 0xd8,       // add al, bl
        0xa2, 0x10, 0x80, // mov [0x8010], al    -> MmioWrite 0x8010 [0x9c]
        0xf4,             // hlt                 -> Halt (no irqchip)
    ];
    let (_mem, _vm, mut vcpu) = real_mode_vm(&kvm, &code);

    match vcpu.run().unwrap() {
        VcpuExit::IoOut { port, data } => {
            assert_eq!(port, 0x3f8);
            assert_eq!(data, b"A");
        }
        other => panic!("expected IoOut, got {other:?}"),
    }
    match vcpu.run().unwrap() {
        VcpuExit::IoIn { port, data } => {
            assert_eq!(port, 0x3f8);
            assert_eq!(data.len(), 1);
            data[0] = 0x42;
        }
        other => panic!("expected IoIn, got {other:?}"),
    }
    match vcpu.run().unwrap() {
        VcpuExit::MmioRead { addr, data } => {
            assert_eq!(addr, 0x8000);
            assert_eq!(data.len(), 1);
            data[0] = 0x5a;
        }
        other => panic!("expected MmioRead, got {other:?}"),
    }
    match vcpu.run().unwrap() {
        VcpuExit::MmioWrite { addr, data } => {
            assert_eq!(addr, 0x8010);
            // Both values the VMM supplied reached the guest.
            assert_eq!(data, [0x42u8 + 0x5a]);
        }
        other => panic!("expected MmioWrite, got {other:?}"),
    }
    match vcpu.run().unwrap() {
        VcpuExit::Halt => {}
        other => panic!("expected Halt, got {other:?}"),
    }
    let regs = vcpu.regs().unwrap();
    assert_eq!(regs.rip, CODE + code.len() as u64, "stopped after hlt");
    assert_eq!(regs.rbx & 0xff, 0x42);
    assert_eq!(regs.rax & 0xff, 0x9c);
}

#[test]
fn mmio_write_to_an_ioevent_does_not_exit() {
    let Some(kvm) = kvm() else { return };
    #[rustfmt::skip]
    let code = [
        0xa2, 0x10, 0x80,                                     // mov [0x8010], al: ioeventfd (any)
        0x66, 0xc7, 0x06, 0x20, 0x80, 0x34, 0x12, 0x00, 0x00, // mov dword [0x8020], 0x1234: matches
        0x66, 0xc7, 0x06, 0x20, 0x80, 0x99, 0x00, 0x00, 0x00, // mov dword [0x8020], 0x99: no match
        0xf4,                                                 // hlt
    ];
    let (_mem, vm, mut vcpu) = real_mode_vm(&kvm, &code);
    let any = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let matching = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    vm.register_ioevent(&any, IoEventAddress::Mmio(0x8010), DataMatch::Any)
        .unwrap();
    vm.register_ioevent(
        &matching,
        IoEventAddress::Mmio(0x8020),
        DataMatch::U32(0x1234),
    )
    .unwrap();

    // The first two writes complete in the kernel; the third one, whose
    // value does not match, exits.
    match vcpu.run().unwrap() {
        VcpuExit::MmioWrite { addr, data } => {
            assert_eq!(addr, 0x8020);
            assert_eq!(data, 0x99u32.to_le_bytes());
        }
        other => panic!("expected MmioWrite of the non-matching value, got {other:?}"),
    }
    assert_eq!(
        any.read().unwrap(),
        1,
        "the DataMatch::Any eventfd was signalled"
    );
    assert_eq!(
        matching.read().unwrap(),
        1,
        "the DataMatch::U32 eventfd was signalled"
    );
    assert!(matches!(vcpu.run().unwrap(), VcpuExit::Halt));

    // After unregistering, the same write exits again.
    vm.unregister_ioevent(&any, IoEventAddress::Mmio(0x8010), DataMatch::Any)
        .unwrap();
    vcpu.set_regs(&Regs {
        rip: CODE,
        rflags: 2,
        ..Regs::default()
    })
    .unwrap();
    match vcpu.run().unwrap() {
        VcpuExit::MmioWrite { addr, .. } => assert_eq!(addr, 0x8010),
        other => panic!("expected MmioWrite after unregistering, got {other:?}"),
    }
    assert!(any.read().is_err(), "no new event (EAGAIN)");
    // Unregistering twice is an error (ENOENT).
    assert!(
        vm.unregister_ioevent(&any, IoEventAddress::Mmio(0x8010), DataMatch::Any)
            .is_err()
    );
}

#[test]
fn pio_ioevent_does_not_exit() {
    let Some(kvm) = kvm() else { return };
    #[rustfmt::skip]
    let code = [
        0xba, 0x00, 0x05, // mov dx, 0x500
        0xee,             // out dx, al: ioeventfd
        0xf4,             // hlt
    ];
    let (_mem, vm, mut vcpu) = real_mode_vm(&kvm, &code);
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    vm.register_ioevent(&evt, IoEventAddress::Pio(0x500), DataMatch::Any)
        .unwrap();
    assert!(matches!(vcpu.run().unwrap(), VcpuExit::Halt));
    assert_eq!(evt.read().unwrap(), 1);
}

#[test]
fn read_only_slot_turns_writes_into_mmio_exits() {
    let Some(kvm) = kvm() else { return };
    #[rustfmt::skip]
    let code = [
        0xa0, 0x00, 0x40, // mov al, [0x4000]: read-only memory, no exit
        0xfe, 0xc0,       // inc al
        0xa2, 0x00, 0x40, // mov [0x4000], al: exits as MMIO
        0xf4,             // hlt
    ];
    // Declared before the VM so that it outlives the VM's memory slot.
    let rom = GuestMemory::new(0x1000);
    rom.write(0, &[0x30]);
    let (_mem, vm, mut vcpu) = real_mode_vm(&kvm, &code);
    if !kvm.kvm().check_extension(kvm_ioctls::Cap::ReadonlyMem) {
        let region = UserMemoryRegion {
            slot: 1,
            guest_phys_addr: 0x4000,
            memory_size: 0x1000,
            userspace_addr: rom.ptr.as_ptr() as u64,
            read_only: true,
        };
        // SAFETY: the mapping outlives the VM.
        let err = unsafe { vm.set_user_memory_region(region) }.unwrap_err();
        assert!(matches!(
            err,
            Error::MissingCapability("KVM_CAP_READONLY_MEM")
        ));
        return;
    }
    rom.map_into(&*vm, 1, 0x4000, true);
    match vcpu.run().unwrap() {
        VcpuExit::MmioWrite { addr, data } => {
            assert_eq!(addr, 0x4000);
            assert_eq!(data, [0x31]);
        }
        other => panic!("expected MmioWrite to the read-only slot, got {other:?}"),
    }
    assert!(matches!(vcpu.run().unwrap(), VcpuExit::Halt));
    assert_eq!(rom.read_u8(0), 0x30, "the read-only memory is unchanged");
}

#[test]
fn executing_unmapped_memory_reports_internal_error_with_data() {
    let Some(kvm) = kvm() else { return };
    // jmp 0x0800:0000, i.e. to 0x8000 where nothing is mapped: KVM cannot
    // fetch the instruction and reports an emulation failure.
    let code = [0xea, 0x00, 0x00, 0x00, 0x08];
    let (_mem, _vm, mut vcpu) = real_mode_vm(&kvm, &code);
    match vcpu.run().unwrap() {
        VcpuExit::InternalError { suberror, data } => {
            assert_eq!(suberror, 1, "KVM_INTERNAL_ERROR_EMULATION");
            assert!(
                !data.is_empty(),
                "the kernel's diagnostic words are carried"
            );
            assert!(data.len() <= 16);
        }
        other => panic!("expected InternalError, got {other:?}"),
    }
}

#[test]
fn immediate_exit_gives_interrupted() {
    let Some(kvm) = kvm() else { return };
    let mem = GuestMemory::new(MEM_SIZE);
    mem.write(CODE as usize, &[0xf4]); // hlt
    let vm = kvm.create_kvm_vm().unwrap();
    mem.map_into(&vm, 0, 0, false);
    let mut vcpu = vm.create_kvm_vcpu(0).unwrap();
    let mut sregs = vcpu.sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    vcpu.set_regs(&Regs {
        rip: CODE,
        rflags: 2,
        ..Regs::default()
    })
    .unwrap();

    vcpu.set_immediate_exit(true);
    assert!(matches!(vcpu.run().unwrap(), VcpuExit::Interrupted));
    assert_eq!(vcpu.regs().unwrap().rip, CODE, "the guest did not run");
    vcpu.set_immediate_exit(false);
    assert!(matches!(vcpu.run().unwrap(), VcpuExit::Halt));
}

#[test]
fn irqchip_irqfd_and_pit() {
    let Some(kvm) = kvm() else { return };
    let vm = kvm.create_vm().unwrap();
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    // Both need the in-kernel irqchip.
    assert!(vm.register_irqfd(&evt, 4).is_err());
    assert!(vm.create_pit().is_err());

    vm.create_irq_chip().unwrap();
    vm.create_pit().unwrap();
    match vm.create_pit() {
        Err(Error::Ioctl { op, source }) => {
            assert_eq!(op, "KVM_CREATE_PIT2");
            assert_eq!(source.raw_os_error(), Some(libc::EEXIST));
        }
        other => panic!("second PIT: {other:?}"),
    }
    vm.register_irqfd(&evt, 4).unwrap();
    evt.write(1).unwrap();
    vm.set_irq_line(5, true).unwrap();
    vm.set_irq_line(5, false).unwrap();
    vm.unregister_irqfd(&evt, 4).unwrap();
    // The same eventfd can be registered again once removed.
    vm.register_irqfd(&evt, 4).unwrap();

    // vCPUs created after the irqchip have a local APIC.
    let vcpu = vm.create_vcpu(0).unwrap();
    let lapic = vcpu.lapic().unwrap();
    assert_eq!(lapic.reg(0x20).map(|id| id >> 24), Some(0), "APIC ID");
}

#[test]
fn capabilities_cpuid_and_msrs() {
    let Some(kvm) = kvm() else { return };
    assert!(kvm.max_vcpus() >= 1);
    let cpuid = kvm.supported_cpuid().unwrap();
    assert!(!cpuid.is_empty());
    let leaf0 = cpuid
        .iter()
        .find(|e| e.function == 0)
        .expect("CPUID leaf 0");
    assert!(leaf0.eax >= 1, "leaf 0 reports the highest basic leaf");
    assert!(cpuid.iter().any(|e| e.function == 1));
    let msrs = kvm.supported_msrs().unwrap();
    assert!(msrs.contains(&0x174), "IA32_SYSENTER_CS is saved/restored");
}

#[test]
fn open_errors_are_explained() {
    match KvmHypervisor::open(Path::new("/nonexistent")) {
        Err(err @ Error::Open { .. }) => {
            let msg = err.to_string();
            assert!(msg.starts_with("cannot open /nonexistent: "), "{msg}");
            assert!(msg.ends_with(" (is the kvm module loaded?)"), "{msg}");
            let Error::Open { source, .. } = err else {
                unreachable!()
            };
            assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
        }
        other => panic!("/nonexistent: {other:?}"),
    }

    match KvmHypervisor::open(Path::new("/dev/null")) {
        Err(Error::NotAHypervisor { path, source }) => {
            assert_eq!(path, "/dev/null");
            assert_eq!(source.raw_os_error(), Some(libc::ENOTTY));
        }
        other => panic!("/dev/null: {other:?}"),
    }

    let dir = std::env::temp_dir().join(format!("vmkit-hypervisor-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("not-kvm");
    std::fs::File::create(&file)
        .unwrap()
        .write_all(b"not a device")
        .unwrap();
    let result = KvmHypervisor::open(&file);
    std::fs::remove_dir_all(&dir).unwrap();
    match result {
        Err(err @ Error::NotAHypervisor { .. }) => {
            assert!(err.to_string().contains("is not a KVM device"), "{err}");
        }
        other => panic!("regular file: {other:?}"),
    }
}

#[test]
fn register_state_round_trips() {
    let Some(kvm) = kvm() else { return };
    let vm = kvm.create_vm().unwrap();
    vm.create_irq_chip().unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();

    let regs = Regs {
        rax: 0x1111_1111_1111_1111,
        rbx: 0x2222,
        rcx: 0x3333,
        rdx: 0x4444,
        rsi: 0x5555,
        rdi: 0x6666,
        rsp: 0x7770,
        rbp: 0x8888,
        r8: 8,
        r9: 9,
        r10: 10,
        r11: 11,
        r12: 12,
        r13: 13,
        r14: 14,
        r15: 0xffff_ffff_ffff_ffff,
        rip: 0x1234,
        rflags: 0x246,
    };
    vcpu.set_regs(&regs).unwrap();
    assert_eq!(vcpu.regs().unwrap(), regs);

    // 32-bit flat protected mode, as a loader would set it.
    let mut sregs = vcpu.sregs().unwrap();
    let code = Segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x08,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
    };
    let data = Segment {
        selector: 0x10,
        type_: 0x3,
        ..code
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.ss = data;
    sregs.gdt.base = 0x500;
    sregs.gdt.limit = 0x1f;
    sregs.idt.base = 0x600;
    sregs.idt.limit = 0x7ff;
    sregs.cr0 |= 1;
    sregs.cr3 = 0x9000;
    vcpu.set_sregs(&sregs).unwrap();
    assert_eq!(vcpu.sregs().unwrap(), sregs);

    // KVM resets MXCSR to 0x1f80; KVM_GET_FPU alone would report 0.
    assert_eq!(vcpu.fpu().unwrap().mxcsr, 0x1f80);
    let mut fpu = FpuState {
        fcw: 0x27f,
        fsw: 0x0800,
        ftwx: 0x01,
        // Round toward zero, all exceptions masked, flush to zero.
        mxcsr: 0xff80,
        ..FpuState::default()
    };
    fpu.fpr[0][..10].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x3f]); // 1.0
    fpu.xmm[3] = *b"0123456789abcdef";
    fpu.xmm[15] = [0xa5; 16];
    vcpu.set_fpu(&fpu).unwrap();
    let got = vcpu.fpu().unwrap();
    assert_eq!(got.fcw, fpu.fcw);
    assert_eq!(got.fsw, fpu.fsw);
    assert_eq!(got.ftwx, fpu.ftwx);
    assert_eq!(got.fpr, fpu.fpr);
    assert_eq!(got.xmm, fpu.xmm);
    assert_eq!(got.mxcsr, fpu.mxcsr);
    // A reserved MXCSR bit is refused.
    let bad = FpuState {
        mxcsr: 1 << 31,
        ..fpu
    };
    assert!(vcpu.set_fpu(&bad).is_err());

    let set = [
        MsrEntry {
            index: 0x174, // IA32_SYSENTER_CS
            data: 0x10,
        },
        MsrEntry {
            index: 0x175, // IA32_SYSENTER_ESP
            data: 0xffff_8000_0000_1000,
        },
    ];
    assert_eq!(vcpu.set_msrs(&set).unwrap(), 2);
    let mut read = [
        MsrEntry {
            index: 0x174,
            data: 0,
        },
        MsrEntry {
            index: 0x175,
            data: 0,
        },
    ];
    assert_eq!(vcpu.msrs(&mut read).unwrap(), 2);
    assert_eq!(read, set);

    let mut lapic = vcpu.lapic().unwrap();
    // Mask LINT0 (LVT 0x350) and set the spurious vector register.
    assert!(lapic.set_reg(0x350, 0x1_0700));
    assert!(lapic.set_reg(0xf0, 0x1ff));
    vcpu.set_lapic(&lapic).unwrap();
    let got = vcpu.lapic().unwrap();
    assert_eq!(got.reg(0x350), Some(0x1_0700));
    assert_eq!(got.reg(0xf0), Some(0x1ff));

    let cpuid = kvm.supported_cpuid().unwrap();
    vcpu.set_cpuid(&cpuid).unwrap();
    let too_many = vec![CpuIdEntry::default(); 1000];
    assert!(matches!(
        vcpu.set_cpuid(&too_many),
        Err(Error::InvalidArgument(_))
    ));
}

/// An AP started with INIT + SIPI: its first `KVM_RUN` waits for the SIPI
/// and KVM asks to run again (`EAGAIN`), which `run` must retry.
#[test]
fn ap_started_by_sipi_runs() {
    let Some(kvm) = kvm() else { return };
    const AP_CODE: usize = 0x2000;
    #[rustfmt::skip]
    let bsp_code = [
        // 32-bit protected mode, flat segments. KVM delivers no IPI from a
        // software-disabled local APIC, so enable it first.
        0xc7, 0x05, 0xf0, 0x00, 0xe0, 0xfe, 0xff, 0x01, 0x00, 0x00, // SVR: enabled, vector 0xff
        0xc7, 0x05, 0x10, 0x03, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x01, // ICR high: APIC ID 1
        0xc7, 0x05, 0x00, 0x03, 0xe0, 0xfe, 0x00, 0x45, 0x00, 0x00, // ICR low: INIT, assert
        0xc7, 0x05, 0x00, 0x03, 0xe0, 0xfe, 0x02, 0x46, 0x00, 0x00, // ICR low: SIPI vector 2
        0x66, 0xba, 0xf8, 0x03,                                     // mov dx, 0x3f8
        0xb0, b'S',                                                 // mov al, 'S'
        0xee,                                                       // out dx, al
        0xf4,                                                       // hlt
    ];
    #[rustfmt::skip]
    let ap_code = [
        0xba, 0xf9, 0x03, // mov dx, 0x3f9 (real mode, CS = 0x0200)
        0xb0, b'B',       // mov al, 'B'
        0xee,             // out dx, al
        0xf4,             // hlt
    ];
    let mem = GuestMemory::new(MEM_SIZE);
    mem.write(CODE as usize, &bsp_code);
    mem.write(AP_CODE, &ap_code);
    let vm = kvm.create_vm().unwrap();
    vm.create_irq_chip().unwrap();
    mem.map_into(&*vm, 0, 0, false);
    let mut bsp = vm.create_vcpu(0).unwrap();
    let mut ap = vm.create_vcpu(1).unwrap();

    let mut sregs = bsp.sregs().unwrap();
    let code = Segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x08,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
    };
    let data = Segment {
        selector: 0x10,
        type_: 0x3,
        ..code
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.ss = data;
    sregs.cr0 |= 1;
    bsp.set_sregs(&sregs).unwrap();
    bsp.set_regs(&Regs {
        rip: CODE,
        rflags: 2,
        ..Regs::default()
    })
    .unwrap();

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = match ap.run() {
            Ok(VcpuExit::IoOut { port, data }) => Ok((port, data.to_vec())),
            Ok(other) => Err(format!("{other:?}")),
            Err(e) => Err(e.to_string()),
        };
        let regs = ap.regs().ok();
        let _ = tx.send((result, regs));
    });

    match bsp.run().unwrap() {
        VcpuExit::IoOut { port, data } => {
            assert_eq!(port, 0x3f8);
            assert_eq!(data, b"S");
        }
        other => panic!("BSP: expected IoOut, got {other:?}"),
    }
    let (result, regs) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the AP did not exit within 10 s of the SIPI");
    assert_eq!(result, Ok((0x3f9, b"B".to_vec())));
    let regs = regs.expect("AP regs");
    assert_eq!(regs.rip, 6, "the AP ran its code at 0200:0000");
}
