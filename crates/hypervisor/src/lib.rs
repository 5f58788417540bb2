//! Hypervisor abstraction for vmkit.
//!
//! Three object-safe traits describe what a virtual machine monitor needs
//! from a hypervisor: [`Hypervisor`] (the host side: capabilities and VM
//! creation), [`Vm`] (guest memory slots, interrupt controller, irqfd and
//! ioeventfd registration, vCPU creation) and [`Vcpu`] (register state and
//! the run loop, which reports a [`VcpuExit`] of this crate's own).
//!
//! No type of the backend crates appears in these traits, so a VMM written
//! against them can run on another backend or on a test double
//! (`test-utils` feature). The KVM backend lives in [`kvm`] behind the
//! default `kvm` feature.

#![cfg_attr(
    feature = "kvm",
    doc = r#"
# Example

Open KVM, create a VM with its interrupt controllers, map memory and
run a vCPU until the guest halts:

```no_run
use vmkit_hypervisor::{Hypervisor, KvmHypervisor, UserMemoryRegion, VcpuExit, Vm};

# fn main() -> Result<(), Box<dyn std::error::Error>> {
let kvm = KvmHypervisor::new()?;
let vm = kvm.create_vm()?;
vm.create_irq_chip()?;
vm.create_pit()?;

// Back the first 2 MiB of guest memory with page-aligned host memory that
// is never freed (a real VMM uses vm-memory's mmap regions).
let layout = std::alloc::Layout::from_size_align(2 << 20, 4096)?;
// SAFETY: the layout has a non-zero size.
let host = unsafe { std::alloc::alloc_zeroed(layout) };
if host.is_null() {
    return Err("out of memory".into());
}
let region = UserMemoryRegion {
    slot: 0,
    guest_phys_addr: 0,
    memory_size: layout.size() as u64,
    userspace_addr: host as u64,
    read_only: false,
};
// SAFETY: `host` is a valid, page-aligned allocation that is never freed.
unsafe { vm.set_user_memory_region(region)? };
// ... load a guest into `host` and set the vCPU's registers ...

let mut vcpu = vm.create_vcpu(0)?;
loop {
    match vcpu.run()? {
        VcpuExit::IoOut { port: 0x3f8, data } => print!("{}", String::from_utf8_lossy(data)),
        VcpuExit::IoIn { data, .. } | VcpuExit::MmioRead { data, .. } => data.fill(0xff),
        VcpuExit::MmioWrite { .. } | VcpuExit::IoOut { .. } | VcpuExit::Interrupted => {}
        VcpuExit::Halt | VcpuExit::Shutdown => break,
        other => return Err(format!("unexpected exit: {other:?}").into()),
    }
}
# Ok(())
# }
```
"#
)]
#![deny(missing_docs)]

pub mod arch;
mod error;
mod traits;

#[cfg(feature = "kvm")]
pub mod kvm;

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

pub use arch::x86_64::{
    CpuIdEntry, DescriptorTable, FpuState, LapicState, MsrEntry, Regs, Segment, SpecialRegs,
};
pub use error::{Error, Result};
pub use traits::{DataMatch, Hypervisor, IoEventAddress, UserMemoryRegion, Vcpu, VcpuExit, Vm};

#[cfg(feature = "kvm")]
pub use kvm::{KvmHypervisor, KvmVcpu, KvmVm};
