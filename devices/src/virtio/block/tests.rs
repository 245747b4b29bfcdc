//! Unit tests of virtio-blk: valid requests, and hostile chains that must end in an error status
//! or an ignored request (never a panic, a hang, or an access outside guest memory or the disk).

use super::device::{for_test, Block};
use super::{RawFile, F_RO, S_IOERR, S_OK, S_UNSUPP, T_FLUSH, T_GET_ID, T_IN, T_OUT};
use crate::virtio::{Interrupt, VirtioDevice};
use crate::GuestRam;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempfile::TempFile;

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;
const MEM_SIZE: u64 = 0x10_0000;
const QSIZE: u16 = 16;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;
const DISK: u64 = 1 << 20;

struct Rig {
    _file: TempFile,
    path: std::path::PathBuf,
    mem: GuestRam,
    dev: Block,
    used_addr: GuestAddress,
    avail_addr: GuestAddress,
    seen_used: u16,
}

fn rig(read_only: bool) -> Rig {
    let file = TempFile::new().unwrap();
    file.as_file().set_len(DISK).unwrap();
    let path = file.as_path().to_path_buf();
    let mem = GuestRam::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let backend = RawFile::open(&path, read_only).unwrap();
    let mut dev = for_test(backend, "disk-one");
    // Rings placed by hand (the crate's mock overlaps its avail and used rings).
    let (avail_addr, used_addr) = (GuestAddress(0x1000), GuestAddress(0x2000));
    let mut queue = Queue::new(QSIZE).unwrap();
    queue.set_size(QSIZE);
    queue.set_desc_table_address(Some(0), Some(0));
    queue.set_avail_ring_address(Some(0x1000), Some(0));
    queue.set_used_ring_address(Some(0x2000), Some(0));
    queue.set_ready(true);
    let irq = Interrupt::new(EventFd::new(0).unwrap());
    dev.activate(mem.clone(), vec![queue], irq).unwrap();
    Rig {
        _file: file,
        path,
        mem,
        dev,
        used_addr,
        avail_addr,
        seen_used: 0,
    }
}

fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

