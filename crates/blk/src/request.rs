//! virtio-blk requests (virtio 1.2, 5.2.6): parsing a descriptor chain into
//! a request, checking it against the device's limits, and executing it on
//! a [`DiskImage`]. Independent of the transport that delivered the chain.
//!
//! The guest is hostile: every descriptor, direction, length, address and
//! sector is checked before any I/O, and a bad request gets an error status,
//! never a panic or an access outside the disk or guest memory.

use std::sync::Arc;

use log::{error, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap,
    VolatileMemory, VolatileRef, VolatileSlice,
};
use vmkit_disk::{DiskImage, SECTOR_SIZE};
use vmkit_virtio::GuestMemoryMmap;

use crate::log_limits::BlockLogLimits;
use crate::{BlockConfig, DiskId};

/// Size of `struct virtio_blk_outhdr`: type, ioprio (reserved), sector.
const HEADER_LEN: u32 = 16;
/// Size of `struct virtio_blk_discard_write_zeroes`.
const SEGMENT_LEN: u64 = 16;

/// The type field of a request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    /// VIRTIO_BLK_T_IN: read sectors into the data buffers.
    In,
    /// VIRTIO_BLK_T_OUT: write the data buffers to sectors.
    Out,
    /// VIRTIO_BLK_T_FLUSH: make completed writes durable.
    Flush,
    /// VIRTIO_BLK_T_GET_ID: return the disk's serial.
    GetId,
    /// VIRTIO_BLK_T_DISCARD: the ranges are no longer used.
    Discard,
    /// VIRTIO_BLK_T_WRITE_ZEROES: make the ranges read as zeros.
    WriteZeroes,
    /// Any other type, answered with VIRTIO_BLK_S_UNSUPP.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(value: u32) -> Self {
        match value {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            VIRTIO_BLK_T_DISCARD => RequestType::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => RequestType::WriteZeroes,
            other => RequestType::Unsupported(other),
        }
    }
}

/// Why a request failed; [`RequestError::status`] is what the driver sees.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The chain has no descriptor besides the status.
    #[error("request has no header descriptor")]
    MissingHeader,
    /// The header descriptor is device-writable.
    #[error("request header descriptor is device-writable")]
    HeaderWritable,
    /// The header descriptor is shorter than the header.
    #[error("request header descriptor is {0} bytes, need {HEADER_LEN}")]
    HeaderTooShort(u32),
    /// A descriptor points outside guest memory.
    #[error("descriptor of {len} bytes at {addr:#x} is outside guest memory")]
    BadAddress {
        /// The descriptor's guest physical address.
        addr: u64,
        /// The descriptor's length.
        len: u32,
    },
    /// A data descriptor has the wrong direction for the request.
    #[error("data descriptor {index} must be device-{}", if *.writable { "writable" } else { "readable" })]
    WrongDirection {
        /// Position among the data descriptors.
        index: usize,
        /// Whether the request needs device-writable buffers.
        writable: bool,
    },
    /// More data descriptors than `seg_max`.
    #[error("{count} data segments, at most {max} allowed")]
    TooManySegments {
        /// Data descriptors in the chain.
        count: usize,
        /// The advertised `seg_max`.
        max: u32,
    },
    /// The data length is not a whole number of sectors.
    #[error("data length {0} is not a multiple of {SECTOR_SIZE}")]
    UnalignedLength(u64),
    /// The access reaches past the end of the disk (or overflows).
    #[error("{sectors} sectors at sector {sector} exceed the capacity of {capacity} sectors")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        sectors: u64,
        /// The disk's capacity in sectors.
        capacity: u64,
    },
    /// A write-like request on a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// GET_ID without a device-writable buffer.
    #[error("GET_ID request without a buffer")]
    MissingIdBuffer,
    /// A DISCARD or WRITE_ZEROES payload that is not whole segments.
    #[error("{0}-byte discard/write-zeroes payload is not a non-empty list of 16-byte segments")]
    BadSegmentList(u64),
    /// More DISCARD or WRITE_ZEROES segments than advertised.
    #[error("{count} discard/write-zeroes segments, at most {max} allowed")]
    TooManyDiscardSegments {
        /// Segments in the request.
        count: u64,
        /// The advertised maximum.
        max: u32,
    },
    /// A DISCARD or WRITE_ZEROES segment larger than advertised.
    #[error("discard/write-zeroes segment of {sectors} sectors, at most {max} allowed")]
    SegmentTooLarge {
        /// Sectors in the segment.
        sectors: u32,
        /// The advertised maximum.
        max: u32,
    },
    /// Unknown segment flags, or the unmap flag on a DISCARD.
    #[error("unsupported discard/write-zeroes flags {0:#x}")]
    UnsupportedFlags(u32),
    /// A request type the device does not implement.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// The disk image failed.
    #[error("disk I/O failed: {0}")]
    Disk(#[from] vmkit_disk::Error),
}

