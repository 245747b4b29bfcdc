//! virtio-rng: fills the guest's buffers from the host's `getrandom`.

use super::{ActivateError, Interrupt, VirtioDevice, TYPE_RNG};
use crate::GuestRam;
use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const QUEUE_SIZE: u16 = 256;
/// Most bytes served per request: a guest asking for gigabytes gets a short answer.
const MAX_REQUEST: usize = 64 << 10;
/// Most random bytes handed out per wake of the event loop.
const BYTES_PER_WAKE: usize = 1 << 20;

/// The entropy device.
pub struct Rng {
    queue_evt: EventFd,
    active: Option<(GuestRam, Queue, Interrupt)>,
}

impl Rng {
    /// A new device with its queue eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            queue_evt: EventFd::new(EFD_NONBLOCK)?,
            active: None,
        })
    }

    /// Clones of the queue eventfds, for the transport and the ioeventfd registration.
    pub fn queue_evts(&self) -> std::io::Result<Vec<EventFd>> {
        Ok(vec![self.queue_evt.try_clone()?])
    }

    /// Serve available requests, up to `QUEUE_BUDGET` (then the device kicks itself to go on
    /// later); returns how many were completed.
    fn process(&mut self) -> usize {
        let Some((mem, queue, interrupt)) = &mut self.active else {
            return 0;
        };
        let (mut done, mut total) = (0, 0);
        let mut buf = vec![0u8; MAX_REQUEST];
        while let Some(chain) = queue.pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            let mut written = 0usize;
            for desc in chain {
                if !desc.is_write_only() || written >= MAX_REQUEST {
                    break; // a device-readable buffer has no place in an rng request
                }
                let n = (desc.len() as usize).min(MAX_REQUEST - written);
                if fill_random(&mut buf[..n]).is_err()
                    || mem.write_slice(&buf[..n], desc.addr()).is_err()
                {
                    break;
                }
                written += n;
            }
            if queue.add_used(&*mem, head, written as u32).is_err() {
                break; // used ring outside guest memory: the driver broke the queue
            }
            done += 1;
            total += written;
            if done == super::QUEUE_BUDGET || total >= BYTES_PER_WAKE {
                let _ = self.queue_evt.write(1); // more may wait: continue on the next wake
                break;
            }
        }
        if done > 0 && queue.needs_notification(&*mem).unwrap_or(true) {
            interrupt.signal_used_queue();
        }
        done
    }
}

/// Fill `buf` from the kernel's random source.
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: writes at most `buf.len() - off` bytes into `buf` past `off`.
        let n = unsafe { libc::getrandom(buf[off..].as_mut_ptr().cast(), buf.len() - off, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            off += n as usize;
        }
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        0
    }
    fn ack_features(&mut self, _features: u64) {}
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(
        &mut self,
        mem: GuestRam,
        mut queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        super::expect_queues(&queues, 1)?;
        self.active = Some((mem, queues.remove(0), interrupt));
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
    }
    fn queues(&self) -> &[Queue] {
        self.active
            .as_ref()
            .map_or(&[], |(_, q, _)| std::slice::from_ref(q))
    }
}

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.queue_evt, EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.queue_evt.read();
        Rng::process(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_queue::TestQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    const MEM: usize = 1 << 20;

    fn active(size: u16) -> (Rng, TestQueue, GuestRam) {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let tq = TestQueue::new(&mem, 0x1000, size);
        let mut rng = Rng::new().unwrap();
        let irq = Interrupt::new(EventFd::new(0).unwrap());
        rng.activate(mem.clone(), vec![tq.queue()], irq).unwrap();
        (rng, tq, mem)
    }

    #[test]
    fn fills_writable_buffers_with_random_bytes() {
        let (mut rng, mut tq, mem) = active(16);
        tq.add(&mem, &[(0x8000, 64, true)]);
        assert_eq!(rng.process(), 1);
        assert_eq!(tq.used(&mem), vec![(0, 64)]);
        let mut got = [0u8; 64];
        mem.read_slice(&mut got, GuestAddress(0x8000)).unwrap();
        assert!(got.iter().any(|&b| b != 0));
    }

    #[test]
    fn malformed_chains_are_answered_without_touching_other_memory() {
        let (mut rng, mut tq, mem) = active(16);
        // Outside guest memory, near the top of the address space, a read-only buffer, a huge
        // length: each request completes with what could be written (nothing), no panic.
        tq.add(&mem, &[(MEM as u64 + 0x1000, 64, true)]);
        tq.add(&mem, &[(u64::MAX - 8, 64, true)]);
        tq.add(&mem, &[(0x9000, 64, false)]);
        tq.add(&mem, &[(0xa000, u32::MAX, true)]);
        assert_eq!(rng.process(), 4);
        let used = tq.used(&mem);
        assert_eq!(used.len(), 4);
        assert_eq!((used[0].1, used[1].1, used[2].1), (0, 0, 0));
        // The huge request is capped at what fits in guest memory and the per-request limit.
        assert!(used[3].1 as usize <= MAX_REQUEST);
        let mut ro = [0u8; 64];
        mem.read_slice(&mut ro, GuestAddress(0x9000)).unwrap();
        assert_eq!(ro, [0u8; 64], "a device-readable buffer was written");
    }

    #[test]
    fn a_descriptor_loop_ends() {
        let (mut rng, tq, mem) = active(4);
        // Descriptor 0 chains to itself; the avail ring offers it once.
        tq.set_desc(&mem, 0, 0x8000, 16, 1 | 2, 0);
        mem.write_obj(0u16, GuestAddress(0x1000 + 0x404)).unwrap();
        mem.write_obj(1u16, GuestAddress(0x1000 + 0x402)).unwrap();
        assert_eq!(rng.process(), 1);
    }

    #[test]
    fn a_full_queue_is_served_one_budget_per_wake() {
        let (mut rng, mut tq, mem) = active(256);
        for _ in 0..256 {
            tq.add(&mem, &[(0x8000, 64, true)]);
        }
        assert_eq!(rng.process(), crate::virtio::QUEUE_BUDGET);
        assert_eq!(
            rng.queue_evt.read().unwrap(),
            1,
            "the device kicked itself to go on"
        );
    }
}
