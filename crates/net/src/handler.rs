//! The queue handler a network device runs on its event loop.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use log::{error, warn};
use virtio_queue::{Queue, QueueT};
use vmkit_virtio::{GuestMemoryMmap, Interrupt, InterruptType, QueueHandler};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::log_limits::NetLogLimits;
use crate::rx::{Rx, RxStatus};
use crate::tx::Tx;
use crate::{NetBackend, NetStats};

/// Index of the receive queue.
pub const RX_QUEUE: u16 = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: u16 = 1;
/// The token to register [`NetHandler::ready_fd`] with among a
/// [`QueueWorker`](vmkit_virtio::QueueWorker)'s extra descriptors.
pub const BACKEND_TOKEN: u64 = 0;
/// Frames received per wake-up before the loop gets to serve other events
/// (the backend stays readable, so the loop comes back).
const RX_BUDGET: u64 = 256;

/// Runs the RX and TX queues of a network device over a backend: the glue
/// between the event loop, the queues' [`Rx`] and [`Tx`] logic, the
/// interrupt and the counters.
///
/// The handler owns an epoll instance holding the backend's descriptor
/// while the driver has RX buffers; [`NetHandler::ready_fd`] (that epoll's
/// descriptor, readable when the backend is) is what the event loop
/// watches. When the driver runs out of buffers the backend is taken out,
/// so a readable tap does not wake the loop again until the driver
/// notifies the RX queue.
pub struct NetHandler<B> {
    mem: GuestMemoryMmap,
    rx_queue: Queue,
    tx_queue: Queue,
    rx: Rx,
    tx: Tx,
    backend: B,
    interrupt: Arc<dyn Interrupt>,
    stats: Arc<NetStats>,
    poll: Epoll,
    watching: bool,
    /// DEVICE_NEEDS_RESET was signalled: the driver broke a queue.
    needs_reset: bool,
    /// What the handler logs is counted here (shared with `rx` and `tx`).
    log: Arc<NetLogLimits>,
}

