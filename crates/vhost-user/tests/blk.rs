//! The virtio-blk back end driven as a VMM drives it, without a VMM: the
//! `vhost` crate's front end over the Unix socket, guest memory in a memfd
//! both sides map, requests in a split virtqueue there, real disk images
//! (raw files; qcow2 made and checked by qemu-img).

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::*;
use vhost::VhostBackend;
use vhost::vhost_user::VhostUserFrontend;
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_blk::{BlockConfig, DiskId, QUEUE_SIZE};
use vmkit_disk::{DiskImage, DiskSpec, open_disk};
use vmkit_vhost_user::VhostUserBlk;
use vmkit_virtio::test_utils::limited_lines;
use vmm_sys_util::tempdir::TempDir;

const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
const DISK_SIZE: u64 = 4 << 20;
const MEM_SIZE: usize = 8 << 20;
const BIN: &str = env!("CARGO_BIN_EXE_vmkit-vhost-user-blk");

fn bit(b: u32) -> u64 {
    1 << b
}

/// The byte the test images hold at `offset` before any write.
fn pattern(offset: u64) -> u8 {
    (offset / 512 * 7 + offset % 251) as u8
}

fn patterned_image(path: &Path) {
    let data: Vec<u8> = (0..DISK_SIZE).map(pattern).collect();
    fs::write(path, data).unwrap();
}

/// Where request `slot` keeps its header, status byte and data.
struct Slot {
    header: u64,
    status: u64,
    data: u64,
}

fn slot(i: u64) -> Slot {
    let base = 0x10_0000 + i * 0x2_0000;
    Slot {
        header: base,
        status: base + 0x100,
        data: base + 0x1000,
    }
}

/// A request of `type_` at `sector` in `slot`: header, then `data`
/// (lengths; device-writable if `writable`), then the status byte (set to
/// 0xff, so that an untouched one shows).
fn request(
    ring: &mut Ring<'_>,
    s: &Slot,
    type_: u32,
    sector: u64,
    data: &[u32],
    writable: bool,
) -> u16 {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&type_.to_le_bytes());
    header[8..].copy_from_slice(&sector.to_le_bytes());
    ring.mem
        .write_slice(&header, GuestAddress(s.header))
        .unwrap();
    ring.mem.write_obj(0xffu8, GuestAddress(s.status)).unwrap();
    let mut bufs = vec![(s.header, 16, 0)];
    let mut addr = s.data;
    for &len in data {
        bufs.push((addr, len, if writable { WRITE } else { 0 }));
        addr += u64::from(len);
    }
    bufs.push((s.status, 1, WRITE));
    ring.add(&bufs)
}

fn status(mem: &GuestMemoryMmap, s: &Slot) -> u32 {
    u32::from(mem.read_obj::<u8>(GuestAddress(s.status)).unwrap())
}

