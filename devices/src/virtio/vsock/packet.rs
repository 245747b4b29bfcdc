//! vsock packet headers (`struct virtio_vsock_hdr`): decoding, checks on guest-written headers,
//! and encoding of the headers the device sends.

/// Size of the header on the wire.
pub const HDR_SIZE: usize = 44;
/// The only socket type supported: stream.
pub const TYPE_STREAM: u16 = 1;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Largest payload accepted from or sent to the guest in one packet.
pub const MAX_PAYLOAD: u32 = 64 << 10;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Why a guest packet was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("the descriptor chain holds {0} bytes, less than a {HDR_SIZE}-byte vsock header")]
    Short(usize),
    #[error("payload length {0} is over the {MAX_PAYLOAD}-byte limit")]
    TooLong(u32),
    #[error("payload length {len} exceeds the {avail} bytes the descriptor chain holds")]
    Truncated { len: u32, avail: usize },
    #[error("socket type {0} is not supported (only stream sockets)")]
    BadType(u16),
    #[error("unknown operation {0}")]
    BadOp(u16),
    #[error("source CID {got} is not the guest's CID {want}")]
    BadSrcCid { got: u64, want: u64 },
    #[error("destination CID {0} is not the host ({HOST_CID})")]
    BadDstCid(u64),
}

impl PacketError {
    /// Whether the guest should be answered with a reset (the header itself is trustworthy
    /// enough to address one); otherwise the packet is dropped silently.
    pub fn wants_rst(&self) -> bool {
        matches!(self, Self::BadType(_) | Self::BadOp(_) | Self::BadDstCid(_))
    }
}

/// A vsock header in host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn u16_at(b: &[u8; HDR_SIZE], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8; HDR_SIZE], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8; HDR_SIZE], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

impl Header {
    /// Decode the little-endian wire format.
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        Self {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    /// Encode into the little-endian wire format.
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Check a header the guest wrote into a chain of `chain_len` readable bytes (header
    /// included). Only `OP_RW` carries a payload; other operations' `len` is ignored.
    pub fn validate(&self, chain_len: usize, guest_cid: u64) -> Result<(), PacketError> {
        if self.src_cid != guest_cid {
            return Err(PacketError::BadSrcCid {
                got: self.src_cid,
                want: guest_cid,
            });
        }
        if self.op == OP_RW {
            if self.len > MAX_PAYLOAD {
                return Err(PacketError::TooLong(self.len));
            }
            let avail = chain_len.saturating_sub(HDR_SIZE);
            if self.len as usize > avail {
                return Err(PacketError::Truncated {
                    len: self.len,
                    avail,
                });
            }
        }
        if self.dst_cid != HOST_CID {
            return Err(PacketError::BadDstCid(self.dst_cid));
        }
        if self.type_ != TYPE_STREAM {
            return Err(PacketError::BadType(self.type_));
        }
        if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&self.op) {
            return Err(PacketError::BadOp(self.op));
        }
        Ok(())
    }

    /// Payload bytes that follow this (validated) header.
    pub fn payload_len(&self) -> usize {
        if self.op == OP_RW {
            self.len as usize
        } else {
            0
        }
    }

    /// The reset that answers this packet (addresses swapped).
    pub fn reset_reply(&self) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Default::default()
        }
    }
}

/// Decode the header at the start of a chain of `chain_len` readable bytes.
pub fn parse(bytes: &[u8], chain_len: usize) -> Result<Header, PacketError> {
    let b: &[u8; HDR_SIZE] = bytes
        .get(..HDR_SIZE)
        .and_then(|s| s.try_into().ok())
        .ok_or(PacketError::Short(chain_len.min(bytes.len())))?;
    Ok(Header::from_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: u64 = 3;

    fn good() -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 5000,
            len: 16,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 0,
        }
    }

    #[test]
    fn header_round_trips() {
        let h = good();
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
        assert_eq!(h.to_bytes()[28..30], [1, 0]);
    }

    #[test]
    fn short_chain_is_refused() {
        assert_eq!(parse(&[0u8; 20], 20), Err(PacketError::Short(20)));
        assert!(parse(&good().to_bytes(), 44).is_ok());
    }

    #[test]
    fn malformed_headers_are_refused() {
        let v = |h: Header, chain: usize| h.validate(chain, CID);
        assert_eq!(v(good(), 60), Ok(()));
        // Length beyond the buffer, and beyond the limit.
        assert_eq!(
            v(good(), 50),
            Err(PacketError::Truncated { len: 16, avail: 6 })
        );
        let huge = Header {
            len: u32::MAX,
            ..good()
        };
        assert_eq!(v(huge, usize::MAX), Err(PacketError::TooLong(u32::MAX)));
        // Wrong CIDs.
        let spoofed = Header {
            src_cid: 2,
            ..good()
        };
        assert!(matches!(v(spoofed, 60), Err(PacketError::BadSrcCid { .. })));
        let elsewhere = Header {
            dst_cid: 7,
            ..good()
        };
        assert_eq!(v(elsewhere, 60), Err(PacketError::BadDstCid(7)));
        assert!(v(elsewhere, 60).unwrap_err().wants_rst());
        // Unknown type and op.
        let dgram = Header { type_: 2, ..good() };
        assert_eq!(v(dgram, 60), Err(PacketError::BadType(2)));
        let op = Header { op: 99, ..good() };
        assert_eq!(v(op, 60), Err(PacketError::BadOp(99)));
        // A non-RW op's length is not trusted nor needed.
        let req = Header {
            op: OP_REQUEST,
            len: u32::MAX,
            ..good()
        };
        assert_eq!(v(req, 44), Ok(()));
        assert_eq!(req.payload_len(), 0);
    }
}
