//! SMP check-in: secondary vCPUs announce themselves, vCPU 0 waits (bounded) for all of them.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::{clock, halt, power, serial};

/// How long vCPU 0 waits for the others to check in.
const TIMEOUT_MS: u64 = 10_000;

static CHECKED_IN: AtomicU64 = AtomicU64::new(0);

/// Secondary vCPU path: print, check in, then halt for good.
pub fn secondary(idx: u64) -> ! {
    serial::lock().s("vcpu ").u(idx).s(" alive\n");
    CHECKED_IN.fetch_add(1, Ordering::AcqRel);
    halt::forever();
}

/// vCPU 0: waits until `ncpus - 1` secondaries checked in, then prints `SMP-OK n=<ncpus>`;
/// powers off after printing `SMP-TIMEOUT` if they do not show up in time.
pub fn wait_for_secondaries(ncpus: u64) {
    let want = ncpus - 1;
    let start = clock::rdtsc();
    let limit = clock::ms_to_ticks(TIMEOUT_MS);
    loop {
        let seen = CHECKED_IN.load(Ordering::Acquire);
        if seen >= want {
            break;
        }
        if clock::rdtsc().wrapping_sub(start) > limit {
            serial::lock()
                .s("SMP-TIMEOUT checked_in=")
                .u(seen)
                .s(" expected=")
                .u(want)
                .s("\n");
            power::off(1);
        }
        for _ in 0..64 {
            core::hint::spin_loop();
        }
    }
    serial::lock().s("SMP-OK n=").u(ncpus).s("\n");
}
