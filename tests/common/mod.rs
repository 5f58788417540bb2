//! Helpers shared by the integration tests: find and run the example VMM.
#![allow(dead_code)]

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

#[allow(unused_imports)] // not every test binary uses them
pub use vmkit_net::test_utils::{in_new_netns, tun_present};

/// Whether `/dev/kvm` exists. When it does, tests that need it must run
/// (and fail if it does not work); when it does not, they say so and skip.
pub fn kvm_present() -> bool {
    let present = Path::new("/dev/kvm").exists();
    if !present {
        eprintln!("skipped: /dev/kvm does not exist on this machine");
    }
    present
}

/// The example VMM, built by `cargo test` next to the test binaries.
pub fn vmm_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/examples/vmm
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let vmm = profile_dir.join("examples").join("vmm");
    assert!(
        vmm.exists(),
        "{} is missing: run the tests with `cargo test`, which builds the examples",
        vmm.display()
    );
    vmm
}

/// What one VMM run printed and how it ended.
pub struct Run {
    /// Exit code, `None` when killed by a signal.
    pub code: Option<i32>,
    /// Standard output (the guest's serial console).
    pub stdout: String,
    /// Standard error (the VMM's own messages).
    pub stderr: String,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit code: {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// How long any one VMM run may take before the test kills it and fails.
pub const VMM_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the example VMM with `args` to completion, killing it (and failing
/// the run: `code` is `None`) after [`VMM_TIMEOUT`], so a hung guest fails
/// a test instead of hanging it.
pub fn run_vmm(args: &[&str]) -> Run {
    let mut cmd = Command::new(vmm_path());
    cmd.args(args);
    let (run, timed_out) = run_bounded(cmd, VMM_TIMEOUT);
    if timed_out {
        return Run { code: None, ..run };
    }
    run
}

/// Runs `cmd` until it exits or `timeout` passes (then kills it), collecting
/// its output a line at a time; the second value says whether it timed out.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> (Run, bool) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the command");
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let out_thread = thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let err_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let mut stdout = String::new();
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                stdout.push_str(line.trim_end_matches('\r'));
                stdout.push('\n');
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break;
        }
    }
    let status = child.wait().expect("wait for the command");
    let _ = out_thread.join();
    stdout.extend(
        rx.try_iter()
            .map(|l| l.trim_end_matches('\r').to_string() + "\n"),
    );
    let stderr = err_thread.join().unwrap_or_default();
    (
        Run {
            code: status.code(),
            stdout,
            stderr,
        },
        timed_out,
    )
}

/// A fresh scratch directory under the target directory.
pub fn scratch_dir(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("test-scratch")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A minimal ELF64 x86_64 executable: one PT_LOAD segment holding `code` at
/// physical (and virtual) address `addr`, entry point at its first byte.
pub fn tiny_elf(addr: u64, code: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let offset = (EHDR + PHDR) as u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF");
    elf.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    elf.extend_from_slice(&addr.to_le_bytes()); // e_entry
    elf.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(EHDR as u16).to_le_bytes());
    elf.extend_from_slice(&(PHDR as u16).to_le_bytes());
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    assert_eq!(elf.len(), EHDR);
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    elf.extend_from_slice(&offset.to_le_bytes()); // p_offset
    elf.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&addr.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    assert_eq!(elf.len(), EHDR + PHDR);
    elf.extend_from_slice(code);
    elf
}

/// In a network namespace of [`in_new_netns`]: brings `lo` up and makes
/// bridge `br0` with `host`/24, up, for the VMM's tap (`bridge=br0`).
pub fn host_bridge(host: std::net::Ipv4Addr) {
    use vmkit::net::{bridge, iface};
    iface::set_up("lo", true).expect("lo up");
    bridge::create("br0").expect("create br0");
    iface::set_ipv4_address("br0", host, 24).expect("address br0");
    iface::set_up("br0", true).expect("br0 up");
}
