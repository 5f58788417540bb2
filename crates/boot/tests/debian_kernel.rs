//! Loads Debian's real cloud kernel, both as the bzImage it ships and as
//! the ELF vmlinux inside it, with a real initrd, and checks what lands in
//! guest memory against the boot protocols themselves (offsets from
//! Linux's `Documentation/arch/x86/boot.rst` and `zero-page.rst`, and Xen's
//! `include/public/arch-x86/hvm/start_info.h`), not against this crate's
//! own structures.
//!
//! The images are made by `scripts/debian-guest.sh` (in `$VMKIT_DEBIAN_GUEST`
//! or `<workspace>/target/debian-guest`). Without them these tests print one
//! line and pass, except under CI (`CI=true`), where they fail: CI must
//! prepare them (`.ci/run` does).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_boot::acpi::{AcpiConfig, AcpiPm, AcpiUart, VirtioMmioDesc, setup_acpi};
use vmkit_boot::{
    BootInfo, BootProtocol, KernelEntry, configure_system, configure_vcpu, e820_entries,
    load_initrd, load_kernel,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const CMDLINE: &str = "console=ttyS0 panic=-1 vmkit.ip=10.77.0.2/24 vmkit.peer=10.77.0.1";

/// The script's outputs.
struct Images {
    dir: PathBuf,
    vmlinuz: Vec<u8>,
    initrd: Vec<u8>,
    /// `kernel <release>` from the manifest.
    release: String,
}

impl Images {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The prepared images, or `None` (after one line saying so) when they are
/// missing and this is not CI.
fn images() -> Option<Images> {
    let dir = std::env::var_os("VMKIT_DEBIAN_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debian-guest"));
    let missing: Vec<&str> = ["vmlinuz", "vmlinux", "initrd.img", "manifest"]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if !missing.is_empty() {
        let msg = format!(
            "the Debian guest images are missing ({} not in {}): run scripts/debian-guest.sh",
            missing.join(", "),
            dir.display()
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("skipped: {msg}");
        return None;
    }
    let manifest = fs::read_to_string(dir.join("manifest")).unwrap();
    let release = manifest
        .lines()
        .find_map(|l| l.strip_prefix("kernel "))
        .expect("the manifest has a `kernel <release>` line")
        .to_string();
    Some(Images {
        vmlinuz: fs::read(dir.join("vmlinuz")).unwrap(),
        initrd: fs::read(dir.join("initrd.img")).unwrap(),
        dir,
        release,
    })
}

fn u8_at(b: &[u8], off: usize) -> u8 {
    b[off]
}
fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn read_mem(mem: &GuestMemoryMmap<()>, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr))
        .unwrap_or_else(|e| panic!("read {len} bytes at {addr:#x}: {e}"));
    buf
}

/// The NUL-terminated string at `addr`.
fn c_string(mem: &GuestMemoryMmap<()>, addr: u64) -> String {
    let bytes = read_mem(mem, addr, 4096);
    let end = bytes
        .iter()
        .position(|&b| b == 0)
        .expect("NUL within 4 KiB");
    String::from_utf8(bytes[..end].to_vec()).unwrap()
}

/// What a VMM of this project describes in ACPI: COM1, two virtio-mmio
/// devices, and power-off/reset registers.
fn acpi_config() -> AcpiConfig {
    AcpiConfig {
        num_cpus: 2,
        uart: Some(AcpiUart {
            port: 0x3f8,
            irq: 4,
        }),
        virtio_mmio: vec![
            VirtioMmioDesc {
                base: 0xc000_0000,
                irq: 5,
            },
            VirtioMmioDesc {
                base: 0xc000_1000,
                irq: 6,
            },
        ],
        pm: AcpiPm {
            sleep_control_port: 0x600,
            sleep_status_port: 0x601,
            reset_port: 0x602,
            reset_value: 0xfe,
            s5_sleep_type: 5,
        },
    }
}

