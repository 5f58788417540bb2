//! The ACPI power-management device of a hardware-reduced platform: the
//! FADT's sleep control, sleep status and reset registers, so that a
//! guest's ACPI power-off or reboot ends the VM.
//!
//! Three 8-bit I/O registers from [`ACPI_PM_PORT`]:
//!
//! | offset | register | write | read |
//! |---|---|---|---|
//! | 0 | sleep control | `SLP_TYPx << 2 \| SLP_EN` (bit 5): with [`S5_SLEEP_TYPE`], power off | 0 |
//! | 1 | sleep status | ignored | 0 (`WAK_STS` clear) |
//! | 2 | reset | [`ACPI_RESET_VALUE`]: reset | 0 |
//!
//! The sleep type values are the ones the DSDT's `\_S5` package gives
//! (Linux's `acpi_hw_extended_sleep` writes `SLP_TYP << 2 | SLP_EN`). Other
//! sleep states (S1-S4) are not supported: they are logged and ignored.
//! Cloud Hypervisor uses the same port and encoding.

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::log_limit::DeviceLogLimits;

/// First I/O port of the device.
pub const ACPI_PM_PORT: u16 = 0x600;
/// Number of I/O ports.
pub const ACPI_PM_PORT_LEN: u64 = 3;
/// Offset of the sleep control register.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// Offset of the reset register.
pub const RESET_OFFSET: u64 = 2;
/// The value that resets the machine when written to the reset register.
pub const ACPI_RESET_VALUE: u8 = 0xfe;
/// `SLP_TYPx` of S5 (soft off), as in the DSDT's `\_S5` package.
pub const S5_SLEEP_TYPE: u8 = 5;
/// Sleep control: `SLP_EN`.
pub const SLP_EN: u8 = 1 << 5;
/// Sleep control: position of `SLP_TYPx` (bits 4:2).
pub const SLP_TYP_SHIFT: u8 = 2;
/// Sleep control: mask of `SLP_TYPx` once shifted down.
pub const SLP_TYP_MASK: u8 = 0x7;

/// Signals `power_off_evt` when the guest enters S5 and `reset_evt` when it
/// writes [`ACPI_RESET_VALUE`] to the reset register.
///
/// Insert it on the port-I/O bus at [`ACPI_PM_PORT`], [`ACPI_PM_PORT_LEN`]
/// ports. Accesses wider than a byte, and unknown values, are logged and
/// ignored. What the guest can repeat at will (bad accesses, power-off and
/// reset requests, failures to signal their events) is logged through
/// [`LogLimiter`](crate::LogLimiter)s, so it cannot flood the log.
#[derive(Debug)]
pub struct AcpiPmDevice {
    power_off_evt: EventFd,
    reset_evt: EventFd,
    log: DeviceLogLimits,
}

impl AcpiPmDevice {
    /// Creates the device.
    pub fn new(power_off_evt: EventFd, reset_evt: EventFd) -> Self {
        AcpiPmDevice {
            power_off_evt,
            reset_evt,
            log: DeviceLogLimits::default(),
        }
    }

    /// The event signalled when the guest powers off.
    pub fn power_off_evt(&self) -> &EventFd {
        &self.power_off_evt
    }

    /// The event signalled when the guest resets.
    pub fn reset_evt(&self) -> &EventFd {
        &self.reset_evt
    }

    fn signal(&self, evt: &EventFd, what: &str) {
        if let Err(e) = evt.write(1)
            && let Some(n) = self.log.host.tick()
        {
            log::error!("ACPI PM: cannot signal the {what} event: {e} ({n} host errors so far)");
        }
    }
}

