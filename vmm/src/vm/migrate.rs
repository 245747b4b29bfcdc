//! Live migration of this VM: the `Source` the sender drives, the progress `GET /migrate`
//! reports, and ending this copy once the destination runs it.

use super::ops::Op;
use super::Vm;
use crate::host::exit::ExitReason;
use crate::memory::slots::DirtyBitmap;
use crate::migration::converge::Hold;
use crate::migration::progress::{MigrateResult, Phase, Progress};
use crate::migration::sender::{self, Hello, MigrateError, MigrateOptions, Source, SourceError};
use crate::vcpu::control::{Holder, VcpuControl};
use plainvm_devices::{lock, GuestRam};
use std::sync::Arc;
use std::time::Duration;

impl Vm {
    /// Migrate to `opts.to` and wait for the end. On success this copy ends once the API has
    /// answered; on failure before the commit point it keeps running here.
    pub fn migrate(&self, opts: &MigrateOptions) -> Result<MigrateResult, MigrateError> {
        let _op = self
            .begin(Op::Migrate)
            .map_err(|e| MigrateError::Busy(e.to_string()))?;
        *lock(&self.migration) = Some(Progress::default());
        let report = |p: &Progress| *lock(&self.migration) = Some(p.clone());
        let result = sender::migrate(self, opts, &report);
        let mut m = lock(&self.migration);
        let mut last = m.clone().unwrap_or_default();
        last.phase = match result {
            Ok(_) => Phase::Done,
            Err(_) => Phase::Failed,
        };
        *m = Some(last);
        if let Ok(r) = &result {
            // The process ends once the API has answered (see `api::server`).
            *lock(&self.pending_exit) = Some(ExitReason::Migrated(format!(
                "migrated to {}: downtime {:.1} ms, total {:.0} ms, {} passes, {:.0} MiB sent",
                opts.to,
                r.downtime_ms,
                r.total_ms,
                r.passes,
                r.bytes_sent as f64 / 1048576.0
            )));
        }
        result
    }

    /// The running or last migration's progress (None: none has started).
    pub fn migration_progress(&self) -> Option<Progress> {
        lock(&self.migration).clone()
    }
}

impl Source for Vm {
    fn hello(&self) -> Hello {
        Hello {
            config: self.config.clone(),
            cpuid: self
                .vcpus
                .first()
                .map(|v| v.cpuid.as_slice().to_vec())
                .unwrap_or_default(),
        }
    }

    fn memory(&self) -> &GuestRam {
        &self.mem
    }

    fn file_backed(&self) -> bool {
        self.file_backed
    }

    fn start_dirty_log(&self) -> Result<(), SourceError> {
        // The log now records what the passes must resend; it no longer serves diff snapshots.
        *lock(&self.last_snapshot) = None;
        let mut slots = lock(&self.slots);
        slots.set_dirty_logging(&self.fd, true)?;
        slots.take_dirty(&self.fd, &self.mem)?;
        Ok(())
    }

    fn take_dirty(&self) -> Result<Vec<DirtyBitmap>, SourceError> {
        Ok(lock(&self.slots).take_dirty(&self.fd, &self.mem)?)
    }

    fn is_paused(&self) -> bool {
        Vm::is_paused(self)
    }

    fn pause(&self) -> Result<(), SourceError> {
        Ok(self.pause_now()?)
    }

    fn resume(&self) {
        self.resume_now()
    }

    fn save_state(&self) -> Result<Vec<u8>, SourceError> {
        Ok(Vm::save_state(self)?.encode()?)
    }

    fn throttle_target(&self) -> Arc<dyn Hold> {
        Arc::new(VcpuHold(self.control.clone()))
    }
}

/// Auto-converge holds the vCPUs only (the devices keep running).
struct VcpuHold(Arc<VcpuControl>);

impl Hold for VcpuHold {
    fn hold(&self, timeout: Duration) -> bool {
        self.0.pause(Holder::Throttle, timeout).is_ok()
    }

    fn release(&self) {
        self.0.resume(Holder::Throttle)
    }
}
