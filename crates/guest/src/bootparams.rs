//! The Linux zero page (`struct boot_params`) and the command line.
//!
//! Offsets are those of Documentation/arch/x86/zero-page.rst and boot.rst.

use crate::Report;
use crate::e820::{E820_MAX, E820Map};

const _: () = assert!(E820_TABLE + E820_MAX as u64 * E820_ENTRY_SIZE <= SIZE);
use crate::mem;

/// `acpi_rsdp_addr`: the ACPI RSDP, if the loader knows it (0: unknown).
const ACPI_RSDP_ADDR: u64 = 0x070;
/// `ext_cmd_line_ptr`: upper 32 bits of the command line address.
const EXT_CMD_LINE_PTR: u64 = 0x0c8;
/// `e820_entries`: number of entries in `e820_table`.
const E820_ENTRIES: u64 = 0x1e8;
/// `hdr.boot_flag`: 0xAA55.
const BOOT_FLAG: u64 = 0x1fe;
/// `hdr.header`: the magic "HdrS".
const HEADER: u64 = 0x202;
/// `hdr.type_of_loader`: 0xff = undefined loader.
const TYPE_OF_LOADER: u64 = 0x210;
/// `hdr.cmd_line_ptr`: command line address, lower 32 bits.
const CMD_LINE_PTR: u64 = 0x228;
/// `hdr.cmdline_size`: longest command line, terminating NUL excluded.
const CMDLINE_SIZE: u64 = 0x238;
/// `e820_table`: up to 128 entries of 20 bytes.
const E820_TABLE: u64 = 0x2d0;
/// Size of `struct boot_params`.
const SIZE: u64 = 0x1000;

const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HEADER_MAGIC: u32 = u32::from_le_bytes(*b"HdrS");
const LOADER_UNDEFINED: u8 = 0xff;

/// Size of one `struct boot_e820_entry`.
const E820_ENTRY_SIZE: u64 = 20;

/// A zero page at a validated address.
#[derive(Clone, Copy)]
pub struct BootParams {
    base: u64,
}

impl BootParams {
    /// The zero page at `base`, if the whole page lies in low memory the guest
    /// can read.
    pub fn at(base: u64) -> Option<Self> {
        mem::readable(base, SIZE).then_some(Self { base })
    }

    fn u8(&self, offset: u64) -> u8 {
        mem::read(self.base + offset)
    }

    fn u16(&self, offset: u64) -> u16 {
        mem::read(self.base + offset)
    }

    fn u32(&self, offset: u64) -> u32 {
        mem::read(self.base + offset)
    }

    fn u64(&self, offset: u64) -> u64 {
        mem::read(self.base + offset)
    }

    /// Check `boot-params`: the setup header magics and the loader type.
    pub fn check(&self, r: &mut Report) {
        const CHECK: &str = "boot-params";
        let flag = self.u16(BOOT_FLAG);
        let header = self.u32(HEADER);
        let loader = self.u8(TYPE_OF_LOADER);
        if flag != BOOT_FLAG_MAGIC {
            r.fail::<()>(
                CHECK,
                format_args!("boot_flag is {flag:#06x}, expected 0xaa55"),
            );
        } else if header != HEADER_MAGIC {
            r.fail::<()>(
                CHECK,
                format_args!("header is {header:#010x}, expected \"HdrS\""),
            );
        } else if loader != LOADER_UNDEFINED {
            r.fail::<()>(
                CHECK,
                format_args!("type_of_loader is {loader:#04x}, expected 0xff"),
            );
        } else {
            r.pass(
                CHECK,
                format_args!(
                    "zero page at {:#x}, boot_flag 0xaa55, header HdrS, type_of_loader 0xff",
                    self.base
                ),
            );
        }
    }

    /// Check `cmdline` and return the command line: a non-zero pointer, a NUL
    /// within `cmdline_size + 1` bytes, printable ASCII only.
    pub fn check_cmdline(&self, r: &mut Report) -> Option<&'static str> {
        const CHECK: &str = "cmdline";
        let ptr = u64::from(self.u32(CMD_LINE_PTR)) | u64::from(self.u32(EXT_CMD_LINE_PTR)) << 32;
        let size = u64::from(self.u32(CMDLINE_SIZE));
        if ptr == 0 {
            return r.fail(CHECK, format_args!("cmd_line_ptr is 0"));
        }
        if !mem::readable(ptr, size + 1) {
            return r.fail(
                CHECK,
                format_args!("cmd_line_ptr {ptr:#x} + cmdline_size {size} is not in low memory"),
            );
        }
        check_cmdline_at(ptr, size + 1, "cmdline_size + 1", r)
    }

    /// `acpi_rsdp_addr` (0: not given).
    pub fn rsdp(&self) -> u64 {
        self.u64(ACPI_RSDP_ADDR)
    }

    /// The e820 map (`e820_entries` entries of `e820_table`, all inside the
    /// zero page).
    pub fn e820_map(&self) -> E820Map {
        let count = usize::from(self.u8(E820_ENTRIES));
        E820Map::new(count, self.base + E820_TABLE, E820_ENTRY_SIZE)
    }
}

/// The rest of check `cmdline` for the line at `ptr`: a NUL within `limit`
/// readable bytes (`what` names the limit), printable ASCII only.
pub fn check_cmdline_at(ptr: u64, limit: u64, what: &str, r: &mut Report) -> Option<&'static str> {
    const CHECK: &str = "cmdline";
    let bytes = mem::bytes(ptr, limit);
    let Some(len) = bytes.iter().position(|&b| b == 0) else {
        return r.fail(
            CHECK,
            format_args!("no NUL within {limit} bytes ({what}) at {ptr:#x}"),
        );
    };
    let line = &bytes[..len];
    if let Some(at) = line.iter().position(|b| !(0x20..=0x7e).contains(b)) {
        return r.fail(
            CHECK,
            format_args!(
                "byte {:#04x} at offset {at} is not printable ASCII",
                line[at]
            ),
        );
    }
    // Printable ASCII is UTF-8.
    let line = core::str::from_utf8(line).ok()?;
    r.pass(CHECK, format_args!("{line}"));
    Some(line)
}

/// The value of `key=value` on the command line (last one wins, as in Linux).
pub fn param<'a>(cmdline: &'a str, key: &'a str) -> Option<&'a str> {
    params(cmdline, key).next_back()
}

/// Every value of `key=value` on the command line, in order.
pub fn params<'a>(cmdline: &'a str, key: &'a str) -> impl DoubleEndedIterator<Item = &'a str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(move |word| word.strip_prefix(key)?.strip_prefix('='))
}
