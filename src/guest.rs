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
//! The CPL0 part, 21 instructions of assembly on the boot CPU, loads its own
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
//! ok boot-params: zero page at 0x7000, boot_flag 0xaa55, header HdrS, type_of_loader 0xff
//! ok cmdline: <the command line exactly as received>
//! ok e820: <n> entries cover <M> MiB
//! ok mptable: <N> CPUs, BSP apic id <id>
//! ok cpu<k>: online at CPL3 (apic id <id>)        (one per AP, k = 1..N-1, any order)
//! ok smp: <N> of <N> CPUs online
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
//! guest: <P> passed, <F> failed
//! ```
//!
//! The `cpu<k>` lines are printed by the application processors and are not
//! counted; neither are the `bench`, `net-tcp-send MiB/s` and `net-stats`
//! lines. Without disks and `vmkit.*` network parameters P + F is always 5;
//! each disk adds 5 (6 if read-only; 1 if `blk-init` fails) plus 1 or 4 per
//! `vmkit.fill`; each net device adds 1 (`net-init`) and net0 one per check
//! asked for; each malformed network parameter adds 1. The guest
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
