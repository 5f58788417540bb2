//! The ACPI description of the machine this crate composes: the vCPUs, the
//! COM1 UART, the virtio-mmio devices where [`attach_virtio_mmio`] put them,
//! and the [`AcpiPmDevice`](vmkit_devices::AcpiPmDevice) registers for
//! power-off and reset.
//!
//! [`attach_virtio_mmio`]: crate::virtio_mmio::attach_virtio_mmio

use vmkit_boot::acpi::{AcpiConfig, AcpiPm, AcpiUart, VirtioMmioDesc};
use vmkit_devices::acpi::{
    ACPI_PM_PORT, ACPI_RESET_VALUE, RESET_OFFSET, S5_SLEEP_TYPE, SLEEP_CONTROL_OFFSET,
    SLEEP_STATUS_OFFSET,
};
use vmkit_devices::{COM1_IRQ, COM1_PORT};

use crate::virtio_mmio::VirtioMmioSlot;

/// The [`AcpiPm`] registers of [`AcpiPmDevice`](vmkit_devices::AcpiPmDevice)
/// at [`ACPI_PM_PORT`].
pub fn acpi_pm() -> AcpiPm {
    // The offsets are 0..3.
    let port = |offset: u64| ACPI_PM_PORT + offset as u16;
    AcpiPm {
        sleep_control_port: port(SLEEP_CONTROL_OFFSET),
        sleep_status_port: port(SLEEP_STATUS_OFFSET),
        reset_port: port(RESET_OFFSET),
        reset_value: ACPI_RESET_VALUE,
        s5_sleep_type: S5_SLEEP_TYPE,
    }
}

/// What the ACPI tables of a VM with `num_cpus` vCPUs, COM1 and the
/// virtio-mmio devices `slots` (in `_UID` order) describe.
pub fn acpi_config(num_cpus: u8, slots: &[VirtioMmioSlot]) -> AcpiConfig {
    AcpiConfig {
        num_cpus,
        uart: Some(AcpiUart {
            port: COM1_PORT,
            irq: COM1_IRQ,
        }),
        virtio_mmio: slots
            .iter()
            .map(|s| VirtioMmioDesc {
                base: s.base,
                irq: s.irq,
            })
            .collect(),
        pm: acpi_pm(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmkit_devices::{ACPI_PM_PORT_LEN, AcpiPmDevice, Bus};
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    /// The registers the FADT names are the device's: a guest writing what
    /// the DSDT's `\_S5` and the FADT's reset value say ends the VM.
    #[test]
    fn fadt_registers_reach_the_pm_device() {
        let pm = acpi_pm();
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(AcpiPmDevice::new(
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        )));
        bus.insert(dev.clone(), ACPI_PM_PORT.into(), ACPI_PM_PORT_LEN)
            .unwrap();
        // Linux's acpi_hw_extended_sleep: SLP_TYP << 2 | SLP_EN (bit 5).
        let slp = (pm.s5_sleep_type << 2) | (1 << 5);
        assert!(bus.write(pm.sleep_control_port.into(), &[slp]));
        assert!(bus.write(pm.reset_port.into(), &[pm.reset_value]));
        let mut status = [0xff];
        assert!(bus.read(pm.sleep_status_port.into(), &mut status));
        let dev = dev.lock().unwrap();
        assert_eq!(dev.power_off_evt().read().unwrap(), 1);
        assert_eq!(dev.reset_evt().read().unwrap(), 1);
    }

    #[test]
    fn config_lists_every_slot() {
        let slots = [
            VirtioMmioSlot {
                base: 0xc000_0000,
                irq: 5,
            },
            VirtioMmioSlot {
                base: 0xc000_1000,
                irq: 6,
            },
        ];
        let c = acpi_config(2, &slots);
        assert_eq!(c.num_cpus, 2);
        assert_eq!(
            c.uart,
            Some(AcpiUart {
                port: 0x3f8,
                irq: 4
            })
        );
        assert_eq!(
            c.virtio_mmio,
            [
                VirtioMmioDesc {
                    base: 0xc000_0000,
                    irq: 5
                },
                VirtioMmioDesc {
                    base: 0xc000_1000,
                    irq: 6
                }
            ]
        );
        vmkit_boot::acpi::build_acpi_tables(&c).unwrap();
    }
}
