//! The VM configuration: what the JSON file and the command-line flags say, validated once.

pub mod cpu_list;
pub mod overrides;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Smallest guest memory we accept: enough for boot structures and a small kernel.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Largest guest memory we accept, whatever the host has.
pub const MAX_MEMORY: u64 = 1 << 40;
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
    #[error("invalid memory size '{0}': use a number with an optional unit, e.g. 128M, 2G, 512MiB (a bare number means MiB)")]
    BadSize(String),
    #[error("memory size {got} MiB is too small: give at least {} MiB", MIN_MEMORY >> 20)]
    MemoryTooSmall { got: u64 },
    #[error("memory size {got} MiB is too large: {why}")]
    MemoryTooLarge { got: u64, why: String },
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
    #[error("invalid --memory '{0}': use SIZE or size=SIZE,merge=on|off (JSON: \"128M\" or {{\"size\": \"128M\", \"merge\": true}})")]
    BadMemorySpec(String),
    #[error(transparent)]
    CpuAffinity(#[from] crate::config::cpu_list::AffinityError),
    #[error("invalid --net '{0}': use tap=NAME[,mac=aa:bb:cc:dd:ee:ff]")]
    BadNet(String),
    #[error("network device on tap '{tap}': {source}")]
    BadMac {
        tap: String,
        source: plainvm_devices::virtio::net::mac::MacError,
    },
    #[error(transparent)]
    Disk(#[from] crate::device_manager::disk::DiskConfigError),
    #[error(transparent)]
    Vsock(#[from] crate::device_manager::vsock::VsockConfigError),
    #[error(transparent)]
    Balloon(#[from] crate::device_manager::balloon::BalloonError),
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
    pub disks: Option<Vec<crate::device_manager::disk::DiskConfig>>,
    /// A virtio-vsock device with a host-side unix socket.
    pub vsock: Option<crate::device_manager::vsock::VsockConfig>,
    /// A virtio-balloon device.
    pub balloon: Option<crate::device_manager::balloon::BalloonConfig>,
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
    pub disks: Vec<crate::device_manager::disk::DiskConfig>,
    #[serde(default)]
    pub vsock: Option<crate::device_manager::vsock::VsockConfig>,
    #[serde(default)]
    pub balloon: Option<crate::device_manager::balloon::BalloonSettings>,
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

/// One virtio-net device as written: `--net tap=NAME[,mac=..]` or `{"tap": "NAME", "mac": ".."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub tap: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// A validated virtio-net device: the tap and its MAC (generated when none was given).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetDevice {
    pub tap: String,
    pub mac: [u8; 6],
}

/// Parse a `--net` flag: `tap=NAME[,mac=aa:bb:cc:dd:ee:ff]`.
pub fn parse_net(s: &str) -> Result<NetConfig, ConfigError> {
    let bad = || ConfigError::BadNet(s.to_string());
    let (mut tap, mut mac) = (None, None);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("tap", v)) if tap.is_none() && !v.is_empty() => tap = Some(v.to_string()),
            Some(("mac", v)) if mac.is_none() => mac = Some(v.to_string()),
            _ => return Err(bad()),
        }
    }
    Ok(NetConfig {
        tap: tap.ok_or_else(bad)?,
        mac,
    })
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
        }
    }

    /// Fill in defaults and check every value.
    pub fn validate(self) -> Result<VmConfig, ConfigError> {
        let cpus = self.cpus.unwrap_or(1);
        if cpus == 0 || cpus > u64::from(MAX_VCPUS) {
            return Err(ConfigError::BadCpus(cpus));
        }
        let (memory_bytes, memory_merge) = match &self.memory {
            None => (128 << 20, false),
            Some(v) => parse_memory(v)?,
        };
        check_memory(memory_bytes)?;
        let cpu_affinity = match &self.cpu_affinity {
            None => Vec::new(),
            Some(s) => {
                let list = crate::config::cpu_list::parse(s)?;
                crate::config::cpu_list::validate(&list, cpus as usize)?;
                list
            }
        };
        if let Some(c) = &self.cmdline {
            if c.len() > MAX_CMDLINE {
                return Err(ConfigError::CmdlineTooLong(c.len()));
            }
            if c.contains('\0') {
                return Err(ConfigError::CmdlineNul);
            }
        }
        let disks = self.disks.unwrap_or_default();
        disks
            .iter()
            .try_for_each(crate::device_manager::disk::check)?;
        if let Some(v) = &self.vsock {
            crate::device_manager::vsock::check(v)?;
        }
        let balloon = match &self.balloon {
            Some(b) => Some(crate::device_manager::balloon::validate(b, memory_bytes)?),
            None => None,
        };
        Ok(VmConfig {
            kernel: self.kernel,
            initrd: self.initrd,
            cmdline: self.cmdline,
            cpus: cpus as u8,
            memory_bytes,
            memory_merge,
            cpu_affinity,
            cpu_template: self.cpu_template.unwrap_or_default(),
            rng: self.rng.unwrap_or(false),
            nets: validate_nets(self.nets.unwrap_or_default())?,
            disks,
            vsock: self.vsock,
            balloon,
        })
    }
}

