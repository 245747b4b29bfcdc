//! The paravirtual hypercall device (docs/hypercall.md): one MMIO register page through which a
//! guest marks boot stages, powers off with an exit code, logs, reads host time and generation,
//! reports free memory and heartbeats, and picks up requests the host posted.
//!
//! The device knows nothing of KVM: what it needs from the VMM goes through [`HypercallHost`],
//! and what the VMM needs to see (marks, heartbeat, requests, generation) lives in the shared
//! [`HypercallState`].

mod dispatch;
mod log;

mod registers;
mod state;

pub use crate::ratelimit::RateLimit;
pub use plainvm_guest_proto as proto;
pub use registers::Hypercall;
pub use state::{
    BootMark, HeartbeatEvent, HostRequest, HypercallState, RequestKind, Snapshot, StateError,
    MAX_PENDING,
};

use std::time::Duration;

/// What the device needs from the VMM.
pub trait HypercallHost: Send {
    /// The guest asked to power off (or reboot, when `reboot`) with exit `code`.
    fn power(&mut self, reboot: bool, code: u8);
    /// One line for the host log (already sanitised, no trailing newline).
    fn log(&mut self, line: &str);
    /// Host wall-clock time since the Unix epoch.
    fn wall_clock(&self) -> Duration {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    }
}
