//! What can be done to a running VM from outside: info, pause, resume, snapshot.

use crate::config::VmConfig;
use crate::memory::slots::{MemorySlots, SlotError};
use crate::snapshot::{self, MemoryContent, SnapshotError, SnapshotStats};
use crate::vcpu::control::{ControlError, VcpuControl};
use crate::vcpu::lock;
use crate::vcpu::state::{VcpuState, VcpuStateError};
use crate::vm::state::{KvmVmState, VmState, VmStateError};
use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuFd, VmFd};
use plainvm_devices::legacy::serial::SerialConsole;
use plainvm_devices::virtio::MmioTransport;
use plainvm_devices::GuestRam;
use serde::Serialize;
use std::path::Path;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a pause may take before it is given up (the VM then keeps running).
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of control operations. A failed operation leaves the VM as it was.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Vcpu(#[from] VcpuStateError),
    #[error(transparent)]
    Vm(#[from] VmStateError),
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
}

/// One vCPU as the controller sees it.
pub struct VcpuHandle {
    pub fd: Arc<Mutex<VcpuFd>>,
    pub cpuid: CpuId,
}

/// A running VM's parts that control operations need.
pub struct VmController {
    pub slots: Mutex<MemorySlots>,
    /// The last snapshot taken (or restored from): the parent of the next diff snapshot.
    pub last_snapshot: Mutex<Option<PathBuf>>,
    pub vm: Arc<VmFd>,
    pub mem: GuestRam,
    /// Guest memory maps an older snapshot's memory file (restored lazily).
    pub file_backed: bool,
    pub config: VmConfig,
    pub vcpus: Vec<VcpuHandle>,
    /// The /dev/kvm handle (for the list of MSRs to save).
    pub kvm: kvm_ioctls::Kvm,
    pub control: Arc<VcpuControl>,
    pub serial: Arc<Mutex<SerialConsole>>,
    pub started: Instant,
    /// Why the process should end once the current API request is answered (after a migration).
    pub pending_exit: Mutex<Option<crate::host::exit::ExitReason>>,
    /// The running or last migration's progress.
    pub migration: Mutex<Option<crate::migration::sender::Progress>>,
    /// The virtio devices, in attach order (their state goes into `VmState`).
    pub devices: Vec<Arc<Mutex<MmioTransport>>>,
    /// Parks the device event loop while the VM is paused.
    pub gate: Arc<crate::device_manager::loop_gate::LoopGate>,
    /// The hypercall device's state: the guest agent and host requests (stop, see `vm_actions`).
    pub hypercall: Arc<crate::device_manager::hypercall::HypercallState>,
    /// Ends the VM (the `kill` action, and after a migration).
    pub exit: Arc<crate::host::exit::ExitSignal>,
    /// Changes the balloon's target (None: no balloon device).
    pub balloon: Option<crate::device_manager::balloon::BalloonControl>,
}

impl VmController {
    fn write_snapshot(
        &self,
        dir: &Path,
        state: &VmState,
        diff: bool,
    ) -> Result<SnapshotStats, ControllerError> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = self.last_snapshot.lock().unwrap_or_else(|e| e.into_inner());
        let stats = if diff {
            let parent = last.clone().ok_or(ControllerError::NoBase)?;
            if !slots.dirty_logging() {
                return Err(ControllerError::NoBase);
            }
            let dirty = slots.take_dirty(&self.vm, &self.mem)?;
            let r = snapshot::create(
                dir,
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
                dir,
                state,
                &self.mem,
                MemoryContent::Full {
                    file_backed: self.file_backed,
                },
            )?;
            // From here on the log records what the next diff snapshot needs.
            slots.set_dirty_logging(&self.vm, true)?;
            slots.take_dirty(&self.vm, &self.mem)?;
            stats
        };
        *last = Some(std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()));
        Ok(stats)
    }
}

/// `GET /vm`.
#[derive(Serialize)]
pub struct VmInfo {
    pub state: &'static str,
    pub config: VmConfig,
    pub uptime_ms: u128,
    /// The VMM process.
    pub pid: u32,
    /// A guest agent that obeys power requests has announced itself (`plainvm stop` is graceful).
    pub agent: bool,
    /// What the guest reports through the hypercall device.
    pub guest: GuestInfo,
}

