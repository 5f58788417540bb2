//! The minimal guest: a small `no_std` program that checks what a vmkit VMM
//! built for it and reports on the serial port and the exit device.
//!
//! Its source is `crates/guest`; this package's build script builds it, so
//! `cargo build` and `cargo test` always embed an up-to-date [`ELF`].
//!
//! # What the VMM must give it
//!
//! Its ELF can be entered either way a Linux kernel's can; the VMM chooses:
//!
//! - **PVH** (Xen's x86/HVM direct boot ABI): the ELF has a `PT_NOTE` with
//!   the Xen note `XEN_ELFNOTE_PHYS32_ENTRY` (type 18, name `"Xen"`, a
//!   4-byte physical entry address). The boot CPU starts there in 32-bit
//!   protected mode, paging off, flat 4 GiB code and data segments, CPL0,
//!   interrupts off, EBX = physical address of `struct hvm_start_info`
//!   (magic `0x336ec578`, version 1 or later: the guest reads the memory map
//!   from `memmap_paddr`/`memmap_entries`, the command line from
//!   `cmdline_paddr` and the RSDP from `rsdp_paddr`). The VMM builds no page
//!   tables for it: the guest switches to long mode on identity tables that
//!   are part of its image (`0..4 GiB`, 2 MiB pages, User bit set).
//! - **the Linux 64-bit boot protocol**: entry at `e_entry` in long mode at
//!   CPL0, paging on with `0..4 GiB` identity-mapped by 2 MiB pages whose
//!   entries have the User bit set at every level (the guest runs at CPL3
//!   and touches the zero page, the MP table, the ACPI tables and the local
//!   APIC page), the page tables below 4 GiB; RSI = zero page
//!   (`boot_params`, whose `acpi_rsdp_addr` may give the RSDP), interrupts
//!   off, EFER = LME | LMA.
//!
//! Either way:
//!
//! - every `PT_LOAD` of [`ELF`] loaded at its `p_paddr`: the image at
//!   `0x100000` and the application-processor trampoline at `0x8000`
//!   (SIPI vector `0x08`; the guest uses no other low memory);
//! - `vmkit.mem_mib=<M> vmkit.cpus=<N>` on the command line (M = guest RAM in
//!   MiB, N = vCPUs), the e820 map (zero page) or memory map (start_info)
//!   adding up to exactly M MiB with no RAM in the `0xc000_0000..4 GiB` hole,
//!   and an MP table (floating pointer in `0x9fc00..0xa0000` or
//!   `0xf0000..0x100000`) listing the N CPUs;
//! - ACPI tables as Linux reads them: an RSDP (given by the boot structure,
//!   else found on a 16-byte boundary in the EBDA's first KiB or
//!   `0xe0000..0xfffff`) with valid checksums, revision 2 with an XSDT (or
//!   revision 0 with an RSDT), every listed table and the DSDT with a sane
//!   length and a zero checksum; a MADT listing the same N enabled CPUs as
//!   the MP table (local APIC or x2APIC entries), the MP table's local APIC
//!   address and an IOAPIC; a FADT that is HW-reduced (or has a PM1a control
//!   block) and whose X_DSDT (or DSDT) leads to the DSDT; in the DSDT, one
//!   `Device` with `_HID` `"LNRO0005"` (a String or an EISAID) per
//!   `virtio_mmio.device=` argument, whose `_CRS` is a Buffer (not a method)
//!   holding one Memory32Fixed with the same base and size and an Extended
//!   Interrupt (or IRQ) descriptor with the same irq; and, if the FADT has a
//!   sleep control register, a `\_S5_` package. The DSDT's AML is walked, not
//!   evaluated: at namespace level only Scope, Device, Name, Method, Alias,
//!   External, If/Else/While, OpRegion (constant operands), Field,
//!   IndexField, BankField, Processor, PowerResource, ThermalZone, Mutex and
//!   Event may appear (anything else is a `FAIL` naming the opcode);
//! - an in-kernel local APIC per vCPU; the application processors wait for
//!   INIT/SIPI (KVM_RUN may return EAGAIN while they wait);
//! - a 16550 UART at [`SERIAL_PORT`] (only the transmit register is
//!   written; the line status is never polled);
//! - an exit device at [`EXIT_PORT`]: a 4-byte `out` of a status ends the
//!   VM with that status;
//! - guest RAM of at least 4 MiB (the image with its `.bss` ends below
//!   `0x400000`; `linker.ld` asserts it);
//! - for disks (optional): an in-kernel IOAPIC at `0xfec00000` and PIT
//!   (`KVM_CREATE_PIT2`), both user-mapped/reachable like the local APIC, and
//!   one virtio-mmio **version 2** block device per
//!   `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` argument (Linux's
//!   format: size with an optional K/M/G suffix, base and size in C notation
//!   (`0x` hex), irq decimal), its window in `0xc000_0000..4 GiB`, 4 KiB
//!   aligned, at least 512 bytes, user-mapped; irq `n` is GSI `n` = IOAPIC pin
//!   `n` (`n < 24`), raised as an edge (irqfd); QueueNotify should be an
//!   ioeventfd. The i-th virtio-blk device in command-line order is
//!   `disk<i>`;
//! - for networking (optional): virtio-net devices (device ID 1) the same
//!   way, with receive queue 0 and transmit queue 1; the i-th one in
//!   command-line order is `net<i>`. Devices of other types are skipped.
//!
//! # What it does
//!
//! The CPL0 part on the boot CPU is assembly: 21 instructions after the
//! 64-bit entry; 31 after the PVH entry (12 in 32-bit mode to reach long mode
//! on the image's page tables: CR4, CR3, EFER.LME, CR0, GDT, far jump; then
//! 3 to join the 64-bit path). It loads its own
//! GDT, IDT and TSS (whose I/O bitmap opens exactly [`SERIAL_PORT`],
//! [`EXIT_PORT`], the PIT `0x40..=0x43` and port `0x61` to CPL3) and
//! `iretq`s to CPL3 with IF set, where every check runs (the application
//! processors run CPL3 with IF clear). The only other CPL0 code is the
//! device interrupt handler (IOAPIC pin `p` -> vector `0x30 + p`, 15
//! instructions: read the device's InterruptStatus, write InterruptACK, count,
//! local APIC EOI, `iretq`); LINT0 is masked first thing, so the 8259 never
//! delivers. Each check prints exactly one line, `ok <check>: <detail>` or
//! `FAIL <check>: <why>`, in this order:
//!
//! ```text
//! ok boot-params: zero page at 0x7000, boot_flag 0xaa55, header HdrS, type_of_loader 0xff   (64-bit entry)
//! ok pvh: start_info at 0x<a>, version <v>, <n> memmap entries, cmdline at 0x<c>, <m> modules   (PVH entry)
//! ok cmdline: <the command line exactly as received>
//! ok e820: <n> entries cover <M> MiB
//! ok mptable: <N> CPUs, BSP apic id <id>
//! ok cpu<k>: online at CPL3 (apic id <id>)        (one per AP, k = 1..N-1, any order)
//! ok smp: <N> of <N> CPUs online
//! ok acpi: RSDP at 0x<a> rev <r>, XSDT with <n> tables: <signatures in XSDT order> DSDT
//! ok madt: <N> CPUs, IOAPIC at 0x<a>
//! ok fadt: rev <major>.<minor>, HW-reduced, X_DSDT -> DSDT at 0x<a> (<len> bytes)
//! ok acpi-virtio: <k> LNRO0005 devices: 0x<base>:<irq> ...     (DSDT order)
//! ok acpi-s5: sleep control register at <SystemIO|SystemMemory>:0x<a>   (if the FADT has one)
//! then, for each disk<i> in turn:
//! ok blk-init: disk<i> virtio-mmio at 0x<base> irq <n>, features 0x<negotiated>
//! ok blk-read: disk<i> sectors=<capacity> crc32=<8 hex digits>
//! ok blk-get-id: disk<i> "<id>"
//! ok blk-flush: disk<i>
//! ok blk-readonly: disk<i> refused a write with IOERR           (VIRTIO_BLK_F_RO disks only)
//! ok blk-fill: disk<i> sectors <a>..<b> = 0x<bb>                (per vmkit.fill for disk<i>)
//! ok blk-write-zeroes: disk<i> sectors <a>..<b> read back as zeros  (if offered)
//! ok blk-discard: disk<i> sectors <a>..<b> discarded            (if offered)
//! ok blk-refill: disk<i> sectors <a>..<b> = 0x<bb>              (after either of the two)
//! ok blk-irq: disk<i> <n> interrupts for <m> requests
//! ok hostile-disk<i>-<group>: <what the device did>, normal I/O after reset ok   (vmkit.hostile; 12 groups)
//! bench blk-read-4k qd=1 requests=<n> iops=<x> notifications/req=<a.bb> interrupts/req=<c.dd>
//! bench blk-read-4k qd=32 ...                                   (per vmkit.blk-bench=<i>)
//! FAIL net-config: ... / FAIL net-tcp-send: ... / FAIL net-tcp-echo: ...  (malformed values only)
//! then, for each net<i> in turn:
//! ok net-init: net<i> mac <xx:xx:xx:xx:xx:xx> features 0x<negotiated>
//! and, on net0 only, as the parameters ask:
//! ok net-ping: <peer> 5/5 replies, rtt min/avg/max = <a>/<b>/<c> ms    (vmkit.peer)
//! ok net-tcp-send: <n> bytes to <peer>:<port>                          (vmkit.tcp-send)
//! net-tcp-send MiB/s=<x.xx>
//! ok net-tcp-echo: port <p> echoed <n> bytes                           (vmkit.tcp-echo)
//! net-stats: tx <n> pkts <k> notifications, rx <m> pkts (<j> merged) <l> notifications, <i> interrupts, <e> rx errors
//! ok hostile-net<i>-<group>: <what the device did>, normal I/O after reset ok   (vmkit.hostile; 17 groups)
//! guest: <P> passed, <F> failed
//! ```
//!
//! The `cpu<k>` lines are printed by the application processors and are not
//! counted; neither are the `bench`, `net-tcp-send MiB/s` and `net-stats`
//! lines. Without disks and `vmkit.*` network parameters P + F is always 9,
//! plus 1 when the FADT has a sleep control register (`acpi-s5`). For a VMM
//! that describes the same machine both ways, the two entries print the same
//! lines but the first (`boot-params` or `pvh`). The `fadt` line says `PM1a
//! control block` instead of `HW-reduced`, and `DSDT ->` instead of `X_DSDT
//! ->` when X_DSDT is 0, where that is the case. Without ACPI tables the guest prints
//! `FAIL acpi: no RSDP found` and `madt`, `fadt` and `acpi-virtio` fail with
//! `no valid ACPI tables`;
//! each disk adds 5 (6 if read-only; 1 if `blk-init` fails) plus 1 or 4 per
//! `vmkit.fill`, and 12 with `vmkit.hostile`; each net device adds 1
//! (`net-init`), 17 with `vmkit.hostile`, and net0 one per check asked for;
//! each malformed network parameter adds 1. The guest
//! then writes F to [`EXIT_PORT`], so
//! the VM's exit status is 0 exactly when every check passed. A CPU exception
//! prints `FAIL exception: vector <n> error <hex> at rip <hex>` and exits
//! with [`EXIT_EXCEPTION`]; a Rust panic prints `FAIL panic: <message> at
//! <file>:<line>` and exits with [`EXIT_PANIC`].
//!
//! # Disks
//!
//! The driver negotiates `VIRTIO_F_VERSION_1` (required) and, when offered,
//! `VIRTIO_RING_F_EVENT_IDX`, `VIRTIO_BLK_F_SEG_MAX`, `_BLK_SIZE`, `_FLUSH`,
//! `_RO`, `_DISCARD` and `_WRITE_ZEROES` (never `RING_INDIRECT_DESC`), with the
//! spec's sequence (reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK read
//! back, queue 0 of up to 256 entries, config read under ConfigGeneration,
//! DRIVER_OK), and resets each device when its checks are done. Requests
//! are split-ring descriptor chains (header, up to 4 data descriptors,
//! status byte), up to 32 in flight. It notifies (one 32-bit write of 0 to
//! QueueNotify) only when the device's `avail_event` asks for it, polls the
//! used ring in memory, and sets `used_event` to ask for an interrupt only
//! when it finds the used ring empty and is about to wait.
//!
//! - `blk-read`: the CRC-32 (zlib's `crc32`) of the first MiB of the disk, or
//!   all of it if smaller, read as 32 KiB requests, 32 in flight; every status
//!   byte must be OK (a status byte the device never wrote fails).
//! - `blk-get-id`: GET_ID into a 20-byte buffer; printed up to the first NUL,
//!   `"` and `\` escaped, other non-printable bytes as `\xNN`.
//! - `blk-readonly`: an OUT of sector 0 inverted must get IOERR, and sector 0
//!   must read back unchanged. No other write ever goes to a read-only disk.
//! - `vmkit.fill=<i>:<first sector>:<count>:<bb>` (decimal, decimal,
//!   decimal, exactly two hex digits; may repeat): write `0x<bb>` over sectors
//!   `first..first+count` of disk i, FLUSH, read back and compare
//!   (`blk-fill`); then, only inside that range, WRITE_ZEROES and read back
//!   zeros, DISCARD (status OK), and write, flush and verify the byte again
//!   (`blk-refill`), so the range ends holding the byte. A malformed value,
//!   an empty or out-of-range span, a read-only disk or a missing disk is a
//!   `FAIL blk-fill` line. Without `vmkit.fill` no disk is ever modified.
//! - `vmkit.hostile`: after each disk's checks, twelve groups of requests a
//!   malicious driver sends, on a raw queue of 64 entries polled without
//!   interrupts, each followed by a reset, a normal initialisation, a read
//!   of the first 4 KiB (which must match what was read before the first
//!   group) and, on a writable disk with a `vmkit.fill` range, a rewrite
//!   of that range's first sector: `addr` (buffers beyond RAM, in the MMIO
//!   hole, the LAPIC/IOAPIC pages, the device's own window, across the end
//!   of RAM, wrapping the address space), `status` (status bytes the
//!   device cannot write), `loop` (descriptor loops, `next` beyond the
//!   table, nested indirect tables), `long` (a chain through the whole
//!   table and back, indirect tables of 302, 65536 and 1.5 entries),
//!   `len` (zero and 0xffffffff lengths), `dir` (wrong buffer
//!   directions), `sector` (past the end, `sector * 512` overflowing,
//!   discard/write-zeroes ranges), `avail` (avail.idx 71 ahead, then 2000
//!   notifications), `queue` (13 bad queue sizes and ring addresses),
//!   `notify` (notifications of absent queues, before DRIVER_OK, 5000 of
//!   an empty queue), `status-seq` (status writes out of order), `config`
//!   (writes to the config space up to offset 0xefc and to read-only
//!   registers). A request group passes when every request got IOERR or
//!   UNSUPP (OK only where harmless: zero-length, FLUSH) with a used length
//!   within the chain's device-writable bytes, or was left unanswered with
//!   DEVICE_NEEDS_RESET set, and no other guest memory changed. Hostile
//!   writes aim at sectors 0..=10 and the last sectors of the disk.
//! - `vmkit.blk-bench=<i>` (may repeat): after disk i's checks, 4 KiB reads
//!   at 4 KiB-aligned blocks `k * 0x9e3779b9 mod (capacity / 8)`, for one
//!   second each at queue depth 1 and 32, timed with the TSC calibrated
//!   against PIT channel 2 (50 ms, port 0x61 gate/output). `notifications/req`
//!   counts QueueNotify writes, `interrupts/req` interrupts taken, per
//!   completed request. A malformed value, a missing disk, a disk under 4 KiB
//!   or a failed request is a counted `FAIL blk-bench` line.
//!
//! # Network
//!
//! The virtio-net driver negotiates `VIRTIO_F_VERSION_1` (required) and,
//! when offered, `VIRTIO_RING_F_EVENT_IDX`, `VIRTIO_NET_F_MAC`, `_STATUS`
//! and `_MRG_RXBUF`, never a checksum or segmentation offload (frames are
//! at most 1514 bytes; the TCP/IP stack, smoltcp, computes and checks every
//! checksum). Without `VIRTIO_NET_F_MAC` it makes up `02:76:6d:6b:00:<i>`;
//! with `_STATUS`, a link that is not up fails `net-init`. Every frame has
//! the 12-byte `virtio_net_hdr_v1`, all zero on transmit. Receive queue 0
//! (up to 256 entries) is kept full of one-descriptor buffers: 1 KiB with
//! MRG_RXBUF, so a full-size frame arrives in two buffers (`num_buffers` 2)
//! and is put together, else 2 KiB. Transmit queue 1 (up to 64 entries)
//! gets one descriptor per frame, header and frame together. The driver
//! polls both used rings, keeps interrupts suppressed (`used_event` half the
//! index space ahead of what it has consumed; the `interrupts` count should
//! stay near 0), and after each pass of the stack publishes both avail rings
//! and notifies a queue (a 32-bit write of its index to QueueNotify) only
//! when its `avail_event` asks for it. Each device is reset when its checks
//! are done.
//!
//! Parameters (the last of each wins; a malformed one is a counted FAIL
//! line of the check named, and the checks that need it fail too):
//!
//! - `vmkit.ip=A.B.C.D/N`: the guest's address on net0 (dotted decimal
//!   without leading zeros, N in 1..=30, not the subnet's network or
//!   broadcast address); malformed: `FAIL net-config`.
//! - `vmkit.peer=E.F.G.H`: the host end, a unicast address in that subnet
//!   other than the guest's (else `FAIL net-config`). Asks for `net-ping`:
//!   up to 3 ARP requests of the guest's own, 1 s apart, must get the peer's
//!   ARP reply; then 5 ICMP echo requests (identifier `0x766d`, sequence
//!   0..4, 56 bytes `00 01 .. 37`), each sent when the previous was answered
//!   and each answered within 1 s by an echo reply with the same data. RTTs
//!   are TSC-timed (calibrated against PIT channel 2), in ms with three
//!   decimals.
//! - `vmkit.tcp-send=PORT:MIB` (decimal, port 1..=65535, MIB 0..=1048576;
//!   needs `vmkit.ip` and `vmkit.peer`): connect to `peer:PORT` (within
//!   10 s), send MIB MiB of the stream below, close, and wait until the peer
//!   has acknowledged every byte and the FIN. `<n>` is the bytes
//!   acknowledged (MIB * 2^20); MiB/s is n over the time from established
//!   to acknowledged. The stream: xorshift32 with state `0x12345678`; each
//!   step `x ^= x << 13; x ^= x >> 17; x ^= x << 5;` then the 4 bytes of
//!   `x` little-endian, so the stream starts `a5 5a 98 87 a3 24 5b 15`.
//! - `vmkit.tcp-echo=PORT` (needs `vmkit.ip`): listen on PORT, accept one
//!   connection within 20 s, send back every byte received until the peer
//!   closes, then close and wait for the echo and the FIN to be
//!   acknowledged. `<n>` is the bytes echoed.
//!
//! A TCP transfer that acknowledges or receives nothing for 10 s, a reset,
//! or a refused connection is a FAIL line; nothing waits forever. The TCP
//! socket has 64 KiB of receive and 128 KiB of send buffer. The checks run
//! in that order (ping, send, echo) on one smoltcp interface; the
//! `net-stats` line counts frames, QueueNotify writes and interrupts for
//! all of them.
//!
//! `vmkit.hostile` (needs `vmkit.ip` and `vmkit.peer`, else `FAIL
//! hostile-net`): after each device's checks, seventeen groups of chains a
//! malicious driver sends, on a raw queue of 64 entries polled without
//! interrupts (the device's other queue set up well-formed and empty),
//! each followed by a reset, a normal initialisation, an ARP exchange with
//! the peer (up to 3 requests, 1 s each) and one broadcast frame of
//! EtherType 0x88b5 carrying `vmkit-ok net<i>-<group>` (and one such frame,
//! `before`, ahead of the first group): `tx-addr`/`rx-addr` (buffers in the
//! MMIO hole, the LAPIC/IOAPIC pages, the device's own window, beyond and
//! across the end of RAM, wrapping the address space), `tx-len`/`rx-len`
//! (chains shorter than the 12-byte header, frames over 64 KiB, 0xffffffff
//! lengths), `tx-offload` (checksum, TSO, UFO, ECN and unknown GSO requests
//! never negotiated), `tx-dir`/`rx-dir` (device-writable buffers in TX
//! chains, device-readable ones in RX chains), `tx-loop`/`rx-loop`
//! (descriptor loops, `next` beyond the table, nested indirect tables),
//! `tx-long`/`rx-long` (a chain through the whole table and back, indirect
//! tables of 65536 and 1.5 entries and in the hole, a chain over 2^32
//! bytes), `tx-avail`/`rx-avail` (avail.idx 71 ahead of a well-formed
//! chain, then 2000 notifications), and the transport groups `queue` (the
//! 13 bad layouts on each queue), `notify`, `status-seq` and `config` as
//! for disks. No chain of a group is usable: a group passes when every
//! chain came back with used length 0 or stayed unreturned with
//! DEVICE_NEEDS_RESET set, and the device wrote no byte of the group's
//! memory. Frames of hostile TX chains are broadcast with EtherType 0x88b5
//! and carry `vmkit-hostile`: none may reach the wire.

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

