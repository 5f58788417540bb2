//! Everything that runs at CPL0, plus the few instructions Rust needs at CPL3.
//!
//! The CPL0 code is assembly only: on the host this guest is written for,
//! guest kernel-mode code goes through KVM's instruction emulator (about one
//! million instructions a second, and some instructions are not emulated at
//! all). So CPL0 does the least it can: load our own GDT, IDT and TSS, then
//! `iretq` to CPL3, where the Rust code runs natively: 21 instructions from
//! the 64-bit boot protocol's entry (`_start`), 31 from the PVH entry
//! (`vmkit_pvh_start`, named by the image's Xen `PHYS32_ENTRY` note: 12
//! instructions of 32-bit code reach long mode on page tables that are part
//! of the image, 3 more join `_start`'s path).
//!
//! The descriptor tables live at fixed addresses (`linker.ld` places them and
//! asserts the addresses), so the assembler computes every TSS descriptor and
//! IDT gate and CPL0 spends no instructions building tables.
//!
//! Memory map of the image:
//!
//! | address    | what                                                    |
//! |------------|---------------------------------------------------------|
//! | `0x8000`   | AP trampoline (real mode, SIPI vector `0x08`) + saved CR3 |
//! | `0x100000` | [`MAX_CPUS`] TSSs with I/O bitmaps, 256 bytes apart     |
//! | `0x102000` | GDT: null, kernel code, kernel data, user data, user code, TSS descriptors |
//! | `0x102400` | IDT: 32 exception gates, 16 absent, [`IRQ_PINS`] IRQ gates (vectors `0x30..`) |
//! | `0x103000` | 32 exception stubs, then [`IRQ_PINS`] IRQ stubs, 16 bytes apart, then code |
//! | `.rodata`  | the Xen PVH note first (its own `PT_NOTE`)               |
//! | `.data`    | the PVH entry's page tables (PML4, PDPT, 4 PDs: `0..4 GiB` by 2 MiB pages, User) |
//!
//! Device interrupts: IOAPIC pin `p` is routed (by `irq`) to vector
//! [`IRQ_VECTOR_BASE`]` + p`, whose gate leads to a 15-instruction CPL0
//! handler: read the virtio-mmio InterruptStatus of the device registered for
//! that pin in [`VMKIT_IRQ_MMIO`], write it to InterruptACK, count the
//! interrupt in [`VMKIT_IRQ_COUNT`], write the local APIC EOI, `iretq`. Only
//! the BSP takes interrupts: it runs CPL3 with IF set (from its `iretq`
//! frame; `sti` at CPL3 faults on this host), the APs with IF clear.

use core::arch::{asm, global_asm};
use core::sync::atomic::AtomicU64;

/// Most CPUs the guest brings up (one TSS, kernel stack and user stack each).
pub const MAX_CPUS: usize = 32;

/// Kernel code segment (64-bit, DPL 0).
const KERNEL_CS: u16 = 0x08;
/// Kernel data segment.
const KERNEL_DS: u16 = 0x10;
/// User data segment (DPL 3), with RPL 3.
const USER_DS: u16 = 0x18 | 3;
/// User code segment (64-bit, DPL 3), with RPL 3.
const USER_CS: u16 = 0x20 | 3;
/// TSS descriptor of CPU 0; CPU `k`'s is `TSS0_SEL + 16 * k`.
const TSS0_SEL: u16 = 0x28;

