//! `--seccomp on|off` and the config file's `"seccomp"` key: whether the VMM's threads run under
//! their seccomp filters. Off is for debugging only. It is the local operator's choice alone: a
//! snapshot's or an incoming migration's configuration (`VmConfig`) has no such key, so neither
//! can turn the filters off.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Errors reading the setting.
#[derive(Debug, thiserror::Error)]
pub enum SeccompSettingError {
    #[error("invalid seccomp setting '{0}': use on or off (off is for debugging only)")]
    Bad(String),
}

/// Whether threads are filtered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Seccomp {
    /// Every thread installs its filter (the default).
    #[default]
    On,
    /// No thread is filtered: for debugging a filter that stops a legitimate call.
    Off,
}

impl Seccomp {
    /// Whether the filters are on.
    pub fn is_on(self) -> bool {
        self == Self::On
    }
}

impl std::str::FromStr for Seccomp {
    type Err = SeccompSettingError;
    fn from_str(s: &str) -> Result<Self, SeccompSettingError> {
        match s {
            "on" | "true" => Ok(Self::On),
            "off" | "false" => Ok(Self::Off),
            _ => Err(SeccompSettingError::Bad(s.to_string())),
        }
    }
}

/// In JSON: `true`/`false` or `"on"`/`"off"`.
impl<'de> Deserialize<'de> for Seccomp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Self::On),
            Raw::Bool(false) => Ok(Self::Off),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Seccomp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(self.is_on())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_takes_booleans_and_words() {
        let p = |t: &str| serde_json::from_str::<Seccomp>(t);
        assert_eq!(p("true").unwrap(), Seccomp::On);
        assert_eq!(p("false").unwrap(), Seccomp::Off);
        assert_eq!(p("\"off\"").unwrap(), Seccomp::Off);
        assert_eq!(p("\"on\"").unwrap(), Seccomp::On);
        assert!(p("\"maybe\"")
            .unwrap_err()
            .to_string()
            .contains("on or off"));
        assert!(p("1").is_err());
    }

    #[test]
    fn a_saved_configuration_cannot_carry_the_setting() {
        // A snapshot or a migration stream that says "seccomp": false: the key is not part of
        // the VM's configuration, and is dropped with any other unknown key.
        let mut v =
            serde_json::to_value(crate::config::FileConfig::default().validate().unwrap()).unwrap();
        v["seccomp"] = serde_json::Value::Bool(false);
        let cfg: crate::config::VmConfig = serde_json::from_value(v).unwrap();
        let back = serde_json::to_value(&cfg).unwrap();
        assert!(back.get("seccomp").is_none());
    }
}
