//! [`KvmHypervisor`]: the `/dev/kvm` system file descriptor.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use kvm_bindings::{KVM_API_VERSION, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

use super::vm::KvmVm;
use crate::{CpuIdEntry, Error, Hypervisor, Result, Vm};

/// Where the KVM device normally lives.
pub const KVM_DEVICE_PATH: &str = "/dev/kvm";

/// Capabilities every VM created by [`KvmHypervisor`] relies on, with the
/// name reported in [`Error::MissingCapability`] when one is absent.
const REQUIRED_CAPABILITIES: &[(Cap, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::SetIdentityMapAddr, "KVM_CAP_SET_IDENTITY_MAP_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
];

/// Checks [`REQUIRED_CAPABILITIES`] with `has`, reporting the first missing.
fn check_capabilities(has: impl Fn(Cap) -> bool) -> Result<()> {
    match REQUIRED_CAPABILITIES.iter().find(|(cap, _)| !has(*cap)) {
        Some((_, name)) => Err(Error::MissingCapability(name)),
        None => Ok(()),
    }
}

/// A hint for the user about why opening the KVM device failed.
fn open_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::ENOENT | libc::ENXIO | libc::ENODEV) => " (is the kvm module loaded?)",
        Some(libc::EACCES | libc::EPERM) => " (add the user to the kvm group or run as root)",
        _ => "",
    }
}

/// The KVM hypervisor, an open `/dev/kvm` (or another KVM device node).
#[derive(Debug)]
pub struct KvmHypervisor {
    kvm: Kvm,
    path: String,
}

impl KvmHypervisor {
    /// Opens [`KVM_DEVICE_PATH`] (`/dev/kvm`). See [`KvmHypervisor::open`].
    pub fn new() -> Result<Self> {
        Self::open(Path::new(KVM_DEVICE_PATH))
    }

    /// Opens the KVM device at `path` and checks its API version.
    ///
    /// # Errors
    ///
    /// - [`Error::Open`] when `open(2)` fails, with a hint for the usual
    ///   causes (no such file: the module is not loaded; permission denied:
    ///   the user is not in the `kvm` group);
    /// - [`Error::NotAHypervisor`] when the file opens but does not answer
    ///   `KVM_GET_API_VERSION` (e.g. `/dev/null` or a regular file);
    /// - [`Error::ApiVersion`] when it answers with a version other than 12;
    /// - [`Error::InvalidArgument`] when `path` contains a NUL byte.
    pub fn open(path: &Path) -> Result<Self> {
        let display = path.display().to_string();
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            Error::InvalidArgument(format!("device path {display:?} contains a NUL byte"))
        })?;
        let kvm = Kvm::new_with_path(&c_path).map_err(|e| {
            let source = io::Error::from(e);
            Error::Open {
                hint: open_hint(&source),
                path: display.clone(),
                source,
            }
        })?;
        let version = kvm.get_api_version();
        if version < 0 {
            // `get_api_version` returns the raw ioctl result; errno is
            // still the ioctl's, as nothing ran in between.
            let source = match io::Error::last_os_error() {
                e if e.raw_os_error().unwrap_or(0) != 0 => e,
                _ => io::Error::other(format!("KVM_GET_API_VERSION returned {version}")),
            };
            return Err(Error::NotAHypervisor {
                path: display,
                source,
            });
        }
        let expected = KVM_API_VERSION as i32;
        if version != expected {
            return Err(Error::ApiVersion {
                path: display,
                found: version,
                expected,
            });
        }
        Ok(KvmHypervisor { kvm, path: display })
    }

    /// The device path this hypervisor was opened from.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The underlying `kvm-ioctls` handle, for what the traits do not cover.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Like [`Hypervisor::create_vm`], but returns the concrete [`KvmVm`].
    ///
    /// Fails with [`Error::MissingCapability`] when KVM lacks one of the
    /// capabilities every vmkit VM uses (user memory, irqchip, PIT2, irqfd,
    /// ioeventfd, TSS and identity map addresses, extended CPUID).
    pub fn create_kvm_vm(&self) -> Result<KvmVm> {
        check_capabilities(|cap| self.kvm.check_extension(cap))?;
        let fd = self
            .kvm
            .create_vm()
            .map_err(|e| Error::ioctl("KVM_CREATE_VM", e))?;
        Ok(KvmVm::new(fd, self.kvm.check_extension(Cap::ReadonlyMem)))
    }
}

impl Hypervisor for KvmHypervisor {
    fn create_vm(&self) -> Result<Arc<dyn Vm>> {
        Ok(Arc::new(self.create_kvm_vm()?))
    }

    /// `KVM_CAP_MAX_VCPUS`, or `KVM_CAP_NR_VCPUS` when that is not
    /// reported (or 4, the KVM API's own fallback).
    fn max_vcpus(&self) -> u32 {
        u32::try_from(self.kvm.get_max_vcpus()).unwrap_or(u32::MAX)
    }

    fn supported_cpuid(&self) -> Result<Vec<CpuIdEntry>> {
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| Error::ioctl("KVM_GET_SUPPORTED_CPUID", e))?;
        Ok(cpuid.as_slice().iter().map(|e| (*e).into()).collect())
    }

    fn supported_msrs(&self) -> Result<Vec<u32>> {
        let list = self
            .kvm
            .get_msr_index_list()
            .map_err(|e| Error::ioctl("KVM_GET_MSR_INDEX_LIST", e))?;
        Ok(list.as_slice().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_capability_is_named() {
        let err = check_capabilities(|cap| cap != Cap::Pit2).unwrap_err();
        assert!(
            matches!(err, Error::MissingCapability("KVM_CAP_PIT2")),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "the hypervisor lacks a required capability: KVM_CAP_PIT2"
        );
        assert!(check_capabilities(|_| true).is_ok());
        // The first missing one in the list is reported.
        let err = check_capabilities(|_| false).unwrap_err();
        assert!(matches!(
            err,
            Error::MissingCapability("KVM_CAP_USER_MEMORY")
        ));
    }

    #[test]
    fn open_hints() {
        let hint = |errno| open_hint(&io::Error::from_raw_os_error(errno));
        assert_eq!(hint(libc::ENOENT), " (is the kvm module loaded?)");
        assert_eq!(
            hint(libc::EACCES),
            " (add the user to the kvm group or run as root)"
        );
        assert_eq!(hint(libc::EBUSY), "");
    }

    #[test]
    fn nul_in_path_is_invalid_argument() {
        let err = KvmHypervisor::open(Path::new("/dev/k\0vm")).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }
}
