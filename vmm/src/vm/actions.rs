//! Lifecycle actions on a running VM for the control API: graceful stop through the guest
//! agent, kill, and the balloon target.

use super::Vm;
use crate::device_manager::hypercall::{post_request, RequestKind};
use crate::host::exit::ExitReason;
use plainvm_devices::hypercall::proto;
use plainvm_devices::lock;
use serde::{Deserialize, Serialize};

/// Errors of lifecycle actions. A failed action changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("no guest agent is listening for power requests (run `plainvm-guest watch` in the guest, or use the kill action)")]
    NoAgent,
    #[error("cannot post the power-off request: {0}")]
    Post(#[from] crate::device_manager::hypercall::StateError),
    #[error("this VM has no balloon device: start it with --balloon")]
    NoBalloon,
    #[error(transparent)]
    Busy(#[from] super::ops::Busy),
    #[error(transparent)]
    Balloon(#[from] crate::device_manager::balloon::BalloonError),
}

/// The balloon after a new target was set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BalloonTarget {
    pub target_mib: u64,
    /// What the guest has given back so far.
    pub actual_mib: u64,
}

/// What `stop` did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StopPosted {
    /// The request id the guest agent will see.
    pub request: u32,
}

impl Vm {
    /// True when a guest agent that obeys power requests has announced itself.
    pub fn agent_listening(&self) -> bool {
        self.hypercall
            .agent()
            .is_some_and(|caps| caps & proto::agent::POWER != 0)
    }

    /// Ask the guest agent to power off (the VM ends when the guest does).
    pub fn stop(&self) -> Result<StopPosted, ActionError> {
        let _op = self.begin(super::ops::Op::Stop)?;
        if !self.agent_listening() {
            return Err(ActionError::NoAgent);
        }
        let request = post_request(&self.hypercall, RequestKind::PowerOff { code: 0 })?;
        Ok(StopPosted { request })
    }

    /// End the VM without asking the guest, right after the API request is answered (so the
    /// client gets its answer before the process goes away).
    pub fn kill(&self) {
        *lock(&self.pending_exit) =
            Some(ExitReason::Crash("killed through the control API".into()));
    }

    /// Set the balloon target: the guest is asked to give back `bytes` in total.
    pub fn set_balloon_target(&self, bytes: u64) -> Result<BalloonTarget, ActionError> {
        let b = self.balloon.as_ref().ok_or(ActionError::NoBalloon)?;
        let _op = self.begin(super::ops::Op::Balloon)?;
        b.set_target(bytes)?;
        Ok(BalloonTarget {
            target_mib: b.target() >> 20,
            actual_mib: b.actual() >> 20,
        })
    }
}
