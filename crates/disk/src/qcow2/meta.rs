//! The image's metadata state: header, L1 table, L2 and refcount caches,
//! and the write-back and ordering rules that keep the image consistent
//! on disk after a crash at any point.
//!
//! Ordering, as QEMU's caches have it:
//! - refcount blocks are written (and synced, unless lazy refcounts made
//!   the image dirty) before any L2 table that may point at a cluster they
//!   count;
//! - L2 tables are written and synced before the L1 table that points at
//!   them;
//! - a cluster whose last pointer went away is freed (refcount decreased)
//!   only after the L2/L1 tables without the pointer are synced: frees
//!   wait in `pending_frees` until the next flush.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use vmm_sys_util::fallocate::{FallocateMode, fallocate};

use super::cache::TableCache;
use super::fast::FastL2;
use super::header::{self, Header};
use crate::image::sticky_sync;
use crate::{Error, Result};

/// L1 and L2 entries: the host offset bits.
pub(crate) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Refcount table entries: the host offset bits.
pub(crate) const RT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// L1/L2 entry flag: the refcount is exactly one.
pub(crate) const COPIED: u64 = 1 << 63;
/// L2 entry flag: the cluster is compressed.
pub(crate) const COMPRESSED: u64 = 1 << 62;
/// L2 entry flag (version 3): the cluster reads as zeros.
pub(crate) const ZERO: u64 = 1;

/// How a guest range maps to the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mapping {
    /// Data at this host offset.
    Data(u64),
    /// Reads as zeros.
    Zero,
    /// Not allocated here: the backing file's data, or zeros.
    Unallocated,
    /// A compressed cluster with this L2 entry.
    Compressed(u64),
}

/// Where a write goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteMapping {
    /// Overwrite in place at this host offset (refcount 1, not zero).
    InPlace(u64),
    /// The clusters need allocating (or copying on write).
    Allocate,
}

/// The metadata of an open image.
#[derive(Debug)]
pub(crate) struct Meta {
    pub file: Arc<File>,
    pub path: PathBuf,
    pub hdr: Header,
    pub read_only: bool,
    pub cluster_bits: u32,
    pub cluster_size: u64,
    /// log2 of L2 entries per table.
    pub l2_bits: u32,
    pub rc_order: u32,
    /// log2 of refcount entries per block.
    pub rb_bits: u32,
    pub l1: Vec<u64>,
    pub l1_dirty: bool,
    /// Which L2 table sits in which slot; the entries are in `fast`.
    pub l2: TableCache<()>,
    /// The cached L2 tables' entries, shared with the lock-free data path.
    pub fast: Arc<FastL2>,
    /// The refcount table (kept in memory, written through).
    pub rt: Vec<u64>,
    pub rb: TableCache<Vec<u8>>,
    /// Refcount structures were written since the last sync.
    pub rc_unsynced: bool,
    /// L2 tables were written since the last sync.
    pub l2_unsynced: bool,
    /// Host byte ranges to free at the next flush.
    pub pending_frees: Vec<(u64, u64)>,
    /// No free cluster below this index.
    pub free_hint: u64,
    /// The end of the file, including clusters allocated but not written.
    pub file_end: u64,
    /// Host offsets of the clusters holding metadata, so that no data
    /// write lands on them.
    pub metadata: BTreeSet<u64>,
    /// The image has lazy refcounts and is open writable.
    pub lazy: bool,
    /// We set the dirty bit (lazy refcounts): refcounts may lag.
    pub dirty_set: bool,
    /// The image is (or was found) corrupt: no more writes.
    pub corrupt: bool,
    /// The image has a backing file.
    pub has_backing: bool,
    /// The last decompressed cluster: its L2 entry and data.
    pub decompressed: Option<(u64, Vec<u8>)>,
    /// While refcounts are rebuilt: the references counted.
    pub rebuild: Option<Vec<u16>>,
    /// The error of the first sync that failed.
    pub sync_failed: OnceLock<String>,
}

impl Meta {
    /// An error about the image's contents.
    pub(crate) fn invalid(&self, reason: String) -> Error {
        Error::InvalidImage {
            path: self.path.clone(),
            reason,
        }
    }

    pub(crate) fn write_all(&self, buf: &[u8], off: u64) -> Result<()> {
        self.file.write_all_at(buf, off)?;
        Ok(())
    }

