//! The memory file: guest RAM regions back to back, sparse (zero and untouched pages are holes),
//! mapped lazily on restore.

use crate::memory::slots::DirtyBitmap;
use plainvm_devices::GuestRam;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

const PAGE: usize = 4096;

/// Errors writing or mapping the memory file.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    #[error("cannot {what} memory file {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("memory file {path} holds {found} bytes, the snapshot needs {want}: it is truncated or not from this snapshot")]
    Size {
        path: PathBuf,
        found: u64,
        want: u64,
    },
    #[error("cannot map memory file {path}: {detail}")]
    Map { path: PathBuf, detail: String },
}

/// Write every region of `mem` into `path`. Only resident, non-zero pages are written; with
/// `file_backed` (a restored VM whose memory maps an older snapshot) every page is checked, since
/// pages it never touched are not resident yet still hold data.
pub fn write(path: &Path, mem: &GuestRam, file_backed: bool) -> Result<u64, MemoryFileError> {
    let io = |what| {
        move |source| MemoryFileError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let f = super::files::create_private(path).map_err(io("create"))?;
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    f.set_len(total).map_err(io("size"))?;
    let mut offset = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        let host = host_address(mem, region, path)?;
        let resident = if file_backed {
            vec![1u8; len / PAGE]
        } else {
            residency(host, len)
        };
        let mut page = 0;
        while page < len / PAGE {
            if resident[page] & 1 == 0 {
                page += 1;
                continue;
            }
            // Coalesce a run of resident pages and write its non-zero stretches.
            let start = page;
            while page < len / PAGE && resident[page] & 1 != 0 {
                page += 1;
            }
            // SAFETY: [start, page) pages lie inside this region's live mapping; vCPUs are paused,
            // so nothing writes the memory while we read it.
            let run = unsafe {
                std::slice::from_raw_parts(host.add(start * PAGE), (page - start) * PAGE)
            };
            // One write per stretch of non-zero pages; zero pages stay holes.
            let mut i = 0;
            while i < run.len() / PAGE {
                if is_zero(&run[i * PAGE..(i + 1) * PAGE]) {
                    i += 1;
                    continue;
                }
                let first = i;
                while i < run.len() / PAGE && !is_zero(&run[i * PAGE..(i + 1) * PAGE]) {
                    i += 1;
                }
                let at = offset + ((start + first) * PAGE) as u64;
                f.write_all_at(&run[first * PAGE..i * PAGE], at)
                    .map_err(io("write"))?;
                written += ((i - first) * PAGE) as u64;
            }
        }
        offset += len as u64;
    }
    f.sync_all().map_err(io("sync"))?;
    Ok(written)
}

/// Write only the pages set in `dirty` (one bitmap per region, in order) into `path` (a sparse
/// file of full size) and the page bitmap into `pages`.
pub fn write_pages(
    path: &Path,
    pages: &Path,
    mem: &GuestRam,
    dirty: &[DirtyBitmap],
) -> Result<u64, MemoryFileError> {
    let io = |what, p: &Path| {
        let path = p.to_path_buf();
        move |source| MemoryFileError::Io { what, path, source }
    };
    let f = super::files::create_private(path).map_err(io("create", path))?;
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    f.set_len(total).map_err(io("size", path))?;
    let mut offset = 0u64;
    let mut written = 0u64;
    let mut all_bits: Vec<u8> = Vec::new();
    for (region, bitmap) in mem.iter().zip(dirty) {
        let len = region.len() as usize;
        let host = host_address(mem, region, path)?;
        for page in 0..len / PAGE {
            if bitmap
                .bits
                .get(page / 64)
                .is_some_and(|w| w & (1 << (page % 64)) != 0)
            {
                // SAFETY: the page lies inside this region's live mapping; vCPUs are paused.
                let data = unsafe { std::slice::from_raw_parts(host.add(page * PAGE), PAGE) };
                f.write_all_at(data, offset + (page * PAGE) as u64)
                    .map_err(io("write", path))?;
                written += PAGE as u64;
            }
        }
        let words = (len / PAGE).div_ceil(64);
        for i in 0..words {
            let w = bitmap.bits.get(i).copied().unwrap_or(0);
            all_bits.extend_from_slice(&w.to_le_bytes());
        }
        offset += len as u64;
    }
    {
        use std::io::Write;
        super::files::create_private(pages)
            .and_then(|mut p| p.write_all(&all_bits))
            .map_err(io("write", pages))?;
    }
    f.sync_all().map_err(io("sync", path))?;
    Ok(written)
}

