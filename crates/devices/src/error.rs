//! The error type of this crate.

use std::io;

/// Errors of the buses and devices.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A device was inserted with an empty address range.
    #[error("bus range at {base:#x} has zero length")]
    ZeroLength {
        /// First address of the range.
        base: u64,
    },
    /// The end of a range does not fit in a `u64`.
    #[error("bus range at {base:#x} of length {len:#x} overflows the address space")]
    Overflow {
        /// First address of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
    /// A range overlaps one already on the bus.
    #[error("bus range {base:#x}..{end:#x} overlaps the device at {other_base:#x}..{other_end:#x}")]
    Overlap {
        /// First address of the rejected range.
        base: u64,
        /// End (exclusive) of the rejected range.
        end: u64,
        /// First address of the range already on the bus.
        other_base: u64,
        /// End (exclusive) of the range already on the bus.
        other_end: u64,
    },
    /// The serial input FIFO is full; retry after the guest has read from it.
    #[error("the serial input FIFO is full")]
    SerialFifoFull,
    /// The serial device could not signal its interrupt.
    #[error("cannot signal the serial interrupt: {0}")]
    SerialInterrupt(#[source] io::Error),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