impl RequestError {
    /// The virtio-blk status byte reporting this error.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) | RequestError::UnsupportedFlags(_) => {
                VIRTIO_BLK_S_UNSUPP as u8
            }
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// Why a descriptor chain cannot be answered at all: there is no status
/// byte to report an error in. The chain is not executed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// No descriptor could be read (a head outside the table, a malformed
    /// indirect table as the head).
    #[error("empty descriptor chain")]
    Empty,
    /// The chain ends on a descriptor that still has `VIRTQ_DESC_F_NEXT`:
    /// `virtio_queue` stopped following it (a loop, more descriptors than
    /// the queue or indirect table holds, a nested or malformed indirect
    /// table, a `next` outside the table, over 4 GiB in total).
    #[error(
        "descriptor chain cut short after {descriptors} descriptors (loop, too long, or a bad next/indirect descriptor)"
    )]
    Truncated {
        /// Descriptors read before the chain was cut.
        descriptors: usize,
    },
    /// The last descriptor is not a device-writable byte in guest memory.
    #[error("last descriptor ({len} bytes at {addr:#x}, device-{}) is not a usable status byte", if *.writable { "writable" } else { "readable" })]
    NoStatus {
        /// Its length.
        len: u32,
        /// Its guest physical address.
        addr: u64,
        /// Whether it is device-writable.
        writable: bool,
    },
}

/// One segment of a DISCARD or WRITE_ZEROES request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscardSegment {
    /// First sector.
    pub sector: u64,
    /// Number of sectors.
    pub num_sectors: u32,
    /// VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP (write zeroes only).
    pub unmap: bool,
}

/// A parsed and checked request: every buffer is in guest memory, has the
/// right direction, and every sector range is inside the disk.
#[derive(Debug)]
pub struct Request<'a> {
    /// The request's type.
    pub request_type: RequestType,
    /// The header's sector (IN and OUT).
    pub sector: u64,
    /// The data buffers between header and status, resolved to host memory
    /// once, when they were checked: in chain order, one slice per guest
    /// memory region a buffer covers, none for an empty one.
    data: &'a [VolatileSlice<'a>],
    /// DISCARD and WRITE_ZEROES segments.
    segments: Vec<DiscardSegment>,
}

/// Storage reused by the requests [`RequestProcessor::process`] handles:
/// the chain's descriptors and its resolved data buffers. Keeping one per
/// batch of requests (per queue notification) spares an allocation per
/// request; it holds nothing between requests.
#[derive(Debug, Default)]
pub struct RequestBuffers<'m> {
    descs: Vec<Descriptor>,
    data: Vec<VolatileSlice<'m>>,
}

impl RequestBuffers<'_> {
    /// Empty buffers; they grow to the longest chain seen.
    pub fn new() -> Self {
        Self::default()
    }
}

fn bad_address(desc: &Descriptor) -> RequestError {
    RequestError::BadAddress {
        addr: desc.addr().0,
        len: desc.len(),
    }
}

/// Translates the guest addresses of one request to host memory. A
/// request's buffers are usually all in one region of guest memory, so the
/// region of the previous translation is tried before searching them all.
struct Translator<'m> {
    mem: &'m GuestMemoryMmap,
    last: Option<&'m GuestRegionMmap>,
}