/// Where `linker.ld` puts the TSS array (start of `.tables`).
const TSS_BASE: u64 = 0x10_0000;
/// Distance between two TSSs: 104 bytes of TSS, then its I/O permission
/// bitmap up to port 0x3ff and the terminating byte.
const TSS_STRIDE: u64 = 256;
/// TSS limit: 104 + 129 bitmap bytes - 1.
const TSS_LIMIT: u64 = 104 + 0x400 / 8 + 1 - 1;
/// The GDT, right after the TSS array.
const GDT_BASE: u64 = TSS_BASE + MAX_CPUS as u64 * TSS_STRIDE;
/// The IDT.
const IDT_BASE: u64 = GDT_BASE + 0x400;
/// The exception stubs (start of `.text`).
const STUBS_BASE: u64 = 0x10_3000;
/// Start of the IRQ stubs, right after the 32 exception stubs.
const IRQ_STUBS_BASE: u64 = STUBS_BASE + 32 * 16;
/// IOAPIC pins the guest can take interrupts from (KVM's IOAPIC has 24).
pub const IRQ_PINS: usize = 24;
/// Vector of IOAPIC pin 0; pin `p` uses `IRQ_VECTOR_BASE + p`.
pub const IRQ_VECTOR_BASE: u8 = 0x30;
/// The local APIC's EOI register (xAPIC at its default address).
const LAPIC_EOI: u64 = 0xfee0_00b0;
/// Exception vectors for which the CPU pushes an error code.
const ERROR_CODE_VECTORS: u32 = 1 << 8 | 0x1f << 10 | 1 << 17 | 1 << 21 | 1 << 29 | 1 << 30;

/// log2 of the per-CPU kernel stack size (used by exception handlers only).
const KSTACK_SHIFT: u32 = 12;
/// log2 of the per-CPU user stack size (where the Rust code runs).
const USTACK_SHIFT: u32 = 14;

/// CR4: PAE | OSFXSR | OSXMMEXCPT.
const CR4_BITS: u32 = 1 << 5 | 1 << 9 | 1 << 10;
/// CR0 for the APs: PG | NE | ET | MP | PE.
const CR0_AP: u32 = 1 << 31 | 1 << 5 | 1 << 4 | 1 << 1 | 1;
/// RFLAGS of the APs at CPL3: IOPL = 3, IF clear, bit 1 set. (Under PVM the
/// IOPL does not survive the first exit; the TSS I/O bitmap is what lets CPL3
/// `out`.)
const USER_RFLAGS: u64 = 0x3002;
/// RFLAGS of the BSP at CPL3: as [`USER_RFLAGS`] plus IF, so it takes device
/// interrupts (`sti` at CPL3 raises #GP on this host).
const USER_RFLAGS_BSP: u64 = USER_RFLAGS | 1 << 9;

/// Page-table entry of a table: Present | Writable | User.
const PTE_TABLE: u64 = 1 | 1 << 1 | 1 << 2;
/// Page-directory entry of a 2 MiB page: [`PTE_TABLE`] | PageSize.
const PTE_PAGE_2M: u64 = PTE_TABLE | 1 << 7;

/// `bsp_main`'s second argument after the PVH entry (the 64-bit entry
/// passes the zero page address twice instead): not an address, so the two
/// cannot be confused.
pub const PVH_TAG: u64 = u64::MAX;

/// Serial port (16550 THR) used by the exception handler.
pub const COM1: u16 = 0x3f8;
/// Exit device: a 4-byte write of a status ends the VM.
pub const EXIT_PORT: u16 = 0xf4;
/// Exit status after a CPU exception.
pub const EXIT_EXCEPTION: u32 = 0xff;
/// Exit status after a panic.
pub const EXIT_PANIC: u32 = 0xfe;
/// i8254 PIT channel 0..2 data ports and mode port: `0x40..=0x43`.
pub const PIT_PORTS: u16 = 0x40;
/// Port 0x61 (NMI status and control): PIT channel 2 gate (bit 0), speaker
/// enable (bit 1), channel 2 output (bit 5).
pub const PORT_61: u16 = 0x61;

