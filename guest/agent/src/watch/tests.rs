//! The watch loop against the real device model, with snapshot + restore injected between any two
//! register accesses (see `crate::fake::Dev`).

use super::*;
use crate::fake::{Dev, FakeOs, HOST_TIME, RESTORE_STEP};
use plainvm_devices::hypercall::RequestKind;

const I: Duration = Duration::from_millis(100);

/// Rounds until the armed restore happened, then three more.
fn run_past_restore(d: &mut Dev, os: &mut FakeOs, st: &mut WatchState) {
    while !d.restored.get() {
        assert_eq!(watch_round(d, os, st, I).unwrap(), None);
    }
    for _ in 0..3 {
        assert_eq!(watch_round(d, os, st, I).unwrap(), None);
    }
}

#[test]
fn watch_follows_generation_and_obeys_requests() {
    let mut d = Dev::new();
    let mut os = FakeOs::on(&d);
    let mut st = WatchState::default();
    assert_eq!(watch_round(&mut d, &mut os, &mut st, I).unwrap(), None);
    assert_eq!(d.state.snapshot().heartbeats, 1);
    assert_eq!(d.state.snapshot().free_memory_kib, Some(512));
    // A restore bumps the generation and posts a time sync: the clock is resynced, once.
    d.restore();
    assert_eq!(watch_round(&mut d, &mut os, &mut st, I).unwrap(), None);
    assert_eq!((st.generation, st.syncs), (1, 1));
    assert_eq!(d.state.pending(), 0, "the posted sync was taken");
    // A time sync the host posts on its own is done.
    d.state.post(RequestKind::TimeSync).unwrap();
    assert_eq!(watch_round(&mut d, &mut os, &mut st, I).unwrap(), None);
    assert_eq!(st.syncs, 2);
    d.state.post(RequestKind::PowerOff { code: 7 }).unwrap();
    assert_eq!(
        watch_round(&mut d, &mut os, &mut st, I).unwrap(),
        Some(Stop::PowerOff(7))
    );
    // The whole loop: announce, sync, then the posted reboot ends it through POWER.
    d.state.post(RequestKind::Reboot { code: 4 }).unwrap();
    watch(&mut d, &mut os, I).unwrap();
    assert!(os.stopped);
    assert!(
        !d.state.heartbeat_declared(),
        "the VMM stopped watching the heartbeat"
    );
    assert_eq!(d.state.agent(), Some(agent::POWER | agent::TIME_SYNC));
    assert_eq!(d.host.seen.lock().unwrap().1, Some((true, 4)));
}

/// The race of issue 12: frozen right after reading the old GENERATION (access 10 of a round),
/// the agent used to take the posted request first (sync), then see the new generation in the
/// next round (sync again). Every other point between two accesses is tried too.
#[test]
fn a_restore_between_any_two_register_accesses_gives_one_clock_sync() {
    for k in 0..40 {
        let mut d = Dev::new();
        let mut os = FakeOs::on(&d);
        let mut st = WatchState::default();
        watch_round(&mut d, &mut os, &mut st, I).unwrap();
        d.restore_after(k);
        run_past_restore(&mut d, &mut os, &mut st);
        assert_eq!(
            os.sets_after_restore(),
            [HOST_TIME + RESTORE_STEP],
            "restore after access {k}"
        );
        assert_eq!((st.generation, d.state.pending()), (1, 0), "access {k}");
    }
}

/// A restore that freezes the agent in the middle of a sync (the start-up one here): the clock
/// never takes a lost answer (0) and ends on the restored host's time. A second sync after the
/// restore happens only when the first one set a time read before it (the one window no guest
/// can close: between the last register read and clock_settime).
#[test]
fn a_restore_during_a_sync_ends_on_the_new_host_time() {
    let mut stale_windows = 0;
    for k in 0..60 {
        let mut d = Dev::new();
        let mut os = FakeOs::on(&d);
        let mut st = WatchState::new(0);
        d.restore_after(k);
        run_past_restore(&mut d, &mut os, &mut st);
        let new = HOST_TIME + RESTORE_STEP;
        assert!(
            os.clock_sets.iter().all(|(t, _)| !t.is_zero()),
            "access {k}"
        );
        assert_eq!(os.clock_sets.last().map(|s| s.0), Some(new), "access {k}");
        match os.sets_after_restore()[..] {
            [t] => assert_eq!(t, new, "access {k}"),
            [HOST_TIME, t] if t == new => stale_windows += 1,
            ref sets => panic!("restore after access {k}: clock sets {sets:?}"),
        }
        assert_eq!(
            (st.generation, st.sync_owed, d.state.pending()),
            (1, false, 0)
        );
    }
    assert_eq!(stale_windows, 1, "only right before clock_settime");
}
