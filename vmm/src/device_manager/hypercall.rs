//! The VMM side of the hypercall device: put it on the MMIO bus, end the VM on POWER, log guest
//! text, report missed heartbeats, post host requests, and turn SIGTERM into a graceful power-off
//! request when a guest agent is listening.

use crate::device_manager::virtio::EventLoop;
use crate::host::exit::{ExitReason, ExitSignal};
use event_manager::{EventOps, Events, MutEventSubscriber, SubscriberOps};
use plainvm_devices::hypercall::{proto, HeartbeatEvent, Hypercall, HypercallHost};
pub use plainvm_devices::hypercall::{HypercallState, RequestKind, StateError};
use plainvm_devices::Bus;
use plainvm_devices::GuestRam;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

/// How long a guest agent gets to power off after SIGTERM before plainvm stops the VM anyway.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often heartbeats and the stop deadline are checked while there is one to watch.
const TICK: Duration = Duration::from_millis(100);
/// How often the watch looks whether the guest declared a heartbeat, when there is nothing to
/// watch: an idle VM's event loop should sleep, not wake ten times a second.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Errors setting up the hypercall device.
#[derive(Debug, thiserror::Error)]
pub enum HypercallError {
    #[error("cannot place the hypercall device: {0}")]
    Bus(#[from] plainvm_devices::BusError),
    #[error("cannot create the hypercall watch's {what}: {source}")]
    Fd {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot install the SIGTERM handler: {0}")]
    Signal(std::io::Error),
}

/// What the hypercall device carries over a snapshot or migration: the generation (bumped on
/// every restore and migration) and whether a guest agent announced itself.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct HypercallSaved {
    pub generation: u64,
    pub agent: Option<u32>,
}

/// Post `kind` for the guest agent (it polls with the REQUEST call); returns the request id.
/// This is what `plainvm stop` and the control API use.
pub fn post_request(state: &HypercallState, kind: RequestKind) -> Result<u32, StateError> {
    state.post(kind)
}

/// One line per boot mark: its stage and its time since `process_start` and since `vcpu_start`.
pub fn mark_report(
    state: &HypercallState,
    process_start: Instant,
    vcpu_start: Instant,
) -> Vec<String> {
    let ms = |at: Instant, from: Instant| {
        let us = at.saturating_duration_since(from).as_micros();
        format!("{}.{:03} ms", us / 1000, us % 1000)
    };
    state
        .marks()
        .iter()
        .map(|m| {
            let name = proto::stage::name(m.stage).map_or(String::new(), |n| format!(" ({n})"));
            format!(
                "boot mark {}{name} at {} since start, {} since vCPU start",
                m.stage,
                ms(m.at, process_start),
                ms(m.at, vcpu_start)
            )
        })
        .collect()
}

/// What the device asks of the VMM: ending the VM and the log.
struct VmmHost {
    exit: Arc<ExitSignal>,
}

impl HypercallHost for VmmHost {
    fn power(&mut self, reboot: bool, code: u8) {
        if reboot {
            plainvm_devices::log_line!("the guest asked to reboot; plainvm has no reboot yet, so it stops with status {code}");
        }
        self.exit.request(ExitReason::GuestCode(i32::from(code)));
    }

