//! Raw x86 port output from ring 3.
//!
//! Architecturally RFLAGS.IOPL=3 allows it. On the nested PVM KVM of the development hosts IOPL is
//! ignored for guest ring 3: an I/O instruction reaches the VMM only if the port is allowed by the
//! I/O permission bitmap of the TSS that TR points at; otherwise it raises #GP (a triple fault
//! without an IDT). The PVH entry installs such a TSS itself; a VMM starting the guest directly in
//! ring 3 has to provide one (TR limit covering a zeroed bitmap) for port I/O to work there.

use core::arch::asm;

/// Writes one byte to an I/O port.
#[inline(always)]
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects; the guest owns the whole (virtual) machine and
    // runs with IOPL=3, so this cannot fault.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a 32-bit value to an I/O port.
#[inline(always)]
pub fn outl(port: u16, value: u32) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads one byte from an I/O port.
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as in `outb`; the VMM answers the read.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    }
    value
}
