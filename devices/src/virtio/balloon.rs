//! virtio-balloon: inflate and deflate queues and free page reporting. Pages the guest gives
//! up (inflated or reported free) go back to the host with `madvise(MADV_DONTNEED)`, so the
//! VMM's resident memory really drops; every page is checked against guest RAM first.

use super::persist::{BalloonState, DeviceState, PersistError};
use super::{
    read_config_bytes, ActivateError, Interrupt, VirtioDevice, QUEUE_BUDGET, TYPE_BALLOON,
};
use crate::GuestRam;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::io::Read;
use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Feature: the driver reports free page ranges on a queue of its own.
pub const F_REPORTING: u64 = 1 << 5;
/// Balloon page size (fixed by the specification, whatever the guest's page size).
pub const PAGE_SIZE: u64 = 4096;
const QUEUE_SIZE: u16 = 256;
const INFLATE: usize = 0;
const DEFLATE: usize = 1;
const REPORTING: usize = 2;
/// Most page numbers read from one inflate/deflate buffer (Linux sends 256).
const MAX_PFNS_PER_BUFFER: usize = 256;
/// Most `madvise` calls (runs of pages given back) per wake of the event loop.
const MAX_RELEASES_PER_WAKE: usize = 1024;

/// Counters of what the device did (for tests and a later control API).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonStats {
    /// Pages returned to the host from inflation.
    pub inflated_pages: u64,
    /// Pages returned to the host from free page reporting.
    pub reported_pages: u64,
    /// Page numbers the guest named that are not guest RAM (ignored).
    pub rejected_pages: u64,
}

struct Active {
    mem: GuestRam,
    queues: Vec<Queue>,
    interrupt: Interrupt,
}

/// The balloon device.
pub struct Balloon {
    /// Target size in pages (config `num_pages`).
    num_pages: u32,
    /// What the driver says it holds (config `actual`).
    actual: u32,
    reporting: bool,
    queue_sizes: Vec<u16>,
    queue_evts: Vec<EventFd>,
    active: Option<Active>,
    stats: BalloonStats,
}

impl Balloon {
    /// A balloon whose initial target is `target_bytes` (rounded down to pages); with
    /// `free_page_reporting` the guest also hands back free memory on its own.
    pub fn new(target_bytes: u64, free_page_reporting: bool) -> std::io::Result<Self> {
        let n = if free_page_reporting { 3 } else { 2 };
        Ok(Self {
            num_pages: pages(target_bytes),
            actual: 0,
            reporting: free_page_reporting,
            queue_sizes: vec![QUEUE_SIZE; n],
            queue_evts: (0..n)
                .map(|_| EventFd::new(EFD_NONBLOCK))
                .collect::<Result<_, _>>()?,
            active: None,
            stats: BalloonStats::default(),
        })
    }

    /// Clones of the queue eventfds, for the transport and the ioeventfd registration.
    pub fn queue_evts(&self) -> std::io::Result<Vec<EventFd>> {
        self.queue_evts.iter().map(EventFd::try_clone).collect()
    }

    /// Change the target; the driver is told through a configuration-change interrupt.
    pub fn set_target(&mut self, bytes: u64) {
        let n = pages(bytes);
        if n != self.num_pages {
            self.num_pages = n;
            if let Some(a) = &self.active {
                a.interrupt.signal_config_change();
            }
        }
    }

    /// The target, in bytes.
    pub fn target(&self) -> u64 {
        u64::from(self.num_pages) * PAGE_SIZE
    }

    /// What the guest says the balloon holds, in bytes.
    pub fn actual(&self) -> u64 {
        u64::from(self.actual) * PAGE_SIZE
    }

    /// What the device has done so far.
    pub fn stats(&self) -> BalloonStats {
        self.stats
    }

