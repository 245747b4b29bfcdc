//! Coarse wall-clock time from the TSC, with the frequency taken from CPUID when offered.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// Assumed TSC frequency when CPUID does not report one (timeouts then vary by about 2x).
const FALLBACK_HZ: u64 = 3_000_000_000;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the TSC (CR4.TSD is clear in this guest, so it works in ring 3).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

fn cpuid(leaf: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u64, u32, u32);
    // SAFETY: cpuid is always available on x86-64; rbx is reserved by LLVM, so it is saved in a
    // scratch register around the instruction.
    unsafe {
        asm!(
            "mov {t}, rbx",
            "cpuid",
            "xchg {t}, rbx",
            t = out(reg) b,
            inout("eax") leaf => a,
            inout("ecx") 0u32 => c,
            out("edx") d,
            options(nomem, nostack, preserves_flags),
        )
    }
    [a, b as u32, c, d]
}

fn detect_hz() -> u64 {
    let max_basic = cpuid(0)[0];
    // Hypervisor timing leaf 0x40000010: EAX = TSC kHz.
    if cpuid(1)[2] & (1 << 31) != 0 && cpuid(0x4000_0000)[0] >= 0x4000_0010 {
        let khz = u64::from(cpuid(0x4000_0010)[0]);
        if khz != 0 {
            return khz * 1000;
        }
    }
    if max_basic >= 0x15 {
        let [den, num, crystal, _] = cpuid(0x15);
        if den != 0 && num != 0 && crystal != 0 {
            return u64::from(crystal) * u64::from(num) / u64::from(den);
        }
    }
    if max_basic >= 0x16 {
        let mhz = u64::from(cpuid(0x16)[0] & 0xffff);
        if mhz != 0 {
            return mhz * 1_000_000;
        }
    }
    FALLBACK_HZ
}

/// TSC ticks per second (detected once).
pub fn hz() -> u64 {
    let cached = TSC_HZ.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let hz = detect_hz();
    TSC_HZ.store(hz, Ordering::Relaxed);
    hz
}

/// TSC ticks in `ms` milliseconds.
pub fn ms_to_ticks(ms: u64) -> u64 {
    hz() / 1000 * ms
}
