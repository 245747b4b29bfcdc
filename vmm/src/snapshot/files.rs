//! Opening and creating the files of a snapshot directory, which may come from anywhere: a file
//! read must be a regular file (not a symlink, FIFO or device), and is read only up to a size
//! fixed in advance; files created are 0600 and never follow a symlink someone planted.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Open `path` for reading: a regular file, not through a symlink (the last component), and
/// without blocking on a FIFO.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => not_regular("a symbolic link"),
            _ => e,
        })?;
    let kind = f.metadata()?.file_type();
    if !kind.is_file() {
        return Err(not_regular(if kind.is_dir() {
            "a directory"
        } else {
            "a FIFO, socket or device"
        }));
    }
    Ok(f)
}

fn not_regular(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("it is {what}, not a regular file: refused"),
    )
}

/// Read all of `path` (a regular file) if it holds at most `max` bytes.
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let f = open_regular(path)?;
    let len = f.metadata()?.len();
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("it holds {len} bytes, more than the {max} it may: refused"),
        ));
    }
    let mut out = Vec::with_capacity(len as usize);
    f.take(max).read_to_end(&mut out)?;
    Ok(out)
}

/// Create `path` for writing: a new file, mode 0600, not through a symlink.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Create the directory `path` (mode 0700); it must not exist yet (a planted symlink or
/// directory makes this fail instead of being written through).
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read_and_only_up_to_their_cap() {
        let d = std::env::temp_dir().join(format!("plainvm-snapfiles-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        create_private_dir(&d).unwrap();
        let f = d.join("f");
        std::fs::write(&f, b"12345").unwrap();
        assert_eq!(read_capped(&f, 5).unwrap(), b"12345");
        assert!(read_capped(&f, 4).is_err());
        std::os::unix::fs::symlink("/dev/zero", d.join("link")).unwrap();
        let e = read_capped(&d.join("link"), 100).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(read_capped(Path::new("/dev/zero"), 100).is_err());
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let t = std::time::Instant::now();
        assert!(read_capped(&fifo, 100).is_err());
        assert!(
            t.elapsed() < std::time::Duration::from_secs(1),
            "blocked on a FIFO"
        );
        assert!(create_private(&f).is_err(), "overwrote an existing file");
        assert!(
            create_private(&d.join("link")).is_err(),
            "wrote through a symlink"
        );
        assert!(create_private_dir(&d).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
