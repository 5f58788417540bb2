//! The tiny vmkit VMM: parse the command line, compose the crates, run.
//!
//! ```text
//! cargo run --release --example vmm -- -m 256 --cpus 2
//! ```
//!
//! With no `--kernel` it boots vmkit's built-in minimal guest, which checks
//! what the VMM set up and reports through the serial console and the exit
//! device; the process exits with the guest's status. A Linux kernel (ELF
//! vmlinux through PVH, or a bzImage) boots with `--kernel`, `--initrd` and
//! `--cmdline`; the devices are described in ACPI, and an ACPI power-off or
//! reboot ends the VM with status 0.

use std::fs::File;
use std::io::Cursor;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread;

use clap::Parser;
use vmkit::blk::{Block, DiskId};
use vmkit::boot::{self, BootInfo, ProtocolChoice};
use vmkit::devices::{
    ACPI_PM_PORT, ACPI_PM_PORT_LEN, AcpiPmDevice, Bus, COM1_IRQ, COM1_PORT, EXIT_PORT,
    EXIT_PORT_LEN, ExitDevice, I8042, I8042_PORT, I8042_PORT_LEN, SERIAL_PORT_LEN, Serial,
};
use vmkit::disk::{DiskImage, DiskSpec, open_disk};
use vmkit::hypervisor::{Hypervisor, kvm::KvmHypervisor};
use vmkit::memory::{self, SystemAllocator};
use vmkit::net::{Net, NetSpec};
use vmkit::virtio_mmio::attach_virtio_mmio;
use vmkit::{overhead, vcpu};
use vmm_sys_util::eventfd::EventFd;

/// Command line, after `qemu-system-x86_64 -enable-kvm -name NAME -m MiB ...`.
#[derive(Parser, Debug)]
#[command(name = "vmm", version, about = "vmkit's example VMM (KVM, x86_64)")]
struct Args {
    /// Name of the VM (used in messages).
    #[arg(long, default_value = "vmkit")]
    name: String,
    /// Guest memory in MiB.
    #[arg(
        short = 'm',
        long = "memory",
        value_name = "MiB",
        default_value_t = 256
    )]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Kernel to boot instead of the built-in minimal guest: an ELF vmlinux
    /// (PVH when it has the note) or a bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk, placed high in low RAM.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Entry of an ELF kernel: auto (PVH when it has a PVH note), pvh or
    /// linux64 (the 64-bit boot protocol).
    #[arg(long, value_name = "auto|pvh|linux64", default_value = "auto")]
    boot_protocol: ProtocolChoice,
    /// Kernel command line (for the built-in guest: appended to its own).
    #[arg(long, value_name = "STRING")]
    cmdline: Option<String>,
    /// The KVM device to open.
    #[arg(long, value_name = "PATH", default_value = "/dev/kvm")]
    kvm_device: PathBuf,
    /// A disk image as a virtio-blk device (repeatable; the format is never
    /// guessed from the file's contents).
    #[arg(long = "disk", value_name = "PATH[,format=raw][,readonly=on]")]
    disks: Vec<DiskSpec>,
    /// A NIC as a virtio-net device on a tap device, optionally attached to
    /// a host bridge (repeatable).
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC][,bridge=BR]")]
    nets: Vec<NetSpec>,
    /// Print, on exit, the VMM's resident memory beyond guest memory and
    /// each virtio device's request, notification and interrupt counts.
    #[arg(long)]
    stats: bool,
}

/// How a VM ended.
enum VmEnd {
    /// The guest wrote a status to the exit device.
    Status(u32),
    /// The guest reset the machine through the i8042 or ACPI (a clean
    /// shutdown).
    Reset,
    /// The guest powered off through ACPI (S5).
    PowerOff,
    /// A vCPU stopped on something the VMM cannot continue from.
    Fatal(String),
}

