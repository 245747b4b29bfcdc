//! The hypercall device's register page driven by a hostile guest: argument registers, calls
//! with any number and arguments (addresses into and out of guest RAM, lengths that wrap),
//! status reads, and guest memory written in between.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use plainvm_devices::hypercall::{Hypercall, HypercallHost, HypercallState};
use plainvm_devices::{BusDevice, GuestRam};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress};

struct Host;

impl HypercallHost for Host {
    fn power(&mut self, _reboot: bool, _code: u8) {}
    fn log(&mut self, _line: &str) {}
}

#[derive(Arbitrary, Debug)]
enum Op {
    Write { offset: u16, value: u32 },
    Read { offset: u16, width: u8 },
    Memory { at: u16, bytes: Vec<u8> },
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mem = GuestRam::from_ranges(&[(GuestAddress(0), 64 << 10)]).unwrap();
    let state = Arc::new(HypercallState::default());
    let mut dev = Hypercall::new(mem.clone(), state.clone(), Box::new(Host));
    for _ in 0..128 {
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        match op {
            Op::Write { offset, value } => {
                dev.write(u64::from(offset & 0xffc), &value.to_le_bytes())
            }
            Op::Read { offset, width } => {
                let mut b = [0u8; 8];
                let n = [1, 2, 4, 8][usize::from(width % 4)];
                dev.read(u64::from(offset % 0x1000), &mut b[..n]);
            }
            Op::Memory { at, bytes } => {
                let _ = mem.write_slice(&bytes, GuestAddress(u64::from(at)));
            }
        }
    }
    let _ = state.snapshot();
});
