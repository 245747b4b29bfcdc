//! The host side of the serial console: stdout for guest output, stdin (a terminal) for input.

use event_manager::{EventOps, Events, MutEventSubscriber};
use plainvm_devices::legacy::serial::SerialConsole;
use plainvm_devices::lock;
use std::io::Write;
use std::sync::{Arc, Mutex};
use vmm_sys_util::epoll::EventSet;

/// Guest console output: written straight through to stdout so prompts show up at once.
pub struct ConsoleOut;

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

/// Feeds stdin to the serial port from the device event loop.
pub struct ConsoleIn {
    serial: Arc<Mutex<SerialConsole>>,
}

impl ConsoleIn {
    /// Input for `serial`.
    pub fn new(serial: Arc<Mutex<SerialConsole>>) -> Self {
        Self { serial }
    }
}

impl MutEventSubscriber for ConsoleIn {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&std::io::stdin(), EventSet::IN));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        // Read the descriptor directly: std's buffered Stdin would hide bytes from epoll.
        // SAFETY: reads into a buffer we own, at most its length.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        let n = match usize::try_from(n) {
            Ok(n) if n > 0 && !events.event_set().contains(EventSet::HANG_UP) => n,
            // EOF or error: stop watching stdin, the guest keeps running.
            _ => {
                let _ = ops.remove(events);
                return;
            }
        };
        let mut serial = lock(&self.serial);
        // Input beyond the UART's FIFO is dropped, as on a real UART with no flow control.
        serial.enqueue_input(&buf[..n]);
    }
}
