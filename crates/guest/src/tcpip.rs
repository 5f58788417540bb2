//! The `net-*` checks: every virtio-net device of the command line is set
//! up (`net-init`); on `net0`, smoltcp runs over the driver of `net` to
//! ping a peer (`net-ping`), send it a deterministic TCP stream
//! (`net-tcp-send`) and echo a TCP connection (`net-tcp-echo`), as the
//! `vmkit.*` parameters ask.
//!
//! Time is the TSC, calibrated against the PIT. The checks run on a stack
//! of their own ([`STACK`]), which also holds the socket buffers.

use core::cell::UnsafeCell;
use core::fmt;
use core::net::Ipv4Addr;
use core::sync::atomic::{AtomicBool, Ordering};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::{icmp, tcp};
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, Ipv4Cidr,
};

use crate::Report;
use crate::bootparams;
use crate::cpu;
use crate::net::{self, Net, arp_request};
use crate::pit;
use crate::println;
use crate::virtio;

/// Echo requests `net-ping` sends.
const PINGS: u16 = 5;
/// Bytes of payload per echo request.
const PING_DATA: usize = 56;
/// ICMP identifier of the guest's echo requests ("vm").
const PING_IDENT: u16 = 0x766d;
/// How long each echo request waits for its reply.
const PING_TIMEOUT_US: u64 = 1_000_000;
/// ARP requests for the peer, one a second.
const ARP_TRIES: u32 = 3;
/// How long a TCP connection may take to be established or accepted.
const CONNECT_TIMEOUT_US: u64 = 10_000_000;
const ACCEPT_TIMEOUT_US: u64 = 20_000_000;
/// How long a TCP transfer may go without progress.
const STALL_TIMEOUT_US: u64 = 10_000_000;
/// Largest `vmkit.tcp-send` size: 1 TiB.
const MAX_SEND_MIB: u64 = 1 << 20;
/// Per-socket TCP buffers.
const TCP_RX_BYTES: usize = 64 << 10;
const TCP_TX_BYTES: usize = 128 << 10;
/// Bytes moved from the receive to the send buffer at a time when echoing.
const ECHO_CHUNK: usize = 16 << 10;

/// The checks' stack: smoltcp's interface, the sockets and their buffers
/// (about 220 KiB) live here, not on the CPU's 16 KiB user stack.
const STACK_BYTES: usize = 384 << 10;

#[repr(C, align(4096))]
struct StackArea(UnsafeCell<[u8; STACK_BYTES]>);

// SAFETY: only the BSP runs on it, once at a time (`STACK_IN_USE`).
unsafe impl Sync for StackArea {}

static STACK: StackArea = StackArea(UnsafeCell::new([0; STACK_BYTES]));
static STACK_IN_USE: AtomicBool = AtomicBool::new(false);

/// Runs `f` on [`STACK`].
fn on_stack(f: &mut dyn FnMut()) {
    assert!(
        !STACK_IN_USE.swap(true, Ordering::Acquire),
        "the net check stack is already in use"
    );
    let top = STACK.0.get().cast::<u8>().wrapping_add(STACK_BYTES);
    cpu::call_on_stack(top.expose_provenance() as u64, f);
    STACK_IN_USE.store(false, Ordering::Release);
}

/// A parameter that may be absent, malformed or usable.
#[derive(Clone, Copy)]
enum Param<T> {
    Absent,
    Malformed,
    Value(T),
}

impl<T: Copy> Param<T> {
    fn value(&self) -> Option<T> {
        match self {
            Param::Value(v) => Some(*v),
            _ => None,
        }
    }

    fn given(&self) -> bool {
        !matches!(self, Param::Absent)
    }
}

/// The `vmkit.*` network parameters (the last of each wins).
struct Params {
    ip: Param<Ipv4Cidr>,
    peer: Param<Ipv4Addr>,
    tcp_send: Param<(u16, u64)>,
    tcp_echo: Param<u16>,
}

