//! A small, bounds-checked AML walker (ACPI 6.5, chapter 20): enough of the
//! DSDT's namespace to find each `Device`, its `_HID` and `_CRS`, and
//! `\_S5_`, plus a decoder for the resource templates `_CRS` holds.
//!
//! It walks the object-defining terms (Scope, Device, Name, Method, OpRegion,
//! Field, Mutex, ...) and skips every package-length-delimited body it does
//! not need (method bodies, fields, `If` blocks). It evaluates nothing: a
//! `_CRS` that is a method is reported as such. Every read is bounded by the
//! slice it was given (the table's AML, or the enclosing package), and
//! anything malformed or not understood is an [`Error`] with its offset.

use core::fmt;

/// Most devices walked (a sanity bound).
pub const MAX_DEVICES: usize = 4096;
/// Deepest nesting of Scope/Device bodies followed.
const MAX_DEPTH: usize = 16;

/// Why a walk stopped; offsets are from the start of the AML.
#[derive(Clone, Copy, Debug)]
pub enum Error {
    /// A term runs past the end of its enclosing package or of the table.
    Truncated(usize),
    /// A PkgLength with its reserved bits set, or shorter than itself.
    BadPkgLength(usize),
    /// A NameSeg with a character outside `A-Z 0-9 _` (or a digit first).
    BadName(usize),
    /// A String constant with a byte outside `0x01..=0x7f`.
    BadString(usize),
    /// A Buffer whose initializer is longer than its BufferSize, or whose
    /// size is not a constant.
    BadBuffer(usize),
    /// An opcode this walker does not know (one byte, or `0x5b` + one).
    Unsupported(u16, usize),
    /// Scopes and devices nested more than [`MAX_DEPTH`] deep.
    TooDeep(usize),
    /// More than [`MAX_DEVICES`] devices.
    TooManyDevices(usize),
    /// A device defines `_HID` or `_CRS` twice.
    Duplicate(usize),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            Error::Truncated(at) => write!(f, "term at AML offset {at:#x} runs past its package"),
            Error::BadPkgLength(at) => write!(f, "bad PkgLength at AML offset {at:#x}"),
            Error::BadName(at) => write!(f, "bad NameString at AML offset {at:#x}"),
            Error::BadString(at) => write!(f, "bad String at AML offset {at:#x}"),
            Error::BadBuffer(at) => write!(f, "bad Buffer at AML offset {at:#x}"),
            Error::Unsupported(op, at) => {
                write!(f, "unsupported AML opcode {op:#x} at offset {at:#x}")
            }
            Error::TooDeep(at) => write!(f, "scopes nested too deep at AML offset {at:#x}"),
            Error::TooManyDevices(at) => {
                write!(f, "more than {MAX_DEVICES} devices (AML offset {at:#x})")
            }
            Error::Duplicate(at) => write!(f, "duplicate name in a device at AML offset {at:#x}"),
        }
    }
}

type Result<T> = core::result::Result<T, Error>;

/// A device's `_HID`.
#[derive(Clone, Copy)]
pub enum Hid<'a> {
    /// A String (`"LNRO0005"`).
    String(&'a [u8]),
    /// An EISA ID, DWordConst-encoded (`EISAID("PNP0501")`), decoded.
    Eisa([u8; 7]),
    /// Another integer, or a method: not decoded.
    Other,
}

impl Hid<'_> {
    /// Whether this `_HID` is the ID `id`.
    pub fn is(&self, id: &str) -> bool {
        match self {
            Hid::String(s) => *s == id.as_bytes(),
            Hid::Eisa(s) => &s[..] == id.as_bytes(),
            Hid::Other => false,
        }
    }
}

/// A device's `_CRS`.
#[derive(Clone, Copy)]
pub enum Crs<'a> {
    /// A Buffer: the resource template's bytes.
    Buffer(&'a [u8]),
    /// A method (needs evaluation).
    Method,
    /// Some other object.
    Other,
}

