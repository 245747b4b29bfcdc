//! Snapshots on disk: a directory with a checksummed state file and a sparse memory file.

pub mod memory_file;
pub mod state_file;

use crate::vm_state::VmState;
use std::path::{Path, PathBuf};
use vm_memory::GuestMemoryMmap;

/// The state file's name inside a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file's name inside a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// Errors creating or reading a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot directory {0} already exists: choose a new path or remove it")]
    Exists(PathBuf),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] state_file::StateFileError),
    #[error(transparent)]
    Memory(#[from] memory_file::MemoryFileError),
}

/// What a snapshot cost.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct SnapshotStats {
    /// Bytes of guest memory written (zero and untouched pages are holes).
    pub memory_bytes_written: u64,
}

/// Write `state` and `mem` to a new directory `dir`, all or nothing: everything goes to a
/// temporary directory beside it that is renamed into place only when complete.
pub fn create(
    dir: &Path,
    state: &VmState,
    mem: &GuestMemoryMmap,
    file_backed: bool,
) -> Result<SnapshotStats, SnapshotError> {
    if dir.exists() {
        return Err(SnapshotError::Exists(dir.to_path_buf()));
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".into());
    let tmp = dir.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { what, path, source }
    };
    std::fs::create_dir_all(&tmp).map_err(io("create", &tmp))?;
    let result = (|| {
        let written = memory_file::write(&tmp.join(MEMORY_FILE), mem, file_backed)?;
        state_file::write(&tmp.join(STATE_FILE), state)?;
        std::fs::rename(&tmp, dir).map_err(io("rename the finished snapshot to", dir))?;
        Ok(SnapshotStats {
            memory_bytes_written: written,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Read and check a snapshot's state file.
pub fn load_state(dir: &Path) -> Result<VmState, SnapshotError> {
    Ok(state_file::read(&dir.join(STATE_FILE))?)
}
