//! The jail: a VMM started as root opens what needs root (/dev/kvm, taps, disks, sockets), then
//! sees only its jail directory as `/` (a private mount namespace and pivot_root) and runs as an
//! unprivileged UID:GID with no capabilities, before the first guest instruction.
//!
//! Two steps, because a mount namespace belongs to a thread and its later threads: `prepare`
//! while the process has one thread (every thread started after shares the namespace), `enter`
//! once everything is open. pivot_root moves every thread of the namespace into the jail, and
//! glibc's set*id calls change the ids of every thread (which clears their capabilities).

use crate::config::jail::JailConfig;
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// Errors setting up or using the jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("cannot set up the jail: {what} failed: {source} (start plainvm as root to jail it)")]
    Setup {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot set up the jail: {0} (start plainvm as root, without securebits, to jail it)")]
    NotRoot(String),
    #[error("the jail did not take: {0}; the VM does not start")]
    NotDropped(String),
    #[error("cannot set up the jail: the process already runs {0} threads (a jail must be prepared before any thread starts; this is a bug in plainvm)")]
    Threads(u64),
    #[error("the jail directory {0} is not a directory (a symlink?): remove it or give another --jail-dir")]
    NotDir(PathBuf),
    #[error(transparent)]
    Name(#[from] crate::host::registry::RegistryError),
    #[error("cannot set up the jail: {0}")]
    Unsafe(String),
    #[error("this VM is jailed in {dir}: it can only write under that directory, and {path} is not under it (give a path such as {dir}/snap1)")]
    Outside { dir: PathBuf, path: PathBuf },
}

fn setup(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Setup { what, source }
}

/// What a jailed VM reports (GET /vm, the registry): who it runs as and where its `/` is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailInfo {
    pub uid: u32,
    pub gid: u32,
    /// The jail directory on the host: the VM's `/`.
    pub dir: PathBuf,
}

impl JailInfo {
    /// The path inside the jail of host path `path`, which must lie under the jail directory
    /// (paths given to a jailed VM, such as a snapshot's, are host paths).
    pub fn inside(&self, path: &Path) -> Result<PathBuf, JailError> {
        let outside = || JailError::Outside {
            dir: self.dir.clone(),
            path: path.to_path_buf(),
        };
        let rest = path.strip_prefix(&self.dir).map_err(|_| outside())?;
        if rest.as_os_str().is_empty()
            || rest
                .components()
                .any(|c| c != Component::Normal(c.as_os_str()))
        {
            return Err(outside());
        }
        Ok(Path::new("/").join(rest))
    }
}

/// A jail being set up.
pub struct Jail {
    info: JailInfo,
    /// Host directories shown at the same path inside (a vsock socket's, for the guest's
    /// connections to host ports).
    binds: Vec<PathBuf>,
}

/// The real, effective and saved user ids.
fn resuid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresuid writes three uid_t through the pointers, which outlive the call.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

/// This thread's effective and permitted capability sets (all 64 bits), from capget(2).
fn capabilities() -> Option<(u64, u64)> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: version 3 of capget writes two `Data` records (64-bit sets), which `data` holds;
    // both pointers outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut Header,
            data.as_mut_ptr(),
        )
    };
    (r == 0).then(|| {
        let wide = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
        (
            wide(data[0].effective, data[1].effective),
            wide(data[0].permitted, data[1].permitted),
        )
    })
}

/// The number of threads of this process.
fn threads() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

