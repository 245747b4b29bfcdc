//! The 16550 UART at 0x3f8 (vm-superio): guest output to a writer, host input into its FIFO.

use crate::bus::BusDevice;
use crate::legacy::trigger::EventFdTrigger;
use serde::{Deserialize, Serialize};
use std::io::Write;
use vm_superio::serial::{NoEvents, SerialState};

/// Interrupt identification bits vm-superio sets, and the enable bits that let them out.
const IIR_OFFSET: u64 = 2;
const IIR_THR_EMPTY: u8 = 0x02;
const IIR_RDA: u8 = 0x04;
const IER_RDA: u8 = 0x01;
const IER_THR_EMPTY: u8 = 0x02;

/// The serial console. Its interrupt is an `EventFd` the VMM registers as an irqfd.
///
/// That irqfd sends an edge, and vm-superio sends one only when the interrupt's identification
/// bit was not already pending. An edge the guest misses (it arrived while the guest had the
/// line masked at the IOAPIC, e.g. while moving the IRQ to another CPU) leaves the bit pending
/// for ever, no edge follows, and the guest's transmit waits for good. A real 16550 holds its
/// line as long as something is pending; [`SerialConsole::resend_lost_interrupt`] gives the
/// same result by sending the edge again when an interrupt stayed pending and unread.
pub struct SerialConsole {
    uart: vm_superio::Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
    /// The guest read the IIR since the last check.
    iir_read: bool,
    /// An interrupt was pending and unread at the last check.
    stale: bool,
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
        Self {
            uart,
            iir_read: false,
            stale: false,
        }
    }

    /// Call a few times a second: when an enabled interrupt was pending at the last call and
    /// the guest has not read the IIR since, its edge was lost: send it again. Returns whether
    /// it did. A guest that keeps up never sees a second edge; one that missed an edge gets
    /// its output going again within two periods.
    pub fn resend_lost_interrupt(&mut self) -> bool {
        let s = self.uart.state();
        let pending = (s.interrupt_identification & IIR_THR_EMPTY != 0
            && s.interrupt_enable & IER_THR_EMPTY != 0)
            || (s.interrupt_identification & IIR_RDA != 0 && s.interrupt_enable & IER_RDA != 0);
        let read = std::mem::take(&mut self.iir_read);
        if !pending || read {
            self.stale = false;
            return false;
        }
        if !std::mem::replace(&mut self.stale, true) {
            return false;
        }
        use vm_superio::Trigger;
        self.uart.interrupt_evt().trigger().is_ok()
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
            self.iir_read |= offset == IIR_OFFSET;
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

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    /// A console writing to a sink, and a handle on its interrupt line (edges sent so far).
    fn console() -> (SerialConsole, EventFd) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let seen = irq.try_clone().unwrap();
        let c = SerialConsole::new(EventFdTrigger(irq), Box::new(std::io::sink()), None);
        (c, seen)
    }

    fn edges(irq: &EventFd) -> u64 {
        irq.read().unwrap_or(0)
    }

    #[test]
    fn a_transmit_interrupt_the_guest_never_read_is_sent_again() {
        let (mut c, irq) = console();
        c.write(1, &[IER_THR_EMPTY]); // IER: THRE on: one edge
        c.write(0, b"G"); // still pending: vm-superio sends no second edge
        assert_eq!(edges(&irq), 1);
        // The guest missed that edge: the first check only notes it, the second sends it again,
        // and so does every later one while nobody reads the IIR.
        assert!(!c.resend_lost_interrupt());
        assert!(c.resend_lost_interrupt());
        assert_eq!(edges(&irq), 1);
        assert!(c.resend_lost_interrupt());
        assert_eq!(edges(&irq), 1);
        // The guest reads the IIR (its handler runs): nothing more.
        let mut b = [0u8];
        c.read(IIR_OFFSET, &mut b);
        assert_eq!(b[0] & 0x0f, IIR_THR_EMPTY);
        for _ in 0..3 {
            assert!(!c.resend_lost_interrupt());
        }
        assert_eq!(edges(&irq), 0);
    }

    #[test]
    fn a_guest_that_keeps_up_or_masks_the_interrupt_gets_no_extra_edge() {
        let (mut c, irq) = console();
        let mut b = [0u8];
        c.write(1, &[IER_THR_EMPTY]);
        for _ in 0..4 {
            c.read(IIR_OFFSET, &mut b); // the handler, between every two checks
            c.write(0, b"x");
            assert!(!c.resend_lost_interrupt());
        }
        // Transmit interrupt off (the driver's stop_tx): pending but not enabled.
        c.write(1, &[0]);
        for _ in 0..3 {
            assert!(!c.resend_lost_interrupt());
        }
        let _ = edges(&irq);
        // Received data with its interrupt enabled and never read is sent again too.
        c.write(1, &[IER_RDA]);
        assert_eq!(c.enqueue_input(b"k"), 1);
        let _ = edges(&irq);
        assert!(!c.resend_lost_interrupt());
        assert!(c.resend_lost_interrupt());
        assert_eq!(edges(&irq), 1);
    }
}
