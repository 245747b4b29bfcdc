//! Parks the device event loop while the VM is paused, so no device touches guest memory or its
//! queues while a snapshot or the last migration pass reads them.

use crate::host::exit::{ExitReason, ExitSignal};
use event_manager::{EventOps, Events, MutEventSubscriber};
use plainvm_devices::lock;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// How often a parked loop looks whether the VM is ending (a `kill` of a paused VM).
const EXIT_POLL: Duration = Duration::from_millis(20);

/// Errors closing the gate.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("the device event loop did not stop within {0:?}; the VM keeps running")]
    Timeout(Duration),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    /// Asked to park; the loop has not got there yet.
    Closing,
    /// The loop is parked.
    Closed,
}

/// Shared by the controller (which closes and opens it) and the event loop (which parks in it).
pub struct LoopGate {
    state: Mutex<State>,
    changed: Condvar,
    evt: EventFd,
    exit: Arc<ExitSignal>,
}

impl LoopGate {
    /// An open gate; the loop also leaves it when `exit` is requested.
    pub fn new(exit: Arc<ExitSignal>) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            state: Mutex::new(State::Open),
            changed: Condvar::new(),
            evt: EventFd::new(EFD_NONBLOCK)?,
            exit,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Park the event loop and wait until it is parked (at once if it already is). Must not be
    /// called on the event loop's own thread.
    pub fn close(&self, timeout: Duration) -> Result<(), GateError> {
        let mut s = self.lock();
        if *s == State::Closed {
            return Ok(());
        }
        *s = State::Closing;
        let _ = self.evt.write(1);
        let (mut s, _) = self
            .changed
            .wait_timeout_while(s, timeout, |s| *s == State::Closing)
            .unwrap_or_else(|e| e.into_inner());
        if *s != State::Closed {
            *s = State::Open; // the loop will not park when it gets to the event
            return Err(GateError::Timeout(timeout));
        }
        Ok(())
    }

    /// Let the event loop run again.
    pub fn open(&self) {
        *self.lock() = State::Open;
        self.changed.notify_all();
    }

    /// The event-loop side: park while closed (or until the VM ends).
    fn park(&self) {
        let _ = self.evt.read();
        let mut s = self.lock();
        if *s != State::Closing {
            return;
        }
        *s = State::Closed;
        self.changed.notify_all();
        while *s == State::Closed && !self.exit.is_requested() {
            if super::hypercall::sigterm_pending() {
                // A paused guest cannot shut itself down: SIGTERM ends it here and now.
                self.exit.request(ExitReason::Crash(
                    "stopped by SIGTERM while paused (a paused guest cannot power off cleanly)"
                        .into(),
                ));
                break;
            }
            s = self
                .changed
                .wait_timeout(s, EXIT_POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The gate's event-loop subscriber.
pub struct GateSubscriber(pub Arc<LoopGate>);

impl MutEventSubscriber for GateSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.0.evt, EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.0.park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_manager::{EventManager, SubscriberOps};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// An event loop on its own thread, running until `stop`.
    fn event_loop(gate: Arc<LoopGate>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut events =
                EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
            events.add_subscriber(Arc::new(Mutex::new(GateSubscriber(gate))));
            while !stop.load(Ordering::SeqCst) {
                let _ = events.run_with_timeout(10);
            }
        })
    }

    #[test]
    fn close_parks_the_loop_and_open_releases_it() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let gate = LoopGate::new(exit).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let t = event_loop(gate.clone(), stop.clone());
        gate.close(Duration::from_secs(5)).unwrap();
        assert_eq!(*gate.lock(), State::Closed);
        gate.close(Duration::from_secs(5)).unwrap(); // closing twice is fine
        gate.open();
        stop.store(true, Ordering::SeqCst);
        t.join().unwrap(); // the loop ran on and saw `stop`
    }

    #[test]
    fn a_loop_that_never_runs_times_out_and_leaves_the_gate_open() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let gate = LoopGate::new(exit).unwrap();
        assert!(gate.close(Duration::from_millis(50)).is_err());
        assert_eq!(*gate.lock(), State::Open);
    }

    #[test]
    fn a_parked_loop_leaves_when_the_vm_ends() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let gate = LoopGate::new(exit.clone()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let t = event_loop(gate.clone(), stop.clone());
        gate.close(Duration::from_secs(5)).unwrap();
        exit.request(crate::host::exit::ExitReason::PowerOff);
        stop.store(true, Ordering::SeqCst);
        t.join().unwrap();
    }
}