/// A `Device` the walk found.
#[derive(Clone, Copy)]
pub struct Device<'a> {
    /// Its own NameSeg (the last segment of its path).
    pub name: [u8; 4],
    /// AML offset of its DeviceOp.
    pub offset: usize,
    /// `_HID`, if defined by a Name or Method in its body.
    pub hid: Option<Hid<'a>>,
    /// `_CRS`, likewise.
    pub crs: Option<Crs<'a>>,
}

/// What the walk found besides the devices.
pub struct Summary {
    /// How many devices.
    pub devices: usize,
    /// `\_S5_`: `Some(true)` if a Name with a Package, `Some(false)` if some
    /// other object, `None` if not defined.
    pub s5: Option<bool>,
}

/// Walks `aml` (a definition block's TermList, the bytes after the table
/// header), calling `device` for each Device once its body has been walked
/// (so an inner device comes before the one containing it).
pub fn walk<'a>(aml: &'a [u8], device: &mut dyn FnMut(&Device<'a>)) -> Result<Summary> {
    let mut w = Walker {
        aml,
        device,
        summary: Summary {
            devices: 0,
            s5: None,
        },
    };
    w.term_list(
        0,
        aml.len(),
        0,
        Ctx {
            device: None,
            root: true,
        },
    )?;
    Ok(w.summary)
}

/// A NameString: `\` or `^`* prefix, then 0..n NameSegs.
struct Name<'a> {
    root: bool,
    parents: usize,
    segs: &'a [u8],
}

impl Name<'_> {
    /// The single NameSeg of a name without prefix, if it is that.
    fn simple(&self) -> Option<&[u8]> {
        (!self.root && self.parents == 0 && self.segs.len() == 4).then_some(self.segs)
    }

    fn last(&self) -> [u8; 4] {
        let mut seg = [0; 4];
        if let Some(last) = self.segs.len().checked_sub(4) {
            seg.copy_from_slice(&self.segs[last..]);
        }
        seg
    }

    /// Whether this name, used in a scope that is the root if `in_root`,
    /// is `\<seg>`.
    fn is_root_seg(&self, in_root: bool, seg: &[u8]) -> bool {
        (self.root || (in_root && self.parents == 0)) && self.segs == seg
    }
}

/// A DataRefObject's kind and value.
enum Data<'a> {
    Integer(u64),
    String(&'a [u8]),
    Buffer(&'a [u8]),
    Package,
}

/// Where a term list is.
struct Ctx<'c, 'a> {
    /// The device whose body this is.
    device: Option<&'c mut Device<'a>>,
    /// Whether the scope is the root `\`.
    root: bool,
}

struct Walker<'a, 'f> {
    aml: &'a [u8],
    device: &'f mut dyn FnMut(&Device<'a>),
    summary: Summary,
}

