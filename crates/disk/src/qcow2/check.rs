//! Consistency checks: every reference from the header, the L1 and L2
//! tables (active and snapshots'), the snapshot table and the refcount
//! structure is counted and compared with the stored refcounts, in the
//! categories `qemu-img check` reports.

use super::meta::{COMPRESSED, COPIED, Meta, OFFSET_MASK, RT_OFFSET_MASK};
use crate::Result;

/// The most clusters a check counts references for (512 MiB of counters).
const MAX_CHECK_CLUSTERS: u64 = 1 << 28;
/// QEMU's limit on a snapshot entry's extra data.
const MAX_SNAPSHOT_EXTRA: u32 = 1024;
/// The most lines of detail a report keeps.
const MAX_MESSAGES: usize = 100;

/// The result of a consistency check, in `qemu-img check`'s categories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Clusters referenced more often than their refcount says, and other
    /// metadata errors (misaligned offsets, references past the end of the
    /// file, wrong COPIED flags). Writing such an image can lose data.
    pub corruptions: u64,
    /// Clusters whose refcount is higher than their references: wasted
    /// space, harmless.
    pub leaks: u64,
    /// Leaks repaired (with `repair_leaks`).
    pub leaks_fixed: u64,
    /// Corruptions repaired (refcounts rebuilt for a dirty image).
    pub corruptions_fixed: u64,
    /// Metadata that could not be read.
    pub check_errors: u64,
    /// Guest clusters allocated in the image.
    pub allocated_clusters: u64,
    /// Guest clusters of the virtual disk.
    pub total_clusters: u64,
    /// The end of the last cluster in use: referenced, or with a non-zero
    /// refcount (leaked clusters count, as in `qemu-img check`).
    pub image_end_offset: u64,
    /// What was found, a line each (the first 100).
    pub messages: Vec<String>,
}

impl CheckReport {
    /// Whether nothing is left to repair.
    pub fn is_clean(&self) -> bool {
        self.corruptions == 0 && self.leaks == self.leaks_fixed && self.check_errors == 0
    }

    /// The exit code `qemu-img check` would give: 0 clean, 1 check error,
    /// 2 corruptions, 3 leaks only.
    pub fn exit_code(&self) -> i32 {
        if self.check_errors > 0 {
            1
        } else if self.corruptions > 0 {
            2
        } else if self.leaks > self.leaks_fixed {
            3
        } else {
            0
        }
    }

    fn note(&mut self, msg: String) {
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(msg);
        }
    }

    fn corrupt(&mut self, msg: String) {
        self.corruptions += 1;
        self.note(format!("ERROR {msg}"));
    }
}

/// A snapshot's L1 table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SnapshotL1 {
    pub offset: u64,
    pub size: u32,
}

/// Reads the snapshot table: each snapshot's L1 table, and the table's
/// length in bytes.
pub(crate) fn read_snapshots(meta: &Meta) -> Result<(Vec<SnapshotL1>, u64)> {
    let n = meta.hdr.nb_snapshots;
    let mut out = Vec::with_capacity(n as usize);
    let start = meta.hdr.snapshots_offset;
    let mut pos = start;
    for i in 0..n {
        let h = meta.read_table(pos, 40)?;
        let be32 = |o: usize| u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let offset = (u64::from(be32(0)) << 32) | u64::from(be32(4));
        let size = be32(8);
        let id_len = u64::from(u16::from_be_bytes([h[12], h[13]]));
        let name_len = u64::from(u16::from_be_bytes([h[14], h[15]]));
        let extra = be32(36);
        if extra > MAX_SNAPSHOT_EXTRA {
            return Err(meta.invalid(format!("snapshot {i}: extra data too large ({extra})")));
        }
        if u64::from(size) * 8 > super::header::MAX_L1_BYTES {
            return Err(meta.invalid(format!("snapshot {i}: L1 table too large ({size})")));
        }
        // The table must be aligned and its end must not wrap around the
        // 64-bit space (a hostile offset near 2^64 would overflow later).
        if size > 0
            && (offset % meta.cluster_size != 0
                || offset == 0
                || offset.checked_add(u64::from(size) * 8).is_none())
        {
            return Err(meta.invalid(format!("snapshot {i}: invalid L1 table offset {offset:#x}")));
        }
        out.push(SnapshotL1 { offset, size });
        pos += (40 + u64::from(extra) + id_len + name_len).div_ceil(8) * 8;
    }
    Ok((out, pos - start))
}

/// References counted from the metadata.
struct Counter {
    refs: Vec<u16>,
    cluster_bits: u32,
    end: u64,
}

