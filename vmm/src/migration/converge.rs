//! Auto-converge: when the guest dirties memory faster than the link sends it, take a growing
//! share of every period away from its vCPUs.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// One throttle period.
const PERIOD: Duration = Duration::from_millis(50);
/// Highest share of a period the vCPUs are held.
pub const MAX_PERCENT: u32 = 99;

/// What the throttle holds: the VM's vCPUs.
pub trait Hold: Send + Sync {
    /// Hold the vCPUs (within `timeout`); false when they could not be held this time.
    fn hold(&self, timeout: Duration) -> bool;
    /// Let them run again.
    fn release(&self);
}

/// A running throttle; vCPUs run freely again when it is stopped.
pub struct Throttle {
    percent: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Throttle {
    /// Start a throttle at 0 % for the vCPUs behind `target`.
    pub fn start(target: Arc<dyn Hold>) -> Self {
        let percent = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (percent.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("throttle".into())
            .spawn(move || {
                crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::Throttle);
                while !s.load(Ordering::SeqCst) {
                    let pct = p.load(Ordering::SeqCst).min(MAX_PERCENT);
                    if pct == 0 || !target.hold(Duration::from_secs(1)) {
                        std::thread::sleep(PERIOD);
                        continue;
                    }
                    std::thread::sleep(PERIOD * pct / 100);
                    target.release();
                    std::thread::sleep(PERIOD * (100 - pct) / 100);
                }
            })
            .ok();
        Self {
            percent,
            stop,
            thread,
        }
    }

    /// The share of each period the vCPUs are held now.
    pub fn percent(&self) -> u32 {
        self.percent.load(Ordering::SeqCst)
    }

    /// Hold the vCPUs for a larger share (by `step` points, up to `MAX_PERCENT`).
    pub fn increase(&self, step: u32) {
        let next = (self.percent() + step).min(MAX_PERCENT);
        self.percent.store(next, Ordering::SeqCst);
    }

    /// Stop throttling; returns once the throttle thread has let the vCPUs go.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