impl<'m> Translator<'m> {
    fn new(mem: &'m GuestMemoryMmap) -> Self {
        Translator { mem, last: None }
    }

    /// The region holding `addr`, and `addr`'s offset in it.
    fn region(&mut self, addr: GuestAddress) -> Option<(&'m GuestRegionMmap, usize)> {
        if let Some(region) = self.last
            && let Some(offset) = region.to_region_addr(addr)
        {
            return Some((region, offset.0 as usize));
        }
        let (region, offset) = self.mem.to_region_addr(addr)?;
        self.last = Some(region);
        Some((region, offset.0 as usize))
    }

    /// The `len` bytes at `addr`, if they are all in one region.
    fn slice(&mut self, addr: GuestAddress, len: usize) -> Option<VolatileSlice<'m>> {
        let (region, offset) = self.region(addr)?;
        VolatileMemory::get_slice(&**region, offset, len).ok()
    }

    /// The `T` at `addr`, if it is all in one region.
    fn get_ref<T: ByteValued>(&mut self, addr: GuestAddress) -> Option<VolatileRef<'m, T>> {
        let (region, offset) = self.region(addr)?;
        VolatileMemory::get_ref(&**region, offset).ok()
    }

    /// Checks that `desc`'s buffer is in guest memory and appends the host
    /// memory it covers to `out`: one slice, or one per region when the
    /// buffer spans adjacent regions. An empty buffer is valid anywhere and
    /// adds nothing.
    fn resolve(
        &mut self,
        desc: &Descriptor,
        out: &mut Vec<VolatileSlice<'m>>,
    ) -> Result<(), RequestError> {
        let len = desc.len() as usize;
        if len == 0 {
            return Ok(());
        }
        // The common case: the buffer lies in one region.
        if let Some(slice) = self.slice(desc.addr(), len) {
            out.push(slice);
            return Ok(());
        }
        // Otherwise it spans regions, or is (partly) outside guest memory.
        for slice in GuestMemoryBackend::get_slices(self.mem, desc.addr(), len) {
            out.push(slice.map_err(|_| bad_address(desc))?);
        }
        Ok(())
    }

    /// Reads the request header (`struct virtio_blk_outhdr`) of a
    /// descriptor already checked to be device-readable and long enough.
    fn read_header(
        &mut self,
        header: &Descriptor,
    ) -> Result<[u8; HEADER_LEN as usize], RequestError> {
        // The common case: the header lies in one region.
        if let Some(raw) = self.get_ref::<[u8; HEADER_LEN as usize]>(header.addr()) {
            return Ok(raw.load());
        }
        // It may also span adjacent regions, or be outside guest memory.
        let mut raw = [0u8; HEADER_LEN as usize];
        self.mem
            .read_slice(&mut raw, header.addr())
            .map_err(|_| bad_address(header))?;
        Ok(raw)
    }
}

/// Checks the data descriptors' direction and addresses, appending their
/// host memory to `out`; returns their total length.
fn check_data<'m>(
    mem: &mut Translator<'m>,
    data: &[Descriptor],
    writable: bool,
    out: &mut Vec<VolatileSlice<'m>>,
) -> Result<u64, RequestError> {
    let mut total = 0u64;
    for (index, desc) in data.iter().enumerate() {
        if desc.is_write_only() != writable {
            return Err(RequestError::WrongDirection { index, writable });
        }
        mem.resolve(desc, out)?;
        total += u64::from(desc.len());
    }
    Ok(total)
}

fn check_sectors(sector: u64, sectors: u64, capacity: u64) -> Result<(), RequestError> {
    match sector.checked_add(sectors) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(RequestError::OutOfRange {
            sector,
            sectors,
            capacity,
        }),
    }
}

impl<'a> Request<'a> {
    /// Parses the descriptors of a chain without its status descriptor
    /// (`descs` starts with the header), checking it against `config` and
    /// the disk's writability. The data buffers are resolved to host
    /// memory into `data` (cleared first), which the request borrows.
    pub fn parse<'m: 'a>(
        mem: &'m GuestMemoryMmap,
        descs: &[Descriptor],
        config: &BlockConfig,
        read_only: bool,
        data: &'a mut Vec<VolatileSlice<'m>>,
    ) -> Result<Self, RequestError> {
        Self::parse_with(&mut Translator::new(mem), descs, config, read_only, data)
    }

