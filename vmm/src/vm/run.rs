//! Running a built VM: start the vCPU threads and run the device event loop on this thread until
//! the guest stops or something ends the VM.

use super::{Vm, VmError};
use crate::device_manager::hypercall::{self, HypercallState};
use crate::host::console::ConsoleIn;
use crate::host::exit::{ExitReason, ExitSignal};
use crate::vcpu::cpuid::Resolved;
use event_manager::{EventOps, Events, MutEventSubscriber, SubscriberOps};
use plainvm_devices::lock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vmm_sys_util::epoll::EventSet;

/// What the run produced, for the caller to report.
pub struct RunResult {
    pub reason: ExitReason,
    pub milestones: Vec<(u8, Instant)>,
    /// The CPUID template (None for a restored VM, which keeps its saved CPUID).
    pub template: Option<Resolved>,
    /// Boot marks, heartbeat and agent state from the hypercall device.
    pub hypercall: Arc<HypercallState>,
    /// When the vCPUs were started.
    pub vcpu_start: Instant,
}

impl Vm {
    /// Start the vCPUs and run the device event loop until the VM ends; says why it ended.
    /// A VM runs once.
    pub fn run(&self) -> Result<RunResult, VmError> {
        let mut startup = lock(&self.startup).take().ok_or(VmError::AlreadyStarted)?;
        let events = &mut startup.events;
        let done = Arc::new(AtomicBool::new(false));
        events.add_subscriber(Arc::new(Mutex::new(ExitWatch {
            exit: self.exit.clone(),
            done: done.clone(),
        })));
        let serial_watch = crate::device_manager::legacy::SerialWatch::new(self.serial.clone())
            .map_err(crate::device_manager::DeviceError::from)?;
        events.add_subscriber(Arc::new(Mutex::new(serial_watch)));
        let _raw = if crate::host::terminal::stdin_is_tty() {
            events.add_subscriber(Arc::new(Mutex::new(ConsoleIn::new(self.serial.clone()))));
            crate::host::terminal::enter_raw_mode()
        } else {
            None
        };
        let vcpu_start = hypercall::start(events, self.hypercall.clone(), self.exit.clone())
            .map_err(crate::device_manager::DeviceError::from)?;
        for (i, v) in startup.vcpus.into_iter().enumerate() {
            let thread = v.spawn()?;
            if let Some(&cpu) = self.config.cpu_affinity.get(i) {
                use std::os::unix::thread::JoinHandleExt;
                // Checked with the configuration; failing now (after a migration's commit)
                // must not end the VM.
                if let Err(e) = crate::vcpu::affinity::pin(thread.as_pthread_t(), i, cpu) {
                    plainvm_devices::log_warn!("{e}; the vCPU runs unpinned");
                }
            }
        }
        // Start-up is over: what it allocated and freed need not stay resident for the VM's life.
        crate::host::heap::release_free_pages();
        // Everything this thread opens is open: the event loop runs filtered.
        if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::EventLoop) {
            self.control.stop();
            return Err(e.into());
        }
        while !done.load(Ordering::SeqCst) {
            events.run().map_err(VmError::EventLoop)?;
        }
        self.control.stop();
        lock(&self.serial).flush();
        let milestones = lock(&self.milestones).clone();
        Ok(RunResult {
            reason: self.exit.reason(),
            milestones,
            template: self.template,
            hypercall: self.hypercall.clone(),
            vcpu_start,
        })
    }
}

/// Ends the event loop when the exit signal fires.
struct ExitWatch {
    exit: Arc<ExitSignal>,
    done: Arc<AtomicBool>,
}

impl MutEventSubscriber for ExitWatch {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.exit.eventfd(), EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.exit.eventfd().read();
        self.done.store(true, Ordering::SeqCst);
    }
}
