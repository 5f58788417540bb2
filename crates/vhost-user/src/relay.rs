//! A relay between the front end's connection and the `vhost` crate's
//! request handler, for one incompatibility between QEMU and that crate.
//!
//! QEMU's virtio-net sends VHOST_USER_SET_VRING_ENABLE when the driver
//! negotiates its features, which is before QEMU sends
//! VHOST_USER_SET_FEATURES (that comes when the device starts), as soon as
//! the back end offers VHOST_USER_F_PROTOCOL_FEATURES; and QEMU (7.2)
//! cannot start a vhost-user virtio-net back end that does not offer it.
//! `vhost` 0.18 answers a SET_VRING_ENABLE that comes before
//! VHOST_USER_F_PROTOCOL_FEATURES was set with an error that ends the
//! connection. The relay passes every message through unchanged (file
//! descriptors included) except such an early SET_VRING_ENABLE: it keeps
//! the last state asked for each ring (acknowledging the message if asked
//! to), and hands those states on right after the SET_FEATURES that sets
//! VHOST_USER_F_PROTOCOL_FEATURES. (QEMU expects the state to hold: it does
//! not send it again when the device starts.)

use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use log::{debug, warn};
use vhost::vhost_user::message::{
    FrontendReq, MAX_ATTACHED_FD_ENTRIES, MAX_MSG_SIZE, VhostUserHeaderFlag,
    VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Size of a message header: request, flags, payload size (u32 each).
const HEADER_LEN: usize = 12;
/// The protocol version in a header's flags.
const VERSION: u32 = 0x1;

/// One message: its header, payload and attached descriptors.
struct Message {
    header: [u8; HEADER_LEN],
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn field(&self, index: usize) -> u32 {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&self.header[index * 4..index * 4 + 4]);
        u32::from_le_bytes(bytes)
    }

    fn request(&self) -> u32 {
        self.field(0)
    }

    fn flags(&self) -> u32 {
        self.field(1)
    }

    /// The payload as the u64 most requests carry.
    fn value(&self) -> Option<u64> {
        let bytes: [u8; 8] = self.payload.get(..8)?.try_into().ok()?;
        Some(u64::from_le_bytes(bytes))
    }
}

/// Reads one message from `from`; `None` at the end of the stream.
fn read_message(from: &UnixStream) -> io::Result<Option<Message>> {
    let mut header = [0u8; HEADER_LEN];
    let mut raw_fds = [-1 as RawFd; MAX_ATTACHED_FD_ENTRIES];
    let mut iov = [libc::iovec {
        iov_base: header.as_mut_ptr().cast(),
        iov_len: header.len(),
    }];
    // SAFETY: the one iovec points to `header`, which lives (and is not
    // otherwise borrowed) for the duration of the call; the kernel writes
    // at most its length.
    let (mut got, nfds) = unsafe { from.recv_with_fds(&mut iov, &mut raw_fds)? };
    let fds = raw_fds[..nfds]
        .iter()
        // SAFETY: recvmsg just created these descriptors for this process;
        // nothing else owns them.
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if got == 0 {
        return Ok(None);
    }
    // A stream may deliver the header in pieces (descriptors come with the
    // first one).
    while got < HEADER_LEN {
        let n = (&*from).read(&mut header[got..])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    let mut message = Message {
        header,
        payload: Vec::new(),
        fds,
    };
    let size = message.field(2) as usize;
    if size > MAX_MSG_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("vhost-user message of {size} bytes"),
        ));
    }
    message.payload = vec![0u8; size];
    (&*from).read_exact(&mut message.payload)?;
    Ok(Some(message))
}

/// Writes `message` to `to`, descriptors with its first byte.
fn write_message(to: &UnixStream, message: &Message) -> io::Result<()> {
    let raw: Vec<RawFd> = message
        .fds
        .iter()
        .map(std::os::fd::AsRawFd::as_raw_fd)
        .collect();
    let bufs: [&[u8]; 2] = [&message.header, &message.payload];
    let total = HEADER_LEN + message.payload.len();
    let sent = to.send_with_fds(&bufs, &raw)?;
    // The rest, if the socket took only part of it.
    let mut all = Vec::with_capacity(total);
    all.extend_from_slice(&message.header);
    all.extend_from_slice(&message.payload);
    (&*to).write_all(&all[sent..])
}

/// What the front end has negotiated, as far as the relay cares.
#[derive(Default)]
struct Negotiated {
    /// A SET_FEATURES with VHOST_USER_F_PROTOCOL_FEATURES went through.
    protocol_features: bool,
    /// VHOST_USER_PROTOCOL_F_REPLY_ACK was set.
    reply_ack: bool,
    /// The payloads (`struct vhost_vring_state`: index, enable) of the
    /// SET_VRING_ENABLEs held back, the last one per ring.
    held_enables: Vec<[u8; 8]>,
}

