//! The minimal guest: a small `no_std` program that checks what a vmkit VMM
//! built for it and reports on the serial port and the exit device.
//!
//! Its source is `crates/guest`; this package's build script builds it, so
//! `cargo build` and `cargo test` always embed an up-to-date [`ELF`].
//!
//! # What the VMM must give it
//!
//! The Linux 64-bit boot protocol, as for a kernel:
//!
//! - every `PT_LOAD` of [`ELF`] loaded at its `p_paddr`: the image at
//!   `0x100000` and the application-processor trampoline at `0x8000`
//!   (SIPI vector `0x08`; the guest uses no other low memory), entry at
//!   `e_entry`;
//! - long mode at CPL0, paging on with `0..4 GiB` identity-mapped by 2 MiB
//!   pages whose entries have the User bit set at every level (the guest runs
//!   at CPL3 and touches the zero page, the MP table and the local APIC
//!   page), the page tables below 4 GiB; RSI = zero page (`boot_params`),
//!   interrupts off, EFER = LME | LMA;
//! - `vmkit.mem_mib=<M> vmkit.cpus=<N>` on the command line (M = guest RAM in
//!   MiB, N = vCPUs), the e820 map in the zero page adding up to exactly M
//!   MiB with no RAM in the `0xc000_0000..4 GiB` hole, and an MP table
//!   (floating pointer in `0x9fc00..0xa0000` or `0xf0000..0x100000`) listing
//!   the N CPUs;
//! - an in-kernel local APIC per vCPU; the application processors wait for
//!   INIT/SIPI (KVM_RUN may return EAGAIN while they wait);
//! - a 16550 UART at [`SERIAL_PORT`] (only the transmit register is
//!   written; the line status is never polled);
//! - an exit device at [`EXIT_PORT`]: a 4-byte `out` of a status ends the
//!   VM with that status.
//!
//! # What it does
//!
//! The CPL0 part, 21 instructions of assembly on the boot CPU, loads its own
//! GDT, IDT and TSS (whose I/O bitmap opens exactly [`SERIAL_PORT`] and
//! [`EXIT_PORT`] to CPL3) and `iretq`s to CPL3, where every check runs.
//! Each check prints exactly one line, `ok <check>: <detail>` or
//! `FAIL <check>: <why>`, in this order:
//!
//! ```text
//! ok boot-params: zero page at 0x7000, boot_flag 0xaa55, header HdrS, type_of_loader 0xff
//! ok cmdline: <the command line exactly as received>
//! ok e820: <n> entries cover <M> MiB
//! ok mptable: <N> CPUs, BSP apic id <id>
//! ok cpu<k>: online at CPL3 (apic id <id>)        (one per AP, k = 1..N-1, any order)
//! ok smp: <N> of <N> CPUs online
//! guest: <P> passed, <F> failed
//! ```
//!
//! The `cpu<k>` lines are printed by the application processors and are not
//! counted: P + F is always 5. The guest then writes F to [`EXIT_PORT`], so
//! the VM's exit status is 0 exactly when every check passed. A CPU exception
//! prints `FAIL exception: vector <n> error <hex> at rip <hex>` and exits
//! with [`EXIT_EXCEPTION`]; a Rust panic prints `FAIL panic: <message> at
//! <file>:<line>` and exits with [`EXIT_PANIC`].

/// The guest's ELF image (built from `crates/guest` by `build.rs`).
pub const ELF: &[u8] = include_bytes!(env!("VMKIT_GUEST_ELF"));

/// I/O port of the 16550 UART the guest prints on (COM1).
pub const SERIAL_PORT: u16 = 0x3f8;

/// I/O port of the exit device: a 4-byte write of a status ends the VM.
pub const EXIT_PORT: u16 = 0xf4;

/// Exit status after a CPU exception in the guest.
pub const EXIT_EXCEPTION: u32 = 0xff;

/// Exit status after a panic in the guest.
pub const EXIT_PANIC: u32 = 0xfe;

/// Guest-physical address of the application-processor trampoline (SIPI
/// vector `0x08`); the ELF has a `PT_LOAD` there.
pub const TRAMPOLINE_ADDR: u64 = 0x8000;

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(off: usize) -> u16 {
        u16::from_le_bytes(ELF[off..off + 2].try_into().unwrap())
    }
    fn u32_at(off: usize) -> u32 {
        u32::from_le_bytes(ELF[off..off + 4].try_into().unwrap())
    }
    fn u64_at(off: usize) -> u64 {
        u64::from_le_bytes(ELF[off..off + 8].try_into().unwrap())
    }

    /// (p_type, p_paddr, p_filesz, p_memsz) of every program header.
    fn program_headers() -> Vec<(u32, u64, u64, u64)> {
        let (phoff, phentsize, phnum) =
            (u64_at(0x20) as usize, u16_at(0x36) as usize, u16_at(0x38));
        (0..usize::from(phnum))
            .map(|i| {
                let ph = phoff + i * phentsize;
                (
                    u32_at(ph),
                    u64_at(ph + 0x18),
                    u64_at(ph + 0x20),
                    u64_at(ph + 0x28),
                )
            })
            .collect()
    }

    #[test]
    fn elf_is_a_static_x86_64_executable_above_1_mib() {
        assert_eq!(&ELF[..4], b"\x7fELF");
        assert_eq!(ELF[4], 2, "ELFCLASS64");
        assert_eq!(u16_at(0x10), 2, "ET_EXEC");
        assert_eq!(u16_at(0x12), 62, "EM_X86_64");
        assert!(
            u64_at(0x18) >= 0x10_0000,
            "entry {:#x} below 1 MiB",
            u64_at(0x18)
        );
    }

    #[test]
    fn elf_loads_the_image_at_1_mib_and_the_trampoline_at_0x8000() {
        const PT_LOAD: u32 = 1;
        let loads: Vec<_> = program_headers()
            .into_iter()
            .filter(|ph| ph.0 == PT_LOAD)
            .collect();
        let trampoline = loads
            .iter()
            .find(|ph| ph.1 == TRAMPOLINE_ADDR)
            .expect("PT_LOAD at 0x8000");
        assert!(
            trampoline.2 > 0 && trampoline.3 <= 0x1000,
            "trampoline must fit in 0x8000..0x9000"
        );
        assert!(
            loads.iter().any(|ph| ph.1 == 0x10_0000),
            "PT_LOAD at 0x100000"
        );
        for ph in &loads {
            assert!(
                ph.1 == TRAMPOLINE_ADDR || ph.1 >= 0x10_0000,
                "PT_LOAD at {:#x} uses low memory reserved for boot structures",
                ph.1
            );
        }
    }
}