/// Loads `kernel_file`, the initrd and the ACPI tables into `mem` and
/// writes the boot parameters, as a VMM does.
fn boot(mem: &GuestMemoryMmap<()>, images: &Images, kernel_file: &str) -> (KernelEntry, BootInfo) {
    let mut file = File::open(images.path(kernel_file)).unwrap();
    let kernel = load_kernel(mem, &mut file).unwrap_or_else(|e| panic!("{kernel_file}: {e}"));
    let initrd = load_initrd(
        mem,
        &mut File::open(images.path("initrd.img")).unwrap(),
        &kernel,
    )
    .expect("load the initrd");
    let rsdp = setup_acpi(mem, &acpi_config()).expect("write the ACPI tables");
    let info = BootInfo {
        initrd: Some(initrd),
        rsdp: Some(rsdp),
        ..BootInfo::new(&kernel)
    };
    configure_system(mem, CMDLINE, 2, &info).expect("configure_system");
    (kernel, info)
}

/// Checks an RSDP at `addr`: signature and ACPI 1.0 checksum.
fn assert_rsdp(mem: &GuestMemoryMmap<()>, addr: u64) {
    assert_ne!(addr, 0, "no RSDP address given to the kernel");
    let rsdp = read_mem(mem, addr, 36);
    assert_eq!(&rsdp[..8], b"RSD PTR ", "RSDP signature at {addr:#x}");
    let sum = rsdp[..20].iter().fold(0u8, |s, &b| s.wrapping_add(b));
    assert_eq!(sum, 0, "RSDP checksum");
    // Revision 2: an XSDT address, checksummed over 36 bytes.
    assert!(rsdp[15] >= 2, "RSDP revision {}", rsdp[15]);
    let xsdt = u64_at(&rsdp, 24);
    assert_eq!(&read_mem(mem, xsdt, 4), b"XSDT");
}

/// The initrd is all there, above the kernel's footprint and below `max`.
fn assert_initrd(
    mem: &GuestMemoryMmap<()>,
    images: &Images,
    kernel_end: u64,
    addr: u64,
    size: u64,
    max: u64,
) {
    assert_eq!(size, images.initrd.len() as u64, "initrd size");
    assert!(
        addr >= kernel_end,
        "initrd at {addr:#x} overlaps the kernel (ends {kernel_end:#x})"
    );
    assert!(
        addr + size - 1 <= max,
        "initrd {addr:#x}+{size:#x} beyond its limit {max:#x}"
    );
    assert_eq!(addr % 4096, 0, "initrd alignment");
    assert!(
        read_mem(mem, addr, images.initrd.len()) == images.initrd,
        "the initrd in guest memory differs from initrd.img"
    );
    // A gzip'd newc cpio, as the kernel's initramfs unpacker wants.
    assert_eq!(&images.initrd[..2], &[0x1f, 0x8b]);
}

