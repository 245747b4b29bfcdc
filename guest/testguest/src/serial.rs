//! Serial output on the 16550 at 0x3f8, serialized across vCPUs with a spinlock, plus number formatting.
//!
//! Output only writes THR and never polls LSR: each read is one more VM exit, and both plainvm's
//! and QEMU's 16550 accept THR writes back to back.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::io::{inb, outb};

const THR: u16 = 0x3f8;
const RBR: u16 = 0x3f8;
const LSR: u16 = 0x3fd;
const LSR_DATA_READY: u8 = 1;

static LOCK: AtomicBool = AtomicBool::new(false);

fn putb(b: u8) {
    outb(THR, b);
}

/// Waits for one byte of console input (polling the line status register).
pub fn read_byte() -> u8 {
    while inb(LSR) & LSR_DATA_READY == 0 {
        core::hint::spin_loop();
    }
    inb(RBR)
}

/// Writes a string without taking the lock (panic path only).
pub fn write_unlocked(s: &str) {
    s.bytes().for_each(putb);
}

/// Exclusive access to the serial port until dropped; build a line with chained calls.
pub struct Out(());

/// Takes the serial lock (spins).
pub fn lock() -> Out {
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    Out(())
}

impl Out {
    /// Writes a string.
    pub fn s(&mut self, s: &str) -> &mut Self {
        write_unlocked(s);
        self
    }

    /// Writes an unsigned number in decimal.
    pub fn u(&mut self, mut v: u64) -> &mut Self {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        buf[i..].iter().copied().for_each(putb);
        self
    }

    /// Writes an unsigned number as `0x` followed by hexadecimal digits (no leading zeros).
    pub fn x(&mut self, v: u64) -> &mut Self {
        write_unlocked("0x");
        let digits = (64 - v.leading_zeros()).div_ceil(4).max(1);
        for d in (0..digits).rev() {
            let nib = ((v >> (d * 4)) & 0xf) as u8;
            putb(if nib < 10 {
                b'0' + nib
            } else {
                b'a' + nib - 10
            });
        }
        self
    }

    /// Writes raw bytes, replacing anything outside printable ASCII with `?`.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        for &c in b {
            putb(if (0x20..0x7f).contains(&c) { c } else { b'?' });
        }
        self
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        LOCK.store(false, Ordering::Release);
    }
}
