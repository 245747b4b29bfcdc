//! The virtio-vsock device: RX, TX and event queues, the guest's CID in config space; packets
//! move between the queues and the unix-socket muxer on the device event loop.

use super::muxer::{Muxer, MuxerError};
use super::packet::{self, Header, HDR_SIZE};
use crate::virtio::persist::{DeviceState, PersistError, VsockState};
use crate::virtio::{
    read_config_bytes, ActivateError, Interrupt, VirtioDevice, QUEUE_BUDGET, TYPE_VSOCK,
};
use crate::GuestRam;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::io::{Read, Write};
use std::path::Path;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;
/// Event-queue event: the transport was reset, every connection is gone.
const EVENT_TRANSPORT_RESET: u32 = 0;
/// Event-loop token of the muxer's epoll set.
const MUXER: u32 = 3;

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is reserved: use 3 or more (0-2 and u32::MAX are special)")]
    BadCid(u64),
    #[error(transparent)]
    Muxer(#[from] MuxerError),
    #[error("cannot create an eventfd for the vsock device: {0}")]
    EventFd(std::io::Error),
}

struct Active {
    mem: GuestRam,
    queues: Vec<Queue>,
    interrupt: Interrupt,
}

/// The device.
pub struct Vsock {
    cid: u64,
    muxer: Muxer,
    queue_evts: Vec<EventFd>,
    active: Option<Active>,
    /// Restored from a saved state: the guest's connections ended with the old host side, and
    /// the driver must hear so (a transport-reset event) once the VM runs.
    reset_pending: bool,
}

impl Vsock {
    /// A device for guest CID `cid` whose host side listens on the unix socket `path`.
    pub fn new(cid: u64, path: &Path) -> Result<Self, VsockError> {
        if cid <= 2 || cid >= u64::from(u32::MAX) {
            return Err(VsockError::BadCid(cid));
        }
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(VsockError::EventFd);
        Ok(Self {
            cid,
            muxer: Muxer::new(cid, path)?,
            queue_evts: vec![evt()?, evt()?, evt()?],
            active: None,
            reset_pending: false,
        })
    }

    /// Clones of the queue eventfds, for the transport and the ioeventfd registration.
    pub fn queue_evts(&self) -> std::io::Result<Vec<EventFd>> {
        self.queue_evts.iter().map(EventFd::try_clone).collect()
    }

    /// Take every packet the guest queued on TX and hand it to the muxer.
    fn process_tx(&mut self) {
        let Some(a) = &mut self.active else {
            return;
        };
        let mut used = 0;
        while let Some(chain) = a.queues[TX].pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            match read_packet(&a.mem, chain, self.cid) {
                Ok(Some((hdr, payload))) => self.muxer.send_pkt(&hdr, &payload),
                Ok(None) => {}
                Err(hdr) => self.muxer.queue_reset(&hdr),
            }
            if a.queues[TX].add_used(&a.mem, head, 0).is_err() {
                break; // used ring outside guest memory: the driver broke the queue
            }
            used += 1;
            if used == QUEUE_BUDGET {
                let _ = self.queue_evts[TX].write(1); // continue on the next wake
                break;
            }
        }
        if used > 0 && a.queues[TX].needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue();
        }
    }

    /// Tell the driver its connections are gone (after a restore), through a buffer of the event
    /// queue; without one yet, try again at the next kick.
    fn send_transport_reset(&mut self) {
        let Some(a) = &mut self.active else {
            return;
        };
        let Some(chain) = a.queues[EVENT].pop_descriptor_chain(&a.mem) else {
            return;
        };
        let head = chain.head_index();
        // An unusable buffer goes back empty; the reset still counts as sent.
        let written = match chain.writer(&a.mem) {
            Ok(mut w) => match w.write_all(&EVENT_TRANSPORT_RESET.to_le_bytes()) {
                Ok(()) => 4,
                Err(_) => 0,
            },
            Err(_) => 0,
        };
        self.reset_pending = false;
        if a.queues[EVENT].add_used(&a.mem, head, written).is_ok() {
            a.interrupt.signal_used_queue();
        }
    }

    /// Fill the guest's RX buffers with whatever the muxer has for it.
    fn process_rx(&mut self) {
        let Some(a) = &mut self.active else {
            return;
        };
        let mut used = 0;
        let mut data = Vec::new();
        while self.muxer.has_rx() {
            if used == QUEUE_BUDGET {
                let _ = self.queue_evts[RX].write(1); // continue on the next wake
                break;
            }
            let Some(chain) = a.queues[RX].pop_descriptor_chain(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            let mut written = 0u32;
            match chain.writer(&a.mem) {
                Ok(mut w) if w.available_bytes() >= HDR_SIZE => {
                    data.clear();
                    let room = w.available_bytes() - HDR_SIZE;
                    let Some(mut hdr) = self.muxer.recv_pkt(room, &mut data) else {
                        // Nothing after all: give the buffer back for later.
                        a.queues[RX].go_to_previous_position();
                        break;
                    };
                    hdr.len = data.len() as u32;
                    if w.write_all(&hdr.to_bytes()).is_ok() && w.write_all(&data).is_ok() {
                        written = (HDR_SIZE + data.len()) as u32;
                    }
                }
                // Unusable buffer (too small, outside guest memory): returned empty.
                _ => {}
            }
            if a.queues[RX].add_used(&a.mem, head, written).is_err() {
                break;
            }
            used += 1;
        }
        if used > 0 && a.queues[RX].needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue();
        }
    }
}

