//! Device interrupts: the IOAPIC routes a pin to the BSP's local APIC, whose
//! vector's gate leads to the CPL0 handler in `cpu` (which acknowledges the
//! virtio-mmio device, counts and sends EOI).
//!
//! The IOAPIC (`0xfec00000`) and the local APIC (`0xfee00000`) are
//! user-mapped by the VMM and emulated in the host kernel, so these
//! accesses are cheaper than exits to the VMM; they happen once per device.

use core::sync::atomic::Ordering;

use crate::cpu::{self, IRQ_PINS, IRQ_VECTOR_BASE, VMKIT_IRQ_COUNT, VMKIT_IRQ_MMIO};

const IOAPIC_BASE: u64 = 0xfec0_0000;
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const IOAPICVER: u32 = 0x01;
const IOREDTBL: u32 = 0x10;
const REDIR_MASKED: u32 = 1 << 16;

const LAPIC_BASE: u64 = 0xfee0_0000;
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_LVT_LINT0: u64 = 0x350;
const SVR_APIC_ENABLE: u32 = 1 << 8;
const SPURIOUS_VECTOR: u32 = 0xff;
const LVT_MASKED: u32 = 1 << 16;

fn reg(addr: u64) -> *mut u32 {
    core::ptr::with_exposed_provenance_mut(addr as usize)
}

fn write(addr: u64, value: u32) {
    // SAFETY: `addr` is a 32-bit register of the IOAPIC or the local APIC
    // page, identity-mapped and user-accessible; the writes program interrupt
    // routing and touch no memory of ours.
    unsafe { reg(addr).write_volatile(value) }
}

fn read(addr: u64) -> u32 {
    // SAFETY: as in `write`; register reads have no side effect here.
    unsafe { reg(addr).read_volatile() }
}

fn ioapic_write(index: u32, value: u32) {
    write(IOAPIC_BASE + IOREGSEL, index);
    write(IOAPIC_BASE + IOWIN, value);
}

fn ioapic_read(index: u32) -> u32 {
    write(IOAPIC_BASE + IOREGSEL, index);
    read(IOAPIC_BASE + IOWIN)
}

/// Masks LINT0 of this CPU's local APIC: KVM's default routing also sends
/// each GSI below 16 to the 8259, whose output reaches LINT0 (ExtINT), and
/// an unprogrammed 8259 would deliver exception vectors.
pub fn mask_lint0() {
    write(LAPIC_BASE + LAPIC_LVT_LINT0, LVT_MASKED);
}

/// Routes IOAPIC `pin` to this CPU (the BSP) as an edge-triggered,
/// active-high, fixed interrupt on vector `IRQ_VECTOR_BASE + pin`, whose
/// handler acknowledges the virtio-mmio device at `mmio_base`. Returns the
/// vector.
pub fn route(pin: u8, mmio_base: u64) -> Result<u8, &'static str> {
    let pin_index = usize::from(pin);
    if pin_index >= IRQ_PINS {
        return Err("irq beyond the pins the guest routes (0..24)");
    }
    let max_entry = (ioapic_read(IOAPICVER) >> 16) & 0xff;
    if u32::from(pin) > max_entry {
        return Err("irq beyond the IOAPIC's redirection entries");
    }
    mask_lint0();
    write(
        LAPIC_BASE + LAPIC_SVR,
        read(LAPIC_BASE + LAPIC_SVR) | SVR_APIC_ENABLE | SPURIOUS_VECTOR,
    );
    VMKIT_IRQ_MMIO[pin_index].store(mmio_base, Ordering::Release);
    VMKIT_IRQ_COUNT[pin_index].store(0, Ordering::Relaxed);
    let vector = IRQ_VECTOR_BASE + pin;
    let entry = IOREDTBL + 2 * u32::from(pin);
    // Physical destination: this CPU's APIC ID. Fixed, edge, active high.
    ioapic_write(entry, REDIR_MASKED);
    ioapic_write(entry + 1, u32::from(cpu::apic_id()) << 24);
    ioapic_write(entry, u32::from(vector));
    Ok(vector)
}

/// Masks IOAPIC `pin` again and forgets its device.
pub fn unroute(pin: u8) {
    if usize::from(pin) < IRQ_PINS {
        ioapic_write(IOREDTBL + 2 * u32::from(pin), REDIR_MASKED);
        VMKIT_IRQ_MMIO[usize::from(pin)].store(0, Ordering::Release);
    }
}

/// Interrupts taken on `pin` since it was routed.
pub fn count(pin: u8) -> u64 {
    VMKIT_IRQ_COUNT
        .get(usize::from(pin))
        .map_or(0, |c| c.load(Ordering::Relaxed))
}
