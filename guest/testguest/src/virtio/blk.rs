//! Polling virtio-blk driver: read, write, flush, get-id, several requests in flight.

use super::{dma_alloc, Buf, Device, Error, Queue, TYPE_BLOCK};

/// Sector size of the virtio-blk protocol.
pub const SECTOR: u64 = 512;

// Feature bits.
const F_SIZE_MAX: u64 = 1 << 1;
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;

// Request types.
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

/// Request completed.
pub const S_OK: u8 = 0;
/// The device failed the request (I/O error, out of range, read-only, ...).
pub const S_IOERR: u8 = 1;
/// The device does not support the request.
pub const S_UNSUPP: u8 = 2;

/// Queue entries this driver uses.
const QUEUE_SIZE: u16 = 256;
/// Most requests in flight.
pub const MAX_IN_FLIGHT: usize = 64;
/// Most data segments per request this driver builds.
const MAX_SEGS: usize = 32;
/// Bytes of DMA memory per request slot: header (16) then status (1).
const SLOT_BYTES: usize = 32;
/// Bytes of a device id string.
pub const ID_BYTES: usize = 20;

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Flush,
    GetId,
}

/// Why a request could not be made or completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkError {
    /// Transport or queue trouble.
    Virtio(Error),
    /// The device answered with this non-OK status.
    Status(u8),
    /// All request slots are in use.
    Busy,
    /// The buffer needs more segments than the device (or driver) allows.
    TooLarge,
    /// The device reported completion of an unknown request.
    Unknown,
}

impl From<Error> for BlkError {
    fn from(e: Error) -> Self {
        BlkError::Virtio(e)
    }
}

/// A virtio-blk disk.
pub struct Blk {
    dev: Device,
    q: Queue,
    /// Size in 512-byte sectors (config `capacity`).
    pub capacity: u64,
    /// VIRTIO_BLK_F_RO was offered: the disk is read-only.
    pub read_only: bool,
    /// VIRTIO_BLK_F_FLUSH was negotiated.
    pub has_flush: bool,
    /// Largest segment (0: no limit given).
    pub size_max: u32,
    /// Most data segments per request (0: no limit given).
    pub seg_max: u32,
    slots: &'static mut [u8],
    free_slots: [u8; MAX_IN_FLIGHT],
    n_free: usize,
    slot_of_head: [u8; QUEUE_SIZE as usize],
}

impl Blk {
    /// Finds and initialises the `nth` virtio-blk device named by the command line `line`.
    pub fn open(line: &[u8], nth: usize) -> Option<Result<Blk, BlkError>> {
        let dev = Device::find(line, TYPE_BLOCK, nth)?;
        Some(Blk::init(dev))
    }

    fn init(dev: Device) -> Result<Blk, BlkError> {
        let offered = dev.device_features();
        let feats = dev.negotiate(F_SIZE_MAX | F_SEG_MAX | F_RO | F_FLUSH)?;
        let size = QUEUE_SIZE.min(max_queue(&dev));
        let q = Queue::new(&dev, 0, size)?;
        dev.driver_ok();
        let slots = dma_alloc(MAX_IN_FLIGHT * SLOT_BYTES).ok_or(Error::OutOfQueueMemory)?;
        let mut free_slots = [0u8; MAX_IN_FLIGHT];
        for (i, s) in free_slots.iter_mut().enumerate() {
            *s = i as u8;
        }
        Ok(Blk {
            capacity: dev.config_u64(0),
            read_only: offered & F_RO != 0,
            has_flush: feats & F_FLUSH != 0,
            size_max: if feats & F_SIZE_MAX != 0 {
                dev.config_u32(8)
            } else {
                0
            },
            seg_max: if feats & F_SEG_MAX != 0 {
                dev.config_u32(12)
            } else {
                0
            },
            dev,
            q,
            slots,
            free_slots,
            n_free: MAX_IN_FLIGHT,
            slot_of_head: [0; QUEUE_SIZE as usize],
        })
    }

