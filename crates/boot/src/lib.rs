//! x86_64 boot: vCPU set-up, kernel and initrd loading, boot parameters,
//! MP and ACPI tables.
//!
//! This crate turns a kernel image, an initrd, guest memory, a vCPU count
//! and a device list into guest memory contents and initial vCPU state, for
//! three boot protocols ([`BootProtocol`]): PVH for an ELF `vmlinux` with a
//! PVH entry note, the Linux 64-bit boot protocol for other ELF kernels
//! (the minimal test guest) and for bzImages.
//!
//! - [`load_kernel`] loads an ELF kernel or a bzImage and chooses the boot
//!   protocol ([`load_kernel_with`] forces one), refusing anything that
//!   would overwrite a boot structure (where: [`layout`]);
//! - [`load_initrd`] puts an initrd as high as it may go in low RAM;
//! - [`acpi::setup_acpi`] writes the RSDP, XSDT, FADT, MADT and DSDT;
//! - [`configure_system`] writes the command line, the boot parameters
//!   (zero page or PVH `hvm_start_info`) with the e820 map, the initrd and
//!   the RSDP, the MP table, the boot GDT/IDT and the identity-mapping page
//!   tables;
//! - [`configure_vcpu`] sets each vCPU's CPUID, MSRs, FPU and local APIC,
//!   and the boot vCPU's registers for the kernel's entry.
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
//! use vmkit_boot::acpi::{AcpiConfig, AcpiPm, setup_acpi};
//! use vmkit_boot::{BootInfo, configure_system, configure_vcpu, load_initrd, load_kernel};
//! use vmkit_hypervisor::{CpuIdEntry, Vcpu};
//!
//! fn boot(
//!     mem: &GuestMemoryMmap<()>,
//!     vcpus: &[Box<dyn Vcpu>],
//!     supported_cpuid: &[CpuIdEntry],
//!     pm: AcpiPm,
//! ) -> Result<(), Box<dyn std::error::Error>> {
//!     let num_cpus = u8::try_from(vcpus.len())?;
//!     let kernel = load_kernel(mem, &mut File::open("vmlinux")?)?;
//!     let initrd = load_initrd(mem, &mut File::open("initrd.img")?, &kernel)?;
//!     let acpi = AcpiConfig { num_cpus, uart: None, virtio_mmio: Vec::new(), pm };
//!     let boot = BootInfo {
//!         initrd: Some(initrd),
//!         rsdp: Some(setup_acpi(mem, &acpi)?),
//!         ..BootInfo::new(&kernel)
//!     };
//!     configure_system(mem, "console=ttyS0 panic=1", num_cpus, &boot)?;
//!     for (index, vcpu) in vcpus.iter().enumerate() {
//!         // Only vCPU 0 starts at the entry point; the others wait for SIPI.
//!         let entry = (index == 0).then_some(&kernel);
//!         configure_vcpu(
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

pub mod acpi;
pub mod bzimage;
pub mod cpu;
pub mod cpuid;
mod error;
pub mod gdt;
pub mod initrd;
pub mod layout;
pub mod loader;
pub mod mptable;
pub mod paging;
pub mod params;
pub mod pvh;
pub mod regs;

#[cfg(test)]
mod test_vcpu;

pub use cpu::{configure_vcpu, setup_lapic, setup_msrs};
pub use cpuid::{build_cpuid, phys_addr_bits, setup_cpuid};
pub use error::{Error, Result};
pub use initrd::{InitrdRange, load_initrd, place_initrd};
pub use loader::{BootProtocol, KernelEntry, ProtocolChoice, load_kernel, load_kernel_with};
pub use mptable::{MAX_CPUS, setup_mptable};
pub use params::{BootInfo, E820Entry, configure_system, e820_entries};
pub use regs::{setup_fpu, setup_pvh_regs, setup_pvh_sregs, setup_regs, setup_sregs};
