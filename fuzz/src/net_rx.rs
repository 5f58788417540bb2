//! `net_rx`: frames from the host delivered into a hostile driver's RX
//! buffers.
//!
//! The fuzz input lays out RX chains (mostly device-writable buffers of
//! typical sizes, mutated), the negotiated features (MRG_RXBUF,
//! GUEST_CSUM), host frames of any length (empty, shorter than the header,
//! MTU-sized, the largest allowed, larger), how the backend reports a
//! truncated frame (bytes stored or full length, both allowed by
//! [`NetBackend`]), a backend failure, and rounds in which the driver posts
//! more buffers and the host more frames before [`Rx::process`] runs with a
//! fuzzed budget. Checked:
//!
//! - every used entry names a posted head, with a length no larger than
//!   its chain's writable bytes; unusable chains (readable descriptors,
//!   outside memory, shorter than a header) come back with length 0 and
//!   usable ones never do;
//! - guest memory changes only inside device-writable buffers of posted
//!   chains and the used ring;
//! - the frames delivered are, in order, frames the backend handed over
//!   (none invented, reordered or altered: byte for byte, with
//!   `num_buffers` set to the number of used entries of the frame — 1
//!   without MRG_RXBUF — and `flags` cleared without GUEST_CSUM); each
//!   frame's used lengths add up to its length;
//! - the counters add up (frames + dropped + stashed = frames read), the
//!   budget is honoured and `Drained` means the backend is empty.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::sync::Mutex;

use arbitrary::{Result, Unstructured};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, VolatileSlice};
use vmkit_net::rx::{Rx, RxStatus};
use vmkit_net::{MAX_FRAME_LEN, NetBackend, VNET_HDR_LEN};

use crate::guest::{self, Buf, QueueLayout};

const IOV_MAX: usize = 1024;
const NUM_BUFFERS: usize = 10;

/// Runs one input.
pub fn run(data: &[u8]) {
    let _ = fuzz(&mut Unstructured::new(data));
}

/// Host frames waiting, and those handed over.
struct Source {
    waiting: Mutex<VecDeque<Vec<u8>>>,
    consumed: Mutex<Vec<Vec<u8>>>,
    /// Report a truncated frame's full length rather than the bytes stored.
    full_len: bool,
    /// Fail the read that would hand over this frame (once).
    fail_at: Mutex<Option<usize>>,
}

impl NetBackend for Source {
    fn read_frame(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        let mut consumed = self.consumed.lock().expect("consumed");
        {
            let mut fail = self.fail_at.lock().expect("fail");
            if *fail == Some(consumed.len()) {
                *fail = None;
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        let Some(frame) = self.waiting.lock().expect("waiting").pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let mut rest = &frame[..];
        for b in bufs {
            let n = b.len().min(rest.len());
            b.subslice(0, n).expect("subslice").copy_from(&rest[..n]);
            rest = &rest[n..];
        }
        let stored = frame.len() - rest.len();
        let n = if self.full_len { frame.len() } else { stored };
        consumed.push(frame);
        Ok(n)
    }

    fn write_frame(&self, _bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        unreachable!("RX does not write frames");
    }
}

fn frame(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    const BIG: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
    let len = match u.int_in_range(0..=11u8)? {
        0 => 0,
        1 => u.int_in_range(1..=VNET_HDR_LEN)?,
        2..=4 => VNET_HDR_LEN + u.int_in_range(0..=64usize)?,
        5 | 6 => VNET_HDR_LEN + 1514,
        7 => VNET_HDR_LEN + u.int_in_range(0..=9000usize)?,
        8 => BIG,
        9 => BIG + 1,
        10 => BIG - u.int_in_range(0..=4096usize)?,
        _ => u.int_in_range(0..=BIG + 64)?,
    };
    let seed: u8 = u.arbitrary()?;
    let mut f: Vec<u8> = (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(seed | 1)
                .wrapping_add((i >> 8) as u8)
        })
        .collect();
    // A header with fuzzed flags and num_buffers (the device must set it).
    let n = f.len().min(VNET_HDR_LEN);
    u.fill_buffer(&mut f[..n])?;
    Ok(f)
}

/// Whether RX may use the chain (and must not return it with length 0).
fn usable(descs: &[Descriptor]) -> bool {
    let mut total = 0u64;
    let mut bufs = 0usize;
    for d in descs {
        if !d.is_write_only() {
            return false;
        }
        if d.len() == 0 {
            continue;
        }
        if !guest::in_memory(d.addr().0, u64::from(d.len())) {
            return false;
        }
        bufs += 1;
        total += u64::from(d.len());
    }
    let truncated = descs.last().is_some_and(|d| d.has_next());
    !descs.is_empty() && !truncated && bufs <= IOV_MAX && total >= VNET_HDR_LEN as u64
}

fn writable_ranges(descs: &[Descriptor]) -> impl Iterator<Item = Range<u64>> + '_ {
    descs
        .iter()
        .filter(|d| {
            d.is_write_only() && d.len() > 0 && guest::in_memory(d.addr().0, u64::from(d.len()))
        })
        .map(|d| d.addr().0..d.addr().0 + u64::from(d.len()))
}