#[test]
fn bzimage_setup_header_reaches_the_zero_page() {
    let Some(images) = images() else { return };
    let img = &images.vmlinuz;
    // The file's own setup header (boot.rst).
    assert_eq!(u16_at(img, 0x1fe), 0xaa55, "vmlinuz boot_flag");
    assert_eq!(&img[0x202..0x206], b"HdrS", "vmlinuz header");
    let version = u16_at(img, 0x206);
    assert!(version >= 0x020f, "boot protocol {version:#x} < 2.15");
    // kernel_version: a pointer (from 0x200) to the version string.
    let kv = 0x200 + usize::from(u16_at(img, 0x20e));
    let banner = String::from_utf8_lossy(&img[kv..kv + 128]);
    assert!(
        banner.starts_with(&images.release),
        "the bzImage says {banner:?}, the manifest {}",
        images.release
    );
    let setup_sects = match u8_at(img, 0x1f1) {
        0 => 4,
        n => usize::from(n),
    };
    let pm_offset = (setup_sects + 1) * 512;
    let pref_address = u64_at(img, 0x258);
    let init_size = u64::from(u32_at(img, 0x260));
    let kernel_alignment = u64::from(u32_at(img, 0x230));
    let initrd_addr_max = u64::from(u32_at(img, 0x22c));
    let cmdline_size = u32_at(img, 0x238);

    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (512 * MIB) as usize)]).unwrap();
    let (kernel, info) = boot(&mem, &images, "vmlinuz");
    assert!(
        matches!(kernel.protocol, BootProtocol::BzImage(_)),
        "{:?}",
        kernel.protocol
    );

    // The protected-mode kernel, setup sectors skipped, at its preferred
    // address (it is relocatable and RAM is there), entered at +0x200.
    let load = kernel.start.0;
    assert_eq!(u8_at(img, 0x234), 1, "relocatable_kernel");
    assert_eq!(load, pref_address, "load address");
    assert_eq!(
        load % kernel_alignment,
        0,
        "kernel_alignment {kernel_alignment:#x}"
    );
    assert_eq!(kernel.entry.0, load + 0x200, "64-bit entry");
    assert!(
        kernel.end.0 >= load + init_size,
        "the footprint covers init_size"
    );
    assert!(
        read_mem(&mem, load, img.len() - pm_offset) == img[pm_offset..],
        "the protected-mode kernel in guest memory differs from vmlinuz"
    );

    // The zero page (the vCPU gets RSI = 0x7000; see below).
    let zp = read_mem(&mem, 0x7000, 4096);
    assert_eq!(u16_at(&zp, 0x1fe), 0xaa55, "boot_flag");
    assert_eq!(&zp[0x202..0x206], b"HdrS", "header");
    assert_eq!(u16_at(&zp, 0x206), version, "version");
    assert_ne!(u8_at(&zp, 0x211) & 0x01, 0, "loadflags LOADED_HIGH");
    assert_ne!(u16_at(&zp, 0x236) & 0x01, 0, "xloadflags XLF_KERNEL_64");
    assert_eq!(u8_at(&zp, 0x210), 0xff, "type_of_loader");
    assert_eq!(u32_at(&zp, 0x214) as u64, load, "code32_start");
    let cmd_line_ptr = u64::from(u32_at(&zp, 0x228));
    assert_eq!(
        c_string(&mem, cmd_line_ptr),
        CMDLINE,
        "the command line at cmd_line_ptr"
    );
    assert_eq!(
        u32_at(&zp, 0x238),
        cmdline_size,
        "cmdline_size (the kernel's limit)"
    );
    assert!(CMDLINE.len() as u32 <= cmdline_size);
    let ramdisk_image = u64::from(u32_at(&zp, 0x218));
    let ramdisk_size = u64::from(u32_at(&zp, 0x21c));
    let initrd = info.initrd.unwrap();
    assert_eq!((ramdisk_image, ramdisk_size), (initrd.addr.0, initrd.size));
    assert_initrd(
        &mem,
        &images,
        kernel.end.0,
        ramdisk_image,
        ramdisk_size,
        initrd_addr_max,
    );
    // Everything else of the header is the kernel's own, as the protocol
    // says a loader must copy it (up to its declared end, 0x202 + byte 0x201).
    let end = 0x202 + usize::from(img[0x201]);
    let written = [0x210..0x211, 0x214..0x218, 0x218..0x220, 0x228..0x22c];
    for off in 0x1f1..end {
        if written.iter().any(|r| r.contains(&off)) {
            continue;
        }
        assert_eq!(zp[off], img[off], "setup header byte {off:#x}");
    }

    // acpi_rsdp_addr (0x070, protocol 2.14) and the e820 map.
    let rsdp = u64_at(&zp, 0x070);
    assert_eq!(Some(GuestAddress(rsdp)), info.rsdp);
    assert_rsdp(&mem, rsdp);
    let count = usize::from(u8_at(&zp, 0x1e8));
    let expected = e820_entries(&mem).unwrap();
    assert_eq!(count, expected.len(), "e820_entries");
    let mut ram = 0;
    for (i, e) in expected.iter().enumerate() {
        let at = 0x2d0 + 20 * i;
        assert_eq!(
            (u64_at(&zp, at), u64_at(&zp, at + 8), u32_at(&zp, at + 16)),
            (e.addr, e.size, e.kind),
            "e820 entry {i}"
        );
        if e.kind == 1 {
            ram += e.size;
            // The kernel and the initrd are in RAM.
            let (s, end) = (e.addr, e.addr + e.size);
            if (s..end).contains(&load) {
                assert!(
                    kernel.end.0 <= end,
                    "the kernel runs past its e820 RAM entry"
                );
            }
        }
    }
    assert!(ram > 500 * MIB && ram <= 512 * MIB, "e820 RAM {ram:#x}");
}

