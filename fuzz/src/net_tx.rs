//! `net_tx`: frames a hostile driver sends on a virtio-net TX queue.
//!
//! The fuzz input lays out TX chains (a virtio-net header with fuzzed
//! offload requests and a payload, mutated: writable descriptors, wild
//! addresses and lengths, broken links, indirect tables, bogus heads; or a
//! raw descriptor table) and the offloads the driver negotiated. After
//! [`Tx::process`]:
//!
//! - the backend received exactly the frames of the well-formed chains, in
//!   order, byte for byte (device-readable only, inside guest memory, at
//!   least a header and at most a header plus [`MAX_FRAME_LEN`], at most
//!   IOV_MAX pieces, offloads negotiated), and nothing from the others;
//! - every frame the backend got is within those length bounds;
//! - every popped chain went back to the used ring, in order, with length 0;
//! - guest memory outside the used ring is unchanged;
//! - the outcome's counters match.

use std::io;
use std::sync::Mutex;

use arbitrary::{Result, Unstructured};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, VolatileSlice};
use vmkit_net::tx::Tx;
use vmkit_net::{MAX_FRAME_LEN, NetBackend, VNET_HDR_LEN};

use crate::guest::{self, Buf, QueueLayout};

const IOV_MAX: usize = 1024;

/// Runs one input.
pub fn run(data: &[u8]) {
    let _ = fuzz(&mut Unstructured::new(data));
}

/// Records the frames written; can refuse them.
#[derive(Default)]
struct Recorder {
    frames: Mutex<Vec<Vec<u8>>>,
    fail: bool,
}

impl NetBackend for Recorder {
    fn read_frame(&self, _bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn write_frame(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        assert!(
            bufs.len() <= IOV_MAX,
            "{} I/O vectors for one frame",
            bufs.len()
        );
        if self.fail {
            return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
        }
        let mut frame = Vec::new();
        for b in bufs {
            let mut part = vec![0u8; b.len()];
            b.copy_to(&mut part[..]);
            frame.extend_from_slice(&part);
        }
        let n = frame.len();
        self.frames.lock().expect("frames").push(frame);
        Ok(n)
    }
}

fn has(features: u64, bit: u32) -> bool {
    features & (1 << bit) != 0
}

/// Whether a header's offload requests are allowed by `features`.
fn offloads_ok(features: u64, hdr: &[u8]) -> bool {
    let (flags, gso) = (u32::from(hdr[0]), u32::from(hdr[1]));
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && !has(features, VIRTIO_NET_F_CSUM) {
        return false;
    }
    if gso & VIRTIO_NET_HDR_GSO_ECN != 0 && !has(features, VIRTIO_NET_F_HOST_ECN) {
        return false;
    }
    match gso & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_NONE => true,
        VIRTIO_NET_HDR_GSO_TCPV4 => has(features, VIRTIO_NET_F_HOST_TSO4),
        VIRTIO_NET_HDR_GSO_TCPV6 => has(features, VIRTIO_NET_F_HOST_TSO6),
        VIRTIO_NET_HDR_GSO_UDP => has(features, VIRTIO_NET_F_HOST_UFO),
        _ => false,
    }
}

/// The frame a chain must produce, or `None` if it must be dropped.
fn expected_frame(features: u64, snap: &[u8], descs: &[Descriptor]) -> Option<Vec<u8>> {
    let mut frame = Vec::new();
    let mut pieces = 0usize;
    let mut total = 0u64;
    for d in descs {
        let (addr, len) = (d.addr().0, u64::from(d.len()));
        total += len;
        if d.is_write_only()
            || total > (VNET_HDR_LEN + MAX_FRAME_LEN) as u64
            || !guest::in_memory(addr, len)
        {
            return None;
        }
        pieces += guest::regions_touched(addr, len);
        if len > 0 {
            frame.extend_from_slice(guest::bytes(snap, addr, len));
        }
    }
    // A chain virtio-queue cut short (a loop, a bad next) is dropped.
    let truncated = descs.last().is_some_and(|d| d.has_next());
    if truncated || pieces > IOV_MAX || frame.len() < VNET_HDR_LEN || !offloads_ok(features, &frame)
    {
        return None;
    }
    Some(frame)
}

