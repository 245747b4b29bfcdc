//! The virtio-net device: frames from the tap fill the receive queue's buffers, frames the guest
//! puts on the transmit queue go to the tap. Runs on the device event loop.

use super::config::{config_space, FEATURES};
use super::{MacAddr, Tap, HDR_LEN, MAX_BUFFER};
use crate::virtio::persist::{self, PersistError};
use crate::virtio::{read_config_bytes, ActivateError, Interrupt, VirtioDevice, TYPE_NET};
use crate::GuestRam;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::io::ErrorKind;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
/// Event-loop data tags.
const EV_TAP: u32 = 0;
const EV_RX: u32 = 1;
const EV_TX: u32 = 2;
/// Most frames moved per queue per event: a guest that keeps its queue full cannot starve the
/// other devices on the loop (the device kicks itself to continue).
const BUDGET: usize = 256;
/// Available-ring flag: the driver polls and wants no interrupts.
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Why a descriptor chain was refused (the chain is returned to the guest with length 0).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("a transmit chain has a device-writable descriptor")]
    WritableInTx,
    #[error("a receive chain has a device-readable descriptor")]
    ReadableInRx,
    #[error("descriptor {addr:#x}+{len} lies outside guest memory")]
    OutsideMemory { addr: u64, len: usize },
    #[error("a transmit chain is longer than {MAX_BUFFER} bytes")]
    TooLong,
    #[error("a transmit chain of {0} bytes is shorter than the virtio-net header")]
    TooShort(usize),
}

/// Counters, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Frames from the tap dropped because the guest's buffers were too small.
    pub rx_dropped: u64,
    /// Frames written to the tap.
    pub tx_frames: u64,
    /// Frames the tap refused.
    pub tx_dropped: u64,
    /// Malformed chains returned unused.
    pub bad_chains: u64,
}

struct Active {
    mem: GuestRam,
    queues: [Queue; 2],
    interrupt: Interrupt,
}

/// The network device.
pub struct Net {
    tap: Tap,
    config: [u8; 12],
    evts: [EventFd; 2],
    active: Option<Active>,
    /// The tap reported data and has not yet returned `WouldBlock` (it is watched edge-triggered).
    tap_readable: bool,
    /// A frame read from the tap that waits for a receive buffer (`rx_len` bytes, 0 = none).
    rx_frame: Vec<u8>,
    rx_len: usize,
    /// Writable descriptors of the receive chain being filled.
    rx_descs: Vec<(GuestAddress, usize)>,
    stats: NetStats,
    last_error: Option<ChainError>,
}

impl Net {
    /// A device over `tap` with MAC address `mac`; the guest is told the tap's MTU.
    pub fn new(tap: Tap, mac: MacAddr) -> std::io::Result<Self> {
        // 1500 when the tap will not say; any u16 MTU plus its Ethernet header fits `MAX_FRAME`.
        let mtu = tap.mtu().unwrap_or(1500).clamp(68, 65535) as u16;
        Ok(Self {
            tap,
            config: config_space(mac, mtu),
            evts: [EventFd::new(EFD_NONBLOCK)?, EventFd::new(EFD_NONBLOCK)?],
            active: None,
            tap_readable: true,
            rx_frame: vec![0; MAX_BUFFER],
            rx_len: 0,
            rx_descs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            stats: NetStats::default(),
            last_error: None,
        })
    }

    /// Clones of the queue eventfds (receive, transmit), for the transport and the ioeventfds.
    pub fn queue_evts(&self) -> std::io::Result<Vec<EventFd>> {
        self.evts.iter().map(EventFd::try_clone).collect()
    }