/// For IOAPIC pin `p`, the base of the virtio-mmio device whose interrupts
/// arrive there (0: none; the handler then only sends EOI). Read by the CPL0
/// handler; written by the BSP before it unmasks the pin.
#[unsafe(no_mangle)]
pub static VMKIT_IRQ_MMIO: [AtomicU64; IRQ_PINS] = [const { AtomicU64::new(0) }; IRQ_PINS];
/// Interrupts taken per IOAPIC pin, counted by the CPL0 handler (`incq` on
/// the BSP, the only CPU that takes interrupts and reads these).
#[unsafe(no_mangle)]
pub static VMKIT_IRQ_COUNT: [AtomicU64; IRQ_PINS] = [const { AtomicU64::new(0) }; IRQ_PINS];

const _: () = assert!(GDT_BASE == 0x10_2000 && IDT_BASE == 0x10_2400);
const _: () = assert!((5 + 2 * MAX_CPUS) * 8 <= 0x400, "GDT overlaps the IDT");
const _: () = assert!(
    104 + (COM1 as u64 / 8) + 2 <= TSS_STRIDE,
    "I/O bitmap overflows the TSS slot"
);
const _: () = assert!(
    EXIT_PORT % 8 == 4
        && COM1.is_multiple_of(8)
        && PIT_PORTS.is_multiple_of(8)
        && PORT_61 % 8 == 1
        && PIT_PORTS / 8 < PORT_61 / 8
        && PORT_61 / 8 < EXIT_PORT / 8,
    "bitmap bytes assume these ports"
);
const _: () = assert!(
    (IRQ_VECTOR_BASE as u64 + IRQ_PINS as u64) * 16 <= STUBS_BASE - IDT_BASE - 0x40,
    "IDT overlaps the end of the tables"
);

