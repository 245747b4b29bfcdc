//! The protocol logic of each subcommand, over any register accessor and any `System`.

use crate::args::Command;
use crate::system::System;
use plainvm_guest_proto::call::{join, split};
use plainvm_guest_proto::{agent, call, nr, power, regs, request, Error, Registers, LOG_MAX};
use std::time::Duration;

/// Errors running a command.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{what} failed: {}", .err.describe())]
    Call { what: &'static str, err: Error },
    #[error("cannot set the clock: {0}")]
    Clock(std::io::Error),
}

fn hc<R: Registers>(
    r: &mut R,
    what: &'static str,
    n: u32,
    a: [u32; 4],
) -> Result<[u32; 4], CommandError> {
    call(r, n, a).map_err(|err| CommandError::Call { what, err })
}

/// Run `cmd`.
pub fn run<R: Registers, S: System>(
    r: &mut R,
    sys: &mut S,
    cmd: Command,
) -> Result<(), CommandError> {
    match cmd {
        Command::Mark(stage) => hc(r, "mark", nr::BOOT_MARK, [stage, 0, 0, 0]).map(drop),
        Command::Power { reboot, code } => power_off(r, sys, reboot, code),
        Command::TimeSync => time_sync(r, sys).map(drop),
        Command::Watch { interval_ms } => watch(r, sys, Duration::from_millis(interval_ms.into())),
        Command::Log(text) => log(r, &text).map(drop),
        Command::Heartbeat { interval_ms } => {
            hc(r, "heartbeat", nr::HEARTBEAT, [interval_ms, 0, 0, 0]).map(drop)
        }
        Command::Version => {
            let v = hc(r, "version", nr::VERSION, [0; 4])?;
            println!(
                "plainvm hypercall interface version {}, calls {:#x}",
                v[0], v[1]
            );
            Ok(())
        }
    }
}

/// Sync, then POWER: the VM stops (the call returns only in tests).
pub fn power_off<R: Registers, S: System>(
    r: &mut R,
    sys: &mut S,
    reboot: bool,
    code: u8,
) -> Result<(), CommandError> {
    sys.sync();
    let action = if reboot { power::REBOOT } else { power::OFF };
    hc(r, "poweroff", nr::POWER, [action, code.into(), 0, 0]).map(drop)
}

/// Set the clock from HOST_TIME; returns (new, previous) time since the epoch.
pub fn time_sync<R: Registers, S: System>(
    r: &mut R,
    sys: &mut S,
) -> Result<(Duration, Duration), CommandError> {
    let t = hc(r, "time-sync", nr::HOST_TIME, [0; 4])?;
    let host = Duration::new(join(t[0], t[1]), t[2]);
    let before = sys.set_clock(host).map_err(CommandError::Clock)?;
    println!(
        "plainvm-guest: time-sync: clock set to {}.{:03} (was {}, off by {} s)",
        host.as_secs(),
        host.subsec_millis(),
        before.as_secs(),
        host.as_secs() as i128 - before.as_secs() as i128
    );
    Ok((host, before))
}

/// Copy `text` (truncated to LOG_MAX bytes) into the TEXT window and LOG_TEXT it.
pub fn log<R: Registers>(r: &mut R, text: &str) -> Result<u32, CommandError> {
    let bytes = &text.as_bytes()[..text.len().min(LOG_MAX as usize)];
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        r.write32(regs::TEXT + 4 * i as u64, u32::from_le_bytes(w));
    }
    Ok(hc(r, "log", nr::LOG_TEXT, [bytes.len() as u32, 0, 0, 0])?[0])
}

/// What a watch round decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    PowerOff(u8),
    Reboot(u8),
}

/// The watch loop's memory between rounds.
#[derive(Debug, Default)]
pub struct WatchState {
    pub generation: u32,
    pub rounds: u64,
    pub syncs: u64,
}