    /// The MAC address the guest is told.
    pub fn mac(&self) -> MacAddr {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.config[..6]);
        MacAddr(mac)
    }

    /// The counters so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// The last malformed chain seen.
    pub fn last_error(&self) -> Option<&ChainError> {
        self.last_error.as_ref()
    }

    /// The tap has frames to read (its event fired).
    pub fn tap_ready(&mut self) {
        self.tap_readable = true;
        self.process_rx();
    }

    /// Move frames from the tap into receive buffers until one side runs dry.
    pub fn process_rx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = 0;
        let mut more = false;
        let mut rechecked = false;
        // While buffers last, the guest need not kick the receive queue.
        let _ = a.queues[RX].disable_notification(&a.mem);
        for n in 0.. {
            if n == BUDGET {
                more = true;
                break;
            }
            if self.rx_len == 0 {
                if !self.tap_readable {
                    break;
                }
                match self.tap.read_frame(&mut self.rx_frame) {
                    Ok(len) if len > HDR_LEN => self.rx_len = len,
                    Ok(_) => continue, // a runt without a frame: nothing to deliver
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        // WouldBlock, or a broken tap: wait for the next edge.
                        self.tap_readable = false;
                        break;
                    }
                }
                // Offloads are off: no flags, no GSO; without MRG_RXBUF one buffer per frame.
                self.rx_frame[0] = 0;
                self.rx_frame[1] = 0;
                self.rx_frame[10..12].copy_from_slice(&1u16.to_le_bytes());
            }
            let q = &mut a.queues[RX];
            let Some(chain) = q.pop_descriptor_chain(&a.mem) else {
                // No buffers: the frame waits and the tap is not read until the guest kicks,
                // which it does only with notifications enabled (re-checked once for a race).
                if wait_for_kick(&a.mem, q, &mut rechecked) {
                    continue;
                }
                break;
            };
            rechecked = false;
            let head = chain.head_index();
            let frame = &self.rx_frame[..self.rx_len];
            match scatter(&a.mem, chain, frame, &mut self.rx_descs) {
                Ok(true) => {
                    if q.add_used(&a.mem, head, self.rx_len as u32).is_err() {
                        break;
                    }
                    used += 1;
                    self.stats.rx_frames += 1;
                    self.rx_len = 0;
                }
                Ok(false) => {
                    // Buffers too small for this frame: drop the frame, keep the buffers.
                    q.set_next_avail(q.next_avail().wrapping_sub(1));
                    self.stats.rx_dropped += 1;
                    self.rx_len = 0;
                }
                Err(e) => {
                    if q.add_used(&a.mem, head, 0).is_err() {
                        break;
                    }
                    used += 1;
                    self.stats.bad_chains += 1;
                    self.last_error = Some(e);
                }
            }
        }
        if used > 0 {
            notify(&a.mem, &mut a.queues[RX], &a.interrupt);
        }
        if more {
            let _ = self.evts[RX].write(1);
        }
    }

    /// Write every frame on the transmit queue to the tap.
    pub fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = 0;
        let mut more = false;
        let mut rechecked = false;
        // No kicks needed while the device is draining the queue anyway.
        let _ = a.queues[TX].disable_notification(&a.mem);
        // The frame being sent: our zeroed header, then the guest's buffers (no copy).
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(8);
        for n in 0.. {
            if n == BUDGET {
                more = true; // notifications stay off: the self-kick below continues
                break;
            }
            let q = &mut a.queues[TX];
            let Some(chain) = q.pop_descriptor_chain(&a.mem) else {
                if wait_for_kick(&a.mem, q, &mut rechecked) {
                    continue;
                }
                break;
            };
            rechecked = false;
            let head = chain.head_index();
            match gather(&a.mem, chain, &mut iov) {
                Ok(_) => {
                    // SAFETY: `gather` made every iovec but the first (our zeroed header) from
                    // guest RAM slices it checked, which stay mapped while `a.mem` lives.
                    match unsafe { self.tap.write_frame_iov(&iov) } {
                        Ok(_) => self.stats.tx_frames += 1,
                        Err(_) => self.stats.tx_dropped += 1,
                    }
                }
                Err(e) => {
                    self.stats.bad_chains += 1;
                    self.last_error = Some(e);
                }
            }
            if q.add_used(&a.mem, head, 0).is_err() {
                break; // the used ring is outside guest memory: the driver broke the queue
            }
            used += 1;
        }
        if used > 0 {
            notify(&a.mem, &mut a.queues[TX], &a.interrupt);
        }
        if more {
            let _ = self.evts[TX].write(1);
        }
    }
}

/// The queue looks empty: turn the driver's notifications back on. True when buffers arrived in
/// the meantime (notifications are then off again and the caller goes on); each empty look gets
/// one such re-check, so a ring whose index lies cannot keep the device spinning.
fn wait_for_kick(mem: &GuestRam, q: &mut Queue, rechecked: &mut bool) -> bool {
    let more = matches!(q.enable_notification(mem), Ok(true));
    if more && !*rechecked {
        let _ = q.disable_notification(mem);
        *rechecked = true;
        return true;
    }
    false
}

/// Interrupt the driver about new used buffers in `q`, unless it asked not to be
/// (VRING_AVAIL_F_NO_INTERRUPT in the available ring's flags; EVENT_IDX is not offered).
fn notify(mem: &GuestRam, q: &mut Queue, interrupt: &Interrupt) {
    let flags = mem
        .read_obj::<u16>(GuestAddress(q.avail_ring()))
        .map_or(0, u16::from_le);
    if flags & VRING_AVAIL_F_NO_INTERRUPT == 0 && q.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_used_queue();
    }
}

/// What a transmitted frame's virtio-net header becomes: offloads are off, so whatever the guest
/// put in flags and GSO fields is not passed to the host kernel.
static ZERO_HEADER: [u8; HDR_LEN] = [0; HDR_LEN];

