//! The vhost-user virtio-net back end.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use log::{error, info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;
use vmkit_net::rx::{Rx, RxOutcome, RxStatus};
use vmkit_net::tx::{Tx, TxOutcome};
use vmkit_net::{MacAddr, Net, NetLogLimits, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, Tap};
use vmkit_virtio::{GuestMemoryMmap, VirtioDevice, rings_in_memory};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::log_limits::FeatureLogLimits;
use crate::{Error, Memory, Result};

/// The token [`VhostUserNet::ready_fd`] is watched with by the queues'
/// event loop: the first one above the queues (0, 1) and the loop's own
/// (2).
pub const TAP_TOKEN: u64 = 3;

/// Frames received per wake-up before the event loop serves other events
/// (the tap stays readable, so the loop comes back).
const RX_BUDGET: u64 = 256;

/// Counters, logged when the back end goes.
#[derive(Debug, Default)]
struct Counters {
    rx_frames: u64,
    rx_bytes: u64,
    rx_dropped: u64,
    rx_paused: u64,
    tx_frames: u64,
    tx_bytes: u64,
    tx_dropped: u64,
    signals: u64,
}

/// A virtio-net back end over a [`Tap`], with one RX queue (0) and one TX
/// queue (1).
///
/// The device model (features, configuration space with the MAC address,
/// feature checks, the tap's offloads following the driver's features) is
/// [`vmkit_net::Net`]'s, and frames move with [`vmkit_net::rx::Rx`] and
/// [`vmkit_net::tx::Tx`], so a guest sees the same device as with vmkit's
/// own VMM. Offered on top: VHOST_USER_F_PROTOCOL_FEATURES (without which
/// QEMU cannot start a vhost-user virtio-net device) and the CONFIG
/// protocol feature.
///
/// The tap is watched through [`VhostUserNet::ready_fd`] (an epoll holding
/// the tap while the driver has RX buffers): when the driver runs out, the
/// tap is taken out until the driver notifies the RX queue, so a readable
/// tap does not keep the event loop busy.
///
/// What the driver can repeat at will (malformed frames and chains, broken
/// rings, queues that cannot be served, feature negotiations) is logged
/// through [`LogLimiter`](vmkit_virtio::LogLimiter)s kept for the back
/// end's whole life: the device model's ([`Net::log_limits`]), shared with
/// every [`Rx`] and [`Tx`], and the back end's own for feature
/// negotiations. A vhost-user reset does not start them over.
pub struct VhostUserNet {
    /// The device model; never activated (the queues run here).
    net: Net,
    mem: Memory,
    /// The virtio features the driver accepted.
    features: u64,
    /// Whether they passed `Net`'s checks; the queues are not served
    /// otherwise.
    features_ok: bool,
    /// RX state (held buffers), from the first RX event after the queue
    /// started until it stops.
    rx: Option<Rx>,
    /// The RX vring `rx` holds buffers of.
    rx_vring: Option<VringRwLock>,
    tx: Tx,
    /// Holds the tap while RX is watching it.
    poll: Epoll,
    watching: bool,
    /// The device model's log limits, shared with `rx` and `tx`.
    log: Arc<NetLogLimits>,
    /// The back end's own.
    feature_log: FeatureLogLimits,
    counters: Counters,
}