fn read_mem(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

/// Serves `disk` on a thread; returns the socket's path and the thread.
fn serve_on_thread(
    dir: &TempDir,
    disk: Arc<dyn DiskImage>,
    id: DiskId,
) -> (
    std::path::PathBuf,
    std::thread::JoinHandle<vmkit_vhost_user::Result<()>>,
) {
    let socket = dir.as_path().join("blk.sock");
    let backend = VhostUserBlk::new(disk, id);
    let path = socket.clone();
    let thread = std::thread::spawn(move || backend.serve(&path));
    (socket, thread)
}

#[test]
fn requests_through_a_shared_ring_with_event_idx() {
    let dir = TempDir::new_with_prefix("/tmp/vmkit-vu-blk").unwrap();
    let image = dir.as_path().join("disk.raw");
    patterned_image(&image);
    let spec: DiskSpec = format!("{}", image.display()).parse().unwrap();
    let disk: Arc<dyn DiskImage> = open_disk(&spec).unwrap().into();
    let expected_config = BlockConfig::new(disk.as_ref(), QUEUE_SIZE).to_bytes();
    let (socket, thread) = serve_on_thread(&dir, disk, DiskId::new("vu-serial").unwrap());

    let mem = shared_memory(MEM_SIZE);
    let mut frontend = connect(&socket, 1);
    frontend.set_owner().unwrap();
    let wanted = bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_RING_F_EVENT_IDX)
        | bit(VIRTIO_BLK_F_FLUSH)
        | PROTOCOL_FEATURES;
    let (offered, protocol) = negotiate(
        &mut frontend,
        &mem,
        wanted,
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK,
    );
    // Every request acknowledged, as QEMU asks.
    frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    // The in-VMM device's features, and the protocol's.
    assert_eq!(
        offered,
        bit(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_RING_F_EVENT_IDX)
            | bit(VIRTIO_RING_F_INDIRECT_DESC)
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH)
            | bit(VIRTIO_BLK_F_DISCARD)
            | bit(VIRTIO_BLK_F_WRITE_ZEROES)
            | PROTOCOL_FEATURES
    );
    assert!(protocol.contains(VhostUserProtocolFeatures::CONFIG));
    assert!(!protocol.contains(VhostUserProtocolFeatures::MQ));
    assert_eq!(frontend.get_queue_num().unwrap_or(1), 1);

    // The configuration space: vmkit_blk's, byte for byte.
    let size = expected_config.len() as u32;
    let (_, config) = frontend
        .get_config(
            0,
            size,
            VhostUserConfigFlags::empty(),
            &vec![0; size as usize],
        )
        .unwrap();
    assert_eq!(config, expected_config);
    assert_eq!(
        u64::from_le_bytes(config[..8].try_into().unwrap()),
        DISK_SIZE / 512
    );
    let (_, seg_max) = frontend
        .get_config(12, 4, VhostUserConfigFlags::empty(), &[0; 4])
        .unwrap();
    assert_eq!(u32::from_le_bytes(seg_max.try_into().unwrap()), 254);
    // A read-only configuration space: a write is ignored.
    frontend
        .set_config(0, VhostUserConfigFlags::WRITABLE, &[0; 8])
        .unwrap();
    let (_, again) = frontend
        .get_config(
            0,
            size,
            VhostUserConfigFlags::empty(),
            &vec![0; size as usize],
        )
        .unwrap();
    assert_eq!(again, expected_config);

    let mut ring = Ring::new(&mut frontend, &mem, 0, 0, 256, true);
    let capacity = DISK_SIZE / 512;
    let written: Vec<u8> = (0..1024u32).map(|i| (i * 13 + 5) as u8).collect();
    let s: Vec<Slot> = (0..9).map(slot).collect();
    mem.write_slice(&written, GuestAddress(s[0].data)).unwrap();

    // A batch, one kick: write 2 sectors at sector 2 in two segments,
    // flush, read sectors 0..4, GET_ID, a read past the end, an unknown
    // type, write zeroes over sectors 8..16, a header the device could
    // write, a data buffer outside guest memory.
    request(&mut ring, &s[0], VIRTIO_BLK_T_OUT, 2, &[512, 512], false);
    request(&mut ring, &s[1], VIRTIO_BLK_T_FLUSH, 0, &[], false);
    request(&mut ring, &s[2], VIRTIO_BLK_T_IN, 0, &[2048], true);
    request(&mut ring, &s[3], VIRTIO_BLK_T_GET_ID, 0, &[20], true);
    request(&mut ring, &s[4], VIRTIO_BLK_T_IN, capacity, &[512], true);
    request(&mut ring, &s[5], 99, 0, &[], false);
    let mut segment = [0u8; 16];
    segment[..8].copy_from_slice(&8u64.to_le_bytes());
    segment[8..12].copy_from_slice(&8u32.to_le_bytes());
    mem.write_slice(&segment, GuestAddress(s[6].data)).unwrap();
    request(&mut ring, &s[6], VIRTIO_BLK_T_WRITE_ZEROES, 0, &[16], false);
    mem.write_slice(&[0u8; 16], GuestAddress(s[7].header))
        .unwrap();
    mem.write_obj(0xffu8, GuestAddress(s[7].status)).unwrap();
    ring.add(&[(s[7].header, 16, WRITE), (s[7].status, 1, WRITE)]);
    mem.write_obj(0xffu8, GuestAddress(s[8].status)).unwrap();
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    mem.write_slice(&header, GuestAddress(s[8].header)).unwrap();
    ring.add(&[
        (s[8].header, 16, 0),
        (MEM_SIZE as u64 - 256, 512, WRITE),
        (s[8].status, 1, WRITE),
    ]);
    ring.kick();
    ring.wait_used(9);

    let expect = [
        (VIRTIO_BLK_S_OK, 1),
        (VIRTIO_BLK_S_OK, 1),
        (VIRTIO_BLK_S_OK, 2049),
        (VIRTIO_BLK_S_OK, 21),
        (VIRTIO_BLK_S_IOERR, 1),
        (VIRTIO_BLK_S_UNSUPP, 1),
        (VIRTIO_BLK_S_OK, 1),
        (VIRTIO_BLK_S_IOERR, 1),
        (VIRTIO_BLK_S_IOERR, 1),
    ];
    let heads = [0u16, 4, 6, 9, 12, 15, 17, 20, 22];
    for (i, &(st, len)) in expect.iter().enumerate() {
        assert_eq!(status(&mem, &s[i]), st, "request {i}: status");
        assert_eq!(
            ring.used(i as u16),
            (heads[i], len),
            "request {i}: used entry"
        );
    }
    // The read saw the write.
    let read = read_mem(&mem, s[2].data, 2048);
    let original: Vec<u8> = (0..1024).map(pattern).collect();
    assert_eq!(read[..1024], original[..]);
    assert_eq!(read[1024..], written[..]);
    assert_eq!(
        read_mem(&mem, s[3].data, 20),
        b"vu-serial\0\0\0\0\0\0\0\0\0\0\0"
    );
    // The driver's used_event was 0: one call for the batch.
    assert!(ring.wait_call() >= 1);

    // used_event far ahead: a completion that must not call.
    ring.set_used_event(1000);
    request(&mut ring, &s[4], VIRTIO_BLK_T_IN, 1, &[512], true);
    ring.kick();
    ring.wait_used(10);
    assert_eq!(status(&mem, &s[4]), VIRTIO_BLK_S_OK);
    assert_eq!(read_mem(&mem, s[4].data, 512), read[512..1024]);
    // Stopping the ring waits for the event loop to be done with it.
    assert_eq!(frontend.get_vring_base(0).unwrap(), 10);
    assert_eq!(ring.calls(), 0, "a call the driver did not ask for");

    // The front end leaves: the back end flushes, closes and returns.
    drop(frontend);
    join_within(thread).unwrap();
    assert!(!socket.exists(), "the socket outlived the connection");

    let mut contents = Vec::new();
    fs::File::open(&image)
        .unwrap()
        .read_to_end(&mut contents)
        .unwrap();
    assert_eq!(contents.len() as u64, DISK_SIZE);
    assert_eq!(contents[1024..2048], written[..]);
    assert!(contents[4096..8192].iter().all(|&b| b == 0));
    for (offset, &b) in contents.iter().enumerate() {
        let offset = offset as u64;
        if !(1024..2048).contains(&offset) && !(4096..8192).contains(&offset) {
            assert_eq!(b, pattern(offset), "byte {offset} changed");
        }
    }
}

