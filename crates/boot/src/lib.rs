//! x86_64 boot: long mode vCPU set-up, kernel loading, boot parameters, MP
//! table.
//!
//! This crate turns a kernel image, guest memory and a vCPU count into
//! guest memory contents and initial vCPU state for the Linux 64-bit boot
//! protocol:
//!
//! - [`configure_system`] writes the command line, the zero page with the
//!   e820 map, the MP table, the boot GDT/IDT and the identity-mapping page
//!   tables (where: [`layout`]);
//! - [`load_kernel`] loads an ELF kernel, refusing segments that would
//!   overwrite any of those;
//! - [`configure_vcpu`] sets each vCPU's CPUID, MSRs, FPU and local APIC,
//!   and the boot vCPU's registers for 64-bit entry.
//!
//! It is written against the [`vmkit_hypervisor::Vcpu`] trait and any
//! [`vm_memory::GuestMemoryBackend`].
//!
//! # Example
//!
//! ```no_run
//! use std::fs::File;
//!
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vmkit_hypervisor::{CpuIdEntry, Vcpu};
//!
//! fn boot(
//!     mem: &GuestMemoryMmap<()>,
//!     vcpus: &[Box<dyn Vcpu>],
//!     supported_cpuid: &[CpuIdEntry],
//! ) -> Result<(), Box<dyn std::error::Error>> {
//!     let num_cpus = u8::try_from(vcpus.len())?;
//!     vmkit_boot::configure_system(mem, "console=ttyS0 reboot=k panic=1", num_cpus)?;
//!     let kernel = vmkit_boot::load_kernel(mem, &mut File::open("vmlinux")?)?;
//!     for (index, vcpu) in vcpus.iter().enumerate() {
//!         // Only vCPU 0 starts at the entry point; the others wait for SIPI.
//!         let entry = (index == 0).then_some(kernel.entry);
//!         vmkit_boot::configure_vcpu(
//!             vcpu.as_ref(),
//!             mem,
//!             u8::try_from(index)?,
//!             num_cpus,
//!             supported_cpuid,
//!             entry,
//!         )?;
//!     }
//!     Ok(())
//! }
//! # let _ = GuestAddress(0);
//! ```
#![deny(missing_docs)]

pub mod cpu;
pub mod cpuid;
mod error;
pub mod gdt;
pub mod layout;
pub mod loader;
pub mod mptable;
pub mod paging;
pub mod params;
pub mod regs;

#[cfg(test)]
mod test_vcpu;

pub use cpu::{configure_vcpu, setup_lapic, setup_msrs};
pub use cpuid::{build_cpuid, phys_addr_bits, setup_cpuid};
pub use error::{Error, Result};
pub use loader::{KernelEntry, load_kernel};
pub use mptable::{MAX_CPUS, setup_mptable};
pub use params::{E820Entry, configure_system, e820_entries};
pub use regs::{setup_fpu, setup_regs, setup_sregs};
