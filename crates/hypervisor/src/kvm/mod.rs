//! The KVM backend: [`KvmHypervisor`], [`KvmVm`] and [`KvmVcpu`].
//!
//! This is the only module that names `kvm-ioctls` and `kvm-bindings`
//! types. It maps KVM's structures to this crate's register types
//! (losslessly, see the `convert` module) and KVM's exits to
//! [`VcpuExit`](crate::VcpuExit).
//!
//! ```no_run
//! use vmkit_hypervisor::kvm::KvmHypervisor;
//! use vmkit_hypervisor::{Hypervisor, Vm};
//!
//! # fn main() -> vmkit_hypervisor::Result<()> {
//! let kvm = KvmHypervisor::new()?;
//! let vm = kvm.create_vm()?;
//! vm.create_irq_chip()?;
//! vm.create_pit()?;
//! let vcpu = vm.create_vcpu(0)?;
//! # drop(vcpu);
//! # Ok(())
//! # }
//! ```

mod convert;
mod hypervisor;
mod vcpu;
mod vm;

pub use hypervisor::{KVM_DEVICE_PATH, KvmHypervisor};
pub use vcpu::KvmVcpu;
pub use vm::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS, KvmVm};