impl std::fmt::Debug for VhostUserNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserNet")
            .field("net", &self.net)
            .field("features", &self.features)
            .field("rx", &self.rx)
            .field("watching", &self.watching)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl VhostUserNet {
    /// A back end over `tap` whose configuration space holds `mac`
    /// (unicast). Sets the tap's virtio-net header length and clears its
    /// offloads until a driver accepts some.
    pub fn new(tap: Tap, mac: MacAddr) -> Result<Self> {
        let net = Net::new(tap, mac)?;
        let poll = Epoll::new().map_err(Error::Watch)?;
        let log = net.log_limits();
        let mut tx = Tx::new(0);
        tx.set_log_limits(Arc::clone(&log));
        Ok(VhostUserNet {
            net,
            mem: Memory::new(GuestMemoryMmap::new()),
            features: 0,
            features_ok: false,
            rx: None,
            rx_vring: None,
            tx,
            poll,
            watching: false,
            log,
            feature_log: FeatureLogLimits::default(),
            counters: Counters::default(),
        })
    }

    /// The tap.
    pub fn tap(&self) -> &Tap {
        self.net.tap()
    }

    /// The MAC address in the configuration space.
    pub fn mac(&self) -> MacAddr {
        self.net.mac()
    }

    /// The configuration space (MAC address, link status) a front end
    /// reads with VHOST_USER_GET_CONFIG. (QEMU gives the driver its own,
    /// with the MAC address of `-device virtio-net-pci,mac=`.)
    pub fn config_space(&self) -> [u8; 8] {
        let mut space = [0u8; 8];
        self.net.read_config(0, &mut space);
        space
    }

    /// The guest memory the back end works on; the front end's regions once
    /// it has sent them.
    pub fn memory(&self) -> Memory {
        self.mem.clone()
    }

    /// The descriptor the event loop watches with [`TAP_TOKEN`]: readable
    /// when the tap is and the driver has RX buffers.
    pub fn ready_fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }

    /// Serves one front end on `socket` until it disconnects (see
    /// [`serve`](crate::serve)), watching the tap. The tap is closed on
    /// return.
    pub fn serve(self, socket: &Path) -> Result<()> {
        let fd = self.ready_fd();
        let mem = self.memory();
        crate::serve(
            "vmkit-vhost-user-net",
            socket,
            self,
            mem,
            &[(fd, TAP_TOKEN)],
        )
    }

    fn set_watching(&mut self, on: bool) {
        if on == self.watching {
            return;
        }
        let fd = self.net.tap().as_raw_fd();
        let result = if on {
            self.poll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 0))
        } else {
            self.poll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        };
        match result {
            Ok(()) => self.watching = on,
            Err(e) => {
                if let Some(n) = self.log.host.tick() {
                    error!(
                        "virtio-net: cannot {} watching the tap: {e} ({n} host errors so far)",
                        if on { "resume" } else { "stop" }
                    );
                }
            }
        }
    }

    /// Forgets the RX state. Chains it holds (popped, not used) go back to
    /// the available ring by rewinding the ring's next index, so that the
    /// driver's buffers are not lost when the queue restarts from the index
    /// the front end reads (VHOST_USER_GET_VRING_BASE).
    fn drop_rx(&mut self) {
        let (Some(rx), Some(vring)) = (self.rx.take(), self.rx_vring.take()) else {
            return;
        };
        // At most the queue size.
        let held = rx.held_chains() as u16;
        if held > 0 {
            let mut state = vring.get_mut();
            let queue = state.get_queue_mut();
            queue.set_next_avail(queue.next_avail().wrapping_sub(held));
        }
        if rx.has_stashed_frame() {
            self.counters.rx_dropped += 1;
        }
    }

    fn add_rx(&mut self, out: &RxOutcome) {
        self.counters.rx_frames += out.frames;
        self.counters.rx_bytes += out.bytes;
        self.counters.rx_dropped += out.dropped;
    }

    fn add_tx(&mut self, out: &TxOutcome) {
        self.counters.tx_frames += out.frames;
        self.counters.tx_bytes += out.bytes;
        self.counters.tx_dropped += out.dropped;
    }

    fn signal(&mut self, state: &vhost_user_backend::VringState<Memory>) {
        match state.signal_used_queue() {
            Ok(()) => self.counters.signals += 1,
            Err(e) => {
                if let Some(n) = self.log.host.tick() {
                    error!("virtio-net: cannot signal the front end: {e} ({n} host errors so far)");
                }
            }
        }
    }

    /// Whether queue `index` of `state` may be served; logs an invalid one
    /// (through the ring limiter).
    fn usable(
        &self,
        index: u16,
        state: &vhost_user_backend::VringState<Memory>,
        mem: &GuestMemoryMmap,
    ) -> bool {
        if !self.features_ok || !state.is_enabled() || !state.get_queue().ready() {
            return false;
        }
        // Not `Queue::is_valid`, which logs (unlimited) what it finds wrong.
        if rings_in_memory(state.get_queue(), mem) {
            return true;
        }
        if let Some(n) = self.log.ring.tick() {
            warn!(
                "virtio-net: queue {index} is not valid (size or ring addresses) \
                 ({n} ring errors so far)"
            );
        }
        false
    }

    /// Receives what the tap has into the driver's RX buffers, pausing or
    /// resuming the watch on the tap, and signals the front end if the
    /// driver asked for it.
    fn process_rx(&mut self, vrings: &[VringRwLock]) {
        let Some(vring) = vrings.get(usize::from(RX_QUEUE)) else {
            return;
        };
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        let mut state = vring.get_mut();
        if !self.usable(RX_QUEUE, &state, mem) {
            drop(state);
            self.set_watching(false);
            return;
        }
        let queue = state.get_queue_mut();
        let rx = match &mut self.rx {
            Some(rx) => rx,
            slot @ None => {
                self.rx_vring = Some(vring.clone());
                let mut rx = Rx::new(self.features, queue);
                rx.set_log_limits(Arc::clone(&self.log));
                slot.insert(rx)
            }
        };
        let out = rx.process(mem, queue, self.net.tap(), RX_BUDGET);
        let notify = rx.needs_interrupt(mem, queue);
        if notify {
            self.signal(&state);
        }
        drop(state);
        self.add_rx(&out);
        match out.status {
            RxStatus::Drained | RxStatus::Budget => self.set_watching(true),
            RxStatus::NeedBuffers | RxStatus::BackendFailed => {
                if self.watching {
                    self.counters.rx_paused += 1;
                }
                self.set_watching(false);
            }
        }
    }

    /// Sends what the TX queue holds and signals the front end if the
    /// driver asked for it.
    fn process_tx(&mut self, vrings: &[VringRwLock]) {
        let Some(vring) = vrings.get(usize::from(TX_QUEUE)) else {
            return;
        };
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        let mut state = vring.get_mut();
        if !self.usable(TX_QUEUE, &state, mem) {
            return;
        }
        let out = self.tx.process(mem, state.get_queue_mut(), self.net.tap());
        if out.completed > 0 {
            match state.needs_notification() {
                Ok(true) => self.signal(&state),
                Ok(false) => {}
                Err(e) => {
                    if let Some(n) = self.log.ring.tick() {
                        warn!(
                            "virtio-net: TX: cannot read used_event: {e} ({n} ring errors so far)"
                        );
                    }
                }
            }
        }
        drop(state);
        self.add_tx(&out);
    }
}

