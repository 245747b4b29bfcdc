//! Parsing and validating one virtio-blk request chain: header, data segments, status byte.
//!
//! Layout accepted (the one Linux and every common driver use): a device-readable header
//! descriptor of at least 16 bytes {type u32, reserved u32, sector u64}, zero or more data
//! descriptors, and a device-writable status descriptor last (the status is its last byte).
//! Everything the guest wrote is checked here: directions, segment count and sizes, sector range,
//! alignment. Guest addresses of data segments are checked against guest memory when the request
//! runs (`device.rs`), and every access goes through `GuestRam`, which refuses addresses
//! outside guest RAM.

use super::{
    ID_BYTES, SECTOR_SIZE, SEG_MAX, SIZE_MAX, S_IOERR, S_UNSUPP, T_FLUSH, T_GET_ID, T_IN, T_OUT,
};
use crate::GuestRam;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

/// What a valid request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Read sectors into the data segments.
    Read,
    /// Write the data segments to sectors.
    Write,
    /// Make earlier writes durable.
    Flush,
    /// Copy the device id into the data segments.
    GetId,
}

/// A validated request.
#[derive(Debug, Default)]
pub struct Request {
    /// What to do (`None` only in the reusable default).
    pub kind: Option<Kind>,
    /// First sector (reads and writes).
    pub sector: u64,
    /// Data segments, in order.
    pub segments: Vec<Segment>,
    /// Sum of the segment lengths.
    pub len: u64,
}

/// One data descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// The descriptor is device-writable.
    pub device_writes: bool,
}

/// Why a request is refused; the device answers `status()` in the status byte.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the chain has no device-writable status descriptor at its end")]
    NoStatus,
    #[error("the chain has no device-readable header of 16 bytes first")]
    BadHeader,
    #[error("the header is outside guest memory")]
    HeaderUnreadable,
    #[error("more than {SEG_MAX} data segments")]
    TooManySegments,
    #[error("a data segment is longer than {SIZE_MAX} bytes")]
    SegmentTooLong,
    #[error("a data segment has the wrong direction for the request type")]
    WrongDirection,
    #[error("the data length {0} is not a multiple of {SECTOR_SIZE}")]
    Unaligned(u64),
    #[error("sectors {sector}+{len} bytes lie outside the disk ({capacity} bytes)")]
    OutOfRange {
        sector: u64,
        len: u64,
        capacity: u64,
    },
    #[error("the disk is read-only")]
    ReadOnly,
    #[error("request type {0} is not supported")]
    Unsupported(u32),
}

impl RequestError {
    /// The status byte reported to the driver.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => S_UNSUPP,
            _ => S_IOERR,
        }
    }
}

/// Raw request header as the driver lays it out.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Header {
    ty: u32,
    reserved: u32,
    sector: u64,
}
// SAFETY: plain integers, no padding (4 + 4 + 8 bytes), any bit pattern is valid.
unsafe impl vm_memory::ByteValued for Header {}

/// Parses the descriptors of one chain into `req` (reused to avoid allocations).
///
/// Returns where the status byte goes (if the chain has a status descriptor) and the verdict.
/// `capacity` is the disk size in bytes (a multiple of the sector size).
pub fn parse(
    descs: impl Iterator<Item = Descriptor>,
    mem: &GuestRam,
    capacity: u64,
    read_only: bool,
    req: &mut Request,
) -> (Option<GuestAddress>, Result<(), RequestError>) {
    req.kind = None;
    req.sector = 0;
    req.segments.clear();
    req.len = 0;

    let mut first: Option<Descriptor> = None;
    let mut last: Option<Descriptor> = None;
    let mut count = 0usize;
    let mut too_many = false;
    let mut too_long = false;
    // The iterator ends after at most the queue size (or indirect table size) descriptors, so
    // looping chains end too.
    for d in descs {
        count += 1;
        if first.is_none() {
            first = Some(d);
            continue;
        }
        // The previous `last` turns out to be a data segment.
        if let Some(prev) = last.replace(d) {
            if req.segments.len() >= SEG_MAX as usize {
                too_many = true;
            } else {
                too_long |= prev.len() > SIZE_MAX;
                req.segments.push(Segment {
                    addr: prev.addr(),
                    len: prev.len(),
                    device_writes: prev.is_write_only(),
                });
                req.len += u64::from(prev.len());
            }
        }
    }
    let status_desc = match (last, first) {
        (Some(l), _) => l,
        (None, Some(f)) if count == 1 => f,
        _ => return (None, Err(RequestError::NoStatus)),
    };
    if !status_desc.is_write_only() || status_desc.len() == 0 {
        return (None, Err(RequestError::NoStatus));
    }
    let status = status_desc
        .addr()
        .0
        .checked_add(u64::from(status_desc.len()) - 1)
        .map(GuestAddress);
    let Some(status) = status else {
        return (None, Err(RequestError::NoStatus));
    };
    let verdict = validate(
        first, count, too_many, too_long, mem, capacity, read_only, req,
    );
    (Some(status), verdict)
}

#[allow(clippy::too_many_arguments)]
fn validate(
    first: Option<Descriptor>,
    count: usize,
    too_many: bool,
    too_long: bool,
    mem: &GuestRam,
    capacity: u64,
    read_only: bool,
    req: &mut Request,
) -> Result<(), RequestError> {
    let header_desc = match first {
        Some(h) if count >= 2 && !h.is_write_only() && h.len() >= 16 => h,
        _ => return Err(RequestError::BadHeader),
    };
    let header: Header = mem
        .read_obj(header_desc.addr())
        .map_err(|_| RequestError::HeaderUnreadable)?;
    let (ty, sector) = (u32::from_le(header.ty), u64::from_le(header.sector));
    let kind = match ty {
        T_IN => Kind::Read,
        T_OUT => Kind::Write,
        T_FLUSH => Kind::Flush,
        T_GET_ID => Kind::GetId,
        other => return Err(RequestError::Unsupported(other)),
    };
    if too_many {
        return Err(RequestError::TooManySegments);
    }
    if too_long {
        return Err(RequestError::SegmentTooLong);
    }
    req.kind = Some(kind);
    req.sector = sector;
    match kind {
        Kind::Flush => {
            // Data segments of a flush carry nothing; they are ignored.
            req.segments.clear();
            req.len = 0;
            Ok(())
        }
        Kind::GetId => {
            // The device writes; every data segment must be device-writable.
            check_directions(req, true)?;
            req.len = req.len.min(ID_BYTES as u64);
            Ok(())
        }
        Kind::Read | Kind::Write => {
            let write = kind == Kind::Write;
            if write && read_only {
                return Err(RequestError::ReadOnly);
            }
            check_directions(req, !write)?;
            if !req.len.is_multiple_of(SECTOR_SIZE) {
                return Err(RequestError::Unaligned(req.len));
            }
            let in_range = sector
                .checked_mul(SECTOR_SIZE)
                .and_then(|start| start.checked_add(req.len))
                .is_some_and(|end| end <= capacity);
            if !in_range {
                return Err(RequestError::OutOfRange {
                    sector,
                    len: req.len,
                    capacity,
                });
            }
            Ok(())
        }
    }
}

/// Every data segment must be device-writable (`device_writes`) or device-readable (not).
fn check_directions(req: &Request, device_writes: bool) -> Result<(), RequestError> {
    if req
        .segments
        .iter()
        .all(|s| s.device_writes == device_writes)
    {
        Ok(())
    } else {
        Err(RequestError::WrongDirection)
    }
}
