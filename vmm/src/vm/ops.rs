//! The VM's control lock: operations that pause the VM or read its state (pause, resume,
//! snapshot, migrate, stop, balloon) run one at a time. One that arrives while another runs
//! waits for it, up to `OP_WAIT`; while a migration runs it is refused at once (409 in the API),
//! because a migration can take minutes and owns the VM's pause and dirty log until it ends.

use super::Vm;
use plainvm_devices::lock;
use std::time::{Duration, Instant};

/// How long an operation waits for the one before it.
pub const OP_WAIT: Duration = Duration::from_secs(30);

/// An operation under the control lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Pause,
    Resume,
    Snapshot,
    Migrate,
    Stop,
    Balloon,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Pause => "a pause",
            Op::Resume => "a resume",
            Op::Snapshot => "a snapshot",
            Op::Migrate => "a migration",
            Op::Stop => "a stop",
            Op::Balloon => "a balloon change",
        }
    }
}

/// Another operation holds the VM.
#[derive(Debug, thiserror::Error)]
#[error("{busy} of this VM is in progress; {what} must wait until it ends: try again {when}")]
pub struct Busy {
    busy: &'static str,
    what: &'static str,
    when: &'static str,
}

/// The running operation; the next one may start when it is dropped.
pub struct OpGuard<'a> {
    vm: &'a Vm,
}

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        *lock(&self.vm.op) = None;
        self.vm.op_done.notify_all();
    }
}

impl Vm {
    /// Start `op`: wait for a running operation to end (refused while a migration runs).
    pub(super) fn begin(&self, op: Op) -> Result<OpGuard<'_>, Busy> {
        let end = Instant::now() + OP_WAIT;
        let mut current = lock(&self.op);
        loop {
            match *current {
                None => {
                    *current = Some(op);
                    return Ok(OpGuard { vm: self });
                }
                Some(running) => {
                    let left = end.saturating_duration_since(Instant::now());
                    if running == Op::Migrate || left.is_zero() {
                        return Err(Busy {
                            busy: running.name(),
                            what: op.name(),
                            when: if running == Op::Migrate {
                                "when the migration has ended (GET /migrate shows it)"
                            } else {
                                "later"
                            },
                        });
                    }
                    current = self
                        .op_done
                        .wait_timeout(current, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}
