//! Kernel samepage merging: mark guest RAM MADV_MERGEABLE (`--memory size=..,merge=on`).

use plainvm_devices::GuestRam;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// Errors marking memory mergeable.
#[derive(Debug, thiserror::Error)]
#[error("cannot mark guest memory mergeable for KSM: {0} (is the kernel built with CONFIG_KSM? drop merge=on)")]
pub struct KsmError(std::io::Error);

/// Mark every guest RAM region mergeable. Only advice: no page is touched or allocated.
pub fn mark_mergeable(mem: &GuestRam) -> Result<(), KsmError> {
    for region in mem.iter() {
        let Ok(host) = mem.get_host_address(region.start_addr()) else {
            continue;
        };
        // SAFETY: `host` and `len` describe a live mapping owned by `mem`; madvise only
        // changes how the kernel treats the range, never its contents.
        let rc = unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_MERGEABLE) };
        if rc != 0 {
            return Err(KsmError(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}
