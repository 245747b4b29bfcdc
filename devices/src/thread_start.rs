//! A hook run by every thread the device models start (block I/O workers), once the thread is
//! set up and before it serves anything: the VMM installs its seccomp filter there. The devices
//! know nothing of what the hook does; tests and tools that set none run without it.

use std::sync::OnceLock;

/// The kinds of threads the device models start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceThread {
    /// A block device's I/O worker (`virtio::block::worker`).
    BlockIo,
}

/// What runs at the start of each device thread.
pub type Hook = fn(DeviceThread);

static HOOK: OnceLock<Hook> = OnceLock::new();

/// Set the hook, once per process; false when one was set already (the first one stays).
pub fn set_hook(hook: Hook) -> bool {
    HOOK.set(hook).is_ok()
}

/// Run the hook for a thread of kind `kind` (nothing when no hook is set).
pub fn started(kind: DeviceThread) {
    if let Some(hook) = HOOK.get() {
        hook(kind);
    }
}