impl Params {
    /// Whether any check on `net0` was asked for.
    fn any_check(&self) -> bool {
        self.peer.given() || self.tcp_send.given() || self.tcp_echo.given()
    }
}

/// Decimal digits only (no sign, no spaces), at most `max`.
fn decimal(s: &str, max: u64) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&v| v <= max)
}

fn port(s: &str) -> Option<u16> {
    decimal(s, 65535).filter(|&p| p != 0).map(|p| p as u16)
}

/// A unicast IPv4 address in dotted decimal (no leading zeros).
fn unicast(s: &str) -> Option<Ipv4Addr> {
    let a: Ipv4Addr = s.parse().ok()?;
    let bad = a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback();
    (!bad).then_some(a)
}

fn parse_ip(s: &str) -> Option<Ipv4Cidr> {
    let (addr, prefix) = s.split_once('/')?;
    let addr = unicast(addr)?;
    let prefix = decimal(prefix, 32).filter(|&p| p > 0 && p <= 30)? as u8;
    let cidr = Ipv4Cidr::new(addr, prefix);
    // Neither the network nor the broadcast address of its subnet.
    let ok = addr != cidr.network().address() && Some(addr) != cidr.broadcast();
    ok.then_some(cidr)
}

fn parse_tcp_send(s: &str) -> Option<(u16, u64)> {
    let (p, mib) = s.split_once(':')?;
    Some((port(p)?, decimal(mib, MAX_SEND_MIB)?))
}

fn parse_params(cmdline: &str, r: &mut Report) -> Params {
    fn one<T>(
        cmdline: &str,
        key: &str,
        parse: impl Fn(&str) -> Option<T>,
        check: &str,
        expected: &str,
        r: &mut Report,
    ) -> Param<T> {
        match bootparams::param(cmdline, key) {
            None => Param::Absent,
            Some(value) => match parse(value) {
                Some(v) => Param::Value(v),
                None => {
                    r.fail::<()>(
                        check,
                        format_args!("{key}={value} is malformed (expected {expected})"),
                    );
                    Param::Malformed
                }
            },
        }
    }
    let mut p = Params {
        ip: one(
            cmdline,
            "vmkit.ip",
            parse_ip,
            "net-config",
            "a unicast A.B.C.D/N, N in 1..=30, not the subnet's network or broadcast address",
            r,
        ),
        peer: one(
            cmdline,
            "vmkit.peer",
            unicast,
            "net-config",
            "a unicast A.B.C.D",
            r,
        ),
        tcp_send: one(
            cmdline,
            "vmkit.tcp-send",
            parse_tcp_send,
            "net-tcp-send",
            "PORT:MIB, port 1..=65535, MIB 0..=1048576",
            r,
        ),
        tcp_echo: one(
            cmdline,
            "vmkit.tcp-echo",
            port,
            "net-tcp-echo",
            "a port 1..=65535",
            r,
        ),
    };
    if let (Some(ip), Some(peer)) = (p.ip.value(), p.peer.value())
        && (!ip.contains_addr(&peer) || peer == ip.address())
    {
        r.fail::<()>(
            "net-config",
            format_args!("vmkit.peer={peer} is not another address of vmkit.ip={ip}'s subnet"),
        );
        p.peer = Param::Malformed;
    }
    p
}

