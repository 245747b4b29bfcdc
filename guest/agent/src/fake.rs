//! Test doubles: the real device model from plainvm-devices behind a register accessor that can
//! snapshot and restore the "VM" between any two register accesses, and a fake guest OS.

use crate::system::System;
use plainvm_devices::hypercall::{Hypercall, HypercallHost, HypercallState};
use plainvm_devices::BusDevice;
use plainvm_guest_proto::Registers;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// The host's wall clock before any restore; each restore moves it on by `RESTORE_STEP`.
pub const HOST_TIME: Duration = Duration::new(1_800_000_000, 250_000_000);
/// How far the host clock moves between a snapshot and its restore.
pub const RESTORE_STEP: Duration = Duration::from_secs(100);

/// Log lines and the last POWER call (reboot, code).
pub type Seen = (Vec<String>, Option<(bool, u8)>);

/// The VMM as the device sees it: records log lines and POWER, answers HOST_TIME with `time`.
#[derive(Clone)]
pub struct Host {
    pub seen: Arc<Mutex<Seen>>,
    time: Duration,
}

impl HypercallHost for Host {
    fn power(&mut self, reboot: bool, code: u8) {
        self.seen.lock().unwrap().1 = Some((reboot, code));
    }
    fn log(&mut self, line: &str) {
        self.seen.lock().unwrap().0.push(line.into());
    }
    fn wall_clock(&self) -> Duration {
        self.time
    }
}

/// The device page of one VM, with a snapshot + restore that can be armed to happen right after
/// the n-th register access: the restored VM gets a new device (arguments, results and STATUS
/// back to their reset values) and new shared state continued from the old one, exactly as
/// `plainvm restore` builds them (`HypercallState::continue_from`: generation + 1, a time sync
/// posted, all before the guest runs again).
pub struct Dev {
    dev: Hypercall,
    pub state: Arc<HypercallState>,
    pub host: Host,
    /// Register accesses so far.
    pub accesses: u64,
    restore_at: Option<u64>,
    /// Set once the armed restore happened (shared with `FakeOs` to tag clock sets).
    pub restored: Rc<Cell<bool>>,
}

impl Dev {
    /// A fresh VM.
    pub fn new() -> Self {
        let state = Arc::new(HypercallState::default());
        let host = Host {
            seen: Arc::default(),
            time: HOST_TIME,
        };
        Self {
            dev: Self::device(state.clone(), host.clone()),
            state,
            host,
            accesses: 0,
            restore_at: None,
            restored: Rc::default(),
        }
    }

    fn device(state: Arc<HypercallState>, host: Host) -> Hypercall {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        Hypercall::new(mem, state, Box::new(host))
    }

    /// Snapshot and restore right after the register access `n` from now (0: the next one).
    pub fn restore_after(&mut self, n: u64) {
        self.restore_at = Some(self.accesses + n + 1);
    }

    /// Snapshot the VM and restore it in a new VMM process, now.
    pub fn restore(&mut self) {
        let state = Arc::new(HypercallState::default());
        state.continue_from(self.state.generation(), self.state.agent());
        let host = Host {
            seen: Arc::default(),
            time: self.host.time + RESTORE_STEP,
        };
        self.dev = Self::device(state.clone(), host.clone());
        self.state = state;
        self.host = host;
        self.restored.set(true);
    }

    fn accessed(&mut self) {
        self.accesses += 1;
        if self.restore_at == Some(self.accesses) {
            self.restore_at = None;
            self.restore();
        }
    }
}

impl Registers for Dev {
    fn read32(&mut self, offset: u64) -> u32 {
        let mut b = [0; 4];
        self.dev.read(offset, &mut b);
        self.accessed();
        u32::from_le_bytes(b)
    }
    fn write32(&mut self, offset: u64, value: u32) {
        self.dev.write(offset, &value.to_le_bytes());
        self.accessed();
    }
}

/// The guest OS: records every clock set (time, whether it came after the armed restore).
#[derive(Default)]
pub struct FakeOs {
    pub clock_sets: Vec<(Duration, bool)>,
    /// `Dev::restored` of the VM this OS runs in.
    pub restored: Rc<Cell<bool>>,
    pub syncs: u32,
    pub drains: u32,
    pub stopped: bool,
}

impl FakeOs {
    /// An OS inside `dev`'s VM.
    pub fn on(dev: &Dev) -> Self {
        Self {
            restored: dev.restored.clone(),
            ..Self::default()
        }
    }

    /// The clock sets that happened after the restore.
    pub fn sets_after_restore(&self) -> Vec<Duration> {
        let after = self.clock_sets.iter().filter(|(_, after)| *after);
        after.map(|(t, _)| *t).collect()
    }
}

impl System for FakeOs {
    fn set_clock(&mut self, t: Duration) -> std::io::Result<Duration> {
        self.clock_sets.push((t, self.restored.get()));
        Ok(Duration::from_secs(10))
    }
    fn sync(&mut self) {
        self.syncs += 1;
    }
    fn drain_console(&mut self) {
        self.drains += 1;
    }
    fn stop_processes(&mut self) {
        self.stopped = true;
    }
    fn sleep(&mut self, _d: Duration) {}
    fn free_kib(&mut self) -> Option<u64> {
        Some(512)
    }
}
