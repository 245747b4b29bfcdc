//! Unix sockets plainvm listens on (the API socket, the vsock socket): refuse a path a live
//! process serves, replace a stale socket (and nothing that is not a socket), and create it
//! with mode 0600 whatever the umask.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Connections waiting to be accepted.
const BACKLOG: libc::c_int = 64;

/// The mode of every socket plainvm creates: the owner only.
pub const SOCKET_MODE: u32 = 0o600;

/// Errors creating a socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("socket {0} is in use by a running VM: pick another path")]
    InUse(PathBuf),
    #[error("socket path {0} exists and is not a socket: plainvm only replaces a stale socket, so remove it yourself or pick another path")]
    NotASocket(PathBuf),
    #[error("cannot listen on socket {path}: {source}")]
    Listen { path: PathBuf, source: io::Error },
}

/// Listen on `path` (its parent directory created, mode 0700, if missing) with mode 0600.
pub fn listen(path: &Path) -> Result<UnixListener, SocketError> {
    let fail = |source| SocketError::Listen {
        path: path.to_path_buf(),
        source,
    };
    if UnixStream::connect(path).is_ok() {
        return Err(SocketError::InUse(path.to_path_buf()));
    }
    match fs::symlink_metadata(path) {
        // Nobody answers on it: the socket of a VM that is gone.
        Ok(m) if m.file_type().is_socket() => match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(fail(e)),
            _ => {}
        },
        Ok(_) => return Err(SocketError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        use std::os::unix::fs::DirBuilderExt;
        let _ = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir);
    }
    bind_private(path).map_err(fail)
}

/// socket, fchmod 0600, bind, listen. The mode set before `bind` is the one the socket file is
/// created with (less the umask), so it is never more open than 0600, not even between `bind` and
/// a later chmod; a chmod after `bind` restores bits a strict umask removed.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: an all-zero sockaddr_un is a valid value (an empty address).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a socket path must be shorter than {} bytes",
                addr.sun_path.len()
            ),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a plain system call with no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fchmod on a descriptor this function owns; the result is checked.
    if unsafe { libc::fchmod(fd.as_raw_fd(), SOCKET_MODE) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid, NUL-terminated sockaddr_un of `len` bytes that outlives the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let finish = || -> io::Result<()> {
        let m = fs::symlink_metadata(path)?;
        if m.file_type().is_socket() && m.permissions().mode() & 0o7777 != SOCKET_MODE {
            fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_MODE))?;
        }
        // SAFETY: listen on a descriptor this function owns; the result is checked.
        if unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    if let Err(e) = finish() {
        let _ = fs::remove_file(path); // the socket this function just created
        return Err(e);
    }
    Ok(UnixListener::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("plainvm-socket-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_socket_is_0600_and_answers() {
        let d = dir("mode");
        let p = d.join("sub/api.sock");
        let l = listen(&p).unwrap();
        let m = fs::symlink_metadata(&p).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o7777, 0o600);
        let _c = UnixStream::connect(&p).unwrap();
        let _s = l.accept().unwrap();
        // Live: a second listener is refused, and the file stays.
        assert!(matches!(listen(&p), Err(SocketError::InUse(_))));
        drop(l);
        // Stale (no one listens): replaced.
        let l = listen(&p).unwrap();
        drop(l);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn anything_but_a_socket_is_left_alone() {
        let d = dir("other");
        let file = d.join("file");
        fs::write(&file, "precious").unwrap();
        let sub = d.join("dir");
        fs::create_dir(&sub).unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let dangling = d.join("dangling");
        std::os::unix::fs::symlink(d.join("nowhere"), &dangling).unwrap();
        for p in [&file, &sub, &link, &dangling] {
            let e = listen(p).unwrap_err();
            assert!(
                matches!(e, SocketError::NotASocket(_)),
                "{}: {e}",
                p.display()
            );
            assert!(e.to_string().contains("not a socket"), "{e}");
        }
        assert_eq!(fs::read_to_string(&file).unwrap(), "precious");
        assert!(sub.is_dir());
        assert!(fs::symlink_metadata(&link).is_ok());
        assert!(fs::symlink_metadata(&dangling).is_ok());
        let long = d.join("x".repeat(120));
        assert!(matches!(listen(&long), Err(SocketError::Listen { .. })));
        let _ = fs::remove_dir_all(&d);
    }
}