/// Check each network device's MAC, or generate a locally administered one.
fn validate_nets(nets: Vec<NetConfig>) -> Result<Vec<NetDevice>, ConfigError> {
    use plainvm_devices::virtio::net::MacAddr;
    nets.into_iter()
        .map(|n| {
            if n.tap.is_empty() {
                return Err(ConfigError::BadNet(String::new()));
            }
            let mac = match &n.mac {
                Some(m) => m.parse::<MacAddr>().map_err(|source| ConfigError::BadMac {
                    tap: n.tap.clone(),
                    source,
                })?,
                None => MacAddr::random_local(),
            };
            Ok(NetDevice {
                tap: n.tap,
                mac: mac.0,
            })
        })
        .collect()
}

/// A memory size as JSON: a number of MiB or a size string.
fn size_value(v: &serde_json::Value) -> Result<u64, ConfigError> {
    match v {
        serde_json::Value::Number(n) => n
            .as_u64()
            .and_then(|m| m.checked_mul(1 << 20))
            .ok_or_else(|| ConfigError::BadSize(n.to_string())),
        serde_json::Value::String(s) => parse_size(s),
        other => Err(ConfigError::BadSize(other.to_string())),
    }
}

/// `--memory`/"memory": SIZE, "size=SIZE[,merge=on|off]" or {"size": SIZE, "merge": bool};
/// returns (bytes, merge).
pub fn parse_memory(v: &serde_json::Value) -> Result<(u64, bool), ConfigError> {
    let bad = || ConfigError::BadMemorySpec(v.to_string().trim_matches('"').to_string());
    match v {
        serde_json::Value::String(s) if s.contains('=') => {
            let (mut size, mut merge) = (None, None);
            for part in s.split(',') {
                match part.trim().split_once('=') {
                    Some(("size", x)) if size.is_none() => size = Some(parse_size(x)?),
                    Some(("merge", "on" | "true" | "1")) if merge.is_none() => merge = Some(true),
                    Some(("merge", "off" | "false" | "0")) if merge.is_none() => {
                        merge = Some(false)
                    }
                    _ => return Err(bad()),
                }
            }
            Ok((size.unwrap_or(128 << 20), merge.unwrap_or(false)))
        }
        serde_json::Value::Object(o) => {
            if o.keys().any(|k| k != "size" && k != "merge") {
                return Err(bad());
            }
            let size = o.get("size").map(size_value).transpose()?;
            let merge = match o.get("merge") {
                None => false,
                Some(serde_json::Value::Bool(b)) => *b,
                Some(_) => return Err(bad()),
            };
            Ok((size.unwrap_or(128 << 20), merge))
        }
        other => Ok((size_value(other)?, false)),
    }
}

/// Parse "128M", "2G", "512MiB", "1048576K", "4096" (MiB) into bytes.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize(s.to_string());
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 20,
        "k" | "kb" | "kib" => 10,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "b" => 0,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

