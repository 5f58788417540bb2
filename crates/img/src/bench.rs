//! `bench`: qemu-img bench's load on a [`DiskImage`], to be run side by
//! side with `qemu-img bench` on the same image with the same flags.
//!
//! The requests are the ones qemu-img sends: `count` requests of
//! `buffer_size` bytes, the first at `offset`, each next one `step` bytes
//! further and wrapped modulo the image size (`offset = (offset + step) %
//! size`, not back to the start offset); a request that runs past the end
//! of the image fails the run, as it does in qemu-img. `depth` requests are
//! in flight at once: here each is one worker thread issuing synchronous
//! [`DiskImage`] calls on the shared image, taking the next request of the
//! sequence when its previous one completes.
//!
//! Buffers are page-aligned anonymous mappings (vm-memory's
//! [`MmapRegion`]), so `cache=none` (`O_DIRECT`) works for aligned sizes.
//! `-n` and `-i native|io_uring|threads` are accepted: with threads there
//! is no AIO engine to choose, but `native` keeps qemu-img's rule that it
//! needs `cache=none`.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use vm_memory::{MmapRegion, VolatileMemory};
use vmkit_disk::DiskImage;

use crate::image::{self, OpenFlags};
use crate::{Error, Result};

/// qemu's cache modes (`-t`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// `none` (or `off`): `O_DIRECT`, flushes honoured.
    None,
    /// `writeback`: the host page cache, flushes honoured.
    #[default]
    Writeback,
    /// `writethrough`: every write is followed by a flush.
    Writethrough,
    /// `directsync`: `O_DIRECT` and a flush after every write.
    Directsync,
    /// `unsafe`: flushes are ignored.
    Unsafe,
}

impl CacheMode {
    /// Whether the page cache is bypassed.
    pub fn direct(self) -> bool {
        matches!(self, CacheMode::None | CacheMode::Directsync)
    }

    fn flush_each_write(self) -> bool {
        matches!(self, CacheMode::Writethrough | CacheMode::Directsync)
    }

    fn ignore_flush(self) -> bool {
        self == CacheMode::Unsafe
    }
}

impl std::str::FromStr for CacheMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" | "off" => Ok(CacheMode::None),
            "writeback" => Ok(CacheMode::Writeback),
            "writethrough" => Ok(CacheMode::Writethrough),
            "directsync" => Ok(CacheMode::Directsync),
            "unsafe" => Ok(CacheMode::Unsafe),
            _ => Err(Error::Usage("Invalid cache mode".into())),
        }
    }
}

/// The AIO engine qemu-img is asked for (`-i`, `-n`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Aio {
    /// A thread pool (what this tool always uses).
    #[default]
    Threads,
    /// Linux AIO: needs `cache=none`.
    Native,
    /// io_uring.
    IoUring,
}

impl std::str::FromStr for Aio {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "threads" => Ok(Aio::Threads),
            "native" => Ok(Aio::Native),
            "io_uring" => Ok(Aio::IoUring),
            _ => Err(Error::Usage(format!("Invalid aio option: {s}"))),
        }
    }
}

/// What a bench run sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchOptions {
    /// Number of requests (`-c`, default 75000).
    pub count: u64,
    /// Requests in flight (`-d`, default 64).
    pub depth: usize,
    /// The first request's offset (`-o`).
    pub offset: u64,
    /// Bytes per request (`-s`, default 4096).
    pub buffer_size: usize,
    /// Distance between requests (`-S`; 0 means `buffer_size`).
    pub step: u64,
    /// Write instead of read (`-w`).
    pub write: bool,
    /// The byte written (`--pattern`).
    pub pattern: u8,
    /// Flush after this many requests (`--flush-interval`, 0 = never).
    pub flush_interval: u64,
    /// Let no request start while a flush is pending (default; `--no-drain`
    /// turns it off).
    pub drain_on_flush: bool,
    /// `-t`.
    pub cache: CacheMode,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            count: 75000,
            depth: 64,
            offset: 0,
            buffer_size: 4096,
            step: 0,
            write: false,
            pattern: 0,
            flush_interval: 0,
            drain_on_flush: true,
            cache: CacheMode::Writeback,
        }
    }
}

