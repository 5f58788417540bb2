//! Serving one vhost-user front end on a Unix socket.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, RwLock};

use log::info;
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{Error as DaemonError, VhostUserBackendMut, VhostUserDaemon, VringRwLock};
use vm_memory::GuestMemoryAtomic;
use vmkit_virtio::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::tempdir::TempDir;

use crate::{Error, Result, relay};

/// The guest memory a back end works on: the regions the front end shares
/// (VHOST_USER_SET_MEM_TABLE), swapped atomically when it changes them.
pub type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

/// Binds `socket`, replacing a stale socket but nothing else.
fn bind(socket: &Path) -> Result<UnixListener> {
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            let _ = std::fs::remove_file(socket);
        }
        Ok(_) => return Err(Error::NotASocket(socket.to_path_buf())),
        Err(_) => {}
    }
    UnixListener::bind(socket).map_err(|source| Error::Listen {
        path: socket.to_path_buf(),
        source,
    })
}

fn socket_error(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Socket { what, source }
}

/// Serves one front end with `backend`: listens on `socket` (a stale
/// socket there is replaced; the path is removed once the front end has
/// connected, so no second one can), answers its requests and runs the
/// queues until it disconnects.
///
/// The front end's messages reach the `vhost` crate's request handler
/// through a relay that passes them through unchanged, except a
/// VHOST_USER_SET_VRING_ENABLE sent before VHOST_USER_SET_FEATURES (QEMU's
/// virtio-net does that, and the handler would end the connection): the
/// relay acknowledges it if asked and hands the ring state on once the
/// features are set.
///
/// `listeners` are extra (descriptor, token) pairs the queues' event loop
/// watches for input besides the queues' kick eventfds; tokens must be
/// above the back end's number of queues, and `backend` gets them in
/// `handle_event`.
///
/// Returns once the front end is gone and the event loop has stopped: by
/// then `backend` has been dropped. A front end that disconnects, even in
/// the middle of a message, is a normal end; one that breaks the protocol
/// is an error.
pub fn serve<B>(
    name: &str,
    socket: &Path,
    backend: B,
    mem: Memory,
    listeners: &[(RawFd, u64)],
) -> Result<()>
where
    B: VhostUserBackendMut<Bitmap = (), Vring = VringRwLock> + 'static,
{
    let backend = Arc::new(RwLock::new(backend));
    let mut daemon = VhostUserDaemon::new(name.to_string(), backend, mem)
        .map_err(|e| Error::Daemon(e.to_string()))?;
    // One event loop (the default: every queue on thread 0).
    if let Some(handler) = daemon.get_epoll_handlers().first() {
        for &(fd, token) in listeners {
            handler
                .register_listener(fd, EventSet::IN, token)
                .map_err(Error::Watch)?;
        }
    }

    let public = bind(socket)?;
    info!("{name}: waiting for a front end on {}", socket.display());
    let front = loop {
        match public.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(socket_error("accept a front end")(e)),
        }
    };
    // This back end serves one front end.
    drop(public);
    let _ = std::fs::remove_file(socket);

    // The request handler's end of the relay, through a socket in a
    // directory only this user can enter, gone once connected.
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("vmkit-vhost-user-"))
        .map_err(|e| socket_error("create a private directory")(e.into()))?;
    let private = dir.as_path().join("handler.sock");
    let mut listener = Listener::new(&private, false).map_err(|source| Error::Listen {
        path: private.clone(),
        source: io::Error::other(source),
    })?;
    let back = UnixStream::connect(&private).map_err(socket_error("connect the relay"))?;
    daemon
        .start(&mut listener)
        .map_err(|e| Error::Daemon(e.to_string()))?;
    drop(listener);
    drop(dir);
    let relay = relay::spawn(name, front, back).map_err(socket_error("start the relay"))?;
    info!("{name}: front end connected");

    let result = daemon.wait();
    // Dropping the daemon stops the event loop and joins its thread, which
    // drops the back end.
    drop(daemon);
    for thread in relay {
        let _ = thread.join();
    }
    match result {
        Ok(()) => {}
        Err(DaemonError::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => {}
        Err(e) => return Err(Error::Daemon(e.to_string())),
    }
    info!("{name}: front end disconnected");
    Ok(())
}

/// The configuration-space bytes a front end asks for (`GET_CONFIG`), read
/// from the device model exactly as the in-VMM transport reads them.
pub(crate) fn config_bytes(
    device: &dyn vmkit_virtio::VirtioDevice,
    offset: u32,
    size: u32,
) -> Vec<u8> {
    let mut data = vec![0u8; size as usize];
    device.read_config(u64::from(offset), &mut data);
    data
}

/// The event vhost-user-backend uses to stop a handler thread; `None`
/// (logged) when it cannot be created.
pub(crate) fn exit_event(
    name: &str,
) -> Option<(
    vmm_sys_util::event::EventConsumer,
    vmm_sys_util::event::EventNotifier,
)> {
    use vmm_sys_util::event::{EventFlag, new_event_consumer_and_notifier};
    match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
        Ok(pair) => Some(pair),
        Err(e) => {
            log::error!("{name}: cannot create the exit event: {e}");
            None
        }
    }
}
