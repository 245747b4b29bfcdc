//! The VM registry: one runtime directory per named VM (its API socket and a `vm.json` with pid,
//! start time and configuration), so VMs can be found, listed and stopped by name.
//!
//! Layout: `$PLAINVM_RUNTIME_DIR/NAME/` if that variable is set, else `/run/plainvm/NAME/` as root
//! and `$XDG_RUNTIME_DIR/plainvm/NAME/` (or `/tmp/plainvm-UID/NAME/`) otherwise. An entry is live
//! while the process it names (pid plus the kernel's start time of that pid, so a reused pid does
//! not count) exists; anything else is stale and removed when seen.

use crate::config::VmConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The file with the entry's details inside a VM's directory.
pub const ENTRY_FILE: &str = "vm.json";
/// The API socket's name inside a VM's directory.
pub const SOCKET_FILE: &str = "api.sock";
/// Longest VM name (it is a directory name and part of a unix socket path, which is short).
pub const MAX_NAME: usize = 64;

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid VM name '{0}': use 1 to {MAX_NAME} letters, digits, '-', '_' or '.', not starting with '.' or '-'")]
    BadName(String),
    #[error("a VM named '{name}' is already running (pid {pid}): pick another --name, or stop it with `plainvm stop {name}`")]
    NameTaken { name: String, pid: i32 },
    #[error("no running VM is named '{0}' (see `plainvm ls`)")]
    NotFound(String),
    #[error("cannot {what} {path}: {source} (set PLAINVM_RUNTIME_DIR to a writable directory?)")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the API socket path {0} is too long for a unix socket (at most 107 bytes): use a shorter name or PLAINVM_RUNTIME_DIR")]
    SocketPathTooLong(PathBuf),
    #[error("the runtime directory {path} {why}: another user could tamper with the VMs' sockets; remove it, or set PLAINVM_RUNTIME_DIR to a directory of your own")]
    NotPrivate { path: PathBuf, why: String },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RegistryError + 'a {
    move |source| RegistryError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What `vm.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub pid: i32,
    /// The pid's start time in clock ticks since boot (/proc/PID/stat field 22).
    pub proc_start: u64,
    /// Wall-clock start, seconds since the Unix epoch.
    pub started_unix: u64,
    /// The VM's API socket (inside the VM's directory unless `--api-sock` named another).
    pub api_sock: PathBuf,
    pub config: VmConfig,
}

/// The directory holding every VM's directory.
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PLAINVM_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return d.into();
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return "/run/plainvm".into();
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("plainvm"),
        None => PathBuf::from(format!("/tmp/plainvm-{uid}")),
    }
}

/// A directory builder for mode 0700.
fn private_dir() -> std::fs::DirBuilder {
    use std::os::unix::fs::DirBuilderExt;
    let mut b = std::fs::DirBuilder::new();
    b.mode(0o700);
    b
}

/// Create the runtime directory (0700) if needed, and check that it is this user's own: a real
/// directory, owned by us, writable by nobody else.
pub fn ensure_private_dir(root: &Path) -> Result<(), RegistryError> {
    use std::os::unix::fs::MetadataExt;
    if !root.exists() {
        private_dir()
            .recursive(true)
            .create(root)
            .map_err(io("create the runtime directory", root))?;
    }
    let m = std::fs::symlink_metadata(root).map_err(io("inspect", root))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let why = if !m.file_type().is_dir() {
        Some("is not a directory (a symlink?)".to_string())
    } else if m.uid() != me {
        Some(format!(
            "belongs to uid {}, not to this user (uid {me})",
            m.uid()
        ))
    } else if m.mode() & 0o022 != 0 {
        Some(format!(
            "is writable by others (mode {:o})",
            m.mode() & 0o777
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(RegistryError::NotPrivate {
            path: root.to_path_buf(),
            why,
        }),
        None => Ok(()),
    }
}

/// Check a user-given name.
pub fn check_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::BadName(name.to_string()))
    }
}

/// A generated name: `vm-<pid>` (unique among live processes).
pub fn generated_name() -> String {
    format!("vm-{}", std::process::id())
}

/// The directory of VM `name`.
pub fn vm_dir(name: &str) -> PathBuf {
    runtime_dir().join(name)
}

/// The default API socket of VM `name`.
pub fn default_socket(name: &str) -> PathBuf {
    vm_dir(name).join(SOCKET_FILE)
}

/// The kernel's start time of process `pid` (None: no such process, or it has ended and is
/// only waiting to be reaped).
pub fn proc_start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')': field 3 (state) is index 0, so field 22 (starttime) is index 19.
    if matches!(fields.next(), Some("Z" | "X" | "x")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// True while process `pid` started at `start` (from `proc_start_time`) runs.
pub fn process_alive(pid: i32, start: u64) -> bool {
    proc_start_time(pid) == Some(start)
}

impl Entry {
    /// True while the process that wrote this entry runs.
    pub fn is_live(&self) -> bool {
        process_alive(self.pid, self.proc_start)
    }
}

/// Read the entry of VM `name` (None: absent or unreadable).
pub fn read_entry(name: &str) -> Option<Entry> {
    let text = std::fs::read_to_string(vm_dir(name).join(ENTRY_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The live entry of VM `name`; a stale one is removed.
pub fn lookup(name: &str) -> Result<Entry, RegistryError> {
    check_name(name)?;
    match read_entry(name) {
        Some(e) if e.is_live() => Ok(e),
        _ => {
            remove_stale(name);
            Err(RegistryError::NotFound(name.to_string()))
        }
    }
}

/// A directory without an entry is a VM registering right now, or one that died in between:
/// remove it only once it is clearly old, never under a VM that is about to write its entry.
fn remove_if_abandoned(name: &str) {
    let old = std::fs::metadata(vm_dir(name))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() > 60);
    if old {
        remove_dir(name);
    }
}

/// Remove the directory of a VM whose process is gone (or never finished registering). An entry
/// a live process holds stays: the name may have been claimed again in the meantime.
pub fn remove_stale(name: &str) {
    match read_entry(name) {
        Some(e) if e.is_live() => {}
        Some(_) => remove_dir(name),
        None => remove_if_abandoned(name),
    }
}

fn remove_dir(name: &str) {
    let _ = std::fs::remove_dir_all(vm_dir(name));
}

/// Every live VM, sorted by name; stale entries are removed on the way.
pub fn list() -> Vec<Entry> {
    let Ok(rd) = std::fs::read_dir(runtime_dir()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for d in rd.flatten() {
        let Some(name) = d.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if check_name(&name).is_err() || !d.path().is_dir() {
            continue;
        }
        match read_entry(&name) {
            Some(e) if e.is_live() => out.push(e),
            _ => remove_stale(&name),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Register a VM under `name`, or under a generated name without one. A chosen name must be free;
/// a generated one that cannot be registered only costs the listing (a warning, and the VM runs).
pub fn register(
    name: Option<&str>,
    api_sock: Option<&Path>,
    cfg: &VmConfig,
) -> Result<Option<Registration>, RegistryError> {
    match name {
        Some(n) => Registration::claim(n, api_sock, cfg).map(Some),
        None => match Registration::claim(&generated_name(), api_sock, cfg) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                plainvm_devices::log_warn!(
                    "not registered (`plainvm ls` will not show this VM): {e}"
                );
                Ok(None)
            }
        },
    }
}

/// Fail early if a live VM already holds `name` (the claim itself comes later, once the VM's
/// configuration is known).
pub fn check_free(name: &str) -> Result<(), RegistryError> {
    check_name(name)?;
    match read_entry(name) {
        Some(e) if e.is_live() => Err(RegistryError::NameTaken {
            name: name.to_string(),
            pid: e.pid,
        }),
        _ => Ok(()),
    }
}

/// This process's registration; the directory is removed when it is dropped.
pub struct Registration {
    dir: PathBuf,
    entry: Entry,
}

impl Registration {
    /// Claim `name` for this process, with its API socket at `api_sock` (None: the default inside
    /// the VM's directory). Fails if a live VM holds the name; a stale holder is cleared.
    pub fn claim(
        name: &str,
        api_sock: Option<&Path>,
        config: &VmConfig,
    ) -> Result<Self, RegistryError> {
        check_name(name)?;
        let root = runtime_dir();
        ensure_private_dir(&root)?;
        let dir = root.join(name);
        // mkdir is the atomic claim: two processes racing for one name cannot both win.
        let mut tries = 0;
        loop {
            match private_dir().create(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 3 => {
                    tries += 1;
                    match read_entry(name) {
                        Some(e) if e.is_live() => {
                            return Err(RegistryError::NameTaken {
                                name: name.to_string(),
                                pid: e.pid,
                            })
                        }
                        Some(_) => remove_stale(name),
                        None => {
                            // Registering right now (the entry follows the directory quickly)?
                            std::thread::sleep(std::time::Duration::from_millis(200));
                            match read_entry(name) {
                                Some(e) if e.is_live() => {
                                    return Err(RegistryError::NameTaken {
                                        name: name.to_string(),
                                        pid: e.pid,
                                    })
                                }
                                Some(_) => remove_stale(name),
                                // Still no entry: its process died while registering.
                                None => remove_dir(name),
                            }
                        }
                    }
                }
                Err(e) => return Err(io("create the VM directory", &dir)(e)),
            }
        }
        let api_sock = match api_sock {
            Some(p) => std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()),
            None => dir.join(SOCKET_FILE),
        };
        let reg = Registration {
            dir: dir.clone(),
            entry: Entry {
                name: name.to_string(),
                pid: std::process::id() as i32,
                proc_start: proc_start_time(std::process::id() as i32).unwrap_or(0),
                started_unix: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                api_sock,
                config: config.clone(),
            },
        };
        if reg.entry.api_sock.as_os_str().len() > 107 {
            return Err(RegistryError::SocketPathTooLong(reg.entry.api_sock.clone()));
        }
        // Written to a temporary name and renamed: readers never see half an entry.
        let tmp = dir.join(".vm.json.tmp");
        let text = serde_json::to_string_pretty(&reg.entry).unwrap_or_default();
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(io("write", &tmp))?;
        }
        let file = dir.join(ENTRY_FILE);
        std::fs::rename(&tmp, &file).map_err(io("write", &file))?;
        Ok(reg)
    }

    /// The API socket this VM serves.
    pub fn api_sock(&self) -> &Path {
        &self.entry.api_sock
    }

    /// The registered entry.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Resolve how a subcommand names its VM: `--api-sock PATH` wins, else the name's socket.
/// Returns the socket and the live entry (None with `--api-sock`).
pub fn resolve(
    name: Option<&str>,
    api_sock: Option<&Path>,
) -> Result<(PathBuf, Option<Entry>), RegistryError> {
    match (api_sock, name) {
        (Some(p), _) => Ok((p.to_path_buf(), None)),
        (None, Some(n)) => {
            let e = lookup(n)?;
            Ok((e.api_sock.clone(), Some(e)))
        }
        (None, None) => Err(RegistryError::NotFound(String::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["a", "vm-1", "web_2.prod", &"x".repeat(MAX_NAME)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            "a/b",
            "a b",
            &"x".repeat(MAX_NAME + 1),
            "é",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn own_process_start_time_is_readable() {
        let me = std::process::id() as i32;
        assert!(proc_start_time(me).is_some());
        assert_eq!(proc_start_time(-5), None);
    }

    #[test]
    fn a_vm_that_is_registering_is_not_cleaned_away() {
        // What `plainvm info NAME` saw while `restore --name NAME` was between its mkdir and its
        // entry: the directory must survive the lookup, or the registering VM fails.
        let name = format!("unit-registering-{}", std::process::id());
        let dir = vm_dir(&name);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(lookup(&name), Err(RegistryError::NotFound(_))));
        assert!(list().iter().all(|e| e.name != name));
        assert!(
            dir.exists(),
            "a fresh directory without an entry was removed"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_runtime_directory_of_someone_else_or_open_to_all_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("plainvm-rt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        ensure_private_dir(&d).unwrap();
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure_private_dir(&d).unwrap_err().to_string();
        assert!(e.contains("writable by others"), "{e}");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        let other = d.join("other");
        std::fs::create_dir(&other).unwrap();
        let c = std::ffi::CString::new(other.to_str().unwrap()).unwrap();
        // SAFETY: chown reads a NUL-terminated path we own (it works as root, the suite's user).
        let chowned = unsafe { libc::chown(c.as_ptr(), 4242, 4242) } == 0;
        if chowned {
            let e = ensure_private_dir(&other).unwrap_err().to_string();
            assert!(e.contains("belongs to uid 4242"), "{e}");
        }
        let link = d.join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(ensure_private_dir(&link).is_err(), "a symlink was accepted");
        let _ = std::fs::remove_dir_all(&d);
    }
}
