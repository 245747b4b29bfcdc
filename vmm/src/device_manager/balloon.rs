//! Attaching the virtio-balloon device, and the handle that changes its target at run time.

use super::virtio::{AttachError, EventLoop, VirtioSlots};
use crate::config::balloon::{check_target, BalloonConfigError, BalloonSettings};
use kvm_ioctls::VmFd;
use plainvm_devices::lock;
use plainvm_devices::virtio::balloon::{Balloon, BalloonStats};
use plainvm_devices::Bus;
use plainvm_devices::GuestRam;
use std::sync::{Arc, Mutex};

/// A balloon that cannot be attached, or a target that cannot be set.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    #[error(transparent)]
    Target(#[from] BalloonConfigError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("cannot create the balloon's eventfds: {0}")]
    EventFd(std::io::Error),
}

/// Changes a running balloon's target (for the control API); cheap to clone.
#[derive(Clone)]
pub struct BalloonControl {
    device: Arc<Mutex<Balloon>>,
    memory_bytes: u64,
}

impl BalloonControl {
    fn device(&self) -> std::sync::MutexGuard<'_, Balloon> {
        lock(&self.device)
    }

    /// Ask the guest to give back `bytes` in total (0 deflates the balloon completely).
    pub fn set_target(&self, bytes: u64) -> Result<(), BalloonError> {
        check_target(bytes, self.memory_bytes)?;
        self.device().set_target(bytes);
        Ok(())
    }

    /// The current target, in bytes.
    pub fn target(&self) -> u64 {
        self.device().target()
    }

    /// What the guest says it has given back, in bytes.
    pub fn actual(&self) -> u64 {
        self.device().actual()
    }

    /// Pages the device has returned to the host so far.
    pub fn stats(&self) -> BalloonStats {
        self.device().stats()
    }
}

/// Create the device and attach it; the handle changes its target later.
pub fn attach(
    b: &BalloonSettings,
    memory_bytes: u64,
    vm: &VmFd,
    mem: &GuestRam,
    mmio: &mut Bus,
    events: &mut EventLoop,
    slots: &mut VirtioSlots,
) -> Result<BalloonControl, BalloonError> {
    let dev = Balloon::new(b.target_bytes, b.free_page_reporting).map_err(BalloonError::EventFd)?;
    let evts = dev.queue_evts().map_err(BalloonError::EventFd)?;
    let device = slots.attach(vm, mem, mmio, events, dev, evts)?;
    Ok(BalloonControl {
        device,
        memory_bytes,
    })
}
