//! What a saved or incoming VM may use on this host. A snapshot directory or a migration stream
//! is not trusted: the host resources its configuration names — disk images, taps, the vsock
//! socket, host CPUs — are used only when the operator of this host gave them (`--set`) or
//! allowed them (`--allow-dir DIR` for images and sockets under DIR, `--allow-tap NAME`);
//! anything else refuses the VM before a file is opened. A saved CPU list is dropped unless
//! `--set cpu_affinity=...` gives one (the other host's CPU numbers mean nothing here).

use super::overrides::{OverrideError, Overrides};
use super::VmConfig;
use std::path::{Path, PathBuf};

/// A saved configuration this host will not run as it is.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error(transparent)]
    Set(#[from] OverrideError),
    #[error("the saved configuration names {what} {value}, which this host did not allow: give it with --set (e.g. --set '{example}') or allow it with {flag}; nothing was opened")]
    NotAllowed {
        what: &'static str,
        value: String,
        example: &'static str,
        flag: &'static str,
    },
    #[error("--allow-dir {path}: {source}")]
    AllowDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The operator's answer to a saved configuration: `--set` values and allow-lists.
#[derive(Clone, Debug, Default)]
pub struct Admission {
    pub overrides: Overrides,
    /// Directories (canonical) whose files and sockets a saved configuration may name.
    allow_dirs: Vec<PathBuf>,
    /// Tap names a saved configuration may name (a trailing `*` matches a prefix).
    allow_taps: Vec<String>,
}

impl Admission {
    /// The operator's flags: `--set`, `--allow-dir`, `--allow-tap`.
    pub fn new(
        set: &[String],
        allow_dirs: &[PathBuf],
        allow_taps: &[String],
    ) -> Result<Self, AdmissionError> {
        let dirs = allow_dirs
            .iter()
            .map(|d| {
                std::fs::canonicalize(d).map_err(|source| AdmissionError::AllowDir {
                    path: d.clone(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            overrides: Overrides::parse(set)?,
            allow_dirs: dirs,
            allow_taps: allow_taps.to_vec(),
        })
    }

    /// `saved` with the operator's changes, once every host resource it names is the
    /// operator's or allowed.
    pub fn admit(&self, saved: VmConfig) -> Result<VmConfig, AdmissionError> {
        let mut cfg = self.overrides.apply(saved)?;
        let o = &self.overrides;
        for (i, d) in cfg.disks.iter_mut().enumerate() {
            if o.sets("disks", Some(i), "path") {
                continue;
            }
            if !self.image_allowed(&d.path) {
                return Err(not_allowed(
                    "the disk image",
                    &d.path,
                    "disks=[{\"path\":\"IMG\"}]",
                ));
            }
            d.admitted_by_dir = true;
        }
        for (i, n) in cfg.nets.iter().enumerate() {
            if !o.sets("nets", Some(i), "tap") && !self.tap_allows(&n.tap) {
                return Err(AdmissionError::NotAllowed {
                    what: "the tap",
                    value: n.tap.clone(),
                    example: "nets=[{\"tap\":\"TAP\"}]",
                    flag: "--allow-tap NAME",
                });
            }
        }
        if let Some(v) = &cfg.vsock {
            if !o.sets("vsock", None, "socket") && !self.socket_allowed(&v.socket) {
                return Err(not_allowed(
                    "the vsock socket",
                    &v.socket,
                    "vsock={\"socket\":\"PATH\"}",
                ));
            }
        }
        if !o.sets_key("cpu_affinity") && !cfg.cpu_affinity.is_empty() {
            plainvm_devices::log_line!(
                "the saved CPU list {:?} is not used here (give --set cpu_affinity=[...] to pin)",
                cfg.cpu_affinity
            );
            cfg.cpu_affinity.clear();
        }
        // Page merging shares this VM's memory with other VMs' (a side channel between them):
        // the host's operator decides, not the snapshot or the stream.
        if !o.sets_key("memory_merge") && cfg.memory_merge {
            plainvm_devices::log_line!(
                "the saved memory_merge is not used here (give --set memory_merge=true to merge pages)"
            );
            cfg.memory_merge = false;
        }
        Ok(cfg)
    }

    /// The allowed directories (canonical), e.g. where a diff snapshot's parents may lie.
    pub fn allow_dirs(&self) -> &[PathBuf] {
        &self.allow_dirs
    }

    /// True when `path` (an existing file) lies under an allowed directory, symlinks resolved.
    fn dir_allows(&self, path: &Path) -> bool {
        std::fs::canonicalize(path).is_ok_and(|p| self.allow_dirs.iter().any(|d| p.starts_with(d)))
    }

    /// True when `path` is a regular file under an allowed directory, named without symlinks
    /// (a device node, or a link an allowed directory's writer planted, is not an image).
    fn image_allowed(&self, path: &Path) -> bool {
        let plain = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file());
        let canonical = std::fs::canonicalize(path).is_ok_and(|c| c == path);
        plain && canonical && self.dir_allows(path)
    }

    /// True when the socket `path` (which may not exist yet) would be in an allowed directory.
    fn socket_allowed(&self, path: &Path) -> bool {
        match (path.parent(), path.file_name()) {
            (Some(dir), Some(_)) if path.is_absolute() => self.dir_allows(dir),
            _ => false,
        }
    }

    fn tap_allows(&self, tap: &str) -> bool {
        self.allow_taps.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => tap.starts_with(prefix),
            None => a == tap,
        })
    }
}

fn not_allowed(what: &'static str, path: &Path, example: &'static str) -> AdmissionError {
    AdmissionError::NotAllowed {
        what,
        value: path.display().to_string(),
        example,
        flag: "--allow-dir DIR",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CpuTemplate, DiskConfig, NetDevice, VsockConfig};

    fn saved(disk: &Path, sock: &Path) -> VmConfig {
        VmConfig {
            kernel: None,
            initrd: None,
            cmdline: None,
            cpus: 1,
            memory_bytes: 128 << 20,
            memory_merge: false,
            cpu_affinity: vec![0],
            cpu_template: CpuTemplate::Auto,
            rng: false,
            nets: vec![NetDevice {
                tap: "tap-a".into(),
                mac: [2, 0, 0, 0, 0, 1],
            }],
            disks: vec![DiskConfig {
                path: disk.to_path_buf(),
                readonly: false,
                id: None,
                admitted_by_dir: false,
            }],
            vsock: Some(VsockConfig {
                cid: 3,
                socket: sock.to_path_buf(),
            }),
            balloon: None,
        }
    }

    #[test]
    fn host_resources_need_the_operator() {
        let d = std::env::temp_dir().join(format!("plainvm-admit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("images")).unwrap();
        let img = d.join("images/a.img");
        std::fs::write(&img, b"").unwrap();
        let sock = d.join("images/v.sock");
        let cfg = saved(&img, &sock);
        // Nothing allowed: the disk is refused first.
        let none = Admission::new(&[], &[], &[]).unwrap();
        let e = none.admit(cfg.clone()).unwrap_err().to_string();
        assert!(e.contains("disk image") && e.contains("a.img"), "{e}");
        // A host file outside the allowed directory, also through a symlink inside it.
        let dirs = [d.join("images")];
        let taps = ["tap-*".to_string()];
        let ok = Admission::new(&[], &dirs, &taps).unwrap();
        let admitted = ok.admit(cfg.clone()).unwrap();
        assert!(
            admitted.cpu_affinity.is_empty(),
            "the saved CPU list was kept"
        );
        for evil in ["/etc/shadow", "/dev/sda"] {
            let e = ok
                .admit(saved(Path::new(evil), &sock))
                .unwrap_err()
                .to_string();
            assert!(e.contains(evil), "{e}");
        }
        std::os::unix::fs::symlink("/etc/passwd", d.join("images/link.img")).unwrap();
        assert!(ok.admit(saved(&d.join("images/link.img"), &sock)).is_err());
        // Even a link to an allowed image, or a device node, inside the allowed directory: the
        // link could be turned elsewhere later, the node is a host disk.
        std::os::unix::fs::symlink(&img, d.join("images/same.img")).unwrap();
        assert!(ok.admit(saved(&d.join("images/same.img"), &sock)).is_err());
        let node = d.join("images/null.img");
        let c = std::ffi::CString::new(node.to_str().unwrap()).unwrap();
        // SAFETY: mknod reads a NUL-terminated path we own; /dev/null's numbers (1, 3).
        let made = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) };
        if made == 0 {
            assert!(ok.admit(saved(&node, &sock)).is_err());
        }
        // Page merging is the operator's choice.
        let mut merging = cfg.clone();
        merging.memory_merge = true;
        assert!(!ok.admit(merging.clone()).unwrap().memory_merge);
        let merge_set = Admission::new(&["memory_merge=true".to_string()], &dirs, &taps).unwrap();
        assert!(merge_set.admit(merging).unwrap().memory_merge);
        assert!(ok.admit(saved(&img, Path::new("/etc/x.sock"))).is_err());
        // A tap outside the allowed names.
        let mut c = cfg.clone();
        c.nets[0].tap = "eth0".into();
        assert!(ok.admit(c).unwrap_err().to_string().contains("eth0"));
        // The operator's --set stands without any allow-list.
        let set = [
            format!("disks=[{{\"path\":\"{}\"}}]", img.display()),
            "nets=[{\"tap\":\"tap9\"}]".to_string(),
            format!("vsock={{\"socket\":\"{}\"}}", sock.display()),
            "cpu_affinity=[0]".to_string(),
        ];
        let by_set = Admission::new(&set, &[], &[]).unwrap();
        let c = by_set
            .admit(saved(Path::new("/dev/sda"), Path::new("/etc/x")))
            .unwrap();
        assert_eq!(
            (c.disks[0].path.as_path(), c.nets[0].tap.as_str()),
            (img.as_path(), "tap9")
        );
        assert_eq!(c.cpu_affinity, [0]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
