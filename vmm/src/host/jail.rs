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
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Errors setting up or using the jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("cannot set up the jail: {what} failed: {source} (the jail needs root, or CAP_SYS_ADMIN, CAP_SETUID and CAP_SETGID)")]
    Setup {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot set up the jail: the process already runs {0} threads (a jail must be prepared before any thread starts; this is a bug in plainvm)")]
    Threads(u64),
    #[error("the jail directory {0} is not a directory (a symlink?): remove it or give another --jail-dir")]
    NotDir(PathBuf),
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

/// Bind `src` on `dst`, then make the bind nosuid, nodev and noexec.
fn bind(src: &Path, dst: &Path) -> Result<(), JailError> {
    mount(Some(src), dst, libc::MS_BIND)?;
    let locked = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(None, dst, libc::MS_BIND | libc::MS_REMOUNT | locked)
}

impl Jail {
    /// Step one, before any thread starts: a private mount namespace for this process, and the
    /// jail directory (`cfg.dir`, or the default for `name`), created if missing and given to
    /// the jail's user (mode 0700).
    pub fn prepare(cfg: &JailConfig, name: &str) -> Result<Jail, JailError> {
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
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .map_err(setup(format!("creating {}", parent.display())))?;
        }
        match std::fs::DirBuilder::new().create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(setup(format!("creating {}", dir.display()))(e)),
        }
        let meta = std::fs::symlink_metadata(&dir)
            .map_err(setup(format!("inspecting {}", dir.display())))?;
        if !meta.file_type().is_dir() {
            return Err(JailError::NotDir(dir));
        }
        let c = cstr(&dir)?;
        // SAFETY: `c` is a NUL-terminated path; lchown does not follow a symlink (and the path
        // was just seen to be a directory).
        let r = unsafe { libc::lchown(c.as_ptr(), cfg.uid, cfg.gid) };
        check(
            r,
            format!("giving {} to {}:{}", dir.display(), cfg.uid, cfg.gid),
        )?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(setup(format!("chmod 0700 {}", dir.display())))?;
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

    /// Show host directory `dir` inside the jail at the same path.
    pub fn show(&mut self, dir: &Path) {
        if !self.binds.iter().any(|b| b == dir) {
            self.binds.push(dir.to_path_buf());
        }
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
        bind(dir, dir)?;
        for b in &self.binds {
            let rel = b.strip_prefix("/").unwrap_or(b);
            let at = dir.join(rel);
            std::fs::create_dir_all(&at).map_err(setup(format!("creating {}", at.display())))?;
            bind(b, &at)?;
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
        Ok(self.info.clone())
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
