//! What the agent does to the guest OS: set the clock, sync disks, drain the console, stop
//! processes, sleep.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

/// The guest operating system, as the commands see it (faked in tests).
pub trait System {
    /// Set the wall clock; returns the previous time since the Unix epoch.
    fn set_clock(&mut self, since_epoch: Duration) -> std::io::Result<Duration>;
    /// Flush file systems.
    fn sync(&mut self);
    /// Wait (briefly) until the console has sent what processes wrote to it.
    fn drain_console(&mut self);
    /// Ask every other process to stop (before a power-off), and give them a moment.
    fn stop_processes(&mut self);
    /// Wait this long.
    fn sleep(&mut self, d: Duration);
    /// Available memory in KiB (MemAvailable), if known.
    fn free_kib(&mut self) -> Option<u64>;
}

/// The real Linux guest.
pub struct Linux;

impl System for Linux {
    fn set_clock(&mut self, t: Duration) -> std::io::Result<Duration> {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let ts = libc::timespec {
            tv_sec: t.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
        };
        // SAFETY: a valid timespec we own.
        if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(before)
    }

    fn sync(&mut self) {
        // SAFETY: sync takes no arguments and cannot fail.
        unsafe { libc::sync() };
    }

    fn drain_console(&mut self) {
        // The tty layer sends asynchronously: output still queued when POWER stops the VM is
        // lost. tcdrain can wait for ever on a stuck UART, so it runs on a thread given 2 s.
        let Ok(console) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open("/dev/console")
        else {
            return;
        };
        let (done, drained) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: tcdrain on a descriptor this closure owns.
            unsafe { libc::tcdrain(console.as_raw_fd()) };
            let _ = done.send(());
        });
        let _ = drained.recv_timeout(Duration::from_secs(2));
    }

    fn stop_processes(&mut self) {
        // SAFETY: ignore SIGTERM ourselves, then send it to every process we may signal (the
        // kernel spares init and the caller).
        unsafe {
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
            libc::kill(-1, libc::SIGTERM);
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }

    fn free_kib(&mut self) -> Option<u64> {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}
