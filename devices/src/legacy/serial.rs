//! The 16550 UART at 0x3f8 (vm-superio): guest output to a writer, host input into its FIFO.

use crate::bus::BusDevice;
use crate::legacy::trigger::EventFdTrigger;
use serde::{Deserialize, Serialize};
use std::io::Write;
use vm_superio::serial::{NoEvents, SerialState};

/// The serial console. Its interrupt is an `EventFd` the VMM registers as an irqfd.
pub struct SerialConsole {
    uart: vm_superio::Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

/// The UART's registers and pending input, for snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    pub regs: [u8; 9],
    pub input: Vec<u8>,
}

impl SerialConsole {
    /// A UART that raises `irq` and writes what the guest sends to `out`; with `from`, it
    /// continues from a saved state (a corrupt one falls back to power-on state).
    pub fn new(
        irq: EventFdTrigger,
        out: Box<dyn Write + Send>,
        from: Option<&SerialSnapshot>,
    ) -> Self {
        let uart = match from {
            None => vm_superio::Serial::new(irq, out),
            Some(s) => {
                let [dll, dlh, ier, iir, lcr, lsr, mcr, msr, scr] = s.regs;
                let state = SerialState {
                    baud_divisor_low: dll,
                    baud_divisor_high: dlh,
                    interrupt_enable: ier,
                    interrupt_identification: iir,
                    line_control: lcr,
                    line_status: lsr,
                    modem_control: mcr,
                    modem_status: msr,
                    scratch: scr,
                    in_buffer: s.input.iter().copied().take(64).collect(),
                };
                vm_superio::Serial::from_state(&state, irq, NoEvents, out)
                    .unwrap_or_else(|_| unreachable!("input is capped at the FIFO size"))
            }
        };
        Self { uart }
    }

    /// The UART's state.
    pub fn save(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            regs: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            input: s.in_buffer,
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
