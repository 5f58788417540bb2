//! Refcounts: the refcount table and blocks, cluster allocation, and the
//! growth of the refcount table.
//!
//! Crash safety: a refcount increase may reach the disk at any time (the
//! worst a crash then leaves is a leaked cluster), so refcount blocks are
//! written back freely; a new refcount block is durable before the table
//! entry pointing at it, and a new table (with the blocks describing it)
//! before the header switches to it.

use super::meta::{Meta, RT_OFFSET_MASK};
use crate::Result;

/// Reads entry `idx` of a refcount block of `1 << order`-bit entries.
pub(crate) fn rb_get(block: &[u8], order: u32, idx: usize) -> u64 {
    match order {
        0 => u64::from((block[idx / 8] >> (idx % 8)) & 1),
        1 => u64::from((block[idx / 4] >> (2 * (idx % 4))) & 3),
        2 => u64::from((block[idx / 2] >> (4 * (idx % 2))) & 0xf),
        3 => u64::from(block[idx]),
        4 => u64::from(u16::from_be_bytes([block[2 * idx], block[2 * idx + 1]])),
        5 => {
            let mut a = [0u8; 4];
            a.copy_from_slice(&block[4 * idx..4 * idx + 4]);
            u64::from(u32::from_be_bytes(a))
        }
        _ => {
            let mut a = [0u8; 8];
            a.copy_from_slice(&block[8 * idx..8 * idx + 8]);
            u64::from_be_bytes(a)
        }
    }
}

/// Writes entry `idx` of a refcount block; `value` fits the entry width.
pub(crate) fn rb_set(block: &mut [u8], order: u32, idx: usize, value: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let shift = bits * (idx % per_byte);
            let mask = (((1u16 << bits) - 1) as u8) << shift;
            let b = &mut block[idx / per_byte];
            *b = (*b & !mask) | (((value as u8) << shift) & mask);
        }
        3 => block[idx] = value as u8,
        4 => block[2 * idx..2 * idx + 2].copy_from_slice(&(value as u16).to_be_bytes()),
        5 => block[4 * idx..4 * idx + 4].copy_from_slice(&(value as u32).to_be_bytes()),
        _ => block[8 * idx..8 * idx + 8].copy_from_slice(&value.to_be_bytes()),
    }
}

impl Meta {
    /// Refcount entries per refcount block.
    pub(crate) fn rb_entries(&self) -> u64 {
        1 << self.rb_bits
    }

    /// The largest refcount an entry holds.
    pub(crate) fn rc_max(&self) -> u64 {
        if self.rc_order == 6 {
            u64::MAX
        } else {
            (1u64 << (1u32 << self.rc_order)) - 1
        }
    }

    /// The number of clusters the refcount table can describe.
    pub(crate) fn rc_coverage(&self) -> u64 {
        (self.rt.len() as u64) << self.rb_bits
    }

    /// The cache slot of the refcount block at `off`, loading it.
    fn rb_slot(&mut self, off: u64) -> Result<usize> {
        if let Some(s) = self.rb.find(off) {
            return Ok(s);
        }
        self.check_table_offset("refcount block", off)?;
        let data = self.read_table(off, self.cluster_size as usize)?;
        if let Some((slot, voff, true)) = self.rb.victim() {
            self.write_refblock(slot, voff)?;
        }
        Ok(self.rb.insert(off, data, false))
    }

    fn write_refblock(&mut self, slot: usize, off: u64) -> Result<()> {
        let data = self.rb.get(slot).clone();
        self.write_all(&data, off)?;
        self.rb.mark_clean(slot);
        self.rc_unsynced = true;
        Ok(())
    }

    /// Writes every dirty refcount block back (without syncing).
    pub(crate) fn write_refblocks(&mut self) -> Result<()> {
        for (slot, off) in self.rb.dirty() {
            self.write_refblock(slot, off)?;
        }
        Ok(())
    }

