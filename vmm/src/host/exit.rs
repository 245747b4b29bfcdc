//! Why a VM stops, and the one-shot signal vCPUs and devices use to say so.

use plainvm_devices::lock;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// The VM now runs on another host; the message says where and how it went.
    Migrated(String),
}

impl ExitReason {
    /// The process exit status for this reason.
    pub fn status(&self) -> i32 {
        match self {
            Self::PowerOff => 0,
            Self::GuestCode(c) => *c,
            Self::Crash(_) => 1,
            Self::Migrated(_) => 0,
        }
    }
}

/// First reason wins; the `EventFd` wakes the main loop.
pub struct ExitSignal {
    evt: EventFd,
    reason: Mutex<Option<ExitReason>>,
    requested: AtomicBool,
}

impl ExitSignal {
    /// A fresh signal.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            reason: Mutex::new(None),
            requested: AtomicBool::new(false),
        })
    }

    /// The eventfd the main loop waits on.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Record `reason` (unless one is recorded already) and wake the main loop.
    pub fn request(&self, reason: ExitReason) {
        let mut r = lock(&self.reason);
        r.get_or_insert(reason);
        self.requested.store(true, Ordering::SeqCst);
        let _ = self.evt.write(1);
    }

    /// True once the VM is ending; vCPUs check it after each exit so they stop running guest code.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }

    /// The recorded reason (power-off if none was given).
    pub fn reason(&self) -> ExitReason {
        let r = lock(&self.reason);
        r.clone().unwrap_or(ExitReason::PowerOff)
    }
}
