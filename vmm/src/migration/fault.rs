//! Named failure-injection points for testing the migration's failure handling on real
//! processes: `PLAINVM_FAULT=<point>[,<point>...]` makes this process fail there. Documented in
//! docs/migration.md; without the variable nothing changes.

/// Points the destination offers.
pub const DEST_BEFORE_STATE_READY: &str = "dest-exit-before-state-ready";
/// The destination runs the VM but drops the link before confirming it (the commit race).
pub const DEST_DROP_AFTER_COMMIT: &str = "dest-drop-link-after-commit";
/// The source exits in the middle of the memory passes.
pub const SOURCE_EXIT_IN_PASSES: &str = "source-exit-in-passes";

/// True when `point` is armed in this process.
pub fn armed(point: &str) -> bool {
    std::env::var("PLAINVM_FAULT").is_ok_and(|v| v.split(',').any(|p| p.trim() == point))
}

/// Exit abruptly (no cleanup, like a crash) if `point` is armed.
pub fn crash_at(point: &str) {
    if armed(point) {
        plainvm_devices::log_line!("fault injection: exiting at {point}");
        // SAFETY: _exit ends the process at once, which is the point of this fault.
        unsafe { libc::_exit(86) };
    }
}
