//! Segment descriptors: encoding, decoding, and the boot GDT and IDT.
//!
//! The bit layout is the one of the Intel SDM, Vol. 3A, 3.4.5 "Segment
//! Descriptors" (figure 3-8): limit 15:0 in bits 15:0, base 23:0 in bits
//! 39:16, the access byte (type, S, DPL, P) in bits 47:40, limit 19:16 in
//! bits 51:48, the flags (AVL, L, D/B, G) in bits 55:52 and base 31:24 in
//! bits 63:56.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmkit_hypervisor::{DescriptorTable, Segment};

use crate::layout::{BOOT_GDT_MAX, BOOT_GDT_START, BOOT_IDT_START};
use crate::{Error, Result};

/// Descriptor flags of the 64-bit code segment: G, L, P, DPL 0, S,
/// type 0xb (execute/read, accessed).
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Descriptor flags of the flat 32-bit code segment for the PVH entry: G,
/// D/B, P, DPL 0, S, type 0xb (execute/read, accessed).
pub const CODE32_FLAGS: u16 = 0xc09b;
/// Descriptor flags of the data segment: G, D/B, P, DPL 0, S, type 0x3
/// (read/write, accessed).
pub const DATA_FLAGS: u16 = 0xc093;
/// Descriptor flags of a busy 64-bit TSS: G, P, DPL 0, system, type 0xb.
pub const TSS64_BUSY_FLAGS: u16 = 0x808b;
/// Descriptor flags of a busy 32-bit TSS with a byte-granular limit: P,
/// DPL 0, system, type 0xb.
pub const TSS32_BUSY_FLAGS: u16 = 0x008b;

/// GDT index of the flat 32-bit code segment (the PVH entry's CS).
pub const CODE32_INDEX: u8 = 1;
/// GDT index of the 64-bit code segment (`__BOOT_CS` of the Linux boot
/// protocol).
pub const CODE64_INDEX: u8 = 2;
/// GDT index of the data segment (`__BOOT_DS` of the Linux boot protocol).
pub const DATA_INDEX: u8 = 3;
/// Selector of the 64-bit code segment.
pub const BOOT_CS_SELECTOR: u16 = (CODE64_INDEX as u16) << 3;
/// Selector of the data segment.
pub const BOOT_DS_SELECTOR: u16 = (DATA_INDEX as u16) << 3;

/// Encodes a segment descriptor.
///
/// `flags` holds the access byte in bits 7:0 and the AVL/L/D-B/G nibble in
/// bits 15:12 (bits 11:8 are ignored: they are the place of limit 19:16 in
/// the descriptor), which is how the kernel's `GDT_ENTRY` macro takes them.
/// Only the low 20 bits of `limit` are used.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << (56 - 24))
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << (48 - 16))
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// Decodes the descriptor `entry`, found at `table_index` of the GDT, into
/// the segment register state (selector with RPL 0 and TI 0, hidden part).
///
/// The limit is returned in bytes: with the G bit set it is scaled by
/// 4 KiB, as the processor does when it loads the register.
pub fn segment_from_gdt(entry: u64, table_index: u8) -> Segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = bit(55);
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = bit(47);
    Segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit,
        selector: u16::from(table_index) << 3,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(present == 0),
    }
}

