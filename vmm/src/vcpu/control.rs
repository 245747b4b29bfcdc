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

#[derive(Default)]
struct State {
    want_paused: bool,
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
    /// Control for `count` vCPUs, which start running unless `paused`.
    pub fn new(count: usize, paused: bool) -> Self {
        Self {
            count,
            state: Mutex::new(State {
                want_paused: paused,
                ..Default::default()
            }),
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

    /// Stop every vCPU and wait until all are parked (they are then outside KVM_RUN).
    pub fn pause(&self, timeout: Duration) -> Result<(), ControlError> {
        let mut s = self.lock();
        if s.stopping {
            return Err(ControlError::Stopping);
        }
        s.want_paused = true;
        drop(s);
        self.kick_all();
        let s = self.lock();
        let (s, res) = self
            .changed
            .wait_timeout_while(s, timeout, |s| s.parked < self.count && !s.stopping)
            .unwrap_or_else(|e| e.into_inner());
        if res.timed_out() {
            drop(s);
            self.resume();
            return Err(ControlError::PauseTimeout(timeout));
        }
        Ok(())
    }

    /// Let parked vCPUs run again.
    pub fn resume(&self) {
        self.lock().want_paused = false;
        self.changed.notify_all();
    }

    /// True when vCPUs are (being) held paused.
    pub fn is_paused(&self) -> bool {
        self.lock().want_paused
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
        if s.want_paused && !s.stopping {
            s.parked += 1;
            self.changed.notify_all();
            s = self
                .changed
                .wait_while(s, |s| s.want_paused && !s.stopping)
                .unwrap_or_else(|e| e.into_inner());
            s.parked -= 1;
        }
        !s.stopping
    }
}
