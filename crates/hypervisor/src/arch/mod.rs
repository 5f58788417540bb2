//! Architecture-specific register and state types.

pub mod x86_64;