fn main() -> ExitCode {
    // The devices log what a guest does wrong (a bad request, a broken
    // queue) at warn level; RUST_LOG changes the level.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line: clap's first, without the usage hint after it.
            let msg = e.to_string();
            eprintln!(
                "vmm: {}",
                msg.lines().next().unwrap_or("invalid command line")
            );
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmm: {}: error: {e}", args.name);
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

fn run(args: &Args) -> Result<ExitCode, BoxError> {
    let hv = KvmHypervisor::open(&args.kvm_device)?;
    let max_cpus = hv.max_vcpus().min(u32::from(boot::MAX_CPUS));
    if args.cpus == 0 || args.cpus > max_cpus {
        return Err(format!("--cpus must be between 1 and {max_cpus}, not {}", args.cpus).into());
    }
    let cpus = args.cpus as u8;
    let cpuid = hv.supported_cpuid()?;
    let mem_size = args
        .memory
        .checked_mul(1 << 20)
        .ok_or_else(|| format!("-m {} MiB is too large", args.memory))?;
    memory::check_host_memory(mem_size)?;
    let mem = memory::create_guest_memory(mem_size, boot::phys_addr_bits(&cpuid))?;
    let vm = hv.create_vm()?;
    // SAFETY: `mem` is moved into `Arc`s held by every vCPU thread and is
    // never unmapped before the process exits, so the slots stay valid for
    // the VM's whole life.
    unsafe { memory::register_guest_memory(vm.as_ref(), &mem)? };
    vm.create_irq_chip()?;
    vm.create_pit()?;

    let choice = args.boot_protocol;
    let (kernel, mut cmdline) = match &args.kernel {
        Some(path) => {
            let mut file = File::open(path)
                .map_err(|e| format!("cannot open kernel {}: {e}", path.display()))?;
            let cmdline = args
                .cmdline
                .clone()
                .unwrap_or_else(|| "console=ttyS0 reboot=k panic=1".into());
            (boot::load_kernel_with(&mem, &mut file, choice)?, cmdline)
        }
        None => {
            let mut cmdline = format!(
                "console=ttyS0 vmkit.mem_mib={} vmkit.cpus={cpus}",
                args.memory
            );
            if let Some(extra) = &args.cmdline {
                cmdline.push(' ');
                cmdline.push_str(extra);
            }
            let mut image = Cursor::new(vmkit::guest::ELF);
            (boot::load_kernel_with(&mem, &mut image, choice)?, cmdline)
        }
    };
    let initrd = match &args.initrd {
        Some(path) => {
            let mut file = File::open(path)
                .map_err(|e| format!("cannot open initrd {}: {e}", path.display()))?;
            Some(boot::load_initrd(&mem, &mut file, &kernel)?)
        }
        None => None,
    };

    // virtio devices on the MMIO bus, announced in the ACPI DSDT and on the
    // command line (for kernels with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES).
    let mmio = Arc::new(Bus::new());
    let mut alloc = SystemAllocator::new()?;
    let mut block_stats = Vec::new();
    let mut disks = Vec::new();
    let mut slots = Vec::new();
    for (i, spec) in args.disks.iter().enumerate() {
        let disk: Arc<dyn DiskImage> = open_disk(spec)
            .map_err(|e| format!("--disk {}: {e}", spec.path.display()))?
            .into();
        disks.push(disk.clone());
        let block = Block::new(disk, DiskId::new(&format!("vmkit-disk{i}"))?);
        block_stats.push(block.stats());
        slots.push(attach_virtio_mmio(
            Box::new(block),
            &vm,
            &mem,
            &mut alloc,
            &mmio,
        )?);
    }
    let mut net_stats = Vec::new();
    for spec in &args.nets {
        let net = Net::new(spec.open_tap()?, spec.mac_or_random()?)?;
        net_stats.push(net.stats());
        slots.push(attach_virtio_mmio(
            Box::new(net),
            &vm,
            &mem,
            &mut alloc,
            &mmio,
        )?);
    }
    for slot in &slots {
        cmdline.push_str(&format!(" {}", slot.cmdline_arg()));
    }
    let acpi = vmkit::acpi::acpi_config(cpus, &slots);
    let boot_info = BootInfo {
        initrd,
        rsdp: Some(boot::acpi::setup_acpi(&mem, &acpi)?),
        ..BootInfo::new(&kernel)
    };
    boot::configure_system(&mem, &cmdline, cpus, &boot_info)?;

    // Legacy devices on the port-I/O bus.
    let pio = Arc::new(Bus::new());
    let serial_evt = EventFd::new(libc::EFD_NONBLOCK)?;
    vm.register_irqfd(&serial_evt, COM1_IRQ)?;
    // Unbuffered: every byte the guest writes reaches stdout at once (each
    // one already cost the guest an exit, a write(2) adds little).
    let stdout = File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let serial = Serial::new(serial_evt, Box::new(stdout));
    pio.insert(
        Arc::new(Mutex::new(serial)),
        COM1_PORT.into(),
        SERIAL_PORT_LEN,
    )?;
    let (end_tx, end_rx) = channel::<VmEnd>();
    // Blocking eventfds: `forward_event` threads sleep on them.
    let reset_evt = EventFd::new(0)?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(reset_evt.try_clone()?))),
        I8042_PORT.into(),
        I8042_PORT_LEN,
    )?;
    let power_off_evt = EventFd::new(0)?;
    let acpi_pm = AcpiPmDevice::new(power_off_evt.try_clone()?, reset_evt.try_clone()?);
    pio.insert(
        Arc::new(Mutex::new(acpi_pm)),
        ACPI_PM_PORT.into(),
        ACPI_PM_PORT_LEN,
    )?;
    let exit_evt = EventFd::new(0)?;
    let exit_dev = Arc::new(Mutex::new(ExitDevice::new(exit_evt.try_clone()?)));
    pio.insert(exit_dev.clone(), EXIT_PORT.into(), EXIT_PORT_LEN)?;

    // Device events become VM ends on the main channel.
    forward_event(exit_evt, end_tx.clone(), move || {
        let status = exit_dev.lock().map(|d| d.status()).unwrap_or(None);
        VmEnd::Status(status.unwrap_or(0))
    });
    forward_event(reset_evt, end_tx.clone(), || VmEnd::Reset);
    forward_event(power_off_evt, end_tx.clone(), || VmEnd::PowerOff);

    for id in 0..cpus {
        let vcpu = vm.create_vcpu(u32::from(id))?;
        let boot_entry = (id == 0).then_some(&kernel);
        boot::configure_vcpu(vcpu.as_ref(), &mem, id, cpus, &cpuid, boot_entry)?;
        let (pio, mmio, mem, end) = (pio.clone(), mmio.clone(), mem.clone(), end_tx.clone());
        thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let mut vcpu = vcpu;
                let why = vcpu::run_until_stop(vcpu.as_mut(), &pio, &mmio, &mem);
                let _ = end.send(VmEnd::Fatal(format!("vCPU {id}: {why}")));
            })?;
    }
    drop(end_tx);

    let end = end_rx
        .recv()
        .unwrap_or_else(|_| VmEnd::Fatal("every vCPU thread ended".into()));
    // What the guest wrote reaches the image files, metadata included,
    // however the VM ended.
    for (i, disk) in disks.iter().enumerate() {
        if let Err(e) = disk.flush() {
            eprintln!("vmm: {}: disk{i}: flush failed: {e}", args.name);
        }
    }
    if args.stats {
        let o = overhead::resident_overhead(&mem)?;
        eprintln!(
            "vmm: vmm overhead {} KiB resident beyond guest memory, of which {} KiB anonymous",
            o.rss_kib, o.anon_kib
        );
        for (i, s) in block_stats.iter().enumerate() {
            eprintln!(
                "vmm: disk{i}: {} requests, {} queue notifications, {} interrupts",
                s.requests_completed(),
                s.queue_notifications(),
                s.interrupts_sent()
            );
        }
        for (i, s) in net_stats.iter().enumerate() {
            eprintln!("vmm: net{i}: {s}");
        }
    }
    Ok(match end {
        VmEnd::Status(0) | VmEnd::Reset | VmEnd::PowerOff => ExitCode::SUCCESS,
        VmEnd::Status(s) => {
            eprintln!("vmm: {}: the guest reported status {s}", args.name);
            ExitCode::from(s.clamp(1, 255) as u8)
        }
        VmEnd::Fatal(why) => {
            eprintln!("vmm: {}: error: {why}", args.name);
            ExitCode::FAILURE
        }
    })
}

/// Waits for `evt` on its own thread and sends `what()` as the VM's end.
fn forward_event(evt: EventFd, tx: Sender<VmEnd>, what: impl FnOnce() -> VmEnd + Send + 'static) {
    thread::spawn(move || {
        if evt.read().is_ok() {
            let _ = tx.send(what());
        }
    });
}
