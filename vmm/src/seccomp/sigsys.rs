//! The report of a forbidden system call: the filters answer TRAP, the kernel sends SIGSYS to
//! the thread that made the call, and this handler writes one line to stderr naming the thread
//! and the call, then ends the process. Async-signal-safe: no allocation, no lock, only write(2)
//! and exit_group(2), which every filter allows.

use super::names::NAMES;
use std::cell::Cell;

/// The exit status of a process ended by the filter: 128 + SIGSYS, as a shell reports a
/// process killed by that signal.
pub const EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// Offset of `si_syscall` in the kernel's `siginfo_t` for SIGSYS on x86-64 (after signo,
/// errno, code, padding and the 8-byte `si_call_addr`).
const SI_SYSCALL_OFFSET: usize = 24;

/// The most bytes of a thread name kept (the kernel's own limit is 15 and a NUL).
const NAME_LEN: usize = 16;

thread_local! {
    /// This thread's name and kind, recorded when its filter is installed.
    static NAME: Cell<[u8; NAME_LEN]> = const { Cell::new([0; NAME_LEN]) };
    static KIND: Cell<&'static str> = const { Cell::new("") };
}

/// Errors installing the handler.
#[derive(Debug, thiserror::Error)]
pub enum SigsysError {
    #[error("cannot install the SIGSYS handler that reports forbidden system calls: {0}")]
    Install(std::io::Error),
}

/// Record the calling thread's name and kind for the report.
pub fn remember_thread(kind: &'static str) {
    let mut name = [0u8; NAME_LEN];
    let current = std::thread::current();
    let n = current.name().unwrap_or(kind).as_bytes();
    let len = n.len().min(NAME_LEN);
    name[..len].copy_from_slice(&n[..len]);
    NAME.with(|c| c.set(name));
    KIND.with(|c| c.set(kind));
}

/// Install the handler for the whole process.
pub fn install_handler() -> Result<(), SigsysError> {
    // SAFETY: a zeroed sigaction is a valid value (no flags, empty mask) filled in below.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_sigsys as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO;
    // SAFETY: the handler only reads thread-locals and siginfo, writes to fd 2 and exits, all
    // async-signal-safe; `sa` is a valid sigaction that lives across the call.
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(SigsysError::Install(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// A fixed buffer that a line is written into without allocating.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, n: i64) {
        if n < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The report for system call `nr` made by a thread named `name` of kind `kind`.
fn report(name: &[u8], kind: &str, nr: i64) -> Line {
    let mut l = Line {
        buf: [0; 256],
        len: 0,
    };
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    l.push(b"plainvm: seccomp: thread ");
    l.push(&name[..name_len]);
    l.push(b" (");
    l.push(kind.as_bytes());
    l.push(b") made forbidden system call ");
    l.push_number(nr);
    if let Some(n) = usize::try_from(nr).ok().and_then(|i| NAMES.get(i)) {
        if !n.is_empty() {
            l.push(b" (");
            l.push(n.as_bytes());
            l.push(b")");
        }
    }
    l.push(b"; this is a bug (run with --seccomp off to debug)\n");
    l
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: for SIGSYS the kernel fills `si_syscall` (an int) at this offset of the
        // siginfo it passes; the pointer is valid for the handler's duration.
        i64::from(unsafe {
            info.cast::<u8>()
                .add(SI_SYSCALL_OFFSET)
                .cast::<i32>()
                .read()
        })
    };
    let name = NAME.with(Cell::get);
    let kind = KIND.with(Cell::get);
    let line = report(&name, if kind.is_empty() { "?" } else { kind }, nr);
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is a local that lives
    // across the call and holds `len` bytes.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(EXIT_STATUS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_the_thread_the_kind_and_the_call() {
        let mut name = [0u8; NAME_LEN];
        name[..5].copy_from_slice(b"vcpu0");
        let l = report(&name, "vcpu", 101);
        let text = std::str::from_utf8(&l.buf[..l.len]).unwrap();
        assert_eq!(
            text,
            "plainvm: seccomp: thread vcpu0 (vcpu) made forbidden system call 101 (ptrace); \
             this is a bug (run with --seccomp off to debug)\n"
        );
    }

    #[test]
    fn an_unknown_call_is_reported_by_number() {
        let l = report(&[0; NAME_LEN], "api", 9999);
        let text = std::str::from_utf8(&l.buf[..l.len]).unwrap();
        assert!(text.contains("thread  (api) made forbidden system call 9999;"));
    }
}
