//! The reset line of the i8042 keyboard controller, on vm-superio's
//! [`vm_superio::I8042Device`].

use vm_superio::I8042Device;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::log_limit::DeviceLogLimits;
use crate::trigger::EventFdTrigger;

/// First I/O port of the i8042: the data port (0x60).
pub const I8042_PORT: u16 = 0x60;
/// Number of I/O ports from [`I8042_PORT`] up to and including the command
/// and status port (0x64), which is offset 4.
///
/// Offsets 1 to 3 (ports 0x61-0x63) are not i8042 registers; port 0x61
/// (system control port B) is served by the in-kernel PIT when the VM has
/// one, so those accesses do not reach this device.
pub const I8042_PORT_LEN: u64 = 5;
/// The command that pulses the CPU reset line.
pub const I8042_CMD_RESET_CPU: u8 = 0xfe;

/// Offset of the command port from [`I8042_PORT`].
const COMMAND_OFFSET: u64 = 4;

/// An i8042 controller that emulates only the CPU reset command: writing
/// [`I8042_CMD_RESET_CPU`] to the command port (0x64) signals the reset
/// [`EventFd`]. Every register reads as 0, which Linux takes as "no
/// keyboard controller data pending".
///
/// Insert it on the port-I/O bus at [`I8042_PORT`], [`I8042_PORT_LEN`]
/// ports. Accesses wider than a byte or past the command port are ignored
/// (reads return `0xff` bytes) with a warning; those warnings, the reset
/// requests and failures to signal the reset event are logged through
/// [`LogLimiter`](crate::LogLimiter)s, so a guest repeating them cannot
/// flood the log.
pub struct I8042 {
    device: I8042Device<EventFdTrigger>,
    log: DeviceLogLimits,
}

impl I8042 {
    /// Creates the controller; `reset_evt` is signalled when the guest
    /// asks for a CPU reset.
    pub fn new(reset_evt: EventFd) -> Self {
        I8042 {
            device: I8042Device::new(EventFdTrigger(reset_evt)),
            log: DeviceLogLimits::default(),
        }
    }

    /// The event signalled when the guest asks for a CPU reset.
    pub fn reset_evt(&self) -> &EventFd {
        &self.device.reset_evt().0
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) if u64::from(offset) < I8042_PORT_LEN => {
                *byte = self.device.read(offset)
            }
            (_, data) => {
                if let Some(n) = self.log.access.tick() {
                    log::warn!(
                        "i8042: ignored {}-byte read at offset {offset:#x} \
                         ({n} bad accesses so far)",
                        data.len()
                    );
                }
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset8), &[value]) if offset < I8042_PORT_LEN => {
                if offset == COMMAND_OFFSET
                    && value == I8042_CMD_RESET_CPU
                    && let Some(n) = self.log.request.tick()
                {
                    log::info!("i8042: the guest asked for a CPU reset ({n} resets so far)");
                }
                if let Err(e) = self.device.write(offset8, value)
                    && let Some(n) = self.log.host.tick()
                {
                    log::error!(
                        "i8042: cannot signal the reset event: {e} ({n} host errors so far)"
                    );
                }
            }
            _ => {
                if let Some(n) = self.log.access.tick() {
                    log::warn!(
                        "i8042: ignored {}-byte write at offset {offset:#x} \
                         ({n} bad accesses so far)",
                        data.len()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{LogLine, capture_log, limited_lines, warnings};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn i8042() -> I8042 {
        I8042::new(EventFd::new(EFD_NONBLOCK).unwrap())
    }

    #[test]
    fn reset_command_signals_the_event() {
        let mut dev = i8042();
        assert!(dev.reset_evt().read().is_err(), "not signalled yet");
        dev.write(COMMAND_OFFSET, &[I8042_CMD_RESET_CPU]);
        assert_eq!(dev.reset_evt().read().unwrap(), 1);
    }

    #[test]
    fn other_writes_do_not_reset() {
        let mut dev = i8042();
        // 0xfe to the data port, other commands, wide writes of 0xfe.
        dev.write(0, &[I8042_CMD_RESET_CPU]);
        dev.write(COMMAND_OFFSET, &[0xad]);
        dev.write(COMMAND_OFFSET, &[0xfe, 0x00]);
        dev.write(COMMAND_OFFSET + 1, &[I8042_CMD_RESET_CPU]);
        assert!(dev.reset_evt().read().is_err());
    }

    #[test]
    fn reads() {
        let mut dev = i8042();
        let mut byte = [0xaa];
        dev.read(0, &mut byte);
        assert_eq!(byte, [0]);
        dev.read(COMMAND_OFFSET, &mut byte);
        assert_eq!(byte, [0]);
        let mut wide = [0u8; 2];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
    }

    #[test]
    fn a_flood_of_bad_accesses_logs_a_few_lines() {
        const ACCESSES: u64 = 100_000;
        let mut dev = i8042();
        let ((), lines) = capture_log(|| {
            for i in 0..ACCESSES {
                if i % 2 == 0 {
                    dev.write(COMMAND_OFFSET, &[I8042_CMD_RESET_CPU, 0]);
                } else {
                    let mut wide = [0u8; 4];
                    dev.read(0, &mut wide);
                    assert_eq!(wide, [0xff; 4]);
                }
            }
        });
        let lines = warnings(&lines);
        assert_eq!(lines.len(), 23, "{lines:#?}");
        assert_eq!(lines.len(), limited_lines(ACCESSES));
        assert_eq!(
            lines[0],
            "i8042: ignored 2-byte write at offset 0x4 (1 bad accesses so far)"
        );
        assert_eq!(
            lines[1],
            "i8042: ignored 4-byte read at offset 0x0 (2 bad accesses so far)"
        );
        assert!(
            lines[22].ends_with("(65536 bad accesses so far)"),
            "{}",
            lines[22]
        );
        assert!(dev.reset_evt().read().is_err(), "no reset");

        // The flood hides no reset request.
        let ((), lines) = capture_log(|| dev.write(COMMAND_OFFSET, &[I8042_CMD_RESET_CPU]));
        assert_eq!(
            lines,
            [LogLine {
                level: log::Level::Info,
                message: "i8042: the guest asked for a CPU reset (1 resets so far)".into(),
            }]
        );
        assert_eq!(dev.reset_evt().read().unwrap(), 1);
    }

    #[test]
    fn a_flood_of_reset_requests_logs_a_few_lines() {
        const RESETS: u64 = 100_000;
        let mut dev = i8042();
        let ((), lines) = capture_log(|| {
            for _ in 0..RESETS {
                dev.write(COMMAND_OFFSET, &[I8042_CMD_RESET_CPU]);
            }
        });
        // Every request signals the event; few are logged.
        assert_eq!(dev.reset_evt().read().unwrap(), RESETS);
        assert_eq!(lines.len(), limited_lines(RESETS), "{lines:#?}");
        assert!(lines.iter().all(|l| l.level == log::Level::Info));
        assert!(lines[22].message.ends_with("(65536 resets so far)"));
    }

    #[test]
    fn reset_through_the_bus_at_port_0x64() {
        use crate::Bus;
        use std::sync::{Arc, Mutex};

        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(i8042()));
        bus.insert(dev.clone(), I8042_PORT.into(), I8042_PORT_LEN)
            .unwrap();
        assert!(bus.write(0x64, &[I8042_CMD_RESET_CPU]));
        assert_eq!(dev.lock().unwrap().reset_evt().read().unwrap(), 1);
        assert!(!bus.write(0x65, &[I8042_CMD_RESET_CPU]));
    }
}
