//! Raw disk image back-end: positioned, vectored reads and writes directly between the image and
//! guest memory (`preadv`/`pwritev`, no bounce buffer), and `fdatasync` for flush.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Why a disk image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot open disk image {path}: {source} (check the path and its permissions; use readonly=on for a file you may only read)")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("disk image {0} is a directory: give a raw image file")]
    Directory(PathBuf),
    #[error("cannot find the size of disk image {path}: {source}")]
    Size {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("disk image {0} came from a saved configuration and is not a regular file named without symlinks (it changed after it was allowed): nothing was opened")]
    NotPlain(PathBuf),
}

/// An open raw image.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    size: u64,
    read_only: bool,
}

/// Open `path` without following a symlink in any of its components.
fn open_no_symlinks(path: &Path, read_only: bool) -> std::io::Result<File> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::FromRawFd;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let access = if read_only {
        libc::O_RDONLY
    } else {
        libc::O_RDWR
    };
    // SAFETY: open_how is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (access | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: openat2 reads the NUL-terminated path and `how` (its size given), both alive for
    // the call, and returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor openat2 just returned, owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

/// Upper bound on iovecs per system call (Linux IOV_MAX).
const IOV_MAX: usize = 1024;

/// What `transfer` does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    /// Read only what the page cache holds (RWF_NOWAIT).
    ReadCached,
    Write,
}

impl RawFile {
    /// Opens `path` for reading (and writing unless `read_only`).
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BackendError> {
        Self::open_with(path, read_only, false)
    }

