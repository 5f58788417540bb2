//! An [`EventFd`] as a vm-superio interrupt or event [`Trigger`].

use std::io;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// Signals an [`EventFd`] (adds 1 to its counter) when triggered.
#[derive(Debug)]
pub(crate) struct EventFdTrigger(pub(crate) EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}
