//! The 16550 UART at 0x3f8 (vm-superio): guest output to a writer, host input into its FIFO.

use crate::bus::BusDevice;
use crate::trigger::EventFdTrigger;
use std::io::Write;
use vm_superio::serial::NoEvents;

/// The serial console. Its interrupt is an `EventFd` the VMM registers as an irqfd.
pub struct SerialConsole {
    uart: vm_superio::Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl SerialConsole {
    /// A UART that raises `irq` and writes what the guest sends to `out`.
    pub fn new(irq: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: vm_superio::Serial::new(irq, out),
        }
    }

    /// Queue host input for the guest; returns how many bytes fit into the FIFO.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(input).unwrap_or(0)
    }

    /// How many more input bytes the FIFO takes now.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Flush the output writer (before the process exits).
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), &mut *data) {
            *b = self.uart.read(off);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            // A failed output write (closed stdout) or interrupt must not stop the guest.
            let _ = self.uart.write(off, *b);
        }
    }
}