/// Announce, sync the clock, then run rounds until the host asks for a power-off or reboot.
pub fn watch<R: Registers, S: System>(
    r: &mut R,
    sys: &mut S,
    interval: Duration,
) -> Result<(), CommandError> {
    let gen = hc(
        r,
        "watch: announce",
        nr::AGENT_HELLO,
        [agent::POWER | agent::TIME_SYNC, 0, 0, 0],
    )?[0];
    println!(
        "plainvm-guest: watching (generation {gen}, every {} ms)",
        interval.as_millis()
    );
    let mut st = WatchState {
        generation: gen,
        ..Default::default()
    };
    time_sync(r, sys)?;
    loop {
        if let Some(stop) = watch_round(r, sys, &mut st, interval)? {
            let (reboot, code) = match stop {
                Stop::PowerOff(c) => (false, c),
                Stop::Reboot(c) => (true, c),
            };
            println!(
                "plainvm-guest: host asked to {} (code {code}): stopping processes",
                if reboot { "reboot" } else { "power off" }
            );
            sys.stop_processes();
            return power_off(r, sys, reboot, code);
        }
        sys.sleep(interval);
    }
}

/// One round: heartbeat, memory hint (every 30 rounds), generation, pending requests.
pub fn watch_round<R: Registers, S: System>(
    r: &mut R,
    sys: &mut S,
    st: &mut WatchState,
    interval: Duration,
) -> Result<Option<Stop>, CommandError> {
    // The VMM reports us when we are silent for 5 rounds (at least 1 s).
    let beat = (interval.as_millis() as u32).saturating_mul(5).max(1000);
    hc(r, "heartbeat", nr::HEARTBEAT, [beat, 0, 0, 0])?;
    if st.rounds.is_multiple_of(30) {
        if let Some(kib) = sys.free_kib() {
            let (lo, hi) = split(kib);
            // A hint the VMM refuses (e.g. more than RAM) is not worth stopping for.
            let _ = call(r, nr::MEM_HINT, [lo, hi, 0, 0]);
        }
    }
    st.rounds += 1;
    // A restore both bumps the generation and posts a time sync: one sync answers both.
    let mut synced = false;
    let g = r.read32(regs::GENERATION);
    if g != st.generation {
        println!(
            "plainvm-guest: generation {} -> {g}: resyncing the clock",
            st.generation
        );
        st.generation = g;
        time_sync(r, sys)?;
        st.syncs += 1;
        synced = true;
    }
    while r.read32(regs::PENDING) != 0 {
        let [kind, arg, _id, _] = hc(r, "request", nr::REQUEST, [0; 4])?;
        let code = u8::try_from(arg).unwrap_or(u8::MAX);
        match kind {
            request::NONE => break,
            request::POWER_OFF => return Ok(Some(Stop::PowerOff(code))),
            request::REBOOT => return Ok(Some(Stop::Reboot(code))),
            request::TIME_SYNC if !synced => {
                time_sync(r, sys)?;
                st.syncs += 1;
                synced = true;
            }
            request::TIME_SYNC => {}
            other => eprintln!("plainvm-guest: ignoring unknown host request {other}"),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    //! The agent against the real device model from plainvm-devices.
    use super::*;
    use plainvm_devices::hypercall::{Hypercall, HypercallHost, HypercallState, RequestKind};
    use plainvm_devices::BusDevice;
    use std::sync::{Arc, Mutex};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    /// Log lines and the last POWER call (reboot, code).
    type Seen = (Vec<String>, Option<(bool, u8)>);

    #[derive(Clone, Default)]
    struct Host(Arc<Mutex<Seen>>);
    impl HypercallHost for Host {
        fn power(&mut self, reboot: bool, code: u8) {
            self.0.lock().unwrap().1 = Some((reboot, code));
        }
        fn log(&mut self, line: &str) {
            self.0.lock().unwrap().0.push(line.into());
        }
        fn wall_clock(&self) -> Duration {
            Duration::new(1_800_000_000, 250_000_000)
        }
    }

    struct Dev(Hypercall);
    impl Registers for Dev {
        fn read32(&mut self, offset: u64) -> u32 {
            let mut b = [0; 4];
            self.0.read(offset, &mut b);
            u32::from_le_bytes(b)
        }
        fn write32(&mut self, offset: u64, value: u32) {
            self.0.write(offset, &value.to_le_bytes());
        }
    }

    #[derive(Default)]
    struct FakeOs {
        clock: Option<Duration>,
        syncs: u32,
        stopped: bool,
    }
    impl System for FakeOs {
        fn set_clock(&mut self, t: Duration) -> std::io::Result<Duration> {
            self.clock = Some(t);
            Ok(Duration::from_secs(10))
        }
        fn sync(&mut self) {
            self.syncs += 1;
        }
        fn stop_processes(&mut self) {
            self.stopped = true;
        }
        fn sleep(&mut self, _d: Duration) {}
        fn free_kib(&mut self) -> Option<u64> {
            Some(512)
        }
    }

    fn setup() -> (Dev, Arc<HypercallState>, Host) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let state = Arc::new(HypercallState::default());
        let host = Host::default();
        let dev = Hypercall::new(mem, state.clone(), Box::new(host.clone()));
        (Dev(dev), state, host)
    }

    #[test]
    fn mark_log_time_sync_and_power_reach_the_device() {
        let (mut d, state, host) = setup();
        let mut os = FakeOs::default();
        run(&mut d, &mut os, Command::Mark(3)).unwrap();
        assert_eq!(state.marks()[0].stage, 3);
        assert_eq!(log(&mut d, "hello agent").unwrap(), 11);
        assert_eq!(log(&mut d, &"y".repeat(600)).unwrap(), LOG_MAX);
        let (now, before) = time_sync(&mut d, &mut os).unwrap();
        assert_eq!(now, Duration::new(1_800_000_000, 250_000_000));
        assert_eq!((os.clock, before), (Some(now), Duration::from_secs(10)));
        run(
            &mut d,
            &mut os,
            Command::Power {
                reboot: false,
                code: 3,
            },
        )
        .unwrap();
        assert_eq!(os.syncs, 1, "synced before POWER");
        let h = host.0.lock().unwrap();
        assert_eq!(h.1, Some((false, 3)));
        assert!(h.0.contains(&"guest: hello agent".to_string()), "{:?}", h.0);
    }

    #[test]
    fn watch_follows_generation_and_obeys_requests() {
        let (mut d, state, host) = setup();
        let mut os = FakeOs::default();
        let mut st = WatchState::default();
        let i = Duration::from_millis(100);
        assert_eq!(watch_round(&mut d, &mut os, &mut st, i).unwrap(), None);
        assert_eq!(state.snapshot().heartbeats, 1);
        assert_eq!(state.snapshot().free_memory_kib, Some(512));
        // A restore bumps the generation and posts a time sync: the clock is resynced, once.
        state.bump_generation();
        assert_eq!(watch_round(&mut d, &mut os, &mut st, i).unwrap(), None);
        assert_eq!((st.generation, st.syncs), (1, 1));
        assert_eq!(state.pending(), 0, "the posted sync was taken");
        // A time sync the host posts on its own is done.
        state.post(RequestKind::TimeSync).unwrap();
        assert_eq!(watch_round(&mut d, &mut os, &mut st, i).unwrap(), None);
        assert_eq!(st.syncs, 2);
        state.post(RequestKind::PowerOff { code: 7 }).unwrap();
        assert_eq!(
            watch_round(&mut d, &mut os, &mut st, i).unwrap(),
            Some(Stop::PowerOff(7))
        );
        // The whole loop: announce, sync, then the posted reboot ends it through POWER.
        state.post(RequestKind::Reboot { code: 4 }).unwrap();
        watch(&mut d, &mut os, i).unwrap();
        assert!(os.stopped);
        assert_eq!(state.agent(), Some(agent::POWER | agent::TIME_SYNC));
        assert_eq!(host.0.lock().unwrap().1, Some((true, 4)));
    }

    #[test]
    fn device_errors_become_messages() {
        let (mut d, ..) = setup();
        let e = hc(&mut d, "heartbeat", nr::HEARTBEAT, [1, 0, 0, 0]).unwrap_err();
        assert_eq!(e.to_string(), "heartbeat failed: invalid argument");
    }
}