    fn parse_with<'m: 'a>(
        mem: &mut Translator<'m>,
        descs: &[Descriptor],
        config: &BlockConfig,
        read_only: bool,
        data: &'a mut Vec<VolatileSlice<'m>>,
    ) -> Result<Self, RequestError> {
        data.clear();
        let (header, data_descs) = descs.split_first().ok_or(RequestError::MissingHeader)?;
        if header.is_write_only() {
            return Err(RequestError::HeaderWritable);
        }
        if header.len() < HEADER_LEN {
            return Err(RequestError::HeaderTooShort(header.len()));
        }
        let [t0, t1, t2, t3, _, _, _, _, s @ ..] = mem.read_header(header)?;
        let request_type = RequestType::from(u32::from_le_bytes([t0, t1, t2, t3]));
        let sector = u64::from_le_bytes(s);

        let mut segments = Vec::new();
        match request_type {
            RequestType::In | RequestType::Out => {
                if data_descs.len() > config.seg_max as usize {
                    return Err(RequestError::TooManySegments {
                        count: data_descs.len(),
                        max: config.seg_max,
                    });
                }
                let writing = request_type == RequestType::Out;
                if writing && read_only {
                    return Err(RequestError::ReadOnly);
                }
                let total = check_data(mem, data_descs, !writing, data)?;
                if total % SECTOR_SIZE != 0 {
                    return Err(RequestError::UnalignedLength(total));
                }
                check_sectors(sector, total / SECTOR_SIZE, config.capacity)?;
            }
            RequestType::Flush => {}
            RequestType::GetId => {
                if check_data(mem, data_descs, true, data)? == 0 {
                    return Err(RequestError::MissingIdBuffer);
                }
            }
            RequestType::Discard | RequestType::WriteZeroes => {
                if read_only {
                    return Err(RequestError::ReadOnly);
                }
                let total = check_data(mem, data_descs, false, data)?;
                segments = Self::parse_segments(data, total, config, request_type)?;
            }
            RequestType::Unsupported(t) => return Err(RequestError::Unsupported(t)),
        }
        Ok(Request {
            request_type,
            sector,
            data,
            segments,
        })
    }

