//! Putting devices on the buses and the event loop: the legacy ports, the virtio-mmio devices
//! with their windows and IRQs, the hypercall device's host side, and the gate that parks the
//! loop while the VM is paused. Devices themselves (the `plainvm-devices` crate) never see KVM.

pub mod balloon;
pub mod disk;
pub mod hypercall;
pub mod legacy;
pub mod loop_gate;
pub mod virtio;
pub mod vsock;

use crate::config::VmConfig;
use crate::host::exit::ExitSignal;
use event_manager::SubscriberOps;
use hypercall::{HypercallSaved, HypercallState};
use kvm_ioctls::VmFd;
use loop_gate::{GateSubscriber, LoopGate};
use plainvm_devices::legacy::post_code::Milestones;
use plainvm_devices::legacy::serial::{SerialConsole, SerialSnapshot};
use plainvm_devices::virtio::net::{tap::TapError, MacAddr, Net, Tap};
use plainvm_devices::virtio::rng::Rng;
use plainvm_devices::virtio::{MmioTransport, VirtioState};
use plainvm_devices::{Bus, GuestRam};
use std::sync::{Arc, Mutex};
use virtio::{EventLoop, VirtioSlots};

/// Errors setting up the devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot set up the device event loop: {0:?}")]
    EventLoop(event_manager::Error),
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    Attach(#[from] virtio::AttachError),
    #[error("cannot restore the devices: {0}")]
    Restore(#[from] virtio::DeviceRestoreError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    #[error(transparent)]
    Vsock(#[from] vsock::VsockAttachError),
    #[error(transparent)]
    Balloon(#[from] balloon::BalloonError),
    #[error(transparent)]
    Hypercall(#[from] hypercall::HypercallError),
    #[error(transparent)]
    Legacy(#[from] legacy::LegacyError),
}

/// What a restored VM's devices continue from.
pub struct SavedDevices<'a> {
    pub virtio: &'a [VirtioState],
    pub serial: &'a SerialSnapshot,
    pub hypercall: HypercallSaved,
}

/// Every device of one VM: the buses the vCPUs use, the event loop that runs the back-ends,
/// and the handles the VMM keeps.
pub struct Devices {
    pub events: EventLoop,
    pub pio: Bus,
    pub mmio: Bus,
    /// `virtio_mmio.device=` entries for a Linux guest's command line.
    pub cmdline: Vec<String>,
    /// The virtio devices, in attach order (their state goes into the VM state in this order).
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub gate: Arc<LoopGate>,
    pub hypercall: Arc<HypercallState>,
    pub serial: Arc<Mutex<SerialConsole>>,
    pub milestones: Milestones,
    pub balloon: Option<balloon::BalloonControl>,
}

/// Create `cfg`'s devices for `vm` (whose irqchip exists), restoring `saved` ones. The virtio
/// devices go in a fixed order (rng, nets, disks, vsock, balloon), which a restore relies on.
pub fn create(
    vm: &VmFd,
    mem: &GuestRam,
    cfg: &VmConfig,
    exit: Arc<ExitSignal>,
    saved: Option<SavedDevices<'_>>,
) -> Result<Devices, DeviceError> {
    let mut events = EventLoop::new().map_err(DeviceError::EventLoop)?;
    let mut mmio = Bus::new();
    let mut virtio = VirtioSlots::default();
    if cfg.rng {
        let rng = Rng::new().map_err(DeviceError::EventFd)?;
        let evts = rng.queue_evts().map_err(DeviceError::EventFd)?;
        virtio.attach(vm, mem, &mut mmio, &mut events, rng, evts)?;
    }
    for n in &cfg.nets {
        let net = Net::new(Tap::open(&n.tap)?, MacAddr(n.mac)).map_err(DeviceError::EventFd)?;
        let evts = net.queue_evts().map_err(DeviceError::EventFd)?;
        virtio.attach(vm, mem, &mut mmio, &mut events, net, evts)?;
    }
    disk::attach_all(&cfg.disks, vm, mem, &mut mmio, &mut events, &mut virtio)?;
    if let Some(v) = &cfg.vsock {
        vsock::attach(v, vm, mem, &mut mmio, &mut events, &mut virtio)?;
    }
    let balloon = match &cfg.balloon {
        Some(b) => Some(balloon::attach(
            b,
            cfg.memory_bytes,
            vm,
            mem,
            &mut mmio,
            &mut events,
            &mut virtio,
        )?),
        None => None,
    };
    if let Some(s) = &saved {
        virtio.restore(s.virtio)?;
    }

    let gate = LoopGate::new(exit.clone()).map_err(DeviceError::EventFd)?;
    events.add_subscriber(Arc::new(Mutex::new(GateSubscriber(gate.clone()))));
    let hypercall = hypercall::attach(&mut mmio, mem, exit.clone())?;
    if let Some(s) = &saved {
        hypercall.continue_from(s.hypercall.generation, s.hypercall.agent);
    }
    let mut pio = Bus::new();
    let legacy = legacy::attach(vm, &mut pio, exit, saved.as_ref().map(|s| s.serial))?;
    Ok(Devices {
        events,
        pio,
        mmio,
        cmdline: virtio.cmdline,
        transports: virtio.transports,
        gate,
        hypercall,
        serial: legacy.serial,
        milestones: legacy.milestones,
        balloon,
    })
}