// The descriptor tables, stacks and the AP ticket.
global_asm!(
    r#"
    .pushsection .vmkit.tables, "aw", @progbits
    .balign 4096

    /*
     * One 64-bit TSS per CPU: RSP0 = top of that CPU's kernel stack, and an
     * I/O permission bitmap that lets CPL3 use exactly the PIT (0x40..0x43),
     * port 0x61 (PIT channel 2 gate and output), the exit device (0xf4..0xf7)
     * and the UART's data register (0x3f8). The bitmap is what
     * makes `out` work at CPL3 here: KVM's emulator consults it, while the
     * IOPL an `iretq` sets does not survive on this (PVM) host.
     */
    .global vmkit_tss
vmkit_tss:
    .set vmkit_i, 0
    .rept {max_cpus}
    .long 0
    .quad vmkit_kstacks + ((vmkit_i + 1) << {kstack_shift})
    .fill 11, 8, 0                  /* rsp1, rsp2, reserved, ist1-7, reserved */
    .word 0
    .word 104                       /* I/O permission bitmap offset */
    .fill {pit} / 8, 1, 0xff        /* bitmap: 1 = port denied */
    .byte 0xf0                      /* ports 0x40..0x43 allowed */
    .fill ({port61} / 8) - ({pit} / 8) - 1, 1, 0xff
    .byte 0xfd                      /* port 0x61 allowed */
    .fill ({exit_port} / 8) - ({port61} / 8) - 1, 1, 0xff
    .byte 0x0f                      /* ports 0xf4..0xf7 allowed */
    .fill ({com1} / 8) - ({exit_port} / 8) - 1, 1, 0xff
    .byte 0xfe                      /* port 0x3f8 allowed */
    .byte 0xff                      /* terminator, within the limit */
    .fill {tss_stride} - 104 - ({com1} / 8) - 2, 1, 0
    .set vmkit_i, vmkit_i + 1
    .endr

    .org {gdt_base} - {tss_base}
vmkit_gdt:
    .quad 0
    .quad 0x00af9b000000ffff        /* 0x08 kernel code, 64-bit */
    .quad 0x00cf93000000ffff        /* 0x10 kernel data */
    .quad 0x00cff3000000ffff        /* 0x18 user data, DPL 3 */
    .quad 0x00affb000000ffff        /* 0x20 user code, 64-bit, DPL 3 */
    .set vmkit_i, 0
    .rept {max_cpus}                /* 0x28 + 16k: available 64-bit TSS k */
    .set vmkit_b, {tss_base} + (vmkit_i * {tss_stride})
    .quad {tss_limit} | ((vmkit_b & 0xffffff) << 16) | (0x89 << 40) | (((vmkit_b >> 24) & 0xff) << 56)
    .quad vmkit_b >> 32
    .set vmkit_i, vmkit_i + 1
    .endr
vmkit_gdt_end:

    .org {idt_base} - {tss_base}
vmkit_idt:
    .set vmkit_i, 0
    .rept 32                        /* interrupt gate, DPL 0, to stub i */
    .set vmkit_h, {stubs_base} + (vmkit_i * 16)
    .quad (vmkit_h & 0xffff) | ({kernel_cs} << 16) | (0x8e << 40) | (((vmkit_h >> 16) & 0xffff) << 48)
    .quad vmkit_h >> 32
    .set vmkit_i, vmkit_i + 1
    .endr
    .fill ({irq_vector_base} - 32) * 2, 8, 0   /* absent: #NP names the vector */
    .set vmkit_i, 0
    .rept {irq_pins}                /* interrupt gate, DPL 0, to IRQ stub i */
    .set vmkit_h, {irq_stubs_base} + (vmkit_i * 16)
    .quad (vmkit_h & 0xffff) | ({kernel_cs} << 16) | (0x8e << 40) | (((vmkit_h >> 16) & 0xffff) << 48)
    .quad vmkit_h >> 32
    .set vmkit_i, vmkit_i + 1
    .endr
vmkit_idt_end:

    .balign 16
    .word 0, 0, 0
vmkit_gdtr:
    .word vmkit_gdt_end - vmkit_gdt - 1
    .quad {gdt_base}
    .word 0, 0, 0
vmkit_idtr:
    .word vmkit_idt_end - vmkit_idt - 1
    .quad {idt_base}
    .popsection

    /*
     * The PVH entry's page tables, complete in the image: 0..4 GiB
     * identity-mapped by 2 MiB pages, Present | Writable | User at every
     * level (CPL3 touches the boot structures, the APICs and the virtio-mmio
     * windows). The VMM's tables serve the 64-bit boot protocol instead.
     */
    .pushsection .data.vmkit_pvh_tables, "aw", @progbits
    .balign 4096
    .global vmkit_pvh_pml4
vmkit_pvh_pml4:
    .quad vmkit_pvh_pdpt + {table_flags}
    .fill 511, 8, 0
vmkit_pvh_pdpt:
    .set vmkit_i, 0
    .rept 4
    .quad vmkit_pvh_pd + (vmkit_i << 12) + {table_flags}
    .set vmkit_i, vmkit_i + 1
    .endr
    .fill 508, 8, 0
vmkit_pvh_pd:
    .set vmkit_i, 0
    .rept 4 * 512
    .quad (vmkit_i << 21) | {page_2m_flags}
    .set vmkit_i, vmkit_i + 1
    .endr
    .popsection

    /*
     * Xen's PHYS32_ENTRY note (public/elfnote.h, XEN_ELFNOTE_PHYS32_ENTRY =
     * 18): the 32-bit physical address of the PVH entry. `linker.ld` gives it
     * a PT_NOTE program header.
     */
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4                         /* namesz: "Xen\0" */
    .long 4                         /* descsz */
    .long 18                        /* type: XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long vmkit_pvh_start
    .popsection

    .pushsection .data.vmkit_ap_ticket, "aw", @progbits
    .balign 4
vmkit_ap_ticket:                    /* next AP's CPU index; the BSP is 0 */
    .long 1
    .popsection

    .pushsection .bss.vmkit_stacks, "aw", @nobits
    .balign 4096
vmkit_kstacks:
    .space ({max_cpus} << {kstack_shift})
vmkit_ustacks:
    .space ({max_cpus} << {ustack_shift})
    .popsection
    "#,
    max_cpus = const MAX_CPUS,
    kstack_shift = const KSTACK_SHIFT,
    tss_stride = const TSS_STRIDE,
    tss_limit = const TSS_LIMIT,
    tss_base = const TSS_BASE,
    com1 = const COM1,
    exit_port = const EXIT_PORT,
    gdt_base = const GDT_BASE,
    idt_base = const IDT_BASE,
    stubs_base = const STUBS_BASE,
    kernel_cs = const KERNEL_CS,
    ustack_shift = const USTACK_SHIFT,
    pit = const PIT_PORTS,
    port61 = const PORT_61,
    irq_vector_base = const IRQ_VECTOR_BASE,
    irq_pins = const IRQ_PINS,
    irq_stubs_base = const IRQ_STUBS_BASE,
    table_flags = const PTE_TABLE,
    page_2m_flags = const PTE_PAGE_2M,
    options(att_syntax),
);

