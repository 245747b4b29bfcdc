//! The virtio-mmio transport with each device behind it (rng, balloon with free-page reporting,
//! block over a scratch image, net over a socket pair, vsock over a scratch socket), driven by a
//! hostile driver: register writes and reads, guest memory (descriptors, rings, buffers) written
//! in between, queue kicks served on a real event loop, and save -> restore round trips into a
//! fresh device.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use libfuzzer_sys::fuzz_target;
use plainvm_devices::virtio::{
    balloon::Balloon, block::Block, net::MacAddr, net::Net, net::Tap, rng::Rng, vsock::Vsock,
    Interrupt, MmioTransport, VirtioDevice,
};
use plainvm_devices::{BusDevice, GuestRam};
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

const MEM: usize = 64 << 10;

#[derive(Arbitrary, Debug)]
enum Op {
    Write { reg: u8, value: u32 },
    Read { reg: u8 },
    Config { offset: u8, value: u32, write: bool },
    Memory { at: u16, bytes: Vec<u8> },
    Kick { queue: u8 },
    SaveRestore,
}

/// One device kind, freshly made with its queue eventfds.
fn device(
    kind: u8,
) -> Option<(
    Arc<Mutex<dyn VirtioDevice>>,
    Arc<Mutex<dyn MutEventSubscriber + Send>>,
    Vec<EventFd>,
)> {
    let dir = std::env::temp_dir().join(format!("plainvm-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    macro_rules! wrap {
        ($d:expr) => {{
            let d = $d;
            let evts = d.queue_evts().ok()?;
            let d = Arc::new(Mutex::new(d));
            Some((
                d.clone() as Arc<Mutex<dyn VirtioDevice>>,
                d as Arc<Mutex<dyn MutEventSubscriber + Send>>,
                evts,
            ))
        }};
    }
    match kind % 5 {
        0 => wrap!(Rng::new().ok()?),
        1 => wrap!(Balloon::new(1 << 20, true).ok()?),
        2 => {
            let img = dir.join("disk.img");
            if !img.exists() {
                std::fs::write(&img, vec![0u8; 1 << 20]).ok()?;
            }
            wrap!(Block::new(&img, kind & 8 != 0, Some("fuzz")).ok()?)
        }
        3 => {
            let mut fds = [0i32; 2];
            // SAFETY: socketpair writes two descriptors into the two-element array.
            let rc = unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK,
                    0,
                    fds.as_mut_ptr(),
                )
            };
            if rc != 0 {
                return None;
            }
            // SAFETY: both descriptors were just created and are owned here; the peer end is
            // closed at once (the tap sees a gone peer, which is hostile enough).
            let (a, _b) = unsafe {
                use std::os::fd::FromRawFd;
                (
                    std::fs::File::from_raw_fd(fds[0]),
                    std::fs::File::from_raw_fd(fds[1]),
                )
            };
            wrap!(Net::new(Tap::from_file(a, "fuzz0"), MacAddr([2, 0, 0, 0, 0, 1])).ok()?)
        }
        _ => wrap!(Vsock::new(3, &dir.join("v.sock")).ok()?),
    }
}

struct Rig {
    transport: MmioTransport,
    events: Loop,
}

fn rig(kind: u8, mem: &GuestRam) -> Option<Rig> {
    let (dev, sub, evts) = device(kind)?;
    let irq = EventFd::new(EFD_NONBLOCK).ok()?;
    let transport = MmioTransport::new(dev, mem.clone(), Interrupt::new(irq), evts);
    let mut events = Loop::new().ok()?;
    events.add_subscriber(sub);
    Some(Rig { transport, events })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(kind) = u8::arbitrary(&mut u) else {
        return;
    };
    let mem = GuestRam::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let Some(mut r) = rig(kind, &mem) else {
        return;
    };
    for _ in 0..64 {
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        match op {
            Op::Write { reg, value } => r
                .transport
                .write(u64::from(reg & 0xfc), &value.to_le_bytes()),
            Op::Read { reg } => {
                let mut b = [0u8; 4];
                r.transport.read(u64::from(reg & 0xfc), &mut b);
            }
            Op::Config {
                offset,
                value,
                write,
            } => {
                let at = 0x100 + u64::from(offset);
                if write {
                    r.transport.write(at, &value.to_le_bytes());
                } else {
                    let mut b = [0u8; 4];
                    r.transport.read(at, &mut b);
                }
            }
            Op::Memory { at, bytes } => {
                let _ = mem.write_slice(&bytes, GuestAddress(u64::from(at) % MEM as u64));
            }
            Op::Kick { queue } => {
                r.transport.write(0x50, &u32::from(queue % 4).to_le_bytes());
                let _ = r.events.run_with_timeout(0);
            }
            Op::SaveRestore => {
                let _ = r.transport.quiesce();
                let saved = r.transport.save();
                drop(r);
                let Some(mut fresh) = rig(kind, &mem) else {
                    return;
                };
                // A device saved by plainvm must always restore into a fresh one.
                fresh
                    .transport
                    .restore(&saved)
                    .expect("a saved device did not restore");
                let _ = fresh.events.run_with_timeout(0);
                r = fresh;
            }
        }
    }
});
