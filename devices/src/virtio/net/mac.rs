//! Ethernet MAC addresses: parsing `aa:bb:cc:dd:ee:ff`, and random locally administered ones.

use std::fmt;
use std::str::FromStr;

/// Why a MAC address was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MacError {
    #[error("invalid MAC address '{0}': write six hex byte pairs separated by ':', e.g. 02:00:00:12:34:56")]
    Syntax(String),
    #[error("invalid MAC address '{0}': it is a multicast address (lowest bit of the first byte set); use a unicast one such as 02:00:00:12:34:56")]
    Multicast(String),
    #[error("invalid MAC address '{0}': all zeroes is not a usable address")]
    Zero(String),
}

/// A unicast Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random locally administered unicast address (first byte `x2`, `x6`, `xa` or `xe`).
    pub fn random_local() -> Self {
        let mut b = [0u8; 6];
        // SAFETY: getrandom writes at most 6 bytes into the 6-byte array.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n != 6 {
            // No entropy source: derive something unique enough from the pid and the clock.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let v = t ^ (u64::from(std::process::id()) << 24);
            b.copy_from_slice(&v.to_le_bytes()[..6]);
        }
        b[0] = (b[0] & 0xfc) | 0x02;
        Self(b)
    }
}

impl FromStr for MacAddr {
    type Err = MacError;
    fn from_str(s: &str) -> Result<Self, MacError> {
        let syntax = || MacError::Syntax(s.to_string());
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(syntax());
        }
        let mut b = [0u8; 6];
        for (byte, part) in b.iter_mut().zip(&parts) {
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(syntax());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
        }
        if b[0] & 1 != 0 {
            return Err(MacError::Multicast(s.to_string()));
        }
        if b == [0; 6] {
            return Err(MacError::Zero(s.to_string()));
        }
        Ok(Self(b))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let m: MacAddr = "02:AB:cd:00:11:ff".parse().unwrap();
        assert_eq!(m.0, [2, 0xab, 0xcd, 0, 0x11, 0xff]);
        assert_eq!(m.to_string(), "02:ab:cd:00:11:ff");
        assert_eq!("02-00-00-00-00-01".parse::<MacAddr>().unwrap().0[5], 1);
    }

    #[test]
    fn refuses_bad_addresses() {
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "0g:00:00:00:00:01",
            "2:0:0:0:0:1",
            "+2:00:00:00:00:01",
        ] {
            assert!(
                matches!(bad.parse::<MacAddr>(), Err(MacError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "01:00:5e:00:00:01".parse::<MacAddr>(),
            Err(MacError::Multicast(_))
        ));
        assert!(matches!(
            "00:00:00:00:00:00".parse::<MacAddr>(),
            Err(MacError::Zero(_))
        ));
    }

    #[test]
    fn random_ones_are_local_unicast() {
        for _ in 0..32 {
            let m = MacAddr::random_local();
            assert_eq!(m.0[0] & 3, 2, "{m}");
        }
        assert_ne!(MacAddr::random_local(), MacAddr::random_local());
    }
}