impl<B> std::fmt::Debug for NetHandler<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetHandler")
            .field("rx_queue", &self.rx_queue)
            .field("tx_queue", &self.tx_queue)
            .field("rx", &self.rx)
            .field("watching", &self.watching)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<B: NetBackend + AsRawFd> NetHandler<B> {
    /// A handler for a driver that accepted `features`, with its two
    /// queues (event index already configured on them).
    pub fn new(
        mem: GuestMemoryMmap,
        rx_queue: Queue,
        tx_queue: Queue,
        backend: B,
        features: u64,
        interrupt: Arc<dyn Interrupt>,
        stats: Arc<NetStats>,
    ) -> io::Result<Self> {
        let poll = Epoll::new()?;
        poll.ctl(
            ControlOperation::Add,
            backend.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )?;
        let log = Arc::<NetLogLimits>::default();
        let mut rx = Rx::new(features, &rx_queue);
        rx.set_log_limits(Arc::clone(&log));
        let mut tx = Tx::new(features);
        tx.set_log_limits(Arc::clone(&log));
        Ok(NetHandler {
            rx,
            tx,
            log,
            mem,
            rx_queue,
            tx_queue,
            backend,
            interrupt,
            stats,
            poll,
            watching: true,
            needs_reset: false,
        })
    }

    /// Counts what the handler and its [`Rx`] and [`Tx`] log in `log` (a
    /// device's limits, kept across resets) instead of limits of their own.
    pub(crate) fn set_log_limits(&mut self, log: Arc<NetLogLimits>) {
        self.rx.set_log_limits(Arc::clone(&log));
        self.tx.set_log_limits(Arc::clone(&log));
        self.log = log;
    }

    /// The descriptor the event loop watches for frames to receive:
    /// readable when the backend is and the driver has buffers. Register it
    /// with [`BACKEND_TOKEN`].
    pub fn ready_fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }

    /// Whether reading the backend is paused until the driver posts RX
    /// buffers (or, after a backend error, notifies the RX queue).
    pub fn is_rx_paused(&self) -> bool {
        !self.watching
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The RX logic (held buffers, stashed frame).
    pub fn rx(&self) -> &Rx {
        &self.rx
    }

    /// The RX queue, as the handler left it.
    pub fn rx_queue(&self) -> &Queue {
        &self.rx_queue
    }

    /// The TX queue, as the handler left it.
    pub fn tx_queue(&self) -> &Queue {
        &self.tx_queue
    }

    fn set_watching(&mut self, on: bool) {
        if on == self.watching {
            return;
        }
        let fd = self.backend.as_raw_fd();
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
                        "virtio-net: cannot {} watching the backend: {e} ({n} host errors so far)",
                        if on { "resume" } else { "stop" }
                    );
                }
            }
        }
    }

    /// Whether the handler found a queue broken and signalled
    /// DEVICE_NEEDS_RESET.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset
    }

    /// Signals DEVICE_NEEDS_RESET, once.
    fn signal_needs_reset(&mut self, queue: &str) {
        if self.needs_reset {
            return;
        }
        self.needs_reset = true;
        if let Some(n) = self.log.ring.tick() {
            warn!(
                "virtio-net: the driver broke the {queue} queue; the device needs a reset \
                 ({n} ring errors so far)"
            );
        }
        if let Err(e) = self.interrupt.signal_needs_reset()
            && let Some(n) = self.log.host.tick()
        {
            error!("virtio-net: cannot signal DEVICE_NEEDS_RESET: {e} ({n} host errors so far)");
        }
    }

    fn signal(&self) {
        match self.interrupt.trigger(InterruptType::UsedRing) {
            Ok(()) => self.stats.interrupted(),
            Err(e) => {
                if let Some(n) = self.log.host.tick() {
                    error!("virtio-net: cannot interrupt the driver: {e} ({n} host errors so far)");
                }
            }
        }
    }

    /// Receives what the backend has into the driver's buffers, pausing or
    /// resuming the watch on the backend, and interrupts the driver if the
    /// RX queue asks for it.
    pub fn process_rx(&mut self) {
        let out = self
            .rx
            .process(&self.mem, &mut self.rx_queue, &self.backend, RX_BUDGET);
        self.stats.add_rx(&out);
        if out.needs_reset {
            self.signal_needs_reset("RX");
        }
        match out.status {
            RxStatus::Drained | RxStatus::Budget => self.set_watching(true),
            RxStatus::NeedBuffers | RxStatus::BackendFailed => {
                if self.watching {
                    self.stats.rx_pause();
                }
                self.set_watching(false);
            }
        }
        if self.rx.needs_interrupt(&self.mem, &self.rx_queue) {
            self.signal();
        }
    }

    /// Sends what the TX queue holds and interrupts the driver if the
    /// queue asks for it.
    pub fn process_tx(&mut self) {
        let out = self
            .tx
            .process(&self.mem, &mut self.tx_queue, &self.backend);
        self.stats.add_tx(&out);
        if out.needs_reset {
            self.signal_needs_reset("TX");
        }
        if out.completed == 0 {
            return;
        }
        match self.tx_queue.needs_notification(&self.mem) {
            Ok(true) => self.signal(),
            Ok(false) => {}
            Err(e) => {
                if let Some(n) = self.log.ring.tick() {
                    warn!("virtio-net: TX: cannot read used_event: {e} ({n} ring errors so far)");
                }
            }
        }
    }
}

impl<B: NetBackend + AsRawFd + 'static> QueueHandler for NetHandler<B> {
    fn process_queue(&mut self, index: u16) {
        match index {
            RX_QUEUE => {
                self.stats.rx_notified();
                self.process_rx();
            }
            TX_QUEUE => {
                self.stats.tx_notified();
                self.process_tx();
            }
            _ => warn!("virtio-net: notification for unknown queue {index}"),
        }
    }

    fn process_extra(&mut self, token: u64) {
        if token == BACKEND_TOKEN {
            self.stats.rx_woken();
            self.process_rx();
        }
    }
}
