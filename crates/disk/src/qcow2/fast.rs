//! The entries of the cached L2 tables, readable without the metadata
//! lock, so that the data path maps an allocated cluster with a few atomic
//! loads.
//!
//! The L2 cache ([`super::cache::TableCache`], under the metadata lock)
//! decides which table sits in which slot and which slots are dirty; the
//! tables' entries live here, one array of atomics per slot. Besides the
//! entries, each slot has:
//!
//! - a key: the L1 index whose table the slot holds (and whether that L1
//!   entry has the COPIED flag), or none. A slot is bound to its L1 index
//!   by the locked path once it has looked the table up through the L1
//!   table, and unbound whenever that stops being true;
//! - a `checked` bit per entry: set by the locked path once it has checked
//!   that the entry maps a data cluster inside the file that holds no
//!   metadata, cleared whenever the entry changes or new metadata is
//!   allocated.
//!
//! Writers hold the metadata lock, so there is one at a time. A change to
//! a slot (its key, entries or bits) is a seqlock write section; a reader
//! reads the key, the entries and their bits within a read section and
//! gives up (taking the locked path) when a write section overlapped it,
//! the slot holds another L1 index's table, or an entry is not checked.
//! Entries are not copied out of the slot, so a reader costs no allocation.
//!
//! Like the locked path before it, a reader's answer may go stale as soon
//! as the read section ends (a discard may drop the cluster): the image's
//! I/O gate keeps a freed cluster from being reused until the I/O is done.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};

use super::meta::{COPIED, OFFSET_MASK};

/// The key of an unbound slot.
const UNBOUND: u64 = u64::MAX;
/// Buckets of the L1 index to slot hint.
const HINTS: usize = 64;

/// The storage of one slot, allocated when the slot is first filled.
#[derive(Debug)]
struct Tables {
    entries: Box<[AtomicU64]>,
    checked: Box<[AtomicU64]>,
}

#[derive(Debug)]
struct Slot {
    /// Odd while a write section is in progress.
    seq: AtomicU64,
    /// `l1_index << 1 | copied`, or [`UNBOUND`].
    key: AtomicU64,
    /// Some entry may be checked (only writers look at it).
    any_checked: AtomicBool,
    tables: OnceLock<Tables>,
}

/// A write section of one slot; ends when dropped.
struct Section<'a>(&'a AtomicU64);

impl<'a> Section<'a> {
    fn begin(seq: &'a AtomicU64) -> Self {
        let s = seq.load(Ordering::Relaxed);
        seq.store(s.wrapping_add(1), Ordering::Relaxed);
        // The odd count is visible before any change of the section.
        fence(Ordering::Release);
        Section(seq)
    }
}

impl Drop for Section<'_> {
    fn drop(&mut self) {
        let s = self.0.load(Ordering::Relaxed);
        self.0.store(s.wrapping_add(1), Ordering::Release);
    }
}

/// The cached L2 tables' entries.
#[derive(Debug)]
pub(crate) struct FastL2 {
    slots: Box<[Slot]>,
    /// `l1_index % HINTS` to the slot last bound to such an index.
    hints: Box<[AtomicU32]>,
    /// Entries per table.
    entries: usize,
    cluster_size: u64,
    /// The image is marked corrupt: no writes without the lock.
    corrupt: AtomicBool,
}

impl FastL2 {
    /// Room for `slots` tables of `entries` entries of clusters of
    /// `cluster_size` bytes.
    pub(crate) fn new(slots: usize, entries: usize, cluster_size: u64) -> Self {
        FastL2 {
            slots: (0..slots)
                .map(|_| Slot {
                    seq: AtomicU64::new(0),
                    key: AtomicU64::new(UNBOUND),
                    any_checked: AtomicBool::new(false),
                    tables: OnceLock::new(),
                })
                .collect(),
            hints: (0..HINTS).map(|_| AtomicU32::new(u32::MAX)).collect(),
            entries,
            cluster_size,
            corrupt: AtomicBool::new(false),
        }
    }