/// Runs the `net-*` checks on every virtio-net device of the command line.
pub fn check(cmdline: Option<&str>, r: &mut Report) {
    let Some(cmdline) = cmdline else { return };
    let params = parse_params(cmdline, r);
    let mut nets = 0;
    for value in bootparams::params(cmdline, "virtio_mmio.device") {
        // Malformed values and broken windows are `blk`'s to report.
        let Some(dev) = virtio::parse_device(value) else {
            continue;
        };
        let Ok((mmio, virtio::DEVICE_ID_NET)) = virtio::probe(&dev) else {
            continue;
        };
        let index = nets;
        nets += 1;
        let mut net = match Net::init(mmio, dev.irq, index) {
            Ok(net) => net,
            Err(why) => {
                r.fail::<()>(
                    "net-init",
                    format_args!(
                        "net{index} virtio-mmio at {:#x} irq {}: {why}",
                        dev.base, dev.irq
                    ),
                );
                // Leave it reset, with no queue pointing at our memory.
                mmio.write(virtio::STATUS, 0);
                if index == 0 {
                    fail_all(&params, "net0 could not be set up", r);
                }
                continue;
            }
        };
        r.pass(
            "net-init",
            format_args!(
                "net{index} mac {} features {:#x}",
                Mac(net.mac),
                net.features
            ),
        );
        if index == 0 && params.any_check() {
            on_stack(&mut || net0_checks(&mut net, &params, r));
            let s = net.stats();
            println!(
                "net-stats: tx {} pkts {} notifications, rx {} pkts ({} merged) {} notifications, {} interrupts, {} rx errors",
                s.tx_packets,
                s.tx_notifications,
                s.rx_packets,
                s.rx_merged,
                s.rx_notifications,
                s.interrupts,
                s.rx_errors
            );
        }
        net.reset();
        if crate::hostile::enabled(cmdline) {
            hostile(mmio, dev.irq, index, &params, cmdline, r);
        }
    }
    if nets == 0 {
        fail_all(&params, "no virtio-net device (net0)", r);
    }
}

/// `vmkit.hostile` on net device `index` (see [`net::hostile`]): needs
/// `vmkit.ip` and `vmkit.peer` for the normal I/O after each group.
fn hostile(
    mmio: virtio::Mmio,
    irq: u32,
    index: usize,
    params: &Params,
    cmdline: &str,
    r: &mut Report,
) {
    let (Some(ip), Some(peer)) = (params.ip.value(), params.peer.value()) else {
        r.fail::<()>(
            "hostile-net",
            format_args!("net{index}: vmkit.hostile needs a usable vmkit.ip and vmkit.peer"),
        );
        return;
    };
    let mem_mib = bootparams::param(cmdline, "vmkit.mem_mib").and_then(|m| m.parse().ok());
    net::hostile::run(
        net::hostile::Target {
            mmio,
            irq,
            index,
            ip: ip.address(),
            peer,
            mem_mib,
        },
        r,
    );
}

/// A FAIL line for each check the parameters ask for.
fn fail_all(params: &Params, why: &str, r: &mut Report) {
    if params.peer.given() {
        r.fail::<()>("net-ping", format_args!("{why}"));
    }
    if params.tcp_send.value().is_some() {
        r.fail::<()>("net-tcp-send", format_args!("{why}"));
    }
    if params.tcp_echo.value().is_some() {
        r.fail::<()>("net-tcp-echo", format_args!("{why}"));
    }
}

