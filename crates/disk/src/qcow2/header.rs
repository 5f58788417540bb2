//! The qcow2 header and its extensions: parsing (with every field checked
//! against the spec's and QEMU's limits), and building the header of a new
//! image.

/// `QFI\xfb`.
pub(crate) const MAGIC: u32 = 0x5146_49fb;

/// Incompatible feature: the refcounts may be inconsistent (lazy refcounts).
pub(crate) const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature: the image is known to be corrupt.
pub(crate) const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature: the compression type field is valid.
pub(crate) const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// The incompatible features this implementation understands.
pub(crate) const INCOMPAT_KNOWN: u64 = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION;

/// Compatible feature: lazy refcounts.
pub(crate) const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

/// Header extension: end of the extension area.
const EXT_END: u32 = 0;
/// Header extension: the backing file's format name.
pub(crate) const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: names of feature bits.
pub(crate) const EXT_FEATURE_TABLE: u32 = 0x6803_f857;

/// The size of a version 2 header.
const V2_HEADER_LEN: u32 = 72;
/// The smallest version 3 header.
const V3_MIN_HEADER_LEN: u32 = 104;
/// The header length this implementation writes for version 3 images
/// (with the compression type byte, padded to 8).
const V3_HEADER_LEN: u32 = 112;

/// The smallest cluster size (bits).
pub(crate) const MIN_CLUSTER_BITS: u32 = 9;
/// The largest cluster size (bits).
pub(crate) const MAX_CLUSTER_BITS: u32 = 21;
/// QEMU's limit on the L1 table (bytes).
pub(crate) const MAX_L1_BYTES: u64 = 32 << 20;
/// QEMU's limit on the refcount table (bytes).
pub(crate) const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// QEMU's limit on the number of snapshots.
pub(crate) const MAX_SNAPSHOTS: u32 = 65536;
/// The longest backing file name QEMU accepts.
const MAX_BACKING_NAME: u32 = 1023;
/// Host offsets are at most 56 bits.
pub(crate) const MAX_HOST_OFFSET: u64 = 1 << 56;

/// The compression algorithm of compressed clusters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompressionType {
    /// Raw deflate (QEMU's default).
    #[default]
    Zlib,
    /// Zstandard.
    Zstd,
}

impl std::fmt::Display for CompressionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        })
    }
}

/// A parsed qcow2 header.
#[derive(Clone, Debug)]
pub(crate) struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible: u64,
    pub compatible: u64,
    pub autoclear: u64,
    pub refcount_order: u32,
    pub compression: CompressionType,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    /// Feature names from the feature name table: (type, bit, name).
    pub feature_names: Vec<(u8, u8, String)>,
}

/// Field offsets, for in-place header updates.
pub(crate) mod field {
    /// `size` (8 bytes), `crypt_method` (4), `l1_size` (4),
    /// `l1_table_offset` (8).
    pub const SIZE: u64 = 24;
    /// `refcount_table_offset` (8), `refcount_table_clusters` (4).
    pub const REFCOUNT_TABLE: u64 = 48;
    /// `incompatible_features` (8).
    pub const INCOMPATIBLE: u64 = 72;
    /// `autoclear_features` (8).
    pub const AUTOCLEAR: u64 = 88;
}

fn be32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

/// Reads the cluster size from the first bytes of an image, to know how
/// much of it holds the header. `head` must hold at least 24 bytes.
pub(crate) fn peek_cluster_bits(head: &[u8]) -> Result<u32, String> {
    if head.len() < 24 {
        return Err("file too short for a qcow2 header".into());
    }
    if be32(head, 0) != MAGIC {
        return Err("not a qcow2 image (bad magic)".into());
    }
    let cluster_bits = be32(head, 20);
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(format!(
            "cluster_bits {cluster_bits} out of range ({MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS})"
        ));
    }
    Ok(cluster_bits)
}

