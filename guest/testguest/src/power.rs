//! POST milestones (port 0x80) and power-off (i8042 reset for plainvm, isa-debug-exit for QEMU).

use crate::io::{outb, outl};

/// Writes a POST code to port 0x80 (plainvm records these as boot milestones).
pub fn post(code: u8) {
    outb(0x80, code);
}

/// Ends the VM: i8042 reset (plainvm stops with status 0), then QEMU's isa-debug-exit at 0xf4
/// (QEMU exits with status `code * 2 + 1`), then halts (if neither ended the VM).
pub fn off(code: u32) -> ! {
    outb(0x64, 0xfe);
    outl(0xf4, code);
    crate::halt::forever();
}