impl BusDevice for AcpiPmDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset >= ACPI_PM_PORT_LEN {
            if let Some(n) = self.log.access.tick() {
                log::warn!(
                    "ACPI PM: ignored {}-byte read at offset {offset:#x} ({n} bad accesses so far)",
                    data.len()
                );
            }
            data.fill(0xff);
            return;
        }
        data[0] = 0;
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let &[value] = data else {
            if let Some(n) = self.log.access.tick() {
                log::warn!(
                    "ACPI PM: ignored {}-byte write at offset {offset:#x} ({n} bad accesses so far)",
                    data.len()
                );
            }
            return;
        };
        match offset {
            SLEEP_CONTROL_OFFSET if value & SLP_EN != 0 => {
                let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if sleep_type == S5_SLEEP_TYPE {
                    if let Some(n) = self.log.request.tick() {
                        log::info!(
                            "ACPI PM: the guest powered off (S5) \
                             ({n} power-off and reset requests so far)"
                        );
                    }
                    self.signal(&self.power_off_evt, "power-off");
                } else if let Some(n) = self.log.access.tick() {
                    log::warn!(
                        "ACPI PM: unsupported sleep type {sleep_type} ignored \
                         ({n} bad accesses so far)"
                    );
                }
            }
            SLEEP_CONTROL_OFFSET | SLEEP_STATUS_OFFSET => {}
            RESET_OFFSET if value == ACPI_RESET_VALUE => {
                if let Some(n) = self.log.request.tick() {
                    log::info!(
                        "ACPI PM: the guest reset the machine \
                         ({n} power-off and reset requests so far)"
                    );
                }
                self.signal(&self.reset_evt, "reset");
            }
            _ => {
                if let Some(n) = self.log.access.tick() {
                    log::warn!(
                        "ACPI PM: ignored write of {value:#x} at offset {offset:#x} \
                         ({n} bad accesses so far)"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{capture_log, limited_lines, warnings};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn device() -> AcpiPmDevice {
        AcpiPmDevice::new(
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        )
    }

    fn signalled(evt: &EventFd) -> bool {
        evt.read().is_ok()
    }

    #[test]
    fn s5_powers_off() {
        let mut dev = device();
        // What Linux writes for _S5 = {5, ...}: 5 << 2 | SLP_EN.
        dev.write(SLEEP_CONTROL_OFFSET, &[0x34]);
        assert!(signalled(dev.power_off_evt()));
        assert!(!signalled(dev.reset_evt()));
    }

    #[test]
    fn other_sleep_writes_do_nothing() {
        let mut dev = device();
        for value in [
            5 << 2,            // S5 without SLP_EN
            (3 << 2) | SLP_EN, // S3
            SLP_EN,            // S0
            !(7u8 << 2),       // SLP_EN with type 0
        ] {
            dev.write(SLEEP_CONTROL_OFFSET, &[value]);
        }
        dev.write(SLEEP_STATUS_OFFSET, &[0x34]);
        dev.write(SLEEP_CONTROL_OFFSET, &[0x34, 0]); // 2-byte write
        dev.write(3, &[0x34]);
        assert!(!signalled(dev.power_off_evt()));
        assert!(!signalled(dev.reset_evt()));
    }

    #[test]
    fn reset_value_resets() {
        let mut dev = device();
        dev.write(RESET_OFFSET, &[0x01]);
        dev.write(RESET_OFFSET, &[0xfe, 0x00]);
        dev.write(SLEEP_CONTROL_OFFSET, &[ACPI_RESET_VALUE & !SLP_EN]);
        assert!(!signalled(dev.reset_evt()));
        dev.write(RESET_OFFSET, &[ACPI_RESET_VALUE]);
        assert!(signalled(dev.reset_evt()));
        assert!(!signalled(dev.power_off_evt()));
    }

    #[test]
    fn reads() {
        let mut dev = device();
        for offset in 0..ACPI_PM_PORT_LEN {
            let mut b = [0xaa];
            dev.read(offset, &mut b);
            assert_eq!(b, [0], "offset {offset}");
        }
        let mut wide = [0u8; 2];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
    }

    #[test]
    fn a_flood_of_bad_accesses_logs_a_few_lines() {
        const ACCESSES: u64 = 100_000;
        let mut dev = device();
        let ((), lines) = capture_log(|| {
            for i in 0..ACCESSES {
                match i % 4 {
                    0 => dev.write(RESET_OFFSET, &[0x01]),
                    1 => dev.write(SLEEP_CONTROL_OFFSET, &[(3 << SLP_TYP_SHIFT) | SLP_EN]),
                    2 => dev.write(SLEEP_CONTROL_OFFSET, &[0x34, 0]),
                    _ => dev.read(ACPI_PM_PORT_LEN, &mut [0u8]),
                }
            }
        });
        let lines = warnings(&lines);
        assert_eq!(lines.len(), 23, "{lines:#?}");
        assert_eq!(lines.len(), limited_lines(ACCESSES));
        assert_eq!(
            lines[..4],
            [
                "ACPI PM: ignored write of 0x1 at offset 0x2 (1 bad accesses so far)",
                "ACPI PM: unsupported sleep type 3 ignored (2 bad accesses so far)",
                "ACPI PM: ignored 2-byte write at offset 0x0 (3 bad accesses so far)",
                "ACPI PM: ignored 1-byte read at offset 0x3 (4 bad accesses so far)",
            ]
        );
        assert!(lines[22].ends_with("(65536 bad accesses so far)"));
        assert!(!signalled(dev.power_off_evt()));
        assert!(!signalled(dev.reset_evt()));

        // The flood hides no power-off.
        let ((), lines) = capture_log(|| dev.write(SLEEP_CONTROL_OFFSET, &[0x34]));
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert_eq!(lines[0].level, log::Level::Info);
        assert_eq!(
            lines[0].message,
            "ACPI PM: the guest powered off (S5) (1 power-off and reset requests so far)"
        );
        assert!(signalled(dev.power_off_evt()));
    }

    #[test]
    fn a_flood_of_resets_logs_a_few_lines() {
        const RESETS: u64 = 100_000;
        let mut dev = device();
        let ((), lines) = capture_log(|| {
            for _ in 0..RESETS {
                dev.write(RESET_OFFSET, &[ACPI_RESET_VALUE]);
            }
        });
        assert_eq!(dev.reset_evt().read().unwrap(), RESETS);
        assert_eq!(lines.len(), limited_lines(RESETS), "{lines:#?}");
        assert!(lines.iter().all(|l| {
            l.message
                .starts_with("ACPI PM: the guest reset the machine (")
        }));
    }

    #[test]
    fn power_off_through_the_port_bus() {
        use crate::Bus;
        use std::sync::{Arc, Mutex};

        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(device()));
        bus.insert(dev.clone(), ACPI_PM_PORT.into(), ACPI_PM_PORT_LEN)
            .unwrap();
        assert!(bus.write(0x602, &[ACPI_RESET_VALUE]));
        assert!(bus.write(0x600, &[(S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN]));
        assert!(!bus.write(0x603, &[0]));
        let dev = dev.lock().unwrap();
        assert!(signalled(dev.power_off_evt()));
        assert!(signalled(dev.reset_evt()));
    }
}
