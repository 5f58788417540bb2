//! The x86_64 guest physical address layout.
//!
//! ```text
//! 0                 RAM (up to 3 GiB)
//! 0xc000_0000       MMIO hole: device MMIO windows (DEVICE_MMIO_START..DEVICE_MMIO_END)
//! 0xfec0_0000         IOAPIC
//! 0xfee0_0000         local APIC
//! 0x1_0000_0000     RAM above 3 GiB, if any
//! ```

use vm_memory::GuestAddress;

/// First address of the MMIO hole below 4 GiB (3 GiB): RAM stops here.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End (exclusive) of the MMIO hole: RAM beyond 3 GiB resumes at 4 GiB.
pub const MMIO_HOLE_END: u64 = 1 << 32;
/// Size of the MMIO hole (1 GiB).
pub const MMIO_HOLE_SIZE: u64 = MMIO_HOLE_END - MMIO_HOLE_START;

/// First address of the window from which device MMIO ranges are allocated.
pub const DEVICE_MMIO_START: u64 = 0xc000_0000;
/// End (exclusive) of the device MMIO window: the IOAPIC page follows.
pub const DEVICE_MMIO_END: u64 = 0xfec0_0000;
/// Guest physical address of the IOAPIC's registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Guest physical address of the local APIC's registers.
pub const LAPIC_START: u64 = 0xfee0_0000;

/// First interrupt line (IOAPIC pin / GSI) handed out to devices. Pins 0-4
/// are legacy: PIT 0, keyboard 1, PIC cascade 2, COM2 3, COM1 4.
pub const IRQ_BASE: u32 = 5;
/// Last interrupt line handed out to devices (the IOAPIC has 24 pins).
pub const IRQ_MAX: u32 = 23;

// The layout's invariants, checked at compile time.
const _: () = assert!(MMIO_HOLE_START <= DEVICE_MMIO_START && DEVICE_MMIO_START < DEVICE_MMIO_END);
const _: () = assert!(DEVICE_MMIO_END <= IOAPIC_START && IOAPIC_START < LAPIC_START);
const _: () = assert!(LAPIC_START < MMIO_HOLE_END && IRQ_BASE <= IRQ_MAX);

/// Where `size` bytes of guest RAM go: from 0 up to the MMIO hole, and the
/// rest from 4 GiB. Returns one region for sizes up to 3 GiB, two above,
/// none for 0.
///
/// ```
/// use vmkit_memory::layout::{MMIO_HOLE_END, ram_regions};
/// use vmkit_memory::vm_memory::GuestAddress;
///
/// let gib = 1 << 30;
/// assert_eq!(
///     ram_regions(5 * gib),
///     vec![(GuestAddress(0), 3 * gib as usize), (GuestAddress(MMIO_HOLE_END), 2 * gib as usize)]
/// );
/// ```
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, usize)> {
    // vm-memory builds only for 64-bit targets, where `usize` holds any u64.
    if size == 0 {
        Vec::new()
    } else if size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START as usize),
            (
                GuestAddress(MMIO_HOLE_END),
                (size - MMIO_HOLE_START) as usize,
            ),
        ]
    }
}

/// The guest physical address one past the last byte of `size` bytes of
/// RAM laid out by [`ram_regions`], or `None` if it exceeds `u64`.
pub fn ram_end(size: u64) -> Option<u64> {
    if size <= MMIO_HOLE_START {
        Some(size)
    } else {
        size.checked_add(MMIO_HOLE_SIZE)
    }
}

/// The most RAM a guest can have when its physical addresses are
/// `phys_bits` wide (CPUID 0x8000_0008 EAX\[7:0\], between 32 and 52 on
/// x86_64): everything below `1 << phys_bits` except the MMIO hole.
///
/// Returns `None` for a width outside 32..=52.
pub fn max_ram_size(phys_bits: u8) -> Option<u64> {
    if !(32..=52).contains(&phys_bits) {
        return None;
    }
    Some((1u64 << phys_bits) - MMIO_HOLE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn below_the_hole() {
        assert_eq!(ram_regions(256 * MIB), vec![(GuestAddress(0), 0x1000_0000)]);
        assert_eq!(ram_end(256 * MIB), Some(0x1000_0000));
    }

    #[test]
    fn up_to_the_hole() {
        assert_eq!(ram_regions(3 * GIB), vec![(GuestAddress(0), 0xc000_0000)]);
        assert_eq!(ram_end(3 * GIB), Some(0xc000_0000));
    }

    #[test]
    fn above_the_hole() {
        assert_eq!(
            ram_regions(5 * GIB),
            vec![
                (GuestAddress(0), 0xc000_0000),
                (GuestAddress(0x1_0000_0000), 0x8000_0000)
            ]
        );
        assert_eq!(ram_end(5 * GIB), Some(0x1_8000_0000));
        // One page past the hole start.
        assert_eq!(
            ram_regions(3 * GIB + 4096),
            vec![
                (GuestAddress(0), 0xc000_0000),
                (GuestAddress(0x1_0000_0000), 0x1000)
            ]
        );
        assert_eq!(ram_end(3 * GIB + 4096), Some(0x1_0000_1000));
    }

    #[test]
    fn empty_and_overflowing() {
        assert!(ram_regions(0).is_empty());
        assert_eq!(ram_end(0), Some(0));
        assert_eq!(ram_end(u64::MAX), None);
        assert_eq!(ram_end(u64::MAX - MMIO_HOLE_SIZE), Some(u64::MAX));
    }

    #[test]
    fn max_ram_for_phys_bits() {
        assert_eq!(max_ram_size(39), Some((1 << 39) - GIB));
        assert_eq!(max_ram_size(46), Some((1 << 46) - GIB));
        assert_eq!(max_ram_size(52), Some((1 << 52) - GIB));
        assert_eq!(max_ram_size(32), Some(3 * GIB));
        assert_eq!(max_ram_size(31), None);
        assert_eq!(max_ram_size(53), None);
        assert_eq!(max_ram_size(0), None);
    }
}