fn header(u: &mut Unstructured<'_>) -> Result<[u8; VNET_HDR_LEN]> {
    let mut h = [0u8; VNET_HDR_LEN];
    h[0] = match u.int_in_range(0..=3u8)? {
        0 | 1 => 0,
        2 => VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        _ => u.arbitrary()?,
    };
    let gso = *u.choose(&[
        VIRTIO_NET_HDR_GSO_NONE,
        VIRTIO_NET_HDR_GSO_NONE,
        VIRTIO_NET_HDR_GSO_TCPV4,
        VIRTIO_NET_HDR_GSO_TCPV6,
        VIRTIO_NET_HDR_GSO_UDP,
        VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
    ])? as u8;
    h[1] = if u.ratio(1, 16)? { u.arbitrary()? } else { gso };
    u.fill_buffer(&mut h[2..10])?;
    Ok(h)
}

fn fuzz(u: &mut Unstructured<'_>) -> Result<()> {
    let mem = guest::memory();
    guest::scribble(u, &mem)?;
    let size = QueueLayout::fuzz_size(u)?;
    let mut layout = QueueLayout::new(size);
    let mut features = 1u64 << VIRTIO_F_VERSION_1;
    for bit in [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_UFO,
        VIRTIO_NET_F_HOST_ECN,
    ] {
        if u.arbitrary()? {
            features |= 1 << bit;
        }
    }
    let event_idx: bool = u.arbitrary()?;
    let backend = Recorder {
        fail: u.ratio(1, 32)?,
        ..Default::default()
    };

    if u.ratio(1, 8)? {
        layout.add_raw(u, 64, &[12, 14, 60, 1514])?;
    } else {
        while layout.free() > 0 && !u.is_empty() {
            let hdr_addr = guest::addr(u)?;
            let hdr = header(u)?;
            if guest::in_memory(hdr_addr, VNET_HDR_LEN as u64) {
                mem.write_slice(&hdr, GuestAddress(hdr_addr))
                    .expect("header");
            }
            let mut bufs = Vec::new();
            if u.ratio(1, 4)? {
                // The header alone in its descriptor.
                bufs.push(Buf {
                    addr: hdr_addr,
                    len: VNET_HDR_LEN as u32,
                    write: false,
                });
                for _ in 0..u.int_in_range(0..=3u8)? {
                    bufs.push(Buf {
                        addr: guest::addr(u)?,
                        len: guest::len(u, 64, &[14, 60, 1514, (MAX_FRAME_LEN + 1) as u32])?,
                        write: false,
                    });
                }
            } else {
                // Header and payload in one buffer, maybe more after it.
                let len =
                    (VNET_HDR_LEN as u32).wrapping_add(guest::len(u, 64, &[0, 14, 60, 1514])?);
                bufs.push(Buf {
                    addr: hdr_addr,
                    len,
                    write: false,
                });
                for _ in 0..u.int_in_range(0..=1u8)? {
                    bufs.push(Buf {
                        addr: guest::addr(u)?,
                        len: guest::len(u, 64, &[])?,
                        write: false,
                    });
                }
            }
            if !layout.add_chain(u, &bufs)? {
                break;
            }
        }
    }
    layout.write_tables(&mem);
    layout.publish(&mem, 0, layout.avail.len());
    if u.ratio(1, 32)? {
        guest::set_avail_idx(&mem, u.arbitrary()?);
    }
    let used_event: u16 = u.arbitrary()?;
    mem.write_obj(used_event.to_le(), GuestAddress(layout.used_event_addr()))
        .expect("used_event");

    let mut queue = guest::queue(&layout, event_idx, &mem);
    let chains = guest::shadow_chains(&mem, &queue);
    let before = guest::snapshot(&mem);
    let used = layout.used_ring_range();
    // Chains reading the used ring see it change as earlier chains complete.
    let reads_used_ring = chains.iter().flat_map(|(_, d)| d).any(|d| {
        let r = d.addr().0..d.addr().0.saturating_add(u64::from(d.len()));
        guest::overlaps(&r, &used)
    }) || layout
        .indirect_ranges
        .iter()
        .chain(&guest::indirect_tables(&mem, size))
        .any(|r| guest::overlaps(r, &used));
    let expected: Vec<Option<Vec<u8>>> = chains
        .iter()
        .map(|(_, d)| {
            if backend.fail {
                None
            } else {
                expected_frame(features, &before, d)
            }
        })
        .collect();

    if std::env::var_os("VMKIT_FUZZ_TRACE").is_some() {
        eprintln!(
            "tx: size {size} layout {layout:?} chains {chains:?} used_event {used_event:#x} at {:#x} event_idx {event_idx}",
            layout.used_event_addr()
        );
    }
    let mut tx = Tx::new(features);
    let outcome = tx.process(&mem, &mut queue, &backend);

    // A chain cut short but otherwise fine (every buffer readable, in
    // memory, not too long) means the driver broke the ring.
    let cut_short = |d: &[Descriptor]| {
        d.last().is_some_and(|d| d.has_next())
            && d.iter()
                .all(|x| !x.is_write_only() && guest::in_memory(x.addr().0, u64::from(x.len())))
            && d.iter().map(|x| u64::from(x.len())).sum::<u64>()
                <= (VNET_HDR_LEN + MAX_FRAME_LEN) as u64
    };
    if chains.iter().any(|(_, d)| cut_short(d)) {
        assert!(
            outcome.needs_reset,
            "a chain cut short must make the device need a reset"
        );
    }
    let frames = backend.frames.lock().expect("frames").clone();
    for f in &frames {
        assert!(
            (VNET_HDR_LEN..=VNET_HDR_LEN + MAX_FRAME_LEN).contains(&f.len()),
            "a frame of {} bytes reached the backend",
            f.len()
        );
    }
    let completed = chains.iter().filter(|(h, _)| *h < size).count() as u64;
    assert_eq!(
        outcome.completed, completed,
        "chains returned to the used ring"
    );
    assert_eq!(
        outcome.frames + outcome.dropped,
        chains.len() as u64,
        "chains handled"
    );
    assert_eq!(outcome.frames, frames.len() as u64);
    assert_eq!(
        outcome.bytes,
        frames
            .iter()
            .map(|f| (f.len() - VNET_HDR_LEN) as u64)
            .sum::<u64>()
    );
    if !reads_used_ring {
        let want: Vec<Vec<u8>> = expected.into_iter().flatten().collect();
        assert_eq!(frames.len(), want.len(), "frames sent (chains {chains:?})");
        for (i, (got, want)) in frames.iter().zip(&want).enumerate() {
            assert!(got == want, "frame {i} differs from its chain's bytes");
        }
        if completed <= u64::from(size) {
            let heads: Vec<u16> = chains
                .iter()
                .map(|(h, _)| *h)
                .filter(|&h| h < size)
                .collect();
            for (i, &h) in heads.iter().enumerate() {
                assert_eq!(
                    guest::used_elem(&mem, size, i as u16),
                    (u32::from(h), 0),
                    "used entry {i}"
                );
            }
            if !heads.is_empty() {
                assert_eq!(guest::used_idx(&mem), heads.len() as u16);
            }
        }
    }
    // TX writes nothing but the used ring.
    let mut after = guest::snapshot(&mem);
    let mut before = before;
    for m in [&mut after, &mut before] {
        m[used.start as usize..used.end as usize].fill(0);
    }
    assert!(
        after == before,
        "TX changed guest memory outside the used ring"
    );
    Ok(())
}
