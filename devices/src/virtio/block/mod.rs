//! virtio-blk: a raw disk image served to the guest (read, write, flush, get-id, read-only).
//!
//! `request.rs` turns a descriptor chain into a validated request, `backend.rs` does the file I/O
//! straight into and out of guest memory, `device.rs` is the virtio device and its queue loop,
//! `worker.rs` the threads that run reads the page cache cannot serve, several at once.

pub mod backend;
pub mod device;
pub mod request;
pub mod worker;

pub use backend::{BackendError, RawFile};
pub use device::{Block, BlockError};

/// Bytes per sector of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Bytes of a device id (`VIRTIO_BLK_T_GET_ID` answer, NUL-padded).
pub const ID_BYTES: usize = 20;
/// Most data segments (descriptors) in one request; offered as `seg_max`.
pub const SEG_MAX: u32 = 128;
/// Largest data segment; offered as `size_max`.
pub const SIZE_MAX: u32 = 1 << 20;

// Feature bits (virtio 1.2, 5.2.3).
pub const F_SIZE_MAX: u64 = 1 << 1;
pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_FLUSH: u64 = 1 << 9;

// Request types.
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;

// Status values.
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

#[cfg(test)]
mod tests;
