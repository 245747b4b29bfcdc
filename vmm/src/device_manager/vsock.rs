//! Attaching the virtio-vsock device with its host-side unix socket.

use super::virtio::{AttachError, EventLoop, VirtioSlots};
use crate::config::VsockConfig;
use kvm_ioctls::VmFd;
use plainvm_devices::virtio::vsock::{Vsock, VsockError};
use plainvm_devices::Bus;
use plainvm_devices::GuestRam;

/// Why the vsock device could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum VsockAttachError {
    #[error(transparent)]
    Device(#[from] VsockError),
    #[error("cannot clone the vsock queue eventfds: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    Attach(#[from] AttachError),
}

/// Create the device (binding the host socket) and attach it.
pub fn attach(
    v: &VsockConfig,
    vm: &VmFd,
    mem: &GuestRam,
    mmio: &mut Bus,
    events: &mut EventLoop,
    slots: &mut VirtioSlots,
) -> Result<(), VsockAttachError> {
    let dev = Vsock::new(v.cid, &v.socket)?;
    let evts = dev.queue_evts().map_err(VsockAttachError::EventFd)?;
    slots.attach(vm, mem, mmio, events, dev, evts)?;
    Ok(())
}
