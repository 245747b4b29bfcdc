//! Polling virtio-mmio (version 2) driver core: device discovery, feature negotiation, split queues.
//!
//! Discovery: `virtio_mmio.device=<size>@<base>:<irq>` words on the command line (plainvm always
//! adds them; QEMU microvm too with `acpi=off`); when there are none, QEMU microvm's fixed windows
//! at 0xfeb00000 + n*0x200 are probed. The guest is identity-mapped, so a virtual address is the
//! guest-physical address the device sees. Nothing here uses interrupts: the driver asks the device
//! not to interrupt (VIRTQ_AVAIL_F_NO_INTERRUPT) and polls the used ring.
//!
//! Typical use:
//! ```ignore
//! let dev = Device::find(line, TYPE_BLOCK, 0)?;
//! let feats = dev.negotiate(WANTED)?;          // reset, ACK, DRIVER, features, FEATURES_OK
//! let mut q = Queue::new(&dev, 0, 128)?;      // set up queue 0 in guest memory
//! dev.driver_ok();
//! let id = q.submit(&[Buf::out(addr, len), Buf::input(addr2, len2)])?;
//! let used = q.wait_used(1000)?;              // Used { id, len }
//! ```

// A driver API for several workloads (blk, net, ...): not every build uses every call.
#![allow(dead_code)]

pub mod blk;
pub mod net;
pub mod spinner;

use core::sync::atomic::{fence, AtomicUsize, Ordering};

use crate::clock;

/// Device type of virtio-net.
pub const TYPE_NET: u32 = 1;
/// Device type of virtio-blk.
pub const TYPE_BLOCK: u32 = 2;
/// Device type of virtio-rng.
pub const TYPE_RNG: u32 = 4;
/// Device type of virtio-balloon.
pub const TYPE_BALLOON: u32 = 5;
/// Device type of virtio-vsock.
pub const TYPE_VSOCK: u32 = 19;

/// VIRTIO_F_VERSION_1: always negotiated (this driver speaks only virtio 1.x).
pub const F_VERSION_1: u64 = 1 << 32;

/// Largest queue this driver sets up (its rings fit in one page each).
pub const MAX_QUEUE_SIZE: u16 = 256;

// Register offsets of the virtio-mmio transport, version 2.
const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const CONFIG: u64 = 0x100;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"

// Device status bits.
const S_ACKNOWLEDGE: u32 = 1;
const S_DRIVER: u32 = 2;
const S_DRIVER_OK: u32 = 4;
const S_FEATURES_OK: u32 = 8;
const S_FAILED: u32 = 128;

// Descriptor and ring flags.
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// QEMU microvm's virtio-mmio windows (probed only when the command line names none).
const MICROVM_BASE: u64 = 0xfeb0_0000;
const MICROVM_STRIDE: u64 = 0x200;
const MICROVM_COUNT: u64 = 24;

/// What went wrong talking to a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The device does not offer VIRTIO_F_VERSION_1 (a legacy device).
    NoVersion1,
    /// The device cleared FEATURES_OK: it refused the feature set.
    FeaturesRefused,
    /// The queue does not exist (QueueNumMax 0) or is already in use.
    QueueUnavailable,
    /// The requested queue size is 0, not a power of two, or too big for device or driver.
    BadQueueSize,
    /// No more queue memory in the static pool.
    OutOfQueueMemory,
    /// Not enough free descriptors for the chain (or an empty chain).
    QueueFull,
    /// The device did not complete a request in time.
    Timeout,
    /// The device returned a used-ring id that is not an outstanding chain head.
    BadUsedId,
}

impl Error {
    /// A short name for serial output.
    pub fn name(self) -> &'static str {
        match self {
            Error::NoVersion1 => "no-version-1",
            Error::FeaturesRefused => "features-refused",
            Error::QueueUnavailable => "queue-unavailable",
            Error::BadQueueSize => "bad-queue-size",
            Error::OutOfQueueMemory => "out-of-queue-memory",
            Error::QueueFull => "queue-full",
            Error::Timeout => "timeout",
            Error::BadUsedId => "bad-used-id",
        }
    }
}

/// One virtio-mmio device (its register window).
#[derive(Clone, Copy, Debug)]
pub struct Device {
    base: u64,
    /// Its IRQ from the command line (0 when probed).
    pub irq: u32,
}

