//! vmkit's minimal guest.
//!
//! Booted by a vmkit VMM with the PVH boot protocol (its ELF has the Xen
//! PHYS32_ENTRY note) or the Linux 64-bit boot protocol, it checks what the
//! VMM built (start_info or zero page, command line, e820 map, MP table,
//! ACPI tables: [`acpi`], with the DSDT's AML walked by [`aml`]), starts
//! every CPU, drives its virtio-mmio disks ([`blk`]) and network devices ([`net`],
//! with smoltcp in [`tcpip`]), prints one line per check on the serial port
//! and reports the number of failed checks to the exit device. See
//! `src/guest.rs` in the root package for the protocol as the VMM sees it.
//!
//! CPL0 is assembly in [`cpu`] (kept tiny: kernel-mode guest code is
//! emulated on the hosts this runs on); all checks run at CPL3.
#![no_std]
#![no_main]

mod acpi;
mod aml;
mod blk;
mod bootparams;
mod console;
mod cpu;
mod e820;
mod hostile;
mod irq;
mod mem;
mod mptable;
mod net;
mod pit;
mod pvh;
mod smp;
mod tcpip;
mod virtio;

use core::fmt;

use bootparams::BootParams;
use pvh::StartInfo;

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

/// CPL3 entry of the bootstrap processor, from `cpu`: after the 64-bit boot
/// protocol's entry, `boot` = `tag` = the zero page address the VMM passed in
/// RSI; after the PVH entry, `boot` = the `hvm_start_info` address the VMM
/// passed in EBX and `tag` = [`cpu::PVH_TAG`].
extern "C" fn bsp_main(boot: u64, tag: u64) -> ! {
    let mut r = Report::default();
    // This CPU runs with IF set: keep the 8259's output (LINT0) away first.
    irq::mask_lint0();

    let (cmdline, e820_map, rsdp) = if tag == cpu::PVH_TAG {
        match StartInfo::check(boot, &mut r) {
            Some(si) => {
                let limit = pvh::CMDLINE_MAX.min(mem::MMIO_HOLE_START.saturating_sub(si.cmdline()));
                let cmdline = if mem::readable(si.cmdline(), limit) {
                    bootparams::check_cmdline_at(si.cmdline(), limit, "the PVH limit", &mut r)
                } else {
                    r.fail(
                        "cmdline",
                        format_args!("cmdline_paddr {:#x} is not in low memory", si.cmdline()),
                    )
                };
                (cmdline, Some(si.e820_map()), si.rsdp())
            }
            None => (
                r.fail("cmdline", format_args!("no usable start_info")),
                None,
                0,
            ),
        }
    } else {
        match BootParams::at(boot) {
            Some(bp) => {
                bp.check(&mut r);
                (bp.check_cmdline(&mut r), Some(bp.e820_map()), bp.rsdp())
            }
            None => {
                r.fail::<()>(
                    "boot-params",
                    format_args!("boot_params pointer {boot:#x} is not in low memory"),
                );
                (
                    r.fail("cmdline", format_args!("no usable boot_params")),
                    None,
                    0,
                )
            }
        }
    };
    let param = |key| cmdline.and_then(|line| bootparams::param(line, key));

    e820::check(e820_map, param("vmkit.mem_mib"), &mut r);
    let cpus = mptable::check(param("vmkit.cpus"), &mut r);
    smp::check(cpus.as_ref(), &mut r);
    acpi::check(rsdp, cmdline, cpus.as_ref(), &mut r);
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
