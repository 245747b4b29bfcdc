//! An `EventFd` that vm-superio devices can fire (an interrupt line or a reset request).

use std::ops::Deref;
use vmm_sys_util::eventfd::EventFd;

/// Wraps an `EventFd` so it implements `vm_superio::Trigger`.
pub struct EventFdTrigger(pub EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

impl Deref for EventFdTrigger {
    type Target = EventFd;
    fn deref(&self) -> &EventFd {
        &self.0
    }
}