    /// `fdatasync(2)`; once it has failed, it fails for good (see
    /// [`RawImage`](crate::RawImage)'s flush): the metadata and data
    /// written before it may be lost, and no later sync may pretend
    /// otherwise, nor order anything after them.
    pub(crate) fn sync(&self) -> Result<()> {
        sticky_sync(&self.file, &self.sync_failed)
    }

    /// Reads `len` bytes of metadata at `off`; the file must hold them.
    pub(crate) fn read_table(&self, off: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        match self.file.read_exact_at(&mut buf, off) {
            Ok(()) => Ok(buf),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(self.invalid(format!(
                "metadata at {off:#x} ({len} bytes) lies past the end of the file"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads host bytes at `off`, zeros past the end of the file.
    pub(crate) fn read_zero_fill(&self, buf: &mut [u8], off: u64) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], off + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Checks the offset of a table (L2 table or refcount block).
    pub(crate) fn check_table_offset(&self, what: &str, off: u64) -> Result<()> {
        if !off.is_multiple_of(self.cluster_size) {
            return Err(self.invalid(format!("{what} offset {off:#x} is not cluster aligned")));
        }
        if off == 0 || off >= self.file_end {
            return Err(self.invalid(format!(
                "{what} offset {off:#x} is outside the file ({} bytes)",
                self.file_end
            )));
        }
        Ok(())
    }

    /// Frees `off` in the file system (best effort).
    pub(crate) fn punch_hole(&self, off: u64) {
        if self.read_only || off == 0 {
            return;
        }
        let _ = fallocate(
            &*self.file,
            FallocateMode::PunchHole,
            true,
            off,
            self.cluster_size,
        );
    }

    /// Called before the first metadata change: with lazy refcounts, sets
    /// the dirty bit (durably) so that a crash makes the next open rebuild
    /// the refcounts.
    pub(crate) fn begin_metadata_update(&mut self) -> Result<()> {
        if self.read_only || self.corrupt {
            return Err(if self.corrupt {
                Error::MarkedCorrupt {
                    path: self.path.clone(),
                }
            } else {
                Error::ReadOnly
            });
        }
        if self.lazy && !self.dirty_set {
            self.hdr.incompatible |= header::INCOMPAT_DIRTY;
            self.write_all(
                &self.hdr.incompatible.to_be_bytes(),
                header::field::INCOMPATIBLE,
            )?;
            self.sync()?;
            self.dirty_set = true;
        }
        Ok(())
    }

    /// Marks the image corrupt (in the header too) after finding
    /// inconsistent metadata, and returns the error to report.
    pub(crate) fn mark_corrupt(&mut self, reason: String) -> Error {
        log::error!(
            "{}: {reason}; marking the image corrupt",
            self.path.display()
        );
        if !self.read_only && !self.corrupt && self.hdr.version >= 3 {
            self.hdr.incompatible |= header::INCOMPAT_CORRUPT;
            let _ = self.write_all(
                &self.hdr.incompatible.to_be_bytes(),
                header::field::INCOMPATIBLE,
            );
            let _ = self.sync();
        }
        self.corrupt = true;
        self.fast.set_corrupt();
        self.invalid(reason)
    }

    // ---- L2 tables ----

    /// The cache slot of the L2 table at `off`, loading it.
    pub(crate) fn l2_slot(&mut self, off: u64) -> Result<usize> {
        if let Some(s) = self.l2.find(off) {
            return Ok(s);
        }
        self.check_table_offset("L2 table", off)?;
        let bytes = self.read_table(off, self.cluster_size as usize)?;
        let table: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                u64::from_be_bytes(a)
            })
            .collect();
        self.make_room_l2()?;
        let slot = self.l2.insert(off, (), false);
        self.fast.fill(slot, &table);
        Ok(slot)
    }

    /// Records `n` new metadata clusters from `off`. Data checks made for
    /// the lock-free path are void: in a corrupt image, a data entry could
    /// point at a new metadata cluster.
    pub(crate) fn add_metadata(&mut self, off: u64, n: u64) {
        for c in 0..n {
            self.metadata.insert(off + c * self.cluster_size);
        }
        self.fast.uncheck_all();
    }

    /// Marks entry `i` of the L2 table in `slot` usable by the lock-free
    /// path if it maps a data cluster that holds no metadata.
    fn check_for_fast(&self, slot: usize, i: usize) {
        let e = self.fast.get(slot, i);
        if let Ok(Mapping::Data(off)) = self.classify(e)
            && !self.metadata.contains(&off)
        {
            self.fast.set_checked(slot, i);
        }
    }

    /// Changes entry `i` of the L2 table in `slot`.
    fn set_l2(&mut self, slot: usize, i: usize, e: u64) {
        self.fast.set(slot, i, e);
        self.l2.mark_dirty(slot);
    }

    fn make_room_l2(&mut self) -> Result<()> {
        if let Some((slot, off, true)) = self.l2.victim() {
            self.write_l2(slot, off)?;
        }
        Ok(())
    }

    /// Refcounts before L2 tables: writes refcount blocks and syncs them.
    fn order_refcounts_before_l2(&mut self) -> Result<()> {
        self.write_refblocks()?;
        if self.rc_unsynced && !self.dirty_set {
            self.sync()?;
            self.rc_unsynced = false;
        }
        Ok(())
    }

    fn write_l2(&mut self, slot: usize, off: u64) -> Result<()> {
        self.order_refcounts_before_l2()?;
        let mut bytes = Vec::with_capacity(self.cluster_size as usize);
        for e in self.fast.table(slot) {
            bytes.extend_from_slice(&e.to_be_bytes());
        }
        self.write_all(&bytes, off)?;
        self.l2.mark_clean(slot);
        self.l2_unsynced = true;
        Ok(())
    }

    /// Writes all dirty metadata back in a crash-safe order, syncs, and
    /// then carries out the pending frees.
    pub(crate) fn flush(&mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        for (slot, off) in self.l2.dirty() {
            self.write_l2(slot, off)?;
        }
        // Refcounts of allocations without an L2 change (new L2 tables).
        self.order_refcounts_before_l2()?;
        if self.l1_dirty {
            if self.l2_unsynced {
                self.sync()?;
            }
            let mut bytes = Vec::with_capacity(self.l1.len() * 8);
            for e in &self.l1 {
                bytes.extend_from_slice(&e.to_be_bytes());
            }
            self.write_all(&bytes, self.hdr.l1_table_offset)?;
            self.l1_dirty = false;
        }
        self.sync()?;
        self.rc_unsynced = false;
        self.l2_unsynced = false;
        if !self.pending_frees.is_empty() {
            let frees = std::mem::take(&mut self.pending_frees);
            for (off, len) in frees {
                self.update_refcounts(off, len, false)?;
            }
            // The pointers are durable, so the lowered refcounts may reach
            // the file now. They need no sync of their own: losing them in
            // a crash only leaks the clusters. Writing them here means a
            // process that ends right after a flush leaves no leak.
            self.write_refblocks()?;
        }
        Ok(())
    }

    /// Flushes, writes the freed refcounts and clears the dirty bit: the
    /// image is consistent on disk afterwards.
    pub(crate) fn close(&mut self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.flush()?;
        self.write_refblocks()?;
        self.sync()?;
        if self.dirty_set {
            self.hdr.incompatible &= !header::INCOMPAT_DIRTY;
            self.write_all(
                &self.hdr.incompatible.to_be_bytes(),
                header::field::INCOMPATIBLE,
            )?;
            self.sync()?;
            self.dirty_set = false;
        }
        self.rc_unsynced = false;
        Ok(())
    }

    // ---- Mapping ----

    fn l1_index(&self, guest: u64) -> usize {
        (guest >> (self.cluster_bits + self.l2_bits)) as usize
    }

    fn l2_index(&self, guest: u64) -> usize {
        ((guest >> self.cluster_bits) & ((1 << self.l2_bits) - 1)) as usize
    }

    /// Guest bytes from `guest` to the end of its L2 table's range.
    fn l2_range_left(&self, guest: u64) -> u64 {
        let span = 1u64 << (self.cluster_bits + self.l2_bits);
        span - (guest & (span - 1))
    }

    /// Classifies an L2 entry.
    pub(crate) fn classify(&self, e: u64) -> Result<Mapping> {
        if e & COMPRESSED != 0 {
            return Ok(Mapping::Compressed(e));
        }
        if self.hdr.version >= 3 && e & ZERO != 0 {
            return Ok(Mapping::Zero);
        }
        let off = e & OFFSET_MASK;
        if off == 0 {
            return Ok(Mapping::Unallocated);
        }
        if !off.is_multiple_of(self.cluster_size) {
            return Err(self.invalid(format!("L2 entry {e:#x} has a misaligned data offset")));
        }
        if off >= self.file_end {
            return Err(self.invalid(format!(
                "data cluster at {off:#x} lies past the end of the file"
            )));
        }
        Ok(Mapping::Data(off))
    }

    /// The L2 entries (or `None`: no L2 table) for the L1 entry of `guest`.
    fn l2_for_read(&mut self, guest: u64) -> Result<Option<usize>> {
        let idx = self.l1_index(guest);
        let Some(&e) = self.l1.get(idx) else {
            return Ok(None);
        };
        let off = e & OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        let slot = self.l2_slot(off)?;
        self.fast.bind(slot, idx, e & COPIED != 0);
        Ok(Some(slot))
    }

    /// How `guest..guest + len` starts: the mapping of its first bytes and
    /// how many bytes (at most `len`) map the same way, contiguously.
    pub(crate) fn map(&mut self, guest: u64, len: u64) -> Result<(Mapping, u64)> {
        let cs = self.cluster_size;
        let in_cluster = guest & (cs - 1);
        let max = len.min(self.l2_range_left(guest));
        let Some(slot) = self.l2_for_read(guest)? else {
            return Ok((Mapping::Unallocated, max));
        };
        let first = self.l2_index(guest);
        let e = self.fast.get(slot, first);
        let m = self.classify(e)?;
        let mut run = cs - in_cluster;
        if let Mapping::Compressed(_) = m {
            return Ok((m, run.min(max)));
        }
        if let Mapping::Data(_) = m {
            self.check_for_fast(slot, first);
        }
        let mut i = first + 1;
        while run < max {
            let next = self.classify(self.fast.get(slot, i))?;
            let same = match (m, next) {
                (Mapping::Data(a), Mapping::Data(b)) => b == a + (i - first) as u64 * cs,
                (Mapping::Zero, Mapping::Zero) | (Mapping::Unallocated, Mapping::Unallocated) => {
                    true
                }
                _ => false,
            };
            if !same {
                break;
            }
            if let Mapping::Data(_) = next {
                self.check_for_fast(slot, i);
            }
            run += cs;
            i += 1;
        }
        let m = match m {
            Mapping::Data(off) => Mapping::Data(off + in_cluster),
            m => m,
        };
        Ok((m, run.min(max)))
    }

    /// How a write of `guest..guest + len` starts: in place (and for how
    /// many bytes), or needing allocation (and for how many bytes, at most
    /// `max_alloc` clusters, within one L2 table).
    pub(crate) fn map_for_write(
        &mut self,
        guest: u64,
        len: u64,
        max_alloc: u64,
    ) -> Result<(WriteMapping, u64)> {
        let cs = self.cluster_size;
        let in_cluster = guest & (cs - 1);
        let max = len.min(self.l2_range_left(guest));
        let l1_idx = self.l1_index(guest);
        let l1e = self.l1.get(l1_idx).copied().unwrap_or(0);
        let alloc_len = |n_clusters: u64| (n_clusters * cs - in_cluster).min(max);
        if l1e & COPIED == 0 || l1e & OFFSET_MASK == 0 {
            return Ok((WriteMapping::Allocate, alloc_len(max_alloc)));
        }
        let slot = self.l2_slot(l1e & OFFSET_MASK)?;
        self.fast.bind(slot, l1_idx, true);
        let first = self.l2_index(guest);
        let in_place = |meta: &mut Meta, i: usize| -> Result<Option<u64>> {
            let e = meta.fast.get(slot, i);
            match meta.classify(e)? {
                Mapping::Data(off) if e & COPIED != 0 => Ok(Some(off)),
                Mapping::Data(off) => {
                    // No COPIED flag: fine to write if the refcount is 1.
                    if meta.refcount(off >> meta.cluster_bits)? == 1 {
                        meta.begin_metadata_update()?;
                        meta.set_l2(slot, i, e | COPIED);
                        Ok(Some(off))
                    } else {
                        Ok(None)
                    }
                }
                _ => Ok(None),
            }
        };
        let Some(host) = in_place(self, first)? else {
            // Count the clusters needing allocation.
            let mut n = 1;
            while n < max_alloc && n * cs - in_cluster < max {
                if in_place(self, first + n as usize)?.is_some() {
                    break;
                }
                n += 1;
            }
            return Ok((WriteMapping::Allocate, alloc_len(n)));
        };
        let mut run = cs - in_cluster;
        let mut i = first + 1;
        while run < max {
            match in_place(self, i)? {
                Some(off) if off == host + (i - first) as u64 * cs => {}
                _ => break,
            }
            run += cs;
            i += 1;
        }
        let run = run.min(max);
        // Never let data land on metadata.
        let start = host;
        let end = host + in_cluster + run;
        if self.metadata.range(start..end).next().is_some() {
            return Err(self.mark_corrupt(format!("data cluster at {host:#x} overlaps metadata")));
        }
        // Checked: the next writes of these clusters need no lock.
        for k in 0..(in_cluster + run).div_ceil(cs) as usize {
            self.fast.set_checked(slot, first + k);
        }
        Ok((WriteMapping::InPlace(host + in_cluster), run))
    }

    /// The L2 table of `guest` ready for changes: allocated if missing,
    /// copied if shared with a snapshot. Returns its cache slot.
    pub(crate) fn l2_for_write(&mut self, guest: u64) -> Result<usize> {
        let idx = self.l1_index(guest);
        let Some(&e) = self.l1.get(idx) else {
            return Err(self.invalid(format!("guest offset {guest:#x} beyond the L1 table")));
        };
        let off = e & OFFSET_MASK;
        if off != 0 && e & COPIED != 0 {
            return self.l2_slot(off);
        }
        self.begin_metadata_update()?;
        if off != 0 && self.refcount(off >> self.cluster_bits)? == 1 {
            self.l1[idx] = off | COPIED;
            self.l1_dirty = true;
            let slot = self.l2_slot(off)?;
            self.fast.bind(slot, idx, true);
            return Ok(slot);
        }
        let table: Vec<u64> = if off == 0 {
            vec![0u64; 1 << self.l2_bits]
        } else {
            let slot = self.l2_slot(off)?;
            self.fast.table(slot).collect()
        };
        let new = self.alloc_clusters(1)?;
        // The old table no longer answers for this index.
        self.fast.unbind_index(idx);
        self.make_room_l2()?;
        let slot = self.l2.insert(new, (), true);
        self.fast.fill(slot, &table);
        self.add_metadata(new, 1);
        self.l1[idx] = new | COPIED;
        self.l1_dirty = true;
        self.fast.bind(slot, idx, true);
        if off != 0 {
            // The snapshot keeps the old table; drop our reference once the
            // L1 table no longer points at it.
            self.pending_frees.push((off, self.cluster_size));
        }
        Ok(slot)
    }

    /// Queues the frees an L2 entry's data needs when the entry goes away.
    pub(crate) fn free_entry_later(&mut self, e: u64) {
        if e & COMPRESSED != 0 {
            let (off, len) = self.compressed_range(e);
            self.pending_frees.push((off & !511, len + (off & 511)));
        } else {
            let off = e & OFFSET_MASK;
            if off != 0 {
                self.pending_frees.push((off, self.cluster_size));
            }
        }
    }

    /// The host bytes of a compressed cluster: offset and length.
    pub(crate) fn compressed_range(&self, e: u64) -> (u64, u64) {
        let x = 62 - (self.cluster_bits - 8);
        let off = e & ((1u64 << x) - 1);
        let sectors = ((e & ((1u64 << 62) - 1)) >> x) + 1;
        (off, sectors * 512 - (off & 511))
    }

    /// The contents of a compressed cluster.
    pub(crate) fn read_compressed(&mut self, e: u64) -> Result<&[u8]> {
        if self.decompressed.as_ref().is_none_or(|(k, _)| *k != e) {
            let (off, len) = self.compressed_range(e);
            if off >= self.file_end {
                return Err(self.invalid(format!(
                    "compressed cluster at {off:#x} lies past the end of the file"
                )));
            }
            let len = len.min(self.file_end - off) as usize;
            let mut input = vec![0u8; len];
            self.read_zero_fill(&mut input, off)?;
            let mut out = vec![0u8; self.cluster_size as usize];
            super::compress::decompress(self.hdr.compression, &input, &mut out)
                .map_err(|e| self.invalid(format!("compressed cluster at {off:#x}: {e}")))?;
            self.decompressed = Some((e, out));
        }
        match &self.decompressed {
            Some((_, data)) => Ok(data),
            None => Err(self.invalid("decompression cache".into())),
        }
    }

    /// Sets the L2 entry of guest cluster `guest` (allocating or copying
    /// its table as needed), returning the old entry.
    pub(crate) fn set_l2_entry(&mut self, guest: u64, entry: u64) -> Result<u64> {
        let slot = self.l2_for_write(guest)?;
        let i = self.l2_index(guest);
        let old = self.fast.get(slot, i);
        if old != entry {
            self.set_l2(slot, i, entry);
        }
        Ok(old)
    }

    /// The current L2 entry of guest cluster `guest` (0 without a table).
    pub(crate) fn l2_entry(&mut self, guest: u64) -> Result<u64> {
        match self.l2_for_read(guest)? {
            Some(slot) => Ok(self.fast.get(slot, self.l2_index(guest))),
            None => Ok(0),
        }
    }

    /// Drops the clusters `guest..guest + n * cluster_size` (cluster
    /// aligned). Afterwards they read as zeros, except in a version 2
    /// image with a backing file, where they show the backing file. With
    /// `keep_alloc` (version 3), allocated clusters stay allocated, with
    /// the zero flag.
    pub(crate) fn drop_clusters(&mut self, guest: u64, n: u64, keep_alloc: bool) -> Result<()> {
        let cs = self.cluster_size;
        let v3 = self.hdr.version >= 3;
        // With a backing file an empty entry would show its data.
        let empty = if v3 && self.has_backing { ZERO } else { 0 };
        for k in 0..n {
            let g = guest + k * cs;
            let old = self.l2_entry(g)?;
            let new = match self.classify(old)? {
                Mapping::Data(off) if keep_alloc && v3 && old & COPIED != 0 => off | COPIED | ZERO,
                Mapping::Zero if old & OFFSET_MASK == 0 || keep_alloc => continue,
                Mapping::Unallocated if empty == 0 => continue,
                _ => empty,
            };
            if new == old {
                continue;
            }
            let old = self.set_l2_entry(g, new)?;
            if new & OFFSET_MASK == 0 {
                self.free_entry_later(old);
            }
        }
        Ok(())
    }
}

impl Meta {
    /// Grows the virtual size to `new_size`, growing the L1 table if
    /// needed: the new table is written and synced before the header
    /// switches to it, and the old one freed after.
    pub(crate) fn grow(&mut self, new_size: u64) -> Result<()> {
        self.begin_metadata_update()?;
        let span = 1u64 << (self.cluster_bits + self.l2_bits);
        let need = new_size.div_ceil(span);
        if need * 8 > header::MAX_L1_BYTES {
            return Err(Error::InvalidArgument(format!(
                "size {new_size} needs an L1 table beyond QEMU's 32 MiB limit"
            )));
        }
        let cs = self.cluster_size;
        if need as usize > self.l1.len() {
            // Tables the current L1 points at are on disk before it is
            // copied.
            self.flush()?;
            let clusters = (need * 8).div_ceil(cs);
            let new_off = self.alloc_clusters(clusters)?;
            self.write_refblocks()?;
            let mut new_l1 = self.l1.clone();
            new_l1.resize(need as usize, 0);
            let mut bytes = Vec::with_capacity((clusters * cs) as usize);
            for e in &new_l1 {
                bytes.extend_from_slice(&e.to_be_bytes());
            }
            bytes.resize((clusters * cs) as usize, 0);
            self.write_all(&bytes, new_off)?;
            self.sync()?;
            let mut h = [0u8; 24];
            h[..8].copy_from_slice(&new_size.to_be_bytes());
            h[12..16].copy_from_slice(&(need as u32).to_be_bytes());
            h[16..].copy_from_slice(&new_off.to_be_bytes());
            self.write_all(&h, header::field::SIZE)?;
            self.sync()?;
            self.rc_unsynced = false;
            let old_off = self.hdr.l1_table_offset;
            let old_clusters = (self.l1.len() as u64 * 8).div_ceil(cs);
            self.hdr.l1_table_offset = new_off;
            self.hdr.l1_size = need as u32;
            self.l1 = new_l1;
            self.add_metadata(new_off, clusters);
            if old_off != 0 && old_clusters > 0 {
                for c in 0..old_clusters {
                    self.metadata.remove(&(old_off + c * cs));
                }
                self.update_refcounts(old_off, old_clusters * cs, false)?;
            }
        } else {
            self.write_all(&new_size.to_be_bytes(), header::field::SIZE)?;
            self.sync()?;
        }
        self.hdr.size = new_size;
        Ok(())
    }

    /// The number of guest clusters allocated in this image (data,
    /// compressed, or preallocated zero clusters).
    pub(crate) fn allocated_clusters(&mut self) -> Result<u64> {
        let mut n = 0;
        for i in 0..self.l1.len() {
            let off = self.l1[i] & OFFSET_MASK;
            if off == 0 {
                continue;
            }
            let slot = self.l2_slot(off)?;
            n += self
                .fast
                .table(slot)
                .filter(|&e| e & COMPRESSED != 0 || e & OFFSET_MASK != 0)
                .count() as u64;
        }
        Ok(n)
    }
}
