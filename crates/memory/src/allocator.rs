//! Allocation of device MMIO ranges and interrupt lines, on vm-allocator.

use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator, RangeInclusive};

use crate::layout::{DEVICE_MMIO_END, DEVICE_MMIO_START, IRQ_BASE, IRQ_MAX};
use crate::{Error, Result};

/// Hands out the guest resources devices need: MMIO ranges from the device
/// window of the MMIO hole and interrupt lines (IOAPIC pins / GSIs).
///
/// Methods take `&mut self`; a VMM that allocates from several threads
/// wraps it in a `Mutex`.
#[derive(Clone, Debug)]
pub struct SystemAllocator {
    mmio: AddressAllocator,
    irqs: IdAllocator,
}

impl SystemAllocator {
    /// Creates an allocator for the x86_64 layout: MMIO from
    /// [`DEVICE_MMIO_START`] to [`DEVICE_MMIO_END`], interrupt lines
    /// [`IRQ_BASE`] to [`IRQ_MAX`].
    pub fn new() -> Result<Self> {
        Self::with_ranges(
            DEVICE_MMIO_START,
            DEVICE_MMIO_END - DEVICE_MMIO_START,
            IRQ_BASE,
            IRQ_MAX,
        )
    }

    /// Creates an allocator for MMIO `mmio_base .. mmio_base + mmio_size`
    /// and interrupt lines `irq_base ..= irq_max`.
    pub fn with_ranges(
        mmio_base: u64,
        mmio_size: u64,
        irq_base: u32,
        irq_max: u32,
    ) -> Result<Self> {
        Ok(SystemAllocator {
            mmio: AddressAllocator::new(mmio_base, mmio_size).map_err(Error::Allocator)?,
            irqs: IdAllocator::new(irq_base, irq_max).map_err(Error::Allocator)?,
        })
    }

    /// Allocates the lowest free range of `size` bytes whose start is a
    /// multiple of `align` (a power of two).
    ///
    /// Fails with [`Error::MmioExhausted`] when no such range is left and
    /// [`Error::Allocator`] for a zero size or an invalid alignment.
    pub fn allocate_mmio(&mut self, size: u64, align: u64) -> Result<RangeInclusive> {
        self.mmio
            .allocate(size, align, AllocPolicy::FirstMatch)
            .map_err(|e| match e {
                vm_allocator::Error::ResourceNotAvailable => Error::MmioExhausted { size, align },
                e => Error::Allocator(e),
            })
    }

    /// Returns a range from [`SystemAllocator::allocate_mmio`].
    pub fn free_mmio(&mut self, range: &RangeInclusive) -> Result<()> {
        self.mmio.free(range).map_err(Error::Allocator)
    }

    /// Allocates a free interrupt line, the lowest first.
    ///
    /// Fails with [`Error::IrqExhausted`] when every line is in use.
    pub fn allocate_irq(&mut self) -> Result<u32> {
        self.irqs.allocate_id().map_err(|e| match e {
            vm_allocator::Error::ResourceNotAvailable | vm_allocator::Error::Overflow => {
                Error::IrqExhausted
            }
            e => Error::Allocator(e),
        })
    }