/// A request from the relay itself (no reply asked).
fn request(request: FrontendReq, payload: &[u8]) -> Message {
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&u32::from(request).to_le_bytes());
    header[4..8].copy_from_slice(&VERSION.to_le_bytes());
    header[8..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    Message {
        header,
        payload: payload.to_vec(),
        fds: Vec::new(),
    }
}

/// Relays messages between `front` (the front end's connection) and `back`
/// (the request handler's) until either side closes; then shuts both down.
/// Returns the two threads doing it.
pub(crate) fn spawn(
    name: &str,
    front: UnixStream,
    back: UnixStream,
) -> io::Result<[std::thread::JoinHandle<()>; 2]> {
    let front_in = front.try_clone()?;
    let back_in = back.try_clone()?;
    // Replies to the front end come from both threads (the handler's, and
    // the acknowledgements of held ones): one message at a time.
    let front_out = Arc::new(Mutex::new(front));
    let to_back = {
        let front_out = Arc::clone(&front_out);
        std::thread::Builder::new()
            .name(format!("{name}-relay-in"))
            .spawn(move || {
                if let Err(e) = to_back(&front_in, &back, &front_out) {
                    warn!("vhost-user relay: front end: {e}");
                }
                let _ = back.shutdown(std::net::Shutdown::Both);
                let _ = front_in.shutdown(std::net::Shutdown::Both);
            })?
    };
    let to_front = std::thread::Builder::new()
        .name(format!("{name}-relay-out"))
        .spawn(move || {
            let result = (|| -> io::Result<()> {
                while let Some(reply) = read_message(&back_in)? {
                    let front = front_out.lock().unwrap_or_else(|e| e.into_inner());
                    write_message(&front, &reply)?;
                }
                Ok(())
            })();
            if let Err(e) = result {
                debug!("vhost-user relay: back end: {e}");
            }
            let _ = back_in.shutdown(std::net::Shutdown::Both);
            let front = front_out.lock().unwrap_or_else(|e| e.into_inner());
            let _ = front.shutdown(std::net::Shutdown::Both);
        })?;
    Ok([to_back, to_front])
}

fn to_back(front: &UnixStream, back: &UnixStream, front_out: &Mutex<UnixStream>) -> io::Result<()> {
    let mut negotiated = Negotiated::default();
    while let Some(message) = read_message(front)? {
        let request_type = message.request();
        log::trace!(
            "vhost-user relay: request {request_type}, {} bytes, {} descriptors",
            message.payload.len(),
            message.fds.len()
        );
        if request_type == u32::from(FrontendReq::SET_VRING_ENABLE) && !negotiated.protocol_features
        {
            hold_enable(&mut negotiated, &message, front_out)?;
            continue;
        }
        write_message(back, &message)?;
        if request_type == u32::from(FrontendReq::SET_FEATURES) {
            negotiated.protocol_features = message
                .value()
                .is_some_and(|v| v & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0);
            if negotiated.protocol_features {
                for state in std::mem::take(&mut negotiated.held_enables) {
                    write_message(back, &request(FrontendReq::SET_VRING_ENABLE, &state))?;
                }
            }
        } else if request_type == u32::from(FrontendReq::SET_PROTOCOL_FEATURES) {
            negotiated.reply_ack = message
                .value()
                .is_some_and(|v| v & VhostUserProtocolFeatures::REPLY_ACK.bits() != 0);
        }
    }
    Ok(())
}

/// Keeps the ring state of an early SET_VRING_ENABLE and acknowledges it
/// if the front end asked for a reply.
fn hold_enable(
    negotiated: &mut Negotiated,
    message: &Message,
    front_out: &Mutex<UnixStream>,
) -> io::Result<()> {
    let state: [u8; 8] = message
        .payload
        .get(..8)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short SET_VRING_ENABLE"))?;
    debug!(
        "vhost-user relay: SET_VRING_ENABLE {:?} before SET_FEATURES, held",
        state
    );
    let held = &mut negotiated.held_enables;
    held.retain(|s| s[..4] != state[..4]);
    held.push(state);
    if negotiated.reply_ack && message.flags() & VhostUserHeaderFlag::NEED_REPLY.bits() != 0 {
        let mut ack = request(FrontendReq::SET_VRING_ENABLE, &0u64.to_le_bytes());
        let flags = VERSION | VhostUserHeaderFlag::REPLY.bits();
        ack.header[4..8].copy_from_slice(&flags.to_le_bytes());
        let front = front_out.lock().unwrap_or_else(|e| e.into_inner());
        write_message(&front, &ack)?;
    }
    Ok(())
}
