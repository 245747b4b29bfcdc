//! The VM configuration: what the JSON file and the command-line flags say, validated once.

pub mod admission;
pub mod balloon;
pub mod cgroup;
pub mod cpu_list;
pub mod disk;
pub mod jail;
pub mod keyvalue;
pub mod net;
pub mod overrides;
pub mod seccomp;
pub mod size;
pub mod vsock;

pub use balloon::{BalloonConfig, BalloonSettings};
pub use disk::DiskConfig;
pub use net::{NetConfig, NetDevice};
pub use seccomp::Seccomp;
pub use size::{check_memory, parse_size};
pub use vsock::VsockConfig;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Most vCPUs a VM may have (the MP table and APIC IDs are sized for this).
pub const MAX_VCPUS: u8 = 64;
/// Longest kernel command line, in bytes without the final NUL (Linux x86's COMMAND_LINE_SIZE - 1).
pub const MAX_CMDLINE: usize = 2047;
/// The default command line for Linux guests: a console on the serial port.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// Errors in the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    ParseFile {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Size(#[from] size::SizeError),
    #[error("--cpus must be between 1 and {MAX_VCPUS}, got {0}")]
    BadCpus(u64),
    #[error(
        "kernel command line is {0} bytes long; the limit is {MAX_CMDLINE}: shorten --cmdline"
    )]
    CmdlineTooLong(usize),
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("invalid --cpu-template '{0}': use auto, host or safe")]
    BadTemplate(String),
    #[error(transparent)]
    CpuAffinity(#[from] cpu_list::AffinityError),
    #[error(transparent)]
    Net(#[from] net::NetConfigError),
    #[error(transparent)]
    Disk(#[from] disk::DiskConfigError),
    #[error(transparent)]
    Vsock(#[from] vsock::VsockConfigError),
    #[error(transparent)]
    Balloon(#[from] balloon::BalloonConfigError),
}

/// Which CPUID template the guest sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuTemplate {
    /// `safe` on hosts whose KVM emulates guest ring 0, `host` elsewhere.
    #[default]
    Auto,
    /// Everything KVM supports.
    Host,
    /// Hide features KVM's instruction emulator cannot run (CX16, XSAVE, SMAP, ...).
    Safe,
}

impl std::str::FromStr for CpuTemplate {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "auto" => Ok(Self::Auto),
            "host" => Ok(Self::Host),
            "safe" => Ok(Self::Safe),
            _ => Err(ConfigError::BadTemplate(s.to_string())),
        }
    }
}

/// A VM as the JSON config file describes it; every key is optional and has a default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub cpus: Option<u64>,
    /// A size such as "128M" or a number of MiB; or "size=128M,merge=on"; or
    /// {"size": "128M", "merge": true}.
    pub memory: Option<serde_json::Value>,
    /// Pin vCPU i to the i-th host CPU of this list, e.g. "0-3" or "0,2".
    pub cpu_affinity: Option<String>,
    pub cpu_template: Option<CpuTemplate>,
    /// Attach a virtio-rng device.
    pub rng: Option<bool>,
    /// virtio-net devices, each over a host tap.
    pub nets: Option<Vec<NetConfig>>,
    /// virtio-blk disks, in order (the first is /dev/vda).
    pub disks: Option<Vec<DiskConfig>>,
    /// A virtio-vsock device with a host-side unix socket.
    pub vsock: Option<VsockConfig>,
    /// A virtio-balloon device.
    pub balloon: Option<BalloonConfig>,
    /// Seccomp filters on the VMM's threads: true/"on" (the default) or false/"off" (debugging
    /// only). Not part of `VmConfig`: it never travels in a snapshot or a migration.
    pub seccomp: Option<Seccomp>,
    /// Run as this unprivileged user, seeing only a directory of its own ("UID:GID" or
    /// {"uid", "gid", "dir"}). Not part of `VmConfig` either.
    pub jail: Option<jail::JailConfig>,
    /// Limits for the VM's own cgroup ({"memory.max": "512M", "cpu.max": "50000 100000",
    /// "pids.max": "256"}). Not part of `VmConfig` either.
    pub cgroup: Option<cgroup::CgroupConfig>,
}

/// A validated VM configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmConfig {
    /// None boots the bundled test guest.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// None means the default for the kind of guest (Linux or test guest).
    pub cmdline: Option<String>,
    pub cpus: u8,
    pub memory_bytes: u64,
    /// Guest RAM is marked MADV_MERGEABLE for KSM.
    #[serde(default)]
    pub memory_merge: bool,
    /// Host CPU of each vCPU thread (empty: not pinned).
    #[serde(default)]
    pub cpu_affinity: Vec<usize>,
    pub cpu_template: CpuTemplate,
    pub rng: bool,
    pub nets: Vec<NetDevice>,
    pub disks: Vec<DiskConfig>,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub balloon: Option<BalloonSettings>,
}

