//! A queue kept busy forever: a few fixed descriptor chains, made available again and again.
//!
//! The chains are built once; after that the spinner only writes their heads into the available
//! ring and advances `avail.idx`, never waiting for a chain to come back (it does not recycle
//! descriptors, so the same chain may be in the ring several times). The only limit is the one
//! the device checks: at most `size` entries between the device's position and `avail.idx`
//! (more, and virtio-queue calls the ring broken and takes nothing). The device's position is
//! read from `used.idx`, which every device here advances for each chain it takes.

use super::{fence, Buf, Error, Ordering, Queue};

/// Most distinct chains a spinner cycles through.
pub const MAX_CHAINS: usize = 8;

/// One busy queue.
pub struct Spinner {
    /// What the progress lines call it (e.g. `rng`, `vsock-tx`).
    pub name: &'static str,
    q: Queue,
    heads: [u16; MAX_CHAINS],
    chains: usize,
    next: usize,
    /// Times `avail.idx` was advanced (chains made available), the set-up pushes included.
    pub published: u64,
    /// Chains the device has put in the used ring (counted from `used.idx`).
    pub used: u64,
    last_used_idx: u16,
    /// Notifications written.
    pub kicks: u64,
}

impl Spinner {
    /// Builds each chain of `chains` once (at most `MAX_CHAINS`) on `q` and makes it available
    /// (no kick: the device is not live before DRIVER_OK).
    pub fn new(name: &'static str, mut q: Queue, chains: &[&[Buf]]) -> Result<Spinner, Error> {
        if chains.is_empty() || chains.len() > MAX_CHAINS {
            return Err(Error::QueueFull);
        }
        let mut heads = [0; MAX_CHAINS];
        for (h, c) in heads.iter_mut().zip(chains) {
            *h = q.push(c)?;
        }
        Ok(Spinner {
            name,
            q,
            heads,
            chains: chains.len(),
            next: 0,
            published: chains.len() as u64,
            used: 0,
            last_used_idx: 0,
            kicks: 0,
        })
    }

    /// Fills the available ring up to the device's limit and kicks when it added anything;
    /// returns how many chains it made available.
    pub fn step(&mut self) -> u64 {
        let used_idx = self.q.used_idx();
        self.used += u64::from(used_idx.wrapping_sub(self.last_used_idx));
        self.last_used_idx = used_idx;
        let mut n = 0;
        while self.q.avail_idx.wrapping_sub(used_idx) < self.q.size {
            self.q.republish(self.heads[self.next]);
            self.next = (self.next + 1) % self.chains;
            n += 1;
        }
        if n > 0 {
            self.q.kick();
            self.kicks += 1;
        }
        self.published += n;
        n
    }
}

impl Queue {
    /// `used.idx` as the device last wrote it.
    fn used_idx(&self) -> u16 {
        fence(Ordering::SeqCst);
        // SAFETY: used word 0 = flags | idx << 16, inside this queue's used page.
        (unsafe { self.used_ptr(0).read_volatile() } >> 16) as u16
    }

    /// Makes the chain headed by `head` (built by `push`, possibly still in the ring) available
    /// once more, without a kick.
    fn republish(&mut self, head: u16) {
        let slot = 2 + usize::from(self.avail_idx % self.size);
        // SAFETY: ring entry inside the avail page; volatile because the device reads it.
        unsafe { self.avail_ptr(slot).write_volatile(head) };
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The ring entry must be visible before the index.
        fence(Ordering::SeqCst);
        // SAFETY: avail word 1 is `idx`.
        unsafe { self.avail_ptr(1).write_volatile(self.avail_idx) };
    }
}
