//! A bus dispatching guest accesses to the device whose address range
//! contains them.
//!
//! The same [`Bus`] type serves as the port-I/O bus (addresses are ports)
//! and as the MMIO bus (addresses are guest physical addresses).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::{Error, Result};

/// A device that answers guest accesses to an address range of a [`Bus`].
///
/// `offset` is relative to the base of the range the device was inserted
/// at, and `offset + data.len()` never exceeds the range's length. The
/// length of `data` is the access width the guest used (1, 2, 4 or 8 bytes
/// for instructions; other lengths are possible and must be handled without
/// panicking).
pub trait BusDevice: Send {
    /// Handles a guest read: fills `data` with the bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device on a bus, as shared between the bus and the VMM.
pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

struct BusEntry {
    len: u64,
    device: SharedBusDevice,
}

/// Maps non-overlapping address ranges to devices.
///
/// All methods take `&self`: a bus is shared by the vCPU threads (wrap it in
/// an `Arc`), which dispatch concurrently. Each device is locked only for the
/// duration of its own access, and the bus's map is not locked while a
/// device runs, so a device may insert or remove ranges of the bus it sits
/// on. A device whose mutex was poisoned by a panic keeps being used.
#[derive(Default)]
pub struct Bus {
    devices: RwLock<BTreeMap<u64, BusEntry>>,
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` on the bus at `base .. base + len`.
    ///
    /// Fails if `len` is 0, if `base + len` does not fit in a `u64`, or if
    /// the range overlaps a range already on the bus.
    pub fn insert(&self, device: SharedBusDevice, base: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Err(Error::ZeroLength { base });
        }
        let end = base.checked_add(len).ok_or(Error::Overflow { base, len })?;

        let mut devices = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        // The ranges on the bus do not overlap, so only the last one that
        // starts before `end` can reach into `base .. end`.
        if let Some((&other_base, other)) = devices.range(..end).next_back() {
            let other_end = other_base + other.len;
            if other_end > base {
                return Err(Error::Overlap {
                    base,
                    end,
                    other_base,
                    other_end,
                });
            }
        }
        devices.insert(base, BusEntry { len, device });
        Ok(())
    }

    /// Takes the device whose range starts at `base` off the bus and returns
    /// it, or `None` if no range starts there.
    pub fn remove(&self, base: u64) -> Option<SharedBusDevice> {
        self.devices
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&base)
            .map(|entry| entry.device)
    }

    /// Finds the device whose range holds all of `addr .. addr + len`, with
    /// the offset of `addr` in that range.
    fn resolve(&self, addr: u64, len: usize) -> Option<(SharedBusDevice, u64)> {
        if len == 0 {
            return None;
        }
        let access_end = addr.checked_add(u64::try_from(len).ok()?)?;
        let devices = self.devices.read().unwrap_or_else(PoisonError::into_inner);
        let (&base, entry) = devices.range(..=addr).next_back()?;
        let offset = addr - base;
        // `base + entry.len` was checked at insertion.
        if access_end > base + entry.len {
            return None;
        }
        Some((Arc::clone(&entry.device), offset))
    }

    /// Dispatches a guest read of `data.len()` bytes at `addr`.
    ///
    /// Returns `false`, leaving `data` untouched, when no device's range
    /// holds the whole access (nothing there, an access straddling the end
    /// of a range, or an empty access); the caller decides what the guest
    /// reads then and may log it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                device
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a guest write of `data` at `addr`.
    ///
    /// Returns `false` when no device's range holds the whole access (see
    /// [`Bus::read`]).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                device
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let devices = self.devices.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_list()
            .entries(devices.iter().map(|(&base, entry)| base..base + entry.len))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every access; reads return `offset` in every byte.
    #[derive(Default)]
    struct Recorder {
        reads: Vec<(u64, usize)>,
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            self.reads.push((offset, data.len()));
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn recorder() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn dispatches_with_offsets_relative_to_base() {
        let bus = Bus::new();
        let dev = recorder();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();

        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x3f8, b"a"));
        assert!(bus.write(0x3ff, b"z"));

        let dev = dev.lock().unwrap();
        assert_eq!(dev.reads, vec![(5, 1)]);
        assert_eq!(dev.writes, vec![(0, vec![b'a']), (7, vec![b'z'])]);
    }

    #[test]
    fn dispatches_every_access_size() {
        let bus = Bus::new();
        let dev = recorder();
        bus.insert(dev.clone(), 0xd000_0000, 0x1000).unwrap();

        for size in [1usize, 2, 4, 8] {
            let mut data = vec![0xaa; size];
            assert!(bus.read(0xd000_0010, &mut data));
            assert_eq!(data, vec![0x10; size]);
            assert!(bus.write(0xd000_0ff8, &vec![0x55; size]));
        }
        let dev = dev.lock().unwrap();
        assert_eq!(dev.reads, vec![(0x10, 1), (0x10, 2), (0x10, 4), (0x10, 8)]);
        let sizes: Vec<_> = dev.writes.iter().map(|(o, d)| (*o, d.len())).collect();
        assert_eq!(sizes, vec![(0xff8, 1), (0xff8, 2), (0xff8, 4), (0xff8, 8)]);
    }

    #[test]
    fn boundaries_and_straddling_accesses() {
        let bus = Bus::new();
        let dev = recorder();
        bus.insert(dev.clone(), 0x100, 0x10).unwrap();

        let mut one = [0u8; 1];
        let mut four = [0xccu8; 4];
        // Just below and just past the range.
        assert!(!bus.read(0xff, &mut one));
        assert!(!bus.read(0x110, &mut one));
        assert!(!bus.write(0x110, &[1]));
        // Last byte, last four bytes: dispatched.
        assert!(bus.read(0x10f, &mut one));
        assert!(bus.read(0x10c, &mut four));
        // Straddling the end or the start: not dispatched, data untouched.
        let mut straddle = [0xccu8; 4];
        assert!(!bus.read(0x10e, &mut straddle));
        assert_eq!(straddle, [0xcc; 4]);
        assert!(!bus.write(0xfe, &[1, 2, 3, 4]));
        // Empty accesses are not dispatched.
        assert!(!bus.read(0x100, &mut []));
        assert!(!bus.write(0x100, &[]));
        // Accesses wrapping around the address space.
        assert!(!bus.read(u64::MAX, &mut four));

        let dev = dev.lock().unwrap();
        assert_eq!(dev.reads, vec![(0xf, 1), (0xc, 4)]);
        assert!(dev.writes.is_empty());
    }

    #[test]
    fn adjacent_ranges_go_to_their_own_device() {
        let bus = Bus::new();
        let (a, b) = (recorder(), recorder());
        bus.insert(b.clone(), 0x68, 8).unwrap();
        bus.insert(a.clone(), 0x60, 8).unwrap();

        assert!(bus.write(0x67, &[1]));
        assert!(bus.write(0x68, &[2]));
        // Straddles the boundary of two devices: claimed by neither.
        assert!(!bus.write(0x67, &[3, 4]));

        assert_eq!(a.lock().unwrap().writes, vec![(7, vec![1])]);
        assert_eq!(b.lock().unwrap().writes, vec![(0, vec![2])]);
    }

    #[test]
    fn overlaps_are_rejected() {
        let bus = Bus::new();
        bus.insert(recorder(), 0x100, 0x10).unwrap();

        for (base, len) in [
            (0x100, 0x10), // same range
            (0x108, 1),    // inside
            (0xf0, 0x11),  // reaches the first byte
            (0x10f, 0x10), // starts at the last byte
            (0x0, 0x1000), // covers it
        ] {
            match bus.insert(recorder(), base, len) {
                Err(Error::Overlap {
                    other_base: 0x100,
                    other_end: 0x110,
                    ..
                }) => {}
                other => panic!("{base:#x}+{len:#x}: {other:?}"),
            }
        }
        // Touching ranges are fine.
        bus.insert(recorder(), 0xf0, 0x10).unwrap();
        bus.insert(recorder(), 0x110, 0x10).unwrap();
    }

    #[test]
    fn zero_length_and_overflow_are_rejected() {
        let bus = Bus::new();
        assert!(matches!(
            bus.insert(recorder(), 0x10, 0),
            Err(Error::ZeroLength { base: 0x10 })
        ));
        assert!(matches!(
            bus.insert(recorder(), u64::MAX - 1, 2),
            Err(Error::Overflow { .. })
        ));
        bus.insert(recorder(), u64::MAX - 1, 1).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(u64::MAX - 1, &mut data));
        assert!(!bus.read(u64::MAX, &mut data));
    }

    #[test]
    fn unclaimed_addresses_and_remove() {
        let bus = Bus::new();
        let mut data = [0x5au8; 2];
        assert!(!bus.read(0, &mut data));
        assert_eq!(data, [0x5a; 2]);

        bus.insert(recorder(), 0x1000, 0x100).unwrap();
        assert!(bus.write(0x1000, &[0]));
        assert!(bus.remove(0x1010).is_none());
        assert!(bus.remove(0x1000).is_some());
        assert!(!bus.write(0x1000, &[0]));
        // The range is free again.
        bus.insert(recorder(), 0x1000, 0x100).unwrap();
        assert_eq!(format!("{bus:?}"), "[4096..4352]");
    }

    #[test]
    fn poisoned_device_keeps_working() {
        let bus = Arc::new(Bus::new());
        let dev = recorder();
        bus.insert(dev.clone(), 0, 1).unwrap();
        let poisoner = dev.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("poison the device mutex");
        })
        .join();
        assert!(dev.is_poisoned());
        assert!(bus.write(0, &[7]));
        let dev = dev.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(dev.writes, vec![(0, vec![7])]);
    }

    #[test]
    fn concurrent_dispatch_from_threads() {
        let bus = Arc::new(Bus::new());
        let dev = recorder();
        bus.insert(dev.clone(), 0x0, 0x100).unwrap();
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let bus = Arc::clone(&bus);
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        assert!(bus.write(u64::from(t), &[t]));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(dev.lock().unwrap().writes.len(), 400);
    }
}