/// The boot GDT: null, flat 32-bit code at selector 0x08 (the PVH entry's
/// CS), 64-bit code at selector 0x10 and flat data at selector 0x18, as the
/// Linux 64-bit boot protocol asks (`__BOOT_CS` and `__BOOT_DS`); the data
/// segment is also the PVH entry's DS, ES and SS.
pub fn boot_gdt() -> [u64; BOOT_GDT_MAX] {
    [
        0,
        gdt_entry(CODE32_FLAGS, 0, 0xfffff),
        gdt_entry(CODE64_FLAGS, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
    ]
}

/// The GDTR value for [`boot_gdt`] at `BOOT_GDT_START`.
pub fn boot_gdtr() -> DescriptorTable {
    DescriptorTable {
        base: BOOT_GDT_START,
        limit: (BOOT_GDT_MAX * 8 - 1) as u16,
    }
}

/// The IDTR value for the empty boot IDT at `BOOT_IDT_START`.
pub fn boot_idtr() -> DescriptorTable {
    DescriptorTable {
        base: BOOT_IDT_START,
        limit: 7,
    }
}

/// Writes the boot GDT at `BOOT_GDT_START` and an empty IDT (one null gate)
/// at `BOOT_IDT_START`.
pub fn write_gdt_idt<M: GuestMemoryBackend>(mem: &M) -> Result<()> {
    let mut bytes = Vec::with_capacity(BOOT_GDT_MAX * 8);
    for entry in boot_gdt() {
        bytes.extend_from_slice(&entry.to_le_bytes());
    }
    mem.write_slice(&bytes, GuestAddress(BOOT_GDT_START))
        .map_err(|source| Error::GuestMemory {
            what: "boot GDT",
            addr: BOOT_GDT_START,
            source,
        })?;
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|source| Error::GuestMemory {
            what: "boot IDT",
            addr: BOOT_IDT_START,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn code64_descriptor_matches_sdm_layout() {
        // The value Linux and every VMM use for a flat 64-bit code segment.
        assert_eq!(gdt_entry(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(
            gdt_entry(TSS64_BUSY_FLAGS, 0, 0xfffff),
            0x008f_8b00_0000_ffff
        );
    }

    #[test]
    fn base_and_limit_fields_land_in_their_bits() {
        let e = gdt_entry(0, 0x1234_5678, 0xa_bcde);
        assert_eq!(e & 0xffff, 0xbcde, "limit 15:0 in bits 15:0");
        assert_eq!((e >> 16) & 0xff_ffff, 0x34_5678, "base 23:0 in bits 39:16");
        assert_eq!((e >> 48) & 0xf, 0xa, "limit 19:16 in bits 51:48");
        assert_eq!(e >> 56, 0x12, "base 31:24 in bits 63:56");
        assert_eq!((e >> 40) & 0xff, 0, "access byte untouched");
        // Bits 11:8 of `flags` would collide with limit 19:16: ignored.
        assert_eq!(gdt_entry(0x0f00, 0, 0), 0);
    }

    #[test]
    fn decodes_code64_segment() {
        let s = segment_from_gdt(0x00af_9b00_0000_ffff, 2);
        assert_eq!(
            s,
            Segment {
                base: 0,
                limit: 0xffff_ffff,
                selector: 0x10,
                type_: 0xb,
                present: 1,
                dpl: 0,
                db: 0,
                s: 1,
                l: 1,
                g: 1,
                avl: 0,
                unusable: 0,
            }
        );
    }

    #[test]
    fn decodes_data_and_tss_segments() {
        let d = segment_from_gdt(gdt_entry(DATA_FLAGS, 0, 0xfffff), 3);
        assert_eq!(
            (d.selector, d.type_, d.s, d.db, d.l, d.g),
            (0x18, 3, 1, 1, 0, 1)
        );
        let t = segment_from_gdt(gdt_entry(TSS64_BUSY_FLAGS, 0, 0xfffff), 0);
        assert_eq!((t.type_, t.s, t.present, t.unusable), (0xb, 0, 1, 0));
    }

    #[test]
    fn decode_inverts_encode() {
        let e = gdt_entry(0x40f3 | 0x1000, 0xdead_beef, 0x12345);
        let s = segment_from_gdt(e, 5);
        assert_eq!(s.base, 0xdead_beef);
        assert_eq!(s.limit, 0x12345, "byte granular: limit not scaled");
        assert_eq!((s.dpl, s.type_, s.avl, s.db, s.g), (3, 3, 1, 1, 0));
        assert_eq!(s.selector, 5 << 3);
        let null = segment_from_gdt(0, 0);
        assert_eq!((null.present, null.unusable), (0, 1));
    }

    #[test]
    fn writes_gdt_and_idt() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        mem.write_obj(0xffu64, GuestAddress(BOOT_IDT_START))
            .unwrap();
        write_gdt_idt(&mem).unwrap();
        let entry = |i: u64| {
            mem.read_obj::<u64>(GuestAddress(BOOT_GDT_START + i * 8))
                .unwrap()
        };
        assert_eq!(entry(0), 0);
        assert_eq!(entry(1), 0x00cf_9b00_0000_ffff, "flat 32-bit code");
        assert_eq!(entry(2), 0x00af_9b00_0000_ffff);
        assert_eq!(entry(3), 0x00cf_9300_0000_ffff);
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(BOOT_IDT_START)).unwrap(),
            0
        );
        assert_eq!(boot_gdtr().limit, 31);
        assert!(BOOT_GDT_START + u64::from(boot_gdtr().limit) < BOOT_IDT_START);
    }

    #[test]
    fn missing_memory_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x10_0000), 0x1000)]).unwrap();
        assert!(matches!(
            write_gdt_idt(&mem),
            Err(Error::GuestMemory {
                what: "boot GDT",
                ..
            })
        ));
    }
}
