//! Tests of saving and restoring whole virtio-mmio devices: a driver programs the transport's
//! registers, the device runs on a real event loop, and a fresh transport takes the saved state.

use super::rng::Rng;
use super::test_queue::TestQueue;
use super::{Interrupt, MmioTransport, PersistError, VirtioDevice, VirtioState};
use crate::bus::BusDevice;
use crate::GuestRam;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use std::sync::{Arc, Mutex};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

const QUEUE_BASE: u64 = 0x1000;
const QSIZE: u16 = 16;

fn mem() -> GuestRam {
    GuestRam::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

/// An rng device behind a transport, its event loop, and the interrupt's irqfd.
struct Rig {
    transport: MmioTransport,
    events: Loop,
    irq: EventFd,
}

fn rig(mem: &GuestRam) -> Rig {
    let rng = Rng::new().unwrap();
    let evts = rng.queue_evts().unwrap();
    let rng = Arc::new(Mutex::new(rng));
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let transport = MmioTransport::new(
        rng.clone(),
        mem.clone(),
        Interrupt::new(irq.try_clone().unwrap()),
        evts,
    );
    let mut events = Loop::new().unwrap();
    events.add_subscriber(rng);
    Rig {
        transport,
        events,
        irq,
    }
}

fn reg(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

fn read_reg(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// What a driver does to bring up queue 0 at `QUEUE_BASE` (TestQueue's layout).
fn driver_activates(t: &mut MmioTransport) {
    reg(t, 0x70, 1 | 2); // ACKNOWLEDGE | DRIVER
    reg(t, 0x24, 1);
    reg(t, 0x20, 1); // VERSION_1 (feature bit 32)
    reg(t, 0x24, 0);
    reg(t, 0x20, 0);
    reg(t, 0x70, 1 | 2 | 8); // FEATURES_OK
    reg(t, 0x30, 0);
    reg(t, 0x38, u32::from(QSIZE));
    reg(t, 0x80, QUEUE_BASE as u32);
    reg(t, 0x90, (QUEUE_BASE + 0x400) as u32);
    reg(t, 0xa0, (QUEUE_BASE + 0x800) as u32);
    reg(t, 0x44, 1);
    reg(t, 0x70, 1 | 2 | 8 | 4); // DRIVER_OK
    assert_eq!(
        read_reg(t, 0x70),
        1 | 2 | 8 | 4,
        "the device accepted the driver"
    );
}

fn turn(events: &mut Loop) {
    for _ in 0..3 {
        let _ = events.run_with_timeout(20);
    }
}

#[test]
fn a_restored_device_continues_where_the_saved_one_stopped() {
    let mem = mem();
    let mut a = rig(&mem);
    let mut tq = TestQueue::new(&mem, QUEUE_BASE, QSIZE);
    driver_activates(&mut a.transport);
    tq.add(&mem, &[(0x8000, 32, true)]);
    turn(&mut a.events);
    assert_eq!(tq.used(&mem), vec![(0, 32)], "served on the event loop");
    // A second request is queued but not served before the VM is saved.
    tq.add(&mem, &[(0x9000, 32, true)]);
    let saved = a.transport.save();
    assert!(saved.active);
    assert_eq!(
        (saved.queues[0].next_avail, saved.queues[0].next_used),
        (1, 1)
    );
    assert_eq!(
        saved.interrupt_status, 1,
        "the first completion's interrupt is pending"
    );

    // A new transport (a new process) takes the state; the queued request is served once its
    // event loop runs, the pending interrupt is raised again.
    let mut b = rig(&mem);
    b.transport.restore(&saved).unwrap();
    assert_eq!(read_reg(&mut b.transport, 0x70), 1 | 2 | 8 | 4);
    assert_eq!(read_reg(&mut b.transport, 0x60), 1);
    assert!(b.irq.read().is_ok(), "the pending interrupt was signalled");
    turn(&mut b.events);
    assert_eq!(tq.used(&mem), vec![(0, 32), (1, 32)]);
    let again = b.transport.save();
    assert_eq!(again.queues[0].next_used, 2);
}

#[test]
fn a_device_saved_before_the_driver_finished_restores_unconfigured() {
    let mem = mem();
    let mut a = rig(&mem);
    reg(&mut a.transport, 0x70, 1 | 2);
    reg(&mut a.transport, 0x38, 8);
    let saved = a.transport.save();
    assert!(!saved.active);
    let mut b = rig(&mem);
    b.transport.restore(&saved).unwrap();
    assert_eq!(read_reg(&mut b.transport, 0x70), 1 | 2);
    assert_eq!(b.transport.save(), saved);
}

#[test]
fn a_restore_refuses_state_that_does_not_fit_and_changes_nothing() {
    let mem = mem();
    let mut a = rig(&mem);
    let _tq = TestQueue::new(&mem, QUEUE_BASE, QSIZE);
    driver_activates(&mut a.transport);
    let good = a.transport.save();
    let refused = |s: VirtioState| -> PersistError {
        let mut b = rig(&mem);
        let e = b.transport.restore(&s).unwrap_err();
        assert_eq!(
            read_reg(&mut b.transport, 0x70),
            0,
            "nothing was taken: {e}"
        );
        e
    };
    let mut s = good.clone();
    s.device_type = 2;
    assert!(matches!(refused(s), PersistError::WrongDevice { .. }));
    let mut s = good.clone();
    s.driver_features |= 1 << 40;
    assert!(matches!(refused(s), PersistError::Features { .. }));
    let mut s = good.clone();
    s.queues.push(s.queues[0]);
    assert!(matches!(refused(s), PersistError::QueueCount { .. }));
    let mut s = good.clone();
    s.queues[0].size = 512; // above the device's maximum
    assert!(matches!(refused(s), PersistError::BadQueue(0)));
    let mut s = good.clone();
    s.queues[0].used_ring = 0xff_f000; // rings outside guest memory
    assert!(matches!(refused(s), PersistError::BadQueue(0)));
    let mut s = good;
    s.queues[0].ready = false; // an active device needs its queues ready
    assert!(matches!(refused(s), PersistError::BadQueue(0)));
}

#[test]
fn a_restored_vsock_device_tells_the_driver_its_connections_are_gone() {
    use super::vsock::Vsock;
    let dir = std::env::temp_dir().join(format!("plainvm-persist-vsock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mem = mem();
    let make = |name: &str| {
        let dev = Vsock::new(3, &dir.join(name)).unwrap();
        let evts = dev.queue_evts().unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let t = MmioTransport::new(
            dev.clone(),
            mem.clone(),
            Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()),
            evts,
        );
        let mut events = Loop::new().unwrap();
        events.add_subscriber(dev);
        (t, events)
    };
    let (mut t, _events) = make("a.sock");
    reg(&mut t, 0x70, 1 | 2);
    reg(&mut t, 0x24, 1);
    reg(&mut t, 0x20, 1);
    reg(&mut t, 0x70, 1 | 2 | 8);
    let mut queues = Vec::new();
    for q in 0..3u32 {
        let base = 0x1_0000 * u64::from(q + 1);
        queues.push(TestQueue::new(&mem, base, QSIZE));
        reg(&mut t, 0x30, q);
        reg(&mut t, 0x38, u32::from(QSIZE));
        reg(&mut t, 0x80, base as u32);
        reg(&mut t, 0x90, (base + 0x400) as u32);
        reg(&mut t, 0xa0, (base + 0x800) as u32);
        reg(&mut t, 0x44, 1);
    }
    reg(&mut t, 0x70, 1 | 2 | 8 | 4);
    // The driver keeps buffers on the event queue for the device's events.
    queues[2].add(&mem, &[(0x8_0000, 8, true)]);
    let saved = t.save();

    let (mut t2, mut events2) = make("b.sock");
    t2.restore(&saved).unwrap();
    turn(&mut events2);
    assert_eq!(queues[2].used(&mem), vec![(0, 4)]);
    let mut id = [0xffu8; 4];
    vm_memory::Bytes::read_slice(&mem, &mut id, GuestAddress(0x8_0000)).unwrap();
    assert_eq!(
        u32::from_le_bytes(id),
        0,
        "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET"
    );
    // A vsock device of another CID does not take the state.
    let other = Vsock::new(4, &dir.join("c.sock")).unwrap();
    let mut other: Box<dyn VirtioDevice> = Box::new(other);
    assert!(other.restore_state(&saved.device).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn feature_bits_written_after_features_ok_are_ignored_and_the_device_still_round_trips() {
    let mem = mem();
    let mut a = rig(&mem);
    driver_activates(&mut a.transport);
    // A hostile driver: every feature bit, after FEATURES_OK and DRIVER_OK; and an attempt to
    // drop FEATURES_OK to renegotiate.
    reg(&mut a.transport, 0x24, 0);
    reg(&mut a.transport, 0x20, u32::MAX);
    reg(&mut a.transport, 0x24, 1);
    reg(&mut a.transport, 0x20, u32::MAX);
    reg(&mut a.transport, 0x70, 1 | 2);
    reg(&mut a.transport, 0x20, u32::MAX);
    assert_eq!(read_reg(&mut a.transport, 0x70), 1 | 2 | 8 | 4);
    let saved = a.transport.save();
    assert_eq!(saved.driver_features, 1 << 32, "only VERSION_1, as acked");
    let mut b = rig(&mem);
    b.transport.restore(&saved).unwrap();

    // Unoffered bits written during negotiation: FEATURES_OK fails, and a snapshot taken then
    // still restores (into the same failed negotiation).
    let mut c = rig(&mem);
    reg(&mut c.transport, 0x70, 1 | 2);
    reg(&mut c.transport, 0x24, 1);
    reg(&mut c.transport, 0x20, u32::MAX);
    reg(&mut c.transport, 0x70, 1 | 2 | 8);
    assert_eq!(
        read_reg(&mut c.transport, 0x70) & 8,
        0,
        "FEATURES_OK refused"
    );
    let saved = c.transport.save();
    let mut d = rig(&mem);
    d.transport.restore(&saved).unwrap();
}
