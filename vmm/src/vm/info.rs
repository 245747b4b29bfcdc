//! What `GET /vm` and `plainvm info` report about a VM.

use super::Vm;
use crate::config::VmConfig;
use serde::{Deserialize, Serialize};

/// Whether the guest runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    Running,
    Paused,
}

/// A VM's state, configuration and what its guest reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmInfo {
    pub state: RunState,
    pub config: VmConfig,
    pub uptime_ms: u128,
    /// The VMM process.
    pub pid: u32,
    /// A guest agent that obeys power requests has announced itself (`plainvm stop` is graceful).
    pub agent: bool,
    /// What the guest reports through the hypercall device.
    pub guest: GuestInfo,
    /// The VMM's threads run under their seccomp filters (off only with `--seccomp off`).
    #[serde(default)]
    pub seccomp: bool,
    /// The VMM runs in its jail (`--jail`: its own mount namespace and root, an unprivileged
    /// user, no capabilities).
    #[serde(default)]
    pub jailed: bool,
    /// The jail's user, group and directory (the VM's `/`), when jailed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<crate::host::jail::JailInfo>,
    /// The VM's own cgroup (`--cgroup`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<crate::host::cgroup::CgroupInfo>,
}

/// The hypercall device's view of the guest.
#[derive(Clone, Debug, Serialize, Deserialize)]
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

impl Vm {
    /// State, configuration, uptime and the guest's reports.
    pub fn info(&self) -> VmInfo {
        let h = self.hypercall.snapshot();
        VmInfo {
            state: if self.is_paused() {
                RunState::Paused
            } else {
                RunState::Running
            },
            config: self.config.clone(),
            uptime_ms: self.started.elapsed().as_millis(),
            pid: std::process::id(),
            agent: self.agent_listening(),
            seccomp: crate::seccomp::enabled(),
            jailed: self.jail.get().is_some(),
            jail: self.jail.get().cloned(),
            cgroup: self.cgroup.get().cloned(),
            guest: GuestInfo {
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
            },
        }
    }
}