impl Header {
    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Parses and validates the header in `buf` (the image's first
    /// cluster, or the whole file if shorter) of an image whose file is
    /// `file_len` bytes long.
    pub fn parse(buf: &[u8], file_len: u64) -> Result<Header, String> {
        let cluster_bits = peek_cluster_bits(buf)?;
        let cluster_size = 1u64 << cluster_bits;
        if buf.len() < V2_HEADER_LEN as usize {
            return Err("file too short for a qcow2 header".into());
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(format!("unsupported qcow2 version {version}"));
        }
        let backing_file_offset = be64(buf, 8);
        let backing_file_size = be32(buf, 16);
        let size = be64(buf, 24);
        let crypt_method = be32(buf, 32);
        let l1_size = be32(buf, 36);
        let l1_table_offset = be64(buf, 40);
        let refcount_table_offset = be64(buf, 48);
        let refcount_table_clusters = be32(buf, 56);
        let nb_snapshots = be32(buf, 60);
        let snapshots_offset = be64(buf, 64);

        let (incompatible, compatible, autoclear, refcount_order, header_length) = if version == 3 {
            if buf.len() < V3_MIN_HEADER_LEN as usize {
                return Err("file too short for a version 3 header".into());
            }
            let header_length = be32(buf, 100);
            if header_length < V3_MIN_HEADER_LEN {
                return Err(format!("header_length {header_length} is below 104"));
            }
            if u64::from(header_length) > cluster_size || header_length as usize > buf.len() {
                return Err(format!(
                    "header_length {header_length} exceeds the first cluster"
                ));
            }
            (
                be64(buf, 72),
                be64(buf, 80),
                be64(buf, 88),
                be32(buf, 96),
                header_length,
            )
        } else {
            (0, 0, 0, 4, V2_HEADER_LEN)
        };

        if crypt_method != 0 {
            return Err("encrypted images are not supported".into());
        }
        if refcount_order > 6 {
            return Err(format!(
                "refcount_order {refcount_order} out of range (0..=6)"
            ));
        }
        if size > i64::MAX as u64 {
            return Err(format!("virtual size {size} is too large"));
        }
        // The L1 table must be able to map the whole disk.
        let l2_bits = cluster_bits - 3;
        let l1_cover_bits = cluster_bits + l2_bits;
        let needed_l1 = size.div_ceil(1u64 << l1_cover_bits);
        if u64::from(l1_size) * 8 > MAX_L1_BYTES {
            return Err(format!("L1 table size {l1_size} is too large"));
        }
        if u64::from(l1_size) < needed_l1 {
            return Err(format!(
                "L1 table ({l1_size} entries) too small for virtual size {size}"
            ));
        }
        let table_in_file = |name: &str, off: u64, len: u64| -> Result<(), String> {
            if !off.is_multiple_of(cluster_size) {
                return Err(format!("{name} offset {off:#x} is not cluster aligned"));
            }
            match off.checked_add(len) {
                Some(end) if end <= file_len && end <= MAX_HOST_OFFSET => Ok(()),
                _ => Err(format!(
                    "{name} at {off:#x} ({len} bytes) reaches past the end of the file \
                     ({file_len} bytes)"
                )),
            }
        };
        if l1_size > 0 {
            if l1_table_offset == 0 {
                return Err("L1 table offset is 0".into());
            }
            table_in_file("L1 table", l1_table_offset, u64::from(l1_size) * 8)?;
        }
        if refcount_table_clusters == 0 || refcount_table_offset == 0 {
            return Err("the image has no refcount table".into());
        }
        let rt_bytes = u64::from(refcount_table_clusters) * cluster_size;
        if rt_bytes > MAX_REFTABLE_BYTES {
            return Err(format!(
                "refcount table ({refcount_table_clusters} clusters) is too large"
            ));
        }
        table_in_file("refcount table", refcount_table_offset, rt_bytes)?;
        if nb_snapshots > MAX_SNAPSHOTS {
            return Err(format!("too many snapshots ({nb_snapshots})"));
        }
        if nb_snapshots > 0 {
            // Each entry is at least 40 bytes.
            table_in_file(
                "snapshot table",
                snapshots_offset,
                u64::from(nb_snapshots) * 40,
            )?;
        }

        let unknown = incompatible & !INCOMPAT_KNOWN;
        let mut header = Header {
            version,
            cluster_bits,
            size,
            l1_size,
            l1_table_offset,
            refcount_table_offset,
            refcount_table_clusters,
            nb_snapshots,
            snapshots_offset,
            incompatible,
            compatible,
            autoclear,
            refcount_order,
            compression: CompressionType::Zlib,
            backing_file: None,
            backing_format: None,
            feature_names: Vec::new(),
        };

        // Header extensions, up to the end of the first cluster.
        let area_end = buf.len().min(cluster_size as usize);
        let mut pos = header_length as usize;
        // Extensions are 8-byte aligned.
        pos = pos.div_ceil(8) * 8;
        loop {
            if pos + 8 > area_end {
                // A truncated extension area ends it (QEMU stops too).
                break;
            }
            let ty = be32(buf, pos);
            let len = be32(buf, pos + 4) as usize;
            if ty == EXT_END {
                break;
            }
            let data_start = pos + 8;
            let data_end = data_start
                .checked_add(len)
                .filter(|&e| e <= area_end)
                .ok_or_else(|| format!("header extension {ty:#x} overruns the first cluster"))?;
            let data = &buf[data_start..data_end];
            match ty {
                EXT_BACKING_FORMAT => {
                    let name = String::from_utf8_lossy(data)
                        .trim_end_matches('\0')
                        .to_string();
                    header.backing_format = Some(name);
                }
                EXT_FEATURE_TABLE => {
                    for entry in data.chunks_exact(48) {
                        let name = String::from_utf8_lossy(&entry[2..])
                            .trim_end_matches('\0')
                            .to_string();
                        header.feature_names.push((entry[0], entry[1], name));
                    }
                }
                _ => {}
            }
            pos = data_start + len.div_ceil(8) * 8;
        }

        if unknown != 0 {
            let names: Vec<String> = (0..64u8)
                .filter(|b| unknown & (1 << b) != 0)
                .map(|b| {
                    header
                        .feature_names
                        .iter()
                        .find(|(t, bit, _)| *t == 0 && *bit == b)
                        .map_or_else(|| format!("bit {b}"), |(_, _, n)| format!("{n} (bit {b})"))
                })
                .collect();
            return Err(format!(
                "unsupported incompatible features: {}",
                names.join(", ")
            ));
        }
        if incompatible & INCOMPAT_COMPRESSION != 0 {
            if header_length < 105 {
                return Err("compression type bit set but header has no compression type".into());
            }
            header.compression = match buf[104] {
                0 => CompressionType::Zlib,
                1 => CompressionType::Zstd,
                t => return Err(format!("unknown compression type {t}")),
            };
        } else if header_length >= 105 && buf[104] != 0 {
            return Err(format!(
                "compression type {} without the compression type feature bit",
                buf[104]
            ));
        }

        if backing_file_offset != 0 {
            if backing_file_size == 0 || backing_file_size > MAX_BACKING_NAME {
                return Err(format!(
                    "backing file name length {backing_file_size} is invalid"
                ));
            }
            let start = usize::try_from(backing_file_offset)
                .ok()
                .filter(|&s| (s as u64) < cluster_size)
                .ok_or("backing file name lies outside the first cluster")?;
            let end = start + backing_file_size as usize;
            if end > area_end {
                return Err("backing file name lies outside the first cluster".into());
            }
            let name = std::str::from_utf8(&buf[start..end])
                .map_err(|_| "backing file name is not UTF-8".to_string())?;
            header.backing_file = Some(name.to_string());
        }
        Ok(header)
    }

    /// The header of a new, empty image: one refcount table cluster at
    /// cluster 1, one refcount block at cluster 2, no L1 table, size 0.
    /// The caller grows it to its size afterwards.
    pub fn build_new(
        version: u32,
        cluster_bits: u32,
        refcount_order: u32,
        lazy_refcounts: bool,
        backing: Option<(&str, &str)>,
    ) -> Result<Vec<u8>, String> {
        let cluster_size = 1usize << cluster_bits;
        let mut buf = Vec::with_capacity(cluster_size);
        let put32 = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_be_bytes());
        let put64 = |b: &mut Vec<u8>, v: u64| b.extend_from_slice(&v.to_be_bytes());
        put32(&mut buf, MAGIC);
        put32(&mut buf, version);
        put64(&mut buf, 0); // backing_file_offset, patched below
        put32(&mut buf, 0); // backing_file_size, patched below
        put32(&mut buf, cluster_bits);
        put64(&mut buf, 0); // size
        put32(&mut buf, 0); // crypt_method
        put32(&mut buf, 0); // l1_size
        put64(&mut buf, 0); // l1_table_offset
        put64(&mut buf, cluster_size as u64); // refcount_table_offset
        put32(&mut buf, 1); // refcount_table_clusters
        put32(&mut buf, 0); // nb_snapshots
        put64(&mut buf, 0); // snapshots_offset
        if version == 3 {
            put64(&mut buf, 0); // incompatible
            put64(
                &mut buf,
                if lazy_refcounts {
                    COMPAT_LAZY_REFCOUNTS
                } else {
                    0
                },
            );
            put64(&mut buf, 0); // autoclear
            put32(&mut buf, refcount_order);
            put32(&mut buf, V3_HEADER_LEN);
            buf.push(0); // compression type: zlib
            buf.resize(V3_HEADER_LEN as usize, 0);
        }
        let ext = |b: &mut Vec<u8>, ty: u32, data: &[u8]| {
            put32(b, ty);
            put32(b, data.len() as u32);
            b.extend_from_slice(data);
            b.resize(b.len().div_ceil(8) * 8, 0);
        };
        if let Some((_, fmt)) = backing {
            ext(&mut buf, EXT_BACKING_FORMAT, fmt.as_bytes());
        }
        if version == 3 {
            let mut table = Vec::new();
            for (ty, bit, name) in [
                (0u8, 0u8, "dirty bit"),
                (0, 1, "corrupt bit"),
                (0, 3, "compression type"),
                (1, 0, "lazy refcounts"),
            ] {
                let mut entry = [0u8; 48];
                entry[0] = ty;
                entry[1] = bit;
                entry[2..2 + name.len()].copy_from_slice(name.as_bytes());
                table.extend_from_slice(&entry);
            }
            ext(&mut buf, EXT_FEATURE_TABLE, &table);
        }
        ext(&mut buf, EXT_END, &[]);
        if let Some((name, _)) = backing {
            if name.is_empty() || name.len() > MAX_BACKING_NAME as usize {
                return Err(format!(
                    "backing file name length {} is invalid",
                    name.len()
                ));
            }
            let off = buf.len() as u64;
            buf[8..16].copy_from_slice(&off.to_be_bytes());
            buf[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            buf.extend_from_slice(name.as_bytes());
        }
        if buf.len() > cluster_size {
            return Err("the header does not fit in the first cluster".into());
        }
        buf.resize(cluster_size, 0);
        Ok(buf)
    }
}
