//! vmkit's minimal guest.
//!
//! Booted by a vmkit VMM with the Linux 64-bit boot protocol, it checks what
//! the VMM built (zero page, command line, e820 map, MP table), starts every
//! CPU, drives its virtio-mmio disks ([`blk`]) and network devices ([`net`],
//! with smoltcp in [`tcpip`]), prints one line per check on the serial port
//! and reports the number of failed checks to the exit device. See
//! `src/guest.rs` in the root package for the protocol as the VMM sees it.
//!
//! CPL0 is assembly in [`cpu`] (kept tiny: kernel-mode guest code is
//! emulated on the hosts this runs on); all checks run at CPL3.
#![no_std]
#![no_main]

mod blk;
mod bootparams;
mod console;
mod cpu;
mod e820;
mod irq;
mod mem;
mod mptable;
mod net;
mod pit;
mod smp;
mod tcpip;
mod virtio;

use core::fmt;

use bootparams::BootParams;

/// Counts and prints the outcome of each check.
#[derive(Default)]
pub struct Report {
    passed: u32,
    failed: u32,
}

impl Report {
    /// Prints `ok <check>: <detail>`.
    pub fn pass(&mut self, check: &str, detail: fmt::Arguments) {
        println!("ok {check}: {detail}");
        self.passed += 1;
    }

    /// Prints `FAIL <check>: <why>`; returns `None` so a check can
    /// `return r.fail(...)`.
    pub fn fail<T>(&mut self, check: &str, why: fmt::Arguments) -> Option<T> {
        println!("FAIL {check}: {why}");
        self.failed += 1;
        None
    }
}

/// CPL3 entry of the bootstrap processor, from `_start` in `cpu`, with the
/// zero page address the VMM passed in RSI.
extern "C" fn bsp_main(boot_params: u64) -> ! {
    let mut r = Report::default();
    // This CPU runs with IF set: keep the 8259's output (LINT0) away first.
    irq::mask_lint0();

    let bp = BootParams::at(boot_params);
    match bp {
        Some(bp) => bp.check(&mut r),
        None => {
            r.fail::<()>(
                "boot-params",
                format_args!("boot_params pointer {boot_params:#x} is not in low memory"),
            );
        }
    }
    let cmdline = match bp {
        Some(bp) => bp.check_cmdline(&mut r),
        None => r.fail("cmdline", format_args!("no usable boot_params")),
    };
    let param = |key| cmdline.and_then(|line| bootparams::param(line, key));

    e820::check(bp, param("vmkit.mem_mib"), &mut r);
    let cpus = mptable::check(param("vmkit.cpus"), &mut r);
    smp::check(cpus.as_ref(), &mut r);
    blk::check(cmdline, &mut r);
    tcpip::check(cmdline, &mut r);

    println!("guest: {} passed, {} failed", r.passed, r.failed);
    cpu::exit(r.failed)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    use core::fmt::Write;
    // Without the lock: this CPU may hold it already.
    let mut out = console::Serial;
    let _ = write!(out, "\nFAIL panic: {}", info.message());
    if let Some(at) = info.location() {
        let _ = write!(out, " at {}:{}", at.file(), at.line());
    }
    let _ = out.write_str("\n");
    cpu::exit(cpu::EXIT_PANIC)
}

/// Referenced by the prebuilt `core`; never called with `panic = "abort"`.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