fn capacity(descs: &[Descriptor]) -> u64 {
    descs
        .iter()
        .filter(|d| d.is_write_only())
        .map(|d| u64::from(d.len()))
        .sum()
}

/// The first `len` bytes of a chain's writable buffers in `snap`.
fn chain_bytes(snap: &[u8], descs: &[Descriptor], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    for r in writable_ranges(descs) {
        if out.len() == len {
            break;
        }
        let n = (len - out.len()).min((r.end - r.start) as usize);
        out.extend_from_slice(guest::bytes(snap, r.start, n as u64));
    }
    out
}

fn fuzz(u: &mut Unstructured<'_>) -> Result<()> {
    let mem = guest::memory();
    guest::scribble(u, &mem)?;
    let size = QueueLayout::fuzz_size(u)?;
    let mut layout = QueueLayout::new(size);
    let mrg: bool = u.arbitrary()?;
    let guest_csum: bool = u.arbitrary()?;
    let event_idx: bool = u.arbitrary()?;
    let mut features = 1u64 << VIRTIO_F_VERSION_1;
    if mrg {
        features |= 1 << VIRTIO_NET_F_MRG_RXBUF;
    }
    if guest_csum {
        features |= 1 << VIRTIO_NET_F_GUEST_CSUM;
    }

    if u.ratio(1, 8)? {
        layout.add_raw(u, 512, &[12, 1526, 4096])?;
    } else {
        while layout.free() > 0 && !u.is_empty() && layout.avail.len() < 64 {
            let mut bufs = Vec::new();
            for _ in 0..u.int_in_range(1..=3u8)? {
                let len = match u.int_in_range(0..=5u8)? {
                    0 => 1526,
                    1 => *u.choose(&[VNET_HDR_LEN as u32, 60, 2048, 4096, 0x8000])?,
                    _ => guest::len(u, 512, &[11, 12, 13, 1526])?,
                };
                bufs.push(Buf {
                    addr: guest::addr(u)?,
                    len,
                    write: true,
                });
            }
            if !layout.add_chain(u, &bufs)? {
                break;
            }
            // The driver may post the same chain again later.
            if u.ratio(1, 16)? {
                let head = *layout.avail.last().expect("just added");
                layout.avail.push(head);
            }
        }
    }
    layout.write_tables(&mem);
    let used_event: u16 = u.arbitrary()?;
    mem.write_obj(used_event.to_le(), GuestAddress(layout.used_event_addr()))
        .expect("used_event");
    let raw_idx = u.ratio(1, 32)?;

    // Host frames and rounds.
    let mut frames = Vec::new();
    for _ in 0..u.int_in_range(0..=8u8)? {
        frames.push(frame(u)?);
    }
    let source = Source {
        waiting: Mutex::new(VecDeque::new()),
        consumed: Mutex::new(Vec::new()),
        full_len: u.arbitrary()?,
        fail_at: Mutex::new(if u.ratio(1, 16)? {
            Some(u.int_in_range(0..=8usize)?)
        } else {
            None
        }),
    };
    let rounds = u.int_in_range(1..=4usize)?;

    // What the device can reach: every posted chain, walked now (tables
    // only change if the device writes them, which `clean` rules out).
    let heads = layout.avail.clone();
    let chains = guest::walk_chains(&mem, size, &heads);
    let mut metadata = layout.metadata();
    metadata.extend(guest::indirect_tables(&mem, size));
    let writable: Vec<Range<u64>> = chains.iter().flat_map(|c| writable_ranges(c)).collect();
    let clean = !raw_idx
        && !writable
            .iter()
            .any(|w| metadata.iter().any(|m| guest::overlaps(w, m)));
    let mut distinct = heads.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let strict = clean
        && heads.len() <= usize::from(size)
        && distinct.len() == heads.len()
        && heads.iter().all(|&h| h < size)
        && writable
            .iter()
            .enumerate()
            .all(|(i, a)| writable[i + 1..].iter().all(|b| !guest::overlaps(a, b)));
    let mut before = guest::snapshot(&mem);

    let mut queue = guest::queue(&layout, event_idx, &mem);
    let mut rx = Rx::new(features, &queue);
    let (mut posted, mut pushed) = (0usize, 0usize);
    let (mut delivered, mut dropped) = (0u64, 0u64);
    let mut used_seen = 0u16;
    let mut used_log: Vec<(u32, u32)> = Vec::new();
    let mut needs_reset = false;
    for round in 0..rounds {
        let last = round + 1 == rounds;
        let post_to = if last {
            heads.len()
        } else {
            u.int_in_range(posted..=heads.len())?
        };
        layout.publish(&mem, posted, post_to);
        // The driver's own writes, for the comparison at the end.
        for (i, head) in heads.iter().enumerate().take(post_to).skip(posted) {
            let slot = (guest::AVAIL_RING + 4 + 2 * (i % usize::from(size)) as u64) as usize;
            before[slot..slot + 2].copy_from_slice(&head.to_le_bytes());
        }
        let idx = guest::AVAIL_RING as usize + 2;
        before[idx..idx + 2].copy_from_slice(&(post_to as u16).to_le_bytes());
        posted = post_to;
        if raw_idx && last {
            guest::set_avail_idx(&mem, u.arbitrary()?);
        }
        let push_to = if last {
            frames.len()
        } else {
            u.int_in_range(pushed..=frames.len())?
        };
        source
            .waiting
            .lock()
            .expect("waiting")
            .extend(frames[pushed..push_to].iter().cloned());
        pushed = push_to;
        let budget = if u.ratio(3, 4)? {
            64
        } else {
            u.int_in_range(1..=4u64)?
        };

        let out = rx.process(&mem, &mut queue, &source, budget);
        if std::env::var_os("VMKIT_FUZZ_TRACE").is_some() {
            eprintln!(
                "rx: strict {strict} clean {clean} round {round} size {size} heads {heads:?} chains {chains:?} posted {posted} budget {budget} out {out:?} mrg {mrg}"
            );
        }
        let _ = rx.needs_interrupt(&mem, &queue);

        assert!(
            out.frames + out.dropped <= budget,
            "budget {budget} exceeded: {out:?}"
        );
        match out.status {
            RxStatus::Budget => assert_eq!(out.frames + out.dropped, budget),
            RxStatus::Drained => assert!(
                source.waiting.lock().expect("waiting").is_empty(),
                "Drained with frames waiting"
            ),
            RxStatus::NeedBuffers | RxStatus::BackendFailed => {}
        }
        assert!(out.copied <= out.frames);
        needs_reset |= out.needs_reset;
        delivered += out.frames;
        dropped += out.dropped;

        let idx = guest::used_idx(&mem);
        let new = idx.wrapping_sub(used_seen);
        if out.used == 0 || !clean {
            // Nothing published: the index, whatever the driver left there,
            // was not touched. (Or frames may land on the used ring.)
            continue;
        }
        assert_eq!(u64::from(new), out.used % 0x1_0000, "used entries added");
        if new <= size {
            for i in 0..new {
                let (id, len) = guest::used_elem(&mem, size, used_seen.wrapping_add(i));
                if clean {
                    // (Otherwise frames may land on the used ring itself.)
                    assert!(id < u32::from(size), "used head {id} out of range");
                    let pos = heads
                        .iter()
                        .position(|&h| u32::from(h) == id)
                        .expect("posted head");
                    let cap = capacity(&chains[pos]);
                    assert!(
                        u64::from(len) <= cap,
                        "used length {len} exceeds the {cap} writable bytes of chain {id}"
                    );
                    assert_eq!(
                        len == 0,
                        !usable(&chains[pos]),
                        "chain {id} used with length {len}: {:?}",
                        chains[pos]
                    );
                }
                used_log.push((id, len));
            }
        }
        used_seen = idx;
    }

    // A chain cut short but otherwise fine (every buffer writable and in
    // memory) means the driver broke the ring.
    let cut_short = |d: &[Descriptor]| {
        d.last().is_some_and(|d| d.has_next())
            && d.iter()
                .all(|x| x.is_write_only() && guest::in_memory(x.addr().0, u64::from(x.len())))
            && d.len() <= IOV_MAX
    };
    // (Every posted chain is popped when no more than a queue size of
    // them was posted; past that the device pops nothing more.)
    if clean && heads.len() <= usize::from(size) && chains.iter().any(|d| cut_short(d)) {
        assert!(
            needs_reset,
            "a chain cut short must make the device need a reset"
        );
    }
    let consumed = source.consumed.lock().expect("consumed").clone();
    assert_eq!(
        delivered + dropped + u64::from(rx.has_stashed_frame()),
        consumed.len() as u64,
        "frames read from the backend: delivered {delivered}, dropped {dropped}"
    );

    let after = guest::snapshot(&mem);
    if clean {
        // Only writable buffers of posted chains and the used ring change.
        let used = layout.used_ring_range();
        for (i, (a, b)) in before.iter().zip(&after).enumerate() {
            if a != b {
                let at = i as u64;
                assert!(
                    used.contains(&at) || writable.iter().any(|w| w.contains(&at)),
                    "guest memory changed at {at:#x}, outside every writable buffer"
                );
            }
        }
    }
    if strict {
        // Group the used entries into frames and compare them with what the
        // backend handed over.
        let chain_of = |id: u32| {
            &chains[heads
                .iter()
                .position(|&h| u32::from(h) == id)
                .expect("posted")]
        };
        let mut next_frame = 0usize;
        let mut groups = 0u64;
        let mut i = 0usize;
        while i < used_log.len() {
            let (id, len) = used_log[i];
            if len == 0 {
                i += 1;
                continue;
            }
            let first = chain_of(id);
            let hdr = chain_bytes(&after, first, VNET_HDR_LEN);
            assert_eq!(
                hdr.len(),
                VNET_HDR_LEN,
                "a frame's first chain holds its header"
            );
            let k = usize::from(u16::from_le_bytes([hdr[NUM_BUFFERS], hdr[NUM_BUFFERS + 1]]));
            assert!(k >= 1, "num_buffers 0");
            if !mrg {
                assert_eq!(k, 1, "num_buffers without MRG_RXBUF");
            }
            assert!(
                i + k <= used_log.len(),
                "num_buffers {k} past the used entries"
            );
            let mut bytes = Vec::new();
            for &(id, len) in &used_log[i..i + k] {
                assert!(len > 0, "an empty buffer inside a frame");
                bytes.extend_from_slice(&chain_bytes(&after, chain_of(id), len as usize));
            }
            // The frame it must be: the next consumed frame that matches.
            let fixed = |f: &[u8]| {
                let mut f = f.to_vec();
                if f.len() >= VNET_HDR_LEN {
                    f[NUM_BUFFERS..NUM_BUFFERS + 2].copy_from_slice(&(k as u16).to_le_bytes());
                    if !guest_csum {
                        f[0] = 0;
                    }
                }
                f
            };
            let found = consumed[next_frame..]
                .iter()
                .position(|f| fixed(f) == bytes);
            let Some(skip) = found else {
                panic!(
                    "delivered frame of {} bytes (entries {:?}) is not a frame the backend handed \
                     over after frame {next_frame}",
                    bytes.len(),
                    &used_log[i..i + k]
                );
            };
            next_frame += skip + 1;
            groups += 1;
            i += k;
        }
        assert_eq!(groups, delivered, "frames delivered");
    }
    Ok(())
}