    fn log(&mut self, line: &str) {
        plainvm_devices::log_line!("{line}");
    }
}

/// Put the device at `proto::BASE` on `mmio`; returns the state it shares with the VMM.
pub fn attach(
    mmio: &mut Bus,
    mem: &GuestRam,
    exit: Arc<ExitSignal>,
) -> Result<Arc<HypercallState>, HypercallError> {
    let state = Arc::new(HypercallState::default());
    let dev = Hypercall::new(mem.clone(), state.clone(), Box::new(VmmHost { exit }));
    mmio.insert(Arc::new(Mutex::new(dev)), proto::BASE, proto::SIZE)?;
    Ok(state)
}

/// Start watching heartbeats and SIGTERM on the device event loop. Call right before the vCPUs
/// start (after the terminal set-up, whose SIGTERM handler this one replaces); returns that time.
pub fn start(
    events: &mut EventLoop,
    state: Arc<HypercallState>,
    exit: Arc<ExitSignal>,
) -> Result<Instant, HypercallError> {
    let fd_err = |what| move |source| HypercallError::Fd { what, source };
    let sigterm = EventFd::new(EFD_NONBLOCK).map_err(fd_err("eventfd"))?;
    let mut timer = TimerFd::new().map_err(|e| fd_err("timer")(e.into()))?;
    timer
        .reset(IDLE_TICK, Some(IDLE_TICK))
        .map_err(|e| fd_err("timer")(e.into()))?;
    SIGTERM_FD.store(sigterm.as_raw_fd(), Ordering::SeqCst);
    install_sigterm_handler()?;
    events.add_subscriber(Arc::new(Mutex::new(Watch {
        state,
        exit,
        sigterm,
        timer,
        period: IDLE_TICK,
        deadline: None,
    })));
    Ok(Instant::now())
}

/// The eventfd the SIGTERM handler pokes (-1: none yet).
static SIGTERM_FD: AtomicI32 = AtomicI32::new(-1);
/// A SIGTERM the event loop has not handled yet.
static SIGTERM_PENDING: AtomicBool = AtomicBool::new(false);

/// True when a SIGTERM arrived that the event loop has not handled (it may be parked: the VM is
/// paused; see `loop_gate`).
pub fn sigterm_pending() -> bool {
    SIGTERM_PENDING.load(Ordering::SeqCst)
}

extern "C" fn on_sigterm(_sig: libc::c_int) {
    SIGTERM_PENDING.store(true, Ordering::SeqCst);
    let fd = SIGTERM_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64;
        // SAFETY: write(2) is async-signal-safe; it reads 8 bytes from a local we own.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

fn install_sigterm_handler() -> Result<(), HypercallError> {
    // SAFETY: sigaction is plain data; zeroed is a valid empty value that we then fill in.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_sigterm as extern "C" fn(libc::c_int) as libc::sighandler_t;
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: the handler only loads an atomic and calls write(2), both async-signal-safe; the
    // pointers are to locals that live across the call.
    let rc = unsafe {
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(HypercallError::Signal(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs on the device event loop: heartbeat checks, SIGTERM, and the stop deadline.
struct Watch {
    state: Arc<HypercallState>,
    exit: Arc<ExitSignal>,
    sigterm: EventFd,
    timer: TimerFd,
    /// The timer's current period (`TICK` or `IDLE_TICK`).
    period: Duration,
    deadline: Option<Instant>,
}

impl Watch {
    /// Tick fast while a heartbeat or the stop deadline needs watching, slowly otherwise.
    fn set_period(&mut self) {
        let busy = self.deadline.is_some() || self.state.heartbeat_declared();
        let period = if busy { TICK } else { IDLE_TICK };
        if period != self.period && self.timer.reset(period, Some(period)).is_ok() {
            self.period = period;
        }
    }

    fn on_sigterm(&mut self) {
        let _ = self.sigterm.read();
        SIGTERM_PENDING.store(false, Ordering::SeqCst);
        if self.deadline.is_some() {
            self.exit.request(ExitReason::Crash(
                "stopped by a second SIGTERM before the guest powered off".into(),
            ));
            return;
        }
        let listening = self
            .state
            .agent()
            .is_some_and(|caps| caps & proto::agent::POWER != 0);
        if !listening {
            self.exit.request(ExitReason::Crash(
                "stopped by SIGTERM; no guest agent had announced itself, so the guest was not shut down cleanly (run `plainvm-guest watch` in the guest)".into(),
            ));
            return;
        }
        match post_request(&self.state, RequestKind::PowerOff { code: 0 }) {
            Ok(id) => {
                plainvm_devices::log_line!("SIGTERM: asked the guest agent to power off (request {id}); stopping anyway in {} s",
                    STOP_TIMEOUT.as_secs()
                );
                self.deadline = Some(Instant::now() + STOP_TIMEOUT);
                self.set_period();
            }
            Err(e) => self
                .exit
                .request(ExitReason::Crash(format!("stopped by SIGTERM: {e}"))),
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        if let Some(HeartbeatEvent::Missed { silent, interval }) = self.state.check_heartbeat(now) {
            plainvm_devices::log_line!(
                "guest heartbeat missed: no beat for {} ms (declared interval {} ms)",
                silent.as_millis(),
                interval.as_millis()
            );
        }
        if self.deadline.is_some_and(|d| now >= d) {
            self.exit.request(ExitReason::Crash(format!(
                "the guest did not power off within {} s of SIGTERM; stopped it",
                STOP_TIMEOUT.as_secs()
            )));
        }
        self.set_period();
    }
}

impl MutEventSubscriber for Watch {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.sigterm, EventSet::IN));
        let _ = ops.add(Events::new(&self.timer, EventSet::IN));
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.sigterm.as_raw_fd() {
            self.on_sigterm();
        } else {
            // Readable, so this does not block: it consumes the expirations.
            let _ = self.timer.wait();
            self.on_tick();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    /// A request posted on the host side comes out of the device's REQUEST call, once.
    #[test]
    fn posted_request_reaches_the_guest_through_the_register_page() {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut bus = Bus::new();
        let state = attach(&mut bus, &mem, exit.clone()).unwrap();
        let w =
            |bus: &Bus, off: u64, v: u32| assert!(bus.write(proto::BASE + off, &v.to_le_bytes()));
        let r = |bus: &Bus, off: u64| {
            let mut b = [0u8; 4];
            assert!(bus.read(proto::BASE + off, &mut b));
            u32::from_le_bytes(b)
        };
        assert_eq!(r(&bus, proto::regs::MAGIC), proto::MAGIC);
        let id = post_request(&state, RequestKind::PowerOff { code: 9 }).unwrap();
        assert_eq!(r(&bus, proto::regs::PENDING), 1);
        w(&bus, proto::regs::CALL, proto::nr::REQUEST);
        assert_eq!(r(&bus, proto::regs::STATUS), proto::status::OK);
        assert_eq!(r(&bus, proto::regs::RET[0]), proto::request::POWER_OFF);
        assert_eq!(r(&bus, proto::regs::RET[1]), 9);
        assert_eq!(r(&bus, proto::regs::RET[2]), id);
        w(&bus, proto::regs::CALL, proto::nr::REQUEST);
        assert_eq!(r(&bus, proto::regs::RET[0]), proto::request::NONE);
        // POWER ends the VM with the guest's code.
        w(&bus, proto::regs::ARG[0], proto::power::OFF);
        w(&bus, proto::regs::ARG[1], 9);
        w(&bus, proto::regs::CALL, proto::nr::POWER);
        assert!(exit.is_requested());
        assert_eq!(exit.reason(), ExitReason::GuestCode(9));
    }

    fn watch(state: &Arc<HypercallState>, exit: &Arc<ExitSignal>) -> Watch {
        Watch {
            state: state.clone(),
            exit: exit.clone(),
            sigterm: EventFd::new(EFD_NONBLOCK).unwrap(),
            timer: TimerFd::new().unwrap(),
            period: IDLE_TICK,
            deadline: None,
        }
    }

    /// SIGTERM with a listening agent posts a power-off; if the guest ignores it, the deadline
    /// stops the VM. Without an agent, SIGTERM stops it at once.
    #[test]
    fn sigterm_posts_a_power_off_then_forces_exit_at_the_deadline() {
        let state = Arc::new(HypercallState::default());
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut w = watch(&state, &exit);
        state.announce_agent(proto::agent::POWER);
        w.on_sigterm();
        assert!(!exit.is_requested());
        assert_eq!(
            state.take_request().map(|r| r.kind),
            Some(RequestKind::PowerOff { code: 0 })
        );
        w.on_tick();
        assert!(!exit.is_requested(), "the deadline has not passed");
        w.deadline = Some(Instant::now() - Duration::from_millis(1));
        w.on_tick();
        assert!(matches!(exit.reason(), ExitReason::Crash(m) if m.contains("did not power off")));

        let state = Arc::new(HypercallState::default());
        let exit = Arc::new(ExitSignal::new().unwrap());
        state.announce_agent(proto::agent::TIME_SYNC);
        watch(&state, &exit).on_sigterm();
        assert!(matches!(exit.reason(), ExitReason::Crash(m) if m.contains("no guest agent")));
        assert_eq!(state.pending(), 0);
    }
}