impl<'a> Walker<'a, '_> {
    fn byte(&self, at: usize, end: usize) -> Result<u8> {
        if at >= end {
            return Err(Error::Truncated(at));
        }
        self.aml.get(at).copied().ok_or(Error::Truncated(at))
    }

    fn slice(&self, at: usize, len: usize, end: usize) -> Result<&'a [u8]> {
        let stop = at.checked_add(len).ok_or(Error::Truncated(at))?;
        if stop > end {
            return Err(Error::Truncated(at));
        }
        self.aml.get(at..stop).ok_or(Error::Truncated(at))
    }

    /// The package whose PkgLength starts at `at`: (body start, package end),
    /// the end within `end`.
    fn package(&self, at: usize, end: usize) -> Result<(usize, usize)> {
        let lead = self.byte(at, end)?;
        let follow = usize::from(lead >> 6);
        let (len, size) = if follow == 0 {
            (usize::from(lead & 0x3f), 1)
        } else {
            if lead & 0x30 != 0 {
                return Err(Error::BadPkgLength(at));
            }
            let mut len = usize::from(lead & 0x0f);
            for i in 0..follow {
                len |= usize::from(self.byte(at + 1 + i, end)?) << (4 + 8 * i);
            }
            (len, 1 + follow)
        };
        if len < size {
            return Err(Error::BadPkgLength(at));
        }
        if at + len > end {
            return Err(Error::Truncated(at));
        }
        Ok((at + size, at + len))
    }

    fn name_string(&self, mut at: usize, end: usize) -> Result<(Name<'a>, usize)> {
        let start = at;
        let root = self.byte(at, end)? == b'\\';
        let mut parents = 0;
        if root {
            at += 1;
        } else {
            while self.byte(at, end)? == b'^' {
                parents += 1;
                at += 1;
            }
        }
        let (count, at) = match self.byte(at, end)? {
            0x00 => (0, at + 1),
            0x2e => (2, at + 1),
            0x2f => (usize::from(self.byte(at + 1, end)?), at + 2),
            _ => (1, at),
        };
        let segs = self.slice(at, 4 * count, end)?;
        for seg in segs.chunks_exact(4) {
            let lead_ok = seg[0].is_ascii_uppercase() || seg[0] == b'_';
            let rest_ok = seg[1..]
                .iter()
                .all(|&c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_');
            if !lead_ok || !rest_ok {
                return Err(Error::BadName(start));
            }
        }
        Ok((
            Name {
                root,
                parents,
                segs,
            },
            at + 4 * count,
        ))
    }

    fn integer(&self, at: usize, size: usize, end: usize) -> Result<u64> {
        let bytes = self.slice(at, size, end)?;
        Ok(bytes.iter().rev().fold(0u64, |v, &b| v << 8 | u64::from(b)))
    }

    /// The DataRefObject at `at` and where it ends.
    fn data_object(&self, at: usize, end: usize) -> Result<(Data<'a>, usize)> {
        Ok(match self.byte(at, end)? {
            0x00 => (Data::Integer(0), at + 1),
            0x01 => (Data::Integer(1), at + 1),
            0xff => (Data::Integer(u64::MAX), at + 1),
            0x0a => (Data::Integer(self.integer(at + 1, 1, end)?), at + 2),
            0x0b => (Data::Integer(self.integer(at + 1, 2, end)?), at + 3),
            0x0c => (Data::Integer(self.integer(at + 1, 4, end)?), at + 5),
            0x0e => (Data::Integer(self.integer(at + 1, 8, end)?), at + 9),
            0x0d => {
                let rest = self.slice(at + 1, end.saturating_sub(at + 1), end)?;
                let len = rest
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(Error::Truncated(at))?;
                if rest[..len].iter().any(|&b| b > 0x7f) {
                    return Err(Error::BadString(at));
                }
                (Data::String(&rest[..len]), at + 1 + len + 1)
            }
            0x11 => {
                let (body, pend) = self.package(at + 1, end)?;
                let (size, init) = match self.data_object(body, pend)? {
                    (Data::Integer(size), init) => (size, init),
                    _ => return Err(Error::BadBuffer(at)),
                };
                let bytes = self.slice(init, pend - init, pend)?;
                if bytes.len() as u64 > size {
                    return Err(Error::BadBuffer(at));
                }
                (Data::Buffer(bytes), pend)
            }
            0x12 | 0x13 => (Data::Package, self.package(at + 1, end)?.1),
            0x5b if self.byte(at + 1, end)? == 0x30 => (Data::Integer(0), at + 2), // Revision
            op => return Err(Error::Unsupported(u16::from(op), at)),
        })
    }

    /// An Integer constant term (OpRegion offset and length).
    fn integer_term(&self, at: usize, end: usize) -> Result<usize> {
        match self.data_object(at, end)? {
            (Data::Integer(_), next) => Ok(next),
            _ => Err(Error::Unsupported(u16::from(self.aml[at]), at)),
        }
    }

    /// A Name (`data`) or Method (`None`) called `name`, defined in `ctx`.
    fn define(
        &mut self,
        name: &Name<'a>,
        data: Option<Data<'a>>,
        ctx: &mut Ctx<'_, 'a>,
        at: usize,
    ) -> Result<()> {
        if name.is_root_seg(ctx.root, b"_S5_") {
            self.summary.s5 = Some(matches!(data, Some(Data::Package)));
        }
        let seg = name.simple();
        let Some(device) = ctx.device.as_deref_mut() else {
            return Ok(());
        };
        match seg {
            Some(b"_HID") => {
                if device.hid.is_some() {
                    return Err(Error::Duplicate(at));
                }
                device.hid = Some(match data {
                    Some(Data::String(s)) => Hid::String(s),
                    Some(Data::Integer(id)) => eisa_id(id).map_or(Hid::Other, Hid::Eisa),
                    _ => Hid::Other,
                });
            }
            Some(b"_CRS") => {
                if device.crs.is_some() {
                    return Err(Error::Duplicate(at));
                }
                device.crs = Some(match data {
                    Some(Data::Buffer(b)) => Crs::Buffer(b),
                    None => Crs::Method,
                    _ => Crs::Other,
                });
            }
            _ => {}
        }
        Ok(())
    }

    fn term_list(
        &mut self,
        mut at: usize,
        end: usize,
        depth: usize,
        mut ctx: Ctx<'_, 'a>,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep(at));
        }
        while at < end {
            let op = self.byte(at, end)?;
            at = match op {
                // DefScope := ScopeOp PkgLength NameString TermList
                0x10 => {
                    let (body, pend) = self.package(at + 1, end)?;
                    let (name, list) = self.name_string(body, pend)?;
                    let inner = Ctx {
                        device: None,
                        root: name.root && name.segs.is_empty(),
                    };
                    self.term_list(list, pend, depth + 1, inner)?;
                    pend
                }
                // DefName := NameOp NameString DataRefObject
                0x08 => {
                    let (name, next) = self.name_string(at + 1, end)?;
                    let (data, next) = self.data_object(next, end)?;
                    self.define(&name, Some(data), &mut ctx, at)?;
                    next
                }
                // DefMethod := MethodOp PkgLength NameString MethodFlags TermList
                0x14 => {
                    let (body, pend) = self.package(at + 1, end)?;
                    let (name, _) = self.name_string(body, pend)?;
                    self.define(&name, None, &mut ctx, at)?;
                    pend
                }
                // DefAlias := AliasOp NameString NameString
                0x06 => {
                    let (_, next) = self.name_string(at + 1, end)?;
                    self.name_string(next, end)?.1
                }
                // DefExternal := ExternalOp NameString ObjectType ArgumentCount
                0x15 => {
                    let (_, next) = self.name_string(at + 1, end)?;
                    self.slice(next, 2, end)?;
                    next + 2
                }
                // If, Else, While: skipped whole.
                0xa0..=0xa2 => self.package(at + 1, end)?.1,
                0x5b => {
                    let ext = self.byte(at + 1, end)?;
                    match ext {
                        // DefDevice := DeviceOp PkgLength NameString TermList
                        0x82 => {
                            let (body, pend) = self.package(at + 2, end)?;
                            let (name, list) = self.name_string(body, pend)?;
                            if self.summary.devices == MAX_DEVICES {
                                return Err(Error::TooManyDevices(at));
                            }
                            self.summary.devices += 1;
                            let mut device = Device {
                                name: name.last(),
                                offset: at,
                                hid: None,
                                crs: None,
                            };
                            let inner = Ctx {
                                device: Some(&mut device),
                                root: false,
                            };
                            self.term_list(list, pend, depth + 1, inner)?;
                            (self.device)(&device);
                            pend
                        }
                        // Field, Processor, PowerResource, ThermalZone,
                        // IndexField, BankField: skipped whole.
                        0x81 | 0x83..=0x87 => self.package(at + 2, end)?.1,
                        // DefOpRegion := OpRegionOp NameString RegionSpace
                        //                RegionOffset RegionLen
                        0x80 => {
                            let (_, next) = self.name_string(at + 2, end)?;
                            self.byte(next, end)?;
                            let next = self.integer_term(next + 1, end)?;
                            self.integer_term(next, end)?
                        }
                        // DefMutex := MutexOp NameString SyncFlags
                        0x01 => {
                            let (_, next) = self.name_string(at + 2, end)?;
                            self.byte(next, end)?;
                            next + 1
                        }
                        // DefEvent := EventOp NameString
                        0x02 => self.name_string(at + 2, end)?.1,
                        _ => return Err(Error::Unsupported(0x5b00 | u16::from(ext), at)),
                    }
                }
                _ => return Err(Error::Unsupported(u16::from(op), at)),
            };
        }
        Ok(())
    }
}