    fn process_queue(&mut self, index: usize) {
        let Some(a) = &mut self.active else {
            return;
        };
        let Some(queue) = a.queues.get_mut(index) else {
            return;
        };
        let (mut used, mut releases) = (0, 0);
        while let Some(chain) = queue.pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            match index {
                INFLATE | DEFLATE => {
                    let pfns = read_pfns(&a.mem, chain);
                    if index == INFLATE {
                        for (start, count) in runs(&pfns) {
                            let (ok, bad) = release(&a.mem, start * PAGE_SIZE, count * PAGE_SIZE);
                            self.stats.inflated_pages += ok;
                            self.stats.rejected_pages += bad;
                            releases += 1;
                        }
                    }
                    // Deflated pages need nothing: the guest's next touch faults them back in.
                }
                REPORTING => {
                    // Each descriptor names a free range: its address and length, not contents.
                    for desc in chain {
                        match reported_range(&a.mem, desc.addr().0, desc.len()) {
                            Some((start, len)) => {
                                let (ok, bad) = release(&a.mem, start, len);
                                self.stats.reported_pages += ok;
                                self.stats.rejected_pages += bad;
                                releases += 1;
                            }
                            None => self.stats.rejected_pages += u64::from(desc.len()) / PAGE_SIZE,
                        }
                    }
                }
                _ => {}
            }
            if queue.add_used(&a.mem, head, 0).is_err() {
                break; // used ring outside guest memory: the driver broke the queue
            }
            used += 1;
            if used == QUEUE_BUDGET || releases >= MAX_RELEASES_PER_WAKE {
                // More may wait: continue on the next wake, after the other devices.
                let _ = self.queue_evts[index].write(1);
                break;
            }
        }
        if used > 0 && queue.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue();
        }
    }
}

/// The whole pages of a reported free range `[addr, addr + len)`, as (start, length), if they
/// lie inside one guest RAM region; None for a range that wraps, is empty, or leaves RAM.
fn reported_range(mem: &GuestRam, addr: u64, len: u32) -> Option<(u64, u64)> {
    let start = addr.checked_next_multiple_of(PAGE_SIZE)?;
    let end = addr.checked_add(u64::from(len))? & !(PAGE_SIZE - 1);
    if end <= start {
        return None;
    }
    let region = mem.find_region(GuestAddress(start))?;
    let region_end = region.start_addr().raw_value().checked_add(region.len())?;
    (end <= region_end).then_some((start, end - start))
}

fn pages(bytes: u64) -> u32 {
    u32::try_from(bytes / PAGE_SIZE).unwrap_or(u32::MAX)
}

/// The little-endian u32 page numbers in a chain's readable buffers.
fn read_pfns(mem: &GuestRam, chain: virtio_queue::DescriptorChain<&GuestRam>) -> Vec<u64> {
    let Ok(r) = chain.reader(mem) else {
        return Vec::new(); // descriptors outside guest memory
    };
    let n = (r.available_bytes() / 4).min(MAX_PFNS_PER_BUFFER);
    let mut raw = vec![0u8; n * 4];
    if r.take(raw.len() as u64).read_exact(&mut raw).is_err() {
        return Vec::new();
    }
    raw.chunks_exact(4)
        .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .collect()
}

/// Consecutive page numbers grouped as (first, count), in order of appearance.
fn runs(pfns: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &p in pfns {
        match out.last_mut() {
            Some((start, count)) if *start + *count == p => *count += 1,
            _ => out.push((p, 1)),
        }
    }
    out
}

/// Give `[gpa, gpa + len)` (page-aligned) back to the host, region by region; pages outside
/// guest RAM are skipped. Returns (pages released, pages rejected).
pub fn release(mem: &GuestRam, gpa: u64, len: u64) -> (u64, u64) {
    let (mut ok, mut bad) = (0, 0);
    let end = gpa.saturating_add(len);
    let mut at = gpa;
    while at < end {
        let Some(region) = mem.find_region(GuestAddress(at)) else {
            // Skip to the next region's start (or the end) in one step.
            let next = mem
                .iter()
                .map(|r| r.start_addr().raw_value())
                .filter(|&s| s > at)
                .min()
                .unwrap_or(end)
                .min(end);
            bad += (next - at).div_ceil(PAGE_SIZE);
            at = next;
            continue;
        };
        let region_end = region.start_addr().raw_value() + region.len();
        let chunk_end = end.min(region_end);
        let offset = MemoryRegionAddress(at - region.start_addr().raw_value());
        let n = chunk_end - at;
        match region.get_host_address(offset) {
            Ok(host) => {
                // SAFETY: [host, host + n) lies inside this region's mapping (checked against
                // the region's bounds above), which guest memory owns for the VM's lifetime;
                // MADV_DONTNEED only drops its pages (they read back as zeroes).
                let r = unsafe { libc::madvise(host.cast(), n as usize, libc::MADV_DONTNEED) };
                if r == 0 {
                    ok += n / PAGE_SIZE;
                } else {
                    bad += n / PAGE_SIZE;
                }
            }
            Err(_) => bad += n / PAGE_SIZE,
        }
        at = chunk_end;
    }
    (ok, bad)
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn features(&self) -> u64 {
        if self.reporting {
            F_REPORTING
        } else {
            0
        }
    }
    fn ack_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 16];
        config[0..4].copy_from_slice(&self.num_pages.to_le_bytes());
        config[4..8].copy_from_slice(&self.actual.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (offset 4, 32 bits) is the driver's to write.
        if let (4, Ok(v)) = (offset, <[u8; 4]>::try_from(data)) {
            self.actual = u32::from_le_bytes(v);
        }
    }
    fn activate(
        &mut self,
        mem: GuestRam,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        super::expect_queues(&queues, self.queue_sizes.len())?;
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
        });
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
        self.actual = 0;
    }
    fn queues(&self) -> &[Queue] {
        self.active.as_ref().map_or(&[], |a| &a.queues[..])
    }
    fn save_state(&self) -> DeviceState {
        DeviceState::Balloon(BalloonState {
            num_pages: self.num_pages,
            actual: self.actual,
        })
    }
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), PersistError> {
        let DeviceState::Balloon(saved) = state else {
            return Err(PersistError::WrongState {
                device_type: self.device_type(),
            });
        };
        // The target may have changed since boot (`plainvm balloon`); the saved one wins.
        (self.num_pages, self.actual) = (saved.num_pages, saved.actual);
        Ok(())
    }
}

