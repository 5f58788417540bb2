//! The device side of virtio: what a device model implements, and what the
//! transport hands it when the driver sets DRIVER_OK.

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::{GuestMemoryMmap, Interrupt, Result};

/// One queue handed to a device at activation.
#[derive(Debug)]
pub struct ActivatedQueue {
    /// Queue index within the device.
    pub index: u16,
    /// The split virtqueue, configured by the driver (size, addresses,
    /// event index negotiated).
    pub queue: Queue,
    /// Becomes readable when the driver notifies the queue; registered as
    /// an ioeventfd so the notification does not exit to the VMM.
    pub notify: EventFd,
}

/// A virtio device model (virtio 1.x, "Device Types" chapter), independent
/// of the transport that carries its queues.
pub trait VirtioDevice: Send {
    /// The virtio device ID (`VIRTIO_ID_*`, e.g. 2 for block).
    fn device_type(&self) -> u32;

    /// The maximum size of each queue; the slice's length is the number of
    /// queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Every feature bit the device offers, transport and ring bits
    /// (`VIRTIO_F_VERSION_1`, `VIRTIO_RING_F_EVENT_IDX`,
    /// `VIRTIO_RING_F_INDIRECT_DESC`) included.
    fn device_features(&self) -> u64;

    /// The driver accepted `features` (a subset of
    /// [`VirtioDevice::device_features`]) and set FEATURES_OK. An error
    /// makes the transport leave FEATURES_OK unset, as the spec requires
    /// for a combination the device cannot work with.
    fn ack_features(&mut self, features: u64) -> Result<()>;

    /// Reads the device configuration space at `offset`. Bytes past the end
    /// of the space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device configuration space at `offset` (ignored where the
    /// space is read-only).
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device: from now on it processes its queues, on its own
    /// event loop thread, until [`VirtioDevice::reset`].
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<()>;

    /// Stops the device's processing (joining its event loop) and returns
    /// it to its initial state. Returns the queues' notification eventfds so
    /// the transport can hand them out again on the next activation.
    fn reset(&mut self) -> Vec<EventFd>;
}

/// Copies the bytes of a read-only configuration space at `offset` into
/// `data`, reading zeros past its end (virtio 1.2 §2.5: a driver may read
/// any field at any width), with no overflow on a hostile offset.
pub fn read_config_space(space: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| space.get(o))
            .copied()
            .unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_reads_zero_past_the_end_and_never_overflows() {
        let space = [1u8, 2, 3, 4];
        let mut data = [0xffu8; 4];
        read_config_space(&space, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        read_config_space(&space, u64::MAX - 1, &mut data);
        assert_eq!(data, [0, 0, 0, 0]);
        let mut one = [0u8; 1];
        read_config_space(&space, 0, &mut one);
        assert_eq!(one, [1]);
    }
}
