//! TSC frequency, measured against the i8254 PIT (KVM's in-kernel one):
//! channel 2, gated through port 0x61, counts down once in mode 0 and its
//! output shows in port 0x61 bit 5 (Linux's `pit_calibrate_tsc`).

use crate::cpu::{self, PIT_PORTS, PORT_61};

/// The PIT's input clock.
const PIT_HZ: u64 = 1_193_182;
/// Calibration interval: 50 ms.
const LATCH: u64 = PIT_HZ / 20;

/// TSC cycles per second, or `None` if the PIT's output never rose.
pub fn tsc_hz() -> Option<u64> {
    let ch2 = PIT_PORTS + 2;
    let mode = PIT_PORTS + 3;
    // Gate channel 2 on, speaker off.
    cpu::outb(PORT_61, (cpu::inb(PORT_61) & !0x02) | 0x01);
    // Channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count), binary.
    cpu::outb(mode, 0b1011_0000);
    cpu::outb(ch2, LATCH as u8);
    cpu::outb(ch2, (LATCH >> 8) as u8);
    let start = cpu::rdtsc();
    // Output goes high at terminal count. Bound: 1 s at 5 GHz.
    while cpu::inb(PORT_61) & 0x20 == 0 {
        if cpu::rdtsc().wrapping_sub(start) > 5_000_000_000 {
            return None;
        }
    }
    let cycles = cpu::rdtsc().wrapping_sub(start);
    Some((u128::from(cycles) * u128::from(PIT_HZ) / u128::from(LATCH)) as u64)
}
