//! The register page as the guest sees it: reads of any width from a register image, 32-bit
//! writes to ARG0..ARG3 and CALL (64-bit writes to an ARG pair), everything else BAD_ACCESS.

use super::dispatch::Calls;
use super::{HypercallHost, HypercallState};
use crate::bus::BusDevice;
use crate::GuestRam;
use plainvm_guest_proto::{regs, status, LOG_MAX, MAGIC, VERSION};
use std::sync::Arc;

/// The hypercall device (put it on the MMIO bus at `plainvm_guest_proto::BASE`).
pub struct Hypercall {
    calls: Calls,
    args: [u32; 4],
    ret: [u32; 4],
    status: u32,
    text: [u8; LOG_MAX as usize],
}

impl Hypercall {
    /// A device over guest memory `mem`, sharing `state` with the VMM, acting through `host`.
    pub fn new(mem: GuestRam, state: Arc<HypercallState>, host: Box<dyn HypercallHost>) -> Self {
        Self {
            calls: Calls::new(mem, state, host),
            args: [0; 4],
            ret: [0; 4],
            status: status::OK,
            text: [0; LOG_MAX as usize],
        }
    }

    /// The value of the 32-bit register at `offset` (4-aligned).
    fn register(&self, offset: u64) -> u32 {
        let index = |table: &[u64; 4]| table.iter().position(|&r| r == offset);
        match offset {
            regs::MAGIC => MAGIC,
            regs::VERSION => VERSION,
            regs::STATUS => self.status,
            regs::GENERATION => self.calls.state.generation() as u32,
            regs::PENDING => self.calls.state.pending() as u32,
            _ => index(&regs::ARG)
                .map(|i| self.args[i])
                .or_else(|| index(&regs::RET).map(|i| self.ret[i]))
                .unwrap_or(0),
        }
    }

    /// A 32-bit write at a 4-aligned `offset`.
    fn write32(&mut self, offset: u64, value: u32) {
        if let Some(i) = regs::ARG.iter().position(|&r| r == offset) {
            self.args[i] = value;
            self.status = status::OK;
        } else if offset == regs::CALL {
            match self.calls.run(value, self.args, &self.text) {
                Ok(ret) => {
                    self.ret = ret;
                    self.status = status::OK;
                }
                Err(s) => {
                    self.ret = [0; 4];
                    self.status = s;
                }
            }
        } else {
            self.status = status::BAD_ACCESS;
        }
    }
}