/// Host iovecs for a transmit chain (header and frame, all device-readable), the header replaced
/// by `ZERO_HEADER`; returns the length, header included. Nothing is copied.
fn gather(
    mem: &GuestRam,
    chain: DescriptorChain<&GuestRam>,
    iov: &mut Vec<libc::iovec>,
) -> Result<usize, ChainError> {
    iov.clear();
    iov.push(libc::iovec {
        iov_base: ZERO_HEADER.as_ptr() as *mut libc::c_void,
        iov_len: HDR_LEN,
    });
    let mut total = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            return Err(ChainError::WritableInTx);
        }
        let len = desc.len() as usize;
        let end = total
            .checked_add(len)
            .filter(|&e| e <= MAX_BUFFER)
            .ok_or(ChainError::TooLong)?;
        let outside = || ChainError::OutsideMemory {
            addr: desc.addr().0,
            len,
        };
        // Every byte is checked to lie in guest RAM; those past the header (which
        // `ZERO_HEADER` stands in for) are sent.
        let mut at = total;
        for slice in vm_memory::GuestMemoryBackend::get_slices(mem, desc.addr(), len) {
            let slice = slice.map_err(|_| outside())?;
            let skip = HDR_LEN.saturating_sub(at).min(slice.len());
            at += slice.len();
            if skip < slice.len() {
                let part = slice
                    .subslice(skip, slice.len() - skip)
                    .map_err(|_| outside())?;
                iov.push(libc::iovec {
                    iov_base: part.ptr_guard().as_ptr() as *mut libc::c_void,
                    iov_len: part.len(),
                });
            }
        }
        total = end;
    }
    if total < HDR_LEN {
        return Err(ChainError::TooShort(total));
    }
    Ok(total)
}

/// Copy `frame` into a receive chain (all device-writable). `Ok(false)`: the chain is valid but
/// too small for this frame, and nothing was written.
fn scatter(
    mem: &GuestRam,
    chain: DescriptorChain<&GuestRam>,
    frame: &[u8],
    descs: &mut Vec<(GuestAddress, usize)>,
) -> Result<bool, ChainError> {
    descs.clear();
    let mut room = 0usize;
    for desc in chain {
        if !desc.is_write_only() {
            return Err(ChainError::ReadableInRx);
        }
        // Only the part a frame can use is checked (and later written).
        let len = (desc.len() as usize).min(MAX_BUFFER);
        if !mem.check_range(desc.addr(), len, Permissions::Write) {
            return Err(ChainError::OutsideMemory {
                addr: desc.addr().0,
                len,
            });
        }
        descs.push((desc.addr(), len));
        room = room.saturating_add(len);
    }
    if room < frame.len() {
        return Ok(false);
    }
    let mut off = 0;
    for &(addr, len) in descs.iter() {
        if off == frame.len() {
            break;
        }
        let n = len.min(frame.len() - off);
        mem.write_slice(&frame[off..off + n], addr)
            .map_err(|_| ChainError::OutsideMemory {
                addr: addr.0,
                len: n,
            })?;
        off += n;
    }
    Ok(true)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        FEATURES
    }
    fn ack_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn activate(
        &mut self,
        mem: GuestRam,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let queues: [Queue; 2] = queues
            .try_into()
            .map_err(|_| ActivateError::QueueCount { got, want: 2 })?;
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
        });
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
        self.rx_len = 0;
    }
    fn queues(&self) -> &[Queue] {
        self.active.as_ref().map_or(&[], |a| &a.queues[..])
    }
    fn save_state(&self) -> Vec<u8> {
        // The guest's driver keeps the MAC it read at probe time; a frame waiting for a receive
        // buffer is not saved (a lost frame is the network's normal weather).
        persist::encode(&self.mac().0)
    }
    fn restore_state(&mut self, state: &[u8]) -> Result<(), PersistError> {
        let saved: [u8; 6] = persist::decode(state)?;
        let now = self.mac();
        if saved != now.0 {
            return Err(PersistError::Mismatch(format!(
                "a network device had MAC {} when the VM was saved, now {now}: give the same mac=",
                MacAddr(saved)
            )));
        }
        Ok(())
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::with_data(
            &self.tap,
            EV_TAP,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        ));
        let _ = ops.add(Events::with_data(&self.evts[RX], EV_RX, EventSet::IN));
        let _ = ops.add(Events::with_data(&self.evts[TX], EV_TX, EventSet::IN));
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            EV_TAP => self.tap_ready(),
            EV_RX => {
                let _ = self.evts[RX].read();
                self.process_rx();
            }
            EV_TX => {
                let _ = self.evts[TX].read();
                self.process_tx();
                // Transmitting may have freed the guest to post receive buffers; nothing to do.
            }
            _ => {}
        }
    }
}
