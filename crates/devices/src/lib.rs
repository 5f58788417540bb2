//! Port-I/O and MMIO buses, serial console, i8042 reset line, the ACPI
//! power-off/reset registers and the exit device.
//!
//! A [`Bus`] maps address ranges to [`BusDevice`]s; a VMM keeps one for
//! I/O ports and one for MMIO, and dispatches the vCPUs' I/O and MMIO exits
//! to them. The legacy devices are [`Serial`] (COM1, a 16550A UART from
//! vm-superio), [`I8042`] (only its CPU reset command), [`AcpiPmDevice`]
//! (the FADT's sleep control and reset registers: ACPI power-off and
//! reboot) and [`ExitDevice`] (the guest reports a status code and ends the
//! VM). Devices signal the VMM
//! (interrupts, reset, exit) through `EventFd`s; this crate does not know
//! the hypervisor.
//!
//! The guest can repeat any access at will, so every line a device logs
//! about one goes through a [`LogLimiter`] (the first ten of each kind,
//! then one per power of two), which virtio devices use as well.
//!
//! # Example
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use vmkit_devices::{Bus, COM1_PORT, EXIT_PORT, EXIT_PORT_LEN, ExitDevice, SERIAL_PORT_LEN, Serial};
//! use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
//!
//! let pio = Bus::new();
//! let serial = Serial::new(EventFd::new(EFD_NONBLOCK).unwrap(), Box::new(std::io::sink()));
//! pio.insert(Arc::new(Mutex::new(serial)), COM1_PORT.into(), SERIAL_PORT_LEN).unwrap();
//! let exit = Arc::new(Mutex::new(ExitDevice::new(EventFd::new(EFD_NONBLOCK).unwrap())));
//! pio.insert(exit.clone(), EXIT_PORT.into(), EXIT_PORT_LEN).unwrap();
//!
//! // What a vCPU thread does on an I/O exit:
//! assert!(pio.write(0x3f8, b"A"));        // serial output
//! let mut lsr = [0u8];
//! assert!(pio.read(0x3fd, &mut lsr));     // line status: transmitter empty
//! assert_ne!(lsr[0] & 0x20, 0);
//! assert!(!pio.write(0x80, &[0]));        // nothing there: the VMM logs it
//! assert!(pio.write(0xf4, &[0x10]));      // the guest reports status 0x10
//! assert_eq!(exit.lock().unwrap().status(), Some(0x10));
//! assert_eq!(exit.lock().unwrap().exit_evt().read().unwrap(), 1);
//! ```
#![deny(missing_docs)]

pub mod acpi;
pub mod bus;
mod error;
pub mod exit;
pub mod i8042;
mod log_limit;
pub mod serial;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
mod trigger;

pub use acpi::{ACPI_PM_PORT, ACPI_PM_PORT_LEN, ACPI_RESET_VALUE, AcpiPmDevice, S5_SLEEP_TYPE};
pub use bus::{Bus, BusDevice, SharedBusDevice};
pub use error::{Error, Result};
pub use exit::{EXIT_PORT, EXIT_PORT_LEN, ExitDevice};
pub use i8042::{I8042, I8042_CMD_RESET_CPU, I8042_PORT, I8042_PORT_LEN};
pub use log_limit::LogLimiter;
pub use serial::{COM1_IRQ, COM1_PORT, SERIAL_PORT_LEN, Serial};