#[test]
fn read_only_disk_without_protocol_features_or_event_idx() {
    let dir = TempDir::new_with_prefix("/tmp/vmkit-vu-blk").unwrap();
    let image = dir.as_path().join("ro.raw");
    patterned_image(&image);
    let spec: DiskSpec = format!("{},readonly=on", image.display()).parse().unwrap();
    let disk: Arc<dyn DiskImage> = open_disk(&spec).unwrap().into();
    let (socket, thread) = serve_on_thread(&dir, disk, DiskId::from_path(&spec.path));

    let mem = shared_memory(MEM_SIZE);
    let mut frontend = connect(&socket, 1);
    frontend.set_owner().unwrap();
    // Without VHOST_USER_F_PROTOCOL_FEATURES the ring runs as soon as it
    // is set up, and the driver is called after every completion.
    let (offered, _) = negotiate(
        &mut frontend,
        &mem,
        bit(VIRTIO_F_VERSION_1),
        VhostUserProtocolFeatures::empty(),
    );
    assert_ne!(offered & bit(VIRTIO_BLK_F_RO), 0);
    assert_eq!(
        offered & (bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES)),
        0
    );
    let mut ring = Ring::new(&mut frontend, &mem, 0, 0x1_0000, 128, false);
    let s0 = slot(0);
    let s1 = slot(1);
    request(&mut ring, &s0, VIRTIO_BLK_T_OUT, 0, &[512], false);
    ring.kick();
    ring.wait_used(1);
    assert_eq!(ring.wait_call(), 1);
    request(&mut ring, &s1, VIRTIO_BLK_T_IN, 3, &[512], true);
    ring.kick();
    ring.wait_used(2);
    assert_eq!(ring.wait_call(), 1);
    assert_eq!(status(&mem, &s0), VIRTIO_BLK_S_IOERR);
    assert_eq!(status(&mem, &s1), VIRTIO_BLK_S_OK);
    let expect: Vec<u8> = (1536..2048).map(pattern).collect();
    assert_eq!(read_mem(&mem, s1.data, 512), expect);

    drop(frontend);
    join_within(thread).unwrap();
    let mut first = [0u8; 512];
    fs::File::open(&image)
        .unwrap()
        .read_exact_at(&mut first, 0)
        .unwrap();
    assert!(
        first
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(i as u64))
    );
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn qcow2_image_through_the_command() {
    let dir = TempDir::new_with_prefix("/tmp/vmkit-vu-blk").unwrap();
    let image = dir.as_path().join("disk.qcow2");
    let image_arg = image.to_str().unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", image_arg, "16M"]);
    let socket = dir.as_path().join("cmd.sock");
    let mut child = Command::new(BIN)
        .arg("--socket")
        .arg(&socket)
        .arg("--disk")
        .arg(format!("{image_arg},format=qcow2"))
        .arg("--serial")
        .arg("cmd-serial")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let mem = shared_memory(MEM_SIZE);
    let mut frontend = connect(&socket, 1);
    frontend.set_owner().unwrap();
    negotiate(
        &mut frontend,
        &mem,
        bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX) | PROTOCOL_FEATURES,
        VhostUserProtocolFeatures::CONFIG,
    );
    let (_, capacity) = frontend
        .get_config(0, 8, VhostUserConfigFlags::empty(), &[0; 8])
        .unwrap();
    assert_eq!(
        u64::from_le_bytes(capacity.try_into().unwrap()),
        (16 << 20) / 512
    );
    let mut ring = Ring::new(&mut frontend, &mem, 0, 0, 256, true);
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8 + 1).collect();
    let (w, f, r, id) = (slot(0), slot(1), slot(2), slot(3));
    mem.write_slice(&data, GuestAddress(w.data)).unwrap();
    // 8 KiB inside a 64 KiB cluster, then 4 KiB across the boundary of
    // the first two.
    request(&mut ring, &w, VIRTIO_BLK_T_OUT, 1000, &[4096, 4096], false);
    request(&mut ring, &f, VIRTIO_BLK_T_FLUSH, 0, &[], false);
    request(&mut ring, &r, VIRTIO_BLK_T_IN, 1000, &[8192], true);
    request(&mut ring, &id, VIRTIO_BLK_T_GET_ID, 0, &[20], true);
    ring.kick();
    ring.wait_used(4);
    for (i, s) in [&w, &f, &r, &id].iter().enumerate() {
        assert_eq!(status(&mem, s), VIRTIO_BLK_S_OK, "request {i}");
    }
    assert_eq!(read_mem(&mem, r.data, 8192), data);
    assert_eq!(&read_mem(&mem, id.data, 11), b"cmd-serial\0");
    let w2 = slot(4);
    mem.write_slice(&data[..4096], GuestAddress(w2.data))
        .unwrap();
    request(&mut ring, &w2, VIRTIO_BLK_T_OUT, 126, &[4096], false);
    ring.kick();
    ring.wait_used(5);
    assert_eq!(status(&mem, &w2), VIRTIO_BLK_S_OK);

    // No flush after the last write: leaving must make it durable and
    // close the image cleanly.
    drop(frontend);
    let status = wait_exit(&mut child);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    assert!(stderr.contains("front end disconnected"), "{stderr}");
    assert!(!socket.exists());

    // qemu-img is the oracle: a clean image holding the data.
    qemu_img(&["check", "-q", image_arg]);
    let raw = dir.as_path().join("out.raw");
    qemu_img(&["convert", "-O", "raw", image_arg, raw.to_str().unwrap()]);
    let out = fs::read(&raw).unwrap();
    assert_eq!(out[1000 * 512..1000 * 512 + 8192], data[..]);
    assert_eq!(out[126 * 512..126 * 512 + 4096], data[..4096]);
    assert!(out[..126 * 512].iter().all(|&b| b == 0));
    assert!(out[134 * 512..1000 * 512].iter().all(|&b| b == 0));
}