impl Counter {
    fn inc(&mut self, rep: &mut CheckReport, off: u64, len: u64, what: &str) {
        if len == 0 {
            return;
        }
        let first = off >> self.cluster_bits;
        // A hostile table entry may point anywhere, even at the last bytes
        // of the 64-bit space: the range's end must not wrap.
        let Some(last) = off.checked_add(len - 1).map(|end| end >> self.cluster_bits) else {
            rep.corrupt(format!("{what} at {off:#x} lies past the end of the file"));
            return;
        };
        for c in first..=last {
            match usize::try_from(c).ok().and_then(|c| self.refs.get_mut(c)) {
                Some(r) => *r = r.saturating_add(1),
                None => {
                    rep.corrupt(format!(
                        "{what} at {:#x} lies past the end of the file",
                        c << self.cluster_bits
                    ));
                    return;
                }
            }
        }
        self.end = self.end.max((last + 1) << self.cluster_bits);
    }
}

fn be64s(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_be_bytes(a)
        })
        .collect()
}

/// Counts the references of one L1 table and its L2 tables.
fn count_l1(meta: &Meta, cnt: &mut Counter, rep: &mut CheckReport, l1: &[u64], active: bool) {
    let cs = meta.cluster_size;
    for (i, &e) in l1.iter().enumerate() {
        let off = e & OFFSET_MASK;
        if off == 0 {
            continue;
        }
        if !off.is_multiple_of(cs) {
            rep.corrupt(format!(
                "L1 entry {i}: L2 offset {off:#x} is not cluster aligned"
            ));
            continue;
        }
        cnt.inc(rep, off, cs, "L2 table");
        let l2 = match meta.read_table(off, cs as usize) {
            Ok(b) => be64s(&b),
            Err(err) => {
                rep.check_errors += 1;
                rep.note(format!("cannot read L2 table at {off:#x}: {err}"));
                continue;
            }
        };
        for (j, &e) in l2.iter().enumerate() {
            if e & COMPRESSED != 0 {
                let (coff, len) = meta.compressed_range(e);
                cnt.inc(rep, coff & !511, len + (coff & 511), "compressed cluster");
                if active {
                    rep.allocated_clusters += 1;
                }
                continue;
            }
            let doff = e & OFFSET_MASK;
            if doff == 0 {
                continue;
            }
            if !doff.is_multiple_of(cs) {
                rep.corrupt(format!(
                    "L2 table {off:#x} entry {j}: data offset {doff:#x} is not cluster aligned"
                ));
                continue;
            }
            cnt.inc(rep, doff, cs, "data cluster");
            if active {
                rep.allocated_clusters += 1;
            }
        }
    }
}

/// Counts every reference to every cluster of the image.
fn count_references(meta: &Meta, rep: &mut CheckReport) -> Result<Counter> {
    let cs = meta.cluster_size;
    let file_len = meta.file.metadata()?.len().max(meta.file_end);
    let nb = file_len.div_ceil(cs);
    if nb > MAX_CHECK_CLUSTERS {
        return Err(meta.invalid(format!("image too large to check ({nb} clusters)")));
    }
    let mut cnt = Counter {
        refs: vec![0; nb as usize],
        cluster_bits: meta.cluster_bits,
        end: 0,
    };
    cnt.inc(rep, 0, cs, "header");
    let l1_bytes = u64::from(meta.hdr.l1_size) * 8;
    if l1_bytes > 0 {
        cnt.inc(rep, meta.hdr.l1_table_offset, l1_bytes, "L1 table");
    }
    count_l1(meta, &mut cnt, rep, &meta.l1, true);
    if meta.hdr.nb_snapshots > 0 {
        let (snaps, table_len) = read_snapshots(meta)?;
        cnt.inc(rep, meta.hdr.snapshots_offset, table_len, "snapshot table");
        for s in snaps {
            let len = u64::from(s.size) * 8;
            if len == 0 {
                continue;
            }
            cnt.inc(rep, s.offset, len, "snapshot L1 table");
            match meta.read_table(s.offset, len as usize) {
                Ok(b) => count_l1(meta, &mut cnt, rep, &be64s(&b), false),
                Err(err) => {
                    rep.check_errors += 1;
                    rep.note(format!("cannot read snapshot L1 table: {err}"));
                }
            }
        }
    }
    cnt.inc(
        rep,
        meta.hdr.refcount_table_offset,
        u64::from(meta.hdr.refcount_table_clusters) * cs,
        "refcount table",
    );
    for (i, &e) in meta.rt.iter().enumerate() {
        let off = e & RT_OFFSET_MASK;
        if off == 0 {
            continue;
        }
        if !off.is_multiple_of(cs) {
            rep.corrupt(format!(
                "refcount block {i} offset {off:#x} is not cluster aligned"
            ));
            continue;
        }
        cnt.inc(rep, off, cs, "refcount block");
    }
    Ok(cnt)
}

