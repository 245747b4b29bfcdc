//! What a migration reports: its progress while it runs (`GET /migrate`) and its outcome.

use serde::{Deserialize, Serialize};

/// Where a migration is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Connecting and agreeing with the destination.
    #[default]
    #[serde(rename = "starting")]
    Starting,
    /// Sending all of memory while the guest runs.
    #[serde(rename = "first pass")]
    FirstPass,
    /// Sending what the guest dirtied since the last pass.
    #[serde(rename = "dirty pages")]
    DirtyPages,
    /// Over: the VM runs at the destination.
    #[serde(rename = "done")]
    Done,
    /// Over: the VM runs here.
    #[serde(rename = "failed")]
    Failed,
}

/// Progress, for the API and the progress bar.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Progress {
    pub phase: Phase,
    pub pass: u32,
    pub pages_left: u64,
    pub dirty_rate_mib_s: f64,
    pub bandwidth_mib_s: f64,
    pub estimated_downtime_ms: f64,
    pub throttle_percent: u32,
    pub bytes_sent: u64,
}

impl Progress {
    /// True while the migration has not ended.
    pub fn running(&self) -> bool {
        !matches!(self.phase, Phase::Done | Phase::Failed)
    }
}

/// The outcome of a successful migration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MigrateResult {
    pub downtime_ms: f64,
    pub total_ms: f64,
    pub passes: u32,
    pub bytes_sent: u64,
    pub bandwidth_mib_s: f64,
    /// The largest share of time the vCPUs were held back to converge.
    pub max_throttle_percent: u32,
}
