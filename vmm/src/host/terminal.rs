//! Raw mode for the console's terminal, restored on every way out (return, panic, signal).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static SAVED: OnceLock<libc::termios> = OnceLock::new();
static RAW: AtomicBool = AtomicBool::new(false);

/// True when stdin is a terminal (only then does guest console input come from it).
pub fn stdin_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}

/// Put the terminal on stdin into raw mode; the returned guard (and `restore`) undo it.
pub fn enter_raw_mode() -> Option<RawModeGuard> {
    // SAFETY: termios is plain data; tcgetattr fills it and we check the result.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and a pointer to a termios we own.
    if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
        return None;
    }
    let _ = SAVED.set(t);
    let mut raw = t;
    // SAFETY: cfmakeraw edits the termios we own.
    unsafe { libc::cfmakeraw(&mut raw) };
    install_restorers();
    // SAFETY: valid descriptor and termios.
    if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
        return None;
    }
    RAW.store(true, Ordering::SeqCst);
    Some(RawModeGuard)
}

/// Restore the terminal if raw mode is on. Async-signal-safe.
pub fn restore() {
    if RAW.swap(false, Ordering::SeqCst) {
        if let Some(t) = SAVED.get() {
            // SAFETY: valid descriptor and the termios saved before raw mode.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
        }
    }
}

/// Restores the terminal when dropped.
pub struct RawModeGuard;

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        restore();
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    restore();
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(128 + sig) };
}

fn install_restorers() {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        hook(info);
    }));
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT, libc::SIGQUIT] {
        // SAFETY: on_signal only calls async-signal-safe functions.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}