    fn tables(&self, slot: usize) -> &Tables {
        self.slots[slot].tables.get_or_init(|| Tables {
            entries: (0..self.entries).map(|_| AtomicU64::new(0)).collect(),
            checked: (0..self.entries.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        })
    }

    // ---- Writers (metadata lock held) ----

    /// Puts a table in `slot`, unbound and unchecked.
    pub(crate) fn fill(&self, slot: usize, table: &[u64]) {
        let t = self.tables(slot);
        let _s = Section::begin(&self.slots[slot].seq);
        self.slots[slot].key.store(UNBOUND, Ordering::Relaxed);
        for (e, &v) in t.entries.iter().zip(table) {
            e.store(v, Ordering::Relaxed);
        }
        for b in t.checked.iter() {
            b.store(0, Ordering::Relaxed);
        }
        self.slots[slot].any_checked.store(false, Ordering::Relaxed);
    }

    /// Entry `i` of the table in `slot`.
    pub(crate) fn get(&self, slot: usize, i: usize) -> u64 {
        self.tables(slot).entries[i].load(Ordering::Relaxed)
    }

    /// The table in `slot`.
    pub(crate) fn table(&self, slot: usize) -> impl Iterator<Item = u64> + '_ {
        self.tables(slot)
            .entries
            .iter()
            .map(|e| e.load(Ordering::Relaxed))
    }

    /// Changes entry `i` of the table in `slot` (unchecking it).
    pub(crate) fn set(&self, slot: usize, i: usize, v: u64) {
        let t = self.tables(slot);
        let _s = Section::begin(&self.slots[slot].seq);
        t.checked[i / 64].fetch_and(!(1 << (i % 64)), Ordering::Relaxed);
        t.entries[i].store(v, Ordering::Relaxed);
    }

    /// Marks entry `i` of `slot` checked: it maps a data cluster inside the
    /// file that holds no metadata. The entry cannot change meanwhile (the
    /// caller holds the lock), so no write section is needed.
    pub(crate) fn set_checked(&self, slot: usize, i: usize) {
        self.slots[slot].any_checked.store(true, Ordering::Relaxed);
        self.tables(slot).checked[i / 64].fetch_or(1 << (i % 64), Ordering::Release);
    }

