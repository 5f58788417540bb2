//! The virtio-blk configuration space and the device's limits.

use std::mem::{offset_of, size_of};

use virtio_bindings::virtio_blk::virtio_blk_config;
use vmkit_disk::{DiskImage, SECTOR_SIZE};

/// The size of the device's one request queue.
pub const QUEUE_SIZE: u16 = 256;

/// The largest DISCARD or WRITE_ZEROES segment, in sectors (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;

/// The limits the device advertises in its configuration space and
/// enforces on every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// Disk size in 512-byte sectors.
    pub capacity: u64,
    /// Largest number of data segments (descriptors) in a request.
    pub seg_max: u32,
    /// The disk's logical block size, in bytes.
    pub blk_size: u32,
    /// Largest DISCARD segment, in sectors.
    pub max_discard_sectors: u32,
    /// Largest number of segments in one DISCARD request.
    pub max_discard_seg: u32,
    /// Alignment the disk frees space at, in sectors.
    pub discard_sector_alignment: u32,
    /// Largest WRITE_ZEROES segment, in sectors.
    pub max_write_zeroes_sectors: u32,
    /// Largest number of segments in one WRITE_ZEROES request.
    pub max_write_zeroes_seg: u32,
    /// Whether WRITE_ZEROES with the unmap flag may free space.
    pub write_zeroes_may_unmap: bool,
}

impl BlockConfig {
    /// The configuration of a device over `disk` with a queue of
    /// `queue_size` descriptors.
    pub fn new(disk: &dyn DiskImage, queue_size: u16) -> Self {
        let sectors = |bytes: u32| (u64::from(bytes) / SECTOR_SIZE).max(1) as u32;
        BlockConfig {
            capacity: disk.size() / SECTOR_SIZE,
            // A request needs a header and a status descriptor besides its
            // data.
            seg_max: u32::from(queue_size.saturating_sub(2)),
            blk_size: disk.block_size(),
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_discard_seg: 1,
            discard_sector_alignment: sectors(disk.discard_granularity()),
            max_write_zeroes_sectors: MAX_DISCARD_SECTORS,
            max_write_zeroes_seg: 1,
            write_zeroes_may_unmap: true,
        }
    }

    /// The configuration space (`struct virtio_blk_config`, little endian).
    /// Fields of features the device does not offer are zero.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut space = vec![0u8; size_of::<virtio_blk_config>()];
        let mut put = |offset: usize, bytes: &[u8]| {
            space[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(
            offset_of!(virtio_blk_config, capacity),
            &self.capacity.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, seg_max),
            &self.seg_max.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, blk_size),
            &self.blk_size.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, max_discard_sectors),
            &self.max_discard_sectors.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, max_discard_seg),
            &self.max_discard_seg.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, discard_sector_alignment),
            &self.discard_sector_alignment.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, max_write_zeroes_sectors),
            &self.max_write_zeroes_sectors.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, max_write_zeroes_seg),
            &self.max_write_zeroes_seg.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, write_zeroes_may_unmap),
            &[u8::from(self.write_zeroes_may_unmap)],
        );
        space
    }
}

#[cfg(test)]
mod tests {
    use vmkit_disk::MemDisk;

    use super::*;

    fn le32(space: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(space[offset..offset + 4].try_into().unwrap())
    }

    #[test]
    fn layout_follows_the_spec() {
        let disk = MemDisk::new(8 << 20, false);
        let space = BlockConfig::new(&disk, QUEUE_SIZE).to_bytes();
        assert_eq!(space.len(), 96);
        // Offsets from the virtio 1.2 spec, 5.2.4.
        assert_eq!(
            u64::from_le_bytes(space[0..8].try_into().unwrap()),
            (8 << 20) / 512
        );
        assert_eq!(le32(&space, 8), 0, "size_max not offered");
        assert_eq!(le32(&space, 12), 254);
        assert_eq!(le32(&space, 20), 512);
        assert_eq!(le32(&space, 36), MAX_DISCARD_SECTORS);
        assert_eq!(le32(&space, 40), 1);
        assert_eq!(le32(&space, 44), 1);
        assert_eq!(le32(&space, 48), MAX_DISCARD_SECTORS);
        assert_eq!(le32(&space, 52), 1);
        assert_eq!(space[56], 1);
        assert!(space[57..].iter().all(|&b| b == 0));
    }
}

/// The disk's serial number, as VIRTIO_BLK_T_GET_ID returns it: up to
/// [`DiskId::LEN`] bytes, NUL padded (not terminated when all 20 are used).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DiskId([u8; DiskId::LEN]);

impl DiskId {
    /// The size of the identifier (`VIRTIO_BLK_ID_BYTES`).
    pub const LEN: usize = virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES as usize;

    /// `serial`, which must be at most [`DiskId::LEN`] bytes without NULs.
    pub fn new(serial: &str) -> crate::Result<Self> {
        if serial.len() > Self::LEN || serial.contains('\0') {
            return Err(crate::Error::InvalidSerial(serial.to_string()));
        }
        let mut id = [0u8; Self::LEN];
        id[..serial.len()].copy_from_slice(serial.as_bytes());
        Ok(DiskId(id))
    }

    /// A default serial derived from the image's path: its file name, cut
    /// to [`DiskId::LEN`] bytes (at a character boundary).
    pub fn from_path(path: &std::path::Path) -> Self {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut end = name.len().min(Self::LEN);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let name = name[..end].replace('\0', "");
        Self::new(&name).unwrap_or(Self::from_index(0))
    }

    /// The default serial of the VMM's disk number `index`: `vmkit<index>`.
    pub fn from_index(index: usize) -> Self {
        let mut id = [0u8; Self::LEN];
        let serial = format!("vmkit{index}");
        // "vmkit" + at most 20 digits of a u64 could exceed 20 bytes.
        let n = serial.len().min(Self::LEN);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        DiskId(id)
    }

    /// The 20 bytes GET_ID returns.
    pub fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }
}

impl std::fmt::Debug for DiskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(Self::LEN);
        write!(f, "DiskId({:?})", String::from_utf8_lossy(&self.0[..end]))
    }
}

#[cfg(test)]
mod id_tests {
    use super::*;

    #[test]
    fn serials() {
        assert_eq!(&DiskId::new("abc").unwrap().as_bytes()[..4], b"abc\0");
        assert_eq!(
            DiskId::new("01234567890123456789").unwrap().as_bytes(),
            b"01234567890123456789"
        );
        assert!(DiskId::new("012345678901234567890").is_err());
        assert!(DiskId::new("a\0b").is_err());
        assert_eq!(&DiskId::from_index(3).as_bytes()[..7], b"vmkit3\0");
        let id = DiskId::from_path(std::path::Path::new(
            "/images/a-very-long-root-disk-name.img",
        ));
        assert_eq!(id.as_bytes(), b"a-very-long-root-dis");
        assert_eq!(
            &DiskId::from_path(std::path::Path::new("/x/root.img")).as_bytes()[..9],
            b"root.img\0"
        );
    }
}
