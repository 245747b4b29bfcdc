//! The LOG call: copy text out of guest RAM (validated), make it safe for a terminal, rate-limit.

use super::{HypercallHost, RateLimit};
use crate::GuestRam;
use plainvm_guest_proto::{status, LOG_MAX};
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress};

/// Messages a guest may log at once, then per second.
const BURST: u32 = 32;
const PER_SECOND: u32 = 8;

/// The guest's LOG channel into the host log.
pub struct GuestLog {
    limit: RateLimit,
    dropped: u64,
}

impl Default for GuestLog {
    fn default() -> Self {
        Self {
            limit: RateLimit::new(BURST, PER_SECOND),
            dropped: 0,
        }
    }
}

impl GuestLog {
    /// Log `len` bytes at guest-physical `addr`; returns the bytes logged or a status code.
    pub fn call(
        &mut self,
        mem: &GuestRam,
        addr: u64,
        len: u32,
        now: Instant,
        host: &mut dyn HypercallHost,
    ) -> Result<u32, u32> {
        if len == 0 || len > LOG_MAX {
            return Err(status::INVALID_ARGUMENT);
        }
        addr.checked_add(u64::from(len))
            .ok_or(status::BAD_ADDRESS)?;
        let mut buf = vec![0u8; len as usize];
        // read_slice fails unless the whole range is guest RAM (no holes, no MMIO, no overflow).
        mem.read_slice(&mut buf, GuestAddress(addr))
            .map_err(|_| status::BAD_ADDRESS)?;
        self.emit(&buf, now, host)
    }

    /// Log the first `len` bytes of `text` (the device page's TEXT window).
    pub fn call_text(
        &mut self,
        text: &[u8],
        len: u32,
        now: Instant,
        host: &mut dyn HypercallHost,
    ) -> Result<u32, u32> {
        match text.get(..len as usize) {
            Some(t) if len > 0 => self.emit(t, now, host),
            _ => Err(status::INVALID_ARGUMENT),
        }
    }

    /// Rate-limit, then log `buf`.
    fn emit(&mut self, buf: &[u8], now: Instant, host: &mut dyn HypercallHost) -> Result<u32, u32> {
        if !self.limit.allow(now) {
            self.dropped += 1;
            return Err(status::RATE_LIMITED);
        }
        if self.dropped > 0 {
            host.log(&format!(
                "guest: ({} log messages dropped by the rate limit)",
                std::mem::take(&mut self.dropped)
            ));
        }
        host.log(&format!("guest: {}", sanitize(buf)));
        Ok(buf.len() as u32)
    }
}

/// Text safe to print on the host's terminal: trailing newlines dropped, control characters
/// (escape sequences included) shown as '?', invalid UTF-8 replaced.
pub fn sanitize(bytes: &[u8]) -> String {
    let end = bytes
        .iter()
        .rposition(|&b| b != b'\n' && b != b'\r' && b != 0)
        .map_or(0, |i| i + 1);
    String::from_utf8_lossy(&bytes[..end])
        .chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Lines(Vec<String>);
    impl HypercallHost for Lines {
        fn power(&mut self, _reboot: bool, _code: u8) {}
        fn log(&mut self, line: &str) {
            self.0.push(line.to_string());
        }
    }

    #[test]
    fn escapes_control_characters() {
        assert_eq!(sanitize(b"hi\x1b[2J\tok\n\n"), "hi?[2J\tok");
        assert_eq!(sanitize(b"\n"), "");
        assert_eq!(sanitize(b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn validates_length_and_address_and_rate_limits() {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_slice(b"hello", GuestAddress(0x100)).unwrap();
        let mut log = GuestLog::default();
        let mut host = Lines::default();
        let now = Instant::now();
        assert_eq!(log.call(&mem, 0x100, 5, now, &mut host), Ok(5));
        assert_eq!(host.0, ["guest: hello"]);
        let bad = status::BAD_ADDRESS;
        assert_eq!(
            log.call(&mem, 0x100, 0, now, &mut host),
            Err(status::INVALID_ARGUMENT)
        );
        assert_eq!(
            log.call(&mem, 0x100, LOG_MAX + 1, now, &mut host),
            Err(status::INVALID_ARGUMENT)
        );
        assert_eq!(log.call(&mem, 0xfffe, 5, now, &mut host), Err(bad));
        assert_eq!(log.call(&mem, 0xc000_0000, 5, now, &mut host), Err(bad));
        assert_eq!(log.call(&mem, u64::MAX - 1, 5, now, &mut host), Err(bad));
        let ok = (0..1000)
            .filter(|_| log.call(&mem, 0x100, 5, now, &mut host).is_ok())
            .count();
        assert_eq!(ok, BURST as usize - 1);
        let later = now + std::time::Duration::from_secs(10);
        assert_eq!(log.call(&mem, 0x100, 5, later, &mut host), Ok(5));
        assert!(host
            .0
            .iter()
            .any(|l| l.contains("dropped by the rate limit")));
        let text = [b'x'; LOG_MAX as usize];
        let later = later + std::time::Duration::from_secs(10);
        assert_eq!(log.call_text(&text, 3, later, &mut host), Ok(3));
        assert_eq!(host.0.last().unwrap(), "guest: xxx");
        assert_eq!(
            log.call_text(&text, 0, later, &mut host),
            Err(status::INVALID_ARGUMENT)
        );
        assert_eq!(
            log.call_text(&text, LOG_MAX + 1, later, &mut host),
            Err(status::INVALID_ARGUMENT)
        );
    }
}
