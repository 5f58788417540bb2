//! A small write-back cache of metadata tables (L2 tables, refcount
//! blocks), keyed by their host offset, with least-recently-used eviction.
//!
//! The cache only keeps entries; writing a dirty entry back (and the
//! ordering that requires) is the caller's business: [`TableCache::victim`]
//! names the entry to evict before an insertion into a full cache.

/// One cached table.
#[derive(Debug)]
struct Entry<T> {
    offset: u64,
    data: T,
    dirty: bool,
    last_used: u64,
}

/// A bounded cache of tables of type `T`.
#[derive(Debug)]
pub(crate) struct TableCache<T> {
    entries: Vec<Entry<T>>,
    capacity: usize,
    tick: u64,
    /// The index of the most recent hit, checked first.
    last: usize,
}

impl<T> TableCache<T> {
    /// A cache of at most `capacity` (at least 2) tables.
    pub fn new(capacity: usize) -> Self {
        TableCache {
            entries: Vec::new(),
            capacity: capacity.max(2),
            tick: 0,
            last: 0,
        }
    }

    /// The slot of the table at `offset`, if cached; marks it used.
    pub fn find(&mut self, offset: u64) -> Option<usize> {
        self.tick += 1;
        if let Some(e) = self.entries.get_mut(self.last)
            && e.offset == offset
        {
            e.last_used = self.tick;
            return Some(self.last);
        }
        let i = self.entries.iter().position(|e| e.offset == offset)?;
        self.entries[i].last_used = self.tick;
        self.last = i;
        Some(i)
    }

    /// The table in `slot`.
    pub fn get(&self, slot: usize) -> &T {
        &self.entries[slot].data
    }

    /// The table in `slot`, for changing; marks it dirty.
    pub fn get_mut(&mut self, slot: usize) -> &mut T {
        let e = &mut self.entries[slot];
        e.dirty = true;
        &mut e.data
    }

    /// Marks the table in `slot` dirty (changed where the cache does not
    /// hold its data).
    pub fn mark_dirty(&mut self, slot: usize) {
        self.entries[slot].dirty = true;
    }

    /// The slot that an insertion would reuse, when the cache is full:
    /// its offset and whether it is dirty.
    pub fn victim(&self) -> Option<(usize, u64, bool)> {
        if self.entries.len() < self.capacity {
            return None;
        }
        self.entries
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| e.last_used)
            .map(|(i, e)| (i, e.offset, e.dirty))
    }

    /// Inserts a table, replacing the least recently used one when full
    /// (the caller has written it back if it was dirty). Returns its slot.
    pub fn insert(&mut self, offset: u64, data: T, dirty: bool) -> usize {
        self.tick += 1;
        let entry = Entry {
            offset,
            data,
            dirty,
            last_used: self.tick,
        };
        let slot = match self.victim() {
            Some((i, _, _)) => {
                self.entries[i] = entry;
                i
            }
            None => {
                self.entries.push(entry);
                self.entries.len() - 1
            }
        };
        self.last = slot;
        slot
    }

    /// The dirty tables' slots and offsets.
    pub fn dirty(&self) -> Vec<(usize, u64)> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.dirty)
            .map(|(i, e)| (i, e.offset))
            .collect()
    }

    /// Marks the table in `slot` clean (written back).
    pub fn mark_clean(&mut self, slot: usize) {
        self.entries[slot].dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_table() {
        let mut c = TableCache::new(2);
        let a = c.insert(100, 1u32, false);
        c.insert(200, 2, true);
        assert!(c.find(100).is_some());
        // 200 is the LRU one now, and dirty.
        assert_eq!(c.victim(), Some((1, 200, true)));
        let s = c.insert(300, 3, false);
        assert_eq!(s, 1);
        assert!(c.find(200).is_none());
        assert_eq!(*c.get(a), 1);
        *c.get_mut(a) = 5;
        assert_eq!(c.dirty(), vec![(a, 100)]);
        c.mark_clean(a);
        assert!(c.dirty().is_empty());
        let s300 = c.find(300).unwrap();
        assert_eq!(*c.get(s300), 3);
    }
}
