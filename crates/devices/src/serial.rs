//! The serial console: vm-superio's 16550A UART as a port-I/O [`BusDevice`].

use std::io::Write;

use vm_superio::serial::{Error as UartError, NoEvents};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::log_limit::DeviceLogLimits;
use crate::trigger::EventFdTrigger;
use crate::{Error, Result};

/// First I/O port of COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// Number of I/O ports of a 16550 UART.
pub const SERIAL_PORT_LEN: u64 = 8;
/// The ISA interrupt line (and IOAPIC pin) of COM1.
pub const COM1_IRQ: u32 = 4;

type Uart = vm_superio::Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>;

/// A 16550A UART that writes the guest's output to a host writer and
/// signals its interrupt through an [`EventFd`] (register it as an irqfd
/// for [`COM1_IRQ`]).
///
/// Insert it on the port-I/O bus at [`COM1_PORT`], [`SERIAL_PORT_LEN`]
/// ports. Accesses wider than one byte are not UART accesses: reads return
/// `0xff` bytes and writes are ignored, with a warning. Those warnings, and
/// the errors met while serving the guest (output that cannot be written,
/// an interrupt that cannot be signalled, a full loopback FIFO), go through
/// [`LogLimiter`](crate::LogLimiter)s, so a guest repeating them cannot
/// flood the log.
pub struct Serial {
    uart: Uart,
    log: DeviceLogLimits,
}

impl Serial {
    /// Creates a UART writing the guest's output to `out` and signalling
    /// `interrupt_evt` when it raises its interrupt.
    pub fn new(interrupt_evt: EventFd, out: Box<dyn Write + Send>) -> Self {
        Serial {
            uart: vm_superio::Serial::new(EventFdTrigger(interrupt_evt), out),
            log: DeviceLogLimits::default(),
        }
    }

    /// The event signalled when the UART raises its interrupt.
    pub fn interrupt_evt(&self) -> &EventFd {
        &self.uart.interrupt_evt().0
    }

