//! `--set KEY=JSON` for `restore` and `receive`: what may change in a VM's configuration when it
//! comes back or arrives on another host — the keys that name host resources.

use crate::config::VmConfig;
use serde_json::Value;

/// The configuration keys `--set` may change: taps, disk images, the vsock socket, host CPUs,
/// page merging (KSM). Everything else is part of what the guest saw and must stay as saved.
pub const KEYS: [&str; 5] = ["nets", "disks", "vsock", "cpu_affinity", "memory_merge"];

/// A `--set` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    #[error("--set takes KEY=JSON, got '{0}'")]
    Syntax(String),
    #[error("--set {0}: only {keys} can change when a VM is restored or moves (they are this host's resources)", keys = KEYS.join(", "))]
    Key(String),
    #[error("--set {key}: the value is not JSON: {source}")]
    Json {
        key: String,
        source: serde_json::Error,
    },
    #[error("--set does not fit the VM's configuration: {0}")]
    Invalid(String),
}

/// Changes to a saved or incoming VM's configuration.
#[derive(Clone, Debug, Default)]
pub struct Overrides(Vec<(String, Value)>);

impl Overrides {
    /// Parse `--set` arguments.
    pub fn parse(args: &[String]) -> Result<Self, OverrideError> {
        let mut out = Vec::with_capacity(args.len());
        for s in args {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| OverrideError::Syntax(s.clone()))?;
            if !KEYS.contains(&k) {
                return Err(OverrideError::Key(k.to_string()));
            }
            let v = serde_json::from_str(v).map_err(|source| OverrideError::Json {
                key: k.to_string(),
                source,
            })?;
            out.push((k.to_string(), v));
        }
        Ok(Self(out))
    }

    /// True when a `--set` gives `field` of `key` (of its `index`-th element for a list): the
    /// value is the operator's, not the saved configuration's.
    pub fn sets(&self, key: &str, index: Option<usize>, field: &str) -> bool {
        self.0.iter().filter(|(k, _)| k == key).any(|(_, v)| {
            let v = match index {
                Some(i) => v.get(i),
                None => Some(v),
            };
            v.is_some_and(|v| v.get(field).is_some())
        })
    }

    /// True when a `--set` gives `key` at all.
    pub fn sets_key(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// `cfg` with the changes merged in: objects key by key, lists of the same length element
    /// by element (so `nets=[{"tap":"tap7"}]` changes the tap and keeps the MAC), anything else
    /// replaced.
    pub fn apply(&self, cfg: VmConfig) -> Result<VmConfig, OverrideError> {
        if self.0.is_empty() {
            return Ok(cfg);
        }
        let invalid = |e: serde_json::Error| OverrideError::Invalid(e.to_string());
        let mut v = serde_json::to_value(&cfg).map_err(invalid)?;
        for (k, patch) in &self.0 {
            merge(&mut v[k], patch.clone());
        }
        serde_json::from_value(v).map_err(invalid)
    }
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (Value::Array(t), Value::Array(p)) if t.len() == p.len() => {
            for (t, p) in t.iter_mut().zip(p) {
                merge(t, p);
            }
        }
        (t, p) => *t = p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CpuTemplate, NetDevice};

    fn config() -> VmConfig {
        VmConfig {
            kernel: None,
            initrd: None,
            cmdline: None,
            cpus: 1,
            memory_bytes: 128 << 20,
            memory_merge: false,
            cpu_affinity: vec![],
            cpu_template: CpuTemplate::Auto,
            rng: false,
            nets: vec![NetDevice {
                tap: "tap0".into(),
                mac: [2, 0, 0, 0, 0, 9],
            }],
            disks: vec![crate::config::DiskConfig {
                path: "/a.img".into(),
                readonly: false,
                id: Some("root".into()),
                admitted_by_dir: false,
            }],
            vsock: None,
            balloon: None,
        }
    }

    #[test]
    fn host_names_change_and_the_rest_stays() {
        let o = Overrides::parse(&[
            r#"nets=[{"tap":"tap7"}]"#.into(),
            r#"disks=[{"path":"/b.img"}]"#.into(),
            "cpu_affinity=[1]".into(),
        ])
        .unwrap();
        let c = o.apply(config()).unwrap();
        assert_eq!(c.nets[0].tap, "tap7");
        assert_eq!(
            c.nets[0].mac,
            [2, 0, 0, 0, 0, 9],
            "the MAC the guest knows stays"
        );
        assert_eq!(c.disks[0].path.to_str(), Some("/b.img"));
        assert_eq!(c.disks[0].id.as_deref(), Some("root"));
        assert_eq!(c.cpu_affinity, [1]);
    }

    #[test]
    fn bad_sets_are_refused() {
        for (arg, want) in [
            ("nets", "KEY=JSON"),
            ("cpus=4", "only nets"),
            ("memory_bytes=1", "only nets"),
            ("nets=[{", "not JSON"),
        ] {
            let e = Overrides::parse(&[arg.into()]).unwrap_err().to_string();
            assert!(e.contains(want), "{arg}: {e}");
        }
        let o = Overrides::parse(&[r#"nets=[{"tap":5}]"#.into()]).unwrap();
        assert!(o.apply(config()).is_err());
    }
}