impl Device {
    /// The `nth` (from 0) device of type `device_type`, searching the command line `line` first.
    pub fn find(line: &[u8], device_type: u32, nth: usize) -> Option<Device> {
        let mut seen = 0;
        let mut any_on_cmdline = false;
        for (base, irq) in cmdline_windows(line) {
            any_on_cmdline = true;
            let dev = Device { base, irq };
            if dev.is_virtio() && dev.device_id() == device_type {
                if seen == nth {
                    return Some(dev);
                }
                seen += 1;
            }
        }
        if any_on_cmdline {
            return None;
        }
        for n in 0..MICROVM_COUNT {
            let dev = Device {
                base: MICROVM_BASE + n * MICROVM_STRIDE,
                irq: 0,
            };
            if !dev.is_virtio() {
                break;
            }
            if dev.device_id() == device_type {
                if seen == nth {
                    return Some(dev);
                }
                seen += 1;
            }
        }
        None
    }

    /// Guest-physical address of the register window.
    pub fn base(&self) -> u64 {
        self.base
    }

    fn is_virtio(&self) -> bool {
        self.read32(MAGIC) == MAGIC_VALUE && self.read32(VERSION) == 2
    }

    /// The device type (0: an empty transport).
    pub fn device_id(&self) -> u32 {
        self.read32(DEVICE_ID)
    }

    fn read32(&self, off: u64) -> u32 {
        // SAFETY: `base` is a virtio-mmio window (from the command line or QEMU's fixed layout);
        // the identity map covers it and the access is an aligned 32-bit MMIO read.
        unsafe { ((self.base + off) as *const u32).read_volatile() }
    }

    fn write32(&self, off: u64, value: u32) {
        // SAFETY: as in `read32`, for an aligned 32-bit MMIO write.
        unsafe { ((self.base + off) as *mut u32).write_volatile(value) }
    }