/// The hypercall device's view of the guest, for `GET /vm`.
#[derive(Serialize)]
pub struct GuestInfo {
    /// Boot marks: stage and milliseconds since the VM started.
    pub boot_marks: Vec<(u32, f64)>,
    /// Bumped on every restore and migration.
    pub generation: u64,
    /// The heartbeat interval the guest declared, and its beats so far.
    pub heartbeat_interval_ms: Option<u128>,
    pub heartbeats: u64,
    /// Milliseconds since the last beat.
    pub last_heartbeat_ms_ago: Option<u128>,
    pub free_memory_kib: Option<u64>,
}

/// `PUT /snapshot/create` result.
#[derive(Serialize)]
pub struct SnapshotResult {
    pub path: String,
    pub pause_ms: f64,
    pub total_ms: f64,
    #[serde(flatten)]
    pub stats: SnapshotStats,
}

impl VmController {
    /// State, configuration and uptime.
    pub fn info(&self) -> VmInfo {
        VmInfo {
            state: if self.control.is_paused() {
                "Paused"
            } else {
                "Running"
            },
            config: self.config.clone(),
            uptime_ms: self.started.elapsed().as_millis(),
            pid: std::process::id(),
            agent: self.agent_listening(),
            guest: {
                let h = self.hypercall.snapshot();
                GuestInfo {
                    boot_marks: h
                        .marks
                        .iter()
                        .map(|m| {
                            let ms = m.at.saturating_duration_since(self.started);
                            (m.stage, ms.as_secs_f64() * 1e3)
                        })
                        .collect(),
                    generation: h.generation,
                    heartbeat_interval_ms: h.heartbeat_interval.map(|d| d.as_millis()),
                    heartbeats: h.heartbeats,
                    last_heartbeat_ms_ago: h.last_heartbeat.map(|t| t.elapsed().as_millis()),
                    free_memory_kib: h.free_memory_kib,
                }
            },
        }
    }

    /// Stop all vCPUs, then the devices: the event loop parks and work in flight finishes, so
    /// nothing changes guest memory or device state until `resume`. On failure a running VM
    /// runs on, and one that was already paused stays paused.
    pub fn pause(&self) -> Result<(), ControllerError> {
        let was_paused = self.control.is_paused();
        self.control.pause(PAUSE_TIMEOUT)?;
        let devices = self
            .gate
            .close(PAUSE_TIMEOUT)
            .map_err(ControllerError::from)
            .and_then(|()| Ok(crate::device_manager::virtio::quiesce_all(&self.devices)?));
        if let Err(e) = devices {
            if !was_paused {
                self.resume();
            }
            return Err(e);
        }
        Ok(())
    }

    /// Let devices and vCPUs run again.
    pub fn resume(&self) {
        self.gate.open();
        self.control.resume();
    }

    /// Read the whole VM state (vCPUs must be paused).
    pub fn save_state(&self) -> Result<VmState, ControllerError> {
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
            kvm: KvmVmState::save(&self.vm)?,
            serial: self.serial.lock().unwrap_or_else(|e| e.into_inner()).save(),
            hypercall: {
                let h = self.hypercall.snapshot();
                crate::vm::state::HypercallSaved {
                    generation: h.generation,
                    agent: h.agent,
                }
            },
            devices: crate::device_manager::virtio::save_all(&self.devices),
            vcpus,
        })
    }

    /// Write a snapshot to `dir` (with `diff`, only the pages written since the last snapshot).
    /// A running VM is paused for it and resumed afterwards, also when the snapshot fails; a
    /// paused VM stays paused.
    pub fn snapshot(&self, dir: &Path, diff: bool) -> Result<SnapshotResult, ControllerError> {
        let t0 = Instant::now();
        let was_paused = self.control.is_paused();
        if !was_paused {
            self.pause()?;
        }
        let result = self
            .save_state()
            .and_then(|state| self.write_snapshot(dir, &state, diff));
        let pause = t0.elapsed();
        if !was_paused {
            self.resume();
        }
        Ok(SnapshotResult {
            path: dir.display().to_string(),
            pause_ms: pause.as_secs_f64() * 1e3,
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
            stats: result?,
        })
    }
}