fn net0_checks(net: &mut Net, params: &Params, r: &mut Report) {
    let Some(hz) = pit::tsc_hz() else {
        fail_all(
            params,
            "the PIT's channel 2 output never rose; no TSC frequency",
            r,
        );
        return;
    };
    let ip = params.ip.value();
    let peer = params.peer.value();

    // Every socket buffer, here on the checks' stack, outlives the set.
    let mut storage = [SocketStorage::EMPTY; 2];
    let mut icmp_rx_meta = [icmp::PacketMetadata::EMPTY; 4];
    let mut icmp_rx_data = [0u8; 1024];
    let mut icmp_tx_meta = [icmp::PacketMetadata::EMPTY; 4];
    let mut icmp_tx_data = [0u8; 1024];
    let mut tcp_rx = [0u8; TCP_RX_BYTES];
    let mut tcp_tx = [0u8; TCP_TX_BYTES];
    let mut stack = Tcpip::new(net, hz, &mut storage);
    let icmp = stack.sockets.add(icmp::Socket::new(
        icmp::PacketBuffer::new(&mut icmp_rx_meta[..], &mut icmp_rx_data[..]),
        icmp::PacketBuffer::new(&mut icmp_tx_meta[..], &mut icmp_tx_data[..]),
    ));
    let tcp = stack.sockets.add(tcp::Socket::new(
        tcp::SocketBuffer::new(&mut tcp_rx[..]),
        tcp::SocketBuffer::new(&mut tcp_tx[..]),
    ));
    if let Some(ip) = ip {
        stack.iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::Ipv4(ip));
        });
    }

    if params.peer.given() {
        match (ip, peer) {
            (Some(ip), Some(peer)) => match ping(&mut stack, icmp, ip, peer) {
                Ok(p) => {
                    r.pass(
                        "net-ping",
                        format_args!(
                            "{peer} {PINGS}/{PINGS} replies, rtt min/avg/max = {}/{}/{} ms",
                            Ms(p.min),
                            Ms(p.sum / u64::from(PINGS)),
                            Ms(p.max)
                        ),
                    );
                }
                Err(e) => {
                    r.fail::<()>("net-ping", format_args!("{peer}: {e}{}", Fault(stack.net)));
                }
            },
            _ => {
                r.fail::<()>(
                    "net-ping",
                    format_args!("needs a usable vmkit.ip and vmkit.peer"),
                );
            }
        }
    }

    if let Some((port, mib)) = params.tcp_send.value() {
        match (ip, peer) {
            (Some(_), Some(peer)) => match tcp_send(&mut stack, tcp, peer, port, mib << 20) {
                Ok((bytes, us)) => {
                    r.pass(
                        "net-tcp-send",
                        format_args!("{bytes} bytes to {peer}:{port}"),
                    );
                    // Bytes per microsecond = MB/s; in MiB/s with 2 decimals.
                    let centi = u128::from(bytes) * 100 * 1_000_000 / (u128::from(us.max(1)) << 20);
                    println!("net-tcp-send MiB/s={}.{:02}", centi / 100, centi % 100);
                }
                Err(e) => {
                    r.fail::<()>(
                        "net-tcp-send",
                        format_args!("{peer}:{port}: {e}{}", Fault(stack.net)),
                    );
                }
            },
            _ => {
                r.fail::<()>(
                    "net-tcp-send",
                    format_args!("needs a usable vmkit.ip and vmkit.peer"),
                );
            }
        }
    }

    if let Some(port) = params.tcp_echo.value() {
        match ip {
            Some(_) => match tcp_echo(&mut stack, tcp, port) {
                Ok(bytes) => {
                    r.pass(
                        "net-tcp-echo",
                        format_args!("port {port} echoed {bytes} bytes"),
                    );
                }
                Err(e) => {
                    r.fail::<()>(
                        "net-tcp-echo",
                        format_args!("port {port}: {e}{}", Fault(stack.net)),
                    );
                }
            },
            None => {
                r.fail::<()>("net-tcp-echo", format_args!("needs a usable vmkit.ip"));
            }
        }
    }
}

/// A MAC address as `xx:xx:xx:xx:xx:xx`.
struct Mac(EthernetAddress);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Microseconds as milliseconds with three decimals.
struct Ms(u64);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

/// The driver's ring fault, if any, as a suffix of a FAIL line.
struct Fault<'a>(&'a Net);

impl fmt::Display for Fault<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.fault() {
            Some(why) => write!(f, " ({why})"),
            None => Ok(()),
        }
    }
}

/// Microseconds from the TSC, calibrated against the PIT.
#[derive(Clone, Copy)]
struct Clock {
    start: u64,
    hz: u64,
}

impl Clock {
    /// Microseconds since the clock was made.
    fn micros(&self) -> u64 {
        let cycles = cpu::rdtsc().wrapping_sub(self.start);
        (u128::from(cycles) * 1_000_000 / u128::from(self.hz)) as u64
    }
}

