//! Test helper: a split virtqueue laid out in guest memory, driven from the driver's side, so
//! device tests can feed arbitrary (including malformed) descriptor chains.

use crate::GuestRam;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// A queue of `size` entries at `base`: descriptors, then the avail ring at +0x400, then the
/// used ring at +0x800 (16 entries or fewer); for larger queues (up to 256) the rings are at
/// +0x1000 and +0x2000.
pub struct TestQueue {
    base: u64,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
}

impl TestQueue {
    pub fn new(mem: &GuestRam, base: u64, size: u16) -> Self {
        assert!(size <= 256);
        mem.write_slice(&[0u8; 0x3000], GuestAddress(base)).unwrap();
        Self {
            base,
            size,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    fn avail(&self) -> u64 {
        self.base + if self.size <= 16 { 0x400 } else { 0x1000 }
    }

    fn used_ring(&self) -> u64 {
        self.base + if self.size <= 16 { 0x800 } else { 0x2000 }
    }

    /// The device's view, ready.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(self.base);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail());
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used_ring());
        q.set_used_ring_address(lo, hi);
        q.set_size(self.size);
        q.set_ready(true);
        q
    }

    /// Make a chain of (address, length, device-writable) buffers available.
    pub fn add(&mut self, mem: &GuestRam, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let idx = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let mut flags = if write { WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= NEXT;
            }
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&self.next_desc.to_le_bytes());
            mem.write_slice(&d, GuestAddress(self.base + u64::from(idx) * 16))
                .unwrap();
        }
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail() + 4 + slot * 2))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
            .unwrap();
        head
    }

    /// Make a raw descriptor table entry (for loops and other malformed chains).
    pub fn set_desc(&self, mem: &GuestRam, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, GuestAddress(self.base + u64::from(idx) * 16))
            .unwrap();
    }

    /// The used ring so far: (descriptor head, length written).
    pub fn used(&self, mem: &GuestRam) -> Vec<(u16, u32)> {
        let n: u16 = mem.read_obj(GuestAddress(self.used_ring() + 2)).unwrap();
        (0..u64::from(n))
            .map(|i| {
                let at = self.used_ring() + 4 + (i % u64::from(self.size)) * 8;
                let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
                (id as u16, len)
            })
            .collect()
    }
}
