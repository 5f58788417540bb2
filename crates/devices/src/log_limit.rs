//! Rate limiting of the log lines a guest can trigger.
//!
//! The guest is hostile: a guest that makes a bad port or register access,
//! or a driver that sends a malformed request, a million times a second
//! must not turn each of those into a line on the VMM's log. Every such line goes through a
//! [`LogLimiter`], which counts the events of one kind and lets through the
//! first [`LogLimiter::BURST`] and then only the ones whose running count is
//! a power of two, so `n` events cost about `10 + log2(n)` lines (at most 70
//! over the life of a counter), and the count printed with each line says
//! how many were not shown.
//!
//! Keep one limiter per kind of event and per device (not per activation: a
//! driver can reset and re-initialise a device at will), so that a flood of
//! one kind does not hide the first occurrences of another. The devices of
//! this crate do; virtio device crates use the same type (re-exported as
//! `vmkit_virtio::LogLimiter`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts the occurrences of one kind of guest-triggered event and says
/// which of them deserve a log line: the first [`LogLimiter::BURST`], then
/// every one whose running count is a power of two.
///
/// The counter is atomic, so a limiter can be shared (behind an `Arc`, or
/// in a structure that is) by the threads of one device and kept across
/// device resets. Log lines print the running count, as
/// `"... (N so far)"`, so a reader knows how many lines were left out.
///
/// # Example
///
/// ```
/// use vmkit_devices::LogLimiter;
///
/// let bad_requests = LogLimiter::new();
/// let mut printed = Vec::new();
/// for _ in 0..100_000 {
///     // A malformed request from the driver.
///     if let Some(n) = bad_requests.tick() {
///         log::warn!("xyz: bad request ({n} bad requests so far)");
///         printed.push(n);
///     }
/// }
/// assert_eq!(bad_requests.count(), 100_000);
/// // 1 to 10, then 16, 32, ..., 65536.
/// assert_eq!(printed.len(), 10 + 13);
/// assert_eq!(printed[..11], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16]);
/// assert_eq!(printed.last(), Some(&65536));
/// ```
#[derive(Debug, Default)]
pub struct LogLimiter {
    count: AtomicU64,
}

impl LogLimiter {
    /// How many events are logged before only powers of two are.
    pub const BURST: u64 = 10;

    /// A limiter that has counted nothing.
    pub const fn new() -> Self {
        LogLimiter {
            count: AtomicU64::new(0),
        }
    }

    /// Whether the `count`-th event (counting from 1) deserves a log line:
    /// the first [`LogLimiter::BURST`], then every power of two.
    pub const fn should_log(count: u64) -> bool {
        count <= Self::BURST || count.is_power_of_two()
    }

    /// Counts one event. Returns the running count (this event included)
    /// when the event deserves a log line, `None` when it should be
    /// dropped silently.
    pub fn tick(&self) -> Option<u64> {
        // The count is only a number (no memory it publishes): Relaxed is
        // enough. It wraps after 2^64 events, which never happens.
        let count = self.count.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        Self::should_log(count).then_some(count)
    }

    /// How many events were counted, logged or not.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// The limits on the log lines the guest can make one of this crate's
/// devices print, one per kind so that a flood of one kind does not hide
/// the first occurrences of another. A device keeps them for its whole
/// life.
#[derive(Debug, Default)]
pub(crate) struct DeviceLogLimits {
    /// Accesses the device ignores or cannot serve: wrong size or offset,
    /// values it does not implement, a full loopback FIFO.
    pub(crate) access: LogLimiter,
    /// What the guest asks of the VMM through the device (reset, power-off,
    /// an exit status), logged as information.
    pub(crate) request: LogLimiter,
    /// Host-side failures met at the guest's pace: signalling an event or
    /// an interrupt, writing the guest's output.
    pub(crate) host: LogLimiter,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn first_ten_then_powers_of_two() {
        let limiter = LogLimiter::new();
        let logged: Vec<u64> = (0..5000).filter_map(|_| limiter.tick()).collect();
        assert_eq!(
            logged,
            [
                1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096
            ]
        );
        assert_eq!(limiter.count(), 5000);
    }

    #[test]
    fn should_log_matches_tick() {
        let limiter = LogLimiter::default();
        for expected_count in 1..=3000u64 {
            let ticked = limiter.tick();
            assert_eq!(
                ticked.is_some(),
                LogLimiter::should_log(expected_count),
                "event {expected_count}"
            );
            if let Some(n) = ticked {
                assert_eq!(n, expected_count);
            }
        }
        assert!(!LogLimiter::should_log(0x8000_0000_0000_0001));
        assert!(LogLimiter::should_log(0x8000_0000_0000_0000));
    }

    #[test]
    fn a_million_events_cost_thirty_lines() {
        let limiter = LogLimiter::new();
        let lines = (0..1_000_000).filter(|_| limiter.tick().is_some()).count();
        // 1..=10, then 2^4 ..= 2^19.
        assert_eq!(lines, 10 + 16);
    }

    #[test]
    fn shared_between_threads_every_event_counts_once() {
        let limiter = Arc::new(LogLimiter::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                std::thread::spawn(move || {
                    (0..10_000)
                        .filter_map(|_| limiter.tick())
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut logged: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        logged.sort_unstable();
        // Every count is handed out once, so the lines are the same as
        // from one thread.
        let alone = LogLimiter::new();
        let expected: Vec<u64> = (0..40_000).filter_map(|_| alone.tick()).collect();
        assert_eq!(logged, expected);
        assert_eq!(limiter.count(), 40_000);
    }
}