    /// `open`; with `plain`, only a regular file reached without following any symlink
    /// (`openat2` with `RESOLVE_NO_SYMLINKS`): an image a saved configuration named, checked when
    /// it was admitted, cannot have been swapped for a link or a device since.
    pub fn open_with(path: &Path, read_only: bool, plain: bool) -> Result<Self, BackendError> {
        let opened = if plain {
            open_no_symlinks(path, read_only)
        } else {
            OpenOptions::new().read(true).write(!read_only).open(path)
        };
        let mut file = opened.map_err(|source| {
            if plain && source.raw_os_error() == Some(libc::ELOOP) {
                return BackendError::NotPlain(path.to_path_buf());
            }
            if path.is_dir() {
                return BackendError::Directory(path.to_path_buf());
            }
            BackendError::Open {
                path: path.to_path_buf(),
                source,
            }
        })?;
        if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(BackendError::Directory(path.to_path_buf()));
        }
        if plain && !file.metadata().is_ok_and(|m| m.file_type().is_file()) {
            return Err(BackendError::NotPlain(path.to_path_buf()));
        }
        // Seeking to the end works for regular files and block devices alike.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BackendError::Size {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            file,
            size,
            read_only,
        })
    }

    /// Size of the image in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the image was opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Fills the host buffers `iov` from the image at `offset`, completely or not at all.
    pub fn read_at(&self, iov: &mut [libc::iovec], offset: u64) -> std::io::Result<()> {
        self.transfer(iov, offset, Op::Read)
    }

    /// `read_at`, but only from the page cache: `ErrorKind::WouldBlock` when the disk would have
    /// to be read (or the kernel cannot tell), and the caller then reads on a worker thread.
    /// `iov` may be partly filled and advanced by then.
    pub fn read_cached_at(&self, iov: &mut [libc::iovec], offset: u64) -> std::io::Result<()> {
        self.transfer(iov, offset, Op::ReadCached)
    }

    /// Writes the host buffers `iov` to the image at `offset`, completely or with an error.
    pub fn write_at(&self, iov: &mut [libc::iovec], offset: u64) -> std::io::Result<()> {
        if self.read_only {
            return Err(std::io::Error::from_raw_os_error(libc::EROFS));
        }
        self.transfer(iov, offset, Op::Write)
    }

    /// Makes written data durable.
    pub fn flush(&self) -> std::io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    /// `preadv`/`pwritev` until every byte of `iov` moved; `iov` is consumed (advanced) on the way.
    ///
    /// The caller guarantees every iovec points into host memory it may access (guest RAM slices).
    fn transfer(&self, iov: &mut [libc::iovec], offset: u64, op: Op) -> std::io::Result<()> {
        let total: u64 = iov.iter().map(|v| v.iov_len as u64).sum();
        if offset.checked_add(total).is_none_or(|end| end > self.size) {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut first = 0;
        let mut pos = offset;
        while first < iov.len() {
            if iov[first].iov_len == 0 {
                first += 1;
                continue;
            }
            let batch = &iov[first..iov.len().min(first + IOV_MAX)];
            let off = libc::off_t::try_from(pos)
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
            let (fd, ptr, cnt) = (
                self.file.as_raw_fd(),
                batch.as_ptr(),
                batch.len() as libc::c_int,
            );
            // SAFETY: every iovec in `batch` describes host memory valid for `iov_len` bytes (the
            // caller's contract: slices of guest RAM that stay mapped while the VM runs); the fd
            // is ours. The kernel reads or writes only inside those buffers.
            let n = unsafe {
                match op {
                    Op::Write => libc::pwritev(fd, ptr, cnt, off),
                    Op::Read => libc::preadv(fd, ptr, cnt, off),
                    Op::ReadCached => libc::preadv2(fd, ptr, cnt, off, libc::RWF_NOWAIT),
                }
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // Not in the page cache, or no RWF_NOWAIT here: the caller reads it the
                    // blocking way.
                    Some(libc::EAGAIN | libc::EOPNOTSUPP) if op == Op::ReadCached => {
                        return Err(std::io::ErrorKind::WouldBlock.into())
                    }
                    _ => return Err(e),
                }
            }
            if n == 0 {
                // The image shrank underneath us.
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            let mut left = n as usize;
            pos += n as u64;
            while left > 0 && first < iov.len() {
                let v = &mut iov[first];
                if left >= v.iov_len {
                    left -= v.iov_len;
                    v.iov_len = 0;
                    first += 1;
                } else {
                    // SAFETY: advancing inside the same buffer by fewer than its length.
                    v.iov_base = unsafe { v.iov_base.cast::<u8>().add(left) }.cast();
                    v.iov_len -= left;
                    left = 0;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempfile::TempFile;

    fn iov(buf: &mut [u8]) -> libc::iovec {
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }
    }

    #[test]
    fn write_then_read_back_in_pieces() {
        let tmp = TempFile::new().unwrap();
        tmp.as_file().set_len(4096).unwrap();
        let f = RawFile::open(tmp.as_path(), false).unwrap();
        assert_eq!(f.size(), 4096);
        let mut a = [1u8; 100];
        let mut b = [2u8; 412];
        f.write_at(&mut [iov(&mut a), iov(&mut b)], 512).unwrap();
        let mut r = [0u8; 512];
        f.read_at(&mut [iov(&mut r)], 512).unwrap();
        assert!(r[..100].iter().all(|&x| x == 1) && r[100..].iter().all(|&x| x == 2));
    }

    #[test]
    fn out_of_range_and_read_only_are_errors() {
        let tmp = TempFile::new().unwrap();
        tmp.as_file().set_len(1024).unwrap();
        let f = RawFile::open(tmp.as_path(), false).unwrap();
        let mut r = [0u8; 512];
        assert!(f.read_at(&mut [iov(&mut r)], 1024).is_err());
        assert!(f.read_at(&mut [iov(&mut r)], 513).is_err());
        assert!(f.read_at(&mut [iov(&mut r)], u64::MAX - 10).is_err());
        let ro = RawFile::open(tmp.as_path(), true).unwrap();
        assert!(ro.write_at(&mut [iov(&mut r)], 0).is_err());
        assert!(ro.flush().is_ok());
    }

    #[test]
    fn missing_file_and_directory_are_clear_errors() {
        let e = RawFile::open(Path::new("/nonexistent/disk.img"), false).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/disk.img"), "{e}");
        let e = RawFile::open(Path::new("/tmp"), true).unwrap_err();
        assert!(matches!(e, BackendError::Directory(_)), "{e}");
    }

    #[test]
    fn a_plain_open_refuses_links_anywhere_and_devices() {
        let dir = std::env::temp_dir().join(format!("plainvm-plain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        let img = dir.join("real/a.img");
        std::fs::write(&img, [0u8; 4096]).unwrap();
        assert_eq!(RawFile::open_with(&img, false, true).unwrap().size(), 4096);
        // The image swapped for a link (what a writer of the allowed directory could do after
        // admission), or a directory on the way swapped for one.
        std::os::unix::fs::symlink(&img, dir.join("link.img")).unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("dirlink")).unwrap();
        for p in [dir.join("link.img"), dir.join("dirlink/a.img")] {
            let e = RawFile::open_with(&p, false, true).unwrap_err();
            assert!(matches!(e, BackendError::NotPlain(_)), "{e}");
            // The operator's own path may go through links.
            assert!(RawFile::open_with(&p, false, false).is_ok());
        }
        let e = RawFile::open_with(Path::new("/dev/null"), true, true).unwrap_err();
        assert!(matches!(e, BackendError::NotPlain(_)), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
