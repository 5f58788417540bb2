//! Ethernet MAC addresses.

use std::fmt;
use std::io;
use std::str::FromStr;

use crate::{Error, Result};

/// A 48-bit Ethernet MAC address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// The all-ones broadcast address.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// The address with these octets.
    pub const fn new(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }

    /// The octets, in transmission order.
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Whether the group bit (bit 0 of the first octet) is set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// Whether this is a unicast address with the locally administered bit
    /// set: what a VMM may make up for a NIC.
    pub fn is_local_unicast(&self) -> bool {
        self.0[0] & 0b11 == 0b10
    }

    /// A random locally administered unicast address (from the kernel's
    /// `getrandom`).
    pub fn random_local() -> Result<Self> {
        let mut octets = [0u8; 6];
        let mut filled = 0;
        while filled < octets.len() {
            let rest = &mut octets[filled..];
            // SAFETY: the kernel writes at most `rest.len()` bytes into
            // `rest`, a live mutable buffer of that length.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::Random(e));
            }
            filled += n as usize;
        }
        octets[0] = (octets[0] & !0b11) | 0b10;
        Ok(MacAddr(octets))
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }
}

impl FromStr for MacAddr {
    type Err = Error;

    /// Parses six colon-separated hex octets (`52:54:00:12:34:56`; upper or
    /// lower case, one or two digits each).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidMac(s.to_string());
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(bad)?;
            if part.is_empty() || part.len() > 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(octets))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        let mac: MacAddr = "52:54:00:AB:cd:1".parse().unwrap();
        assert_eq!(mac.octets(), [0x52, 0x54, 0x00, 0xab, 0xcd, 0x01]);
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:01");
        assert_eq!(mac.to_string().parse::<MacAddr>().unwrap(), mac);
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:",
            "52:54:00:12:34:567",
            "52-54-00-12-34-56",
            "52:54:00:12:34:+5",
            "g2:54:00:12:34:56",
        ] {
            assert!(
                matches!(bad.parse::<MacAddr>(), Err(Error::InvalidMac(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn random_addresses_are_local_unicast_and_differ() {
        let a = MacAddr::random_local().unwrap();
        let b = MacAddr::random_local().unwrap();
        assert!(a.is_local_unicast() && !a.is_multicast());
        assert!(b.is_local_unicast());
        // 46 random bits: equal only if getrandom is broken.
        assert_ne!(a, b);
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(!MacAddr::new([0x52, 0x54, 0, 0, 0, 1]).is_multicast());
    }
}
