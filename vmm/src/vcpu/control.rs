//! Pausing and resuming vCPUs: kick each one out of KVM_RUN with a signal, park it, wake it.

use kvm_bindings::kvm_run;
use plainvm_devices::lock;
use std::cell::Cell;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Errors controlling vCPUs.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the vCPUs did not stop within {0:?}; the VM keeps running")]
    PauseTimeout(Duration),
    #[error("the VM is shutting down")]
    Stopping,
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
}

thread_local! {
    /// This vCPU thread's kvm_run page, so the kick signal handler can set `immediate_exit`.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal that kicks a vCPU out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's own kvm_run mapping, set before it entered the
        // run loop and valid for the thread's life; a byte store is async-signal-safe.
        unsafe { (*run).immediate_exit = 1 };
    }
}

/// Install the kick handler (once per process).
pub fn install_kick_handler() -> Result<(), ControlError> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
        .map_err(ControlError::Signal)
}

/// Remember this thread's kvm_run page for the kick handler.
pub fn set_thread_kvm_run(run: *mut kvm_run) {
    KVM_RUN.with(|c| c.set(run));
}

/// Who holds the vCPUs paused. They run only when nobody does, so the migration's throttle
/// releasing its hold never resumes a VM the user paused, and the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// A pause through the API (and the pauses of snapshot, migration, stop).
    User = 1,
    /// Auto-converge during a migration.
    Throttle = 2,
}

#[derive(Default)]
struct State {
    /// `Holder` bits.
    holds: u8,
    stopping: bool,
    parked: usize,
}

/// Shared by the VMM (which pauses and resumes) and the vCPU threads (which park).
pub struct VcpuControl {
    count: usize,
    state: Mutex<State>,
    changed: Condvar,
    threads: Mutex<Vec<libc::pthread_t>>,
}

impl VcpuControl {
    /// Control for `count` vCPUs, which start running.
    pub fn new(count: usize) -> Self {
        Self {
            count,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            threads: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Register the calling vCPU thread for kicks.
    pub fn register_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        lock(&self.threads).push(me);
    }

    fn kick_all(&self) {
        for t in lock(&self.threads).iter() {
            // SAFETY: the threads are vCPU threads of this process that registered themselves
            // and live until the process exits; the signal has a handler.
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
    }

    /// Hold every vCPU for `who` and wait until all are parked (they are then outside
    /// KVM_RUN). On a timeout `who`'s hold is dropped again.
    pub fn pause(&self, who: Holder, timeout: Duration) -> Result<(), ControlError> {
        let mut s = self.lock();
        if s.stopping {
            return Err(ControlError::Stopping);
        }
        s.holds |= who as u8;
        drop(s);
        self.kick_all();
        let s = self.lock();
        let (s, res) = self
            .changed
            .wait_timeout_while(s, timeout, |s| s.parked < self.count && !s.stopping)
            .unwrap_or_else(|e| e.into_inner());
        if res.timed_out() {
            drop(s);
            self.resume(who);
            return Err(ControlError::PauseTimeout(timeout));
        }
        Ok(())
    }

    /// Drop `who`'s hold; the vCPUs run again once nobody holds them.
    pub fn resume(&self, who: Holder) {
        self.lock().holds &= !(who as u8);
        self.changed.notify_all();
    }

    /// True when `who` holds the vCPUs paused.
    pub fn is_held_by(&self, who: Holder) -> bool {
        self.lock().holds & who as u8 != 0
    }

    /// The VM is ending: release parked vCPUs so their threads can finish.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.changed.notify_all();
        self.kick_all();
    }

    /// Called by a vCPU thread between KVM_RUN calls: parks while a pause is requested.
    /// Returns false when the VM is stopping.
    pub fn checkpoint(&self) -> bool {
        let mut s = self.lock();
        if s.holds != 0 && !s.stopping {
            s.parked += 1;
            self.changed.notify_all();
            s = self
                .changed
                .wait_while(s, |s| s.holds != 0 && !s.stopping)
                .unwrap_or_else(|e| e.into_inner());
            s.parked -= 1;
        }
        !s.stopping
    }
}
