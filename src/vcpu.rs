//! Running a vCPU: hand its I/O exits to the buses until it stops, and
//! explain why it stopped.

use vmkit_devices::Bus;
use vmkit_hypervisor::{Vcpu, VcpuExit};
use vmkit_memory::GuestMemoryMmap;
use vmkit_memory::vm_memory::{Bytes, GuestAddress};

/// Runs `vcpu`, dispatching port I/O to `pio` and MMIO to `mmio` (reads of
/// unclaimed addresses return all ones, writes to them are dropped), until
/// an exit the VMM cannot continue from. Returns a one-line description of
/// that exit, with RIP, RSP and the code bytes at RIP.
pub fn run_until_stop(vcpu: &mut dyn Vcpu, pio: &Bus, mmio: &Bus, mem: &GuestMemoryMmap) -> String {
    let why = loop {
        let stop = match vcpu.run() {
            Ok(VcpuExit::IoOut { port, data }) => {
                pio.write(u64::from(port), data);
                None
            }
            Ok(VcpuExit::IoIn { port, data }) => {
                if !pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::MmioWrite { addr, data }) => {
                mmio.write(addr, data);
                None
            }
            Ok(VcpuExit::MmioRead { addr, data }) => {
                if !mmio.read(addr, data) {
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::Interrupted) => None,
            Ok(exit) => Some(describe_exit(&exit)),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = stop {
            break why;
        }
    };
    format!("{why}{}", crash_context(vcpu, mem))
}

/// What a stopping exit means, in words a user can search for.
pub fn describe_exit(exit: &VcpuExit<'_>) -> String {
    match exit {
        VcpuExit::Halt => "halted with interrupts disabled".into(),
        VcpuExit::Shutdown => "triple fault (KVM_EXIT_SHUTDOWN)".into(),
        VcpuExit::InternalError { suberror, data } => format!(
            "{} (KVM_EXIT_INTERNAL_ERROR suberror {suberror}, data {data:x?})",
            if *suberror == 1 {
                "instruction emulation failure"
            } else {
                "internal hypervisor error"
            }
        ),
        VcpuExit::SystemEvent { kind, data } => format!("system event {kind} {data:x?}"),
        VcpuExit::FailEntry { reason, cpu } => {
            format!("entry failed, reason {reason:#x} on host CPU {cpu}")
        }
        VcpuExit::Unsupported(reason) => format!("unhandled exit reason {reason}"),
        other => format!("{other:?}"),
    }
}

/// `" at rip R, rsp S, code bytes at rip: .."` for a crash report.
pub fn crash_context(vcpu: &dyn Vcpu, mem: &GuestMemoryMmap) -> String {
    let Ok(regs) = vcpu.regs() else {
        return String::new();
    };
    let mut code = [0u8; 16];
    // The boot page tables identity-map guest memory, so RIP is a guest
    // physical address as long as the guest kept them.
    let bytes = match mem.read_slice(&mut code, GuestAddress(regs.rip)) {
        Ok(()) => code
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" "),
        Err(_) => "(not in guest memory)".into(),
    };
    format!(
        " at rip {:#x}, rsp {:#x}, code bytes at rip: {bytes}",
        regs.rip, regs.rsp
    )
}
