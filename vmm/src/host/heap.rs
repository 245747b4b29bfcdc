//! The C heap (glibc malloc) of a VMM process: one arena for all threads, and the pages freed
//! during start-up handed back to the kernel once the VM runs.
//!
//! Both keep an idle VM's resident memory small: glibc gives each thread that allocates an arena
//! of its own (up to 8 per core), each with its own touched pages, and keeps freed heap pages
//! resident. Allocations on the hot paths are small and served by glibc's per-thread caches,
//! so one arena does not serialise them.

/// Makes every thread allocate from the main arena. Call before any thread starts.
pub fn use_one_arena() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only changes a malloc tunable; M_ARENA_MAX takes any positive value.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }
}

/// Returns the heap's free pages (what start-up allocated and dropped) to the kernel.
pub fn release_free_pages() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim takes the arena locks itself and may run on any thread.
        unsafe { libc::malloc_trim(0) };
    }
}
