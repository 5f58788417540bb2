//! A vhost-user front end for the tests, as a VMM is one: guest memory in a
//! memfd shared with the back end, virtqueues laid out in it
//! (`virtio_queue::mock::MockSplitQueue`), kick and call eventfds, and the
//! `vhost` crate's `Frontend` for the protocol.

#![allow(dead_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Generous: only reached when something is broken.
pub const WAIT: Duration = Duration::from_secs(10);

pub const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
pub const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

/// `size` bytes of guest memory at guest address 0, in a memfd the back end
/// maps too.
pub fn shared_memory(size: usize) -> GuestMemoryMmap {
    let name = c"vmkit-vhost-user-test";
    // SAFETY: a valid NUL-terminated name; the returned descriptor is
    // checked and then owned by the File alone.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64).unwrap();
    GuestMemoryMmap::from_ranges_with_files(&[(
        GuestAddress(0),
        size,
        Some(FileOffset::new(file, 0)),
    )])
    .unwrap()
}

/// Connects to `socket`, waiting up to [`WAIT`] for a back end to listen.
pub fn connect(socket: &Path, queues: u64) -> Frontend {
    let deadline = Instant::now() + WAIT;
    loop {
        match Frontend::connect(socket, queues) {
            Ok(frontend) => return frontend,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "cannot connect to {socket:?}: {e}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Feature negotiation (`features` from what the back end
/// offers; with VHOST_USER_F_PROTOCOL_FEATURES, the protocol features
/// `protocol` too) and SET_MEM_TABLE. Returns the offered features.
pub fn negotiate(
    frontend: &mut Frontend,
    mem: &GuestMemoryMmap,
    features: u64,
    protocol: VhostUserProtocolFeatures,
) -> (u64, VhostUserProtocolFeatures) {
    let offered = frontend.get_features().unwrap();
    assert_eq!(features & !offered, 0, "asking for features not offered");
    let mut offered_protocol = VhostUserProtocolFeatures::empty();
    let with_protocol = features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
    if with_protocol {
        offered_protocol = frontend.get_protocol_features().unwrap();
    }
    if with_protocol {
        frontend.set_protocol_features(protocol).unwrap();
    }
    frontend.set_features(features).unwrap();
    let regions: Vec<VhostUserMemoryRegionInfo> = mem
        .iter()
        .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).unwrap())
        .collect();
    frontend.set_mem_table(&regions).unwrap();
    (offered, offered_protocol)
}

/// One virtqueue as the front end sees it: the rings in guest memory and
/// its two eventfds.
pub struct Ring<'m> {
    pub index: usize,
    pub mem: &'m GuestMemoryMmap,
    pub vq: MockSplitQueue<'m, GuestMemoryMmap>,
    pub kick: EventFd,
    pub call: EventFd,
    pub size: u16,
    /// Descriptor table slots handed out so far.
    next_desc: u16,
    /// Used entries already looked at.
    pub seen_used: u16,
}

impl<'m> Ring<'m> {
    /// A queue of `size` at guest address `at`, set up on the back end
    /// (num, addresses, base 0, call, kick) and, if `enable`, enabled.
    pub fn new(
        frontend: &mut Frontend,
        mem: &'m GuestMemoryMmap,
        index: usize,
        at: u64,
        size: u16,
        enable: bool,
    ) -> Self {
        let vq = MockSplitQueue::create(mem, GuestAddress(at), size);
        let host = |addr: GuestAddress| mem.get_host_address(addr).unwrap() as u64;
        frontend.set_vring_num(index, size).unwrap();
        frontend
            .set_vring_addr(
                index,
                &VringConfigData {
                    queue_max_size: size,
                    queue_size: size,
                    flags: 0,
                    desc_table_addr: host(vq.desc_table_addr()),
                    used_ring_addr: host(vq.used_addr()),
                    avail_ring_addr: host(vq.avail_addr()),
                    log_addr: None,
                },
            )
            .unwrap();
        frontend.set_vring_base(index, 0).unwrap();
        let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        frontend.set_vring_call(index, &call).unwrap();
        frontend.set_vring_kick(index, &kick).unwrap();
        if enable {
            frontend.set_vring_enable(index, true).unwrap();
        }
        Ring {
            index,
            mem,
            vq,
            kick,
            call,
            size,
            next_desc: 0,
            seen_used: 0,
        }
    }

