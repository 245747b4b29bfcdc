//! Unit tests of the net device with a driver-side mock queue: good frames both ways, and hostile
//! descriptor chains that must be refused (counted, returned unused) without a panic or a hang.

use super::device::{ChainError, Net};
use super::tx_ring::TxRing;
use super::{MacAddr, Tap, HDR_LEN};
use crate::virtio::{Interrupt, VirtioDevice};
use crate::GuestRam;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: u64 = 0x10_0000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const BUF: u64 = 0x8_0000;

struct Rig {
    mem: GuestRam,
    net: Net,
    /// The host side of the "tap".
    peer: File,
    /// The device's interrupt eventfd.
    irq: EventFd,
}

/// A device on a SOCK_SEQPACKET pair (one frame per read, like a tap), activated with the queues
/// of `rx` and `tx`.
fn rig(mem: &GuestRam, rx: &MockSplitQueue<GuestRam>, tx: &MockSplitQueue<GuestRam>) -> Rig {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into the two-element array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (a, b) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let mut net = Net::new(Tap::from_file(a, "test0"), MacAddr([2, 0, 0, 0, 0, 1])).unwrap();
    let queues: Vec<Queue> = vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()];
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    net.activate(
        mem.clone(),
        queues,
        Interrupt::new(irq.try_clone().unwrap()),
    )
    .unwrap();
    Rig {
        mem: mem.clone(),
        net,
        peer: b,
        irq,
    }
}

