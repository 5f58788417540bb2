//! The event loop a device runs its queues on: one thread per activated
//! device, sleeping in epoll on the queues' notification eventfds.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// What a device's event loop does when the driver notifies a queue.
pub trait QueueHandler: Send + 'static {
    /// The driver notified queue `index` (its notification eventfd has
    /// already been read). Processes what the queue holds.
    fn process_queue(&mut self, index: u16);

    /// Another file descriptor the handler asked the loop to watch (see
    /// [`QueueWorker::spawn`]'s `extra`) became ready; `token` is the value
    /// given with it.
    fn process_extra(&mut self, token: u64) {
        let _ = token;
    }
}

const STOP_TOKEN: u64 = u64::MAX;
const EXTRA_BASE: u64 = 1 << 32;
/// Extra tokens must stay below this so that `EXTRA_BASE + token` neither
/// overflows nor reaches `STOP_TOKEN`.
const EXTRA_TOKEN_LIMIT: u64 = STOP_TOKEN - EXTRA_BASE;

/// A running event loop; [`QueueWorker::stop`] ends it and gives the
/// handler and the eventfds back.
#[derive(Debug)]
pub struct QueueWorker<H> {
    stop: EventFd,
    notifications: Arc<AtomicU64>,
    thread: Option<JoinHandle<Stopped<H>>>,
}

/// What the loop gives back when it ends.
type Stopped<H> = io::Result<(H, Vec<(u16, EventFd)>)>;

impl<H: QueueHandler> QueueWorker<H> {
    /// Starts a thread named `name` that calls `handler` whenever one of
    /// `queues`' eventfds is signalled, or one of `extra` (fd, token) is
    /// readable.
    ///
    /// The loop is level-triggered: a handler must consume what makes an
    /// `extra` descriptor readable, or it is called again at once. Extra
    /// tokens must be below `u64::MAX - 2^32` (an `InvalidInput` error
    /// otherwise).
    pub fn spawn(
        name: String,
        mut handler: H,
        queues: Vec<(u16, EventFd)>,
        extra: Vec<(std::os::fd::RawFd, u64)>,
    ) -> io::Result<Self> {
        if let Some(&(_, token)) = extra.iter().find(|(_, t)| *t >= EXTRA_TOKEN_LIMIT) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("extra token {token:#x} out of range"),
            ));
        }
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let notifications = Arc::new(AtomicU64::new(0));
        let counter = notifications.clone();
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        for (slot, (_, evt)) in queues.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                evt.as_raw_fd(),
                EpollEvent::new(EventSet::IN, slot as u64),
            )?;
        }
        for &(fd, token) in &extra {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, EXTRA_BASE + token),
            )?;
        }
        let stop_evt = stop.try_clone()?;
        let thread = thread::Builder::new().name(name).spawn(move || {
            let mut events = [EpollEvent::default(); 16];
            loop {
                let n = match epoll.wait(-1, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                for ev in &events[..n] {
                    match ev.data() {
                        STOP_TOKEN => {
                            let _ = stop_evt.read();
                            return Ok((handler, queues));
                        }
                        t if t >= EXTRA_BASE => handler.process_extra(t - EXTRA_BASE),
                        slot => {
                            let Some((index, evt)) = queues.get(slot as usize) else {
                                continue;
                            };
                            // Non-blocking eventfds read WouldBlock when a
                            // previous wake-up already consumed the count.
                            // The count read is the number of
                            // notifications since the last read.
                            if let Ok(count) = evt.read() {
                                counter.fetch_add(count, Ordering::Relaxed);
                            }
                            handler.process_queue(*index);
                        }
                    }
                }
            }
        })?;
        Ok(QueueWorker {
            stop,
            notifications,
            thread: Some(thread),
        })
    }

    /// How many queue notifications the loop has consumed so far (the
    /// eventfds' counts: each ioeventfd hit adds one), for reporting
    /// notifications per request.
    pub fn notifications(&self) -> u64 {
        self.notifications.load(Ordering::Relaxed)
    }

    /// Stops the loop and returns the handler and the queues' eventfds.
    pub fn stop(mut self) -> io::Result<(H, Vec<(u16, EventFd)>)> {
        self.stop.write(1)?;
        let thread = self
            .thread
            .take()
            .ok_or_else(|| io::Error::other("worker already stopped"))?;
        thread
            .join()
            .map_err(|_| io::Error::other("the device's event loop panicked"))?
    }
}

