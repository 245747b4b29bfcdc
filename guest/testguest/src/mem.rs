//! memcpy/memmove/memset/memcmp/bcmp for the compiler, written with string instructions so they
//! cannot be turned back into calls to themselves.

use core::arch::asm;

/// Copies `n` bytes from `src` to `dest`.
///
/// # Safety
/// Both ranges must be valid for `n` bytes and must not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid; DF is clear (ABI).
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// Copies `n` bytes from `src` to `dest`; the ranges may overlap.
///
/// # Safety
/// Both ranges must be valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // dest is below src or past the end of src: a forward copy is safe.
        // SAFETY: the caller guarantees both ranges are valid; DF is clear (ABI).
        unsafe {
            asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
                 options(nostack, preserves_flags));
        }
    } else {
        // Overlapping with dest above src: copy backwards, then restore DF=0 as the ABI requires.
        // SAFETY: as above; the last byte of each range is at offset n-1 (n > 0 here).
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") n => _, inout("rdi") dest.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
                 options(nostack));
        }
    }
    dest
}

/// Fills `n` bytes at `dest` with the low byte of `c`.
///
/// # Safety
/// The range must be valid for writes of `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is valid; DF is clear (ABI).
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dest
}

/// Compares `n` bytes; returns <0, 0 or >0 like C's memcmp.
///
/// # Safety
/// Both ranges must be valid for reads of `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    if n == 0 {
        return 0;
    }
    let (differs, pa, pb): (u8, *const u8, *const u8);
    // SAFETY: the caller guarantees both ranges are valid; DF is clear (ABI). `repe cmpsb` stops
    // one byte past the first difference (or after n bytes).
    unsafe {
        asm!("repe cmpsb", "setne {d}",
             d = out(reg_byte) differs,
             inout("rcx") n => _, inout("rsi") a => pa, inout("rdi") b => pb,
             options(nostack, readonly));
    }
    if differs == 0 {
        return 0;
    }
    // SAFETY: pa-1 and pb-1 are the differing bytes inside the two valid ranges.
    unsafe { i32::from(pa.sub(1).read()) - i32::from(pb.sub(1).read()) }
}

/// Compares `n` bytes; returns 0 when equal, non-zero otherwise.
///
/// # Safety
/// Both ranges must be valid for reads of `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
