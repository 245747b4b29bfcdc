//! The plainvm hypercall interface (docs/hypercall.md): constants shared by the VMM's device, the
//! ring-3 test guest and the guest agent, plus the register-level call sequence.
#![no_std]

pub mod call;
pub mod regs;

pub use call::{call, Error, Registers};

/// Guest-physical base of the device's register page.
pub const BASE: u64 = 0xc000_0000;
/// Size of the register page.
pub const SIZE: u64 = 0x1000;
/// Value of the MAGIC register: the bytes "PLVM" in little-endian order.
pub const MAGIC: u32 = u32::from_le_bytes(*b"PLVM");
/// Interface version (the VERSION register and call). Bumped only for incompatible changes;
/// new calls are discovered through the VERSION call's bitmap instead.
pub const VERSION: u32 = 1;

/// Call numbers (written to `regs::CALL`).
pub mod nr {
    /// RET0 = interface version, RET1 = bitmap of implemented call numbers.
    pub const VERSION: u32 = 0;
    /// ARG0 = stage. The VMM timestamps the mark.
    pub const BOOT_MARK: u32 = 1;
    /// ARG0 = `power::OFF` or `power::REBOOT`, ARG1 = exit code 0..=255. Ends the VM.
    pub const POWER: u32 = 2;
    /// ARG0/ARG1 = guest-physical address (low/high), ARG2 = length 1..=`LOG_MAX`.
    pub const LOG: u32 = 3;
    /// RET0/RET1 = host wall-clock seconds since the Unix epoch (low/high), RET2 = nanoseconds.
    pub const HOST_TIME: u32 = 4;
    /// RET0/RET1 = generation counter (low/high).
    pub const GENERATION: u32 = 5;
    /// ARG0/ARG1 = free guest memory in KiB (low/high).
    pub const MEM_HINT: u32 = 6;
    /// ARG0 = interval in ms (0: stop watching; else `HEARTBEAT_MIN_MS..=HEARTBEAT_MAX_MS`).
    pub const HEARTBEAT: u32 = 7;
    /// Take the oldest pending host request: RET0 = kind (`request::*`), RET1 = argument,
    /// RET2 = request id.
    pub const REQUEST: u32 = 8;
    /// The agent announces itself: ARG0 = capability bits (`agent::*`). RET0 = generation (low).
    pub const AGENT_HELLO: u32 = 9;
    /// Like LOG, but the text is in the device page's TEXT window (`regs::TEXT`): ARG0 = length.
    /// For guest user space, which does not know the physical address of its buffers.
    pub const LOG_TEXT: u32 = 10;
    /// One past the highest call number.
    pub const COUNT: u32 = 11;
}

/// Status codes (the STATUS register after a call).
pub mod status {
    pub const OK: u32 = 0;
    /// No such call number.
    pub const UNKNOWN_CALL: u32 = 1;
    /// An argument is out of range.
    pub const INVALID_ARGUMENT: u32 = 2;
    /// A guest address range is not (entirely) guest RAM.
    pub const BAD_ADDRESS: u32 = 3;
    /// Too many calls of this kind in a short time; try again later.
    pub const RATE_LIMITED: u32 = 4;
    /// A fixed-size table is full (e.g. boot marks).
    pub const LIMIT_REACHED: u32 = 5;
    /// The last register access had the wrong size or alignment, or wrote a read-only register.
    pub const BAD_ACCESS: u32 = 6;
}

/// POWER actions (ARG0).
pub mod power {
    pub const OFF: u32 = 0;
    pub const REBOOT: u32 = 1;
}

/// Host request kinds (RET0 of REQUEST).
pub mod request {
    pub const NONE: u32 = 0;
    /// Power off gracefully; the argument is the exit code to use.
    pub const POWER_OFF: u32 = 1;
    /// Reboot gracefully; the argument is the exit code to use.
    pub const REBOOT: u32 = 2;
    /// Resync the guest clock from HOST_TIME.
    pub const TIME_SYNC: u32 = 3;
}

/// Agent capability bits (ARG0 of AGENT_HELLO).
pub mod agent {
    /// The agent handles POWER_OFF and REBOOT requests.
    pub const POWER: u32 = 1;
    /// The agent handles TIME_SYNC requests and follows GENERATION.
    pub const TIME_SYNC: u32 = 2;
}

/// Longest LOG text in bytes.
pub const LOG_MAX: u32 = 512;
/// Shortest heartbeat interval.
pub const HEARTBEAT_MIN_MS: u32 = 100;
/// Longest heartbeat interval (one day).
pub const HEARTBEAT_MAX_MS: u32 = 86_400_000;
/// Most boot marks the VMM keeps.
pub const MAX_MARKS: usize = 64;

/// Well-known BOOT_MARK stages (any u32 is accepted; these have names in the VMM's report).
pub mod stage {
    /// The init process started.
    pub const INIT: u32 = 1;
    /// Root file system mounted / userspace set up.
    pub const USERSPACE: u32 = 2;
    /// Services started; the guest is ready for work.
    pub const READY: u32 = 3;
    /// The guest is about to power off.
    pub const SHUTDOWN: u32 = 4;

    /// The name of a well-known stage.
    pub fn name(stage: u32) -> Option<&'static str> {
        Some(match stage {
            INIT => "init",
            USERSPACE => "userspace",
            READY => "ready",
            SHUTDOWN => "shutdown",
            _ => return None,
        })
    }

    /// Parse a stage given as a name or a decimal number.
    pub fn parse(s: &str) -> Option<u32> {
        (1..=SHUTDOWN)
            .find(|&n| name(n) == Some(s))
            .or_else(|| s.parse().ok())
    }
}