pub fn check_memory(bytes: u64) -> Result<(), ConfigError> {
    let mib = bytes >> 20;
    if bytes < MIN_MEMORY {
        return Err(ConfigError::MemoryTooSmall { got: mib });
    }
    if bytes > MAX_MEMORY {
        return Err(ConfigError::MemoryTooLarge {
            got: mib,
            why: format!("plainvm supports at most {} MiB", MAX_MEMORY >> 20),
        });
    }
    if !bytes.is_multiple_of(4096) {
        return Err(ConfigError::BadSize(format!(
            "{bytes} bytes (not a multiple of 4 KiB)"
        )));
    }
    if let Some(host) = host_memory_bytes() {
        if bytes > host {
            return Err(ConfigError::MemoryTooLarge {
                got: mib,
                why: format!("this host has only {} MiB of RAM", host >> 20),
            });
        }
    }
    Ok(())
}

/// The host's total RAM from /proc/meminfo, if readable.
fn host_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
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
            disks: vec![crate::device_manager::disk::DiskConfig {
                path: "/d.img".into(),
                readonly: false,
                id: None,
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
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("128").unwrap(), 128 << 20);
        assert_eq!(parse_size("128M").unwrap(), 128 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-5M").is_err());
        assert!(parse_size("99999999999999999999T").is_err());
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
    fn net_flags_and_json_parse() {
        let n = parse_net("tap=tap0,mac=02:00:00:00:00:07").unwrap();
        assert_eq!(
            (n.tap.as_str(), n.mac.as_deref()),
            ("tap0", Some("02:00:00:00:00:07"))
        );
        assert_eq!(parse_net("tap=t1").unwrap().mac, None);
        for bad in [
            "",
            "tap=",
            "mac=02:00:00:00:00:01",
            "tap=a,tap=b",
            "tap=a,colour=red",
            "tap0",
        ] {
            assert!(
                matches!(parse_net(bad), Err(ConfigError::BadNet(_))),
                "{bad}"
            );
        }
        let file: FileConfig = serde_json::from_str(
            r#"{"nets": [{"tap": "a", "mac": "02:00:00:00:00:01"}, {"tap": "b"}]}"#,
        )
        .unwrap();
        let cfg = file.validate().unwrap();
        assert_eq!(cfg.nets[0].mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(
            cfg.nets[1].mac[0] & 3,
            2,
            "generated MACs are local unicast"
        );
        let file: FileConfig =
            serde_json::from_str(r#"{"nets": [{"tap": "a", "mac": "01:00:00:00:00:01"}]}"#)
                .unwrap();
        assert!(file
            .validate()
            .unwrap_err()
            .to_string()
            .contains("multicast"));
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

    #[test]
    fn memory_takes_size_or_size_and_merge() {
        let m = |v: serde_json::Value| parse_memory(&v);
        assert_eq!(m("256M".into()).unwrap(), (256 << 20, false));
        assert_eq!(m(512.into()).unwrap(), (512 << 20, false));
        assert_eq!(m("size=64M,merge=on".into()).unwrap(), (64 << 20, true));
        assert_eq!(m("merge=on".into()).unwrap(), (128 << 20, true));
        assert_eq!(
            m(serde_json::json!({"size": "1G", "merge": true})).unwrap(),
            (1 << 30, true)
        );
        for bad in [
            serde_json::json!("size=64M,merge=maybe"),
            serde_json::json!("size=64M,colour=red"),
            serde_json::json!({"size": "1G", "merge": "yes"}),
            serde_json::json!({"sise": "1G"}),
        ] {
            assert!(m(bad.clone()).is_err(), "{bad}");
        }
        let cfg = FileConfig {
            memory: Some("size=64M,merge=on".into()),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert!(cfg.memory_merge);
        let e = FileConfig {
            cpu_affinity: Some("0-".into()),
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("--cpu-affinity"), "{e}");
    }
}
