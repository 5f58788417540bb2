//! Disassembles every ACPI table this crate generates with ACPICA's `iasl`
//! (Debian's acpica-tools), the reference implementation: each table must
//! disassemble without errors or warnings, and the DSDT must show each
//! virtio-mmio device with its window and interrupt.
//!
//! The RSDP has no standard table header, and the iasl of Debian 12
//! (20200925) refuses to disassemble a bare one ("does not contain a valid
//! ACPI table"); for it the test goes the other way: iasl's data table
//! compiler builds an RSDP from our field values, computing both checksums
//! itself, and its output must equal our bytes.
//!
//! Under CI (`CI=true`) a missing `iasl` is a failure; elsewhere the test
//! says so in one line and returns.

use std::path::{Path, PathBuf};
use std::process::Command;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_boot::acpi::{AcpiConfig, AcpiPm, AcpiUart, VirtioMmioDesc, setup_acpi};

fn iasl_present() -> bool {
    let found = Command::new("iasl").arg("-v").output().is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "iasl (acpica-tools) is missing under CI: .ci/run installs it"
        );
        eprintln!("skipped: iasl (acpica-tools) is not installed");
    }
    found
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs iasl with `args` in `dir`; returns its output, which must show no
/// error or warning.
fn iasl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("iasl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "iasl {args:?}: {text}");
    for bad in ["Error ", "Warning ", "Invalid", "invalid", "Could not"] {
        assert!(!text.contains(bad), "iasl {args:?}: {bad}:\n{text}");
    }
    text
}

/// Compiles our RSDP's fields with iasl's data table compiler, which fills
/// in the checksums, and compares the result with our bytes.
fn check_rsdp_with_iasl(dir: &Path, rsdp: &[u8]) {
    assert_eq!(rsdp.len(), 36);
    let hex = |b: &[u8]| {
        b.iter()
            .rev()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    };
    let source = format!(
        "[0008] Signature : \"RSD PTR \"\n\
         [0001] Checksum : 00\n\
         [0006] Oem ID : \"{}\"\n\
         [0001] Revision : {:02X}\n\
         [0004] RSDT Address : {}\n\
         [0004] Length : {}\n\
         [0008] XSDT Address : {}\n\
         [0001] Extended Checksum : 00\n\
         [0003] Reserved : 000000\n",
        String::from_utf8_lossy(&rsdp[9..15]),
        rsdp[15],
        hex(&rsdp[16..20]),
        hex(&rsdp[20..24]),
        hex(&rsdp[24..32]),
    );
    std::fs::write(dir.join("rsdp.asl"), source).unwrap();
    let text = iasl(dir, &["rsdp.asl"]);
    assert!(text.contains("Compilation successful"), "{text}");
    let compiled = std::fs::read(dir.join("rsdp.aml")).unwrap();
    assert_eq!(compiled, rsdp, "iasl's RSDP (checksums its own) differs");
}

/// An ASL listing without `//` and `/* */` comments, on one line with
/// single spaces.
fn without_comments(asl: &str) -> String {
    let mut out = String::new();
    let mut rest = asl;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        rest = rest[start..]
            .find("*/")
            .map_or("", |end| &rest[start + end + 2..]);
    }
    out.push_str(rest);
    out.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .flat_map(str::split_whitespace)
        .collect::<Vec<_>>()
        .join(" ")
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Reads every table from guest memory, as a guest finds them from the RSDP.
fn tables_from_memory(mem: &GuestMemoryMmap<()>, rsdp: u64) -> Vec<(String, Vec<u8>)> {
    let read = |addr: u64, len: usize| {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    };
    let table = |addr: u64| {
        let len = le32(&read(addr, 8), 4) as usize;
        read(addr, len)
    };
    let rsdp_bytes = read(rsdp, 36);
    let xsdt = table(le64(&rsdp_bytes, 24));
    let mut out = vec![("rsdp".to_string(), rsdp_bytes)];
    for i in 0..(xsdt.len() - 36) / 8 {
        let t = table(le64(&xsdt, 36 + 8 * i));
        if &t[..4] == b"FACP" {
            out.push(("dsdt".to_string(), table(le64(&t, 140))));
        }
        out.push((String::from_utf8_lossy(&t[..4]).to_lowercase(), t));
    }
    out.push(("xsdt".to_string(), xsdt));
    out
}

