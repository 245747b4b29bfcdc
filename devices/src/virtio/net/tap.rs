//! A host tap device opened through /dev/net/tun: whole Ethernet frames with a virtio-net header.

use super::HDR_LEN;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const TUN_PATH: &str = "/dev/net/tun";
const IFNAMSIZ: usize = 16;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
// _IOW('T', n, int)
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

/// Why a tap device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid tap name '{0}': use 1 to 15 characters without '/', ':', spaces or control characters")]
    BadName(String),
    #[error("cannot open {TUN_PATH}: {0} (is the tun module loaded? `modprobe tun`)")]
    OpenTun(std::io::Error),
    #[error("the host refused to create or attach tap '{name}': {source} (run as root or with CAP_NET_ADMIN, or create it first with `ip tuntap add {name} mode tap user $USER`)")]
    NotAllowed {
        name: String,
        source: std::io::Error,
    },
    #[error("tap '{name}' is busy: {source} (another process holds it, or '{name}' is not a tap device)")]
    Busy {
        name: String,
        source: std::io::Error,
    },
    #[error("cannot set up tap '{name}' ({what}): {source}")]
    Setup {
        name: String,
        what: &'static str,
        source: std::io::Error,
    },
}

/// An open, nonblocking tap with a 12-byte virtio-net header on every frame and no offloads.
pub struct Tap {
    file: File,
    name: String,
}

/// `struct ifreq` with the fields TUNSETIFF uses.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Attach to tap `name`, creating it (for the life of this process) if it does not exist.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let bytes = name.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() < IFNAMSIZ
            && bytes
                .iter()
                .all(|&b| b.is_ascii_graphic() && b != b'/' && b != b':');
        if !ok {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is one (name, flags, padding
        // to its full 40 bytes) and lives across the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            let source = std::io::Error::last_os_error();
            let name = name.to_string();
            return Err(match source.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::NotAllowed { name, source },
                Some(libc::EBUSY) | Some(libc::EINVAL) => TapError::Busy { name, source },
                _ => TapError::Setup {
                    name,
                    what: "TUNSETIFF",
                    source,
                },
            });
        }
        let tap = Self {
            file,
            name: name.to_string(),
        };
        let hdr: libc::c_int = HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which points at `hdr`.
        let rc = unsafe { libc::ioctl(tap.file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr) };
        tap.check(rc, "TUNSETVNETHDRSZ")?;
        // SAFETY: TUNSETOFFLOAD takes its argument by value (0: no offloads); no memory is passed.
        let rc = unsafe { libc::ioctl(tap.file.as_raw_fd(), TUNSETOFFLOAD, 0 as libc::c_ulong) };
        tap.check(rc, "TUNSETOFFLOAD")?;
        Ok(tap)
    }

    fn check(&self, rc: libc::c_int, what: &'static str) -> Result<(), TapError> {
        if rc < 0 {
            return Err(TapError::Setup {
                name: self.name.clone(),
                what,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// A tap over an already open packet file descriptor (for tests: one end of a
    /// `SOCK_SEQPACKET` socket pair behaves like a tap).
    pub fn from_file(file: File, name: &str) -> Self {
        Self {
            file,
            name: name.to_string(),
        }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface's MTU (as `ip link` shows it), from the calling process's network namespace.
    pub fn mtu(&self) -> std::io::Result<u32> {
        // SAFETY: creates a socket used only for the ioctl below; closed by `OwnedFd`.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        let n = self.name.len().min(IFNAMSIZ - 1);
        req.name[..n].copy_from_slice(&self.name.as_bytes()[..n]);
        // SAFETY: SIOCGIFMTU reads the name and writes an int at the union offset of a 40-byte
        // `struct ifreq`; `req` is one and lives across the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // ifr_mtu overlays the first 4 bytes after the name (where `flags` sits).
        let mut b = [0u8; 4];
        b[..2].copy_from_slice(&req.flags.to_ne_bytes());
        b[2..].copy_from_slice(&req._pad[..2]);
        Ok(u32::from_ne_bytes(b))
    }

    /// Read one frame (header included) into the buffers of `iov`, with one system call; returns
    /// the frame's length, which is larger than the buffers when it did not fit (a tap reports the
    /// whole length; a packet socket fills one spare byte at the end of `iov`).
    ///
    /// # Safety
    /// Every iovec must describe memory writable for its `iov_len` bytes during the call.
    pub unsafe fn read_frame_iov(&mut self, iov: &[libc::iovec]) -> std::io::Result<usize> {
        // SAFETY: passed on from the caller; readv only writes the buffers.
        unsafe { self.vectored(iov, libc::readv) }
    }

    /// Write one frame (header included) gathered from `iov`, with one system call.
    ///
    /// # Safety
    /// Every iovec must describe memory readable for its `iov_len` bytes during the call.
    pub unsafe fn write_frame_iov(&mut self, iov: &[libc::iovec]) -> std::io::Result<usize> {
        // SAFETY: passed on from the caller; writev only reads the buffers.
        unsafe { self.vectored(iov, libc::writev) }
    }

    /// `readv` or `writev` on the tap.
    ///
    /// # Safety
    /// Every iovec must describe memory `op` may access for its `iov_len` bytes during the call.
    unsafe fn vectored(
        &mut self,
        iov: &[libc::iovec],
        op: unsafe extern "C" fn(libc::c_int, *const libc::iovec, libc::c_int) -> libc::ssize_t,
    ) -> std::io::Result<usize> {
        let cnt = libc::c_int::try_from(iov.len())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the caller vouches for the buffers; the fd is ours.
        let n = unsafe { op(self.file.as_raw_fd(), iov.as_ptr(), cnt) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for n in ["", "a/b", "has space", "x:1", "0123456789abcdef"] {
            assert!(matches!(Tap::open(n), Err(TapError::BadName(_))), "{n}");
        }
    }
}