#[test]
fn a_flood_of_bad_heads_across_resets_logs_a_few_lines() {
    // Rounds of two chains, one kick: a head index past the queue (which
    // cannot be answered nor returned), then a GET_ID that completes. The
    // driver renegotiates and the front end restarts the ring every
    // BATCH rounds: the counts go on.
    const BATCH: u16 = 30;
    const BATCHES: u16 = 34;
    const SIZE: u16 = 128;
    let dir = TempDir::new_with_prefix("/tmp/vmkit-vu-blk").unwrap();
    let image = dir.as_path().join("disk.raw");
    patterned_image(&image);
    let socket = dir.as_path().join("flood.sock");
    let (mut child, reader) = spawn_reading_stderr(
        Command::new(BIN)
            .arg("--socket")
            .arg(&socket)
            .arg("--disk")
            .arg(&image)
            .env("RUST_LOG", "info"),
    );

    let mem = shared_memory(MEM_SIZE);
    let mut frontend = connect(&socket, 1);
    frontend.set_owner().unwrap();
    let features = bit(VIRTIO_F_VERSION_1);
    negotiate(
        &mut frontend,
        &mem,
        features,
        VhostUserProtocolFeatures::empty(),
    );
    let id = slot(0);
    for batch in 0..BATCHES {
        if batch > 0 {
            // What a driver reset looks like from here: the ring stopped,
            // the features set again, the ring set up from index 0.
            assert_eq!(frontend.get_vring_base(0).unwrap(), 2 * u32::from(BATCH));
            frontend.set_features(features).unwrap();
        }
        let mut ring = Ring::new(&mut frontend, &mem, 0, 0x1_0000, SIZE, false);
        // The mock queue's used ring starts half-way through the
        // available ring: a batch stays in the first half.
        ring.vq.avail().idx().store(0);
        ring.vq.used().idx().store(0);
        for round in 0..BATCH {
            ring.make_available(SIZE + round % 2 * 0x7f00);
            if round == 0 {
                assert_eq!(
                    request(&mut ring, &id, VIRTIO_BLK_T_GET_ID, 0, &[20], true),
                    0
                );
            } else {
                ring.make_available(0);
            }
            ring.kick();
            ring.wait_used(round + 1);
        }
        assert_eq!(status(&mem, &id), VIRTIO_BLK_S_OK);
        assert_eq!(ring.used(BATCH - 1), (0, 21));
    }

    drop(frontend);
    let status = wait_exit(&mut child);
    let stderr = join_within(reader);
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(": WARN: ") || l.contains(": ERROR: "))
        .collect();
    // Two ring errors a round.
    let events = 2 * u64::from(BATCH) * u64::from(BATCHES);
    assert_eq!(warnings.len(), limited_lines(events), "{stderr}");
    assert!(
        warnings.iter().all(|l| l.ends_with("ring errors so far)")),
        "{stderr}"
    );
    assert!(
        warnings[warnings.len() - 1].ends_with("(1024 ring errors so far)"),
        "{stderr}"
    );
    // The renegotiations are counted too (one line each, at most ten).
    let negotiations = stderr.matches("driver features").count();
    assert_eq!(negotiations, limited_lines(u64::from(BATCHES)), "{stderr}");
}