impl Rig {
    fn header(&self, ty: u32, sector: u64) {
        self.mem.write_obj(ty, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        self.mem.write_obj(0xaau8, GuestAddress(STATUS)).unwrap();
    }

    /// Writes raw descriptors into table slots 0.. (their `next` fields used as given), makes
    /// each chain head (slot 0 and every slot after one without NEXT) available, and runs the
    /// device; returns the used elements (id, len) it produced.
    fn submit_raw(&mut self, descs: &[RawDescriptor]) -> Vec<(u32, u32)> {
        let mut avail_idx: u16 = self.mem.read_obj(self.avail_addr.unchecked_add(2)).unwrap();
        for (i, desc) in descs.iter().enumerate() {
            self.mem
                .write_obj(*desc, GuestAddress(16 * i as u64))
                .unwrap();
            let head = i == 0 || SplitDescriptor::from(descs[i - 1]).flags() & NEXT == 0;
            if head {
                let at = 4 + 2 * u64::from(avail_idx % QSIZE);
                self.mem
                    .write_obj(i as u16, self.avail_addr.unchecked_add(at))
                    .unwrap();
                avail_idx = avail_idx.wrapping_add(1);
            }
        }
        self.mem
            .write_obj(avail_idx, self.avail_addr.unchecked_add(2))
            .unwrap();
        self.dev.process_queue();
        self.collect_used()
    }

    /// A well-formed chain header -> data... -> status, in descriptor slots 0.. .
    fn submit(&mut self, data: &[(u64, u32, bool)]) -> Vec<(u32, u32)> {
        let n = data.len() as u16 + 2;
        let mut descs = vec![d(HDR, 16, NEXT, 1)];
        for (i, &(addr, len, w)) in data.iter().enumerate() {
            descs.push(d(addr, len, NEXT | if w { WRITE } else { 0 }, i as u16 + 2));
        }
        descs.push(d(STATUS, 1, WRITE, 0));
        assert_eq!(descs.len(), usize::from(n));
        self.submit_raw(&descs)
    }

    /// A flush: it goes to a worker thread (the event loop does not wait for the disk) and
    /// completes with status OK.
    fn flush_ok(&mut self) {
        self.header(T_FLUSH, 0);
        assert!(self.submit(&[]).is_empty(), "a flush ran on the event loop");
        assert_eq!(self.wait_jobs().len(), 1);
        assert_eq!(self.status(), S_OK);
    }

    /// Waits for the worker threads and completes their requests; returns the new used elements.
    fn wait_jobs(&mut self) -> Vec<(u32, u32)> {
        let start = std::time::Instant::now();
        loop {
            self.dev.complete_jobs();
            let used = self.collect_used();
            if !used.is_empty() || start.elapsed() > std::time::Duration::from_secs(10) {
                return used;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn collect_used(&mut self) -> Vec<(u32, u32)> {
        let used_idx: u16 = self.mem.read_obj(self.used_addr.unchecked_add(2)).unwrap();
        let mut out = Vec::new();
        while self.seen_used != used_idx {
            let at = 4 + 8 * u64::from(self.seen_used % QSIZE);
            let id: u32 = self.mem.read_obj(self.used_addr.unchecked_add(at)).unwrap();
            let len: u32 = self
                .mem
                .read_obj(self.used_addr.unchecked_add(at + 4))
                .unwrap();
            out.push((id, len));
            self.seen_used = self.seen_used.wrapping_add(1);
        }
        out
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn disk(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

#[test]
fn write_then_read_round_trip() {
    let mut r = rig(false);
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    r.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    r.header(T_OUT, 2);
    // Two segments: 512 + 512 bytes.
    let used = r.submit(&[(DATA, 512, false), (DATA + 512, 512, false)]);
    assert_eq!(used, vec![(0, 1)]);
    assert_eq!(r.status(), S_OK);
    assert_eq!(&r.disk()[1024..2048], &pattern[..]);

    r.header(T_IN, 2);
    r.mem
        .write_slice(&[0u8; 1024], GuestAddress(DATA + 0x1000))
        .unwrap();
    let used = r.submit(&[(DATA + 0x1000, 1024, true)]);
    assert_eq!(used, vec![(0, 1025)]);
    assert_eq!(r.status(), S_OK);
    let mut back = vec![0u8; 1024];
    r.mem
        .read_slice(&mut back, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(back, pattern);

    r.header(T_FLUSH, 0);
    assert!(
        r.submit(&[]).is_empty(),
        "a flush waits for the disk on a worker"
    );
    assert_eq!(r.wait_jobs(), vec![(0, 1)]);
    assert_eq!(r.status(), S_OK);
    assert_eq!(r.dev.errors(), 0);
}

#[test]
fn cached_requests_run_inline_and_uncached_reads_on_the_worker_threads() {
    let mut r = rig(false);
    let len: u32 = 256 << 10;
    let pattern: Vec<u8> = (0..len).map(|i| (i / 512 + i) as u8).collect();
    // Buffers clear of the header and status bytes at 0x10000 and 0x30000.
    let src = 0x4_0000;
    r.mem.write_slice(&pattern, GuestAddress(src)).unwrap();
    r.header(T_OUT, 8);
    assert_eq!(
        r.submit(&[(src, len, false)]),
        vec![(0, 1)],
        "writes run inline"
    );
    assert_eq!(r.status(), S_OK);
    assert_eq!(&r.disk()[4096..4096 + len as usize], &pattern[..]);

    // What the page cache holds is read inline too.
    let back = 0x8_0000;
    r.header(T_IN, 8);
    assert_eq!(r.submit(&[(back, len, true)]), vec![(0, len + 1)]);
    let mut got = vec![0u8; len as usize];
    r.mem.read_slice(&mut got, GuestAddress(back)).unwrap();
    assert_eq!(got, pattern);

    // A read the page cache cannot serve goes to a worker thread and completes from there.
    r.dev.always_hand_off = true;
    r.mem
        .write_slice(&vec![0u8; len as usize], GuestAddress(back))
        .unwrap();
    r.header(T_IN, 8);
    assert!(
        r.submit(&[(back, len, true)]).is_empty(),
        "completed inline"
    );
    assert_eq!(r.wait_jobs(), vec![(0, len + 1)]);
    assert_eq!(r.status(), S_OK);
    r.mem.read_slice(&mut got, GuestAddress(back)).unwrap();
    assert_eq!(got, pattern);

    // A large read whose buffer runs out of guest memory fails without reaching a worker.
    r.header(T_IN, 0);
    assert_eq!(r.submit(&[(MEM_SIZE - 4096, len, true)]), vec![(0, 1)]);
    assert_eq!(r.status(), S_IOERR);
}

#[test]
fn get_id_and_config() {
    let mut r = rig(false);
    r.header(T_GET_ID, 0);
    let used = r.submit(&[(DATA, 20, true)]);
    assert_eq!(used, vec![(0, 21)]);
    let mut id = [0u8; 20];
    r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..8], b"disk-one");
    assert!(id[8..].iter().all(|&b| b == 0));
    let mut cap = [0u8; 8];
    r.dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK / 512);
    assert_eq!(r.dev.features() & F_RO, 0);
}

#[test]
fn read_only_disk_refuses_writes() {
    let mut r = rig(true);
    assert_ne!(r.dev.features() & F_RO, 0);
    r.mem
        .write_slice(&[0x55u8; 512], GuestAddress(DATA))
        .unwrap();
    r.header(T_OUT, 0);
    assert_eq!(r.submit(&[(DATA, 512, false)]), vec![(0, 1)]);
    assert_eq!(r.status(), S_IOERR);
    assert!(r.disk().iter().all(|&b| b == 0), "the image changed");
    r.header(T_IN, 0);
    r.submit(&[(DATA, 512, true)]);
    assert_eq!(r.status(), S_OK);
    r.header(T_FLUSH, 0);
    r.submit(&[]);
    assert_eq!(r.status(), S_OK);
}

#[test]
fn sectors_past_the_end_are_refused() {
    let mut r = rig(false);
    let last = DISK / 512 - 1;
    for (sector, len) in [
        (last, 1024u32),       // crosses the end
        (last + 1, 512),       // starts at the end
        (u64::MAX / 512, 512), // sector * 512 overflows past u64 after adding len
        (u64::MAX, 512),       // sector * 512 overflows
    ] {
        r.header(T_IN, sector);
        r.submit(&[(DATA, len, true)]);
        assert_eq!(r.status(), S_IOERR, "sector {sector} len {len}");
        r.header(T_OUT, sector);
        r.submit(&[(DATA, len, false)]);
        assert_eq!(r.status(), S_IOERR, "sector {sector} len {len}");
    }
    assert_eq!(r.disk().len() as u64, DISK, "the image grew");
    r.header(T_IN, last);
    r.submit(&[(DATA, 512, true)]);
    assert_eq!(r.status(), S_OK);
}

#[test]
fn wrong_directions_and_bad_lengths_are_io_errors() {
    let mut r = rig(false);
    // Read into a device-readable buffer.
    r.header(T_IN, 0);
    r.submit(&[(DATA, 512, false)]);
    assert_eq!(r.status(), S_IOERR);
    // Write from a device-writable buffer.
    r.header(T_OUT, 0);
    r.submit(&[(DATA, 512, true)]);
    assert_eq!(r.status(), S_IOERR);
    // Mixed directions.
    r.header(T_IN, 0);
    r.submit(&[(DATA, 512, true), (DATA + 512, 512, false)]);
    assert_eq!(r.status(), S_IOERR);
    // Not a multiple of the sector size.
    r.header(T_IN, 0);
    r.submit(&[(DATA, 100, true)]);
    assert_eq!(r.status(), S_IOERR);
    // Huge segment (4 GiB - 64): more than size_max.
    r.header(T_IN, 0);
    r.submit(&[(DATA, u32::MAX - 64, true)]);
    assert_eq!(r.status(), S_IOERR);
    // A chain longer than 4 GiB in total ends early (no status: ignored).
    r.header(T_IN, 0);
    let used = r.submit(&[(DATA, u32::MAX, true)]);
    assert_eq!(used, vec![(0, 0)]);
    assert_eq!(r.status(), 0xaa);
    // get-id into a device-readable buffer.
    r.header(T_GET_ID, 0);
    r.submit(&[(DATA, 20, false)]);
    assert_eq!(r.status(), S_IOERR);
    // Unknown request type.
    r.header(11, 0);
    r.submit(&[(DATA, 512, false)]);
    assert_eq!(r.status(), S_UNSUPP);
}

#[test]
fn buffers_outside_guest_memory_are_io_errors() {
    let mut r = rig(false);
    r.mem
        .write_slice(&[0x77u8; 512], GuestAddress(DATA))
        .unwrap();
    r.header(T_OUT, 0);
    r.submit(&[(DATA, 512, false)]);
    assert_eq!(r.status(), S_OK);
    for addr in [MEM_SIZE, MEM_SIZE - 256, u64::MAX - 100, 0xd000_0000] {
        r.header(T_IN, 0);
        r.submit(&[(addr, 512, true)]);
        assert_eq!(r.status(), S_IOERR, "read into {addr:#x}");
        r.header(T_OUT, 1);
        r.submit(&[(addr, 512, false)]);
        assert_eq!(r.status(), S_IOERR, "write from {addr:#x}");
    }
    // Nothing reached sector 1.
    assert!(r.disk()[512..1024].iter().all(|&b| b == 0));
}

#[test]
fn malformed_chains_are_dropped_or_refused() {
    let mut r = rig(false);
    // Header outside guest memory: status still reported.
    r.mem.write_obj(0xaau8, GuestAddress(STATUS)).unwrap();
    let used = r.submit_raw(&[d(MEM_SIZE + 4096, 16, NEXT, 1), d(STATUS, 1, WRITE, 0)]);
    assert_eq!(used, vec![(0, 1)]);
    assert_eq!(r.status(), S_IOERR);
    // Header too short.
    r.header(T_IN, 0);
    r.submit_raw(&[d(HDR, 8, NEXT, 1), d(STATUS, 1, WRITE, 0)]);
    assert_eq!(r.status(), S_IOERR);
    // Header device-writable.
    r.header(T_IN, 0);
    r.submit_raw(&[d(HDR, 16, NEXT | WRITE, 1), d(STATUS, 1, WRITE, 0)]);
    assert_eq!(r.status(), S_IOERR);
    // A lone descriptor: no header.
    r.header(T_IN, 0);
    r.submit_raw(&[d(STATUS, 1, WRITE, 0)]);
    assert_eq!(r.status(), S_IOERR);
    // Status descriptor device-readable: nowhere to report, dropped with used len 0.
    r.header(T_IN, 0);
    let used = r.submit_raw(&[d(HDR, 16, NEXT, 1), d(STATUS, 1, 0, 0)]);
    assert_eq!(used, vec![(0, 0)]);
    assert_eq!(r.status(), 0xaa);
    // Status outside guest memory: dropped (once the flush, on a worker, is done).
    r.header(T_FLUSH, 0);
    let used = r.submit_raw(&[d(HDR, 16, NEXT, 1), d(u64::MAX, 1, WRITE, 0)]);
    assert!(used.is_empty());
    assert_eq!(r.wait_jobs(), vec![(0, 0)]);
    // Zero-length status.
    r.header(T_FLUSH, 0);
    let used = r.submit_raw(&[d(HDR, 16, NEXT, 1), d(STATUS, 0, WRITE, 0)]);
    assert_eq!(used, vec![(0, 0)]);
    assert!(r.dev.errors() >= 7);
    // The device still works afterwards.
    r.flush_ok();
}

#[test]
fn looping_and_out_of_table_chains_end() {
    let mut r = rig(false);
    // 0 -> 1 -> 0 -> 1 ... : the chain iterator stops after the queue size.
    r.header(T_IN, 0);
    let used = r.submit_raw(&[d(HDR, 16, NEXT, 1), d(DATA, 512, NEXT | WRITE, 0)]);
    assert_eq!(used.len(), 1);
    // `next` beyond the table.
    r.header(T_IN, 0);
    let used = r.submit_raw(&[d(HDR, 16, NEXT, 200), d(STATUS, 1, WRITE, 0)]);
    assert!(used.len() <= 2);
    // Self-loop on the status descriptor.
    r.header(T_IN, 0);
    let used = r.submit_raw(&[d(HDR, 16, NEXT, 1), d(STATUS, 1, NEXT | WRITE, 1)]);
    assert!(!used.is_empty());
    // Indirect table outside memory, and a huge one.
    r.header(T_IN, 0);
    r.submit_raw(&[d(MEM_SIZE * 4, 16 * 8, INDIRECT, 0)]);
    r.submit_raw(&[d(DATA, 0xfff0, INDIRECT, 0)]);
    // Afterwards: still serving.
    r.flush_ok();
}

#[test]
fn too_many_segments_are_refused() {
    let mut r = rig(false);
    // Indirect table with 200 data segments (more than seg_max).
    let table = DATA + 0x1_0000;
    let n = 202u16;
    for i in 0..n {
        let desc = match i {
            0 => d(HDR, 16, NEXT, 1),
            _ if i == n - 1 => d(STATUS, 1, WRITE, 0),
            _ => d(DATA, 512, NEXT | WRITE, i + 1),
        };
        r.mem
            .write_obj(desc, GuestAddress(table + 16 * u64::from(i)))
            .unwrap();
    }
    r.header(T_IN, 0);
    r.submit_raw(&[d(table, 16 * u32::from(n), INDIRECT, 0)]);
    assert_eq!(r.status(), S_IOERR);
}

#[test]
fn garbage_avail_index_does_not_hang() {
    let mut r = rig(false);
    // avail.idx far ahead of what the device has seen: invalid, must not spin.
    r.mem
        .write_obj(0x8000u16, r.avail_addr.unchecked_add(2))
        .unwrap();
    let start = std::time::Instant::now();
    r.dev.process_queue();
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn bad_ids_are_refused() {
    let tmp = TempFile::new().unwrap();
    let e = Block::new(tmp.as_path(), false, Some("x".repeat(21).as_str()));
    assert!(e.is_err());
    let ok = Block::new(tmp.as_path(), false, Some("x".repeat(20).as_str())).unwrap();
    assert_eq!(ok.capacity_sectors(), 0);
}

#[test]
fn quiesce_completes_the_requests_the_workers_hold() {
    let mut r = rig(false);
    r.dev.always_hand_off = true;
    let len: u32 = 256 << 10;
    r.header(T_IN, 0);
    assert!(
        r.submit(&[(0x4_0000, len, true)]).is_empty(),
        "went to a worker"
    );
    r.dev.quiesce().unwrap();
    // No event-loop turn needed: the request is on the used ring when quiesce returns.
    assert_eq!(r.collect_used(), vec![(0, len + 1)]);
    assert_eq!(r.status(), S_OK);
}

#[test]
fn reads_into_guest_memory_mark_its_dirty_bitmap() {
    use vm_memory::bitmap::{AtomicBitmap, Bitmap};
    use vm_memory::GuestMemoryBackend;
    let mut r = rig(false);
    let bitmap = |mem: &GuestRam| -> AtomicBitmap {
        let region = mem.iter().next().unwrap();
        std::ops::Deref::deref(region).bitmap().clone()
    };
    bitmap(&r.mem).reset();
    // A cached read runs inline, an uncached one on a worker: both write guest memory behind
    // vm-memory's back (preadv into host iovecs) and must still show up.
    r.header(T_IN, 0);
    assert_eq!(r.submit(&[(0x4_0000, 4096, true)]).len(), 1);
    r.dev.always_hand_off = true;
    r.header(T_IN, 0);
    assert!(r.submit(&[(0x8_0000, 256 << 10, true)]).is_empty());
    assert_eq!(r.wait_jobs().len(), 1);
    let b = bitmap(&r.mem);
    assert!(b.dirty_at(0x4_0000) && b.dirty_at(0x8_0000) && b.dirty_at(0x8_0000 + (255 << 10)));
    assert!(b.dirty_at(STATUS as usize), "the status byte");
    assert!(b.dirty_at(0x2000), "the used ring");
    assert!(!b.dirty_at(0x6_0000), "a page nobody wrote");
}

#[test]
fn a_restore_refuses_a_disk_that_changed() {
    let r = rig(false);
    let saved = r.dev.save_state();
    // Same size: fine. Another size or read-only: refused. Another device's state: refused.
    let mut same = for_test(RawFile::open(&r.path, false).unwrap(), "disk-one");
    same.restore_state(&saved).unwrap();
    let mut ro = for_test(RawFile::open(&r.path, true).unwrap(), "disk-one");
    assert!(ro.restore_state(&saved).is_err());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&r.path)
        .unwrap()
        .set_len(DISK * 2)
        .unwrap();
    let mut bigger = for_test(RawFile::open(&r.path, false).unwrap(), "disk-one");
    let e = bigger.restore_state(&saved).unwrap_err();
    assert!(e.to_string().contains("give the same image"), "{e}");
    let other = crate::virtio::DeviceState::Vsock(crate::virtio::persist::VsockState { cid: 3 });
    assert!(same.restore_state(&other).is_err());
}