/// Copy the pages a diff snapshot holds (per its page bitmap) into `mem`.
pub fn overlay(path: &Path, pages: &Path, mem: &GuestRam) -> Result<(), MemoryFileError> {
    let io = |what, p: &Path| {
        let path = p.to_path_buf();
        move |source| MemoryFileError::Io { what, path, source }
    };
    let words: usize = mem
        .iter()
        .map(|r| (r.len() as usize / PAGE).div_ceil(64))
        .sum();
    // The page bitmap is exactly one bit per page: read no more than that.
    let bits = super::files::read_capped(pages, words as u64 * 8).map_err(io("read", pages))?;
    let f = super::files::open_regular(path).map_err(io("open", path))?;
    let want: u64 = mem.iter().map(|r| r.len()).sum();
    let found = f.metadata().map_err(io("stat", path))?.len();
    if found != want || bits.len() != words * 8 {
        return Err(MemoryFileError::Size {
            path: path.to_path_buf(),
            found,
            want,
        });
    }
    let mut offset = 0u64;
    let mut word_base = 0usize;
    for region in mem.iter() {
        let len = region.len() as usize;
        let host = host_address(mem, region, path)?;
        for page in 0..len / PAGE {
            let byte = bits[(word_base + page / 64) * 8 + (page % 64) / 8];
            if byte & (1 << (page % 8)) != 0 {
                // SAFETY: the page lies inside this region's mapping, which no vCPU runs on yet.
                let buf = unsafe { std::slice::from_raw_parts_mut(host.add(page * PAGE), PAGE) };
                f.read_exact_at(buf, offset + (page * PAGE) as u64)
                    .map_err(io("read", path))?;
            }
        }
        word_base += (len / PAGE).div_ceil(64);
        offset += len as u64;
    }
    Ok(())
}

/// Where `region` of `mem` is mapped in this process.
fn host_address(
    mem: &GuestRam,
    region: &plainvm_devices::GuestRamRegion,
    path: &Path,
) -> Result<*mut u8, MemoryFileError> {
    mem.get_host_address(region.start_addr())
        .map_err(|e| MemoryFileError::Map {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
}

/// True when the page holds only zero bytes (compared a word at a time).
fn is_zero(page: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: reinterpreting initialised bytes as u64 words is sound; align_to splits off
        // any unaligned ends.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Which pages of `[host, host + len)` are resident (mincore); all of them if mincore fails.
fn residency(host: *mut u8, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len.div_ceil(PAGE)];
    // SAFETY: `host` is the page-aligned start of a mapping of `len` bytes and `v` has one byte
    // per page, as mincore requires.
    let r = unsafe { libc::mincore(host.cast(), len, v.as_mut_ptr()) };
    if r != 0 {
        v.fill(1);
    }
    v
}

/// Load `path` into `mem`: mapped over each region copy-on-write (lazy), or read in (`copy`).
pub fn load(path: &Path, mem: &GuestRam, copy: bool) -> Result<(), MemoryFileError> {
    let io = |what| {
        move |source| MemoryFileError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let file = super::files::open_regular(path).map_err(io("open"))?;
    let found = file.metadata().map_err(io("stat"))?.len();
    let want: u64 = mem.iter().map(|r| r.len()).sum();
    if found != want {
        return Err(MemoryFileError::Size {
            path: path.to_path_buf(),
            found,
            want,
        });
    }
    let mut offset = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        let host = host_address(mem, region, path)?;
        if copy {
            // SAFETY: `host` maps `len` bytes of guest memory that no vCPU runs on yet.
            let buf = unsafe { std::slice::from_raw_parts_mut(host, len) };
            file.read_exact_at(buf, offset).map_err(io("read"))?;
        } else {
            // SAFETY: replaces this region's own anonymous mapping (same address and length,
            // owned by `mem`, unused yet) with a private mapping of the file; KVM follows the
            // address, not the mapping.
            let p = unsafe {
                libc::mmap(
                    host.cast(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    offset as libc::off_t,
                )
            };
            if p != host.cast() {
                return Err(MemoryFileError::Map {
                    path: path.to_path_buf(),
                    detail: std::io::Error::last_os_error().to_string(),
                });
            }
        }
        offset += len as u64;
    }
    Ok(())
}