impl BenchOptions {
    /// The step actually used: `buffer_size` when 0.
    pub fn effective_step(&self) -> u64 {
        if self.step == 0 {
            self.buffer_size as u64
        } else {
            self.step
        }
    }

    /// The offset of request `k` (0-based) on an image of `size` bytes.
    pub fn request_offset(&self, k: u64, size: u64) -> u64 {
        if k == 0 {
            return self.offset;
        }
        if size == 0 {
            return 0;
        }
        let o = u128::from(self.offset) + u128::from(k) * u128::from(self.effective_step());
        (o % u128::from(size)) as u64
    }

    /// qemu-img's first line.
    pub fn banner(&self) -> String {
        let mut s = format!(
            "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})\n",
            self.count,
            if self.write { "write" } else { "read" },
            self.buffer_size,
            self.depth,
            self.offset,
            self.effective_step()
        );
        if self.flush_interval != 0 {
            s += &format!("Sending flush every {} requests\n", self.flush_interval);
        }
        s
    }

    /// Checks the combination as qemu-img does.
    pub fn validate(&self) -> Result<()> {
        if !self.write && self.flush_interval != 0 {
            return Err(Error::Usage(
                "--flush-interval is only available in write tests".into(),
            ));
        }
        if self.flush_interval != 0 && self.flush_interval < self.depth as u64 {
            return Err(Error::Usage(
                "Flush interval can't be smaller than depth".into(),
            ));
        }
        Ok(())
    }
}

/// Sends the requests `options` describe to `image`, from `depth` threads,
/// and returns how long they took (buffer setup excluded, as in qemu-img).
pub fn run_bench(image: &dyn DiskImage, options: &BenchOptions) -> Result<Duration> {
    let size = image.size();
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    // Requests hold it shared; a draining flush holds it exclusively.
    let drain = RwLock::new(());
    let fail = |e: Error| {
        stop.store(true, Ordering::SeqCst);
        let mut slot = failure.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(e);
    };
    let flush = || {
        if options.cache.ignore_flush() {
            return Ok(());
        }
        image.flush()
    };
    let workers = options
        .depth
        .min(usize::try_from(options.count).unwrap_or(usize::MAX))
        .max(1);

    // Buffers first: qemu-img allocates and fills them before the clock.
    let mut buffers = Vec::with_capacity(workers);
    for _ in 0..workers {
        let region = MmapRegion::<()>::new(options.buffer_size.max(1))
            .map_err(|e| Error::Invalid(format!("cannot allocate the I/O buffer: {e}")))?;
        let slice = region
            .get_slice(0, options.buffer_size)
            .map_err(|e| Error::Invalid(format!("cannot map the I/O buffer: {e}")))?;
        slice.copy_from(&vec![options.pattern; options.buffer_size]);
        buffers.push(region);
    }

    let start = Instant::now();
    std::thread::scope(|scope| {
        for region in &buffers {
            let (next, stop, drain, fail, flush) = (&next, &stop, &drain, &fail, &flush);
            scope.spawn(move || {
                let Ok(mut buf) = region.get_slice(0, options.buffer_size) else {
                    return fail(Error::Invalid("cannot map the I/O buffer".into()));
                };
                while !stop.load(Ordering::Relaxed) {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= options.count {
                        break;
                    }
                    let offset = options.request_offset(k, size);
                    let result = {
                        let _shared = drain.read().unwrap_or_else(|p| p.into_inner());
                        if options.write {
                            image.write_at(&buf, offset).and_then(|()| {
                                if options.cache.flush_each_write() {
                                    image.flush()
                                } else {
                                    Ok(())
                                }
                            })
                        } else {
                            image.read_at(&mut buf, offset)
                        }
                    };
                    if let Err(e) = result {
                        return fail(Error::Invalid(format!("Failed request: {e}")));
                    }
                    let not_issued = options.count - (k + 1);
                    if options.flush_interval != 0
                        && not_issued.is_multiple_of(options.flush_interval)
                    {
                        let r = if options.drain_on_flush {
                            let _all = drain.write().unwrap_or_else(|p| p.into_inner());
                            flush()
                        } else {
                            flush()
                        };
                        if let Err(e) = r {
                            return fail(Error::Invalid(format!("flush failed: {e}")));
                        }
                    }
                }
            });
        }
    });
    let elapsed = start.elapsed();
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    // qemu-img flushes when it closes the image, after the clock stops.
    if options.write {
        flush()?;
    }
    Ok(elapsed)
}

