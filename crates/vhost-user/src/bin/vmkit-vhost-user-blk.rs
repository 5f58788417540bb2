//! `vmkit-vhost-user-blk --socket PATH --disk SPEC`: serves a disk image
//! as a vhost-user virtio-blk device to one front end (QEMU's
//! `vhost-user-blk-pci`, for one), and exits once it disconnects, after
//! flushing the image and closing it cleanly.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use log::{error, info};
use vmkit_blk::DiskId;
use vmkit_disk::{DiskImage, DiskSpec, open_disk};
use vmkit_vhost_user::VhostUserBlk;

mod common;

const NAME: &str = "vmkit-vhost-user-blk";

/// A vhost-user virtio-blk back end over a raw or qcow2 disk image.
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
        help = "The disk image: PATH[,format=raw|qcow2][,readonly=on][,backing=on]"
    )]
    disk: DiskSpec,
    /// The serial number the guest reads (at most 20 bytes); by default the
    /// image's file name.
    #[arg(long)]
    serial: Option<String>,
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let id = match &args.serial {
        Some(serial) => DiskId::new(serial)?,
        None => DiskId::from_path(&args.disk.path),
    };
    let disk: Arc<dyn DiskImage> = open_disk(&args.disk)?.into();
    info!(
        "{}: {} bytes{}",
        args.disk,
        disk.size(),
        if disk.is_read_only() {
            ", read-only"
        } else {
            ""
        }
    );
    VhostUserBlk::new(disk, id).serve(&args.socket)?;
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
