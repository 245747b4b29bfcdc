//! Attaching each configured disk as a virtio-blk device, in order (the first is /dev/vda).

use super::virtio::{AttachError, EventLoop, VirtioSlots};
use crate::config::DiskConfig;
use kvm_ioctls::VmFd;
use plainvm_devices::virtio::block::{Block, BlockError};
use plainvm_devices::Bus;
use plainvm_devices::GuestRam;

/// Why a disk could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Open(#[from] BlockError),
    #[error(transparent)]
    Attach(#[from] AttachError),
}

/// Opens every disk and attaches it as a virtio-blk device, in order.
pub fn attach_all(
    disks: &[DiskConfig],
    vm: &VmFd,
    mem: &GuestRam,
    mmio: &mut Bus,
    events: &mut EventLoop,
    slots: &mut VirtioSlots,
) -> Result<(), DiskError> {
    for d in disks {
        let blk = Block::open(&d.path, d.readonly, d.id.as_deref(), d.admitted_by_dir)?;
        let evts = blk.queue_evts().map_err(BlockError::EventFd)?;
        slots.attach(vm, mem, mmio, events, blk, evts)?;
    }
    Ok(())
}
