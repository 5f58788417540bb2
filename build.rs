//! Builds the minimal guest (`crates/guest`) and hands its ELF to
//! `vmkit::guest::ELF` through `VMKIT_GUEST_ELF`.
//!
//! The guest is a `no_std` program with `panic = "abort"`, its own link
//! arguments and its own `.cargo/config.toml`, so it is its own workspace and
//! is built here with a nested `cargo build --release`, run from the guest's
//! directory with a target directory under `OUT_DIR` (so it never waits on the
//! outer build's lock) and with the outer build's flags removed from the
//! environment.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";
const GUEST_BIN: &str = "vmkit-guest";

/// Environment variables of the outer build that must not reach the nested
/// one: they would change its flags, profile, target or output directory.
fn leaks_into_nested_build(name: &str) -> bool {
    const KEEP: &[&str] = &["CARGO_HOME", "CARGO_MAKEFLAGS"];
    const KEEP_PREFIXES: &[&str] = &[
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
    ];
    const DROP: &[&str] = &[
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTC_LINKER",
        "TARGET",
        "HOST",
        "OUT_DIR",
        "OPT_LEVEL",
        "PROFILE",
        "DEBUG",
        "NUM_JOBS",
    ];
    if KEEP.contains(&name) || KEEP_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return false;
    }
    name.starts_with("CARGO_") || name.starts_with("__CARGO") || DROP.contains(&name)
}

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let guest_dir = manifest_dir.join("crates").join("guest");
    let target_dir = out_dir.join("guest-target");

    for path in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "linker.ld",
        ".cargo/config.toml",
        "src",
    ] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(path).display());
    }

    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&guest_dir)
        .arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(guest_dir.join("Cargo.toml"))
        .arg("--target")
        .arg(GUEST_TARGET)
        .arg("--target-dir")
        .arg(&target_dir)
        .stdin(Stdio::null());
    for (name, _) in env::vars_os() {
        if name.to_str().is_some_and(leaks_into_nested_build) {
            cmd.env_remove(&name);
        }
    }

    let output = match cmd.output() {
        Ok(output) => output,
        Err(e) => fail(&format!(
            "could not run {}: {e}",
            Path::new(&cargo).display()
        )),
    };
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stdout));
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        fail(&format!(
            "`cargo build --release` of the minimal guest in {} failed ({}); its output is above",
            guest_dir.display(),
            output.status
        ));
    }

    let elf = target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join(GUEST_BIN);
    if !elf.is_file() {
        fail(&format!(
            "the guest build succeeded but {} is missing",
            elf.display()
        ));
    }
    println!("cargo:rustc-env=VMKIT_GUEST_ELF={}", elf.display());
}

fn fail(message: &str) -> ! {
    eprintln!("error: vmkit: {message}");
    std::process::exit(1);
}