    /// Resets the device and negotiates `wanted & offered` plus VERSION_1; returns that set.
    pub fn negotiate(&self, wanted: u64) -> Result<u64, Error> {
        self.write32(STATUS, 0);
        self.write32(STATUS, S_ACKNOWLEDGE);
        self.write32(STATUS, S_ACKNOWLEDGE | S_DRIVER);
        let offered = self.device_features();
        if offered & F_VERSION_1 == 0 {
            self.write32(STATUS, S_FAILED);
            return Err(Error::NoVersion1);
        }
        let accepted = (wanted | F_VERSION_1) & offered;
        self.write32(DRIVER_FEATURES_SEL, 0);
        self.write32(DRIVER_FEATURES, accepted as u32);
        self.write32(DRIVER_FEATURES_SEL, 1);
        self.write32(DRIVER_FEATURES, (accepted >> 32) as u32);
        self.write32(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        if self.read32(STATUS) & S_FEATURES_OK == 0 {
            self.write32(STATUS, S_FAILED);
            return Err(Error::FeaturesRefused);
        }
        Ok(accepted)
    }

    /// All 64 feature bits the device offers.
    pub fn device_features(&self) -> u64 {
        self.write32(DEVICE_FEATURES_SEL, 0);
        let lo = self.read32(DEVICE_FEATURES);
        self.write32(DEVICE_FEATURES_SEL, 1);
        let hi = self.read32(DEVICE_FEATURES);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// Sets DRIVER_OK: the device may now use its queues.
    pub fn driver_ok(&self) {
        self.write32(
            STATUS,
            S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
    }

    /// The device status register (bit 0x40, DEVICE_NEEDS_RESET, means the device gave up).
    pub fn status(&self) -> u32 {
        self.read32(STATUS)
    }

    /// Resets the device (it forgets its queues).
    pub fn reset(&self) {
        self.write32(STATUS, 0);
    }

    /// Reads a byte of the device-specific config space.
    pub fn config_u8(&self, off: u64) -> u8 {
        // SAFETY: as in `read32`, for a byte of the config area of the window.
        unsafe { ((self.base + CONFIG + off) as *const u8).read_volatile() }
    }

    /// Reads a little-endian u16 of the config space (`off` 2-aligned).
    pub fn config_u16(&self, off: u64) -> u16 {
        // SAFETY: as in `read32`, for an aligned 16-bit read of the config area.
        unsafe { ((self.base + CONFIG + off) as *const u16).read_volatile() }
    }

    /// Reads a little-endian u32 of the config space (`off` 4-aligned).
    pub fn config_u32(&self, off: u64) -> u32 {
        self.read32(CONFIG + off)
    }

    /// Reads a little-endian u64 of the config space as two 32-bit reads (`off` 4-aligned).
    pub fn config_u64(&self, off: u64) -> u64 {
        let lo = self.config_u32(off);
        let hi = self.config_u32(off + 4);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// QueueNumMax of queue `index` (0: no such queue).
    pub fn queue_num_max(&self, index: u16) -> u32 {
        self.write32(QUEUE_SEL, u32::from(index));
        self.read32(QUEUE_NUM_MAX)
    }

    /// Kicks queue `index`.
    pub fn notify(&self, index: u16) {
        self.write32(QUEUE_NOTIFY, u32::from(index));
    }
}

/// Iterates over the `(base, irq)` of each `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` word.
pub fn cmdline_windows(line: &[u8]) -> impl Iterator<Item = (u64, u32)> + '_ {
    line.split(|&c| c == b' ' || c == b'\t' || c == b'\n')
        .filter_map(|w| w.strip_prefix(b"virtio_mmio.device="))
        .filter_map(|spec| {
            let at = spec.iter().position(|&c| c == b'@')?;
            let rest = &spec[at + 1..];
            let colon = rest.iter().position(|&c| c == b':')?;
            let base = parse_num(&rest[..colon])?;
            let irq_part = &rest[colon + 1..];
            let irq_end = irq_part
                .iter()
                .position(|&c| c == b':')
                .unwrap_or(irq_part.len());
            let irq = parse_num(&irq_part[..irq_end])?;
            Some((base, u32::try_from(irq).ok()?))
        })
}

/// Parses a decimal or `0x` hexadecimal number.
fn parse_num(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix(b"0x").or_else(|| s.strip_prefix(b"0X")) {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &c| {
        let d = (c as char).to_digit(radix)?;
        acc.checked_mul(u64::from(radix))?.checked_add(u64::from(d))
    })
}

/// One element of a chain: a guest buffer the device reads (`out`) or writes (`input`).
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    /// Guest-physical (= virtual) address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// True if the device writes it.
    pub device_writes: bool,
}

impl Buf {
    /// A buffer the device reads (driver -> device).
    pub fn out(addr: u64, len: u32) -> Buf {
        Buf {
            addr,
            len,
            device_writes: false,
        }
    }

    /// A buffer the device writes (device -> driver).
    pub fn input(addr: u64, len: u32) -> Buf {
        Buf {
            addr,
            len,
            device_writes: true,
        }
    }

    /// A buffer covering a slice the device reads.
    pub fn out_slice(s: &[u8]) -> Buf {
        Buf::out(s.as_ptr() as u64, s.len() as u32)
    }

    /// A buffer covering a slice the device writes.
    pub fn input_slice(s: &mut [u8]) -> Buf {
        Buf::input(s.as_mut_ptr() as u64, s.len() as u32)
    }
}

/// A completed chain: its head id and the bytes the device wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    pub id: u16,
    pub len: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// Memory of one queue: descriptor table, available ring, used ring, a page each.
#[repr(C, align(4096))]
struct QueueMem {
    desc: [Desc; MAX_QUEUE_SIZE as usize],
    avail: [u16; 2048],
    used: [u32; 1024],
}

/// Queues the pool has memory for.
const QUEUE_POOL: usize = 8;

/// Static pool of queue memory (in .bss, identity-mapped).
struct Pool(core::cell::UnsafeCell<[QueueMem; QUEUE_POOL]>);
// SAFETY: each slot is handed out once (atomic counter) and then used by one `Queue` only.
unsafe impl Sync for Pool {}

static QUEUES: Pool = Pool(core::cell::UnsafeCell::new(
    [const {
        QueueMem {
            desc: [Desc {
                addr: 0,
                len: 0,
                flags: 0,
                next: 0,
            }; MAX_QUEUE_SIZE as usize],
            avail: [0; 2048],
            used: [0; 1024],
        }
    }; QUEUE_POOL],
));
static NEXT_QUEUE: AtomicUsize = AtomicUsize::new(0);

/// A split virtqueue driven by polling.
pub struct Queue {
    dev: Device,
    index: u16,
    size: u16,
    mem: *mut QueueMem,
    /// Next free descriptor (free descriptors are linked through `next`).
    free_head: u16,
    num_free: u16,
    /// Our copy of avail->idx.
    avail_idx: u16,
    /// Used-ring entries consumed so far.
    last_used: u16,
    /// Descriptors in the chain headed by each id (0: not outstanding).
    chain_len: [u16; MAX_QUEUE_SIZE as usize],
}

impl Queue {
    /// Sets up queue `index` of `dev` with `size` entries (a power of two, at most the device's
    /// QueueNumMax and `MAX_QUEUE_SIZE`). Call between `negotiate` and `driver_ok`.
    pub fn new(dev: &Device, index: u16, size: u16) -> Result<Queue, Error> {
        dev.write32(QUEUE_SEL, u32::from(index));
        if dev.read32(QUEUE_READY) != 0 {
            return Err(Error::QueueUnavailable);
        }
        let max = dev.read32(QUEUE_NUM_MAX);
        if max == 0 {
            return Err(Error::QueueUnavailable);
        }
        if size == 0 || !size.is_power_of_two() || u32::from(size) > max || size > MAX_QUEUE_SIZE {
            return Err(Error::BadQueueSize);
        }
        let slot = NEXT_QUEUE.fetch_add(1, Ordering::Relaxed);
        if slot >= QUEUE_POOL {
            return Err(Error::OutOfQueueMemory);
        }
        // SAFETY: slot < QUEUE_POOL, and the counter hands each slot out exactly once.
        let mem = unsafe { (QUEUES.0.get() as *mut QueueMem).add(slot) };
        // SAFETY: `mem` is this queue's own slot; zero it (a previous boot's contents do not
        // matter, but rings must start empty).
        unsafe { core::ptr::write_bytes(mem, 0, 1) };
        let mut q = Queue {
            dev: *dev,
            index,
            size,
            mem,
            free_head: 0,
            num_free: size,
            avail_idx: 0,
            last_used: 0,
            chain_len: [0; MAX_QUEUE_SIZE as usize],
        };
        for i in 0..size {
            q.desc_mut(i).next = (i + 1) % size;
        }
        q.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT);

        // SAFETY: only addresses are taken; the fields live in the static pool.
        let (desc, avail, used) = unsafe {
            (
                core::ptr::addr_of!((*mem).desc) as u64,
                core::ptr::addr_of!((*mem).avail) as u64,
                core::ptr::addr_of!((*mem).used) as u64,
            )
        };
        dev.write32(QUEUE_NUM, u32::from(size));
        dev.write32(QUEUE_DESC_LOW, desc as u32);
        dev.write32(QUEUE_DESC_HIGH, (desc >> 32) as u32);
        dev.write32(QUEUE_DRIVER_LOW, avail as u32);
        dev.write32(QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
        dev.write32(QUEUE_DEVICE_LOW, used as u32);
        dev.write32(QUEUE_DEVICE_HIGH, (used >> 32) as u32);
        dev.write32(QUEUE_READY, 1);
        Ok(q)
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    fn desc_mut(&mut self, i: u16) -> &mut Desc {
        // SAFETY: `mem` is this queue's slot; i < size <= MAX_QUEUE_SIZE. The device only reads
        // descriptors of chains we made available, and we never touch those until they are used.
        unsafe { &mut (*self.mem).desc[usize::from(i)] }
    }

    fn avail_ptr(&self, word: usize) -> *mut u16 {
        // SAFETY: word < 2 + MAX_QUEUE_SIZE + 1 < 2048, inside this queue's avail page.
        unsafe {
            core::ptr::addr_of_mut!((*self.mem).avail)
                .cast::<u16>()
                .add(word)
        }
    }

    fn used_ptr(&self, word: usize) -> *const u32 {
        // SAFETY: word < 1 + 2 * MAX_QUEUE_SIZE + 1 < 1024, inside this queue's used page.
        unsafe {
            core::ptr::addr_of!((*self.mem).used)
                .cast::<u32>()
                .add(word)
        }
    }

    fn set_avail_flags(&mut self, flags: u16) {
        // SAFETY: avail word 0 is `flags`; volatile because the device reads it.
        unsafe { self.avail_ptr(0).write_volatile(flags) }
    }

    /// Adds a chain to the available ring without kicking; returns its head id.
    pub fn push(&mut self, bufs: &[Buf]) -> Result<u16, Error> {
        let n = bufs.len();
        if n == 0 || n > usize::from(self.num_free) {
            return Err(Error::QueueFull);
        }
        let head = self.free_head;
        let mut idx = head;
        for (k, b) in bufs.iter().enumerate() {
            let last = k + 1 == n;
            let d = self.desc_mut(idx);
            d.addr = b.addr;
            d.len = b.len;
            d.flags = if b.device_writes {
                VIRTQ_DESC_F_WRITE
            } else {
                0
            } | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            let next = d.next;
            if !last {
                idx = next;
            } else {
                self.free_head = next;
            }
        }
        self.num_free -= n as u16;
        self.chain_len[usize::from(head)] = n as u16;
        let slot = 2 + usize::from(self.avail_idx % self.size);
        // SAFETY: ring entry inside the avail page; volatile because the device reads it.
        unsafe { self.avail_ptr(slot).write_volatile(head) };
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // Descriptors and ring entry must be visible before the index.
        fence(Ordering::SeqCst);
        // SAFETY: avail word 1 is `idx`.
        unsafe { self.avail_ptr(1).write_volatile(self.avail_idx) };
        Ok(head)
    }

    /// Notifies the device of new chains (skipped when it asked for no notifications).
    pub fn kick(&self) {
        fence(Ordering::SeqCst);
        // SAFETY: used word 0 holds flags (u16) and idx (u16); read only the flags half.
        let flags = unsafe { (self.used_ptr(0) as *const u16).read_volatile() };
        if flags & VIRTQ_USED_F_NO_NOTIFY == 0 {
            self.dev.notify(self.index);
        }
    }

    /// `push` then `kick`.
    pub fn submit(&mut self, bufs: &[Buf]) -> Result<u16, Error> {
        let head = self.push(bufs)?;
        self.kick();
        Ok(head)
    }

    /// Takes the next completed chain off the used ring, if any, and frees its descriptors.
    pub fn poll_used(&mut self) -> Option<Result<Used, Error>> {
        // SAFETY: used word 0 = flags | idx << 16.
        let idx = (unsafe { self.used_ptr(0).read_volatile() } >> 16) as u16;
        if idx == self.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let slot = 1 + 2 * usize::from(self.last_used % self.size);
        // SAFETY: used ring element {id u32, len u32} inside the used page.
        let (id, len) = unsafe {
            (
                self.used_ptr(slot).read_volatile(),
                self.used_ptr(slot + 1).read_volatile(),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        if id >= u32::from(self.size) || self.chain_len[id as usize] == 0 {
            return Some(Err(Error::BadUsedId));
        }
        let id = id as u16;
        let n = self.chain_len[usize::from(id)];
        self.chain_len[usize::from(id)] = 0;
        // Walk to the chain's last descriptor and put the chain back on the free list.
        let mut tail = id;
        for _ in 1..n {
            tail = self.desc_mut(tail).next;
        }
        let old_head = self.free_head;
        self.desc_mut(tail).next = old_head;
        self.free_head = id;
        self.num_free += n;
        Some(Ok(Used { id, len }))
    }

    /// Polls until a chain completes or `timeout_ms` passes.
    pub fn wait_used(&mut self, timeout_ms: u64) -> Result<Used, Error> {
        let start = clock::rdtsc();
        let limit = clock::ms_to_ticks(timeout_ms);
        loop {
            if let Some(r) = self.poll_used() {
                return r;
            }
            if clock::rdtsc().wrapping_sub(start) > limit {
                return Err(Error::Timeout);
            }
            core::hint::spin_loop();
        }
    }
}

/// Bytes in the static DMA pool.
const DMA_POOL_SIZE: usize = 8 << 20;

#[repr(C, align(4096))]
struct DmaPool(core::cell::UnsafeCell<[u8; DMA_POOL_SIZE]>);
// SAFETY: `dma_alloc` hands out disjoint ranges only (atomic bump pointer).
unsafe impl Sync for DmaPool {}

static DMA: DmaPool = DmaPool(core::cell::UnsafeCell::new([0; DMA_POOL_SIZE]));
static DMA_NEXT: AtomicUsize = AtomicUsize::new(0);

/// Allocates `len` bytes of zeroed (at first use) DMA memory aligned to 4 KiB, never freed.
pub fn dma_alloc(len: usize) -> Option<&'static mut [u8]> {
    let rounded = len.checked_add(4095)? & !4095;
    let off = DMA_NEXT.fetch_add(rounded, Ordering::Relaxed);
    if off.checked_add(rounded)? > DMA_POOL_SIZE {
        return None;
    }
    // SAFETY: [off, off+len) lies inside the pool and was handed out to nobody else.
    Some(unsafe { core::slice::from_raw_parts_mut((DMA.0.get() as *mut u8).add(off), len) })
}
