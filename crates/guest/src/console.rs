//! Serial console: a `core::fmt::Write` writer on the 16550 at `0x3f8` and a
//! `println!` that keeps lines from different CPUs apart.
//!
//! Every byte is one `out` to the transmit holding register and one exit to
//! the VMM; the line status register is never polled (the VMM's UART is
//! always ready), so print only what is needed.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::cpu;

/// Held while a CPU prints a line.
static LOCK: AtomicBool = AtomicBool::new(false);

/// Writes straight to the UART, without the lock.
pub struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            cpu::outb(cpu::COM1, byte);
        }
        Ok(())
    }
}

/// Prints one line under the console lock. Used by [`println!`].
pub fn print_line(args: fmt::Arguments) {
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    // Serial never fails.
    let _ = Serial.write_fmt(args);
    let _ = Serial.write_str("\n");
    LOCK.store(false, Ordering::Release);
}

/// Releases the console lock whoever holds it. Only for the BSP once every
/// other CPU is parked (an AP reset by INIT in the middle of a line never
/// releases it).
pub fn force_unlock() {
    LOCK.store(false, Ordering::Release);
}

/// Prints a formatted line on the serial console, atomically with respect to
/// the other CPUs.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print_line(format_args!($($arg)*))
    };
}