impl<H> Drop for QueueWorker<H> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.stop.write(1);
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{Receiver, Sender, channel};
    use std::time::Duration;

    use super::*;

    /// Generous: only reached when the loop is broken.
    const WAIT: Duration = Duration::from_secs(10);

    #[derive(Debug, PartialEq, Eq)]
    enum Call {
        Queue(u16),
        Extra(u64),
    }

    struct Counting {
        calls: Sender<Call>,
        queue_calls: u64,
        extra: Option<EventFd>,
        _alive: Arc<()>,
    }

    impl QueueHandler for Counting {
        fn process_queue(&mut self, index: u16) {
            self.queue_calls += 1;
            let _ = self.calls.send(Call::Queue(index));
        }

        fn process_extra(&mut self, token: u64) {
            // Consume what made the descriptor readable.
            if let Some(evt) = &self.extra {
                let _ = evt.read();
            }
            let _ = self.calls.send(Call::Extra(token));
        }
    }

    fn handler(extra: Option<EventFd>) -> (Counting, Receiver<Call>, Arc<()>) {
        let (tx, rx) = channel();
        let alive = Arc::new(());
        (
            Counting {
                calls: tx,
                queue_calls: 0,
                extra,
                _alive: alive.clone(),
            },
            rx,
            alive,
        )
    }

    fn queue_evts(indices: &[u16]) -> Vec<(u16, EventFd)> {
        indices
            .iter()
            .map(|&i| (i, EventFd::new(libc::EFD_NONBLOCK).unwrap()))
            .collect()
    }

    #[test]
    fn notified_queues_reach_the_handler() {
        let extra = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (h, rx, _) = handler(Some(extra.try_clone().unwrap()));
        let queues = queue_evts(&[0, 3, 7]);
        let kicks: Vec<EventFd> = queues.iter().map(|(_, e)| e.try_clone().unwrap()).collect();
        let raw: Vec<_> = queues.iter().map(|(i, e)| (*i, e.as_raw_fd())).collect();
        let worker = QueueWorker::spawn(
            "test-worker".into(),
            h,
            queues,
            vec![(extra.as_raw_fd(), 42)],
        )
        .unwrap();

        kicks[1].write(1).unwrap();
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), Call::Queue(3));
        // Three notifications before the loop reads: one call, counted 3.
        kicks[2].write(3).unwrap();
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), Call::Queue(7));
        assert_eq!(worker.notifications(), 4);
        kicks[0].write(1).unwrap();
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), Call::Queue(0));
        extra.write(1).unwrap();
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), Call::Extra(42));
        // Each eventfd was read: nothing more comes.
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        assert_eq!(worker.notifications(), 5);

        let (h, evts) = worker.stop().unwrap();
        assert_eq!(h.queue_calls, 3);
        let back: Vec<_> = evts.iter().map(|(i, e)| (*i, e.as_raw_fd())).collect();
        assert_eq!(back, raw);
        // Stopped: a notification now goes nowhere, and stays pending.
        kicks[1].write(1).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        assert_eq!(evts[1].1.read().unwrap(), 1);
    }

    #[test]
    fn stop_without_events_and_drop_join() {
        let (h, _rx, alive) = handler(None);
        let worker = QueueWorker::spawn("idle".into(), h, queue_evts(&[0]), Vec::new()).unwrap();
        let (h, evts) = worker.stop().unwrap();
        assert_eq!(h.queue_calls, 0);
        assert_eq!(evts.len(), 1);
        drop(h);
        assert_eq!(Arc::strong_count(&alive), 1);

        // Dropping a running worker stops its thread, which drops the handler.
        let (h, _rx, alive) = handler(None);
        let worker = QueueWorker::spawn("dropped".into(), h, queue_evts(&[0]), Vec::new()).unwrap();
        assert_eq!(Arc::strong_count(&alive), 2);
        drop(worker);
        assert_eq!(Arc::strong_count(&alive), 1);
    }

    #[test]
    fn out_of_range_extra_tokens_are_refused() {
        let extra = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        for token in [EXTRA_TOKEN_LIMIT, STOP_TOKEN - EXTRA_BASE, u64::MAX] {
            let (h, _rx, _) = handler(None);
            let r = QueueWorker::spawn(
                "bad".into(),
                h,
                Vec::new(),
                vec![(extra.as_raw_fd(), token)],
            );
            match r {
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidInput),
                Ok(_) => panic!("token {token:#x} accepted"),
            }
        }
        let (h, rx, _) = handler(Some(extra.try_clone().unwrap()));
        let worker = QueueWorker::spawn(
            "edge".into(),
            h,
            Vec::new(),
            vec![(extra.as_raw_fd(), EXTRA_TOKEN_LIMIT - 1)],
        )
        .unwrap();
        extra.write(1).unwrap();
        assert_eq!(
            rx.recv_timeout(WAIT).unwrap(),
            Call::Extra(EXTRA_TOKEN_LIMIT - 1)
        );
        worker.stop().unwrap();
    }
}