/// smoltcp over the driver, with a TSC clock.
struct Tcpip<'a, 'n> {
    net: &'n mut Net,
    iface: Interface,
    sockets: SocketSet<'a>,
    clock: Clock,
}

impl<'a, 'n> Tcpip<'a, 'n> {
    fn new(net: &'n mut Net, hz: u64, storage: &'a mut [SocketStorage<'a>]) -> Self {
        let clock = Clock {
            start: cpu::rdtsc(),
            hz,
        };
        let mut config = Config::new(HardwareAddress::Ethernet(net.mac));
        config.random_seed = clock.start;
        let iface = Interface::new(config, net, Instant::ZERO);
        Self {
            net,
            iface,
            sockets: SocketSet::new(storage),
            clock,
        }
    }

    /// One pass of the stack: receive, process, send; then publish and
    /// notify.
    fn poll(&mut self) {
        let now = Instant::from_micros(self.clock.micros() as i64);
        self.iface.poll(now, &mut *self.net, &mut self.sockets);
        self.net.flush();
    }

    /// Polls until `done` holds (true) or `timeout_us` pass (false).
    fn poll_until(&mut self, timeout_us: u64, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        let start = self.clock.micros();
        loop {
            self.poll();
            if done(self) {
                return true;
            }
            if self.clock.micros() - start > timeout_us {
                return false;
            }
        }
    }
}

struct PingTimes {
    min: u64,
    max: u64,
    sum: u64,
}

/// Resolves `peer` with ARP requests of our own (so no echo request's
/// round trip includes the resolution), then sends [`PINGS`] echo requests
/// one after the other; all must be answered.
fn ping(
    st: &mut Tcpip,
    h: SocketHandle,
    ip: Ipv4Cidr,
    peer: Ipv4Addr,
) -> Result<PingTimes, &'static str> {
    st.net.watch_arp(peer);
    let mac = st.net.mac;
    let mut resolved = false;
    for _ in 0..ARP_TRIES {
        let sent = st
            .net
            .send_raw(60, |frame| arp_request(frame, mac, ip.address(), peer));
        st.net.flush();
        if !sent {
            return Err("no transmit buffer for the ARP request");
        }
        if st.poll_until(1_000_000, |st| st.net.arp_reply().is_some()) {
            resolved = true;
            break;
        }
    }
    st.net.unwatch_arp();
    if !resolved {
        return Err("no ARP reply");
    }

    st.sockets
        .get_mut::<icmp::Socket>(h)
        .bind(icmp::Endpoint::Ident(PING_IDENT))
        .map_err(|_| "cannot bind the ICMP socket")?;
    ping_loop(st, h, peer)
}

fn ping_loop(st: &mut Tcpip, h: SocketHandle, peer: Ipv4Addr) -> Result<PingTimes, &'static str> {
    let caps = ChecksumCapabilities::default();
    let mut data = [0u8; PING_DATA];
    for (k, b) in data.iter_mut().enumerate() {
        *b = k as u8;
    }
    let mut times = PingTimes {
        min: u64::MAX,
        max: 0,
        sum: 0,
    };
    for seq_no in 0..PINGS {
        let request = Icmpv4Repr::EchoRequest {
            ident: PING_IDENT,
            seq_no,
            data: &data,
        };
        let socket = st.sockets.get_mut::<icmp::Socket>(h);
        let buf = socket
            .send(request.buffer_len(), IpAddress::Ipv4(peer))
            .map_err(|_| "cannot queue an echo request")?;
        request.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps);
        let sent = st.clock.micros();
        let mut answered = false;
        let replied = st.poll_until(PING_TIMEOUT_US, |st| {
            let socket = st.sockets.get_mut::<icmp::Socket>(h);
            while let Ok((payload, from)) = socket.recv() {
                let Ok(packet) = Icmpv4Packet::new_checked(payload) else {
                    continue;
                };
                if let Ok(Icmpv4Repr::EchoReply {
                    ident: PING_IDENT,
                    seq_no: got,
                    data: echoed,
                }) = Icmpv4Repr::parse(&packet, &caps)
                    && got == seq_no
                    && echoed == data
                    && from == IpAddress::Ipv4(peer)
                {
                    answered = true;
                }
            }
            answered
        });
        if !replied {
            return Err(match seq_no {
                0 => "no reply to echo request 0 within 1 s",
                1 => "no reply to echo request 1 within 1 s",
                2 => "no reply to echo request 2 within 1 s",
                3 => "no reply to echo request 3 within 1 s",
                _ => "no reply to echo request 4 within 1 s",
            });
        }
        let rtt = st.clock.micros() - sent;
        times.min = times.min.min(rtt);
        times.max = times.max.max(rtt);
        times.sum += rtt;
    }
    Ok(times)
}

