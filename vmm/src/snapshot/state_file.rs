//! The state file: magic, format version, length, the encoded VM state, then a CRC-64.

use std::io::Write;
use std::path::{Path, PathBuf};

/// File magic.
pub const MAGIC: &[u8; 8] = b"PLAINVMS";
/// Format version; bump on any incompatible change to `VmState`.
pub const VERSION: u32 = 3;
/// Largest state file accepted (vCPU state is a few KiB each).
const MAX_LEN: u64 = 64 << 20;
const CRC: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_ECMA_182);

/// Errors writing or reading the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot {what} state file {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a plainvm snapshot state file (bad magic)")]
    Magic(PathBuf),
    #[error("{path} has snapshot format version {found}; this plainvm reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{0} is truncated or corrupted (length or checksum mismatch)")]
    Corrupt(PathBuf),
}

/// Wrap the encoded state `payload` in header and checksum.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 28);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = CRC.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Check header and checksum of `bytes` and return the encoded state (`path` names it in errors).
pub fn decode<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a [u8], StateFileError> {
    let p = || path.to_path_buf();
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(StateFileError::Magic(p()));
    }
    if bytes.len() < 28 {
        return Err(StateFileError::Corrupt(p()));
    }
    let found = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
    if found != VERSION {
        return Err(StateFileError::Version { path: p(), found });
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap_or_default());
    if len > MAX_LEN || bytes.len() as u64 != 20 + len + 8 {
        return Err(StateFileError::Corrupt(p()));
    }
    let body_end = 20 + len as usize;
    let crc = u64::from_le_bytes(bytes[body_end..].try_into().unwrap_or_default());
    if CRC.checksum(&bytes[..body_end]) != crc {
        return Err(StateFileError::Corrupt(p()));
    }
    Ok(&bytes[20..body_end])
}

/// Write the state file (fsync'd: the snapshot is renamed into place right after).
pub fn write(path: &Path, payload: &[u8]) -> Result<(), StateFileError> {
    let io = |what| {
        move |source| StateFileError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let bytes = encode(payload);
    let mut f = super::files::create_private(path).map_err(io("create"))?;
    f.write_all(&bytes).map_err(io("write"))?;
    f.sync_all().map_err(io("sync"))
}

/// Read and check the state file; returns the encoded state.
pub fn read(path: &Path) -> Result<Vec<u8>, StateFileError> {
    let io = |what| {
        move |source| StateFileError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    // A regular file of at most the largest state: a symlink to /dev/zero or a FIFO is refused
    // at once.
    let bytes = super::files::read_capped(path, MAX_LEN + 28).map_err(io("read"))?;
    decode(&bytes, path).map(<[u8]>::to_vec)
}