fn memory() -> GuestRam {
    GuestRam::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

fn used(q: &MockSplitQueue<GuestRam>) -> Vec<(u32, u32)> {
    let n = q.used().idx().load();
    (0..n)
        .map(|i| {
            let e = q.used().ring().ref_at(usize::from(i)).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}

fn peer_frames(peer: &mut File) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 70000];
    while let Ok(n) = peer.read(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

#[test]
fn transmits_a_frame_with_its_header_cleared() {
    let mem = memory();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    let txq = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
    let mut r = rig(&mem, &rxq, &txq);
    let mut hdr = [0u8; HDR_LEN];
    hdr[0] = 1; // NEEDS_CSUM, not negotiated: must not reach the tap
    hdr[1] = 4; // GSO_TCPV6
    mem.write_slice(&hdr, GuestAddress(BUF)).unwrap();
    let frame: Vec<u8> = (0..60u8).collect();
    mem.write_slice(&frame, GuestAddress(BUF + 0x100)).unwrap();
    txq.add_desc_chains(
        &[
            desc(BUF, HDR_LEN as u32, F_NEXT, 1),
            desc(BUF + 0x100, 60, 0, 0),
        ],
        0,
    )
    .unwrap();
    r.net.process_tx();
    let got = peer_frames(&mut r.peer);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0][..HDR_LEN], &[0u8; HDR_LEN]);
    assert_eq!(&got[0][HDR_LEN..], &frame[..]);
    assert_eq!(used(&txq), vec![(0, 0)]);
    assert_eq!(r.net.stats().tx_frames, 1);
    // The queue is drained: the driver must kick again next time (VRING_USED_F_NO_NOTIFY clear).
    let flags: u16 = r.mem.read_obj(txq.used_addr()).unwrap();
    assert_eq!(flags, 0);
}

/// 70 chains, one of them malformed: two full batches of `BATCH` (32) and a partial one. (A
/// 256-entry queue: virtio-queue's mock puts the used ring over the second half of the available
/// ring.)
fn transmit_a_full_queue(r: &mut Rig, txq: &MockSplitQueue<GuestRam>) {
    let mut chains = Vec::new();
    for i in 0..70u64 {
        let addr = BUF + i * 0x100;
        let mut b = vec![0xeeu8; HDR_LEN];
        b.extend((0..80).map(|j| (i as u8).wrapping_add(j)));
        r.mem.write_slice(&b, GuestAddress(addr)).unwrap();
        // Chain 40 is device-writable: refused, returned unused, the rest still go out.
        let flags = if i == 40 { F_WRITE } else { 0 };
        chains.push(desc(addr, b.len() as u32, flags, 0));
    }
    txq.add_desc_chains(&chains, 0).unwrap();
    r.net.process_tx();
    let got = peer_frames(&mut r.peer);
    let want: Vec<u64> = (0..70).filter(|&i| i != 40).collect();
    assert_eq!(got.len(), want.len());
    for (f, i) in got.iter().zip(want) {
        assert_eq!(&f[..HDR_LEN], &[0u8; HDR_LEN]);
        assert_eq!(f[HDR_LEN], i as u8, "frames go out in queue order");
        assert_eq!(f.len(), HDR_LEN + 80);
    }
    let u = used(txq);
    assert_eq!(
        u,
        (0..70).map(|i| (i, 0)).collect::<Vec<_>>(),
        "returned in order"
    );
    let s = r.net.stats();
    assert_eq!(
        (s.tx_frames, s.tx_dropped, s.bad_chains),
        (69, 0, 1),
        "{s:?}"
    );
}

/// `transmit_a_full_queue` on a device with a 256-entry transmit queue, through `ring` if given;
/// returns whether the device used io_uring.
fn transmit_a_full_queue_with(ring: Option<TxRing>) -> bool {
    let mem = memory();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    let txq = MockSplitQueue::create(&mem, GuestAddress(0x4000), 256);
    let mut r = rig(&mem, &rxq, &txq);
    if let Some(ring) = ring {
        *r.net.tx_ring_mut() = ring;
    }
    transmit_a_full_queue(&mut r, &txq);
    r.net.tx_ring_mut().uses_io_uring()
}

#[test]
fn a_full_queue_goes_out_in_batches_through_io_uring() {
    let used_io_uring = transmit_a_full_queue_with(None);
    // Where this kernel lets a process make an io_uring, the device used one.
    if io_uring::IoUring::new(4).is_ok() {
        assert!(used_io_uring);
    }
}

#[test]
fn a_full_queue_goes_out_with_plain_writes_without_io_uring() {
    assert!(!transmit_a_full_queue_with(
        Some(TxRing::without_io_uring())
    ));
}

#[test]
fn a_header_sharing_or_straddling_buffers_is_cleared_too() {
    let mem = memory();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    let txq = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
    let mut r = rig(&mem, &rxq, &txq);
    // Header and frame in one buffer; then a header split 5 + 7 across two buffers, the second
    // also holding the frame.
    let mut one = vec![0xeeu8; HDR_LEN];
    one.extend(0..40u8);
    mem.write_slice(&one, GuestAddress(BUF)).unwrap();
    mem.write_slice(&one, GuestAddress(BUF + 0x200)).unwrap();
    txq.add_desc_chains(
        &[
            desc(BUF, one.len() as u32, 0, 0),
            desc(BUF + 0x200, 5, F_NEXT, 2),
            desc(BUF + 0x205, one.len() as u32 - 5, 0, 0),
        ],
        0,
    )
    .unwrap();
    r.net.process_tx();
    let got = peer_frames(&mut r.peer);
    assert_eq!(got.len(), 2);
    for f in got {
        assert_eq!(&f[..HDR_LEN], &[0u8; HDR_LEN]);
        assert_eq!(&f[HDR_LEN..], &one[HDR_LEN..]);
    }
}

#[test]
fn receives_a_frame_and_waits_for_buffers() {
    let mem = memory();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    let txq = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
    let mut r = rig(&mem, &rxq, &txq);
    let mut frame = vec![0u8; HDR_LEN];
    frame.extend((0..100).map(|i| i as u8 ^ 0x5a));
    r.peer.write_all(&frame).unwrap();
    // No receive buffers yet: the frame waits.
    r.net.tap_ready();
    assert_eq!(r.net.stats().rx_frames, 0);
    // Waiting for buffers: the driver's kick must be asked for.
    let flags: u16 = r.mem.read_obj(rxq.used_addr()).unwrap();
    assert_eq!(flags, 0);
    // A buffer split in two pieces.
    rxq.add_desc_chains(
        &[
            desc(BUF, 50, F_WRITE | F_NEXT, 1),
            desc(BUF + 0x1000, 2000, F_WRITE, 0),
        ],
        0,
    )
    .unwrap();
    r.net.tap_ready();
    assert_eq!(used(&rxq), vec![(0, frame.len() as u32)]);
    let mut got = vec![0u8; frame.len()];
    r.mem.read_slice(&mut got[..50], GuestAddress(BUF)).unwrap();
    r.mem
        .read_slice(&mut got[50..], GuestAddress(BUF + 0x1000))
        .unwrap();
    assert_eq!(&got[HDR_LEN..], &frame[HDR_LEN..]);
    assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers must be 1");
    assert_eq!(r.net.stats().rx_frames, 1);
}

#[test]
fn hostile_transmit_chains_are_refused() {
    let mem = memory();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    let txq = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
    let mut r = rig(&mem, &rxq, &txq);
    let cases: Vec<(Vec<RawDescriptor>, ChainError)> = vec![
        (vec![desc(BUF, 100, F_WRITE, 0)], ChainError::WritableInTx),
        (
            vec![desc(MEM_SIZE - 10, 100, 0, 0)],
            ChainError::OutsideMemory {
                addr: MEM_SIZE - 10,
                len: 100,
            },
        ),
        (
            vec![desc(u64::MAX - 5, 100, 0, 0)],
            ChainError::OutsideMemory {
                addr: u64::MAX - 5,
                len: 100,
            },
        ),
        (vec![desc(BUF, u32::MAX, 0, 0)], ChainError::TooLong),
        (vec![desc(BUF, 4, 0, 0)], ChainError::TooShort(4)),
    ];
    for (i, (chain, want)) in cases.into_iter().enumerate() {
        txq.add_desc_chains(&chain, i as u16).unwrap();
        r.net.process_tx();
        assert_eq!(r.net.last_error(), Some(&want), "case {i}");
        assert_eq!(used(&txq).len(), i + 1, "case {i}: chain must be returned");
    }
    // A descriptor that points at itself: the walk ends (bounded by the queue size), the chain is
    // too short to carry a header and is refused.
    txq.add_desc_chains(&[desc(BUF, 0, F_NEXT, 5)], 5).unwrap();
    r.net.process_tx();
    assert_eq!(used(&txq).len(), 6);
    assert_eq!(r.net.stats().bad_chains, 6);
    assert!(peer_frames(&mut r.peer).is_empty());
    assert_eq!(r.net.stats().tx_frames, 0);
}

#[test]
fn hostile_receive_chains_are_refused_and_the_frame_survives() {
    let mem = memory();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    let txq = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
    let mut r = rig(&mem, &rxq, &txq);
    let frame = vec![7u8; HDR_LEN + 200];
    r.peer.write_all(&frame).unwrap();
    let bad: Vec<(Vec<RawDescriptor>, ChainError)> = vec![
        (vec![desc(BUF, 4096, 0, 0)], ChainError::ReadableInRx),
        (
            vec![desc(MEM_SIZE - 100, 4096, F_WRITE, 0)],
            ChainError::OutsideMemory {
                addr: MEM_SIZE - 100,
                len: 4096,
            },
        ),
        (
            vec![desc(u64::MAX - 1, 4096, F_WRITE, 0)],
            ChainError::OutsideMemory {
                addr: u64::MAX - 1,
                len: 4096,
            },
        ),
    ];
    for (i, (chain, want)) in bad.into_iter().enumerate() {
        rxq.add_desc_chains(&chain, i as u16).unwrap();
        r.net.tap_ready();
        assert_eq!(r.net.last_error(), Some(&want), "case {i}");
        assert_eq!(used(&rxq)[i], (i as u32, 0), "case {i}");
        assert_eq!(r.net.stats().rx_frames, 0);
    }
    // A self-referencing writable descriptor: bounded walk, then the frame lands in it.
    rxq.add_desc_chains(&[desc(BUF, 16, F_WRITE | F_NEXT, 3)], 3)
        .unwrap();
    r.net.tap_ready();
    assert_eq!(r.net.stats().rx_frames, 1, "{:?}", r.net.stats());
    assert_eq!(used(&rxq)[3], (3, frame.len() as u32));
}

#[test]
fn frames_larger_than_the_buffers_are_dropped_and_the_buffers_kept() {
    let mem = memory();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    let txq = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
    let mut r = rig(&mem, &rxq, &txq);
    r.peer.write_all(&vec![1u8; HDR_LEN + 3000]).unwrap();
    r.peer.write_all(&vec![2u8; HDR_LEN + 1000]).unwrap();
    rxq.add_desc_chains(&[desc(BUF, 1600, F_WRITE, 0)], 0)
        .unwrap();
    r.net.tap_ready();
    let s = r.net.stats();
    assert_eq!((s.rx_dropped, s.rx_frames), (1, 1), "{s:?}");
    assert_eq!(used(&rxq), vec![(0, (HDR_LEN + 1000) as u32)]);
    let mut b = [0u8; 1];
    r.mem.read_slice(&mut b, GuestAddress(BUF + 20)).unwrap();
    assert_eq!(b[0], 2);
}

#[test]
fn a_broken_avail_index_is_survived() {
    let mem = memory();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    let txq = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
    let mut r = rig(&mem, &rxq, &txq);
    // avail.idx claims 1000 new entries in a 16-entry ring.
    txq.avail().idx().store(1000);
    rxq.avail().idx().store(1000);
    r.peer.write_all(&[0u8; 64]).unwrap();
    r.net.process_tx();
    r.net.tap_ready();
    assert_eq!(used(&txq).len(), 0);
    assert_eq!(r.net.stats().tx_frames, 0);
}

#[test]
fn a_polling_driver_gets_no_interrupts() {
    let mem = memory();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    let txq = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
    let mut r = rig(&mem, &rxq, &txq);
    let frame = [0u8; HDR_LEN + 60];
    mem.write_slice(&frame, GuestAddress(BUF)).unwrap();
    // VRING_AVAIL_F_NO_INTERRUPT set: the frame goes out, no interrupt.
    mem.write_obj(1u16, txq.avail_addr()).unwrap();
    txq.add_desc_chains(&[desc(BUF, frame.len() as u32, 0, 0)], 0)
        .unwrap();
    r.net.process_tx();
    assert_eq!(r.net.stats().tx_frames, 1);
    assert!(r.irq.read().is_err(), "interrupt despite NO_INTERRUPT");
    // Flag cleared: the next completion interrupts.
    mem.write_obj(0u16, txq.avail_addr()).unwrap();
    txq.add_desc_chains(&[desc(BUF, frame.len() as u32, 0, 0)], 1)
        .unwrap();
    r.net.process_tx();
    assert_eq!(r.irq.read().unwrap(), 1);
}

#[test]
fn received_frames_mark_the_pages_they_land_in_dirty() {
    use vm_memory::bitmap::{AtomicBitmap, Bitmap};
    use vm_memory::GuestMemoryBackend;
    let mem = memory();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    let txq = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
    let mut r = rig(&mem, &rxq, &txq);
    let bitmap = |mem: &GuestRam| -> AtomicBitmap {
        let region = mem.iter().next().unwrap();
        std::ops::Deref::deref(region).bitmap().clone()
    };
    bitmap(&r.mem).reset();
    // The frame is read straight into guest memory (readv), behind vm-memory's back; a buffer
    // that starts 100 bytes before a page boundary puts it on two pages.
    let start = BUF + 0x1000 - 100;
    rxq.add_desc_chains(&[desc(start, 2048, F_WRITE, 0)], 0)
        .unwrap();
    r.peer.write_all(&vec![9u8; HDR_LEN + 1000]).unwrap();
    r.net.tap_ready();
    assert_eq!(used(&rxq), vec![(0, (HDR_LEN + 1000) as u32)]);
    let b = bitmap(&r.mem);
    assert!(b.dirty_at(start as usize), "the page with the header");
    assert!(
        b.dirty_at((BUF + 0x1000) as usize),
        "the page with the rest of the frame"
    );
    assert!(
        !b.dirty_at((BUF + 0x2000) as usize),
        "a page of the buffer the frame did not reach"
    );
    let mut hdr = [0xffu8; HDR_LEN];
    r.mem.read_slice(&mut hdr, GuestAddress(start)).unwrap();
    assert_eq!(
        hdr,
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        "our header over the tap's"
    );
}

#[test]
fn a_tap_at_end_of_file_is_left_alone_instead_of_polled() {
    let mem = memory();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    let txq = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
    let Rig { mut net, peer, .. } = rig(&mem, &rxq, &txq);
    let rx_evt = net.queue_evts().unwrap().remove(0);
    rxq.add_desc_chains(&[desc(BUF, 2048, F_WRITE, 0)], 0)
        .unwrap();
    drop(peer); // reads now return 0 bytes, forever
    net.tap_ready();
    assert!(used(&rxq).is_empty(), "the buffer stays the guest's");
    assert!(
        rx_evt.read().is_err(),
        "the device kicked itself to read an empty tap again"
    );
}
