//! `spin=rng,balloon,vsock` and `agent-flood`: workloads that never end, for the VMM tests of
//! issue 12 (a guest must not be able to hold the shared device loop or flood the host log).
//!
//! Each named device gets its queues set up as the VMM expects, then a `Spinner` keeps its
//! queue full for ever (`virtio/spinner.rs`); `agent-flood` calls AGENT_HELLO with a different
//! capability set each time (the host logs every change). Everything runs in one loop on vCPU 0,
//! which prints `SPIN <device> started ...` / `AGENT-FLOOD started` once and a progress line per
//! device about every 2 s. `agent-flood` obeys a power-off request (checked every 64 calls).

mod devices;

use crate::virtio::spinner::Spinner;
use crate::{clock, hypercall, power, serial};
use devices::SetupError;
use plainvm_guest_proto::request;

/// `spin=` bits.
pub const RNG: u8 = 1;
pub const BALLOON: u8 = 2;
pub const VSOCK: u8 = 4;

/// Progress lines this often.
const PROGRESS_MS: u64 = 2000;
/// AGENT_HELLO calls between two looks at PENDING.
const FLOOD_REQUEST_EVERY: u64 = 64;

/// The `spin=` names in `value` (comma-separated) as bits; warns about unknown names.
pub fn parse(value: &[u8]) -> u8 {
    let mut bits = 0;
    for name in value.split(|&c| c == b',').filter(|n| !n.is_empty()) {
        bits |= match name {
            b"rng" => RNG,
            b"balloon" => BALLOON,
            b"vsock" => VSOCK,
            _ => {
                serial::lock()
                    .s("cmdline: ignoring unknown spin device: ")
                    .bytes(name)
                    .s("\n");
                0
            }
        };
    }
    bits
}

/// Runs the workloads `spin` (bits) and `agent_flood` asked for; never returns. Powers off with
/// status 1 when none of them could start.
pub fn run(line: &[u8], spin: u8, agent_flood: bool) -> ! {
    let mut spinners: [Option<Spinner>; 4] = [None, None, None, None];
    if spin & RNG != 0 {
        spinners[0] = started("rng", devices::rng(line));
    }
    if spin & BALLOON != 0 {
        match devices::balloon(line) {
            Ok((inflate, reporting)) => {
                spinners[1] = started("balloon", Ok(inflate));
                spinners[2] = reporting;
                let yes = if spinners[2].is_some() { "yes" } else { "no" };
                serial::lock().s("SPIN balloon reporting=").s(yes).s("\n");
            }
            Err(e) => failed("balloon", e),
        }
    }
    if spin & VSOCK != 0 {
        spinners[3] = started("vsock", devices::vsock(line));
    }
    let mut flood = agent_flood.then(|| {
        serial::lock().s("AGENT-FLOOD started\n");
        Flood::default()
    });
    if flood.is_none() && spinners.iter().all(Option::is_none) {
        serial::lock().s("SPIN-NOTHING-STARTED\n");
        power::off(1);
    }
    let every = clock::ms_to_ticks(PROGRESS_MS);
    let mut next = clock::rdtsc().wrapping_add(every);
    loop {
        for s in spinners.iter_mut().flatten() {
            s.step();
        }
        if let Some(f) = &mut flood {
            f.step();
        }
        if clock::rdtsc().wrapping_sub(next) < u64::MAX / 2 {
            next = next.wrapping_add(every);
            for s in spinners.iter().flatten() {
                serial::lock()
                    .s("SPIN ")
                    .s(s.name)
                    .s(" published=")
                    .u(s.published)
                    .s(" used=")
                    .u(s.used)
                    .s(" kicks=")
                    .u(s.kicks)
                    .s("\n");
            }
            if let Some(f) = &flood {
                serial::lock()
                    .s("AGENT-FLOOD calls=")
                    .u(f.calls)
                    .s(" refused=")
                    .u(f.refused)
                    .s("\n");
            }
        }
    }
}

/// Prints `SPIN <name> started` (or why not) and hands the spinner on.
fn started(name: &str, r: Result<Spinner, SetupError>) -> Option<Spinner> {
    match r {
        Ok(s) => {
            serial::lock()
                .s("SPIN ")
                .s(name)
                .s(" started queue=")
                .s(s.name)
                .s("\n");
            Some(s)
        }
        Err(e) => {
            failed(name, e);
            None
        }
    }
}

fn failed(name: &str, e: SetupError) {
    let why = match e {
        SetupError::Missing => "no-device",
        SetupError::NoMemory => "out-of-dma-memory",
        SetupError::Virtio(e) => e.name(),
    };
    serial::lock()
        .s("SPIN ")
        .s(name)
        .s(" failed: ")
        .s(why)
        .s("\n");
}

/// AGENT_HELLO in a loop, the capability bits cycling through 0..=3.
#[derive(Default)]
struct Flood {
    calls: u64,
    refused: u64,
}

impl Flood {
    fn step(&mut self) {
        if hypercall::hello((self.calls % 4) as u32) != 0 {
            self.refused += 1;
        }
        self.calls += 1;
        if self.calls.is_multiple_of(FLOOD_REQUEST_EVERY) {
            if let Some((request::POWER_OFF, code)) = hypercall::take_request() {
                serial::lock().s("AGENT-FLOOD power-off requested\n");
                hypercall::exit(u64::from(code));
            }
        }
    }
}