/// Read one TX packet: `Ok(None)` drops it silently, `Err(hdr)` answers `hdr` with a reset.
fn read_packet(
    mem: &GuestRam,
    chain: virtio_queue::DescriptorChain<&GuestRam>,
    cid: u64,
) -> Result<Option<(Header, Vec<u8>)>, Header> {
    let Ok(mut r) = chain.reader(mem) else {
        return Ok(None); // descriptors outside guest memory
    };
    let avail = r.available_bytes();
    let mut raw = [0u8; HDR_SIZE];
    if avail < HDR_SIZE || r.read_exact(&mut raw).is_err() {
        return Ok(None);
    }
    let hdr = match packet::parse(&raw, avail) {
        Ok(h) => h,
        Err(_) => return Ok(None),
    };
    match hdr.validate(avail, cid) {
        Ok(()) => {}
        Err(e) if e.wants_rst() => return Err(hdr),
        Err(_) => return Ok(None),
    }
    let mut payload = vec![0u8; hdr.payload_len()];
    if r.read_exact(&mut payload).is_err() {
        return Ok(None);
    }
    Ok(Some((hdr, payload)))
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }
    fn features(&self) -> u64 {
        0
    }
    fn ack_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }
    fn activate(
        &mut self,
        mem: GuestRam,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        crate::virtio::expect_queues(&queues, 3)?;
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
        });
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
        self.reset_pending = false;
        self.muxer.reset();
    }
    fn queues(&self) -> &[Queue] {
        self.active.as_ref().map_or(&[], |a| &a.queues[..])
    }
    fn save_state(&self) -> DeviceState {
        // Connections are not saved: their host ends are sockets of this process.
        DeviceState::Vsock(VsockState { cid: self.cid })
    }
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), PersistError> {
        let DeviceState::Vsock(saved) = state else {
            return Err(PersistError::WrongState {
                device_type: self.device_type(),
            });
        };
        let cid = saved.cid;
        if cid != self.cid {
            return Err(PersistError::Mismatch(format!(
                "the vsock device had guest CID {cid} when the VM was saved, now {}: give the same cid=",
                self.cid
            )));
        }
        self.reset_pending = true;
        Ok(())
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            let _ = ops.add(Events::with_data(evt, i as u32, EventSet::IN));
        }
        let _ = ops.add(Events::with_data_raw(
            self.muxer.epoll_fd(),
            MUXER,
            EventSet::IN,
        ));
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            MUXER => self.muxer.handle_events(),
            i => {
                if let Some(evt) = self.queue_evts.get(i as usize) {
                    let _ = evt.read();
                }
                // RX kicks just mean new buffers; the event queue only carries transport resets.
                if i as usize == TX {
                    self.process_tx();
                }
            }
        }
        if self.reset_pending {
            self.send_transport_reset();
        }
        self.process_rx();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_queue::TestQueue;
    use packet::*;
    use vm_memory::{Bytes, GuestAddress};

    const CID: u64 = 3;

    fn device(name: &str) -> (Vsock, std::path::PathBuf) {
        let d =
            std::env::temp_dir().join(format!("plainvm-vsockdev-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("v.sock");
        (Vsock::new(CID, &p).unwrap(), p)
    }

    fn hdr(op: u16, len: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 5000,
            len,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 4096,
            ..Default::default()
        }
    }

    fn activate(dev: &mut Vsock) -> (GuestRam, TestQueue, TestQueue) {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let rx = TestQueue::new(&mem, 0x1_0000, 16);
        let tx = TestQueue::new(&mem, 0x2_0000, 16);
        let ev = TestQueue::new(&mem, 0x3_0000, 16);
        let irq = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let queues = vec![rx.queue(), tx.queue(), ev.queue()];
        dev.activate(mem.clone(), queues, irq).unwrap();
        (mem, rx, tx)
    }

    /// RX: the packets the device wrote (one per used buffer of 4 KiB at 0x40000 + i * 0x1000).
    fn rx_packets(dev: &mut Vsock, mem: &GuestRam, rx: &mut TestQueue) -> Vec<Header> {
        for i in 0..8u64 {
            rx.add(mem, &[(0x4_0000 + i * 0x1000, 0x1000, true)]);
        }
        dev.process_rx();
        rx.used(mem)
            .iter()
            .filter(|&&(_, len)| len as usize >= HDR_SIZE)
            .map(|&(id, _)| {
                let mut b = [0u8; HDR_SIZE];
                mem.read_slice(&mut b, GuestAddress(0x4_0000 + u64::from(id) * 0x1000))
                    .unwrap();
                Header::from_bytes(&b)
            })
            .collect()
    }

    #[test]
    fn malformed_tx_chains_do_not_break_the_device() {
        let (mut dev, _p) = device("malformed");
        let (mem, mut rx, mut tx) = activate(&mut dev);
        let put =
            |addr: u64, h: Header| mem.write_slice(&h.to_bytes(), GuestAddress(addr)).unwrap();
        // 1: header shorter than 44 bytes.
        tx.add(&mem, &[(0x5_0000, 20, false)]);
        // 2: payload length beyond the buffer.
        put(0x5_1000, hdr(OP_RW, 4000));
        tx.add(&mem, &[(0x5_1000, 100, false)]);
        // 3: descriptor outside guest memory.
        tx.add(&mem, &[(0xffff_0000, 64, false)]);
        // 4: huge length field.
        put(0x5_2000, hdr(OP_RW, u32::MAX));
        tx.add(&mem, &[(0x5_2000, 44, false), (0x5_3000, u32::MAX, false)]);
        // 5: wrong destination CID: answered with a reset.
        let mut h = hdr(OP_REQUEST, 0);
        h.dst_cid = 42;
        put(0x5_4000, h);
        tx.add(&mem, &[(0x5_4000, 44, false)]);
        // 6: spoofed source CID: dropped.
        let mut h = hdr(OP_REQUEST, 0);
        h.src_cid = 2;
        put(0x5_5000, h);
        tx.add(&mem, &[(0x5_5000, 44, false)]);
        // 7: header in a device-writable buffer (wrong direction).
        put(0x5_6000, hdr(OP_REQUEST, 0));
        tx.add(&mem, &[(0x5_6000, 44, true)]);
        // 8: unknown op.
        put(0x5_7000, hdr(77, 0));
        tx.add(&mem, &[(0x5_7000, 44, false)]);
        dev.process_tx();
        assert_eq!(tx.used(&mem).len(), 8, "every chain is returned");
        let out = rx_packets(&mut dev, &mem, &mut rx);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out.iter().all(|h| h.op == OP_RST && h.dst_cid == CID));
        assert_eq!(dev.muxer.connections(), 0);
    }

    #[test]
    fn guest_connects_to_host_socket_and_data_flows() {
        let (mut dev, p) = device("flow");
        let host = std::os::unix::net::UnixListener::bind(format!("{}_5000", p.display())).unwrap();
        let (mem, mut rx, mut tx) = activate(&mut dev);
        mem.write_slice(&hdr(OP_REQUEST, 0).to_bytes(), GuestAddress(0x5_0000))
            .unwrap();
        tx.add(&mem, &[(0x5_0000, 44, false)]);
        dev.process_tx();
        let (mut s, _) = host.accept().unwrap();
        let out = rx_packets(&mut dev, &mem, &mut rx);
        assert_eq!(out[0].op, OP_RESPONSE);
        // Header and payload in separate descriptors, as Linux 6.1 sends them.
        mem.write_slice(&hdr(OP_RW, 5).to_bytes(), GuestAddress(0x5_1000))
            .unwrap();
        mem.write_slice(b"hello", GuestAddress(0x5_2000)).unwrap();
        tx.add(&mem, &[(0x5_1000, 44, false), (0x5_2000, 5, false)]);
        dev.process_tx();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[test]
    fn a_full_tx_queue_is_served_one_budget_per_wake() {
        let (mut dev, _p) = device("budget");
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let rx = TestQueue::new(&mem, 0x1_0000, 16);
        let mut tx = TestQueue::new(&mem, 0x2_0000, 256);
        let ev = TestQueue::new(&mem, 0x3_0000, 16);
        let irq = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        dev.activate(mem.clone(), vec![rx.queue(), tx.queue(), ev.queue()], irq)
            .unwrap();
        // Requests to a port nobody listens on: each one costs the device a parse and a reset.
        mem.write_slice(&hdr(OP_REQUEST, 0).to_bytes(), GuestAddress(0x5_0000))
            .unwrap();
        for _ in 0..256 {
            tx.add(&mem, &[(0x5_0000, HDR_SIZE as u32, false)]);
        }
        dev.process_tx();
        assert_eq!(tx.used(&mem).len(), QUEUE_BUDGET);
        assert_eq!(dev.queue_evts[TX].read().unwrap(), 1, "kicked itself");
    }
}
