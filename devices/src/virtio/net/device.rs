//! The virtio-net device: frames from the tap fill the receive queue's buffers, frames the guest
//! puts on the transmit queue go to the tap. Runs on the device event loop.

use super::config::{config_space, FEATURES};
use super::tx_ring::{TxRing, BATCH};
use super::{MacAddr, Tap, HDR_LEN, MAX_BUFFER};
use crate::virtio::persist::{DeviceState, NetState, PersistError};
use crate::virtio::{read_config_bytes, ActivateError, Interrupt, VirtioDevice, TYPE_NET};
use crate::GuestRam;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::io::ErrorKind;
use std::ops::Range;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress};
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
    /// Writable descriptors of the receive chain being filled.
    rx_descs: Vec<(GuestAddress, usize)>,
    /// Batched writes to the tap.
    tx_ring: TxRing,
    stats: NetStats,
    last_error: Option<ChainError>,
}

impl Net {
    /// A device over `tap` with MAC address `mac`; the guest is told the tap's MTU.
    pub fn new(tap: Tap, mac: MacAddr) -> std::io::Result<Self> {
        // 1500 when the tap will not say; any u16 MTU plus its Ethernet header fits `MAX_FRAME`.
        let mtu = tap.mtu().unwrap_or(1500).clamp(68, 65535) as u16;
        let tx_ring = TxRing::new(&tap);
        Ok(Self {
            tap,
            config: config_space(mac, mtu),
            evts: [EventFd::new(EFD_NONBLOCK)?, EventFd::new(EFD_NONBLOCK)?],
            active: None,
            tap_readable: true,
            rx_descs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            tx_ring,
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

    /// How frames reach the tap (tests of both ways).
    #[cfg(test)]
    pub(crate) fn tx_ring_mut(&mut self) -> &mut TxRing {
        &mut self.tx_ring
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

    /// Read frames from the tap straight into receive buffers until one side runs dry. A frame is
    /// only read once a buffer is there for it; until then frames wait in the tap's own queue.
    pub fn process_rx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = 0;
        let mut more = false;
        let mut rechecked = false;
        // While buffers last, the guest need not kick the receive queue.
        let _ = a.queues[RX].disable_notification(&a.mem);
        // The guest's buffers, then one spare byte: a frame that reaches it did not fit.
        let mut spill = 0u8;
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(8);
        for n in 0.. {
            if n == BUDGET {
                more = true;
                break;
            }
            if !self.tap_readable {
                break;
            }
            let q = &mut a.queues[RX];
            let Some(chain) = q.pop_descriptor_chain(&a.mem) else {
                // No buffers: the tap is not read until the guest kicks, which it does only
                // with notifications enabled (re-checked once for a race).
                if wait_for_kick(&a.mem, q, &mut rechecked) {
                    continue;
                }
                break;
            };
            rechecked = false;
            let head = chain.head_index();
            let room = match writable_iovecs(&a.mem, chain, &mut self.rx_descs, &mut iov) {
                Ok(room) => room,
                Err(e) => {
                    if q.add_used(&a.mem, head, 0).is_err() {
                        break;
                    }
                    used += 1;
                    self.stats.bad_chains += 1;
                    self.last_error = Some(e);
                    continue;
                }
            };
            iov.push(libc::iovec {
                iov_base: (&mut spill as *mut u8).cast(),
                iov_len: 1,
            });
            // SAFETY: every iovec but the last (`spill`, alive across the call) is a guest RAM
            // slice `writable_iovecs` checked, mapped while `a.mem` lives; readv only writes them.
            let read = unsafe { self.tap.read_frame_iov(&iov) };
            match read {
                Ok(len) if len > HDR_LEN && len <= room => {
                    finish_frame(&a.mem, &self.rx_descs, len);
                    if q.add_used(&a.mem, head, len as u32).is_err() {
                        break;
                    }
                    used += 1;
                    self.stats.rx_frames += 1;
                }
                Ok(len) => {
                    // Larger than the buffers (dropped: the tap hands out each frame once), or a
                    // runt without a frame: the buffers stay the guest's for the next one.
                    q.set_next_avail(q.next_avail().wrapping_sub(1));
                    if len > room {
                        self.stats.rx_dropped += 1;
                    }
                    if len == 0 {
                        // End of file (a packet socket whose peer is gone): nothing will come.
                        self.tap_readable = false;
                        break;
                    }
                }
                Err(e) => {
                    q.set_next_avail(q.next_avail().wrapping_sub(1));
                    if e.kind() != ErrorKind::Interrupted {
                        // WouldBlock, or a broken tap: wait for the next edge.
                        self.tap_readable = false;
                        break;
                    }
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

    /// Write every frame on the transmit queue to the tap, `BATCH` frames per system call.
    pub fn process_tx(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut used = 0;
        let mut more = false;
        let mut rechecked = false;
        // No kicks needed while the device is draining the queue anyway.
        let _ = a.queues[TX].disable_notification(&a.mem);
        let mut batch = TxBatch::default();
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
            let start = batch.iov.len();
            match gather(&a.mem, chain, &mut batch.iov) {
                Ok(_) => {
                    batch.frames.push(start..batch.iov.len());
                    batch.heads.push(head);
                }
                Err(e) => {
                    batch.iov.truncate(start);
                    batch.heads.push(head);
                    self.stats.bad_chains += 1;
                    self.last_error = Some(e);
                }
            }
            if batch.heads.len() == BATCH {
                match batch.flush(&mut self.tx_ring, &mut self.tap, a, &mut self.stats) {
                    Some(k) => used += k,
                    None => break, // the used ring is outside guest memory: the driver broke it
                }
            }
        }
        if let Some(k) = batch.flush(&mut self.tx_ring, &mut self.tap, a, &mut self.stats) {
            used += k;
        }
        if used > 0 {
            notify(&a.mem, &mut a.queues[TX], &a.interrupt);
        }
        if more {
            let _ = self.evts[TX].write(1);
        }
    }
}

/// Transmit chains taken off the queue and not yet written: the frames' iovecs back to back (our
/// zeroed header, then the guest's buffers: no copy), and every chain's head in queue order
/// (a malformed chain has no frame and is returned unused).
#[derive(Default)]
struct TxBatch {
    iov: Vec<libc::iovec>,
    frames: Vec<Range<usize>>,
    heads: Vec<u16>,
    sent: Vec<bool>,
}

impl TxBatch {
    /// Write the frames, then return every chain to the driver, in order; how many were
    /// returned (None: the used ring is broken).
    fn flush(
        &mut self,
        ring: &mut TxRing,
        tap: &mut Tap,
        a: &mut Active,
        stats: &mut NetStats,
    ) -> Option<usize> {
        // SAFETY: `gather` made every iovec but the headers (`ZERO_HEADER`, static) from guest
        // RAM slices it checked, which stay mapped while `a.mem` lives; the chains are only
        // returned to the driver below, after every write completed.
        unsafe { ring.write(tap, &self.iov, &self.frames, &mut self.sent) };
        let ok = self.sent.iter().filter(|&&s| s).count() as u64;
        stats.tx_frames += ok;
        stats.tx_dropped += self.sent.len() as u64 - ok;
        let mut used = 0;
        let mut broken = false;
        for &head in &self.heads {
            if a.queues[TX].add_used(&a.mem, head, 0).is_err() {
                broken = true;
                break;
            }
            used += 1;
        }
        self.iov.clear();
        self.frames.clear();
        self.heads.clear();
        (!broken).then_some(used)
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

/// Append the host iovecs of a transmit chain (header and frame, all device-readable) to `iov`,
/// the header replaced by `ZERO_HEADER`; returns the length, header included. Nothing is copied.
/// On an error some iovecs may have been appended.
fn gather(
    mem: &GuestRam,
    chain: DescriptorChain<&GuestRam>,
    iov: &mut Vec<libc::iovec>,
) -> Result<usize, ChainError> {
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

/// Host iovecs for a receive chain (all device-writable), at most `MAX_BUFFER` bytes of it, and
/// the descriptors they came from; returns the room, in bytes.
fn writable_iovecs(
    mem: &GuestRam,
    chain: DescriptorChain<&GuestRam>,
    descs: &mut Vec<(GuestAddress, usize)>,
    iov: &mut Vec<libc::iovec>,
) -> Result<usize, ChainError> {
    descs.clear();
    iov.clear();
    let mut room = 0usize;
    for desc in chain {
        if !desc.is_write_only() {
            return Err(ChainError::ReadableInRx);
        }
        // Only the part a frame can use is checked (and later written).
        let len = (desc.len() as usize).min(MAX_BUFFER - room);
        let outside = || ChainError::OutsideMemory {
            addr: desc.addr().0,
            len,
        };
        if len == 0 {
            continue;
        }
        for slice in vm_memory::GuestMemoryBackend::get_slices(mem, desc.addr(), len) {
            let slice = slice.map_err(|_| outside())?;
            iov.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
        descs.push((desc.addr(), len));
        room += len;
    }
    Ok(room)
}

/// The virtio-net header a received frame gets: offloads are off, so no flags and no GSO (the
/// tap's checksum hints are not passed on), and without MRG_RXBUF one buffer per frame.
const RX_HEADER: [u8; HDR_LEN] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

/// A frame of `len` bytes (header included) was read into the chain `descs`: put our header over
/// the tap's and record the pages written in the memory's dirty bitmap (the read bypassed it).
fn finish_frame(mem: &GuestRam, descs: &[(GuestAddress, usize)], len: usize) {
    let mut off = 0;
    for &(addr, dlen) in descs {
        if off == len {
            break;
        }
        let n = dlen.min(len - off);
        if off < HDR_LEN {
            let h = n.min(HDR_LEN - off);
            // Checked writable when the chain was taken; a failure leaves the tap's header.
            let _ = mem.write_slice(&RX_HEADER[off..off + h], addr);
        }
        for slice in vm_memory::GuestMemoryBackend::get_slices(mem, addr, n).flatten() {
            slice.bitmap().mark_dirty(0, slice.len());
        }
        off += n;
    }
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
    }
    fn queues(&self) -> &[Queue] {
        self.active.as_ref().map_or(&[], |a| &a.queues[..])
    }
    fn save_state(&self) -> DeviceState {
        // The guest's driver keeps the MAC it read at probe time; frames waiting in the tap stay
        // there (a lost frame is the network's normal weather).
        DeviceState::Net(NetState { mac: self.mac().0 })
    }
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), PersistError> {
        let DeviceState::Net(saved) = state else {
            return Err(PersistError::WrongState {
                device_type: self.device_type(),
            });
        };
        let saved = saved.mac;
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
