//! How much memory the VMM itself uses, beside its guest's memory.

use std::io;

use vmkit_memory::GuestMemoryMmap;
use vmkit_memory::vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// This process's resident memory outside `mem`'s mappings, from
/// `/proc/self/smaps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overhead {
    /// Everything resident beyond guest memory (code and shared libraries
    /// included), in KiB.
    pub rss_kib: u64,
    /// Its anonymous part (heap, stacks, the vCPUs' run areas): what the
    /// VMM allocated itself, in KiB.
    pub anon_kib: u64,
}

/// Measures [`Overhead`] now.
pub fn resident_overhead(mem: &GuestMemoryMmap) -> io::Result<Overhead> {
    let guest: Vec<(u64, u64)> = mem
        .iter()
        .map(|r| {
            let start = r.as_ptr() as u64;
            (start, start + r.len())
        })
        .collect();
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let kib = |v: &str| {
        v.trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    let (mut rss_kib, mut anon_kib, mut in_guest) = (0, 0, false);
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, _)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let start = u64::from_str_radix(start, 16).unwrap_or(0);
            in_guest = guest.iter().any(|&(s, e)| start >= s && start < e);
        } else if let Some(v) = line.strip_prefix("Rss:").filter(|_| !in_guest) {
            rss_kib += kib(v);
        } else if let Some(v) = line.strip_prefix("Anonymous:").filter(|_| !in_guest) {
            anon_kib += kib(v);
        }
    }
    Ok(Overhead { rss_kib, anon_kib })
}