/// The arguments of `bench` besides the request pattern.
#[derive(Clone, Debug, Default)]
pub struct BenchArgs {
    /// `-f`: the format; probed when absent.
    pub format: Option<String>,
    /// `-i` / `-n`.
    pub aio: Aio,
    /// The requests.
    pub options: BenchOptions,
    /// The image.
    pub filename: String,
}

/// Runs `bench`: qemu-img's lines on `out`.
pub fn bench(args: &BenchArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<()> {
    let opts = &args.options;
    opts.validate()?;
    let path = Path::new(&args.filename);
    let warn = if opts.write { Some(err) } else { None };
    let format = image::format_or_probe(args.format.as_deref(), path, warn)?;
    if args.aio == Aio::Native && !opts.cache.direct() {
        return Err(Error::Invalid(format!(
            "Could not open '{}': aio=native was specified, but it requires cache.direct=on, which was not specified.",
            args.filename
        )));
    }
    let flags = OpenFlags {
        read_only: !opts.write,
        direct: opts.cache.direct(),
    };
    let image = image::open_image(path, format, flags)?;
    let _ = out.write_all(opts.banner().as_bytes());
    let _ = out.flush();
    let elapsed = run_bench(image.as_ref(), opts)?;
    let _ = writeln!(
        out,
        "Run completed in {:.3} seconds.",
        elapsed.as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmkit_disk::MemDisk;

    #[test]
    fn offsets_wrap_modulo_the_size_like_qemu_img() {
        let opts = BenchOptions {
            step: 100000,
            ..BenchOptions::default()
        };
        let size = 1 << 20;
        let offsets: Vec<u64> = (0..12).map(|k| opts.request_offset(k, size)).collect();
        // (10 * 100000) % 1 MiB and on: wraps to 51424, not to 0.
        assert_eq!(&offsets[9..], &[900000, 1000000, 51424]);
        let opts = BenchOptions {
            offset: 4096,
            ..BenchOptions::default()
        };
        assert_eq!(opts.request_offset(0, 8192), 4096);
        assert_eq!(opts.request_offset(1, 8192), 0);
        assert_eq!(opts.effective_step(), 4096);
    }

    #[test]
    fn writes_land_where_qemu_img_writes_them() {
        let disk = MemDisk::new(1 << 20, false);
        let opts = BenchOptions {
            count: 20,
            depth: 3,
            step: 100000,
            write: true,
            pattern: 0xab,
            flush_interval: 4,
            ..BenchOptions::default()
        };
        run_bench(&disk, &opts).unwrap();
        let data = disk.contents();
        let mut expected = vec![0u8; 1 << 20];
        for k in 0..20 {
            let o = opts.request_offset(k, 1 << 20) as usize;
            expected[o..o + 4096].fill(0xab);
        }
        assert!(data == expected);
    }

    #[test]
    fn a_request_past_the_end_fails_the_run() {
        let disk = MemDisk::new(1 << 20, false);
        let opts = BenchOptions {
            count: 5,
            depth: 1,
            offset: (1 << 20) - 2048,
            write: true,
            pattern: 1,
            ..BenchOptions::default()
        };
        let e = run_bench(&disk, &opts).unwrap_err();
        assert!(e.to_string().starts_with("Failed request"), "{e}");
        assert!(disk.contents().iter().all(|&b| b == 0));
        disk.fail_io(true);
        let opts = BenchOptions {
            count: 100,
            depth: 4,
            ..BenchOptions::default()
        };
        assert!(run_bench(&disk, &opts).is_err());
    }

    #[test]
    fn option_checks_match_qemu_img() {
        let reads_with_flush = BenchOptions {
            flush_interval: 64,
            ..BenchOptions::default()
        };
        assert!(reads_with_flush.validate().is_err());
        let small_interval = BenchOptions {
            write: true,
            depth: 8,
            flush_interval: 4,
            ..BenchOptions::default()
        };
        assert!(small_interval.validate().is_err());
        assert_eq!(
            BenchOptions::default().banner(),
            "Sending 75000 read requests, 4096 bytes each, 64 in parallel \
             (starting at offset 0, step size 4096)\n"
        );
    }
}
