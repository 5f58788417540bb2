//! Queue operations for device logic that must not log what the driver
//! gets wrong on its own.
//!
//! Some methods of virtio-queue's [`Queue`] print an error line, unlimited,
//! each time they meet a broken queue: `is_valid` for rings outside guest
//! memory, `pop_descriptor_chain` for an unreadable available index,
//! `add_used` for a head index past the queue. A driver can repeat those
//! at will, so devices (in-VMM or vhost-user) use the functions here
//! instead, which do the same silently and let the caller log through its
//! own [`LogLimiter`](crate::LogLimiter).
//!
//! # Example
//!
//! ```
//! use vm_memory::GuestAddress;
//! use vmkit_virtio::GuestMemoryMmap;
//! use vmkit_virtio::virtio_queue::{Queue, QueueT};
//!
//! let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)])?;
//! let mut queue = Queue::new(16)?;
//! queue.try_set_desc_table_address(GuestAddress(0x1000))?;
//! queue.try_set_avail_ring_address(GuestAddress(0x2000))?;
//! queue.try_set_used_ring_address(GuestAddress(0x3000))?;
//! queue.set_ready(true);
//! assert!(vmkit_virtio::rings_in_memory(&queue, &mem));
//! // Nothing available yet (the available index is 0).
//! assert!(vmkit_virtio::pop_chain(&mut queue, &mem).is_none());
//! assert!(!vmkit_virtio::avail_index_invalid(&queue, &mem));
//! // Head index 16 does not exist in a queue of 16.
//! assert!(vmkit_virtio::add_used(&mut queue, &mem, 16, 0).is_err());
//!
//! // The used ring past the end of memory.
//! queue.try_set_used_ring_address(GuestAddress(0xfff0))?;
//! assert!(!vmkit_virtio::rings_in_memory(&queue, &mem));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Error as QueueError, Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::GuestMemoryMmap;

/// Whether the rings of `queue` lie in guest memory: the descriptor table,
/// the driver area (available ring with used_event) and the device area
/// (used ring with avail_event) for the queue's size (virtio 1.2 §2.7).
///
/// The ranges `Queue::is_valid` checks, without the error line it prints
/// for a bad one; unlike it, this does not look at whether the queue is
/// ready.
pub fn rings_in_memory(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    let n = u64::from(queue.size());
    let areas = [
        (queue.desc_table(), 16 * n),
        (queue.avail_ring(), 6 + 2 * n),
        (queue.used_ring(), 6 + 8 * n),
    ];
    areas.iter().all(|&(addr, len)| {
        usize::try_from(len).is_ok_and(|len| mem.check_range(GuestAddress(addr), len))
    })
}

/// The next available chain of `queue`, or `None` when there is none.
///
/// Like `Queue::pop_descriptor_chain`, without the error line that method
/// prints each time the queue is not ready or its available index cannot
/// be read. An available index more than a queue size ahead also pops
/// nothing: callers check [`avail_index_invalid`] once nothing more is
/// popped, and log through their limiter.
pub fn pop_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
    queue.iter(mem).ok().and_then(|mut chains| chains.next())
}

/// Whether `queue`'s available index is more than a queue size ahead of the
/// next entry to process, or cannot be read. The driver never makes more
/// than the queue size available (virtio 1.2 §2.7.13.3), so this is a
/// broken queue, on which [`pop_chain`] pops nothing.
pub fn avail_index_invalid(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    match queue.avail_idx(mem, Ordering::Acquire) {
        Ok(idx) => idx.0.wrapping_sub(queue.next_avail()) > queue.size(),
        Err(_) => true,
    }
}

/// Puts the chain whose head is descriptor `head` in `queue`'s used ring
/// with used length `len`.
///
/// Like `Queue::add_used`, but a head index that is not a descriptor of
/// the queue (the driver put it in the available ring) is refused with
/// [`virtio_queue::Error::InvalidDescriptorIndex`] without the error line
/// that method prints.
pub fn add_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
) -> Result<(), QueueError> {
    if head >= queue.size() {
        return Err(QueueError::InvalidDescriptorIndex);
    }
    queue.add_used(mem, head, len)
}

#[cfg(test)]
mod tests {
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    use super::*;
    use crate::test_utils::capture_log;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    #[test]
    fn broken_queues_are_reported_without_a_log_line() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = vq.create_queue().unwrap();
        let ((), lines) = capture_log(|| {
            assert!(rings_in_memory(&queue, &mem));
            // Head 0xffff in the available ring.
            vq.avail()
                .ring()
                .ref_at(0)
                .unwrap()
                .store(u16::to_le(0xffff));
            vq.avail().idx().store(u16::to_le(1));
            let chain = pop_chain(&mut queue, &mem).unwrap();
            assert_eq!(chain.head_index(), 0xffff);
            assert!(matches!(
                add_used(&mut queue, &mem, chain.head_index(), 0),
                Err(QueueError::InvalidDescriptorIndex)
            ));
            assert_eq!(queue.next_used(), 0);
            assert!(add_used(&mut queue, &mem, 15, 1).is_ok());
            assert_eq!(queue.next_used(), 1);
            // An available index 17 entries ahead of a queue of 16.
            vq.avail().idx().store(u16::to_le(18));
            assert!(avail_index_invalid(&queue, &mem));
            // The used ring past the end of memory; then an unready queue.
            queue.set_used_ring_address(Some(0xfff0), Some(0));
            assert!(!rings_in_memory(&queue, &mem));
            queue.set_ready(false);
            assert!(pop_chain(&mut queue, &mem).is_none());
        });
        assert!(lines.is_empty(), "{lines:#?}");

        // What virtio-queue itself does with the same queue.
        let ((), lines) = capture_log(|| {
            assert!(!queue.is_valid(&mem));
            assert!(queue.pop_descriptor_chain(&mem).is_none());
            assert!(queue.add_used(&mem, 0xffff, 0).is_err());
        });
        assert_eq!(lines.len(), 3, "{lines:#?}");
    }
}
