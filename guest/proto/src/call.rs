//! The call sequence over any register accessor: write ARG0..ARG3, write CALL, read STATUS and RET.

use crate::{regs, status};

/// 32-bit access to the device page (volatile MMIO in a guest, a fake in tests).
pub trait Registers {
    /// Read the register at `offset`.
    fn read32(&mut self, offset: u64) -> u32;
    /// Write `value` to the register at `offset`.
    fn write32(&mut self, offset: u64, value: u32);
    /// Called before a call's register sequence: the register block is shared by the whole guest,
    /// so an accessor that other processes or CPUs may use at the same time takes a lock here.
    fn lock(&mut self) {}
    /// Called after the call's results were read.
    fn unlock(&mut self) {}
}

/// A non-OK status, or a missing device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// MAGIC did not read back as `crate::MAGIC`: no plainvm hypercall device here.
    NoDevice,
    /// The device answered with this status code.
    Status(u32),
}

impl Error {
    /// A short description of the error.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::NoDevice => "no plainvm hypercall device (bad magic)",
            Self::Status(status::UNKNOWN_CALL) => "unknown call",
            Self::Status(status::INVALID_ARGUMENT) => "invalid argument",
            Self::Status(status::BAD_ADDRESS) => "address outside guest RAM",
            Self::Status(status::RATE_LIMITED) => "rate limited",
            Self::Status(status::LIMIT_REACHED) => "limit reached",
            Self::Status(status::BAD_ACCESS) => "bad register access",
            Self::Status(_) => "unknown status",
        }
    }
}

/// True when the device page answers with the plainvm magic and a version we speak.
pub fn probe<R: Registers>(r: &mut R) -> Result<u32, Error> {
    if r.read32(regs::MAGIC) != crate::MAGIC {
        return Err(Error::NoDevice);
    }
    Ok(r.read32(regs::VERSION))
}

/// Run call `nr` with `args`; returns RET0..RET3 or the status.
pub fn call<R: Registers>(r: &mut R, nr: u32, args: [u32; 4]) -> Result<[u32; 4], Error> {
    r.lock();
    for (off, a) in regs::ARG.iter().zip(args) {
        r.write32(*off, a);
    }
    r.write32(regs::CALL, nr);
    let out = match r.read32(regs::STATUS) {
        status::OK => Ok(regs::RET.map(|off| r.read32(off))),
        s => Err(Error::Status(s)),
    };
    r.unlock();
    out
}

/// Split a 64-bit value into (low, high) 32-bit halves.
pub fn split(v: u64) -> (u32, u32) {
    (v as u32, (v >> 32) as u32)
}

/// Join (low, high) 32-bit halves.
pub fn join(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | (u64::from(hi) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake device that echoes ARG0+1 into RET0 for call 7 and rejects others.
    struct Fake {
        args: [u32; 4],
        status: u32,
        ret: [u32; 4],
        /// Held between `lock` and `unlock`; every register access must happen while held.
        locked: bool,
        unlocked_accesses: u32,
    }

    impl Registers for Fake {
        fn lock(&mut self) {
            assert!(!self.locked, "locked twice");
            self.locked = true;
        }
        fn unlock(&mut self) {
            assert!(self.locked, "unlocked without a lock");
            self.locked = false;
        }
        fn read32(&mut self, offset: u64) -> u32 {
            if !self.locked && offset != regs::MAGIC && offset != regs::VERSION {
                self.unlocked_accesses += 1;
            }
            match offset {
                regs::MAGIC => crate::MAGIC,
                regs::VERSION => crate::VERSION,
                regs::STATUS => self.status,
                o => regs::RET
                    .iter()
                    .position(|&r| r == o)
                    .map_or(0, |i| self.ret[i]),
            }
        }
        fn write32(&mut self, offset: u64, value: u32) {
            if !self.locked {
                self.unlocked_accesses += 1;
            }
            if let Some(i) = regs::ARG.iter().position(|&r| r == offset) {
                self.args[i] = value;
            } else if offset == regs::CALL {
                if value == 7 {
                    self.status = status::OK;
                    self.ret = [self.args[0] + 1, 0, 0, 0];
                } else {
                    self.status = status::UNKNOWN_CALL;
                }
            }
        }
    }

    #[test]
    fn call_writes_args_then_reads_status_and_results() {
        let mut f = Fake {
            args: [0; 4],
            status: 0,
            ret: [0; 4],
            locked: false,
            unlocked_accesses: 0,
        };
        assert_eq!(probe(&mut f), Ok(crate::VERSION));
        assert_eq!(call(&mut f, 7, [41, 0, 0, 0]), Ok([42, 0, 0, 0]));
        assert_eq!(
            call(&mut f, 99, [0; 4]),
            Err(Error::Status(status::UNKNOWN_CALL))
        );
        assert_eq!(
            Error::Status(status::UNKNOWN_CALL).describe(),
            "unknown call"
        );
        // Each call's whole register sequence ran under the accessor's lock, and let it go.
        assert_eq!(f.unlocked_accesses, 0);
        assert!(!f.locked);
    }

    #[test]
    fn magic_spells_plvm_and_halves_round_trip() {
        assert_eq!(crate::MAGIC, 0x4d56_4c50);
        let (lo, hi) = split(0x1234_5678_9abc_def0);
        assert_eq!(join(lo, hi), 0x1234_5678_9abc_def0);
        assert_eq!(crate::stage::parse("ready"), Some(crate::stage::READY));
        assert_eq!(crate::stage::parse("77"), Some(77));
        assert_eq!(crate::stage::parse("x"), None);
    }
}