fn cstr(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| JailError::Setup {
        what: format!("using the path {}", p.display()),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

/// `-1` from a libc call is the error in errno.
fn check(r: libc::c_int, what: impl Into<String>) -> Result<(), JailError> {
    if r == -1 {
        Err(setup(what)(std::io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

/// mount(2) of `src` on `dst` with `flags` (no filesystem type, no data: binds and remounts).
fn mount(src: Option<&Path>, dst: &Path, flags: libc::c_ulong) -> Result<(), JailError> {
    let dst_c = cstr(dst)?;
    let src_c = src.map(cstr).transpose()?;
    // SAFETY: the strings are NUL-terminated and outlive the call; null type and data are
    // allowed for bind mounts and propagation changes.
    let r = unsafe {
        libc::mount(
            src_c.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            dst_c.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    check(r, format!("mount {}", dst.display()))
}

/// Bind `src` on `at` (a path, or a directory descriptor's /proc/self/fd link), then make the
/// bind nosuid, nodev and noexec (and read-only with `read_only`) through `path`, the same place
/// by path (a descriptor's link still leads to the directory under the new mount).
fn bind(src: &Path, at: &Path, path: &Path, read_only: bool) -> Result<(), JailError> {
    mount(Some(src), at, libc::MS_BIND)?;
    let mut locked = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if read_only {
        locked |= libc::MS_RDONLY;
    }
    mount(None, path, libc::MS_BIND | libc::MS_REMOUNT | locked)
}

/// Open directory `path` (not through a symlink in its last component).
fn open_dir(at: Option<&OwnedFd>, path: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let base = at.map_or(libc::AT_FDCWD, |f| f.as_raw_fd());
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `c` is NUL-terminated; `base` is AT_FDCWD or a descriptor we own.
    let fd = unsafe { libc::openat(base, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat just returned this descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Make the jail directory `dir` (created if missing) the jail user's, mode 0700. It must be a
/// real directory (not a symlink, not `/`), in a parent only root can change, and, if it exists,
/// belong to root or to the jail's user already: `--jail-dir` cannot hand someone else's
/// directory to the jail.
fn own_dir(dir: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    let parent = match dir.parent() {
        Some(p) if dir.file_name().is_some() => p,
        _ => return Err(JailError::NotDir(dir.to_path_buf())),
    };
    std::fs::create_dir_all(parent).map_err(setup(format!("creating {}", parent.display())))?;
    let p = std::fs::metadata(parent).map_err(setup(format!("inspecting {}", parent.display())))?;
    if p.uid() != 0 || p.mode() & 0o022 != 0 {
        return Err(JailError::Unsafe(format!(
            "its parent {} must belong to root and be writable by root only",
            parent.display()
        )));
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(setup(format!("creating {}", dir.display()))(e)),
    }
    let fd = open_dir(None, dir).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP | libc::ENOTDIR) => JailError::NotDir(dir.to_path_buf()),
        _ => setup(format!("opening {}", dir.display()))(e),
    })?;
    let m = std::fs::File::from(fd.try_clone().map_err(setup("dup"))?)
        .metadata()
        .map_err(setup(format!("inspecting {}", dir.display())))?;
    if m.uid() != 0 && m.uid() != uid {
        return Err(JailError::Unsafe(format!(
            "{} belongs to uid {}, neither root nor the jail's user",
            dir.display(),
            m.uid()
        )));
    }
    // SAFETY: fchown and fchmod on a descriptor we own: no path is resolved again.
    let r = unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) };
    check(r, format!("giving {} to {uid}:{gid}", dir.display()))?;
    // SAFETY: as above.
    let r = unsafe { libc::fchmod(fd.as_raw_fd(), 0o700) };
    check(r, format!("chmod 0700 {}", dir.display()))
}

/// Create `rel` (relative, plain names only) under `root`, one directory at a time and never
/// through a symlink (the jail's user owns `root` and may have planted some); returns the
/// innermost directory.
fn mkdirs_beneath(root: &Path, rel: &Path) -> Result<OwnedFd, JailError> {
    let mut at = open_dir(None, root).map_err(setup(format!("opening {}", root.display())))?;
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return Err(JailError::Unsafe(format!(
                "{} is not a plain path",
                rel.display()
            )));
        };
        let cname = CString::new(name.as_bytes())
            .map_err(|_| setup("a path")(std::io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: `cname` is NUL-terminated; `at` is a directory descriptor we own.
        let r = unsafe { libc::mkdirat(at.as_raw_fd(), cname.as_ptr(), 0o755) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(setup(format!("creating {}", rel.display()))(e));
            }
        }
        at = open_dir(Some(&at), Path::new(name)).map_err(|e| {
            JailError::Unsafe(format!(
                "{} in the jail is not a plain directory ({e})",
                rel.display()
            ))
        })?;
    }
    Ok(at)
}

impl Jail {
    /// Step one, before any thread starts: a private mount namespace for this process, and the
    /// jail directory (`cfg.dir`, or the default for `name`), created if missing and given to
    /// the jail's user (mode 0700).
    pub fn prepare(cfg: &JailConfig, name: &str) -> Result<Jail, JailError> {
        crate::host::registry::check_name(name)?;
        // Leaving uid 0 is what clears the capabilities: that needs every uid 0 now, and no
        // securebits (KEEP_CAPS, NO_SETUID_FIXUP) that would keep them across the change.
        let ids = resuid();
        if ids != (0, 0, 0) {
            return Err(JailError::NotRoot(format!(
                "the user ids are {ids:?}, not root's"
            )));
        }
        // SAFETY: PR_GET_SECUREBITS takes no pointers.
        let bits = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
        if bits != 0 {
            return Err(JailError::NotRoot(format!("securebits {bits:#x} are set")));
        }
        match threads() {
            Some(1) => {}
            Some(n) => return Err(JailError::Threads(n)),
            None => {
                return Err(setup("reading /proc/self/status")(
                    std::io::ErrorKind::NotFound.into(),
                ))
            }
        }
        let dir = cfg.dir_for(name);
        own_dir(&dir, cfg.uid, cfg.gid)?;
        // SAFETY: unshare has no memory arguments; with one thread the new namespace is the
        // whole process's.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNS) };
        check(r, "unshare(CLONE_NEWNS)")?;
        // Nothing mounted in here propagates back to the host, and nothing from there in here.
        mount(None, Path::new("/"), libc::MS_REC | libc::MS_PRIVATE)?;
        Ok(Jail {
            info: JailInfo {
                uid: cfg.uid,
                gid: cfg.gid,
                dir,
            },
            binds: Vec::new(),
        })
    }

    /// Show host directory `dir` inside the jail at the same path, read-only. Refused for `/`,
    /// for the jail directory, and for a directory above or inside it.
    pub fn show(&mut self, dir: &Path) -> Result<(), JailError> {
        let real =
            std::fs::canonicalize(dir).map_err(setup(format!("resolving {}", dir.display())))?;
        let jail = &self.info.dir;
        if real == Path::new("/") || jail.starts_with(&real) || real.starts_with(jail) {
            return Err(JailError::Unsafe(format!(
                "the vsock socket's directory {} would show {} in the jail: put the socket in a directory of its own",
                dir.display(),
                if real.starts_with(jail) { "the jail to itself" } else { "the jail directory or the host above it" }
            )));
        }
        if !self.binds.contains(&real) {
            self.binds.push(real);
        }
        Ok(())
    }

    /// What the VM reports once jailed.
    pub fn info(&self) -> &JailInfo {
        &self.info
    }

    /// Step two, once everything that needs root is open: only the jail directory (and the
    /// directories `show`n) stays visible, as `/`; then every thread becomes UID:GID, which
    /// drops every capability, and no thread can gain privileges again.
    pub fn enter(&self) -> Result<JailInfo, JailError> {
        let dir = &self.info.dir;
        // pivot_root needs its new root to be a mount point.
        bind(dir, dir, dir, false)?;
        for b in &self.binds {
            // Shown read-only: connecting to a unix socket needs no write access to the mount.
            let rel = b.strip_prefix("/").unwrap_or(b);
            let at = mkdirs_beneath(dir, rel)?;
            let fd_link = Path::new("/proc/self/fd").join(at.as_raw_fd().to_string());
            bind(b, &fd_link, &dir.join(rel), true)?;
        }
        std::env::set_current_dir(dir).map_err(setup(format!("chdir {}", dir.display())))?;
        let dot = c".";
        // SAFETY: both arguments are the NUL-terminated ".": the jail directory becomes `/` and
        // the old root is stacked on it, to be detached next.
        let r = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
        check(r as libc::c_int, "pivot_root")?;
        // SAFETY: "." is NUL-terminated; MNT_DETACH unmounts the old root lazily.
        let r = unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) };
        check(r, "detaching the host's root")?;
        std::env::set_current_dir("/").map_err(setup("chdir /"))?;
        let (uid, gid) = (self.info.uid, self.info.gid);
        // SAFETY: an empty group list; glibc applies setgroups and the set*id calls below to
        // every thread of the process.
        check(unsafe { libc::setgroups(0, std::ptr::null()) }, "setgroups")?;
        // SAFETY: plain integer arguments.
        let r = unsafe { libc::setresgid(gid, gid, gid) };
        check(r, format!("setresgid {gid}"))?;
        // SAFETY: plain integer arguments. Leaving uid 0 for good clears every capability of
        // every thread (no SECBIT_KEEP_CAPS here).
        let r = unsafe { libc::setresuid(uid, uid, uid) };
        check(r, format!("setresuid {uid}"))?;
        // SAFETY: plain integer arguments; later threads inherit it.
        let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        check(r, "PR_SET_NO_NEW_PRIVS")?;
        // Checked, not assumed: the ids are the jail's and no capability is left.
        if resuid() != (uid, uid, uid) {
            return Err(JailError::NotDropped(format!("user ids {:?}", resuid())));
        }
        match capabilities() {
            Some((0, 0)) => Ok(self.info.clone()),
            Some((eff, prm)) => Err(JailError::NotDropped(format!(
                "capabilities left: effective {eff:#x}, permitted {prm:#x}"
            ))),
            None => Err(JailError::NotDropped("capget failed".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_under_the_jail_map_inside() {
        let j = JailInfo {
            uid: 5,
            gid: 5,
            dir: "/srv/j".into(),
        };
        assert_eq!(
            j.inside(Path::new("/srv/j/snap1")).unwrap(),
            Path::new("/snap1")
        );
        assert_eq!(
            j.inside(Path::new("/srv/j/a/b")).unwrap(),
            Path::new("/a/b")
        );
        for bad in [
            "/srv/j",
            "/srv/jx/s",
            "/etc/s",
            "/srv/j/../etc",
            "/srv/j/a/../../x",
            "s",
        ] {
            assert!(j.inside(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