impl Drop for VhostUserNet {
    fn drop(&mut self) {
        let c = &self.counters;
        info!(
            "virtio-net: {}: rx {} frames {} bytes ({} dropped, paused {} times), \
             tx {} frames {} bytes ({} dropped), {} signals",
            self.net.tap().name(),
            c.rx_frames,
            c.rx_bytes,
            c.rx_dropped,
            c.rx_paused,
            c.tx_frames,
            c.tx_bytes,
            c.tx_dropped,
            c.signals
        );
    }
}

impl VhostUserBackendMut for VhostUserNet {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> usize {
        usize::from(QUEUE_SIZE)
    }

    fn features(&self) -> u64 {
        self.net.device_features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&mut self, features: u64) {
        let virtio = features & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if virtio != self.features {
            self.drop_rx();
        }
        // Checks the selection and sets the tap's offloads to match.
        match self.net.ack_features(virtio) {
            Ok(()) => {
                self.features = virtio;
                self.features_ok = true;
                self.tx = Tx::new(virtio);
                self.tx.set_log_limits(Arc::clone(&self.log));
                if let Some(n) = self.feature_log.accepted.tick() {
                    info!("virtio-net: driver features {virtio:#x} ({n} negotiations so far)");
                }
            }
            Err(e) => {
                self.features_ok = false;
                if let Some(n) = self.feature_log.refused.tick() {
                    error!(
                        "virtio-net: {e}; the queues will not be served \
                         ({n} feature errors so far)"
                    );
                }
            }
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
    }

    fn reset_device(&mut self) {
        self.rx = None;
        self.rx_vring = None;
        self.features = 0;
        self.features_ok = false;
        self.set_watching(false);
        // Nothing runs on the Net itself; this clears its features and
        // the tap's offloads.
        let _ = self.net.reset();
    }

    fn set_event_idx(&mut self, _enabled: bool) {
        // The queues know (vhost-user-backend sets it on the vrings).
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        crate::daemon::config_bytes(&self.net, offset, size)
    }

    fn set_config(&mut self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // The configuration space is read-only: logged and ignored, as the
        // in-VMM device does. (An error would end the connection.)
        self.net.write_config(u64::from(offset), buf);
        Ok(())
    }

    fn update_memory(&mut self, mem: Memory) -> io::Result<()> {
        self.mem = mem;
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        crate::daemon::exit_event("virtio-net")
    }

    fn stop_vring(&mut self, queue_index: u32) -> io::Result<()> {
        if queue_index == u32::from(RX_QUEUE) {
            self.drop_rx();
            self.set_watching(false);
        }
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        // An error would end the event loop: problems are logged instead.
        if !evset.contains(EventSet::IN) {
            warn!("virtio-net: unexpected events {evset:?} on source {device_event}");
            return Ok(());
        }
        match device_event {
            RX_QUEUE => self.process_rx(vrings),
            TX_QUEUE => self.process_tx(vrings),
            e if u64::from(e) == TAP_TOKEN => self.process_rx(vrings),
            _ => warn!("virtio-net: event on unknown source {device_event}"),
        }
        Ok(())
    }
}