#[test]
fn iasl_disassembles_every_table() {
    if !iasl_present() {
        return;
    }
    let devices: Vec<VirtioMmioDesc> = (0..3u32)
        .map(|i| VirtioMmioDesc {
            base: 0xc000_0000 + u64::from(i) * 0x1000,
            irq: 5 + i,
        })
        .collect();
    let config = AcpiConfig {
        num_cpus: 4,
        uart: Some(AcpiUart {
            port: 0x3f8,
            irq: 4,
        }),
        virtio_mmio: devices.clone(),
        pm: AcpiPm {
            sleep_control_port: 0x600,
            sleep_status_port: 0x601,
            reset_port: 0x602,
            reset_value: 0xfe,
            s5_sleep_type: 5,
        },
    };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    let rsdp = setup_acpi(&mem, &config).unwrap();
    let tables = tables_from_memory(&mem, rsdp.0);
    let names: Vec<&str> = tables.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names, ["rsdp", "dsdt", "facp", "apic", "xsdt"]);

    let dir = scratch("acpi-iasl");
    check_rsdp_with_iasl(&dir, &tables[0].1);
    let mut dsl = std::collections::HashMap::new();
    for (name, bytes) in &tables[1..] {
        let ext = if name == "dsdt" { "aml" } else { "dat" };
        let file = format!("{name}.{ext}");
        std::fs::write(dir.join(&file), bytes).unwrap();
        let text = iasl(&dir, &["-d", &file]);
        let listing = std::fs::read_to_string(dir.join(format!("{name}.dsl")))
            .unwrap_or_else(|e| panic!("no {name}.dsl: {e}\n{text}"));
        for bad in ["**** ", "Invalid", "Unknown"] {
            assert!(!listing.contains(bad), "{name}.dsl has {bad:?}:\n{listing}");
        }
        dsl.insert(name.clone(), listing);
    }

    // The DSDT: each LNRO0005 device with its window and interrupt.
    let dsdt = &dsl["dsdt"];
    let compact = without_comments(dsdt);
    for (i, d) in devices.iter().enumerate() {
        let start = compact
            .find(&format!("Device (VR{i:02})"))
            .unwrap_or_else(|| panic!("no VR{i:02}:\n{dsdt}"));
        let body = &compact[start..];
        let body = &body[..body[1..].find("Device (").map_or(body.len(), |e| e + 1)];
        assert!(body.contains("Name (_HID, \"LNRO0005\")"), "{body}");
        let uid = match i {
            0 => "Zero".to_string(),
            1 => "One".to_string(),
            _ => format!("0x{i:02X}"),
        };
        assert!(body.contains(&format!("Name (_UID, {uid})")), "{body}");
        let window = format!("Memory32Fixed (ReadWrite, 0x{:08X}, 0x00001000, )", d.base);
        assert!(body.contains(&window), "{window} in {body}");
        let irq = format!(
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) {{ 0x{:08X}, }}",
            d.irq
        );
        assert!(body.contains(&irq), "{irq} in {body}");
    }
    for expected in [
        "Name (_S5, Package (0x04) { 0x05, Zero, Zero, Zero })",
        "Device (COM1) { Name (_HID, EisaId (\"PNP0501\")",
        "IO (Decode16, 0x03F8, 0x03F8, 0x00, 0x08, ) \
         Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000004, }",
    ] {
        assert!(compact.contains(expected), "{expected} in {compact}");
    }

    // The FADT and MADT as iasl reads them.
    let facp = &dsl["facp"];
    let facp = without_comments(facp);
    for expected in [
        "Hardware Reduced (V5) : 1",
        "Reset Register Supported (V2) : 1",
        "Reset Register : [Generic Address Structure] [074h 0116 1] Space ID : 01 [SystemIO]",
        "Address : 0000000000000602",
        "Value to cause reset : FE",
        "Sleep Control Register : [Generic Address Structure] [0F4h 0244 1] Space ID : 01",
        "Address : 0000000000000600",
        "Sleep Status Register : [Generic Address Structure] [100h 0256 1] Space ID : 01",
        "Address : 0000000000000601",
    ] {
        assert!(facp.contains(expected), "{expected} in {facp}");
    }
    let apic = &dsl["apic"];
    assert_eq!(
        apic.matches("Subtable Type : 00 [Processor Local APIC]")
            .count(),
        4,
        "{apic}"
    );
    assert!(apic.contains("Subtable Type : 01 [I/O APIC]"), "{apic}");
    assert!(
        apic.contains("Subtable Type : 04 [Local APIC NMI]"),
        "{apic}"
    );
    assert!(apic.contains("PC-AT Compatibility : 1"), "{apic}");
    std::fs::remove_dir_all(&dir).unwrap();
}