    /// Makes a chain of `bufs` (address, length, flags) available; returns
    /// its head. Does not kick.
    pub fn add(&mut self, bufs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        let n = bufs.len() as u16;
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let i = i as u16;
                if i + 1 < n {
                    Descriptor::new(addr, len, flags | NEXT, head + i + 1).into()
                } else {
                    Descriptor::new(addr, len, flags, 0).into()
                }
            })
            .collect();
        self.vq.add_desc_chains(&descs, head).unwrap();
        self.next_desc += n;
        head
    }

    /// Makes the chain at `head` available again (its descriptors written
    /// already), in the next slot of the available ring. Does not kick.
    pub fn make_available(&self, head: u16) {
        let avail = self.vq.avail();
        let idx = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(idx % self.size))
            .unwrap()
            .store(head);
        avail.idx().store(idx.wrapping_add(1));
    }

    pub fn kick(&self) {
        self.kick.write(1).unwrap();
    }

    pub fn used_idx(&self) -> u16 {
        self.vq.used().idx().load()
    }

    /// Waits until the used index reaches `idx`.
    pub fn wait_used(&self, idx: u16) {
        let deadline = Instant::now() + WAIT;
        while self.used_idx() < idx {
            assert!(
                Instant::now() < deadline,
                "queue {}: used index {} never reached {idx}",
                self.index,
                self.used_idx()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The used entry at ring position `pos`: (head, length).
    pub fn used(&self, pos: u16) -> (u16, u32) {
        let elem = self.vq.used().ring().ref_at(pos as usize).unwrap().load();
        (elem.id() as u16, elem.len())
    }

    /// Sets `used_event` (the driver's VIRTIO_RING_F_EVENT_IDX threshold).
    pub fn set_used_event(&self, value: u16) {
        let addr = self
            .vq
            .avail_addr()
            .unchecked_add(4 + 2 * u64::from(self.size));
        self.mem.write_obj(value, addr).unwrap();
    }

    /// Signals of the call eventfd since the last read (0 if none).
    pub fn calls(&self) -> u64 {
        match self.call.read() {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => panic!("reading the call eventfd: {e}"),
        }
    }

    /// Waits until the call eventfd is signalled; returns the count.
    pub fn wait_call(&self) -> u64 {
        assert!(
            readable_within(self.call.as_raw_fd(), WAIT),
            "queue {}: no call",
            self.index
        );
        self.calls()
    }
}

/// Waits up to `timeout` for `fd` to be readable; returns whether it is.
pub fn readable_within(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    assert!(n >= 0 || io::Error::last_os_error().kind() == io::ErrorKind::Interrupted);
    n > 0
}

/// Waits for `child` to exit, killing it after [`WAIT`].
pub fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the back end did not exit after the front end left");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `f` on a thread and waits up to [`WAIT`] for its result.
pub fn join_within<T: Send + 'static>(handle: std::thread::JoinHandle<T>) -> T {
    let deadline = Instant::now() + WAIT;
    while !handle.is_finished() {
        assert!(Instant::now() < deadline, "the back end thread did not end");
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.join().unwrap()
}

/// Spawns `cmd` with stdin and stdout closed and stderr read as it comes
/// on a thread (an unlimited flood must not block the back end); the
/// thread returns all of it once the process has exited.
pub fn spawn_reading_stderr(
    cmd: &mut std::process::Command,
) -> (std::process::Child, std::thread::JoinHandle<String>) {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the back end");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stderr
            .read_to_string(&mut text)
            .expect("read the back end's stderr");
        text
    });
    (child, reader)
}
