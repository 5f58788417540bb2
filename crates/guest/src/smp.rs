//! Starting the application processors (MP spec 1.4, appendix B.4) and
//! parking them again.
//!
//! The BSP, at CPL3, programs its local APIC through the MMIO page at
//! `0xfee00000` (mapped user-accessible by the VMM): INIT, then two
//! STARTUP IPIs with vector `0x08`, so every AP starts in real mode at
//! `0x8000`, the trampoline in `cpu`. The trampoline takes the AP to CPL3 in
//! [`ap_main`], which prints one line and bumps [`ONLINE`]. Once all have
//! reported (or the wait timed out), the BSP sends each AP an INIT again: an
//! AP at CPL3 cannot halt, and KVM keeps a CPU that got INIT waiting for a
//! SIPI without spinning a host core.

use core::fmt;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use crate::Report;
use crate::console;
use crate::cpu::{self, MAX_CPUS};
use crate::mptable::Cpus;
use crate::println;

/// Spurious-interrupt vector register; bit 8 enables the local APIC.
const LAPIC_SVR: u64 = 0xf0;
const SVR_APIC_ENABLE: u32 = 1 << 8;
const SPURIOUS_VECTOR: u32 = 0xff;
/// Interrupt command register, low half (writing it sends the IPI).
const LAPIC_ICR_LOW: u64 = 0x300;
/// Interrupt command register, high half (destination in bits 31:24).
const LAPIC_ICR_HIGH: u64 = 0x310;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_INIT: u32 = 0b101 << 8 | ICR_LEVEL_ASSERT;
const ICR_STARTUP: u32 = 0b110 << 8 | ICR_LEVEL_ASSERT;
/// STARTUP vector: the AP starts at `0x08 << 12` = `0x8000`.
const SIPI_VECTOR: u32 = 0x08;

/// No TSC here runs faster than this: minimum delays are computed with it.
const TSC_HZ_MAX: u64 = 5_000_000_000;
/// Nor slower than this: timeouts are computed with it.
const TSC_HZ_MIN: u64 = 1_000_000_000;
/// How long the BSP waits for the APs to report, at most.
const STARTUP_TIMEOUT_S: u64 = 5;
/// How long an IPI may stay pending, at most.
const IPI_TIMEOUT_MS: u64 = 100;

/// For each APIC ID, 1 + its CPU's index in the MP table (0: not listed).
/// Written by the BSP before it sends the first IPI.
static CPU_INDEX: [AtomicU8; 256] = [const { AtomicU8::new(0) }; 256];

/// APs that reached CPL3 and printed their line.
static ONLINE: AtomicU32 = AtomicU32::new(0);
/// Which APIC IDs reported, as a 256-bit set.
static REPORTED: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

fn reported(id: u8) -> bool {
    REPORTED[usize::from(id / 64)].load(Ordering::Acquire) & 1 << (id % 64) != 0
}

/// Busy-waits at least `us` microseconds (for any TSC up to `TSC_HZ_MAX`).
fn delay_us(us: u64) {
    let cycles = us * (TSC_HZ_MAX / 1_000_000);
    let start = cpu::rdtsc();
    while cpu::rdtsc().wrapping_sub(start) < cycles {
        core::hint::spin_loop();
    }
}

/// The local APIC's registers (xAPIC, MMIO).
struct LocalApic {
    base: u64,
}

impl LocalApic {
    fn reg(&self, offset: u64) -> *mut u32 {
        core::ptr::with_exposed_provenance_mut((self.base + offset) as usize)
    }

    fn read(&self, offset: u64) -> u32 {
        // SAFETY: `base` is the 4 KiB-aligned local APIC page below 4 GiB
        // (checked in `check`), identity-mapped and user-accessible; `offset`
        // is one of the aligned 32-bit registers above.
        unsafe { self.reg(offset).read_volatile() }
    }

    fn write(&self, offset: u64, value: u32) {
        // SAFETY: as in `read`; the registers written only enable the APIC
        // and send IPIs, which touch no memory of ours.
        unsafe { self.reg(offset).write_volatile(value) }
    }

    /// Sends `icr` to `apic_id` and waits for delivery; false on timeout.
    fn ipi(&self, apic_id: u8, icr: u32) -> bool {
        self.write(LAPIC_ICR_HIGH, u32::from(apic_id) << 24);
        self.write(LAPIC_ICR_LOW, icr);
        let start = cpu::rdtsc();
        while self.read(LAPIC_ICR_LOW) & ICR_DELIVERY_PENDING != 0 {
            if cpu::rdtsc().wrapping_sub(start) > IPI_TIMEOUT_MS * (TSC_HZ_MIN / 1000) {
                return false;
            }
            core::hint::spin_loop();
        }
        true
    }
}

