//! The virtio-mmio transport (version 2): the register window a driver programs a device through.

use super::persist::{PersistError, SavedQueue, VirtioState};
use super::{Interrupt, VirtioDevice, F_VERSION_1};
use crate::bus::BusDevice;
use crate::lock;
use crate::GuestRam;
use std::sync::{Arc, Mutex};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4c50_4e50; // "PNPL"

// Device status bits.
const STATUS_DRIVER: u32 = 2;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_NEEDS_RESET: u32 = 0x40;

/// Offset of the QueueNotify register (where the VMM attaches each queue's ioeventfd).
pub const QUEUE_NOTIFY: u64 = 0x50;
/// Offset where the device-specific configuration space starts.
const CONFIG: u64 = 0x100;

/// The transport: registers, queue set-up, and the hand-over of queues to the device.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestRam,
    interrupt: Interrupt,
    queue_evts: Vec<EventFd>,
    /// The queues while the driver sets them up (the device owns them once active).
    queues: Vec<Queue>,
    max_sizes: Vec<u16>,
    device_type: u32,
    features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    active: bool,
}

impl MmioTransport {
    /// A transport for `device`; `queue_evts` are the eventfds that kick its queues (the VMM
    /// registers the same ones as ioeventfds on QueueNotify).
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestRam,
        interrupt: Interrupt,
        queue_evts: Vec<EventFd>,
    ) -> Self {
        let (max_sizes, device_type, features) = {
            let d = lock(&device);
            let max_sizes = d.queue_max_sizes().to_vec();
            (max_sizes, d.device_type(), d.features() | F_VERSION_1)
        };
        Self {
            device,
            mem,
            interrupt,
            queue_evts,
            queues: new_queues(&max_sizes),
            max_sizes,
            device_type,
            features,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            active: false,
        }
    }

    fn device(&self) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
        lock(&self.device)
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        if self.active {
            return None; // queues belong to the device now; changes are refused
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        if self.active {
            self.device().reset();
        }
        self.active = false;
        self.status = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.queues = new_queues(&self.max_sizes);
        self.interrupt.ack(u32::MAX);
    }

    /// True while the driver may still write DriverFeatures: DRIVER set, FEATURES_OK not yet.
    fn negotiating(&self) -> bool {
        self.status & STATUS_DRIVER != 0 && self.status & STATUS_FEATURES_OK == 0
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            return self.reset();
        }
        // Status bits are only ever set by the driver; clearing one takes a reset. A driver that
        // drops FEATURES_OK or DRIVER_OK cannot renegotiate features under an active device.
        let mut value = value | (self.status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK));
        if value & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            let ok = self.driver_features & !self.features == 0
                && self.driver_features & F_VERSION_1 != 0;
            if ok {
                self.device().ack_features(self.driver_features);
            } else {
                value &= !STATUS_FEATURES_OK; // the driver reads it back and gives up
            }
        }
        if value & STATUS_DRIVER_OK != 0 && !self.active {
            value = self.activate(value);
        }
        self.status = value;
    }

    fn activate(&mut self, status: u32) -> u32 {
        let valid = self.status & STATUS_FEATURES_OK != 0
            && self
                .queues
                .iter()
                .all(|q| q.ready() && q.is_valid(&self.mem));
        if !valid {
            return (status & !STATUS_DRIVER_OK) | STATUS_NEEDS_RESET;
        }
        let queues = std::mem::take(&mut self.queues);
        let r = self
            .device()
            .activate(self.mem.clone(), queues, self.interrupt.clone());
        match r {
            Ok(()) => {
                self.active = true;
                // Buffers the driver made available before DRIVER_OK are served now.
                self.kick_queues();
                status
            }
            Err(_) => {
                self.queues = new_queues(&self.max_sizes);
                (status & !STATUS_DRIVER_OK) | STATUS_NEEDS_RESET
            }
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        let sel = self.queue_sel as usize;
        let q = self.queues.get(sel);
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device_type,
            0x0c => VENDOR,
            0x10 => match self.device_features_sel {
                0 => self.features as u32,
                1 => (self.features >> 32) as u32,
                _ => 0,
            },
            0x34 => self.max_sizes.get(sel).map_or(0, |&m| u32::from(m)),
            0x44 => q.map_or(u32::from(self.active && sel < self.max_sizes.len()), |q| {
                u32::from(q.ready())
            }),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            0xfc => 0, // ConfigGeneration: no device changes its config behind the driver
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let hi = |q: &mut Queue, f: fn(&mut Queue, Option<u32>, Option<u32>), low: bool| {
            if low {
                f(q, Some(v), None)
            } else {
                f(q, None, Some(v))
            }
        };
        match offset {
            0x14 => self.device_features_sel = v,
            // DriverFeatures only counts while features are negotiated (virtio 1.x 3.1.1):
            // after FEATURES_OK (or before DRIVER) a write is ignored, so the features the device
            // acked and the ones a snapshot saves stay the same.
            0x20 if !self.negotiating() => {}
            0x20 => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 => {
                if let Some(q) = self.queue() {
                    // Sizes that are not a power of two or exceed the maximum are ignored; the
                    // queue then fails validation at DRIVER_OK.
                    q.set_size(u16::try_from(v).unwrap_or(0));
                }
            }
            0x44 => {
                if let Some(q) = self.queue() {
                    q.set_ready(v == 1);
                }
            }
            QUEUE_NOTIFY => {
                // Without an ioeventfd the notification lands here: pass it on.
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(v),
            0x80 | 0x84 => {
                if let Some(q) = self.queue() {
                    hi(q, Queue::set_desc_table_address, offset == 0x80);
                }
            }
            0x90 | 0x94 => {
                if let Some(q) = self.queue() {
                    hi(q, Queue::set_avail_ring_address, offset == 0x90);
                }
            }
            0xa0 | 0xa4 => {
                if let Some(q) = self.queue() {
                    hi(q, Queue::set_used_ring_address, offset == 0xa0);
                }
            }
            _ => {}
        }
    }
}

impl MmioTransport {
    /// Start the device's queue processing on the event loop (the device processes nothing
    /// while it is activated).
    fn kick_queues(&self) {
        for evt in &self.queue_evts {
            let _ = evt.write(1);
        }
    }

    /// The device's whole state (the VM is paused and the device quiesced).
    pub fn save(&self) -> VirtioState {
        let device = self.device();
        let queues = if self.active {
            device.queues().iter().map(SavedQueue::of).collect()
        } else {
            self.queues.iter().map(SavedQueue::of).collect()
        };
        VirtioState {
            device_type: self.device_type,
            status: self.status,
            driver_features: self.driver_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt.status(),
            active: self.active,
            queues,
            device: device.save_state(),
        }
    }

    /// Put a fresh transport (and its device) into a saved state. Everything is checked against
    /// this device and guest memory before anything changes; an active device gets its queues
    /// back, and they are kicked so the work the driver had queued is picked up once the VM runs.
    pub fn restore(&mut self, s: &VirtioState) -> Result<(), PersistError> {
        if s.device_type != self.device_type {
            return Err(PersistError::WrongDevice {
                want: self.device_type,
                found: s.device_type,
            });
        }
        // Before FEATURES_OK the driver may have written anything; FEATURES_OK then fails
        // again after the restore, as it would have.
        // An active device was negotiated: what it acked must have been offered, whatever the
        // saved status says.
        if (s.active || s.status & STATUS_FEATURES_OK != 0)
            && s.driver_features & !self.features != 0
        {
            return Err(PersistError::Features {
                device_type: self.device_type,
                features: s.driver_features & !self.features,
            });
        }
        if s.queues.len() != self.max_sizes.len() {
            return Err(PersistError::QueueCount {
                device_type: self.device_type,
                want: self.max_sizes.len(),
                found: s.queues.len(),
            });
        }
        let mut queues = Vec::with_capacity(s.queues.len());
        for (i, (saved, &max)) in s.queues.iter().zip(&self.max_sizes).enumerate() {
            let q = saved.to_queue(max).ok_or(PersistError::BadQueue(i))?;
            if s.active && !(q.ready() && q.is_valid(&self.mem)) {
                return Err(PersistError::BadQueue(i));
            }
            queues.push(q);
        }
        {
            let device = self.device.clone();
            let mut device = lock(&device);
            device.restore_state(&s.device)?;
            if s.active {
                device.ack_features(s.driver_features);
                device.activate(self.mem.clone(), queues, self.interrupt.clone())?;
            } else {
                self.queues = queues;
            }
        }
        self.active = s.active;
        self.status = s.status;
        self.driver_features = s.driver_features;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.queue_sel = s.queue_sel;
        self.interrupt.restore(s.interrupt_status);
        if self.active {
            self.kick_queues();
        }
        Ok(())
    }

    /// Finish the device's in-flight work (see `VirtioDevice::quiesce`).
    pub fn quiesce(&self) -> Result<(), PersistError> {
        self.device().quiesce()
    }
}

/// Fresh (unconfigured) queues; sizes that are not a power of two are skipped.
fn new_queues(max_sizes: &[u16]) -> Vec<Queue> {
    max_sizes
        .iter()
        .filter_map(|&max| Queue::new(max).ok())
        .collect()
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            return self.device().read_config(offset - CONFIG, data);
        }
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(word) if offset.is_multiple_of(4) => *word = self.read_reg(offset).to_le_bytes(),
            _ => data.fill(0), // registers are 32-bit, aligned
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG {
            return self.device().write_config(offset - CONFIG, data);
        }
        if let (Ok(word), true) = (<[u8; 4]>::try_from(data), offset.is_multiple_of(4)) {
            self.write_reg(offset, u32::from_le_bytes(word));
        }
    }
}