/// The guest's AML walker, compiled for the host so that its unit tests
/// run with `cargo test` (the guest itself has no test harness).
#[cfg(test)]
#[path = "../crates/guest/src/aml.rs"]
mod guest_aml;

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

    /// (p_type, p_flags, p_offset, p_filesz) of every program header.
    fn program_header_files() -> Vec<(u32, u32, usize, usize)> {
        let (phoff, phentsize, phnum) =
            (u64_at(0x20) as usize, u16_at(0x36) as usize, u16_at(0x38));
        (0..usize::from(phnum))
            .map(|i| {
                let ph = phoff + i * phentsize;
                (
                    u32_at(ph),
                    u32_at(ph + 4),
                    u64_at(ph + 8) as usize,
                    u64_at(ph + 0x20) as usize,
                )
            })
            .collect()
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

    #[test]
    fn elf_has_a_pvh_entry_note_pointing_into_its_code() {
        const PT_LOAD: u32 = 1;
        const PT_NOTE: u32 = 4;
        const PF_X: u32 = 1;
        const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
        let phs = program_header_files();
        let mut entries = Vec::new();
        for &(_, _, offset, size) in phs.iter().filter(|ph| ph.0 == PT_NOTE) {
            let mut at = offset;
            while at + 12 <= offset + size {
                let (namesz, descsz, kind) =
                    (u32_at(at) as usize, u32_at(at + 4) as usize, u32_at(at + 8));
                let name = &ELF[at + 12..at + 12 + namesz];
                let desc = at + 12 + namesz.next_multiple_of(4);
                if kind == XEN_ELFNOTE_PHYS32_ENTRY && name == b"Xen\0" {
                    assert!(descsz >= 4, "PHYS32_ENTRY descriptor of {descsz} bytes");
                    entries.push(u64::from(u32_at(desc)));
                }
                at = desc + descsz.next_multiple_of(4);
            }
        }
        assert_eq!(entries.len(), 1, "one Xen PHYS32_ENTRY note: {entries:x?}");
        let entry = entries[0];
        assert_ne!(entry, u64_at(0x18), "the PVH entry is the 32-bit one");
        let in_code = program_headers().iter().zip(&phs).any(
            |(&(kind, paddr, filesz, _), &(_, flags, _, _))| {
                kind == PT_LOAD && flags & PF_X != 0 && (paddr..paddr + filesz).contains(&entry)
            },
        );
        assert!(
            in_code,
            "PVH entry {entry:#x} is not in an executable PT_LOAD"
        );
    }

    mod aml {
        use super::super::guest_aml::{Crs, Error, Hid, resources, walk};

        /// `op`, then a PkgLength covering itself and `body`, then `body`.
        fn pkg(op: &[u8], body: &[u8]) -> Vec<u8> {
            let mut v = op.to_vec();
            let len = body.len() + 1;
            if len < 0x40 {
                v.push(len as u8);
            } else {
                let len = len + 1;
                assert!(len < 0x1000);
                v.extend([0x40 | (len & 0xf) as u8, (len >> 4) as u8]);
            }
            v.extend(body);
            v
        }

        fn name(seg: &[u8; 4], data: &[u8]) -> Vec<u8> {
            [&[0x08][..], seg, data].concat()
        }

        fn string(s: &str) -> Vec<u8> {
            [&[0x0d], s.as_bytes(), &[0]].concat()
        }

        /// A resource template buffer: Memory32Fixed(base, 4 KiB), Extended
        /// Interrupt(irq), End Tag.
        fn crs(base: u32, irq: u32) -> Vec<u8> {
            let mut rt = vec![0x86, 9, 0, 1];
            rt.extend(base.to_le_bytes());
            rt.extend(0x1000u32.to_le_bytes());
            rt.extend([0x89, 6, 0, 0x03, 1]);
            rt.extend(irq.to_le_bytes());
            rt.extend([0x79, 0]);
            pkg(&[0x11], &[&[0x0a, rt.len() as u8][..], &rt].concat())
        }

        /// `\_S5_`, then `Scope(\_SB) { Device(V000) {..}; Device(COM1)
        /// {..}; Method(MTHD) {..} }`, as acpi_tables and iasl lay them out.
        fn dsdt() -> (Vec<u8>, usize) {
            let mut aml = name(b"_S5_", &pkg(&[0x12], &[1, 0x0a, 5]));
            aml.insert(1, b'\\');
            let s5_end = aml.len();
            let v000 = [
                &b"V000"[..],
                &name(b"_HID", &string("LNRO0005")),
                &name(b"_UID", &[0x00]),
                &name(b"_CRS", &crs(0xc000_0000, 5)),
            ]
            .concat();
            let com1 = [
                &b"COM1"[..],
                &name(b"_HID", &[0x0c, 0x41, 0xd0, 0x05, 0x01]),
            ]
            .concat();
            let method = pkg(&[0x14], &[&b"MTHD"[..], &[0x00, 0xa4, 0x01]].concat());
            let scope = [
                &b"\\_SB_"[..],
                &pkg(&[0x5b, 0x82], &v000),
                &pkg(&[0x5b, 0x82], &com1),
                &method,
            ]
            .concat();
            aml.extend(pkg(&[0x10], &scope));
            (aml, s5_end)
        }

        #[test]
        fn finds_devices_their_hid_and_crs_and_s5() {
            let (aml, _) = dsdt();
            let mut seen = Vec::new();
            let summary = walk(&aml, &mut |d| seen.push(*d)).unwrap();
            assert_eq!(summary.devices, 2);
            assert_eq!(summary.s5, Some(true));
            assert_eq!(seen[0].name, *b"V000");
            assert_eq!(aml[seen[0].offset..seen[0].offset + 2], [0x5b, 0x82]);
            assert!(matches!(seen[0].hid, Some(Hid::String(b"LNRO0005"))));
            assert!(seen[0].hid.unwrap().is("LNRO0005"));
            let Some(Crs::Buffer(buf)) = seen[0].crs else {
                panic!("V000 has no _CRS buffer");
            };
            let res = resources(buf).unwrap();
            assert_eq!(res.memory, Some((0xc000_0000, 0x1000)));
            assert_eq!(
                (res.memory_count, res.irq(), res.irq_count),
                (1, Some(5), 1)
            );
            assert_eq!(seen[1].name, *b"COM1");
            assert!(seen[1].hid.unwrap().is("PNP0501"), "EISAID decoded");
            assert!(seen[1].crs.is_none());
        }

        #[test]
        fn a_cut_anywhere_inside_a_package_is_an_error_never_a_panic() {
            let (aml, s5_end) = dsdt();
            for len in s5_end + 1..aml.len() {
                let r = walk(&aml[..len], &mut |_| {});
                assert!(r.is_err(), "cut at {len} of {} walked", aml.len());
            }
            assert!(walk(&aml[..s5_end], &mut |_| {}).is_ok());
        }

        #[test]
        fn a_package_longer_than_its_parent_is_truncated() {
            let (mut aml, s5_end) = dsdt();
            // The Scope's PkgLength (2 bytes) claims 16 more bytes.
            aml[s5_end + 1] += 1;
            assert!(matches!(
                walk(&aml, &mut |_| {}),
                Err(Error::Truncated(at)) if at == s5_end + 1
            ));
        }

        #[test]
        fn an_unknown_namespace_opcode_is_named_with_its_offset() {
            let (mut aml, s5_end) = dsdt();
            aml.truncate(s5_end);
            aml.extend([0x70, 0x01, 0x60]); // Store(One, Local0)
            assert!(matches!(
                walk(&aml, &mut |_| {}),
                Err(Error::Unsupported(0x70, at)) if at == s5_end
            ));
        }

        #[test]
        fn resource_templates_need_an_end_tag_and_whole_descriptors() {
            let template = |crs: Vec<u8>| crs[4..].to_vec(); // after 11 <len> 0a <n>
            let good = template(crs(0xd000_0000, 7));
            assert!(resources(&good).is_ok());
            assert!(matches!(
                resources(&good[..good.len() - 2]),
                Err(("no End Tag", _))
            ));
            for len in 1..good.len() - 2 {
                assert!(resources(&good[..len]).is_err(), "cut at {len}");
            }
            let mut bad_count = good.clone();
            bad_count[16] = 2; // Extended Interrupt claims 2 interrupts
            assert!(resources(&bad_count).is_err());
        }
    }
}