/// Serde helper for a `VmConfig` inside binary (bincode) data such as `VmState`: it goes as JSON
/// text, because its JSON-oriented attributes (optional keys left out) do not survive bincode.
pub mod as_json {
    use super::VmConfig;
    use serde::de::Error as _;
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(c: &VmConfig, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&serde_json::to_string(c).map_err(S::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VmConfig, D::Error> {
        serde_json::from_str(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

impl FileConfig {
    /// Read a JSON config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::ParseFile {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Apply `over` on top of `self`: every key `over` sets wins.
    pub fn merge(self, over: FileConfig) -> FileConfig {
        FileConfig {
            kernel: over.kernel.or(self.kernel),
            initrd: over.initrd.or(self.initrd),
            cmdline: over.cmdline.or(self.cmdline),
            cpus: over.cpus.or(self.cpus),
            memory: over.memory.or(self.memory),
            cpu_affinity: over.cpu_affinity.or(self.cpu_affinity),
            cpu_template: over.cpu_template.or(self.cpu_template),
            rng: over.rng.or(self.rng),
            nets: over.nets.or(self.nets),
            disks: over.disks.or(self.disks),
            vsock: over.vsock.or(self.vsock),
            balloon: over.balloon.or(self.balloon),
            seccomp: over.seccomp.or(self.seccomp),
            jail: over.jail.or(self.jail),
            cgroup: over.cgroup.or(self.cgroup),
        }
    }

    /// Fill in defaults and check every value.
    pub fn validate(self) -> Result<VmConfig, ConfigError> {
        let cpus = self.cpus.unwrap_or(1);
        if cpus == 0 || cpus > u64::from(MAX_VCPUS) {
            return Err(ConfigError::BadCpus(cpus));
        }
        let (memory_bytes, memory_merge) = match &self.memory {
            None => (size::DEFAULT_MEMORY, false),
            Some(v) => size::parse_memory(v)?,
        };
        check_memory(memory_bytes)?;
        let cpu_affinity = match &self.cpu_affinity {
            None => Vec::new(),
            Some(s) => cpu_list::parse(s)?,
        };
        let balloon = match &self.balloon {
            Some(b) => Some(balloon::validate(b, memory_bytes)?),
            None => None,
        };
        let cfg = VmConfig {
            kernel: self.kernel,
            initrd: self.initrd,
            cmdline: self.cmdline,
            cpus: cpus as u8,
            memory_bytes,
            memory_merge,
            cpu_affinity,
            cpu_template: self.cpu_template.unwrap_or_default(),
            rng: self.rng.unwrap_or(false),
            nets: net::validate_nets(self.nets.unwrap_or_default())?,
            disks: self.disks.unwrap_or_default(),
            vsock: self.vsock,
            balloon,
        };
        cfg.check()?;
        Ok(cfg)
    }
}

impl VmConfig {
    /// Check every value as `FileConfig::validate` does, against this host (its CPUs and RAM).
    /// A configuration that comes from a snapshot or a migration stream goes through this
    /// before anything is built from it, like one from the command line.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.cpus == 0 || self.cpus > MAX_VCPUS {
            return Err(ConfigError::BadCpus(u64::from(self.cpus)));
        }
        check_memory(self.memory_bytes)?;
        if !self.cpu_affinity.is_empty() {
            cpu_list::validate(&self.cpu_affinity, usize::from(self.cpus))?;
        }
        if let Some(c) = &self.cmdline {
            if c.len() > MAX_CMDLINE {
                return Err(ConfigError::CmdlineTooLong(c.len()));
            }
            if c.contains('\0') {
                return Err(ConfigError::CmdlineNul);
            }
        }
        for n in &self.nets {
            net::check_device(n)?;
        }
        self.disks.iter().try_for_each(disk::check)?;
        if let Some(v) = &self.vsock {
            vsock::check(v)?;
        }
        if let Some(b) = &self.balloon {
            balloon::check_target(b.target_bytes, self.memory_bytes)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_with_optional_keys_left_out_survives_bincode() {
        #[derive(Serialize, Deserialize)]
        struct Wrapper {
            #[serde(with = "as_json")]
            config: VmConfig,
            after: u32,
        }
        let config = VmConfig {
            kernel: None,
            initrd: None,
            cmdline: Some("x".into()),
            cpus: 2,
            memory_bytes: 128 << 20,
            memory_merge: false,
            cpu_affinity: vec![],
            cpu_template: CpuTemplate::Auto,
            rng: true,
            nets: vec![],
            // `id` is left out of the JSON when None, which plain bincode cannot read back.
            disks: vec![DiskConfig {
                path: "/d.img".into(),
                readonly: false,
                id: None,
                admitted_by_dir: false,
            }],
            vsock: None,
            balloon: None,
        };
        let bytes = bincode::serialize(&Wrapper {
            config: config.clone(),
            after: 7,
        })
        .unwrap();
        let back: Wrapper = bincode::deserialize(&bytes).unwrap();
        assert_eq!((back.config, back.after), (config, 7));
    }

    #[test]
    fn flags_override_file_and_defaults_apply() {
        let file: FileConfig =
            serde_json::from_str(r#"{"cpus": 4, "memory": "256M", "cmdline": "a"}"#).unwrap();
        let flags = FileConfig {
            cpus: Some(2),
            ..Default::default()
        };
        let cfg = file.merge(flags).validate().unwrap();
        assert_eq!(cfg.cpus, 2);
        assert_eq!(cfg.memory_bytes, 256 << 20);
        assert_eq!(cfg.cmdline.as_deref(), Some("a"));
        let d = FileConfig::default().validate().unwrap();
        assert_eq!((d.cpus, d.memory_bytes), (1, 128 << 20));
    }

    #[test]
    fn bad_values_are_refused() {
        let v = |f: FileConfig| f.validate().unwrap_err().to_string();
        assert!(v(FileConfig {
            cpus: Some(0),
            ..Default::default()
        })
        .contains("--cpus"));
        assert!(v(FileConfig {
            memory: Some("1M".into()),
            ..Default::default()
        })
        .contains("too small"));
        assert!(v(FileConfig {
            memory: Some("100T".into()),
            ..Default::default()
        })
        .contains("too large"));
        assert!(v(FileConfig {
            cmdline: Some("x".repeat(3000)),
            ..Default::default()
        })
        .contains("command line"));
        assert!(serde_json::from_str::<FileConfig>(r#"{"cpuz": 1}"#).is_err());
    }
}