    /// Unchecks every entry (new metadata may overlap a data cluster of a
    /// corrupt image).
    pub(crate) fn uncheck_all(&self) {
        for slot in self.slots.iter() {
            let Some(t) = slot.tables.get() else {
                continue;
            };
            if !slot.any_checked.swap(false, Ordering::Relaxed) {
                continue;
            }
            let _s = Section::begin(&slot.seq);
            for b in t.checked.iter() {
                b.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Binds `slot` to L1 index `l1_index`, whose entry (with the COPIED
    /// flag `copied`) points at the slot's table; unbinds any other slot
    /// bound to that index.
    pub(crate) fn bind(&self, slot: usize, l1_index: usize, copied: bool) {
        let key = ((l1_index as u64) << 1) | u64::from(copied);
        if self.slots[slot].key.load(Ordering::Relaxed) != key {
            self.unbind_index(l1_index);
            let _s = Section::begin(&self.slots[slot].seq);
            self.slots[slot].key.store(key, Ordering::Relaxed);
        }
        self.hints[l1_index % HINTS].store(slot as u32, Ordering::Relaxed);
    }

    /// Unbinds the slot bound to L1 index `l1_index`, if any: its entry is
    /// about to change.
    pub(crate) fn unbind_index(&self, l1_index: usize) {
        for slot in self.slots.iter() {
            if slot.key.load(Ordering::Relaxed) >> 1 == l1_index as u64 {
                let _s = Section::begin(&slot.seq);
                slot.key.store(UNBOUND, Ordering::Relaxed);
            }
        }
    }

    /// Marks the image corrupt: writes take the locked path (which fails
    /// them).
    pub(crate) fn set_corrupt(&self) {
        self.corrupt.store(true, Ordering::Release);
    }

    // ---- Readers (no lock) ----

    /// Maps up to `want` clusters from entry `first` of L1 index
    /// `l1_index`'s table: the host offset of the first cluster and how many
    /// clusters follow it contiguously, all checked (and for a `write`, all
    /// with COPIED set, under an L1 entry with COPIED set). `None` when the
    /// locked path must answer.
    pub(crate) fn lookup(
        &self,
        l1_index: u64,
        first: usize,
        want: usize,
        write: bool,
    ) -> Option<(u64, usize)> {
        if write && self.corrupt.load(Ordering::Acquire) {
            return None;
        }
        let slot_idx = self.hints[(l1_index % HINTS as u64) as usize].load(Ordering::Relaxed);
        let slot = self.slots.get(slot_idx as usize)?;
        let t = slot.tables.get()?;
        let seq = slot.seq.load(Ordering::Acquire);
        if seq & 1 != 0 {
            return None;
        }
        let key = slot.key.load(Ordering::Relaxed);
        if key == UNBOUND || key >> 1 != l1_index || (write && key & 1 == 0) {
            return None;
        }
        let mut host = 0;
        let mut n = 0;
        while n < want {
            let i = first + n;
            let (Some(e), Some(bits)) = (t.entries.get(i), t.checked.get(i / 64)) else {
                break;
            };
            let e = e.load(Ordering::Relaxed);
            if bits.load(Ordering::Relaxed) & (1 << (i % 64)) == 0 || (write && e & COPIED == 0) {
                break;
            }
            let off = e & OFFSET_MASK;
            if n == 0 {
                host = off;
            } else if off != host + n as u64 * self.cluster_size {
                break;
            }
            n += 1;
        }
        // The loads above happen before the second look at the count.
        fence(Ordering::Acquire);
        if n == 0 || slot.seq.load(Ordering::Relaxed) != seq {
            return None;
        }
        Some((host, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_see_only_bound_checked_entries() {
        let cs = 65536;
        let f = FastL2::new(2, 128, cs);
        let table: Vec<u64> = (0..128).map(|i| (0x10_0000 + i * cs) | COPIED).collect();
        f.fill(1, &table);
        // Unbound, then unchecked: the locked path answers.
        assert_eq!(f.lookup(3, 5, 1, false), None);
        f.bind(1, 3, true);
        assert_eq!(f.lookup(3, 5, 1, false), None);
        for i in 5..9 {
            f.set_checked(1, i);
        }
        assert_eq!(f.lookup(3, 5, 1, false), Some((0x10_0000 + 5 * cs, 1)));
        // A contiguous run stops at the first unchecked entry.
        assert_eq!(f.lookup(3, 5, 10, true), Some((0x10_0000 + 5 * cs, 4)));
        // Another L1 index, even one sharing the hint bucket, misses.
        assert_eq!(f.lookup(3 + HINTS as u64, 5, 1, false), None);
        // A changed entry is unchecked; a run stops at a discontinuity.
        f.set(1, 6, 0x90_0000 | COPIED);
        assert_eq!(f.lookup(3, 5, 3, false), Some((0x10_0000 + 5 * cs, 1)));
        f.set_checked(1, 6);
        assert_eq!(f.lookup(3, 5, 3, false), Some((0x10_0000 + 5 * cs, 1)));
        assert_eq!(f.lookup(3, 6, 1, true), Some((0x90_0000, 1)));
        // Without COPIED in the entry or in the L1 entry, no fast write.
        f.set(1, 7, 0x20_0000);
        f.set_checked(1, 7);
        assert_eq!(f.lookup(3, 7, 1, false), Some((0x20_0000, 1)));
        assert_eq!(f.lookup(3, 7, 1, true), None);
        f.bind(1, 3, false);
        assert_eq!(f.lookup(3, 8, 1, true), None);
        assert_eq!(f.lookup(3, 8, 1, false), Some((0x10_0000 + 8 * cs, 1)));
        // Binding another slot to the index unbinds this one.
        f.fill(0, &table);
        f.bind(0, 3, true);
        f.bind(1, 3 + HINTS, true);
        assert_eq!(f.lookup(3, 8, 1, false), None);
        assert_eq!(
            f.lookup(3 + HINTS as u64, 8, 1, false),
            Some((0x10_0000 + 8 * cs, 1))
        );
        // New metadata unchecks everything; corruption stops fast writes.
        f.uncheck_all();
        assert_eq!(f.lookup(3 + HINTS as u64, 8, 1, false), None);
        f.set_checked(1, 8);
        f.set_corrupt();
        assert_eq!(f.lookup(3 + HINTS as u64, 8, 1, true), None);
        assert!(f.lookup(3 + HINTS as u64, 8, 1, false).is_some());
        // Refilling a slot unbinds it.
        f.fill(1, &table);
        assert_eq!(f.lookup(3 + HINTS as u64, 8, 1, false), None);
    }
}
