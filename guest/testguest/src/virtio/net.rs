//! Polling virtio-net driver: one receive and one transmit queue, single-descriptor buffers
//! (12-byte header then the frame), no offloads.

use super::{dma_alloc, Buf, Device, Error, Queue, TYPE_NET};

/// VIRTIO_NET_F_MTU: the link MTU is in the config space.
const F_MTU: u64 = 1 << 3;
/// VIRTIO_NET_F_MAC: the MAC address is in the config space.
const F_MAC: u64 = 1 << 5;
/// Size of `virtio_net_hdr` with VERSION_1.
pub const HDR: usize = 12;
/// Bytes per buffer: header plus a full 1514-byte Ethernet frame, rounded up.
const BUF: usize = 2048;
/// Largest frame this driver sends or receives.
pub const MAX_FRAME: usize = BUF - HDR;
/// Entries per queue.
const QSIZE: u16 = 256;
/// Receive buffers re-posted before the device is kicked.
const RX_KICK_BATCH: u16 = 32;

/// A virtio-net device.
pub struct Net {
    rxq: Queue,
    txq: Queue,
    /// The device's MAC (config space).
    pub mac: [u8; 6],
    /// The link MTU the device reports (1500 when it reports none).
    pub mtu: u16,
    rx_bufs: &'static mut [u8],
    tx_bufs: &'static mut [u8],
    /// Buffer slot of each outstanding chain, by head id.
    rx_slot: [u16; QSIZE as usize],
    tx_slot: [u16; QSIZE as usize],
    /// Free transmit slots (a stack).
    tx_free: [u16; QSIZE as usize],
    tx_free_n: usize,
    /// Receive slot handed out by `recv` (re-posted on the next call), and re-posts not kicked.
    rx_held: Option<u16>,
    rx_unkicked: u16,
}

impl Net {
    /// Sets up the `nth` virtio-net device: negotiate, both queues, all receive buffers posted.
    pub fn open(line: &[u8], nth: usize) -> Option<Result<Net, Error>> {
        let dev = Device::find(line, TYPE_NET, nth)?;
        Some(Self::init(dev))
    }

    fn init(dev: Device) -> Result<Net, Error> {
        let feats = dev.negotiate(F_MAC | F_MTU)?;
        let rxq = Queue::new(&dev, 0, QSIZE)?;
        let txq = Queue::new(&dev, 1, QSIZE)?;
        let mut mac = [0u8; 6];
        if feats & F_MAC != 0 {
            for (i, b) in mac.iter_mut().enumerate() {
                *b = dev.config_u8(i as u64);
            }
        }
        let mtu = if feats & F_MTU != 0 {
            dev.config_u16(10)
        } else {
            1500
        };
        let n = usize::from(QSIZE) * BUF;
        let (Some(rx_bufs), Some(tx_bufs)) = (dma_alloc(n), dma_alloc(n)) else {
            return Err(Error::OutOfQueueMemory);
        };
        let mut net = Net {
            rxq,
            txq,
            mac,
            mtu,
            rx_bufs,
            tx_bufs,
            rx_slot: [0; QSIZE as usize],
            tx_slot: [0; QSIZE as usize],
            tx_free: [0; QSIZE as usize],
            tx_free_n: usize::from(QSIZE),
            rx_held: None,
            rx_unkicked: 0,
        };
        for i in 0..QSIZE {
            net.tx_free[usize::from(i)] = i;
        }
        dev.driver_ok();
        for slot in 0..QSIZE {
            net.post_rx(slot)?;
        }
        net.rxq.kick();
        net.rx_unkicked = 0;
        Ok(net)
    }

    fn post_rx(&mut self, slot: u16) -> Result<(), Error> {
        let off = usize::from(slot) * BUF;
        let buf = Buf::input(self.rx_bufs[off..].as_ptr() as u64, BUF as u32);
        let head = self.rxq.push(&[buf])?;
        self.rx_slot[usize::from(head)] = slot;
        self.rx_unkicked += 1;
        Ok(())
    }

    /// Reclaims transmit buffers the device has finished with; returns how many.
    pub fn reap_tx(&mut self) -> Result<usize, Error> {
        let mut n = 0;
        while let Some(u) = self.txq.poll_used() {
            let u = u?;
            self.tx_free[self.tx_free_n] = self.tx_slot[usize::from(u.id)];
            self.tx_free_n += 1;
            n += 1;
        }
        Ok(n)
    }

    /// Transmit buffers not yet completed by the device.
    pub fn tx_in_flight(&self) -> usize {
        usize::from(QSIZE) - self.tx_free_n
    }

    /// Queues `frame` (Ethernet header included) without kicking; `QueueFull` when every transmit
    /// buffer is in flight (reap, kick, retry). Frames over `MAX_FRAME` are cut.
    pub fn push_tx(&mut self, frame: &[u8]) -> Result<(), Error> {
        if self.tx_free_n == 0 {
            self.reap_tx()?;
            if self.tx_free_n == 0 {
                return Err(Error::QueueFull);
            }
        }
        let len = frame.len().min(MAX_FRAME);
        self.tx_free_n -= 1;
        let slot = self.tx_free[self.tx_free_n];
        let off = usize::from(slot) * BUF;
        let b = &mut self.tx_bufs[off..off + HDR + len];
        b[..HDR].fill(0);
        b[HDR..].copy_from_slice(&frame[..len]);
        let head = self
            .txq
            .push(&[Buf::out(b.as_ptr() as u64, (HDR + len) as u32)])?;
        self.tx_slot[usize::from(head)] = slot;
        Ok(())
    }

    /// Tells the device about queued frames.
    pub fn kick_tx(&self) {
        self.txq.kick();
    }

    /// Sends one frame and waits (up to `timeout_ms`) until the device has taken it.
    pub fn send(&mut self, frame: &[u8], timeout_ms: u64) -> Result<(), Error> {
        self.push_tx(frame)?;
        self.kick_tx();
        let start = crate::clock::rdtsc();
        let limit = crate::clock::ms_to_ticks(timeout_ms);
        while self.tx_in_flight() > 0 {
            self.reap_tx()?;
            if crate::clock::rdtsc().wrapping_sub(start) > limit {
                return Err(Error::Timeout);
            }
        }
        Ok(())
    }

    /// The next received frame (Ethernet header first), if one is waiting. The previous frame's
    /// buffer is given back to the device first, so the slice lives until the next call.
    pub fn recv(&mut self) -> Result<Option<&[u8]>, Error> {
        if let Some(slot) = self.rx_held.take() {
            self.post_rx(slot)?;
        }
        let used = match self.rxq.poll_used() {
            None => {
                self.flush_rx();
                return Ok(None);
            }
            Some(u) => u?,
        };
        if self.rx_unkicked >= RX_KICK_BATCH {
            self.flush_rx();
        }
        let slot = self.rx_slot[usize::from(used.id)];
        self.rx_held = Some(slot);
        let len = (used.len as usize).clamp(HDR, BUF);
        let off = usize::from(slot) * BUF;
        Ok(Some(&self.rx_bufs[off + HDR..off + len]))
    }

    /// Kicks the receive queue if buffers were re-posted since the last kick.
    fn flush_rx(&mut self) {
        if self.rx_unkicked > 0 {
            self.rxq.kick();
            self.rx_unkicked = 0;
        }
    }
}
