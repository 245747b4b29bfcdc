//! The legacy devices on port I/O: the 16550 serial console (IRQ 4), the i8042 reset line and
//! the POST-code port whose writes are boot milestones.

use crate::host::console::ConsoleOut;
use crate::host::exit::{ExitReason, ExitSignal};
use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_ioctls::VmFd;
use plainvm_devices::legacy::i8042::I8042;
use plainvm_devices::legacy::post_code::{Milestones, PostCode};
use plainvm_devices::legacy::serial::{SerialConsole, SerialSnapshot};
use plainvm_devices::legacy::trigger::EventFdTrigger;
use plainvm_devices::lock;
use plainvm_devices::Bus;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

/// Legacy I/O ports and IRQs.
const SERIAL_PORT: u64 = 0x3f8;
const SERIAL_IRQ: u32 = 4;
const I8042_PORT: u64 = 0x60;
const POST_CODE_PORT: u64 = 0x80;

/// Errors placing the legacy devices.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("cannot create the serial port's eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot create the serial port's timer: {0}")]
    Timer(std::io::Error),
    #[error("KVM refused to connect the serial interrupt: {0}")]
    Irq(kvm_ioctls::Error),
    #[error(transparent)]
    Bus(#[from] plainvm_devices::BusError),
}

/// The legacy devices the VMM keeps handles to.
pub struct Legacy {
    pub serial: Arc<Mutex<SerialConsole>>,
    pub milestones: Milestones,
}

/// Put the legacy devices on `pio`; the serial port continues from `saved` after a restore.
pub fn attach(
    vm: &VmFd,
    pio: &mut Bus,
    exit: Arc<ExitSignal>,
    saved: Option<&SerialSnapshot>,
) -> Result<Legacy, LegacyError> {
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(LegacyError::EventFd)?;
    vm.register_irqfd(&serial_irq, SERIAL_IRQ)
        .map_err(LegacyError::Irq)?;
    let serial = Arc::new(Mutex::new(SerialConsole::new(
        EventFdTrigger(serial_irq),
        Box::new(ConsoleOut),
        saved,
    )));
    let milestones: Milestones = Arc::default();
    pio.insert(serial.clone(), SERIAL_PORT, 8)?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(ResetTrigger(exit)))),
        I8042_PORT,
        5,
    )?;
    pio.insert(
        Arc::new(Mutex::new(PostCode::new(milestones.clone()))),
        POST_CODE_PORT,
        1,
    )?;
    Ok(Legacy { serial, milestones })
}

/// Lets the i8042 reset line end the VM: a guest-requested reset is a clean stop.
struct ResetTrigger(Arc<ExitSignal>);

impl vm_superio::Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::PowerOff);
        Ok(())
    }
}

/// How often the event loop checks the serial port for an interrupt the guest missed (like
/// Linux's own back-up timer for UARTs that lose THRE interrupts: ~200 ms).
const SERIAL_CHECK: Duration = Duration::from_millis(200);

/// Runs on the device event loop: sends the serial interrupt again when the guest missed it
/// (see [`SerialConsole::resend_lost_interrupt`]).
pub struct SerialWatch {
    serial: Arc<Mutex<SerialConsole>>,
    timer: TimerFd,
}

impl SerialWatch {
    /// A watch on `serial`, ticking from now on.
    pub fn new(serial: Arc<Mutex<SerialConsole>>) -> Result<Self, LegacyError> {
        let timer_err = |e: vmm_sys_util::errno::Error| LegacyError::Timer(e.into());
        let mut timer = TimerFd::new().map_err(timer_err)?;
        timer
            .reset(SERIAL_CHECK, Some(SERIAL_CHECK))
            .map_err(timer_err)?;
        Ok(Self { serial, timer })
    }
}

impl MutEventSubscriber for SerialWatch {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.timer, EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.timer.wait();
        lock(&self.serial).resend_lost_interrupt();
    }
}
