//! The image's I/O gate: a reader-writer lock that data I/O takes shared
//! and operations that make freed clusters reusable take exclusively.
//!
//! Every request takes it, from every I/O thread, so a single lock word
//! would bounce between CPUs on each request. It is sharded instead, one
//! cache-line-padded [`RwLock`] per CPU: a reader locks the shard of the
//! CPU it runs on (and unlocks that same shard, wherever it runs by then);
//! a writer locks every shard, in order. (crossbeam's `ShardedLock` shards
//! by thread instead, which with many more I/O threads than CPUs still
//! puts threads of different CPUs on one shard.)

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The most shards.
const MAX_SHARDS: usize = 64;

/// One shard, alone on its cache lines (128 bytes: adjacent-line
/// prefetchers pair 64-byte lines).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(RwLock<()>);

/// The sharded lock.
#[derive(Debug)]
pub(crate) struct Gate {
    shards: Box<[Shard]>,
}

/// Shared access; the shard stays locked until dropped.
pub(crate) struct ReadGuard<'a> {
    _shard: RwLockReadGuard<'a, ()>,
}

/// Exclusive access; every shard stays locked until dropped.
pub(crate) struct WriteGuard<'a> {
    _shards: Vec<RwLockWriteGuard<'a, ()>>,
}

impl Gate {
    /// A gate with a shard per CPU (a power of two, at most 64).
    pub(crate) fn new() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let n = cpus.next_power_of_two().min(MAX_SHARDS);
        Gate {
            shards: (0..n).map(|_| Shard::default()).collect(),
        }
    }

    /// Shared access. A panic while the lock was held does not matter to
    /// it (it guards no data), so poisoning is ignored.
    pub(crate) fn read(&self) -> ReadGuard<'_> {
        // SAFETY: sched_getcpu takes no arguments and only reads the
        // calling thread's CPU number.
        let cpu = unsafe { libc::sched_getcpu() };
        let i = usize::try_from(cpu).unwrap_or(0) & (self.shards.len() - 1);
        ReadGuard {
            _shard: self.shards[i].0.read().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Exclusive access: waits for all shared holders to finish.
    pub(crate) fn write(&self) -> WriteGuard<'_> {
        WriteGuard {
            _shards: self
                .shards
                .iter()
                .map(|s| s.0.write().unwrap_or_else(|e| e.into_inner()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn a_writer_excludes_readers_on_every_cpu() {
        let gate = Gate::new();
        let writing = AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        let _r = gate.read();
                        assert!(!writing.load(Ordering::SeqCst));
                    }
                });
            }
            for _ in 0..200 {
                let _w = gate.write();
                writing.store(true, Ordering::SeqCst);
                std::thread::yield_now();
                writing.store(false, Ordering::SeqCst);
            }
        });
        // Readers do not exclude one another.
        let (_a, _b) = (gate.read(), gate.read());
    }
}
