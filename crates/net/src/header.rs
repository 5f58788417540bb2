//! The virtio-net header (virtio 1.2, 5.1.6) as it travels between the
//! driver and the tap: the same layout on both sides.

use std::mem::size_of;

use virtio_bindings::virtio_net::virtio_net_hdr_v1;

/// Length of the header in front of every frame: `struct
/// virtio_net_hdr_v1`, `num_buffers` included, which is what a driver that
/// negotiated VIRTIO_F_VERSION_1 uses whether or not it negotiated
/// VIRTIO_NET_F_MRG_RXBUF. The tap is set to the same length
/// (TUNSETVNETHDRSZ).
pub const VNET_HDR_LEN: usize = 12;

const _: () = assert!(size_of::<virtio_net_hdr_v1>() == VNET_HDR_LEN);

/// The largest Ethernet frame (without the virtio-net header) the device
/// moves in either direction: a 64 KiB GSO packet behind a VLAN-tagged
/// Ethernet header (14 + 4 bytes). Larger TX frames are dropped; RX frames
/// can be no larger (the tap never hands out more).
pub const MAX_FRAME_LEN: usize = 65536 + 18;

/// Offset of `flags` (u8).
pub(crate) const FLAGS_OFFSET: usize = 0;
/// Offset of `gso_type` (u8).
pub(crate) const GSO_TYPE_OFFSET: usize = 1;
/// Offset of `num_buffers` (le16).
pub(crate) const NUM_BUFFERS_OFFSET: usize = 10;