    /// How many bytes the input FIFO can still take.
    pub fn fifo_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues host input for the guest to read and raises the
    /// received-data interrupt if the guest enabled it.
    ///
    /// Returns how many bytes of `input` fit in the FIFO (possibly fewer
    /// than `input.len()`), or [`Error::SerialFifoFull`] when none did.
    pub fn enqueue_raw_bytes(&mut self, input: &[u8]) -> Result<usize> {
        self.uart.enqueue_raw_bytes(input).map_err(|e| match e {
            UartError::FullFifo => Error::SerialFifoFull,
            UartError::Trigger(e) | UartError::IOError(e) => Error::SerialInterrupt(e),
        })
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) if u64::from(offset) < SERIAL_PORT_LEN => {
                *byte = self.uart.read(offset)
            }
            (_, data) => {
                if let Some(n) = self.log.access.tick() {
                    log::warn!(
                        "serial: ignored {}-byte read at offset {offset:#x} \
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
            (Ok(offset), &[value]) if u64::from(offset) < SERIAL_PORT_LEN => {
                match self.uart.write(offset, value) {
                    Ok(()) => {}
                    // The guest's output is lost, but the guest goes on.
                    Err(UartError::IOError(e)) => {
                        if let Some(n) = self.log.host.tick() {
                            log::warn!("serial: cannot write output: {e} ({n} host errors so far)");
                        }
                    }
                    Err(UartError::Trigger(e)) => {
                        if let Some(n) = self.log.host.tick() {
                            log::error!(
                                "serial: cannot signal the interrupt: {e} ({n} host errors so far)"
                            );
                        }
                    }
                    // Not returned by writes (the loopback FIFO drops what
                    // does not fit), but limited like the rest if it were.
                    Err(UartError::FullFifo) => {
                        if let Some(n) = self.log.access.tick() {
                            log::warn!("serial: loopback FIFO full ({n} bad accesses so far)");
                        }
                    }
                }
            }
            _ => {
                if let Some(n) = self.log.access.tick() {
                    log::warn!(
                        "serial: ignored {}-byte write at offset {offset:#x} \
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
    use crate::test_utils::{capture_log, limited_lines, warnings};
    use std::io;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    // Register offsets and bits of the 16550 (from its datasheet).
    const THR: u64 = 0;
    const RBR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const LSR: u64 = 5;
    const SCR: u64 = 7;
    const IER_RDA: u8 = 0x01;
    const IER_THRE: u8 = 0x02;
    const LSR_DR: u8 = 0x01;
    const LSR_THRE: u8 = 0x20;
    const LSR_TEMT: u8 = 0x40;

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (Serial, SharedBuf) {
        let out = SharedBuf::default();
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        (Serial::new(evt, Box::new(out.clone())), out)
    }

    fn read_reg(serial: &mut Serial, offset: u64) -> u8 {
        let mut data = [0u8];
        serial.read(offset, &mut data);
        data[0]
    }

    #[test]
    fn thr_writes_reach_the_writer() {
        let (mut serial, out) = serial();
        for b in b"hello\n" {
            serial.write(THR, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hello\n");
        let lsr = read_reg(&mut serial, LSR);
        assert_eq!(lsr & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
        assert_eq!(lsr & LSR_DR, 0);
    }

    #[test]
    fn registers_read_back() {
        let (mut serial, out) = serial();
        serial.write(SCR, &[0x5a]);
        assert_eq!(read_reg(&mut serial, SCR), 0x5a);
        serial.write(LCR, &[0x03]);
        assert_eq!(read_reg(&mut serial, LCR), 0x03);
        // With DLAB set, offsets 0 and 1 are the divisor latch, not THR/IER.
        serial.write(LCR, &[0x83]);
        serial.write(0, &[0x01]);
        serial.write(1, &[0x00]);
        assert_eq!(read_reg(&mut serial, 0), 0x01);
        assert_eq!(read_reg(&mut serial, 1), 0x00);
        serial.write(LCR, &[0x03]);
        assert!(out.0.lock().unwrap().is_empty());
    }

    #[test]
    fn thr_empty_interrupt_signals_the_eventfd() {
        let (mut serial, _out) = serial();
        assert!(serial.interrupt_evt().read().is_err(), "no interrupt yet");
        serial.write(IER, &[IER_THRE]);
        assert_eq!(serial.interrupt_evt().read().unwrap(), 1);
        // IIR reports the THR-empty interrupt (bits 3:1 = 001).
        assert_eq!(read_reg(&mut serial, IIR) & 0x0f, 0x02);
    }

    #[test]
    fn input_is_read_from_rbr() {
        let (mut serial, _out) = serial();
        serial.write(IER, &[IER_RDA]);
        assert_eq!(serial.enqueue_raw_bytes(b"ok").unwrap(), 2);
        assert_eq!(serial.interrupt_evt().read().unwrap(), 1);
        assert_ne!(read_reg(&mut serial, LSR) & LSR_DR, 0);
        assert_eq!(read_reg(&mut serial, RBR), b'o');
        assert_eq!(read_reg(&mut serial, RBR), b'k');
        assert_eq!(read_reg(&mut serial, LSR) & LSR_DR, 0);
    }

    #[test]
    fn full_fifo_is_an_error() {
        let (mut serial, _out) = serial();
        let cap = serial.fifo_capacity();
        assert_eq!(
            serial.enqueue_raw_bytes(&vec![b'x'; cap + 10]).unwrap(),
            cap
        );
        assert!(matches!(
            serial.enqueue_raw_bytes(b"y"),
            Err(Error::SerialFifoFull)
        ));
    }

    #[test]
    fn wide_and_out_of_range_accesses_are_ignored() {
        let (mut serial, out) = serial();
        serial.write(THR, b"ab");
        serial.write(8, b"c");
        assert!(out.0.lock().unwrap().is_empty());
        let mut wide = [0u8; 2];
        serial.read(LSR, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
        let mut one = [0u8];
        serial.read(u64::MAX, &mut one);
        assert_eq!(one, [0xff]);
    }

    /// A host writer that always fails.
    struct BrokenPipe;

    impl Write for BrokenPipe {
        fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn a_flood_of_bad_accesses_logs_a_few_lines() {
        const ACCESSES: u64 = 100_000;
        let (mut serial, out) = serial();
        let ((), lines) = capture_log(|| {
            for i in 0..ACCESSES {
                if i % 2 == 0 {
                    serial.write(THR, b"ab");
                } else {
                    let mut wide = [0u8; 2];
                    serial.read(LSR, &mut wide);
                }
            }
        });
        assert!(out.0.lock().unwrap().is_empty());
        let lines = warnings(&lines);
        assert_eq!(lines.len(), 23, "{lines:#?}");
        assert_eq!(lines.len(), limited_lines(ACCESSES));
        assert_eq!(
            lines[0],
            "serial: ignored 2-byte write at offset 0x0 (1 bad accesses so far)"
        );
        assert!(lines[22].ends_with("(65536 bad accesses so far)"));

        // The guest's output still goes out, silently.
        let ((), lines) = capture_log(|| serial.write(THR, b"x"));
        assert!(lines.is_empty(), "{lines:#?}");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"x");
    }

    #[test]
    fn a_flood_of_output_errors_logs_a_few_lines() {
        const BYTES: u64 = 100_000;
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut serial = Serial::new(evt, Box::new(BrokenPipe));
        let ((), lines) = capture_log(|| {
            for _ in 0..BYTES {
                serial.write(THR, b"o");
            }
        });
        let lines = warnings(&lines);
        assert_eq!(lines.len(), limited_lines(BYTES), "{lines:#?}");
        assert!(lines[0].starts_with("serial: cannot write output: "));
        assert!(lines[0].ends_with("(1 host errors so far)"), "{}", lines[0]);
        assert!(lines[22].ends_with("(65536 host errors so far)"));

        // Nor do they hide a bad access.
        let ((), lines) = capture_log(|| serial.write(SCR, &[0, 0]));
        assert_eq!(
            warnings(&lines),
            ["serial: ignored 2-byte write at offset 0x7 (1 bad accesses so far)"]
        );
    }
}