impl Meta {
    /// Checks the image; with `repair_leaks`, lowers the refcounts of
    /// leaked clusters to their references.
    pub(crate) fn check(&mut self, repair_leaks: bool) -> Result<CheckReport> {
        if !self.read_only {
            self.flush()?;
            self.write_refblocks()?;
        }
        let mut rep = CheckReport {
            total_clusters: self.hdr.size.div_ceil(self.cluster_size),
            ..CheckReport::default()
        };
        let cnt = count_references(self, &mut rep)?;
        // As QEMU, only clusters inside the file count.
        let limit = cnt.refs.len() as u64;
        // As QEMU, the image ends after the last cluster that is either
        // referenced or has a refcount (so leaked clusters count too).
        let mut end = cnt.end;
        // Leaks to repair once every cluster has been compared (QEMU
        // reports them all, then repairs them all).
        let mut repairs = Vec::new();
        for i in 0..limit {
            let want = u64::from(cnt.refs.get(i as usize).copied().unwrap_or(0));
            let have = match self.refcount(i) {
                Ok(r) => r,
                Err(e) => {
                    rep.check_errors += 1;
                    rep.note(format!("cannot read refcount of cluster {i}: {e}"));
                    continue;
                }
            };
            if have > 0 || want > 0 {
                end = end.max((i + 1) << self.cluster_bits);
            }
            if have < want {
                rep.corrupt(format!("cluster {i} refcount={have} reference={want}"));
            } else if have > want {
                rep.leaks += 1;
                rep.note(format!(
                    "Leaked cluster {i} refcount={have} reference={want}"
                ));
                if repair_leaks && !self.read_only {
                    repairs.push((i, have, want));
                }
            }
        }
        for (i, have, want) in repairs {
            rep.note(format!(
                "Repairing cluster {i} refcount={have} reference={want}"
            ));
            self.set_refcount(i, want)?;
            rep.leaks_fixed += 1;
        }
        // COPIED flags of the active tables.
        let cs = self.cluster_size;
        for idx in 0..self.l1.len() {
            let e = self.l1[idx];
            let off = e & OFFSET_MASK;
            if off == 0 || !off.is_multiple_of(cs) {
                continue;
            }
            let rc = self.refcount(off >> self.cluster_bits)?;
            if (rc == 1) != (e & COPIED != 0) {
                rep.corrupt(format!(
                    "OFLAG_COPIED L2 cluster: l1_index={idx} l1_entry={e:x} refcount={rc}"
                ));
            }
            let Ok(bytes) = self.read_table(off, cs as usize) else {
                continue;
            };
            for l2e in be64s(&bytes) {
                let doff = l2e & OFFSET_MASK;
                if l2e & COMPRESSED != 0 || doff == 0 || !doff.is_multiple_of(cs) {
                    continue;
                }
                let rc = self.refcount(doff >> self.cluster_bits)?;
                if (rc == 1) != (l2e & COPIED != 0) {
                    rep.corrupt(format!(
                        "OFLAG_COPIED data cluster: l2_entry={l2e:x} refcount={rc}"
                    ));
                }
            }
        }
        rep.image_end_offset = end;
        if !self.read_only {
            self.write_refblocks()?;
            self.sync()?;
        }
        Ok(rep)
    }

    /// Rebuilds the refcounts from the references (an image left dirty by
    /// lazy refcounts): every refcount is set to the references counted.
    /// Returns the number of refcounts changed.
    pub(crate) fn rebuild_refcounts(&mut self) -> Result<u64> {
        let mut rep = CheckReport::default();
        let cnt = count_references(self, &mut rep)?;
        if rep.corruptions > 0 || rep.check_errors > 0 {
            return Err(self.invalid(format!(
                "cannot rebuild refcounts: {}",
                rep.messages.join("; ")
            )));
        }
        self.rebuild = Some(cnt.refs);
        let result = self.apply_rebuild();
        self.rebuild = None;
        let fixed = result?;
        self.write_refblocks()?;
        self.sync()?;
        Ok(fixed)
    }

    fn apply_rebuild(&mut self) -> Result<u64> {
        let mut fixed = 0;
        for _ in 0..8 {
            let mut mismatches = 0;
            let len = self.rebuild.as_ref().map_or(0, |r| r.len() as u64);
            let limit = len.max(self.rc_coverage());
            for i in 0..limit {
                let want = self
                    .rebuild
                    .as_ref()
                    .and_then(|r| r.get(i as usize).copied())
                    .map_or(0, u64::from);
                let have = self.refcount(i)?;
                if have == want {
                    continue;
                }
                mismatches += 1;
                if self.ensure_refblocks(i, 1)? {
                    // New metadata changed the counts: go around again.
                    continue;
                }
                self.set_refcount(i, want)?;
                fixed += 1;
            }
            if mismatches == 0 {
                return Ok(fixed);
            }
        }
        Err(self.invalid("refcount rebuild does not converge".into()))
    }
}
