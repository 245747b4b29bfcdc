//! Snapshots on disk: a directory with a checksummed state file and a sparse memory file. The
//! state is opaque bytes here (`vm::state` encodes it).

pub mod files;
pub mod memory_file;
pub mod state_file;

use crate::memory::slots::DirtyBitmap;
use plainvm_devices::GuestRam;
use std::path::{Path, PathBuf};

/// The state file's name inside a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file's name inside a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// In a diff snapshot: which pages the memory file holds (one bit per page).
pub const PAGES_FILE: &str = "pages";
/// In a diff snapshot: the absolute path of the snapshot it applies on top of.
pub const PARENT_FILE: &str = "parent";

/// What goes into the memory file.
pub enum MemoryContent<'a> {
    /// All of guest memory; `file_backed` as in `memory_file::write`.
    Full { file_backed: bool },
    /// Only the pages in the dirty bitmaps (one per region), on top of `parent`.
    Diff {
        dirty: &'a [DirtyBitmap],
        parent: &'a Path,
    },
}

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
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SnapshotStats {
    /// Bytes of guest memory written (zero and untouched pages are holes).
    pub memory_bytes_written: u64,
}

/// Write `state` and `mem` to a new directory `dir`, all or nothing: everything goes to a
/// temporary directory beside it that is renamed into place only when complete.
pub fn create(
    dir: &Path,
    state: &[u8],
    mem: &GuestRam,
    content: MemoryContent<'_>,
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
    files::create_private_dir(&tmp).map_err(io("create", &tmp))?;
    let result = (|| {
        let written = match content {
            MemoryContent::Full { file_backed } => {
                memory_file::write(&tmp.join(MEMORY_FILE), mem, file_backed)?
            }
            MemoryContent::Diff { dirty, parent } => {
                let p = tmp.join(PARENT_FILE);
                files::create_private(&p)
                    .and_then(|mut f| {
                        std::io::Write::write_all(&mut f, parent.as_os_str().as_encoded_bytes())
                    })
                    .map_err(io("write", &p))?;
                memory_file::write_pages(&tmp.join(MEMORY_FILE), &tmp.join(PAGES_FILE), mem, dirty)?
            }
        };
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

/// Put a snapshot's memory into `mem` (fresh anonymous guest memory): the memory file is mapped
/// over it copy-on-write, so pages load lazily when the guest touches them (with `copy`, it is
/// read in up front instead); diff snapshots are applied on top of their parents, which must lie
/// beside `dir` (in the directory that holds it) or under one of `roots` (the operator's
/// `--allow-dir`s): a snapshot from elsewhere cannot name another VM's snapshot as its parent.
pub fn load_memory(
    dir: &Path,
    roots: &[PathBuf],
    mem: &GuestRam,
    copy: bool,
) -> Result<(), SnapshotError> {
    let chain = parent_chain(dir, roots)?;
    let (base, diffs) = chain.split_last().unwrap_or((&chain[0], &[]));
    memory_file::load(&base.join(MEMORY_FILE), mem, copy)?;
    for d in diffs.iter().rev() {
        memory_file::overlay(&d.join(MEMORY_FILE), &d.join(PAGES_FILE), mem)?;
    }
    Ok(())
}

/// `dir` and its parents, newest first, ending with a full snapshot. The chain is bounded and
/// may not loop back on itself; each parent is named by an absolute path, and must lie in the
/// directory that holds `dir` or under one of `roots` (symlinks resolved).
pub fn parent_chain(dir: &Path, roots: &[PathBuf]) -> Result<Vec<PathBuf>, SnapshotError> {
    let bad = |path: &Path, why: String| SnapshotError::Io {
        what: "follow the parent of",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
    };
    let mut chain = vec![dir.to_path_buf()];
    // The directory that holds the snapshot is where its parents may lie. The snapshot
    // directory itself must not be a symlink: one planted by whoever wrote the snapshot (e.g.
    // `snap -> .` in a jail directory) would widen that area to the directory above.
    if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(bad(
            dir,
            "the snapshot directory is a symlink: give the directory itself".into(),
        ));
    }
    let holder = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let holder = std::fs::canonicalize(holder).unwrap_or_else(|_| holder.to_path_buf());
    let here = holder.join(dir.file_name().unwrap_or_default());
    let mut allowed: Vec<PathBuf> = roots.to_vec();
    allowed.push(holder);
    let mut seen = vec![here];
    loop {
        let at = chain.last().cloned().unwrap_or_default();
        let parent_file = at.join(PARENT_FILE);
        let bytes = match files::read_capped(&parent_file, MAX_PARENT_PATH) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(chain),
            Err(source) => {
                return Err(SnapshotError::Io {
                    what: "read",
                    path: parent_file,
                    source,
                })
            }
            Ok(b) => b,
        };
        let parent = PathBuf::from(String::from_utf8_lossy(&bytes).into_owned());
        if !parent.is_absolute() {
            return Err(bad(
                &at,
                format!("the parent {} is not an absolute path", parent.display()),
            ));
        }
        let canonical = std::fs::canonicalize(&parent).map_err(|e| {
            bad(
                &at,
                format!(
                    "its parent snapshot {} cannot be found: {e}",
                    parent.display()
                ),
            )
        })?;
        if !allowed.iter().any(|r| canonical.starts_with(r)) {
            return Err(bad(
                &at,
                format!(
                    "its parent {} lies outside the directory that holds the snapshot: move the chain into one directory, or allow the parent's with --allow-dir",
                    parent.display()
                ),
            ));
        }
        if seen.contains(&canonical) {
            return Err(bad(
                &at,
                "the chain of diff snapshots loops back on itself".into(),
            ));
        }
        if chain.len() > MAX_CHAIN {
            return Err(bad(
                dir,
                format!("more than {MAX_CHAIN} diff snapshots in a chain: take a full snapshot"),
            ));
        }
        seen.push(canonical.clone());
        chain.push(canonical);
    }
}

/// Most diff snapshots on top of one full snapshot.
pub const MAX_CHAIN: usize = 64;
/// Longest `parent` file.
const MAX_PARENT_PATH: u64 = 4096;

/// Read and check a snapshot's state file; returns the encoded state.
pub fn load_state(dir: &Path) -> Result<Vec<u8>, SnapshotError> {
    Ok(state_file::read(&dir.join(STATE_FILE))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_directory_that_is_a_symlink_cannot_widen_where_parents_may_lie() {
        let base = std::env::temp_dir().join(format!("plainvm-chain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (jail, other) = (base.join("jail"), base.join("other"));
        for d in [jail.join("diff"), other.join("full")] {
            std::fs::create_dir_all(d).unwrap();
        }
        let parent = other.join("full");
        std::fs::write(
            jail.join("diff").join(PARENT_FILE),
            parent.to_str().unwrap(),
        )
        .unwrap();
        // The parent lies beside another directory: refused.
        let e = parent_chain(&jail.join("diff"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the directory"), "{e}");
        // `snap -> .` in the jail: the area would have been `base`, holding `other`.
        std::os::unix::fs::symlink(".", jail.join("snap")).unwrap();
        std::fs::write(jail.join(PARENT_FILE), parent.to_str().unwrap()).unwrap();
        let e = parent_chain(&jail.join("snap"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("symlink"), "{e}");
        // Allowed explicitly, the chain is followed.
        let chain = parent_chain(&jail.join("diff"), std::slice::from_ref(&other)).unwrap();
        assert_eq!(chain.len(), 2);
        let _ = std::fs::remove_dir_all(&base);
    }
}