impl BusDevice for Hypercall {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Byte by byte from the 32-bit registers: any width, any alignment, never out of bounds.
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i as u64);
            *b = if at < regs::END {
                self.register(at & !3).to_le_bytes()[(at & 3) as usize]
            } else if (regs::TEXT..regs::TEXT_END).contains(&at) {
                self.text[(at - regs::TEXT) as usize]
            } else {
                0
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let is_arg = |o: u64| regs::ARG.contains(&o);
        let in_text =
            offset >= regs::TEXT && offset.saturating_add(data.len() as u64) <= regs::TEXT_END;
        if in_text {
            let at = (offset - regs::TEXT) as usize;
            self.text[at..at + data.len()].copy_from_slice(data);
            self.status = status::OK;
            return;
        }
        match *data {
            [a, b, c, d] if offset.is_multiple_of(4) => {
                self.write32(offset, u32::from_le_bytes([a, b, c, d]))
            }
            [a, b, c, d, e, f, g, h]
                if offset.is_multiple_of(8) && is_arg(offset) && is_arg(offset + 4) =>
            {
                self.write32(offset, u32::from_le_bytes([a, b, c, d]));
                self.write32(offset + 4, u32::from_le_bytes([e, f, g, h]));
            }
            _ => self.status = status::BAD_ACCESS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plainvm_guest_proto::{nr, request};
    use std::sync::Mutex;
    use vm_memory::{Bytes, GuestAddress};

    /// Log lines and the last POWER call (reboot, code).
    type Seen = (Vec<String>, Option<(bool, u8)>);

    #[derive(Clone, Default)]
    struct Host(Arc<Mutex<Seen>>);
    impl HypercallHost for Host {
        fn power(&mut self, reboot: bool, code: u8) {
            self.0.lock().unwrap().1 = Some((reboot, code));
        }
        fn log(&mut self, line: &str) {
            self.0.lock().unwrap().0.push(line.into());
        }
    }

    fn device() -> (Hypercall, Arc<HypercallState>, Host, GuestRam) {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let state = Arc::new(HypercallState::default());
        let host = Host::default();
        let dev = Hypercall::new(mem.clone(), state.clone(), Box::new(host.clone()));
        (dev, state, host, mem)
    }

    impl plainvm_guest_proto::Registers for Hypercall {
        fn read32(&mut self, offset: u64) -> u32 {
            let mut b = [0u8; 4];
            self.read(offset, &mut b);
            u32::from_le_bytes(b)
        }
        fn write32(&mut self, offset: u64, value: u32) {
            self.write(offset, &value.to_le_bytes());
        }
    }

    use plainvm_guest_proto::{call, Error};

    #[test]
    fn magic_version_and_odd_accesses() {
        let (mut d, ..) = device();
        assert_eq!(plainvm_guest_proto::call::probe(&mut d), Ok(VERSION));
        let mut b = [0u8; 2];
        d.read(1, &mut b);
        assert_eq!(&b, b"LV");
        let mut far = [0xaau8; 8];
        d.read(0xffc, &mut far);
        assert_eq!(far, [0; 8]);
        d.read(u64::MAX, &mut far);
        d.write(0x11, &[1, 2, 3, 4]);
        assert_eq!(d.register(regs::STATUS), status::BAD_ACCESS);
        d.write(regs::MAGIC, &[0; 4]);
        assert_eq!(d.register(regs::STATUS), status::BAD_ACCESS);
        d.write(regs::ARG[0], &[1, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!((d.register(regs::ARG[0]), d.register(regs::ARG[1])), (1, 2));
        d.write(regs::CALL, &[0; 8]);
        assert_eq!(d.register(regs::STATUS), status::BAD_ACCESS);
        d.write(0x2000, &[0]);
        assert_eq!(
            call(&mut d, 12345, [0; 4]),
            Err(Error::Status(status::UNKNOWN_CALL))
        );
        assert_eq!(call(&mut d, nr::VERSION, [0; 4]).unwrap()[0], VERSION);
    }

    #[test]
    fn each_call_validates_and_acts() {
        let (mut d, state, host, mem) = device();
        let inval = Err(Error::Status(status::INVALID_ARGUMENT));
        assert_eq!(call(&mut d, nr::BOOT_MARK, [3, 0, 0, 0]), Ok([0; 4]));
        assert_eq!(state.marks()[0].stage, 3);
        assert_eq!(call(&mut d, nr::POWER, [2, 0, 0, 0]), inval);
        assert_eq!(call(&mut d, nr::POWER, [0, 256, 0, 0]), inval);
        assert_eq!(host.0.lock().unwrap().1, None);
        mem.write_slice(b"boot ok", GuestAddress(0x500)).unwrap();
        assert_eq!(call(&mut d, nr::LOG, [0x500, 0, 7, 0]).unwrap()[0], 7);
        assert_eq!(
            call(&mut d, nr::LOG, [0x500, 1, 7, 0]),
            Err(Error::Status(status::BAD_ADDRESS))
        );
        let t = call(&mut d, nr::HOST_TIME, [0; 4]).unwrap();
        assert!(t[0] > 1_700_000_000 && t[2] < 1_000_000_000);
        state.bump_generation();
        assert_eq!(call(&mut d, nr::GENERATION, [0; 4]).unwrap()[0], 1);
        assert_eq!(d.register(regs::GENERATION), 1);
        assert_eq!(d.register(regs::PENDING), 1);
        let r = call(&mut d, nr::REQUEST, [0; 4]).unwrap();
        assert_eq!(r[0], request::TIME_SYNC);
        assert_eq!(call(&mut d, nr::REQUEST, [0; 4]).unwrap()[0], request::NONE);
        assert_eq!(call(&mut d, nr::MEM_HINT, [1024, 0, 0, 0]), Ok([0; 4]));
        assert_eq!(
            call(&mut d, nr::MEM_HINT, [2048, 0, 0, 0]),
            inval,
            "more than RAM"
        );
        assert_eq!(state.snapshot().free_memory_kib, Some(1024));
        assert_eq!(call(&mut d, nr::HEARTBEAT, [5, 0, 0, 0]), inval);
        assert_eq!(call(&mut d, nr::HEARTBEAT, [1000, 0, 0, 0]).unwrap()[0], 1);
        assert_eq!(call(&mut d, nr::AGENT_HELLO, [8, 0, 0, 0]), inval);
        assert_eq!(call(&mut d, nr::AGENT_HELLO, [3, 0, 0, 0]).unwrap()[0], 1);
        assert_eq!(state.agent(), Some(3));
        d.write(regs::TEXT, b"tex");
        d.write(regs::TEXT + 3, b"t!");
        assert_eq!(call(&mut d, nr::LOG_TEXT, [4, 0, 0, 0]).unwrap()[0], 4);
        let mut back = [0u8; 5];
        d.read(regs::TEXT, &mut back);
        assert_eq!(&back, b"text!");
        d.write(regs::TEXT_END - 2, &[0; 4]);
        assert_eq!(
            d.register(regs::STATUS),
            status::BAD_ACCESS,
            "straddles the window end"
        );
        assert_eq!(call(&mut d, nr::POWER, [1, 42, 0, 0]), Ok([0; 4]));
        let h = host.0.lock().unwrap();
        assert_eq!(h.1, Some((true, 42)));
        assert!(h.0.iter().any(|l| l == "guest: boot ok"), "{:?}", h.0);
        assert!(h.0.iter().any(|l| l == "guest: text"), "{:?}", h.0);
        assert!(
            h.0.iter().any(|l| l.contains("agent announced")),
            "{:?}",
            h.0
        );
    }
}