/// The `net-tcp-send` stream: xorshift32 from 0x12345678, each state's 4
/// bytes little-endian.
struct XorShift {
    x: u32,
    word: [u8; 4],
    /// Bytes of `word` already emitted.
    used: usize,
}

impl XorShift {
    fn new() -> Self {
        Self {
            x: 0x1234_5678,
            word: [0; 4],
            used: 4,
        }
    }

    fn step(&mut self) -> [u8; 4] {
        let mut x = self.x;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.x = x;
        x.to_le_bytes()
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut rest = buf;
        // The rest of a word split by the previous call.
        while self.used < 4 && !rest.is_empty() {
            rest[0] = self.word[self.used];
            self.used += 1;
            rest = &mut rest[1..];
        }
        let mut words = rest.chunks_exact_mut(4);
        for w in &mut words {
            w.copy_from_slice(&self.step());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            self.word = self.step();
            let n = tail.len();
            tail.copy_from_slice(&self.word[..n]);
            self.used = n;
        }
    }
}

/// Connects to `peer:port`, sends `total` bytes of [`XorShift`], closes,
/// and waits for everything (FIN included) to be acknowledged. Returns the
/// bytes and the microseconds from established to acknowledged.
fn tcp_send(
    st: &mut Tcpip,
    h: SocketHandle,
    peer: Ipv4Addr,
    port: u16,
    total: u64,
) -> Result<(u64, u64), &'static str> {
    let result = tcp_send_on(st, h, peer, port, total);
    // Done with it either way (in TIME-WAIT at best): free it for reuse.
    st.sockets.get_mut::<tcp::Socket>(h).abort();
    st.poll();
    result
}

fn tcp_send_on(
    st: &mut Tcpip,
    h: SocketHandle,
    peer: Ipv4Addr,
    port: u16,
    total: u64,
) -> Result<(u64, u64), &'static str> {
    let local_port = 49152 + (cpu::rdtsc() % 16384) as u16;
    st.sockets
        .get_mut::<tcp::Socket>(h)
        .connect(
            st.iface.context(),
            (IpAddress::Ipv4(peer), port),
            local_port,
        )
        .map_err(|_| "cannot connect the socket")?;
    let mut refused = false;
    let established = st.poll_until(CONNECT_TIMEOUT_US, |st| {
        let s = st.sockets.get::<tcp::Socket>(h);
        refused = s.state() == tcp::State::Closed;
        refused || s.state() == tcp::State::Established
    });
    if refused {
        return Err("connection refused (reset)");
    }
    if !established {
        return Err("not connected within 10 s");
    }

    let start = st.clock.micros();
    let mut stream = XorShift::new();
    let (mut queued, mut acked) = (0u64, 0u64);
    let mut closed = false;
    let mut last_progress = start;
    loop {
        let socket = st.sockets.get_mut::<tcp::Socket>(h);
        let state = socket.state();
        let now_acked = queued - socket.send_queue() as u64;
        if now_acked != acked {
            acked = now_acked;
            last_progress = st.clock.micros();
        }
        if state == tcp::State::Closed {
            // Our FIN acknowledged in LAST-ACK (the peer closed first), or
            // a reset (which leaves unacknowledged data queued).
            if closed && acked == total {
                break;
            }
            return Err("connection reset before all data was acknowledged");
        }
        if closed && acked == total && matches!(state, tcp::State::FinWait2 | tcp::State::TimeWait)
        {
            break;
        }
        if queued < total && socket.can_send() {
            let room = total - queued;
            if let Ok(n) = socket.send(|buf| {
                let n = (buf.len() as u64).min(room) as usize;
                stream.fill(&mut buf[..n]);
                (n, n)
            }) {
                queued += n as u64;
            }
        }
        if queued == total && !closed {
            socket.close();
            closed = true;
        }
        st.poll();
        if st.clock.micros() - last_progress > STALL_TIMEOUT_US {
            return Err("stalled: nothing acknowledged for 10 s");
        }
    }
    Ok((acked, st.clock.micros() - start))
}

