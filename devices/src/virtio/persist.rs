//! Saved state of a virtio-mmio device (transport registers, queues, the device's own part) for
//! snapshots and migration, and the errors of taking it back.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

/// Errors saving, quiescing or restoring a device.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("the saved state has a virtio device of type {found} where this VM has type {want}: the snapshot does not match the VM's devices")]
    WrongDevice { want: u32, found: u32 },
    #[error("the saved virtio device (type {device_type}) uses features {features:#x} that this one does not offer: attach it the way it was attached when saved (e.g. not read-only)")]
    Features { device_type: u32, features: u64 },
    #[error("the saved virtio device (type {device_type}) has {found} queues, this one {want}")]
    QueueCount {
        device_type: u32,
        want: usize,
        found: usize,
    },
    #[error("queue {0} of a saved virtio device is invalid (size or rings outside guest memory): the state is corrupted")]
    BadQueue(usize),
    #[error("the saved state of a virtio device of type {device_type} is of another kind of device: the state is corrupted")]
    WrongState { device_type: u32 },
    #[error("{0}")]
    Mismatch(String),
    #[error("{0}")]
    Busy(String),
    #[error("the device refused the saved queues: {0}")]
    Activate(#[from] super::ActivateError),
}

/// One virtqueue, as the driver configured it and as far as the device got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQueue {
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
}

impl SavedQueue {
    /// What `q` holds now.
    pub fn of(q: &Queue) -> Self {
        let s = q.state();
        Self {
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx: s.event_idx_enabled,
        }
    }

    /// A queue of at most `max_size` entries in this state; None when the saved size does not fit.
    pub fn to_queue(&self, max_size: u16) -> Option<Queue> {
        Queue::try_from(QueueState {
            max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
        .ok()
    }
}

/// A whole virtio-mmio device: what the driver programmed into the transport, the queues, and
/// the device-specific part (opaque bytes the device itself encodes and checks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioState {
    pub device_type: u32,
    pub status: u32,
    pub driver_features: u64,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub queue_sel: u32,
    pub interrupt_status: u32,
    /// The driver set DRIVER_OK and the device was processing its queues.
    pub active: bool,
    pub queues: Vec<SavedQueue>,
    pub device: DeviceState,
}

/// A device's own part of its saved state, one variant per kind of device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// A device with nothing of its own to save (rng).
    #[default]
    None,
    Block(BlockState),
    Net(NetState),
    Vsock(VsockState),
    Balloon(BalloonState),
}

/// What a saved disk must still match when it is restored, and its serial.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    pub capacity: u64,
    pub read_only: bool,
    pub id: [u8; super::block::ID_BYTES],
}

/// The MAC the guest's driver read at probe time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    pub mac: [u8; 6],
}

/// The guest's CID (connections are not saved: their host ends are this process's sockets).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    pub cid: u64,
}

/// The balloon's target and what the guest has given back, in 4 KiB pages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonState {
    pub num_pages: u32,
    pub actual: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueT;

    #[test]
    fn a_queue_survives_the_round_trip() {
        let mut q = Queue::new(256).unwrap();
        q.set_size(64);
        q.set_desc_table_address(Some(0x1000), Some(0));
        q.set_avail_ring_address(Some(0x2000), Some(0));
        q.set_used_ring_address(Some(0x3000), Some(0));
        q.set_ready(true);
        q.set_next_avail(7);
        q.set_next_used(5);
        let saved = SavedQueue::of(&q);
        let back = saved.to_queue(256).unwrap();
        assert_eq!(SavedQueue::of(&back), saved);
        assert_eq!((back.next_avail(), back.next_used()), (7, 5));
        // A size that exceeds this device's maximum is refused, not trusted.
        assert!(saved.to_queue(32).is_none());
    }
}