    /// The refcount of cluster `idx` (0 where no block describes it).
    pub(crate) fn refcount(&mut self, idx: u64) -> Result<u64> {
        let rt_idx = idx >> self.rb_bits;
        let Some(&entry) = self.rt.get(rt_idx as usize) else {
            return Ok(0);
        };
        let off = entry & RT_OFFSET_MASK;
        if off == 0 {
            return Ok(0);
        }
        let slot = self.rb_slot(off)?;
        let i = (idx & (self.rb_entries() - 1)) as usize;
        Ok(rb_get(self.rb.get(slot), self.rc_order, i))
    }

    /// Sets the refcount of cluster `idx`, whose block must exist.
    pub(crate) fn set_refcount(&mut self, idx: u64, value: u64) -> Result<()> {
        if value > self.rc_max() {
            return Err(self.invalid(format!(
                "refcount of cluster {idx} would overflow {} bits",
                1u32 << self.rc_order
            )));
        }
        let rt_idx = (idx >> self.rb_bits) as usize;
        let off = self.rt.get(rt_idx).map_or(0, |e| e & RT_OFFSET_MASK);
        if off == 0 {
            return Err(self.invalid(format!("no refcount block for cluster {idx}")));
        }
        let slot = self.rb_slot(off)?;
        let i = (idx & (self.rb_entries() - 1)) as usize;
        let order = self.rc_order;
        rb_set(self.rb.get_mut(slot), order, i, value);
        if value == 0 && idx < self.free_hint {
            self.free_hint = idx;
        }
        Ok(())
    }