/// Decodes a compressed EISA ID (`EISAID("PNP0501")` = `0x0105d041`): three
/// 5-bit letters and four hex digits, stored big-endian in a DWord.
fn eisa_id(value: u64) -> Option<[u8; 7]> {
    let v = u32::try_from(value).ok()?.swap_bytes();
    if v & 0x8000_0000 != 0 {
        return None;
    }
    let mut id = [0u8; 7];
    for (i, shift) in [26, 21, 16].into_iter().enumerate() {
        let c = (v >> shift) & 0x1f;
        if !(1..=26).contains(&c) {
            return None;
        }
        id[i] = b'@' + c as u8;
    }
    for i in 0..4 {
        let nibble = (v >> (12 - 4 * i)) & 0xf;
        id[3 + i] = b"0123456789ABCDEF"[nibble as usize];
    }
    Some(id)
}

/// Most interrupts one `_CRS` may list and still be recorded.
pub const MAX_IRQS: usize = 4;

/// What a resource template describes (the descriptors a virtio-mmio
/// device uses; others are counted only).
#[derive(Default)]
pub struct Resources {
    /// Memory32Fixed descriptors: (base, length); the first is kept.
    pub memory: Option<(u32, u32)>,
    /// How many Memory32Fixed descriptors there were.
    pub memory_count: usize,
    /// Interrupts of Extended Interrupt and IRQ descriptors, in order.
    irqs: [u32; MAX_IRQS],
    /// How many interrupts there were (may exceed [`MAX_IRQS`]).
    pub irq_count: usize,
}

