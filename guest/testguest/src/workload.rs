//! `memwrite`: a verifiable memory-writing workload for snapshot and migration tests.
//!
//! Pass p writes into each touched 4 KiB page a header {MAGIC, page index, p} plus a few words
//! derived from (page, p), after checking that the page still holds what pass p-1 wrote (pass 0:
//! zeros). With `dirty=<n>` each pass touches the same n pages, spread evenly over the region;
//! `delay=<µs>` waits between passes, so n pages per (pass time + delay) is the dirty rate.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::{clock, power, serial};

const MIB: u64 = 1 << 20;
const REGION_ALIGN: u64 = 2 * MIB;
const PAGE: u64 = 4096;
const MAGIC: u64 = 0x4554_5257_4d45_4d50; // "PMEMWRTE" little-endian

/// Word indices (u64 slots within a page) the workload writes and checks.
const SLOTS: [usize; 11] = [0, 1, 2, 3, 64, 128, 192, 256, 320, 384, 511];

/// Passes completed so far; at a fixed address (start of .data) and exported as a symbol so a
/// test can read it from guest memory.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data.status")]
pub static TESTGUEST_MEMWRITE_PASS: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" {
    /// End of the loaded image including .bss (all vCPU stacks), from `link.ld`.
    static __image_end: u8;
}

/// Expected content of word `slot_no` of page `page` after pass `pass` (pass 0: never written).
fn expected(page: u64, pass: u64, slot_no: usize) -> u64 {
    if pass == 0 {
        return 0;
    }
    match slot_no {
        0 => MAGIC,
        1 => page,
        2 => pass,
        _ => mix((page << 24) ^ pass ^ ((slot_no as u64) << 56)),
    }
}

/// splitmix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Runs the workload and powers off (status 0 when all `passes` complete; `passes == 0`: forever).
pub fn memwrite(
    mib: u64,
    passes: u64,
    dirty: Option<u64>,
    delay_us: u64,
    show_gen: bool,
    ram: u64,
) -> ! {
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    let start = image_end.div_ceil(REGION_ALIGN) * REGION_ALIGN;
    let end = mib
        .checked_mul(MIB)
        .and_then(|size| size.checked_add(start));
    let end = match end {
        Some(end) if mib != 0 && end <= ram => end,
        _ => {
            serial::lock()
                .s("MEMWRITE-TOO-BIG mib=")
                .u(mib)
                .s(" region_start=")
                .x(start)
                .s(" ram=")
                .x(ram)
                .s("\n");
            power::off(1);
        }
    };
    let pages = (end - start) / PAGE;
    let touched = match dirty {
        Some(d) if d != 0 && d < pages => d,
        _ => pages,
    };
    let stride = pages / touched;
    serial::lock()
        .s("memwrite region=")
        .x(start)
        .s("..")
        .x(end)
        .s(" pages=")
        .u(pages)
        .s(" touched=")
        .u(touched)
        .s(" passes=")
        .u(passes)
        .s("\n");

    let print_gap = clock::ms_to_ticks(100);
    let delay = clock::ms_to_ticks(1).saturating_mul(delay_us) / 1000;
    let mut last_print = clock::rdtsc();
    let mut pass: u64 = 0;
    loop {
        pass += 1;
        for k in 0..touched {
            let page = k * stride;
            let base = (start + page * PAGE) as *mut u64;
            for (slot_no, &slot) in SLOTS.iter().enumerate() {
                // SAFETY: `base` is a page inside [start, end), which lies in guest RAM (checked
                // against `ram`), above the image and all stacks, and is used by nothing else.
                let ptr = unsafe { base.add(slot) };
                // SAFETY: as above; volatile so every access really reaches guest memory.
                let found = unsafe { ptr.read_volatile() };
                let want = expected(page, pass - 1, slot_no);
                if found != want {
                    serial::lock()
                        .s("MEMWRITE-CORRUPT page=")
                        .u(page)
                        .s(" pass=")
                        .u(pass)
                        .s("\n")
                        .s("memwrite detail: addr=")
                        .x(ptr as u64)
                        .s(" expected=")
                        .x(want)
                        .s(" found=")
                        .x(found)
                        .s("\n");
                    power::off(1);
                }
                // SAFETY: as above.
                unsafe { ptr.write_volatile(expected(page, pass, slot_no)) };
            }
        }
        TESTGUEST_MEMWRITE_PASS.store(pass, Ordering::Release);

        let now = clock::rdtsc();
        if pass <= 10 || pass == passes || now.wrapping_sub(last_print) >= print_gap {
            last_print = now;
            let mut out = serial::lock();
            out.s("memwrite pass=").u(pass).s(" ok");
            if show_gen {
                out.s(" gen=").u(u64::from(crate::hypercall::generation()));
            }
            out.s("\n");
        }
        if pass == passes {
            break;
        }
        let since = clock::rdtsc();
        while clock::rdtsc().wrapping_sub(since) < delay {
            core::hint::spin_loop();
        }
    }
    power::post(3);
    serial::lock().s("MEMWRITE-DONE passes=").u(passes).s("\n");
    power::off(0);
}