// BSP entry, AP 64-bit entry and the exception handler.
global_asm!(
    r#"
    /* Exception stubs, 16 bytes apart: [push 0,] push vector, jmp common. */
    .pushsection .vmkit.stubs, "ax", @progbits
    .balign 16
    .global vmkit_exception_stubs
vmkit_exception_stubs:
    .set vmkit_i, 0
    .rept 32
    .if ((({error_code_vectors} >> vmkit_i) & 1) == 0)
    .byte 0x6a, 0                   /* push $0: no error code from the CPU */
    .endif
    .byte 0x6a, vmkit_i             /* push $vector */
    jmp vmkit_exception_common
    .balign 16, 0xcc
    .set vmkit_i, vmkit_i + 1
    .endr

    /* IRQ stubs, 16 bytes apart: push %rax, mov $pin, %eax, jmp common. */
    .global vmkit_irq_stubs
vmkit_irq_stubs:
    .set vmkit_i, 0
    .rept {irq_pins}
    .byte 0x50                      /* push %rax */
    .byte 0xb8                      /* mov $pin, %eax */
    .long vmkit_i
    jmp vmkit_irq_common
    .balign 16, 0xcc
    .set vmkit_i, vmkit_i + 1
    .endr
    .popsection

    .pushsection .vmkit.entry, "ax", @progbits
    /*
     * BSP entry (Linux 64-bit boot protocol): long mode, CPL0, %rsi = boot_params.
     * Loads our GDT/IDT/TSS, saves CR3 for the APs, and irets to CPL3 Rust.
     */
    .global _start
_start:
    mov %rsi, %rdi                  /* bsp_main(zero page, zero page) */
    mov %cr4, %rax
    or ${cr4_bits}, %eax
    mov %rax, %cr4
    lgdt vmkit_gdtr(%rip)
vmkit_bsp_common:                   /* %rdi, %rsi: bsp_main's arguments */
    lea vmkit_kstacks + (1 << {kstack_shift})(%rip), %rsp
    lidt vmkit_idtr(%rip)
    mov ${kernel_ds}, %eax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov ${tss0}, %eax
    ltr %ax
    mov %cr3, %rax
    mov %eax, vmkit_ap_cr3(%rip)
    pushq ${user_ds}
    pushq $vmkit_ustacks + (1 << {ustack_shift}) - 8
    pushq ${user_rflags_bsp}
    pushq ${user_cs}
    pushq ${bsp_main}
    iretq

    /*
     * BSP entry (PVH boot protocol, the address in the Xen PHYS32_ENTRY note):
     * 32-bit protected mode, paging off, %ebx = struct hvm_start_info. Our
     * static identity map (vmkit_pvh_pml4), PAE, EFER.LME, CR0.PG|PE, our
     * GDT, a far jump to the 64-bit kernel code segment, then the rest of the
     * BSP entry with bsp_main(start_info, PVH_TAG).
     */
    .code32
    .global vmkit_pvh_start
vmkit_pvh_start:
    mov ${cr4_bits}, %eax
    mov %eax, %cr4
    mov $vmkit_pvh_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx           /* EFER */
    mov $0x100, %eax                /* LME */
    xor %edx, %edx
    wrmsr
    mov ${cr0_ap}, %eax
    mov %eax, %cr0
    lgdtl vmkit_gdtr                /* limit and the low 32 bits of the base */
    ljmpl ${kernel_cs}, $vmkit_pvh_entry64
    .code64
vmkit_pvh_entry64:
    mov %ebx, %edi                  /* zero-extends: the start_info address */
    mov ${pvh_tag}, %rsi
    jmp vmkit_bsp_common

    /*
     * AP entry in 64-bit mode, from the trampoline: take a CPU index from the
     * ticket, switch to that CPU's kernel stack, TSS and user stack, and iret to
     * CPL3 Rust with the index in %rdi.
     */
vmkit_ap_entry64:
    mov ${kernel_ds}, %eax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $1, %eax
    lock xadd %eax, vmkit_ap_ticket(%rip)
    cmp ${max_cpus}, %eax
    jae vmkit_halt
    mov %eax, %edx
    shl ${kstack_shift}, %edx
    lea vmkit_kstacks + (1 << {kstack_shift})(%rdx), %rsp
    lidt vmkit_idtr(%rip)
    mov %eax, %edx
    shl $4, %edx
    add ${tss0}, %edx
    ltr %dx
    mov %eax, %edx
    shl ${ustack_shift}, %edx
    lea vmkit_ustacks + (1 << {ustack_shift}) - 8(%rdx), %rdx
    mov %eax, %edi
    pushq ${user_ds}
    push %rdx
    pushq ${user_rflags}
    pushq ${user_cs}
    pushq ${ap_main}
    iretq

vmkit_halt:
    hlt
    jmp vmkit_halt

    /*
     * Device interrupt on IOAPIC pin %eax (old %rax at (%rsp)). Emulated at
     * CPL0, so 12 instructions (15 with the stub): acknowledge the device's InterruptStatus,
     * count, EOI, back to CPL3.
     */
vmkit_irq_common:
    push %rdx
    mov {irq_mmio}(,%rax,8), %rdx
    incq {irq_count}(,%rax,8)
    test %rdx, %rdx
    jz 1f
    mov 0x60(%rdx), %eax            /* InterruptStatus */
    mov %eax, 0x64(%rdx)            /* InterruptACK */
1:  mov ${lapic_eoi}, %edx
    movl $0, (%rdx)
    pop %rdx
    pop %rax
    iretq

    /*
     * (%rsp) = vector, 8(%rsp) = error code, 16(%rsp) = RIP. Prints
     * "FAIL exception: vector <n> error 0x<e> at rip 0x<rip>" and exits with
     * EXIT_EXCEPTION. Runs emulated at CPL0, so it is short; only on failure.
     */
vmkit_exception_common:
    lea vmkit_msg_vector(%rip), %rsi
    call vmkit_puts
    mov (%rsp), %eax
    xor %edx, %edx
    mov $10, %ecx
    div %ecx
    test %eax, %eax
    jz 1f
    add $48, %al
    call vmkit_putc
1:  lea 48(%rdx), %eax
    call vmkit_putc
    lea vmkit_msg_error(%rip), %rsi
    call vmkit_puts
    mov 8(%rsp), %rax
    call vmkit_puthex
    lea vmkit_msg_rip(%rip), %rsi
    call vmkit_puts
    mov 16(%rsp), %rax
    call vmkit_puthex
    mov $10, %al
    call vmkit_putc
    mov ${exit_exception}, %eax
    mov ${exit_port}, %edx
    out %eax, %dx
    jmp vmkit_halt

    /* %al: byte to print. */
vmkit_putc:
    push %rdx
    mov ${com1}, %edx
    out %al, %dx
    pop %rdx
    ret

    /* %rsi: NUL-terminated string. Clobbers %rax, %rsi. */
vmkit_puts:
1:  mov (%rsi), %al
    test %al, %al
    jz 2f
    call vmkit_putc
    inc %rsi
    jmp 1b
2:  ret

    /* %rax: value, printed as 0x<hex> without leading zeros. Clobbers %rax, %rbx, %rcx, %rsi, %r8. */
vmkit_puthex:
    mov %rax, %rbx
    lea vmkit_msg_0x(%rip), %rsi
    call vmkit_puts
    mov $64, %ecx
    xor %r8d, %r8d
1:  sub $4, %ecx
    mov %rbx, %rax
    shr %cl, %rax
    and $15, %eax
    or %eax, %r8d
    jnz 2f
    test %ecx, %ecx
    jnz 3f
2:  cmp $10, %al
    jb 4f
    add $39, %al
4:  add $48, %al
    call vmkit_putc
3:  test %ecx, %ecx
    jnz 1b
    ret
    .popsection

    .pushsection .rodata.vmkit_messages, "a", @progbits
vmkit_msg_vector: .asciz "FAIL exception: vector "
vmkit_msg_error:  .asciz " error "
vmkit_msg_rip:    .asciz " at rip "
vmkit_msg_0x:     .asciz "0x"
    .popsection

    /*
     * AP trampoline, at 0x8000 = SIPI vector 0x08 << 12. Real mode, IF = 0
     * after INIT. Straight to long mode: CR4.PAE, CR3 (saved by the BSP),
     * EFER.LME, CR0.PG|PE, far jump to the 64-bit kernel code segment.
     */
    .pushsection .vmkit.trampoline, "awx", @progbits
    .code16
    .global vmkit_trampoline
vmkit_trampoline:
    xor %ax, %ax
    mov %ax, %ds
    lgdtl vmkit_trampoline_gdtr
    mov ${cr4_bits}, %eax
    mov %eax, %cr4
    mov vmkit_ap_cr3, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx           /* EFER */
    mov $0x100, %eax                /* LME */
    xor %edx, %edx
    wrmsr
    mov ${cr0_ap}, %eax
    mov %eax, %cr0
    ljmpl ${kernel_cs}, $vmkit_ap_entry64
    .balign 8
    .word 0
vmkit_trampoline_gdtr:
    .word vmkit_gdt_end - vmkit_gdt - 1
    .long {gdt_base}
vmkit_ap_cr3:                       /* written by the BSP before it starts APs */
    .long 0
    .global vmkit_trampoline_end
vmkit_trampoline_end:
    .code64
    .popsection
    "#,
    error_code_vectors = const ERROR_CODE_VECTORS,
    kstack_shift = const KSTACK_SHIFT,
    ustack_shift = const USTACK_SHIFT,
    cr4_bits = const CR4_BITS,
    cr0_ap = const CR0_AP,
    kernel_cs = const KERNEL_CS,
    kernel_ds = const KERNEL_DS,
    user_ds = const USER_DS,
    user_cs = const USER_CS,
    tss0 = const TSS0_SEL,
    user_rflags = const USER_RFLAGS,
    user_rflags_bsp = const USER_RFLAGS_BSP,
    irq_pins = const IRQ_PINS,
    lapic_eoi = const LAPIC_EOI,
    irq_mmio = sym VMKIT_IRQ_MMIO,
    irq_count = sym VMKIT_IRQ_COUNT,
    max_cpus = const MAX_CPUS,
    gdt_base = const GDT_BASE,
    com1 = const COM1,
    exit_port = const EXIT_PORT,
    exit_exception = const EXIT_EXCEPTION,
    pvh_tag = const PVH_TAG,
    bsp_main = sym crate::bsp_main,
    ap_main = sym crate::smp::ap_main,
    options(att_syntax),
);