    /// Parses the DISCARD or WRITE_ZEROES segments in `data`, checked
    /// device-readable buffers of `total` bytes.
    fn parse_segments(
        data: &[VolatileSlice<'_>],
        total: u64,
        config: &BlockConfig,
        request_type: RequestType,
    ) -> Result<Vec<DiscardSegment>, RequestError> {
        let discard = request_type == RequestType::Discard;
        let (max_seg, max_sectors) = if discard {
            (config.max_discard_seg, config.max_discard_sectors)
        } else {
            (config.max_write_zeroes_seg, config.max_write_zeroes_sectors)
        };
        if total == 0 || !total.is_multiple_of(SEGMENT_LEN) {
            return Err(RequestError::BadSegmentList(total));
        }
        let count = total / SEGMENT_LEN;
        if count > u64::from(max_seg) {
            return Err(RequestError::TooManyDiscardSegments {
                count,
                max: max_seg,
            });
        }
        // Bounded by max_seg * 16 bytes; segments may straddle descriptors.
        // The slices cover exactly `total` bytes.
        let mut bytes = vec![0u8; total as usize];
        let mut filled = 0;
        for slice in data {
            filled += slice.copy_to(&mut bytes[filled..]);
        }
        let mut segments = Vec::with_capacity(count as usize);
        for raw in bytes.chunks_exact(SEGMENT_LEN as usize) {
            let le32 = |i: usize| u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
            let mut sector = [0u8; 8];
            sector.copy_from_slice(&raw[..8]);
            let sector = u64::from_le_bytes(sector);
            let (num_sectors, flags) = (le32(8), le32(12));
            // Unknown flags are unsupported, and so is unmap on a discard
            // (virtio 1.2, 5.2.6.2).
            let allowed = if discard {
                0
            } else {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            };
            if flags & !allowed != 0 {
                return Err(RequestError::UnsupportedFlags(flags));
            }
            if num_sectors > max_sectors {
                return Err(RequestError::SegmentTooLarge {
                    sectors: num_sectors,
                    max: max_sectors,
                });
            }
            check_sectors(sector, u64::from(num_sectors), config.capacity)?;
            segments.push(DiscardSegment {
                sector,
                num_sectors,
                unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
            });
        }
        Ok(segments)
    }

    /// The DISCARD or WRITE_ZEROES segments.
    pub fn segments(&self) -> &[DiscardSegment] {
        &self.segments
    }

    /// Executes the request. Returns how many bytes were written to the
    /// guest's data buffers, and the error if the request failed (after
    /// `written` bytes).
    pub fn execute(&self, disk: &dyn DiskImage, id: &DiskId) -> (u32, Result<(), RequestError>) {
        let mut written = 0u32;
        let result = match self.request_type {
            RequestType::In => self.transfer(disk, Some(&mut written)),
            RequestType::Out => self.transfer(disk, None),
            RequestType::Flush => disk.flush().map_err(RequestError::from),
            RequestType::GetId => {
                self.write_id(id, &mut written);
                Ok(())
            }
            RequestType::Discard => self.segments.iter().try_for_each(|s| {
                disk.discard(
                    s.sector * SECTOR_SIZE,
                    u64::from(s.num_sectors) * SECTOR_SIZE,
                )
                .map_err(RequestError::from)
            }),
            RequestType::WriteZeroes => self.segments.iter().try_for_each(|s| {
                disk.write_zeroes(
                    s.sector * SECTOR_SIZE,
                    u64::from(s.num_sectors) * SECTOR_SIZE,
                    s.unmap,
                )
                .map_err(RequestError::from)
            }),
            RequestType::Unsupported(t) => Err(RequestError::Unsupported(t)),
        };
        (written, result)
    }

    /// Reads (`written` is `Some`) or writes the data buffers at the
    /// header's sector, counting the bytes read into guest memory.
    fn transfer(
        &self,
        disk: &dyn DiskImage,
        mut written: Option<&mut u32>,
    ) -> Result<(), RequestError> {
        // Parsing checked sector + length against the capacity, so neither
        // the product nor the sums overflow.
        let mut offset = self.sector * SECTOR_SIZE;
        for &slice in self.data {
            let len = slice.len();
            match written.as_deref_mut() {
                Some(count) => {
                    disk.read_at(&mut { slice }, offset)?;
                    // At most the chain's length, which fits in u32.
                    *count += len as u32;
                }
                None => disk.write_at(&slice, offset)?,
            }
            offset += len as u64;
        }
        Ok(())
    }

    /// Writes the serial to the (checked, device-writable) data buffers,
    /// in order, as far as they reach.
    fn write_id(&self, id: &DiskId, written: &mut u32) {
        let mut rest = &id.as_bytes()[..];
        for slice in self.data {
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(slice.len());
            slice.copy_from(&rest[..n]);
            rest = &rest[n..];
            *written += n as u32;
        }
    }
}

/// Executes virtio-blk descriptor chains on a disk: the device logic, free
/// of any queue or transport.
///
/// Bad requests, chains and disk errors are logged, each kind at most ten
/// times and then at powers of two (a [`LogLimiter`](vmkit_virtio::LogLimiter)
/// per kind), with the running count.
#[derive(Debug)]
pub struct RequestProcessor {
    disk: Arc<dyn DiskImage>,
    /// The disk's [`DiskImage::is_read_only`], fixed when it was opened.
    read_only: bool,
    config: BlockConfig,
    id: DiskId,
    log: Arc<BlockLogLimits>,
}

impl RequestProcessor {
    /// A processor for `disk`, enforcing `config`'s limits and answering
    /// GET_ID with `id`.
    pub fn new(disk: Arc<dyn DiskImage>, config: BlockConfig, id: DiskId) -> Self {
        RequestProcessor {
            read_only: disk.is_read_only(),
            disk,
            config,
            id,
            log: Arc::default(),
        }
    }