/// Runs the command with `args`; returns its exit code and stderr.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn bad_arguments_get_one_line_and_a_failure() {
    let dir = TempDir::new_with_prefix("/tmp/vmkit-vu-blk").unwrap();
    let socket = dir.as_path().join("s.sock");
    let socket = socket.to_str().unwrap();
    let plain = dir.as_path().join("not-a-socket");
    fs::write(&plain, b"keep me").unwrap();
    let image = dir.as_path().join("d.raw");
    fs::File::create(&image).unwrap().set_len(1 << 20).unwrap();
    let image = image.to_str().unwrap();
    for (args, code, expect) in [
        (vec![], 2, "--socket"),
        (vec!["--socket", socket], 2, "--disk"),
        (
            vec!["--socket", socket, "--disk", "x.img,format=vmdk"],
            2,
            "invalid value",
        ),
        (
            vec!["--socket", socket, "--disk", "/nonexistent/x.img"],
            1,
            "cannot open disk image /nonexistent/x.img",
        ),
        (
            vec![
                "--socket",
                socket,
                "--disk",
                image,
                "--serial",
                "a-serial-of-more-than-20",
            ],
            1,
            "invalid disk serial",
        ),
        (
            vec!["--socket", plain.to_str().unwrap(), "--disk", image],
            1,
            "exists and is not a socket",
        ),
    ] {
        let (got, stderr) = run(&args);
        assert_eq!(got, Some(code), "{args:?}: {stderr}");
        // A usage error is all there is; a later one is the one error line
        // among the log lines.
        let errors: Vec<&str> = if code == 2 {
            stderr.lines().collect()
        } else {
            stderr.lines().filter(|l| l.contains("ERROR")).collect()
        };
        assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
        assert!(errors[0].contains(expect), "{args:?}: {stderr}");
    }
    assert_eq!(fs::read(&plain).unwrap(), b"keep me");
    let (code, stdout_help) = {
        let out = Command::new(BIN).arg("--help").output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(code, Some(0));
    assert!(stdout_help.contains("--disk <SPEC>"));
}
