//! A virtio-mmio device's interrupt: the InterruptStatus bits and the irqfd that raises its GSI.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

/// InterruptStatus bit: a used buffer was added.
pub const INT_VRING: u32 = 1;
/// InterruptStatus bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// Shared between the transport (which reads and acknowledges the status) and the device.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irqfd: Arc<EventFd>,
}

impl Interrupt {
    /// An interrupt that signals `irqfd` (registered with KVM for the device's GSI).
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: Arc::default(),
            irqfd: Arc::new(irqfd),
        }
    }

    /// Tell the driver a queue has new used buffers.
    pub fn signal_used_queue(&self) {
        self.signal(INT_VRING);
    }

    /// Tell the driver the configuration space changed.
    pub fn signal_config_change(&self) {
        self.signal(INT_CONFIG);
    }

    fn signal(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        // A full eventfd counter still leaves the interrupt pending: nothing is lost.
        let _ = self.irqfd.write(1);
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clear the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Take back a saved InterruptStatus; pending bits are signalled again (the driver checks
    /// the status register, so a repeated interrupt is harmless and a lost one is not).
    pub fn restore(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
        if bits != 0 {
            let _ = self.irqfd.write(1);
        }
    }

    /// The irqfd (for registration with KVM).
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}