    /// The processor, counting its log lines in `log` (a device's limits,
    /// shared by every activation: see [`BlockLogLimits`]) instead of
    /// limits of its own.
    pub fn with_log_limits(mut self, log: Arc<BlockLogLimits>) -> Self {
        self.log = log;
        self
    }

    /// The limits the processor counts its log lines in.
    pub fn log_limits(&self) -> &Arc<BlockLogLimits> {
        &self.log
    }

    /// Processes one descriptor chain (the descriptors in chain order, e.g.
    /// a `virtio_queue::DescriptorChain`) and returns the length to put in
    /// the used ring: the bytes written to device-writable buffers,
    /// status byte included, or 0 when the chain cannot be answered (see
    /// [`RequestProcessor::process_chain`], whose error is logged here).
    /// `buffers` is scratch storage, best reused from one request to the
    /// next.
    pub fn process<'m>(
        &self,
        mem: &'m GuestMemoryMmap,
        chain: impl IntoIterator<Item = Descriptor>,
        buffers: &mut RequestBuffers<'m>,
    ) -> u32 {
        self.process_chain(mem, chain, buffers).unwrap_or_else(|e| {
            if let Some(n) = self.log.ring.tick() {
                warn!("virtio-blk: {e}; dropping the request ({n} ring errors so far)");
            }
            0
        })
    }

    /// Processes one descriptor chain like [`RequestProcessor::process`],
    /// but says why a chain could not be answered: it is empty, it was cut
    /// short (its last descriptor still has `VIRTQ_DESC_F_NEXT`: a loop, a
    /// chain longer than the queue or its indirect table, a nested or
    /// malformed indirect table, a `next` outside the table, more than
    /// 4 GiB), or its last descriptor is not a usable status byte. Such a
    /// chain is not executed and nothing is written to guest memory; the
    /// driver broke the ring, and the caller should return the chain with
    /// used length 0 and make the device need a reset.
    pub fn process_chain<'m>(
        &self,
        mem: &'m GuestMemoryMmap,
        chain: impl IntoIterator<Item = Descriptor>,
        buffers: &mut RequestBuffers<'m>,
    ) -> Result<u32, ChainError> {
        let RequestBuffers { descs, data } = buffers;
        descs.clear();
        // Copied field by field: copying each returned descriptor whole
        // stalls on store forwarding (measured: ~5% of the device path).
        descs.extend(
            chain
                .into_iter()
                .map(|d| Descriptor::new(d.addr().0, d.len(), d.flags(), d.next())),
        );
        let Some((status, rest)) = descs.split_last() else {
            return Err(ChainError::Empty);
        };
        if status.has_next() {
            return Err(ChainError::Truncated {
                descriptors: descs.len(),
            });
        }
        // The status must be writable before anything is done: a request
        // that cannot be answered must not be executed. The byte's host
        // memory is kept to write the status through.
        let mut mem = Translator::new(mem);
        let status_byte = if status.is_write_only() && status.len() != 0 {
            mem.get_ref::<u8>(status.addr())
        } else {
            None
        };
        let Some(status_byte) = status_byte else {
            return Err(ChainError::NoStatus {
                len: status.len(),
                addr: status.addr().0,
                writable: status.is_write_only(),
            });
        };

        let (written, result) =
            match Request::parse_with(&mut mem, rest, &self.config, self.read_only, data) {
                Ok(request) => request.execute(self.disk.as_ref(), &self.id),
                Err(e) => (0, Err(e)),
            };
        let status = match &result {
            Ok(()) => VIRTIO_BLK_S_OK as u8,
            Err(e @ RequestError::Disk(_)) => {
                if let Some(n) = self.log.disk.tick() {
                    error!("virtio-blk: {e} ({n} disk errors so far)");
                }
                e.status()
            }
            Err(e) => {
                if let Some(n) = self.log.request.tick() {
                    warn!("virtio-blk: bad request: {e} ({n} bad requests so far)");
                }
                e.status()
            }
        };
        status_byte.store(status);
        Ok(written + 1)
    }
}