/// The `XEN_ELFNOTE_PHYS32_ENTRY` (18) of an ELF file, read here from its
/// PT_NOTE segments.
fn pvh_note(elf: &[u8]) -> Option<u64> {
    let phoff = u64_at(elf, 0x20) as usize;
    let phentsize = usize::from(u16_at(elf, 0x36));
    let phnum = usize::from(u16_at(elf, 0x38));
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(elf, ph) != 4 {
            continue; // not PT_NOTE
        }
        let (off, size) = (u64_at(elf, ph + 8) as usize, u64_at(elf, ph + 32) as usize);
        let mut at = off;
        while at + 12 <= off + size {
            let namesz = u32_at(elf, at) as usize;
            let descsz = u32_at(elf, at + 4) as usize;
            let kind = u32_at(elf, at + 8);
            let name = &elf[at + 12..at + 12 + namesz];
            let desc = at + 12 + namesz.next_multiple_of(4);
            if name == b"Xen\0" && kind == 18 {
                return Some(match descsz {
                    4 => u64::from(u32_at(elf, desc)),
                    _ => u64_at(elf, desc),
                });
            }
            at = desc + descsz.next_multiple_of(4);
        }
    }
    None
}

#[test]
fn vmlinux_boots_through_pvh_with_start_info() {
    let Some(images) = images() else { return };
    let elf = fs::read(images.path("vmlinux")).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    let note_entry = pvh_note(&elf).expect("vmlinux has a PVH (Xen PHYS32_ENTRY) note");
    // The script read the same note with readelf.
    let manifest = fs::read_to_string(images.path("manifest")).unwrap();
    let listed = manifest
        .lines()
        .find_map(|l| l.strip_prefix("pvh-entry 0x"))
        .map(|h| u64::from_str_radix(h, 16).unwrap());
    assert_eq!(listed, Some(note_entry), "manifest pvh-entry");

    // RAM below the 32-bit MMIO hole and above 4 GiB, as vmkit-memory lays
    // out 4 GiB (mapped lazily: only what is written is touched).
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), (3 * GIB) as usize),
        (GuestAddress(4 * GIB), GIB as usize),
    ])
    .unwrap();
    let (kernel, info) = boot(&mem, &images, "vmlinux");
    assert_eq!(kernel.protocol, BootProtocol::Pvh);
    assert_eq!(
        kernel.entry.0, note_entry,
        "the PVH entry comes from the note"
    );

    // Every PT_LOAD segment at its p_paddr, zero-filled past p_filesz.
    let phoff = u64_at(&elf, 0x20) as usize;
    let mut segments = 0;
    for i in 0..usize::from(u16_at(&elf, 0x38)) {
        let ph = phoff + i * 56;
        if u32_at(&elf, ph) != 1 {
            continue;
        }
        let (off, paddr) = (u64_at(&elf, ph + 8) as usize, u64_at(&elf, ph + 24));
        let (filesz, memsz) = (u64_at(&elf, ph + 32) as usize, u64_at(&elf, ph + 40));
        assert!(
            read_mem(&mem, paddr, filesz) == elf[off..off + filesz],
            "segment {i} at {paddr:#x} differs from the file"
        );
        let tail = read_mem(&mem, paddr + filesz as u64, (memsz as usize) - filesz);
        assert!(tail.iter().all(|&b| b == 0), "segment {i}: bss not zero");
        assert!(paddr + memsz <= kernel.end.0);
        segments += 1;
    }
    assert!(segments >= 2, "{segments} PT_LOAD segments");

    // hvm_start_info at the address the vCPU gets in EBX (see below).
    let si = read_mem(&mem, 0xf000, 56);
    assert_eq!(u32_at(&si, 0), 0x336e_c578, "magic");
    assert!(u32_at(&si, 4) >= 1, "version (1 has the memory map)");
    assert_eq!(u32_at(&si, 8), 0, "flags");
    assert_eq!(c_string(&mem, u64_at(&si, 24)), CMDLINE, "cmdline_paddr");
    let rsdp = u64_at(&si, 32);
    assert_eq!(Some(GuestAddress(rsdp)), info.rsdp);
    assert_rsdp(&mem, rsdp);

    assert_eq!(u32_at(&si, 12), 1, "nr_modules: the initrd");
    let module = read_mem(&mem, u64_at(&si, 16), 32);
    let (paddr, size) = (u64_at(&module, 0), u64_at(&module, 8));
    let initrd = info.initrd.unwrap();
    assert_eq!((paddr, size), (initrd.addr.0, initrd.size));
    // Linux takes an initrd anywhere in its direct map, vmkit keeps it
    // under 2 GiB for ELF kernels.
    assert_initrd(&mem, &images, kernel.end.0, paddr, size, 0x7fff_ffff);

    let expected = e820_entries(&mem).unwrap();
    let entries = u32_at(&si, 48) as usize;
    assert_eq!(entries, expected.len(), "memmap_entries");
    let memmap = read_mem(&mem, u64_at(&si, 40), 24 * entries);
    let mut ram = 0;
    for (i, e) in expected.iter().enumerate() {
        let at = 24 * i;
        assert_eq!(
            (
                u64_at(&memmap, at),
                u64_at(&memmap, at + 8),
                u32_at(&memmap, at + 16)
            ),
            (e.addr, e.size, e.kind),
            "memmap entry {i}"
        );
        if e.kind == 1 {
            ram += e.size;
        }
    }
    assert!(ram > 4 * GIB - MIB && ram <= 4 * GIB, "memmap RAM {ram:#x}");
    assert!(
        expected.iter().any(|e| e.addr == 4 * GIB && e.kind == 1),
        "RAM above the hole is in the map"
    );
}

