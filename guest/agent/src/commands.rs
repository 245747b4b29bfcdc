//! The protocol logic of each subcommand, over any register accessor and any `System`.

use crate::args::Command;
use crate::system::System;
use crate::watch;
use plainvm_guest_proto::call::join;
use plainvm_guest_proto::{call, nr, power, regs, Error, Registers, LOG_MAX};
use std::time::Duration;

/// Errors running a command.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{what} failed: {}", .err.describe())]
    Call { what: &'static str, err: Error },
    #[error("cannot set the clock: {0}")]
    Clock(std::io::Error),
    #[error("time-sync failed: the host time read back as 0 {HOST_TIME_TRIES} times")]
    NoTime,
}

pub(crate) fn hc<R: Registers>(
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
        Command::Watch { interval_ms } => {
            watch::watch(r, sys, Duration::from_millis(interval_ms.into()))
        }
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

/// Sync and drain the console, then POWER: the VM stops (the call returns only in tests).
pub fn power_off<R: Registers, S: System>(
    r: &mut R,
    sys: &mut S,
    reboot: bool,
    code: u8,
) -> Result<(), CommandError> {
    sys.sync();
    sys.drain_console();
    let action = if reboot { power::REBOOT } else { power::OFF };
    hc(r, "poweroff", nr::POWER, [action, code.into(), 0, 0]).map(drop)
}

/// How often a HOST_TIME whose results were lost is asked again.
const HOST_TIME_TRIES: u32 = 4;

/// HOST_TIME, or None when its results were lost: a snapshot taken between the call and the
/// reading of its results restores into a new device, whose result registers read 0 (no real
/// host clock says 1970).
pub fn host_time<R: Registers>(r: &mut R) -> Result<Option<Duration>, CommandError> {
    let t = hc(r, "time-sync", nr::HOST_TIME, [0; 4])?;
    let host = Duration::new(join(t[0], t[1]), t[2]);
    Ok((!host.is_zero()).then_some(host))
}

/// Set the clock to `host` and say so (tests count these lines); returns the previous time.
pub fn set_clock<S: System>(sys: &mut S, host: Duration) -> Result<Duration, CommandError> {
    let before = sys.set_clock(host).map_err(CommandError::Clock)?;
    println!(
        "plainvm-guest: time-sync: clock set to {}.{:03} (was {}, off by {} s)",
        host.as_secs(),
        host.subsec_millis(),
        before.as_secs(),
        host.as_secs() as i128 - before.as_secs() as i128
    );
    Ok(before)
}

/// Set the clock from HOST_TIME; returns (new, previous) time since the epoch.
pub fn time_sync<R: Registers, S: System>(
    r: &mut R,
    sys: &mut S,
) -> Result<(Duration, Duration), CommandError> {
    for _ in 0..HOST_TIME_TRIES {
        if let Some(host) = host_time(r)? {
            return Ok((host, set_clock(sys, host)?));
        }
    }
    Err(CommandError::NoTime)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Dev, FakeOs, HOST_TIME, RESTORE_STEP};

    #[test]
    fn mark_log_time_sync_and_power_reach_the_device() {
        let mut d = Dev::new();
        let mut os = FakeOs::on(&d);
        run(&mut d, &mut os, Command::Mark(3)).unwrap();
        assert_eq!(d.state.marks()[0].stage, 3);
        assert_eq!(log(&mut d, "hello agent").unwrap(), 11);
        assert_eq!(log(&mut d, &"y".repeat(600)).unwrap(), LOG_MAX);
        let (now, before) = time_sync(&mut d, &mut os).unwrap();
        assert_eq!(now, HOST_TIME);
        assert_eq!(
            (os.clock_sets.clone(), before),
            (vec![(now, false)], Duration::from_secs(10))
        );
        run(
            &mut d,
            &mut os,
            Command::Power {
                reboot: false,
                code: 3,
            },
        )
        .unwrap();
        assert_eq!(
            (os.syncs, os.drains),
            (1, 1),
            "synced and drained before POWER"
        );
        let h = d.host.seen.lock().unwrap();
        assert_eq!(h.1, Some((false, 3)));
        assert!(h.0.contains(&"guest: hello agent".to_string()), "{:?}", h.0);
    }

    #[test]
    fn a_host_time_lost_to_a_restore_is_asked_again() {
        let mut d = Dev::new();
        let mut os = FakeOs::on(&d);
        // Restored between the HOST_TIME call and reading its results: the new device reads 0.
        d.restore_after(5);
        let (now, _) = time_sync(&mut d, &mut os).unwrap();
        assert!(d.restored.get());
        assert_eq!(now, HOST_TIME + RESTORE_STEP);
    }

    #[test]
    fn device_errors_become_messages() {
        let mut d = Dev::new();
        let e = hc(&mut d, "heartbeat", nr::HEARTBEAT, [1, 0, 0, 0]).unwrap_err();
        assert_eq!(e.to_string(), "heartbeat failed: invalid argument");
    }
}
