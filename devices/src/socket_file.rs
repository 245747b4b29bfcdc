//! Unix socket files plainvm listens on (the API socket, the vsock socket): a stale socket of a
//! dead VM is replaced, a live one is refused, and anything that is not a socket is never
//! unlinked. The new socket is 0600 whatever the umask.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Listen on `path`, replacing a socket file nobody answers on.
pub fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket: refused (plainvm only replaces stale sockets)",
            ))
        }
        Ok(_) if UnixStream::connect(path).is_ok() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "a running process answers on this socket",
            ))
        }
        // A socket file nobody answers on: left over from a VM that died (or was restored from).
        Ok(_) => std::fs::remove_file(path)?,
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn stale_sockets_are_replaced_live_ones_and_other_files_are_not() {
        let d = std::env::temp_dir().join(format!("plainvm-sockfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("s");
        drop(UnixListener::bind(&p).unwrap()); // stale: nobody listens
        let live = bind_private(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert!(bind_private(&p).is_err(), "took a live socket");
        drop(live);
        let f = d.join("file");
        std::fs::write(&f, b"precious").unwrap();
        assert!(bind_private(&f).is_err());
        assert_eq!(std::fs::read(&f).unwrap(), b"precious");
        let _ = std::fs::remove_dir_all(&d);
    }
}
