//! One VM's life: `builder` makes it (boot or restore), the `Vm` handle drives it (`run`,
//! `control`: pause, resume, snapshot; `actions`: stop, kill, balloon; `migrate`), `state` is
//! what a snapshot or migration carries.

pub mod actions;
pub mod builder;
pub mod control;
pub mod info;
pub mod migrate;
pub mod ops;
pub mod run;
pub mod state;

pub use builder::RestoreMemory;
pub use run::RunResult;

use crate::config::VmConfig;
use crate::device_manager::balloon::BalloonControl;
use crate::device_manager::hypercall::HypercallState;
use crate::device_manager::loop_gate::LoopGate;
use crate::device_manager::virtio::EventLoop;
use crate::host::cgroup::CgroupInfo;
use crate::host::exit::{ExitReason, ExitSignal};
use crate::host::jail::JailInfo;
use crate::memory::slots::MemorySlots;
use crate::migration::progress::Progress;
use crate::vcpu::control::VcpuControl;
use crate::vcpu::cpuid::Resolved;
use crate::vcpu::Vcpu;
use kvm_bindings::CpuId;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use plainvm_devices::legacy::post_code::Milestones;
use plainvm_devices::legacy::serial::SerialConsole;
use plainvm_devices::virtio::MmioTransport;
use plainvm_devices::{lock, GuestRam};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0} (is KVM available here, and may this user open it?)")]
    Kvm(kvm_ioctls::Error),
    #[error("KVM refused to {what}: {source}")]
    KvmSetup {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("the device event loop failed: {0:?}")]
    EventLoop(event_manager::Error),
    #[error("the VM's configuration cannot be used here: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] crate::boot::BootError),
    #[error(transparent)]
    Cpuid(#[from] crate::vcpu::cpuid::CpuidError),
    #[error(transparent)]
    Vcpu(#[from] crate::vcpu::VcpuError),
    #[error(transparent)]
    Devices(#[from] crate::device_manager::DeviceError),
    #[error(transparent)]
    Control(#[from] crate::vcpu::control::ControlError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error(transparent)]
    Slots(#[from] crate::memory::slots::SlotError),
    #[error(transparent)]
    VcpuState(#[from] crate::vcpu::state::VcpuStateError),
    #[error(transparent)]
    VmState(#[from] state::VmStateError),
    #[error("the saved VM has {saved} vCPU state(s) for {cpus} vCPU(s): the snapshot or stream is corrupted")]
    BadSnapshot { saved: usize, cpus: u8 },
    #[error(transparent)]
    Ksm(#[from] crate::memory::ksm::KsmError),
    #[error("this VM has been started already")]
    AlreadyStarted,
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// One vCPU as the VMM sees it from outside its thread.
struct VcpuHandle {
    fd: Arc<Mutex<VcpuFd>>,
    cpuid: CpuId,
}

/// What `run` consumes: the device event loop and the vCPU threads to start.
struct Startup {
    events: EventLoop,
    vcpus: Vec<Vcpu>,
}

/// A built VM: KVM, guest memory, devices and vCPUs. It runs once `run` is called; until then
/// (a migration waiting for its commit) nothing of it touches a disk, tap or socket.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    config: VmConfig,
    mem: GuestRam,
    /// Guest memory maps an older snapshot's memory file (restored lazily).
    file_backed: bool,
    slots: Mutex<MemorySlots>,
    /// The last snapshot taken (or restored from): the parent of the next diff snapshot.
    last_snapshot: Mutex<Option<PathBuf>>,
    vcpus: Vec<VcpuHandle>,
    control: Arc<VcpuControl>,
    /// The virtio devices, in attach order.
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// Parks the device event loop while the VM is paused.
    gate: Arc<LoopGate>,
    hypercall: Arc<HypercallState>,
    serial: Arc<Mutex<SerialConsole>>,
    milestones: Milestones,
    balloon: Option<BalloonControl>,
    exit: Arc<ExitSignal>,
    started: Instant,
    /// The CPUID template (None for a restored VM, which keeps its saved CPUID).
    template: Option<Resolved>,
    /// The running or last migration's progress.
    migration: Mutex<Option<Progress>>,
    /// Why the process should end once the current API request is answered.
    pending_exit: Mutex<Option<ExitReason>>,
    startup: Mutex<Option<Startup>>,
    /// The control lock (`ops`): the operation running now.
    op: Mutex<Option<ops::Op>>,
    op_done: Condvar,
    /// Set once the process has entered its jail (host/jail.rs).
    jail: OnceLock<JailInfo>,
    /// Set once the process is in its own cgroup (host/cgroup.rs).
    cgroup: OnceLock<CgroupInfo>,
}

impl Vm {
    /// The VM's configuration.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The hypercall device's view of the guest (boot marks, agent, heartbeat).
    pub fn hypercall(&self) -> &Arc<HypercallState> {
        &self.hypercall
    }

    /// End the VM for `reason` (the first reason given wins).
    pub fn end(&self, reason: ExitReason) {
        self.exit.request(reason);
    }

    /// Record that the process now runs in `jail` (snapshot paths are then mapped into it).
    pub fn set_jailed(&self, jail: JailInfo) {
        let _ = self.jail.set(jail);
    }

    /// Record the cgroup the process runs in.
    pub fn set_cgroup(&self, cgroup: CgroupInfo) {
        let _ = self.cgroup.set(cgroup);
    }

    /// The exit a finished request asked for (after a migration, or a kill), to be carried out
    /// once its answer is out.
    pub fn take_pending_exit(&self) -> Option<ExitReason> {
        lock(&self.pending_exit).take()
    }
}
