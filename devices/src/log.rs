//! The one way plainvm writes its messages to stderr. It never panics (a closed pipe or a full
//! disk loses the line, not the VM) and it is rate-limited (a guest that makes the VMM log, e.g.
//! by announcing its agent over and over, cannot flood the host's log): `BURST` lines at once,
//! then `PER_SECOND`; what is dropped is counted and reported with the next line that passes.

use crate::ratelimit::RateLimit;
use std::fmt;
use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

/// Lines written at once before the limit applies.
pub const BURST: u32 = 200;
/// Lines per second after that.
pub const PER_SECOND: u32 = 20;

struct Limiter {
    bucket: Option<RateLimit>,
    dropped: u64,
}

static LIMITER: Mutex<Limiter> = Mutex::new(Limiter {
    bucket: None,
    dropped: 0,
});

/// Write `plainvm: <msg>` as one line (if the rate allows).
pub fn line(msg: fmt::Arguments<'_>) {
    write_line("", msg);
}

/// Write `plainvm: warning: <msg>` as one line (if the rate allows).
pub fn warn(msg: fmt::Arguments<'_>) {
    write_line("warning: ", msg);
}

fn write_line(kind: &str, msg: fmt::Arguments<'_>) {
    let dropped = {
        let mut l = crate::lock(&LIMITER);
        let bucket = l
            .bucket
            .get_or_insert_with(|| RateLimit::new(BURST, PER_SECOND));
        if !bucket.allow(Instant::now()) {
            l.dropped += 1;
            return;
        }
        std::mem::take(&mut l.dropped)
    };
    let text = match dropped {
        0 => format!("plainvm: {kind}{msg}\n"),
        n => format!("plainvm: ({n} log lines dropped: too many)\nplainvm: {kind}{msg}\n"),
    };
    // One write per line, errors ignored: stderr may be closed or its disk full.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Write `text` as it is (progress output), with no rate limit; never panics.
pub fn raw(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// `log_line!("...", args)`: one line on stderr through `log::line`.
#[macro_export]
macro_rules! log_line {
    ($($arg:tt)*) => { $crate::log::line(format_args!($($arg)*)) };
}

/// `log_warn!("...", args)`: one warning line on stderr through `log::warn`.
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => { $crate::log::warn(format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_burst_and_writing_to_a_closed_stderr_does_not_panic() {
        // A closed stderr: the writes fail, nothing panics.
        // SAFETY: closes this test process's fd 2 (the test harness captures output itself);
        // later writes to it fail with EBADF, which is the point.
        let saved = unsafe { libc::dup(2) };
        // SAFETY: closes fd 2, which this process owns.
        unsafe { libc::close(2) };
        for i in 0..(BURST + 50) {
            line(format_args!("flood {i}"));
        }
        // SAFETY: puts the saved descriptor back as fd 2.
        unsafe {
            libc::dup2(saved, 2);
            libc::close(saved);
        }
        assert!(
            crate::lock(&LIMITER).dropped >= 40,
            "the flood was not limited"
        );
    }
}
