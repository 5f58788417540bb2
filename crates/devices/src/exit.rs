//! The exit device: the guest writes a status code to an I/O port and the
//! VM ends, like QEMU's `isa-debug-exit`.

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::log_limit::DeviceLogLimits;

/// The I/O port of the exit device (the default of QEMU's `isa-debug-exit`).
pub const EXIT_PORT: u16 = 0xf4;
/// Number of I/O ports of the exit device.
pub const EXIT_PORT_LEN: u64 = 4;

/// Records the status code the guest reports and signals an [`EventFd`] so
/// that the VMM stops the VM.
///
/// A 1-, 2- or 4-byte write at offset 0 stores the value (little endian,
/// zero-extended) as the guest's status, replacing any earlier one, and
/// signals the event. Unlike QEMU, the value is kept as written: the VMM
/// chooses how it maps to its own exit code. Writes at other offsets or of
/// other sizes are ignored with a warning; reads return `0xff` bytes.
/// Those warnings, the status reports and failures to signal the event go
/// through [`LogLimiter`](crate::LogLimiter)s, so a guest repeating them
/// cannot flood the log.
#[derive(Debug)]
pub struct ExitDevice {
    exit_evt: EventFd,
    status: Option<u32>,
    log: DeviceLogLimits,
}

impl ExitDevice {
    /// Creates the device; `exit_evt` is signalled when the guest reports
    /// a status.
    pub fn new(exit_evt: EventFd) -> Self {
        ExitDevice {
            exit_evt,
            status: None,
            log: DeviceLogLimits::default(),
        }
    }

    /// The status the guest last reported, if it reported one.
    pub fn status(&self) -> Option<u32> {
        self.status
    }

    /// The event signalled when the guest reports a status.
    pub fn exit_evt(&self) -> &EventFd {
        &self.exit_evt
    }
}

impl BusDevice for ExitDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || !matches!(data.len(), 1 | 2 | 4) {
            if let Some(n) = self.log.access.tick() {
                log::warn!(
                    "exit device: ignored {}-byte write at offset {offset:#x} \
                     ({n} bad accesses so far)",
                    data.len()
                );
            }
            return;
        }
        let mut bytes = [0u8; 4];
        bytes[..data.len()].copy_from_slice(data);
        let status = u32::from_le_bytes(bytes);
        if let Some(n) = self.log.request.tick() {
            log::info!("exit device: the guest reported status {status:#x} ({n} reports so far)");
        }
        self.status = Some(status);
        if let Err(e) = self.exit_evt.write(1)
            && let Some(n) = self.log.host.tick()
        {
            log::error!("exit device: cannot signal the exit event: {e} ({n} host errors so far)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{capture_log, limited_lines, warnings};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn exit_device() -> ExitDevice {
        ExitDevice::new(EventFd::new(EFD_NONBLOCK).unwrap())
    }

    #[test]
    fn no_status_before_a_write() {
        let dev = exit_device();
        assert_eq!(dev.status(), None);
        assert!(dev.exit_evt().read().is_err());
    }

    #[test]
    fn writes_of_1_2_4_bytes_store_the_status() {
        for (data, expected) in [
            (&[0x31][..], 0x31),
            (&[0x34, 0x12][..], 0x1234),
            (&[0x78, 0x56, 0x34, 0x12][..], 0x1234_5678),
            (&[0x00][..], 0),
        ] {
            let mut dev = exit_device();
            dev.write(0, data);
            assert_eq!(dev.status(), Some(expected), "{data:x?}");
            assert_eq!(dev.exit_evt().read().unwrap(), 1);
        }
    }

    #[test]
    fn later_write_replaces_the_status() {
        let mut dev = exit_device();
        dev.write(0, &[1]);
        dev.write(0, &[2, 0]);
        assert_eq!(dev.status(), Some(2));
        assert_eq!(dev.exit_evt().read().unwrap(), 2);
    }

    #[test]
    fn other_offsets_and_sizes_are_ignored() {
        let mut dev = exit_device();
        dev.write(1, &[1]);
        dev.write(2, &[1, 0]);
        dev.write(0, &[1, 2, 3]);
        dev.write(0, &[1; 8]);
        dev.write(0, &[]);
        assert_eq!(dev.status(), None);
        assert!(dev.exit_evt().read().is_err());
    }

    #[test]
    fn a_flood_of_bad_writes_logs_a_few_lines() {
        const WRITES: u64 = 100_000;
        let mut dev = exit_device();
        let ((), lines) = capture_log(|| {
            for i in 0..WRITES {
                if i % 2 == 0 {
                    dev.write(1, &[1]);
                } else {
                    dev.write(0, &[1, 2, 3]);
                }
            }
        });
        let lines = warnings(&lines);
        assert_eq!(lines.len(), 23, "{lines:#?}");
        assert_eq!(lines.len(), limited_lines(WRITES));
        assert_eq!(
            lines[..2],
            [
                "exit device: ignored 1-byte write at offset 0x1 (1 bad accesses so far)",
                "exit device: ignored 3-byte write at offset 0x0 (2 bad accesses so far)",
            ]
        );
        assert!(lines[22].ends_with("(65536 bad accesses so far)"));
        assert_eq!(dev.status(), None);

        // The flood hides no status report.
        let ((), lines) = capture_log(|| dev.write(0, &[7]));
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert_eq!(
            lines[0].message,
            "exit device: the guest reported status 0x7 (1 reports so far)"
        );
        assert_eq!(dev.status(), Some(7));
    }

    #[test]
    fn a_flood_of_status_reports_logs_a_few_lines() {
        const REPORTS: u64 = 100_000;
        let mut dev = exit_device();
        let ((), lines) = capture_log(|| {
            for i in 0..REPORTS {
                dev.write(0, &(i as u32).to_le_bytes());
            }
        });
        assert_eq!(dev.status(), Some(REPORTS as u32 - 1));
        assert_eq!(dev.exit_evt().read().unwrap(), REPORTS);
        assert_eq!(lines.len(), limited_lines(REPORTS), "{lines:#?}");
        assert_eq!(
            lines[10].message,
            "exit device: the guest reported status 0xf (16 reports so far)"
        );
    }

    #[test]
    fn reads_return_all_ones() {
        let mut dev = exit_device();
        dev.write(0, &[5]);
        let mut data = [0u8; 4];
        dev.read(0, &mut data);
        assert_eq!(data, [0xff; 4]);
        let mut one = [0u8];
        dev.read(3, &mut one);
        assert_eq!(one, [0xff]);
    }

    #[test]
    fn exit_through_the_port_bus() {
        use crate::Bus;
        use std::sync::{Arc, Mutex};

        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(exit_device()));
        bus.insert(dev.clone(), EXIT_PORT.into(), EXIT_PORT_LEN)
            .unwrap();
        // `out 0xf4, eax` with eax = 3.
        assert!(bus.write(0xf4, &3u32.to_le_bytes()));
        let dev = dev.lock().unwrap();
        assert_eq!(dev.status(), Some(3));
        assert_eq!(dev.exit_evt().read().unwrap(), 1);
    }
}
