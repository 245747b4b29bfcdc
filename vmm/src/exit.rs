//! Why a VM stops, and the one-shot signal vCPUs and devices use to say so.

use std::sync::Mutex;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off or asked for a reset (both end the VM cleanly).
    PowerOff,
    /// The guest asked to exit with this status (hypercall device).
    GuestCode(i32),
    /// Something went wrong; the message says what.
    Crash(String),
}

impl ExitReason {
    /// The process exit status for this reason.
    pub fn status(&self) -> i32 {
        match self {
            Self::PowerOff => 0,
            Self::GuestCode(c) => *c,
            Self::Crash(_) => 1,
        }
    }
}

/// First reason wins; the `EventFd` wakes the main loop.
pub struct ExitSignal {
    evt: EventFd,
    reason: Mutex<Option<ExitReason>>,
}

impl ExitSignal {
    /// A fresh signal.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            reason: Mutex::new(None),
        })
    }

    /// The eventfd the main loop waits on; a write to it without a reason means a guest reset.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Record `reason` (unless one is recorded already) and wake the main loop.
    pub fn request(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        r.get_or_insert(reason);
        let _ = self.evt.write(1);
    }

    /// The recorded reason; a bare eventfd write (the i8042 reset line) means power-off.
    pub fn reason(&self) -> ExitReason {
        let r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        r.clone().unwrap_or(ExitReason::PowerOff)
    }
}
