//! The command-line form of a NIC: `tap=NAME[,mac=MAC][,bridge=BR]`.

use std::fmt;
use std::str::FromStr;

use crate::{Error, MacAddr, Result, Tap, bridge};

/// A NIC as a user describes it: the tap it sits on, its MAC address, and
/// the host bridge the tap joins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    /// The tap device (created if it does not exist).
    pub tap: String,
    /// The guest's MAC address; a random locally administered one if unset.
    pub mac: Option<MacAddr>,
    /// A host bridge (which must exist) to attach the tap to.
    pub bridge: Option<String>,
}

impl FromStr for NetSpec {
    type Err = Error;

    /// Parses `tap=NAME[,mac=52:54:00:12:34:56][,bridge=BR]`.
    fn from_str(s: &str) -> Result<Self> {
        let (mut tap, mut mac, mut bridge) = (None, None, None);
        for item in s.split(',') {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| Error::InvalidSpec(format!("{item:?} is not KEY=VALUE")))?;
            let slot = match key {
                "tap" => &mut tap,
                "mac" => &mut mac,
                "bridge" => &mut bridge,
                _ => {
                    return Err(Error::InvalidSpec(format!(
                        "unknown key {key:?} (expected tap, mac or bridge)"
                    )));
                }
            };
            if slot.replace(value.to_string()).is_some() {
                return Err(Error::InvalidSpec(format!("{key} given twice")));
            }
        }
        let tap = tap.ok_or_else(|| Error::InvalidSpec("tap=NAME is required".into()))?;
        crate::iface::check_name("tap", &tap)?;
        if let Some(br) = &bridge {
            crate::iface::check_name("bridge", br)?;
        }
        let mac = mac.map(|m| m.parse::<MacAddr>()).transpose()?;
        if let Some(m) = mac.filter(MacAddr::is_multicast) {
            return Err(Error::MulticastMac(m));
        }
        Ok(NetSpec { tap, mac, bridge })
    }
}

impl fmt::Display for NetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tap={}", self.tap)?;
        if let Some(mac) = self.mac {
            write!(f, ",mac={mac}")?;
        }
        if let Some(br) = &self.bridge {
            write!(f, ",bridge={br}")?;
        }
        Ok(())
    }
}

impl NetSpec {
    /// Opens (or creates) the tap, attaches it to the bridge if one is
    /// named, and brings it up: the seed's `tunctl` + `brctl addif` steps.
    pub fn open_tap(&self) -> Result<Tap> {
        let tap = Tap::open(&self.tap)?;
        if let Some(br) = &self.bridge {
            bridge::add_interface(br, tap.name())?;
        }
        tap.set_up(true)?;
        Ok(tap)
    }

    /// The MAC address to give the guest: the one asked for, or a fresh
    /// random locally administered one.
    pub fn mac_or_random(&self) -> Result<MacAddr> {
        match self.mac {
            Some(mac) => Ok(mac),
            None => MacAddr::random_local(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key() {
        let s: NetSpec = "tap=tap0,mac=52:54:00:12:34:56,bridge=br0".parse().unwrap();
        assert_eq!(s.tap, "tap0");
        assert_eq!(s.mac.unwrap().to_string(), "52:54:00:12:34:56");
        assert_eq!(s.bridge.as_deref(), Some("br0"));
        assert_eq!(s.to_string(), "tap=tap0,mac=52:54:00:12:34:56,bridge=br0");
        let s: NetSpec = "tap=t1".parse().unwrap();
        assert_eq!((s.mac, s.bridge), (None, None));
    }

    #[test]
    fn rejects_bad_forms_with_a_message() {
        for (spec, expect) in [
            ("", "not KEY=VALUE"),
            ("mac=52:54:00:12:34:56", "tap=NAME is required"),
            ("tap=a,tap=b", "tap given twice"),
            ("tap=a,colour=blue", "unknown key \"colour\""),
            ("tap=a,mac=zz", "invalid MAC address"),
            ("tap=a,mac=01:00:5e:00:00:01", "multicast"),
            ("tap=a-name-that-is-far-too-long", "too long"),
            ("tap=a,bridge=b r", "invalid bridge name"),
        ] {
            let e = spec.parse::<NetSpec>().unwrap_err().to_string();
            assert!(e.contains(expect), "{spec:?}: {e}");
        }
    }
}
