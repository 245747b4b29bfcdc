//! The `watch` agent: heartbeat, memory hint, host requests, and one clock sync per reason.
//!
//! A restore (or migration) bumps GENERATION and posts a TIME_SYNC request, both before the guest
//! runs again. The agent reads GENERATION and takes requests one register access at a time,
//! and the snapshot can have frozen it between any two of them: a round can then see the new
//! generation without the request or the request without the new generation, and answering each
//! on its own gives two syncs for one restore. So a round first *settles*: it takes every pending
//! request and re-reads GENERATION until GENERATION reads the same before and after the taking.
//! Every request posted with a bump up to that generation has then been taken, and one sync
//! answers all of them. A sync keeps HOST_TIME only if GENERATION did not move while it was asked
//! (otherwise the answer may predate the restore: it settles and asks again).

use crate::commands::{hc, host_time, power_off, set_clock, CommandError};
use crate::system::System;
use plainvm_guest_proto::call::split;
use plainvm_guest_proto::{agent, call, nr, regs, request, Registers};
use std::time::Duration;

/// Bound on the settle and sync retries of one round (a host bumping GENERATION without pause
/// must not keep the agent from its heartbeat); what is left over is done next round.
const TRIES: u32 = 8;

/// What a watch round decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    PowerOff(u8),
    Reboot(u8),
}

/// The watch loop's memory between rounds.
#[derive(Debug, Default)]
pub struct WatchState {
    /// The last GENERATION seen.
    pub generation: u32,
    pub rounds: u64,
    pub syncs: u64,
    /// A clock sync is owed (start-up, a time-sync request, a new generation).
    pub sync_owed: bool,
}

impl WatchState {
    /// The state at start-up, at `generation`: the first round syncs the clock.
    pub fn new(generation: u32) -> Self {
        Self {
            generation,
            sync_owed: true,
            ..Self::default()
        }
    }
}

/// Announce, then run rounds (the first syncs the clock) until the host asks for a power-off
/// or reboot.
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
    let mut st = WatchState::new(gen);
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
            // No more beats from here: the VMM stops watching instead of reporting a miss.
            hc(r, "heartbeat", nr::HEARTBEAT, [0; 4])?;
            sys.stop_processes();
            return power_off(r, sys, reboot, code);
        }
        sys.sleep(interval);
    }
}

/// One round: heartbeat, memory hint (every 30 rounds), requests and generation, clock sync.
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
    for _ in 0..TRIES {
        let g = match settle(r, st)? {
            Ok(g) => g,
            Err(stop) => return Ok(Some(stop)),
        };
        if !st.sync_owed {
            return Ok(None);
        }
        if let Some(host) = host_time(r)? {
            if r.read32(regs::GENERATION) == g {
                set_clock(sys, host)?;
                st.syncs += 1;
                st.sync_owed = false;
                return Ok(None);
            }
        }
        // GENERATION moved while we asked (or the answer was lost to a restore): settle again.
    }
    Ok(None)
}

/// Take the pending requests and re-read GENERATION until it reads the same before and after;
/// returns that generation (a power request ends the round instead). A new generation or a
/// TIME_SYNC request makes a sync owed.
fn settle<R: Registers>(r: &mut R, st: &mut WatchState) -> Result<Result<u32, Stop>, CommandError> {
    let mut g = r.read32(regs::GENERATION);
    for _ in 0..TRIES {
        if g != st.generation {
            println!(
                "plainvm-guest: generation {} -> {g}: resyncing the clock",
                st.generation
            );
            st.generation = g;
            st.sync_owed = true;
        }
        if let Some(stop) = take_requests(r, st)? {
            return Ok(Err(stop));
        }
        let again = r.read32(regs::GENERATION);
        if again == g {
            break;
        }
        g = again;
    }
    Ok(Ok(g))
}

/// Take every pending request: a power request is returned at once, a time sync is owed.
fn take_requests<R: Registers>(
    r: &mut R,
    st: &mut WatchState,
) -> Result<Option<Stop>, CommandError> {
    while r.read32(regs::PENDING) != 0 {
        let [kind, arg, _id, _] = hc(r, "request", nr::REQUEST, [0; 4])?;
        let code = u8::try_from(arg).unwrap_or(u8::MAX);
        match kind {
            // Nothing after all (or the answer was lost to a restore: settle re-reads).
            request::NONE => break,
            request::POWER_OFF => return Ok(Some(Stop::PowerOff(code))),
            request::REBOOT => return Ok(Some(Stop::Reboot(code))),
            request::TIME_SYNC => st.sync_owed = true,
            other => eprintln!("plainvm-guest: ignoring unknown host request {other}"),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
