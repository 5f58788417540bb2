//! virtio-net end to end: the minimal guest on a tap attached to a bridge,
//! inside a network namespace this test creates with the library (no `ip`
//! commands); it pings the bridge's address and moves a few MiB over TCP in
//! both directions, checked byte for byte.
//!
//! The namespace is private to one thread of this test (network namespaces
//! are per thread) and to the VMM it spawns; it disappears with them, also
//! when the test fails. Only addresses inside it are used.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{host_bridge, in_new_netns, kvm_present, tun_present, vmm_path};

const HOST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const SEND_PORT: u16 = 5001;
const ECHO_PORT: u16 = 5002;
const MIB: usize = 4;

/// The guest's tcp-send stream: xorshift32 from 0x12345678, 4 bytes LE a step.
fn guest_stream(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    let mut out = Vec::with_capacity(len + 4);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Kills the VMM if the test ends early, so the namespace goes with it.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn guest_pings_the_bridge_and_moves_tcp_data_both_ways() {
    if !kvm_present() {
        return;
    }
    if !tun_present() {
        return;
    }
    let vmm = vmm_path();
    let (stdout, stderr, code) = in_new_netns(move || {
        host_bridge(HOST);

        let sender = TcpListener::bind((HOST, SEND_PORT)).expect("listen for the guest");
        let receive = thread::spawn(move || {
            let (mut s, _) = sender.accept().expect("accept the guest's connection");
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("read the guest's stream");
            got
        });

        let child = Command::new(vmm)
            .args([
                "-m",
                "128",
                "--stats",
                "--net",
                "tap=tap0,bridge=br0",
                "--cmdline",
            ])
            .arg(format!(
                "vmkit.ip={GUEST}/24 vmkit.peer={HOST} vmkit.tcp-send={SEND_PORT}:{MIB} \
                 vmkit.tcp-echo={ECHO_PORT}"
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the vmm");
        let mut child = KillOnDrop(child);

        // Host -> guest -> host: the guest echoes what we send.
        let payload: Vec<u8> = (0..MIB << 20).map(|i| (i * 7 + i / 4093) as u8).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut echo = loop {
            match TcpStream::connect_timeout(
                &SocketAddr::from((GUEST, ECHO_PORT)),
                Duration::from_secs(1),
            ) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot reach the guest's echo server: {e}"),
            }
        };
        echo.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut reader = echo.try_clone().unwrap();
        let expected = payload.len();
        let echoed = thread::spawn(move || {
            let mut got = vec![0u8; expected];
            reader.read_exact(&mut got).map(|_| got)
        });
        echo.write_all(&payload).expect("send to the guest");
        let echoed = echoed.join().unwrap().expect("read the echo back");
        drop(echo);
        assert!(echoed == payload, "the echo differs from what was sent");

        let sent = receive.join().expect("receiver thread");
        assert_eq!(
            sent.len(),
            MIB << 20,
            "the guest's stream has the wrong length"
        );
        assert!(
            sent == guest_stream(MIB << 20),
            "the guest's stream differs"
        );

        let out = child.0.stdout.take().map(|mut o| {
            let mut s = String::new();
            let _ = o.read_to_string(&mut s);
            s
        });
        let err = child.0.stderr.take().map(|mut e| {
            let mut s = String::new();
            let _ = e.read_to_string(&mut s);
            s
        });
        let code = child.0.wait().ok().and_then(|s| s.code());
        (out.unwrap_or_default(), err.unwrap_or_default(), code)
    });
    let run = format!("exit {code:?}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}");
    assert_eq!(code, Some(0), "{run}");
    assert!(!stdout.contains("FAIL"), "{run}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&format!("ok net-ping: {HOST} 5/5 replies"))),
        "{run}"
    );
    assert!(
        stdout.contains(&format!("ok net-tcp-send: {} bytes", MIB << 20)),
        "{run}"
    );
    assert!(
        stdout.contains(&format!(
            "ok net-tcp-echo: port {ECHO_PORT} echoed {} bytes",
            MIB << 20
        )),
        "{run}"
    );
}
