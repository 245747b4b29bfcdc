//! `--cgroup`: the VMM process in a cgroup of its own with the limits given, so one VM cannot
//! starve the host. cgroup v2 where the host has it (`/sys/fs/cgroup/plainvm/NAME`, as
//! Firecracker's jailer uses `/sys/fs/cgroup/firecracker/ID`); on a host with cgroup v1
//! controllers, `plainvm/NAME` under the process's own cgroup of each controller used. Done as
//! root before the VM is built (its memory is charged from the start) and before the jail.

use crate::config::cgroup::{CgroupLimits, Limit};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the cgroup file systems are mounted.
const ROOT: &str = "/sys/fs/cgroup";

/// Errors putting the VM in its cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot set up the VM's cgroup: {what} {path}: {source} (needs root, and the controller mounted under /sys/fs/cgroup)")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the cgroup {0} still holds processes: is a VM of that name running? pick another --name"
    )]
    Busy(PathBuf),
    #[error(transparent)]
    Name(#[from] crate::host::registry::RegistryError),
    #[error("this host has no cgroup controller '{0}' (neither cgroup v2 nor a v1 hierarchy under /sys/fs/cgroup)")]
    NoController(&'static str),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Where the VM's cgroup is (GET /vm reports it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupInfo {
    /// The cgroup directories, one per v1 controller or the one v2 directory.
    pub paths: Vec<PathBuf>,
}

/// A file and the value to write in it.
type Write = (&'static str, String);

fn limit(l: Limit, max: &str) -> String {
    match l {
        Limit::Max => max.to_string(),
        Limit::Value(v) => v.to_string(),
    }
}

/// The v2 files for `l`.
fn v2_files(l: &CgroupLimits) -> Vec<Write> {
    let mut w = Vec::new();
    if let Some(m) = l.memory_max {
        w.push(("memory.max", limit(m, "max")));
    }
    if let Some((q, p)) = l.cpu_max {
        w.push(("cpu.max", format!("{} {p}", limit(q, "max"))));
    }
    if let Some(n) = l.pids_max {
        w.push(("pids.max", limit(n, "max")));
    }
    w
}

/// The v1 controllers and files for `l` (in the order they must be written).
fn v1_files(l: &CgroupLimits) -> Vec<(&'static str, Vec<Write>)> {
    let mut c = Vec::new();
    if let Some(m) = l.memory_max {
        c.push(("memory", vec![("memory.limit_in_bytes", limit(m, "-1"))]));
    }
    if let Some((q, p)) = l.cpu_max {
        c.push((
            "cpu",
            vec![
                ("cpu.cfs_period_us", p.to_string()),
                ("cpu.cfs_quota_us", limit(q, "-1")),
            ],
        ));
    }
    if let Some(n) = l.pids_max {
        c.push(("pids", vec![("pids.max", limit(n, "max"))]));
    }
    c
}

/// This process's cgroup in v1 hierarchy `controller` (from /proc/self/cgroup).
fn own_v1_cgroup(controller: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctls, path) = (f.next()?, f.next()?, f.next()?);
        ctls.split(',')
            .any(|c| c == controller)
            .then(|| PathBuf::from(path.trim_start_matches('/')))
    })
}

/// A fresh cgroup directory at `dir`: one left by an ended VM of the same name is removed first
/// (a cgroup directory can be removed only when it holds no process).
fn fresh(dir: &Path) -> Result<(), CgroupError> {
    if dir.exists() {
        std::fs::remove_dir(dir).map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => CgroupError::Busy(dir.to_path_buf()),
            _ => io("remove the old cgroup", dir)(e),
        })?;
    }
    std::fs::create_dir_all(dir).map_err(io("create", dir))
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(io("write", &path))
}

/// Put this process (every thread) in cgroup `plainvm/NAME` with `limits`.
pub fn enter(name: &str, limits: &CgroupLimits) -> Result<CgroupInfo, CgroupError> {
    crate::host::registry::check_name(name)?;
    let root = Path::new(ROOT);
    let pid = std::process::id().to_string();
    if root.join("cgroup.controllers").exists() {
        let files = v2_files(limits);
        let parent = root.join("plainvm");
        std::fs::create_dir_all(&parent).map_err(io("create", &parent))?;
        // The controllers the limits need, made available to plainvm/ and to its children.
        let mut wanted: Vec<&str> = files
            .iter()
            .map(|(f, _)| &f[..f.find('.').unwrap_or(0)])
            .collect();
        wanted.dedup();
        let enable: String = wanted.iter().map(|c| format!("+{c} ")).collect();
        for d in [root, parent.as_path()] {
            write(d, "cgroup.subtree_control", enable.trim_end())?;
        }
        let dir = parent.join(name);
        fresh(&dir)?;
        for (f, v) in &files {
            write(&dir, f, v)?;
        }
        write(&dir, "cgroup.procs", &pid)?;
        return Ok(CgroupInfo { paths: vec![dir] });
    }
    let mut paths = Vec::new();
    for (controller, files) in v1_files(limits) {
        let hierarchy = root.join(controller);
        if !hierarchy.join("cgroup.procs").exists() {
            return Err(CgroupError::NoController(controller));
        }
        let own = own_v1_cgroup(controller).unwrap_or_default();
        let dir = hierarchy.join(own).join("plainvm").join(name);
        fresh(&dir)?;
        for (f, v) in &files {
            write(&dir, f, v)?;
        }
        // Every thread of the process moves with it.
        write(&dir, "cgroup.procs", &pid)?;
        paths.push(dir);
    }
    Ok(CgroupInfo { paths })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_become_v1_and_v2_files() {
        let l = CgroupLimits {
            memory_max: Some(Limit::Value(256 << 20)),
            cpu_max: Some((Limit::Value(20_000), 100_000)),
            pids_max: Some(Limit::Max),
        };
        assert_eq!(
            v2_files(&l),
            [
                ("memory.max", "268435456".to_string()),
                ("cpu.max", "20000 100000".to_string()),
                ("pids.max", "max".to_string()),
            ]
        );
        let v1 = v1_files(&l);
        assert_eq!(
            v1[0],
            (
                "memory",
                vec![("memory.limit_in_bytes", "268435456".to_string())]
            )
        );
        assert_eq!(v1[1].1[0], ("cpu.cfs_period_us", "100000".to_string()));
        assert_eq!(v1[1].1[1], ("cpu.cfs_quota_us", "20000".to_string()));
        let unlimited = CgroupLimits {
            cpu_max: Some((Limit::Max, 100_000)),
            ..Default::default()
        };
        assert_eq!(v1_files(&unlimited)[0].1[1].1, "-1");
        assert_eq!(v2_files(&unlimited)[0].1, "max 100000");
    }
}
