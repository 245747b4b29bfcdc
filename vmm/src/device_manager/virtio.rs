//! Attaching virtio-mmio devices: an MMIO window and IRQ each, queue ioeventfds, the irqfd, the
//! event-loop subscription, and the `virtio_mmio.device=` entry for the kernel command line.

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use plainvm_devices::lock;
use plainvm_devices::virtio::mmio::QUEUE_NOTIFY;
use plainvm_devices::virtio::{
    Interrupt, MmioTransport, PersistError, VirtioDevice, VirtioState, MMIO_WINDOW,
};
use plainvm_devices::Bus;
use plainvm_devices::GuestRam;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Where the first device's window is (inside the MMIO gap); each next one follows.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// IRQs for virtio devices: 5 to 23 (the IOAPIC's last pin); 4 is the serial port.
pub const FIRST_IRQ: u32 = 5;
const LAST_IRQ: u32 = 23;

/// The device event loop (one thread, all device back-ends).
pub type EventLoop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Errors attaching a device.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("too many virtio devices: at most {} fit the free IRQs", LAST_IRQ - FIRST_IRQ + 1)]
    TooMany,
    #[error("cannot create an eventfd for a virtio device: {0}")]
    EventFd(std::io::Error),
    #[error("KVM refused to {what} for a virtio device: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Bus(#[from] plainvm_devices::BusError),
}

/// Errors putting saved device state back.
#[derive(Debug, thiserror::Error)]
pub enum DeviceRestoreError {
    #[error("the saved VM has {saved} virtio device(s), this configuration {here}: restore with the configuration it was saved with")]
    Count { saved: usize, here: usize },
    #[error("virtio device {index}: {source}")]
    Device { index: usize, source: PersistError },
}

/// Hands out windows and IRQs, and collects the command-line entries and the transports.
pub struct VirtioSlots {
    next: u32,
    /// `virtio_mmio.device=` entries, one per attached device.
    pub cmdline: Vec<String>,
    /// The attached devices, in order.
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
}

impl Default for VirtioSlots {
    fn default() -> Self {
        Self {
            next: FIRST_IRQ,
            cmdline: Vec::new(),
            transports: Vec::new(),
        }
    }
}

/// Every device's saved state, in attach order (the VM is paused and its devices quiesced).
pub fn save_all(transports: &[Arc<Mutex<MmioTransport>>]) -> Vec<VirtioState> {
    transports.iter().map(|t| lock(t).save()).collect()
}

/// Finish every device's in-flight work (the device event loop is parked).
pub fn quiesce_all(transports: &[Arc<Mutex<MmioTransport>>]) -> Result<(), PersistError> {
    transports.iter().try_for_each(|t| lock(t).quiesce())
}

impl VirtioSlots {
    /// Attach `device` (whose queues are kicked through `queue_evts`) to the VM.
    pub fn attach<D>(
        &mut self,
        vm: &VmFd,
        mem: &GuestRam,
        mmio: &mut Bus,
        events: &mut EventLoop,
        device: D,
        queue_evts: Vec<EventFd>,
    ) -> Result<Arc<Mutex<D>>, AttachError>
    where
        D: VirtioDevice + MutEventSubscriber + 'static,
    {
        if self.next > LAST_IRQ {
            return Err(AttachError::TooMany);
        }
        let irq = self.next;
        let base = VIRTIO_MMIO_BASE + u64::from(irq - FIRST_IRQ) * MMIO_WINDOW;
        let kvm = |what| move |source| AttachError::Kvm { what, source };
        for (i, evt) in queue_evts.iter().enumerate() {
            vm.register_ioevent(evt, &IoEventAddress::Mmio(base + QUEUE_NOTIFY), i as u32)
                .map_err(kvm("register a queue ioeventfd"))?;
        }
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(AttachError::EventFd)?;
        vm.register_irqfd(&irqfd, irq)
            .map_err(kvm("register the interrupt"))?;
        let device = Arc::new(Mutex::new(device));
        let transport = MmioTransport::new(
            device.clone(),
            mem.clone(),
            Interrupt::new(irqfd),
            queue_evts,
        );
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(transport.clone(), base, MMIO_WINDOW)?;
        self.transports.push(transport);
        events.add_subscriber(device.clone());
        self.cmdline
            .push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
        self.next += 1;
        Ok(device)
    }

    /// Put saved device states back into the freshly attached devices (same configuration, so
    /// the same order); nothing of them runs before the VM's vCPUs start.
    pub fn restore(&self, saved: &[VirtioState]) -> Result<(), DeviceRestoreError> {
        if saved.len() != self.transports.len() {
            return Err(DeviceRestoreError::Count {
                saved: saved.len(),
                here: self.transports.len(),
            });
        }
        for (index, (t, s)) in self.transports.iter().zip(saved).enumerate() {
            lock(t)
                .restore(s)
                .map_err(|source| DeviceRestoreError::Device { index, source })?;
        }
        Ok(())
    }
}
