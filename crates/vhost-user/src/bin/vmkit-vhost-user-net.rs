//! `vmkit-vhost-user-net --socket PATH --net tap=NAME[,mac=..][,bridge=BR]`:
//! serves a tap device as a vhost-user virtio-net device to one front end
//! (QEMU's `-netdev vhost-user`, for one), and exits once it disconnects.
//!
//! The tap is created if it does not exist (which needs CAP_NET_ADMIN),
//! attached to the bridge if one is named, and brought up. The MAC address
//! is what the back end's configuration space holds; QEMU gives the guest
//! its own (`-device virtio-net-pci,mac=...`) instead.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use log::{error, info};
use vmkit_net::NetSpec;
use vmkit_vhost_user::VhostUserNet;

mod common;

const NAME: &str = "vmkit-vhost-user-net";

/// A vhost-user virtio-net back end over a Linux tap device.
#[derive(Parser, Debug)]
#[command(name = NAME, version)]
struct Args {
    /// The Unix socket to listen on for the front end (a stale socket is
    /// replaced; the path is removed once the front end has connected).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    #[arg(
        long,
        value_name = "SPEC",
        help = "The NIC: tap=NAME[,mac=52:54:00:12:34:56][,bridge=BR]"
    )]
    net: NetSpec,
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let tap = args.net.open_tap()?;
    let mac = args.net.mac_or_random()?;
    let backend = VhostUserNet::new(tap, mac)?;
    info!("tap {} up, MAC address {mac}", backend.tap().name());
    backend.serve(&args.socket)?;
    Ok(())
}

fn main() -> ExitCode {
    common::init_logging(NAME);
    let args = match common::parse::<Args>(NAME) {
        Ok(args) => args,
        Err(code) => return code,
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