impl Resources {
    /// The first interrupt, if any.
    pub fn irq(&self) -> Option<u32> {
        (self.irq_count > 0).then_some(self.irqs[0])
    }

    fn add_irq(&mut self, irq: u32) {
        if self.irq_count < MAX_IRQS {
            self.irqs[self.irq_count] = irq;
        }
        self.irq_count += 1;
    }
}

/// Decodes a resource template (ACPI 6.5, section 6.4): small and large
/// descriptors up to the End Tag, which must be there. On a malformed
/// template, the reason and the offset in the buffer.
pub fn resources(buf: &[u8]) -> core::result::Result<Resources, (&'static str, usize)> {
    let mut res = Resources::default();
    let mut at = 0;
    loop {
        let Some(&tag) = buf.get(at) else {
            return Err(("no End Tag", at));
        };
        let (kind, body, next) = if tag & 0x80 != 0 {
            let len = buf
                .get(at + 1..at + 3)
                .ok_or(("large descriptor header truncated", at))?;
            let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
            (tag, at + 3, at + 3 + len)
        } else {
            ((tag >> 3) & 0x0f, at + 1, at + 1 + usize::from(tag & 7))
        };
        let data = buf
            .get(body..next)
            .ok_or(("descriptor runs past the buffer", at))?;
        let u32_at =
            |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
        match kind {
            // End Tag (small type 0xf).
            0x0f => return Ok(res),
            // IRQ (small type 4): a 16-bit mask, one bit per ISA IRQ.
            0x04 => {
                if data.len() < 2 {
                    return Err(("IRQ descriptor too short", at));
                }
                let mask = u16::from_le_bytes([data[0], data[1]]);
                for irq in 0..16 {
                    if mask & 1 << irq != 0 {
                        res.add_irq(irq);
                    }
                }
            }
            // Memory32Fixed: info, base, length.
            0x86 => {
                if data.len() != 9 {
                    return Err(("Memory32Fixed descriptor length is not 9", at));
                }
                if res.memory.is_none() {
                    res.memory = Some((u32_at(1), u32_at(5)));
                }
                res.memory_count += 1;
            }
            // Extended Interrupt: flags, count, count DWords (then optional
            // resource source).
            0x89 => {
                let count = usize::from(*data.get(1).ok_or(("Extended Interrupt too short", at))?);
                if count == 0 || data.len() < 2 + 4 * count {
                    return Err((
                        "Extended Interrupt table length disagrees with its size",
                        at,
                    ));
                }
                for i in 0..count {
                    res.add_irq(u32_at(2 + 4 * i));
                }
            }
            _ => {}
        }
        at = next;
    }
}