/// The boot vCPU's state for both images, on a real KVM vCPU (set, not
/// run: that is `tests/linux.rs` in the workspace root).
#[test]
fn boot_vcpu_enters_where_the_protocols_say() {
    let Some(images) = images() else { return };
    if !Path::new("/dev/kvm").exists() {
        eprintln!("skipped: no /dev/kvm on this machine");
        return;
    }
    use vmkit_hypervisor::Hypervisor;
    let hv =
        vmkit_hypervisor::kvm::KvmHypervisor::new().expect("/dev/kvm exists but cannot be opened");
    let cpuid = hv.supported_cpuid().unwrap();
    for kernel_file in ["vmlinuz", "vmlinux"] {
        let vm = hv.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (512 * MIB) as usize)]).unwrap();
        let (kernel, _) = boot(&mem, &images, kernel_file);
        configure_vcpu(vcpu.as_ref(), &mem, 0, 2, &cpuid, Some(&kernel)).unwrap();
        let regs = vcpu.regs().unwrap();
        let sregs = vcpu.sregs().unwrap();
        assert_eq!(regs.rip, kernel.entry.0, "{kernel_file}: RIP");
        assert_eq!(regs.rflags & 0x200, 0, "{kernel_file}: interrupts off");
        match kernel.protocol {
            BootProtocol::BzImage(_) => {
                // boot.rst, 64-bit boot protocol: long mode, paging on an
                // identity map, RSI = the zero page, CS flat 64-bit code.
                assert_eq!(regs.rsi, 0x7000, "RSI = boot_params");
                assert_eq!(&read_mem(&mem, regs.rsi + 0x202, 4), b"HdrS");
                assert_eq!(sregs.cr0 & 0x8000_0001, 0x8000_0001, "CR0 PG|PE");
                assert_ne!(sregs.efer & (1 << 10), 0, "EFER.LMA");
                assert_eq!(sregs.cs.l, 1, "64-bit CS");
            }
            BootProtocol::Pvh => {
                // PVH: 32-bit protected mode, paging off, EBX = start_info,
                // flat 4 GiB segments.
                assert_eq!(
                    u32::from_le_bytes(read_mem(&mem, regs.rbx, 4).try_into().unwrap()),
                    0x336e_c578
                );
                assert_eq!(sregs.cr0 & 0x8000_0001, 0x1, "CR0 PE, no PG");
                assert_eq!(sregs.cr4 & (1 << 5), 0, "CR4.PAE off");
                assert_eq!(sregs.efer & (1 << 10), 0, "not in long mode");
                assert_eq!((sregs.cs.db, sregs.cs.l), (1, 0), "32-bit CS");
                assert_eq!((sregs.cs.base, sregs.cs.limit), (0, 0xffff_ffff), "flat CS");
                assert_eq!((sregs.ds.base, sregs.ds.limit), (0, 0xffff_ffff), "flat DS");
            }
            BootProtocol::Linux64 => panic!("{kernel_file}: chose the ELF 64-bit entry"),
        }
    }
}
