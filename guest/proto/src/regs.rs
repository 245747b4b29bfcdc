//! Register offsets inside the device page. Every register is 32 bits, little endian.

/// RO: `crate::MAGIC`.
pub const MAGIC: u64 = 0x00;
/// RO: `crate::VERSION`.
pub const VERSION: u64 = 0x04;
/// WO: writing a call number runs that call with ARG0..ARG3; results land in STATUS and RET0..RET3.
pub const CALL: u64 = 0x08;
/// RO: status of the last call or register access (`crate::status`).
pub const STATUS: u64 = 0x0c;
/// RW: call arguments.
pub const ARG: [u64; 4] = [0x10, 0x14, 0x18, 0x1c];
/// RO: call results.
pub const RET: [u64; 4] = [0x20, 0x24, 0x28, 0x2c];
/// RO: the generation counter (low 32 bits), readable without a call.
pub const GENERATION: u64 = 0x30;
/// RO: number of pending host requests, readable without a call.
pub const PENDING: u64 = 0x34;
/// End of the 32-bit registers.
pub const END: u64 = 0x38;
/// RW: the text window for LOG_TEXT, `crate::LOG_MAX` bytes, any access width.
pub const TEXT: u64 = 0x100;
/// End of the text window; reads beyond return 0.
pub const TEXT_END: u64 = TEXT + crate::LOG_MAX as u64;
