//! Helpers for tests of device crates: [`capture_log`], to see what a test
//! made a device log (used by this crate's tests and, through
//! `vmkit_virtio::test_utils`, by the virtio device crates').

use std::cell::RefCell;
use std::sync::Once;

/// One log record seen by [`capture_log`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// The record's level.
    pub level: log::Level,
    /// The formatted message.
    pub message: String,
}

thread_local! {
    /// The records of the [`capture_log`] running on this thread, if any.
    static CAPTURED: RefCell<Option<Vec<LogLine>>> = const { RefCell::new(None) };
}

/// The process's logger once [`capture_log`] installed it: it keeps the
/// records of threads inside `capture_log` and drops the others.
struct CaptureLogger;

impl log::Log for CaptureLogger {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        CAPTURED
            .try_with(|c| c.try_borrow().is_ok_and(|c| c.is_some()))
            .unwrap_or(false)
    }

    fn log(&self, record: &log::Record<'_>) {
        // try_with/try_borrow_mut: nothing is recorded while the thread's
        // storage is being torn down or the list is already borrowed.
        let _ = CAPTURED.try_with(|c| {
            if let Ok(mut c) = c.try_borrow_mut()
                && let Some(lines) = c.as_mut()
            {
                lines.push(LogLine {
                    level: record.level(),
                    message: record.args().to_string(),
                });
            }
        });
    }

    fn flush(&self) {}
}

static LOGGER: CaptureLogger = CaptureLogger;

/// Runs `f` and returns what it returned with the log records (every
/// level) emitted on the calling thread meanwhile; records of other threads
/// are not captured, so tests running in parallel do not see each other's.
/// A capture nested in another gets the records of its own `f` only.
///
/// The first call installs a process-wide logger and sets the maximum level
/// to `Trace`; it panics if the test binary already installed another
/// logger.
///
/// ```
/// use vmkit_devices::test_utils::capture_log;
///
/// let ((), lines) = capture_log(|| log::warn!("virtio-xyz: bad request"));
/// assert_eq!(lines.len(), 1);
/// assert_eq!(lines[0].level, log::Level::Warn);
/// assert_eq!(lines[0].message, "virtio-xyz: bad request");
/// ```
pub fn capture_log<R>(f: impl FnOnce() -> R) -> (R, Vec<LogLine>) {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&LOGGER).expect("capture_log: another logger is already installed");
        log::set_max_level(log::LevelFilter::Trace);
    });

    /// Ends the capture (and restores an enclosing one) even if `f`
    /// panics.
    struct Restore(Option<Option<Vec<LogLine>>>);

    impl Restore {
        fn finish(&mut self) -> Vec<LogLine> {
            let outer = self.0.take().unwrap_or(None);
            CAPTURED
                .with(|c| std::mem::replace(&mut *c.borrow_mut(), outer))
                .unwrap_or_default()
        }
    }

    impl Drop for Restore {
        fn drop(&mut self) {
            if self.0.is_some() {
                self.finish();
            }
        }
    }

    let outer = CAPTURED.with(|c| c.borrow_mut().replace(Vec::new()));
    let mut restore = Restore(Some(outer));
    let result = f();
    let lines = restore.finish();
    (result, lines)
}

/// The messages of the warnings and errors among `lines`.
pub fn warnings(lines: &[LogLine]) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| l.level <= log::Level::Warn)
        .map(|l| l.message.as_str())
        .collect()
}

/// How many lines `events` events of one kind may cost through a
/// [`LogLimiter`](crate::LogLimiter): the first ten, then one per power of
/// two (23 for 100,000 events).
///
/// ```
/// use vmkit_devices::test_utils::limited_lines;
///
/// assert_eq!(limited_lines(5), 5);
/// assert_eq!(limited_lines(100_000), 10 + 13);
/// ```
pub fn limited_lines(events: u64) -> usize {
    (1..=events)
        .filter(|&n| n <= 10 || n.is_power_of_two())
        .count()
}