/// Listens on `port`, accepts one connection, echoes every byte until the
/// peer closes, closes, and waits for the echo to be acknowledged. Returns
/// the bytes echoed.
fn tcp_echo(st: &mut Tcpip, h: SocketHandle, port: u16) -> Result<u64, &'static str> {
    let socket = st.sockets.get_mut::<tcp::Socket>(h);
    socket.set_nagle_enabled(false);
    socket.listen(port).map_err(|_| "cannot listen")?;
    let result = tcp_echo_on(st, h);
    st.sockets.get_mut::<tcp::Socket>(h).abort();
    st.poll();
    result
}

fn tcp_echo_on(st: &mut Tcpip, h: SocketHandle) -> Result<u64, &'static str> {
    let accepted = st.poll_until(ACCEPT_TIMEOUT_US, |st| {
        st.sockets.get::<tcp::Socket>(h).state() == tcp::State::Established
    });
    if !accepted {
        return Err("no connection within 20 s");
    }
    let mut chunk = [0u8; ECHO_CHUNK];
    let (mut echoed, mut acked) = (0u64, 0u64);
    let mut closed = false;
    let mut last_progress = st.clock.micros();
    loop {
        let socket = st.sockets.get_mut::<tcp::Socket>(h);
        let state = socket.state();
        let now_acked = echoed - socket.send_queue() as u64;
        if now_acked != acked {
            acked = now_acked;
            last_progress = st.clock.micros();
        }
        if state == tcp::State::Closed {
            // Our FIN acknowledged in LAST-ACK, or a reset (which leaves
            // unacknowledged data queued).
            if closed && acked == echoed {
                break;
            }
            return Err("connection reset before the echo was acknowledged");
        }
        if closed && acked == echoed && state == tcp::State::TimeWait {
            break;
        }
        while socket.can_recv() {
            let room = socket.send_capacity() - socket.send_queue();
            if room == 0 {
                break;
            }
            let n = socket
                .recv_slice(&mut chunk[..room.min(ECHO_CHUNK)])
                .map_err(|_| "receive failed")?;
            if n == 0 {
                break;
            }
            let sent = socket
                .send_slice(&chunk[..n])
                .map_err(|_| "the send half closed while echoing")?;
            if sent != n {
                return Err("the send buffer took less than it had room for");
            }
            echoed += n as u64;
            last_progress = st.clock.micros();
        }
        // The peer closed and everything it sent is echoed: close too.
        if !closed && !socket.may_recv() && socket.recv_queue() == 0 {
            socket.close();
            closed = true;
        }
        st.poll();
        if st.clock.micros() - last_progress > STALL_TIMEOUT_US {
            return Err("stalled: no data and nothing acknowledged for 10 s");
        }
    }
    Ok(echoed)
}
