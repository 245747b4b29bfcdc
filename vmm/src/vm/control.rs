//! Pausing, resuming, reading the whole state and snapshotting a running VM.

use super::ops::Op;
use super::state::{KvmVmState, VmState};
use super::Vm;
use crate::memory::slots::SlotError;
use crate::snapshot::{self, MemoryContent, SnapshotError, SnapshotStats};
use crate::vcpu::control::{ControlError, Holder};
use crate::vcpu::state::{VcpuState, VcpuStateError};
use plainvm_devices::lock;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a pause may take before it is given up (the VM then keeps running).
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of control operations. A failed operation leaves the VM as it was.
#[derive(Debug, thiserror::Error)]
pub enum ControlOpError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Vcpu(#[from] VcpuStateError),
    #[error(transparent)]
    Vm(#[from] super::state::VmStateError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Slots(#[from] SlotError),
    #[error("a diff snapshot needs a full snapshot of this VM first (or a VM restored from one)")]
    NoBase,
    #[error(transparent)]
    Gate(#[from] crate::device_manager::loop_gate::GateError),
    #[error("cannot pause a device: {0}")]
    Device(#[from] plainvm_devices::virtio::PersistError),
    #[error(transparent)]
    Busy(#[from] super::ops::Busy),
    #[error(transparent)]
    Jail(#[from] crate::host::jail::JailError),
}

/// What a snapshot took.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotResult {
    pub path: String,
    pub pause_ms: f64,
    pub total_ms: f64,
    #[serde(flatten)]
    pub stats: SnapshotStats,
}

impl Vm {
    /// True while the VM is paused (through the API, or by a snapshot or migration).
    pub fn is_paused(&self) -> bool {
        self.control.is_held_by(Holder::User)
    }

    /// Pause the VM (see `pause_now`), after any operation already running.
    pub fn pause(&self) -> Result<(), ControlOpError> {
        let _op = self.begin(Op::Pause)?;
        self.pause_now()
    }

    /// Resume the VM, after any operation already running.
    pub fn resume(&self) -> Result<(), ControlOpError> {
        let _op = self.begin(Op::Resume)?;
        self.resume_now();
        Ok(())
    }

    /// Stop all vCPUs, then the devices: the event loop parks and work in flight finishes, so
    /// nothing changes guest memory or device state until `resume`. On failure a running VM
    /// runs on, and one that was already paused stays paused. The caller holds the control lock.
    pub(super) fn pause_now(&self) -> Result<(), ControlOpError> {
        let was_paused = self.is_paused();
        self.control.pause(Holder::User, PAUSE_TIMEOUT)?;
        let devices = self
            .gate
            .close(PAUSE_TIMEOUT)
            .map_err(ControlOpError::from)
            .and_then(|()| {
                Ok(crate::device_manager::virtio::quiesce_all(
                    &self.transports,
                )?)
            });
        if let Err(e) = devices {
            if !was_paused {
                self.resume_now();
            }
            return Err(e);
        }
        Ok(())
    }

    /// Let devices and vCPUs run again. The caller holds the control lock.
    pub(super) fn resume_now(&self) {
        self.gate.open();
        self.control.resume(Holder::User);
    }

    /// Read the whole VM state (the VM must be paused).
    pub(super) fn save_state(&self) -> Result<VmState, ControlOpError> {
        let msr_indices = self
            .kvm
            .get_msr_index_list()
            .map(|l| l.as_slice().to_vec())
            .unwrap_or_default();
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for (i, v) in self.vcpus.iter().enumerate() {
            vcpus.push(VcpuState::save(&lock(&v.fd), i, &v.cpuid, &msr_indices)?);
        }
        Ok(VmState {
            config: self.config.clone(),
            kvm: KvmVmState::save(&self.fd)?,
            serial: lock(&self.serial).save(),
            hypercall: {
                let h = self.hypercall.snapshot();
                super::state::HypercallSaved {
                    generation: h.generation,
                    agent: h.agent,
                }
            },
            devices: crate::device_manager::virtio::save_all(&self.transports),
            vcpus,
        })
    }

    /// Write a snapshot to `dir` (with `diff`, only the pages written since the last snapshot).
    /// A running VM is paused for it and resumed afterwards, also when the snapshot fails; a
    /// paused VM stays paused.
    pub fn snapshot(&self, dir: &Path, diff: bool) -> Result<SnapshotResult, ControlOpError> {
        // A jailed VM writes where its jail directory is its `/`; the paths it is given, and
        // the parents its diff snapshots record, stay host paths.
        let at = match self.jail.get() {
            Some(j) => j.inside(dir)?,
            None => dir.to_path_buf(),
        };
        let _op = self.begin(Op::Snapshot)?;
        let t0 = Instant::now();
        let was_paused = self.is_paused();
        if !was_paused {
            self.pause_now()?;
        }
        let result = self
            .save_state()
            .and_then(|state| Ok(state.encode()?))
            .and_then(|state| self.write_snapshot(dir, &at, &state, diff));
        let pause = t0.elapsed();
        if !was_paused {
            self.resume_now();
        }
        Ok(SnapshotResult {
            path: dir.display().to_string(),
            pause_ms: pause.as_secs_f64() * 1e3,
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
            stats: result?,
        })
    }

    /// Write the snapshot of host path `dir` at `at` (the same path, or the one inside the
    /// jail).
    fn write_snapshot(
        &self,
        dir: &Path,
        at: &Path,
        state: &[u8],
        diff: bool,
    ) -> Result<SnapshotStats, ControlOpError> {
        let mut slots = lock(&self.slots);
        let mut last = lock(&self.last_snapshot);
        let stats = if diff {
            let parent = last.clone().ok_or(ControlOpError::NoBase)?;
            if !slots.dirty_logging() {
                return Err(ControlOpError::NoBase);
            }
            let dirty = slots.take_dirty(&self.fd, &self.mem)?;
            let r = snapshot::create(
                at,
                state,
                &self.mem,
                MemoryContent::Diff {
                    dirty: &dirty,
                    parent: &parent,
                },
            );
            if r.is_err() {
                // The pages taken from the log are not in any snapshot: the next diff must not
                // build on this chain.
                *last = None;
            }
            r?
        } else {
            let stats = snapshot::create(
                at,
                state,
                &self.mem,
                MemoryContent::Full {
                    file_backed: self.file_backed,
                },
            )?;
            // From here on the log records what the next diff snapshot needs.
            slots.set_dirty_logging(&self.fd, true)?;
            slots.take_dirty(&self.fd, &self.mem)?;
            stats
        };
        *last = Some(std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()));
        Ok(stats)
    }
}