    /// Returns an interrupt line from [`SystemAllocator::allocate_irq`].
    pub fn free_irq(&mut self, irq: u32) -> Result<()> {
        self.irqs.free_id(irq).map(drop).map_err(Error::Allocator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 0x1000;

    #[test]
    fn mmio_ranges_are_aligned_disjoint_and_inside_the_window() {
        let mut alloc = SystemAllocator::new().unwrap();
        let mut ranges = Vec::new();
        for (size, align) in [
            (0x200, PAGE),
            (PAGE, PAGE),
            (0x10, 0x10),
            (0x10_0000, 0x10_0000),
            (0x3000, PAGE),
            (PAGE, 0x20_0000),
        ] {
            let r = alloc.allocate_mmio(size, align).unwrap();
            assert_eq!(r.len(), size);
            assert_eq!(r.start() % align, 0, "{r:?} not aligned to {align:#x}");
            assert!(r.start() >= DEVICE_MMIO_START && r.end() < DEVICE_MMIO_END);
            for other in &ranges {
                assert!(!r.overlaps(other), "{r:?} overlaps {other:?}");
            }
            ranges.push(r);
        }
        // First match: the first allocation is at the start of the window.
        assert_eq!(ranges[0].start(), DEVICE_MMIO_START);
    }

    #[test]
    fn mmio_exhaustion_and_free() {
        // A 16 KiB window.
        let mut alloc = SystemAllocator::with_ranges(0xd000_0000, 4 * PAGE, 5, 6).unwrap();
        let all: Vec<_> = (0..4)
            .map(|_| alloc.allocate_mmio(PAGE, PAGE).unwrap())
            .collect();
        assert!(matches!(
            alloc.allocate_mmio(PAGE, PAGE),
            Err(Error::MmioExhausted {
                size: PAGE,
                align: PAGE
            })
        ));
        alloc.free_mmio(&all[2]).unwrap();
        assert_eq!(alloc.allocate_mmio(PAGE, PAGE).unwrap(), all[2]);

        // Larger than the whole window.
        let mut alloc = SystemAllocator::with_ranges(0xd000_0000, 4 * PAGE, 5, 6).unwrap();
        assert!(matches!(
            alloc.allocate_mmio(5 * PAGE, PAGE),
            Err(Error::MmioExhausted { .. })
        ));
        // The default window is 0xc000_0000..0xfec0_0000: 4 GiB does not fit.
        let mut alloc = SystemAllocator::new().unwrap();
        assert!(matches!(
            alloc.allocate_mmio(1 << 32, PAGE),
            Err(Error::MmioExhausted { .. })
        ));
        assert_eq!(
            alloc
                .allocate_mmio(DEVICE_MMIO_END - DEVICE_MMIO_START, PAGE)
                .unwrap()
                .end(),
            DEVICE_MMIO_END - 1
        );
    }

    #[test]
    fn invalid_mmio_requests() {
        let mut alloc = SystemAllocator::new().unwrap();
        assert!(matches!(
            alloc.allocate_mmio(0, PAGE),
            Err(Error::Allocator(vm_allocator::Error::InvalidSize(0)))
        ));
        assert!(matches!(
            alloc.allocate_mmio(PAGE, 3),
            Err(Error::Allocator(vm_allocator::Error::InvalidAlignment))
        ));
        let never = RangeInclusive::new(0xd000_0000, 0xd000_0fff).unwrap();
        assert!(matches!(alloc.free_mmio(&never), Err(Error::Allocator(_))));
    }

    #[test]
    fn irqs_are_distinct_until_exhausted() {
        let mut alloc = SystemAllocator::new().unwrap();
        let irqs: Vec<u32> = (IRQ_BASE..=IRQ_MAX)
            .map(|_| alloc.allocate_irq().unwrap())
            .collect();
        assert_eq!(irqs, (5..=23).collect::<Vec<_>>());
        assert!(matches!(alloc.allocate_irq(), Err(Error::IrqExhausted)));

        alloc.free_irq(9).unwrap();
        assert_eq!(alloc.allocate_irq().unwrap(), 9);
        assert!(matches!(alloc.allocate_irq(), Err(Error::IrqExhausted)));
        // Lines outside the device range are not the allocator's.
        assert!(matches!(alloc.free_irq(4), Err(Error::Allocator(_))));
    }

    #[test]
    fn invalid_ranges_are_rejected() {
        assert!(matches!(
            SystemAllocator::with_ranges(0x1000, 0, 5, 23),
            Err(Error::Allocator(_))
        ));
        assert!(matches!(
            SystemAllocator::with_ranges(0x1000, 0x1000, 23, 5),
            Err(Error::Allocator(_))
        ));
    }
}
