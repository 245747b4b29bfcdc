//! virtio 1.x devices over the virtio-mmio transport: the device trait and shared pieces.

pub mod balloon;
pub mod block;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod persist;
#[cfg(test)]
mod persist_tests;
pub mod rng;
#[cfg(test)]
mod test_queue;
pub mod vsock;

pub use interrupt::Interrupt;
pub use mmio::MmioTransport;
pub use persist::{DeviceState, PersistError, VirtioState};

use crate::GuestRam;
use virtio_queue::Queue;

/// Device IDs from the virtio specification.
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_BALLOON: u32 = 5;
pub const TYPE_VSOCK: u32 = 19;

/// Feature bit every virtio 1.x device offers (and a driver must accept).
pub const F_VERSION_1: u64 = 1 << 32;

/// Most chains a device serves per wake of the event loop (devices with their own, larger
/// figures: block and net). With more waiting it kicks its own queue eventfd and returns, so a
/// guest that keeps a queue full cannot hold the loop shared by every device, the pause gate and
/// the VM's exit.
pub const QUEUE_BUDGET: usize = 256;

/// Size of one device's MMIO window.
pub const MMIO_WINDOW: u64 = 0x1000;

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver set up {got} queues, the device needs {want}")]
    QueueCount { got: usize, want: usize },
    #[error("queue {0} is not valid (size or ring addresses outside guest memory)")]
    BadQueue(usize),
    #[error("the device back-end failed: {0}")]
    Backend(String),
}

/// A virtio device model. The transport owns the register interface; the device owns its queues
/// once the driver activates it, and processes them on the device event loop (each device also
/// implements `event_manager::MutEventSubscriber` for its queue and back-end events).
pub trait VirtioDevice: Send {
    /// The virtio device ID.
    fn device_type(&self) -> u32;
    /// The maximum size of each queue (their number is the device's queue count).
    fn queue_max_sizes(&self) -> &[u16];
    /// The features the device offers.
    fn features(&self) -> u64;
    /// The features the driver accepted (a subset of `features`).
    fn ack_features(&mut self, features: u64);
    /// Read the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write the device-specific configuration space (ignored unless the device has writable fields).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Start processing: the driver set `DRIVER_OK` with these (validated) queues, or a restore
    /// hands back the saved ones. Nothing is processed here: the transport then kicks every
    /// queue's eventfd, so work starts on the event loop (after a restore: once the VM runs).
    fn activate(
        &mut self,
        mem: GuestRam,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError>;
    /// The driver reset the device: stop processing and drop the queues.
    fn reset(&mut self);
    /// The queues the device owns (empty until activated), for snapshots.
    fn queues(&self) -> &[Queue];
    /// The VM is pausing and the event loop is parked: finish whatever back-end threads are
    /// doing with guest memory and the queues, so that the saved state is complete. Activation
    fn quiesce(&mut self) -> Result<(), PersistError> {
        Ok(())
    }
    /// The device's own state beyond the transport and queues.
    fn save_state(&self) -> DeviceState {
        DeviceState::None
    }
    /// Take back what `save_state` returned, before the saved queues are handed to `activate`;
    /// an error refuses the restore (e.g. the back-end no longer matches what the guest saw).
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), PersistError> {
        match state {
            DeviceState::None => Ok(()),
            _ => Err(PersistError::WrongState {
                device_type: self.device_type(),
            }),
        }
    }
}

/// Check that the driver set up exactly the `want` queues a device needs.
pub fn expect_queues(queues: &[Queue], want: usize) -> Result<(), ActivateError> {
    if queues.len() == want {
        Ok(())
    } else {
        Err(ActivateError::QueueCount {
            got: queues.len(),
            want,
        })
    }
}

/// Copy `value`'s little-endian bytes at `offset` into `data` (config-space reads); reads past
/// the end return zeroes.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start < config.len() {
        let n = data.len().min(config.len() - start);
        data[..n].copy_from_slice(&config[start..start + n]);
    }
}