/// CPL3 entry of an application processor. `ticket` is the order in which
/// it reached the trampoline (1..), which chose its stacks and TSS; it
/// names itself `cpu<k>` after its index `k` in the MP table.
pub extern "C" fn ap_main(ticket: u64) -> ! {
    let id = cpu::apic_id();
    let cpl = cpu::cpl();
    match CPU_INDEX[usize::from(id)].load(Ordering::Acquire) {
        0 => println!("FAIL cpu?: apic id {id} (ticket {ticket}) is not in the MP table"),
        _ if cpl != 3 => println!("FAIL cpu?: apic id {id} runs at CPL{cpl}, expected CPL3"),
        k => {
            println!("ok cpu{}: online at CPL3 (apic id {id})", k - 1);
            REPORTED[usize::from(id / 64)].fetch_or(1 << (id % 64), Ordering::Release);
            ONLINE.fetch_add(1, Ordering::Release);
        }
    }
    // The BSP parks us with INIT.
    loop {
        core::hint::spin_loop();
    }
}

/// The APIC IDs of `cpus` that did not report, for a FAIL line.
struct Missing<'a>(&'a Cpus);

impl fmt::Display for Missing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for &id in self.0.apic_ids() {
            if id != self.0.bsp() && !reported(id) {
                write!(f, "{sep}{id}")?;
                sep = ", ";
            }
        }
        Ok(())
    }
}

/// Check `smp`: start every AP the MP table lists and wait for each to
/// report from CPL3; then park them.
pub fn check(cpus: Option<&Cpus>, r: &mut Report) -> Option<()> {
    const CHECK: &str = "smp";
    let Some(cpus) = cpus else {
        return r.fail(
            CHECK,
            format_args!("no valid MP table to take the CPU list from"),
        );
    };
    let n = cpus.apic_ids().len();
    if n == 1 {
        r.pass(CHECK, format_args!("1 of 1 CPUs online"));
        return Some(());
    }
    if n > MAX_CPUS {
        return r.fail(
            CHECK,
            format_args!("{n} CPUs listed, the guest supports {MAX_CPUS}"),
        );
    }
    let base = cpus.lapic();
    if base % 4096 != 0 || base >= crate::mem::MMIO_HOLE_END {
        return r.fail(
            CHECK,
            format_args!("local APIC address {base:#x} is unusable"),
        );
    }
    for (i, &id) in cpus.apic_ids().iter().enumerate() {
        // `n <= MAX_CPUS`, so `i + 1` fits.
        CPU_INDEX[usize::from(id)].store(i as u8 + 1, Ordering::Release);
    }
    let lapic = LocalApic { base };
    lapic.write(
        LAPIC_SVR,
        lapic.read(LAPIC_SVR) | SVR_APIC_ENABLE | SPURIOUS_VECTOR,
    );

    let aps = || {
        cpus.apic_ids()
            .iter()
            .copied()
            .filter(|&id| id != cpus.bsp())
    };
    for id in aps() {
        if !lapic.ipi(id, ICR_INIT) {
            return r.fail(CHECK, format_args!("INIT to apic id {id} stayed pending"));
        }
    }
    delay_us(10_000);
    for _ in 0..2 {
        for id in aps() {
            if !lapic.ipi(id, ICR_STARTUP | SIPI_VECTOR) {
                return r.fail(
                    CHECK,
                    format_args!("STARTUP to apic id {id} stayed pending"),
                );
            }
        }
        delay_us(200);
    }

    let expected = (n - 1) as u32;
    let start = cpu::rdtsc();
    while ONLINE.load(Ordering::Acquire) < expected
        && cpu::rdtsc().wrapping_sub(start) < STARTUP_TIMEOUT_S * TSC_HZ_MIN
    {
        core::hint::spin_loop();
    }
    let online = 1 + ONLINE.load(Ordering::Acquire) as usize;

    let mut parked = true;
    for id in aps() {
        parked &= lapic.ipi(id, ICR_INIT);
    }
    // Every AP is in wait-for-SIPI now: none can hold the console lock.
    console::force_unlock();

    if online != n {
        return r.fail(
            CHECK,
            format_args!(
                "{online} of {n} CPUs online; no report from apic id {}",
                Missing(cpus)
            ),
        );
    }
    if !parked {
        return r.fail(
            CHECK,
            format_args!("{online} of {n} CPUs online, but parking INIT stayed pending"),
        );
    }
    r.pass(CHECK, format_args!("{online} of {n} CPUs online"));
    Some(())
}