    /// Adds `delta` (+1 or -1) to the refcount of every cluster touched by
    /// the host byte range `off..off + len`.
    pub(crate) fn update_refcounts(&mut self, off: u64, len: u64, inc: bool) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let first = off >> self.cluster_bits;
        let last = (off + len - 1) >> self.cluster_bits;
        for c in first..=last {
            let rc = self.refcount(c)?;
            let new = if inc {
                rc.checked_add(1)
            } else {
                rc.checked_sub(1)
            };
            let Some(new) = new else {
                log::error!(
                    "{}: refcount of cluster {c} would drop below zero; leaving it",
                    self.path.display()
                );
                continue;
            };
            self.set_refcount(c, new)?;
            if let Some(r) = self.rebuild.as_mut()
                && let Some(v) = r.get_mut(c as usize)
            {
                *v = if inc {
                    v.saturating_add(1)
                } else {
                    v.saturating_sub(1)
                };
            }
            if new == 0 {
                self.metadata.remove(&(c << self.cluster_bits));
                self.punch_hole(c << self.cluster_bits);
            }
        }
        Ok(())
    }

    /// Finds `n` contiguous free clusters from the allocation hint.
    fn find_free_run(&mut self, n: u64) -> Result<u64> {
        let max_cluster = super::header::MAX_HOST_OFFSET >> self.cluster_bits;
        let mut idx = self.free_hint.max(1);
        let mut run_start = idx;
        let mut run_len = 0u64;
        loop {
            if idx + n > max_cluster {
                return Err(self.invalid("the image file is full (56-bit offsets)".into()));
            }
            // Past the refcount table's reach everything is free.
            if idx >= self.rc_coverage() {
                return Ok(if run_len > 0 { run_start } else { idx });
            }
            let rt_idx = (idx >> self.rb_bits) as usize;
            if self.rt[rt_idx] & RT_OFFSET_MASK == 0 {
                // A whole block's range is free.
                if run_len == 0 {
                    run_start = idx;
                }
                let block_end = (rt_idx as u64 + 1) << self.rb_bits;
                let add = block_end - idx;
                if run_len + add >= n {
                    return Ok(run_start);
                }
                run_len += add;
                idx = block_end;
                continue;
            }
            if self.refcount(idx)? == 0 {
                if run_len == 0 {
                    run_start = idx;
                }
                run_len += 1;
                if run_len == n {
                    return Ok(run_start);
                }
            } else {
                run_len = 0;
            }
            idx += 1;
        }
    }

    /// Allocates `n` contiguous clusters (refcount 1 each) and returns the
    /// host offset of the first.
    pub(crate) fn alloc_clusters(&mut self, n: u64) -> Result<u64> {
        self.begin_metadata_update()?;
        for _ in 0..16 {
            let start = self.find_free_run(n)?;
            if self.ensure_refblocks(start, n)? {
                // New metadata may sit in the candidate run: look again.
                continue;
            }
            for c in start..start + n {
                self.set_refcount(c, 1)?;
            }
            self.free_hint = start + n;
            let end = (start + n) << self.cluster_bits;
            self.file_end = self.file_end.max(end);
            return Ok(start << self.cluster_bits);
        }
        Err(self.invalid("cannot allocate clusters (refcount structure keeps changing)".into()))
    }

    /// Makes sure refcount blocks describe clusters `start..start + n`,
    /// creating blocks and growing the table as needed. Returns whether
    /// anything was created.
    pub(crate) fn ensure_refblocks(&mut self, start: u64, n: u64) -> Result<bool> {
        let last = start + n - 1;
        let need = (last >> self.rb_bits) + 1;
        if need > self.rt.len() as u64 {
            self.grow_refcount_table(need)?;
            return Ok(true);
        }
        let mut changed = false;
        for rt_idx in (start >> self.rb_bits)..=(last >> self.rb_bits) {
            if self.rt[rt_idx as usize] & RT_OFFSET_MASK == 0 {
                self.create_refblock(rt_idx)?;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Whether cluster `c` may take new metadata while refcounts are
    /// rebuilt (nothing references it).
    fn rebuild_free(&self, c: u64) -> bool {
        self.rebuild
            .as_ref()
            .is_none_or(|r| r.get(c as usize).is_none_or(|&v| v == 0))
    }

    /// Creates the refcount block for table entry `rt_idx`, placed in the
    /// range it describes (all free, since no block described it).
    fn create_refblock(&mut self, rt_idx: u64) -> Result<()> {
        let base = rt_idx << self.rb_bits;
        let entries = self.rb_entries();
        let Some(c) = (base.max(1)..base + entries)
            .find(|&c| !self.metadata.contains(&(c << self.cluster_bits)) && self.rebuild_free(c))
        else {
            return Err(self.invalid("no room for a refcount block".into()));
        };
        let mut block = vec![0u8; self.cluster_size as usize];
        rb_set(&mut block, self.rc_order, (c - base) as usize, 1);
        let off = c << self.cluster_bits;
        // The block, then the table entry pointing at it.
        self.write_all(&block, off)?;
        self.sync()?;
        let entry_off = self.hdr.refcount_table_offset + rt_idx * 8;
        self.write_all(&off.to_be_bytes(), entry_off)?;
        self.rc_unsynced = true;
        self.rt[rt_idx as usize] = off;
        if let Some((slot, voff, true)) = self.rb.victim() {
            self.write_refblock(slot, voff)?;
        }
        self.rb.insert(off, block, false);
        self.add_metadata(off, 1);
        self.file_end = self.file_end.max(off + self.cluster_size);
        if let Some(r) = self.rebuild.as_mut() {
            if r.len() <= c as usize {
                r.resize(c as usize + 1, 0);
            }
            r[c as usize] = r[c as usize].saturating_add(1);
        }
        Ok(())
    }

    /// Replaces the refcount table with one of at least `need` entries,
    /// placed (with the blocks describing it) past everything in use.
    fn grow_refcount_table(&mut self, need: u64) -> Result<()> {
        let cs = self.cluster_size;
        let per_cluster = cs / 8;
        let old_len = self.rt.len() as u64;
        let base = self
            .rc_coverage()
            .max(self.file_end.div_ceil(cs))
            .max(self.rebuild.as_ref().map_or(0, |r| r.len() as u64));
        let mut new_len = need.max(old_len + old_len / 2 + 1).div_ceil(per_cluster) * per_cluster;
        let (tc, bc, first_rt) = loop {
            let tc = (new_len * 8).div_ceil(cs);
            let first_rt = base >> self.rb_bits;
            let mut bc = 1;
            loop {
                let last_rt = (base + bc + tc - 1) >> self.rb_bits;
                let nbc = last_rt - first_rt + 1;
                if nbc == bc {
                    break;
                }
                bc = nbc;
            }
            if new_len >= first_rt + bc {
                break (tc, bc, first_rt);
            }
            new_len = (first_rt + bc).div_ceil(per_cluster) * per_cluster;
        };
        if new_len * 8 > super::header::MAX_REFTABLE_BYTES {
            return Err(self.invalid("the refcount table would exceed QEMU's 8 MiB limit".into()));
        }
        // Blocks at base..base+bc, the table after them.
        let used_end = base + bc + tc;
        let mut new_rt = self.rt.clone();
        new_rt.resize(new_len as usize, 0);
        for k in 0..bc {
            let rt_idx = first_rt + k;
            let range = rt_idx << self.rb_bits..(rt_idx + 1) << self.rb_bits;
            let mut block = vec![0u8; cs as usize];
            for c in base.max(range.start)..used_end.min(range.end) {
                rb_set(&mut block, self.rc_order, (c - range.start) as usize, 1);
            }
            let off = (base + k) * cs;
            self.write_all(&block, off)?;
            new_rt[rt_idx as usize] = off;
        }
        let table_off = (base + bc) * cs;
        let mut bytes = Vec::with_capacity((tc * cs) as usize);
        for e in &new_rt {
            bytes.extend_from_slice(&e.to_be_bytes());
        }
        bytes.resize((tc * cs) as usize, 0);
        self.write_all(&bytes, table_off)?;
        // Everything dirty so far, and the new structure, before the
        // header switches.
        self.write_refblocks()?;
        self.sync()?;
        let mut h = [0u8; 12];
        h[..8].copy_from_slice(&table_off.to_be_bytes());
        h[8..].copy_from_slice(&(tc as u32).to_be_bytes());
        self.write_all(&h, super::header::field::REFCOUNT_TABLE)?;
        self.sync()?;
        self.rc_unsynced = false;

        let old_off = self.hdr.refcount_table_offset;
        let old_clusters = u64::from(self.hdr.refcount_table_clusters);
        self.hdr.refcount_table_offset = table_off;
        self.hdr.refcount_table_clusters = tc as u32;
        self.rt = new_rt;
        self.file_end = self.file_end.max(used_end * cs);
        self.add_metadata(base * cs, used_end - base);
        if let Some(r) = self.rebuild.as_mut() {
            if r.len() < used_end as usize {
                r.resize(used_end as usize, 0);
            }
            for c in base..used_end {
                r[c as usize] = r[c as usize].saturating_add(1);
            }
        }
        for c in 0..old_clusters {
            self.metadata.remove(&(old_off + c * cs));
        }
        // The old table is unreferenced now.
        self.update_refcounts(old_off, old_clusters * cs, false)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcount_entries_of_every_width() {
        for order in 0..=6u32 {
            let bits = 1u32 << order;
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            let mut block = vec![0u8; 512];
            let n = 512 * 8 / bits as usize;
            for i in 0..n {
                rb_set(&mut block, order, i, (i as u64 * 7) & max);
            }
            for i in 0..n {
                assert_eq!(
                    rb_get(&block, order, i),
                    (i as u64 * 7) & max,
                    "order {order}"
                );
            }
        }
        // Sub-byte entries are little-endian within the byte, as QEMU has it.
        let mut block = vec![0u8; 1];
        rb_set(&mut block, 0, 1, 1);
        assert_eq!(block[0], 0b10);
        rb_set(&mut block, 2, 1, 0xa);
        assert_eq!(block[0], 0xa2);
    }
}