unsafe extern "C" {
    /// First byte of the AP trampoline (`0x8000`).
    static vmkit_trampoline: u8;
    /// End of the AP trampoline.
    static vmkit_trampoline_end: u8;
    /// First byte of the main image (`0x100000`).
    static vmkit_tss: u8;
    /// End of the main image, `.bss` included (defined by `linker.ld`).
    static __vmkit_image_end: u8;
}

/// The guest-physical ranges the guest occupies: the trampoline and the
/// main image, as `[start, end)`.
pub fn image_ranges() -> [(u64, u64); 2] {
    // Only the addresses of these linker symbols are taken, never their
    // contents, so no unsafe access happens.
    [
        (
            &raw const vmkit_trampoline as u64,
            &raw const vmkit_trampoline_end as u64,
        ),
        (
            &raw const vmkit_tss as u64,
            &raw const __vmkit_image_end as u64,
        ),
    ]
}

/// Writes a byte to an I/O port.
#[inline]
pub fn outb(port: u16, value: u8) {
    // SAFETY: the TSS I/O bitmap lets CPL3 reach only the PIT, port 0x61, the
    // serial port and the exit device, whose writes have no effect on memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
#[inline]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the TSS I/O bitmap lets CPL3 reach only the PIT, port 0x61,
    // the exit device and the UART; reading those touches no memory.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Writes a 32-bit value to an I/O port.
#[inline]
pub fn outl(port: u16, value: u32) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads the time-stamp counter (allowed at CPL3: CR4.TSD is clear).
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects; CR4.TSD is clear at every CPU (the
    // BSP keeps the VMM's CR4 plus our bits, the trampoline writes CR4 whole).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// This CPU's initial local APIC ID (CPUID leaf 1, EBX[31:24]).
#[inline]
pub fn apic_id() -> u8 {
    // CPUID leaf 1 exists on every x86-64 CPU and runs at any CPL.
    let leaf1 = core::arch::x86_64::__cpuid(1);
    (leaf1.ebx >> 24) as u8
}

/// The current privilege level (RPL of CS).
#[inline]
pub fn cpl() -> u16 {
    let cs: u16;
    // SAFETY: reading CS has no side effects.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    cs & 3
}

/// Runs `f` at CPL3 with RSP at `top` (16-byte aligned: the top of a static
/// stack of the caller's, which nothing else uses meanwhile) instead of this
/// CPU's small user stack, and returns on the old stack.
pub fn call_on_stack(top: u64, f: &mut dyn FnMut()) {
    extern "C" fn enter(f: *mut &mut dyn FnMut()) {
        // SAFETY: `f` points at `call_on_stack`'s `f`, alive and not
        // otherwise borrowed during the call.
        unsafe { (*f)() }
    }
    assert!(
        top.is_multiple_of(16),
        "stack top {top:#x} is not 16-byte aligned"
    );
    let mut f = f;
    // SAFETY: the new stack is the caller's, unused by anything else (its
    // contract), mapped and writable like all of `.bss`; RSP is 16-aligned
    // at the `call` as the ABI wants. R12 (callee-saved, so `enter` keeps
    // it) holds the old RSP, restored before the asm block ends, and every
    // register a call may change is declared clobbered. A panic in `f`
    // aborts (no unwinding crosses this frame).
    unsafe {
        asm!(
            "mov r12, rsp",
            "mov rsp, rax",
            "call {enter}",
            "mov rsp, r12",
            enter = sym enter,
            in("rax") top,
            in("rdi") &raw mut f,
            out("r12") _,
            clobber_abi("C"),
        );
    }
}

/// Ends the VM with `status` through the exit device.
pub fn exit(status: u32) -> ! {
    outl(EXIT_PORT, status);
    // The VMM stops this VM on the write; a CPU at CPL3 cannot halt.
    loop {
        core::hint::spin_loop();
    }
}
