//! The i8042 controller's reset line (port 0x60-0x64): a write of 0xFE to 0x64 ends the VM.

use crate::bus::BusDevice;
use vm_superio::Trigger;

/// Only the part of an i8042 a VMM needs: the CPU reset command Linux uses with `reboot=k`.
pub struct I8042<T: Trigger> {
    dev: vm_superio::I8042Device<T>,
}

impl<T: Trigger> I8042<T> {
    /// `reset` fires when the guest asks for a CPU reset.
    pub fn new(reset: T) -> Self {
        Self {
            dev: vm_superio::I8042Device::new(reset),
        }
    }
}

impl<T: Trigger + Send> BusDevice for I8042<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = u8::try_from(offset).map_or(0xff, |o| self.dev.read(o));
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            let _ = self.dev.write(off, *b);
        }
    }
}