impl MutEventSubscriber for Balloon {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            let _ = ops.add(Events::with_data(evt, i as u32, EventSet::IN));
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let i = events.data() as usize;
        if let Some(evt) = self.queue_evts.get(i) {
            let _ = evt.read();
            self.process_queue(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_queue::TestQueue;
    use vm_memory::Bytes;

    const MIB: u64 = 1 << 20;

    fn setup(reporting: bool) -> (Balloon, GuestRam, Vec<TestQueue>) {
        let mut b = Balloon::new(8 * MIB, reporting).unwrap();
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 16 * MIB as usize)]).unwrap();
        let n = if reporting { 3 } else { 2 };
        let tqs: Vec<TestQueue> = (0..n)
            .map(|i| TestQueue::new(&mem, 0x1_0000 + i * 0x1000, 16))
            .collect();
        let irq = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        b.activate(mem.clone(), tqs.iter().map(TestQueue::queue).collect(), irq)
            .unwrap();
        (b, mem, tqs)
    }

    fn resident(mem: &GuestRam, gpa: u64) -> bool {
        let host = mem.get_host_address(GuestAddress(gpa)).unwrap();
        let mut v = [0u8; 1];
        // SAFETY: one page of a live mapping; mincore writes one byte into `v`.
        let r = unsafe { libc::mincore(host.cast(), 4096, v.as_mut_ptr()) };
        assert_eq!(r, 0);
        v[0] & 1 == 1
    }

    #[test]
    fn config_space_and_target_changes() {
        let (mut b, _mem, _q) = setup(false);
        let mut d = [0u8; 4];
        b.read_config(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 2048);
        b.write_config(4, &100u32.to_le_bytes());
        b.write_config(0, &7u32.to_le_bytes()); // num_pages is the device's: ignored
        b.read_config(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 2048);
        assert_eq!(b.actual(), 100 * PAGE_SIZE);
        let irq = b.active.as_ref().unwrap().interrupt.clone();
        b.set_target(64 * MIB);
        assert_eq!(b.target(), 64 * MIB);
        assert_eq!(irq.status() & crate::virtio::interrupt::INT_CONFIG, 2);
    }

    #[test]
    fn inflated_pages_leave_host_memory_and_bad_pfns_are_ignored() {
        let (mut b, mem, mut q) = setup(false);
        // Touch 4 pages at 8 MiB.
        for i in 0..4 {
            mem.write_obj(0xabu8, GuestAddress(8 * MIB + i * PAGE_SIZE))
                .unwrap();
        }
        assert!(resident(&mem, 8 * MIB));
        // PFNs: the 4 pages, one past the end of RAM, one far away, u32::MAX.
        let pfn0 = (8 * MIB / PAGE_SIZE) as u32;
        let list = [
            pfn0,
            pfn0 + 1,
            pfn0 + 2,
            pfn0 + 3,
            4096,
            0x10_0000,
            u32::MAX,
        ];
        let bytes: Vec<u8> = list.iter().flat_map(|p| p.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(0x2_0000)).unwrap();
        q[0].add(&mem, &[(0x2_0000, bytes.len() as u32, false)]);
        // A chain outside guest memory, and one with an odd length.
        q[0].add(&mem, &[(0xffff_f000, 4096, false)]);
        q[0].add(&mem, &[(0x2_0000, 3, false)]);
        b.process_queue(INFLATE);
        assert_eq!(q[0].used(&mem).len(), 3);
        assert!(!resident(&mem, 8 * MIB));
        let v: u8 = mem.read_obj(GuestAddress(8 * MIB)).unwrap();
        assert_eq!(v, 0, "released pages read back as zeroes");
        assert_eq!(b.stats().inflated_pages, 4);
        assert_eq!(b.stats().rejected_pages, 3);
    }

    #[test]
    fn reported_ranges_are_released_within_ram_only() {
        let (mut b, mem, mut q) = setup(true);
        for i in 0..512 {
            mem.write_obj(1u8, GuestAddress(4 * MIB + i * PAGE_SIZE))
                .unwrap();
        }
        // 2 MiB of free memory, a range running past the end of RAM, an unaligned one.
        q[REPORTING].add(
            &mem,
            &[
                (4 * MIB, 2 * MIB as u32, true),
                (15 * MIB, 4 * MIB as u32, true),
                (0x3_0001, 10, true),
            ],
        );
        b.process_queue(REPORTING);
        assert!(!resident(&mem, 4 * MIB) && !resident(&mem, 6 * MIB - PAGE_SIZE));
        // The range that leaves RAM is refused whole: 4 MiB of pages.
        assert_eq!(b.stats().reported_pages, 512);
        assert_eq!(b.stats().rejected_pages, 1024);
        assert_eq!(q[REPORTING].used(&mem).len(), 1);
    }

    #[test]
    fn looping_chain_ends() {
        let (mut b, mem, q) = setup(false);
        // Descriptor 0 -> 1 -> 0 -> ... : the chain iterator stops; the device does not hang.
        q[0].set_desc(&mem, 0, 0x2_0000, 4, 1, 1);
        q[0].set_desc(&mem, 1, 0x2_0000, 4, 1, 0);
        mem.write_obj(0u16, GuestAddress(0x1_0404)).unwrap();
        mem.write_obj(1u16, GuestAddress(0x1_0402)).unwrap();
        b.process_queue(INFLATE);
    }

    #[test]
    fn reported_ranges_at_the_top_of_the_address_space_are_refused() {
        let (mut b, mem, mut q) = setup(true);
        for i in 0..16 {
            mem.write_obj(1u8, GuestAddress(i * MIB)).unwrap();
        }
        q[REPORTING].add(
            &mem,
            &[
                (u64::MAX - 100, 4096, true),
                (0xffff_ffff_ffff_f000, 0x2000, true),
                (0xffff_ffff_ffff_f001, 0x1fff, true),
            ],
        );
        b.process_queue(REPORTING);
        assert_eq!(b.stats().reported_pages, 0);
        for i in 0..16 {
            assert!(
                resident(&mem, i * MIB),
                "guest RAM at {i} MiB was discarded"
            );
        }
        assert_eq!(q[REPORTING].used(&mem).len(), 1);
    }

    #[test]
    fn a_queue_of_scattered_pages_is_served_in_bounded_wakes() {
        let mut b = Balloon::new(8 * MIB, false).unwrap();
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 16 * MIB as usize)]).unwrap();
        let mut inflate = TestQueue::new(&mem, 0x1_0000, 256);
        let deflate = TestQueue::new(&mem, 0x4_0000, 16);
        let irq = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        b.activate(mem.clone(), vec![inflate.queue(), deflate.queue()], irq)
            .unwrap();
        // 256 buffers of 256 every-other-page PFNs: 65536 madvise calls if served at once.
        let pfns: Vec<u8> = (0..256u32)
            .flat_map(|i| (1024 + 2 * i).to_le_bytes())
            .collect();
        mem.write_slice(&pfns, GuestAddress(0x8_0000)).unwrap();
        for _ in 0..256 {
            inflate.add(&mem, &[(0x8_0000, pfns.len() as u32, false)]);
        }
        b.process_queue(INFLATE);
        let served = inflate.used(&mem).len();
        assert!(
            (1..256).contains(&served),
            "{served} chains in one wake: no madvise budget"
        );
        assert_eq!(b.queue_evts[INFLATE].read().unwrap(), 1, "kicked itself");
        while inflate.used(&mem).len() < 256 {
            b.process_queue(INFLATE);
        }
    }
}
