//! `fill=<MiB>`: write the same non-zero pattern into that much RAM in every guest (then go on,
//! e.g. to `idle`), so identical guests have identical pages for KSM to merge.

use crate::{power, serial};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
/// Where the filled region starts: above the image and stacks (the image is a few hundred KiB).
const REGION_START: u64 = 16 * MIB;

unsafe extern "C" {
    /// End of the loaded image including .bss (all vCPU stacks), from `link.ld`.
    static __image_end: u8;
}

/// Fill `mib` MiB from `REGION_START` with a pattern that depends only on the page and word index
/// (pages differ from each other, so KSM merges only across guests); powers off if it does not fit.
pub fn fill(mib: u64, ram: u64) {
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    let start = REGION_START.max(image_end.div_ceil(2 * MIB) * 2 * MIB);
    let end = mib.checked_mul(MIB).and_then(|s| s.checked_add(start));
    let end = match end {
        Some(end) if end <= ram => end,
        _ => {
            serial::lock().s("FILL-TOO-BIG mib=").u(mib).s("\n");
            power::off(1);
        }
    };
    let mut addr = start;
    while addr < end {
        let page = addr / PAGE;
        for word in 0..PAGE / 8 {
            let v = (page << 20) ^ (word << 4) ^ 0x5a5a_0000_0000_0001;
            // SAFETY: [start, end) lies in identity-mapped guest RAM (checked against `ram`),
            // above the image and all stacks, and nothing else uses it.
            unsafe { ((addr + word * 8) as *mut u64).write_volatile(v) };
        }
        addr += PAGE;
    }
    serial::lock().s("FILL-DONE mib=").u(mib).s("\n");
}
