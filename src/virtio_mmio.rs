//! Putting a virtio device on the VM: a virtio-mmio window on the MMIO bus,
//! an interrupt line through irqfd, queue notifications through ioeventfd.
//! This is where the hypervisor meets the virtio crate, which does not know
//! it.

use std::io;
use std::sync::{Arc, Mutex};

use vmkit_devices::Bus;
use vmkit_hypervisor::{DataMatch, IoEventAddress, Vm};
use vmkit_memory::{GuestMemoryMmap, SystemAllocator};
use vmkit_virtio::{MMIO_WINDOW_SIZE, MmioTransport, NotifyRegistrar, VirtioDevice};
use vmm_sys_util::eventfd::EventFd;

use crate::Result;

/// Queue notifications as the hypervisor's ioeventfds, so a guest's
/// notification never returns to the VMM's vCPU thread.
#[derive(Clone)]
pub struct IoEventNotifier(pub Arc<dyn Vm>);

impl NotifyRegistrar for IoEventNotifier {
    fn register(&self, fd: &EventFd, addr: u64, datamatch: u32) -> io::Result<()> {
        let (addr, dm) = (IoEventAddress::Mmio(addr), DataMatch::U32(datamatch));
        self.0
            .register_ioevent(fd, addr, dm)
            .map_err(io::Error::other)
    }

    fn unregister(&self, fd: &EventFd, addr: u64, datamatch: u32) -> io::Result<()> {
        let (addr, dm) = (IoEventAddress::Mmio(addr), DataMatch::U32(datamatch));
        self.0
            .unregister_ioevent(fd, addr, dm)
            .map_err(io::Error::other)
    }
}

/// Where a virtio-mmio device ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioSlot {
    /// Base of its 4 KiB register window.
    pub base: u64,
    /// Its interrupt line (GSI).
    pub irq: u32,
}

impl VirtioMmioSlot {
    /// The kernel command-line argument that announces the device, in the
    /// form Linux's virtio_mmio driver reads (`virtio_mmio.device=`).
    pub fn cmdline_arg(&self) -> String {
        format!("virtio_mmio.device=4K@{:#x}:{}", self.base, self.irq)
    }
}

/// Puts `device` behind a virtio-mmio window allocated from `alloc`, with
/// its own interrupt line wired as an irqfd.
pub fn attach_virtio_mmio(
    device: Box<dyn VirtioDevice>,
    vm: &Arc<dyn Vm>,
    mem: &GuestMemoryMmap,
    alloc: &mut SystemAllocator,
    mmio: &Bus,
) -> Result<VirtioMmioSlot> {
    let base = alloc
        .allocate_mmio(MMIO_WINDOW_SIZE, MMIO_WINDOW_SIZE)?
        .start();
    let irq = alloc.allocate_irq()?;
    let irq_evt = EventFd::new(libc::EFD_NONBLOCK)?;
    vm.register_irqfd(&irq_evt, irq)?;
    let notify = Arc::new(IoEventNotifier(vm.clone()));
    let transport = MmioTransport::new(device, mem.clone(), Arc::new(irq_evt), notify, base)?;
    mmio.insert(Arc::new(Mutex::new(transport)), base, MMIO_WINDOW_SIZE)?;
    Ok(VirtioMmioSlot { base, irq })
}