    /// The underlying transport.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        MAX_IN_FLIGHT - self.n_free
    }

    /// Starts a request on `len` bytes at guest address `addr` (ignored for flush); returns a tag.
    pub fn start(&mut self, kind: Kind, sector: u64, addr: u64, len: u32) -> Result<u16, BlkError> {
        self.start_raw(kind, sector, addr, len, true)
    }

    /// Like `start`, but with `kick` false the device is not notified (call `kick` later).
    pub fn start_raw(
        &mut self,
        kind: Kind,
        sector: u64,
        addr: u64,
        len: u32,
        kick: bool,
    ) -> Result<u16, BlkError> {
        if self.n_free == 0 {
            return Err(BlkError::Busy);
        }
        let (ty, device_writes) = match kind {
            Kind::Read => (T_IN, true),
            Kind::Write => (T_OUT, false),
            Kind::Flush => (T_FLUSH, false),
            Kind::GetId => (T_GET_ID, true),
        };
        let mut bufs = [Buf::out(0, 0); MAX_SEGS + 2];
        let mut n = 1;
        if kind != Kind::Flush {
            let seg = if self.size_max == 0 {
                u32::MAX
            } else {
                self.size_max
            };
            let max_segs = if self.seg_max == 0 {
                MAX_SEGS
            } else {
                MAX_SEGS.min(self.seg_max as usize)
            };
            let mut off = 0u32;
            while off < len {
                if n - 1 == max_segs {
                    return Err(BlkError::TooLarge);
                }
                let l = seg.min(len - off);
                bufs[n] = Buf {
                    addr: addr + u64::from(off),
                    len: l,
                    device_writes,
                };
                n += 1;
                off += l;
            }
        }
        self.n_free -= 1;
        let slot = self.free_slots[self.n_free];
        let base = usize::from(slot) * SLOT_BYTES;
        let hdr = &mut self.slots[base..base + SLOT_BYTES];
        hdr[0..4].copy_from_slice(&ty.to_le_bytes());
        hdr[4..8].copy_from_slice(&0u32.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        hdr[16] = 0xff;
        let hdr_addr = hdr.as_ptr() as u64;
        bufs[0] = Buf::out(hdr_addr, 16);
        bufs[n] = Buf::input(hdr_addr + 16, 1);
        n += 1;
        let pushed = self.q.push(&bufs[..n]);
        let head = match pushed {
            Ok(h) => h,
            Err(e) => {
                self.free_slots[self.n_free] = slot;
                self.n_free += 1;
                return Err(e.into());
            }
        };
        self.slot_of_head[usize::from(head)] = slot;
        if kick {
            self.q.kick();
        }
        Ok(head)
    }

    /// Notifies the device of requests started with `kick` false.
    pub fn kick(&self) {
        self.q.kick();
    }

    /// The next completed request, if any: its tag and status (`S_OK`, `S_IOERR`, ...).
    pub fn complete(&mut self) -> Option<Result<(u16, u8), BlkError>> {
        let used = match self.q.poll_used()? {
            Ok(u) => u,
            Err(e) => return Some(Err(e.into())),
        };
        let slot = self.slot_of_head[usize::from(used.id)];
        let status = self.slots[usize::from(slot) * SLOT_BYTES + 16];
        self.free_slots[self.n_free] = slot;
        self.n_free += 1;
        Some(Ok((used.id, status)))
    }

    /// Runs one request to completion (nothing else may be in flight).
    pub fn run(&mut self, kind: Kind, sector: u64, addr: u64, len: u32) -> Result<(), BlkError> {
        let tag = self.start(kind, sector, addr, len)?;
        let used = self.q.wait_used(5000)?;
        let slot = self.slot_of_head[usize::from(used.id)];
        let status = self.slots[usize::from(slot) * SLOT_BYTES + 16];
        self.free_slots[self.n_free] = slot;
        self.n_free += 1;
        if used.id != tag {
            return Err(BlkError::Unknown);
        }
        if status != S_OK {
            return Err(BlkError::Status(status));
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes from `sector`.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        self.run(
            Kind::Read,
            sector,
            buf.as_mut_ptr() as u64,
            buf.len() as u32,
        )
    }

    /// Writes `buf` at `sector`.
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlkError> {
        self.run(Kind::Write, sector, buf.as_ptr() as u64, buf.len() as u32)
    }

    /// Flushes the device's write cache.
    pub fn flush(&mut self) -> Result<(), BlkError> {
        self.run(Kind::Flush, 0, 0, 0)
    }

    /// Reads the device id (NUL-padded, up to 20 bytes) into `buf`.
    pub fn get_id(&mut self, buf: &mut [u8; ID_BYTES]) -> Result<(), BlkError> {
        self.run(Kind::GetId, 0, buf.as_mut_ptr() as u64, ID_BYTES as u32)
    }
}

/// QueueNumMax of queue 0, rounded down to a power of two.
fn max_queue(dev: &Device) -> u16 {
    let m = dev.queue_num_max(0).min(u32::from(QUEUE_SIZE)) as u16;
    if m == 0 {
        return 0;
    }
    1 << (15 - m.leading_zeros())
}
