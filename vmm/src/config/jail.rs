//! `--jail UID:GID [--jail-dir DIR]` and the config file's `"jail"` key: run the VMM as an
//! unprivileged user in a directory of its own (host/jail.rs does it). Like `seccomp`, it is the
//! local operator's choice alone: a snapshot's or a migration's `VmConfig` has no such key.

use serde::{Deserialize, Deserializer, Serialize};
use std::path::{Path, PathBuf};

/// Where jails go when `--jail-dir` is not given: `JAIL_BASE/NAME`.
pub const JAIL_BASE: &str = "/var/lib/plainvm/jail";

/// Errors in the jail setting.
#[derive(Debug, thiserror::Error)]
pub enum JailSettingError {
    #[error("invalid jail '{0}': use UID:GID with two numbers, e.g. --jail 1000:1000")]
    Bad(String),
    #[error("a jail as uid or gid 0 keeps root's power: give an unprivileged UID:GID (e.g. a user made for this VM)")]
    Root,
    #[error("the jail directory {0} is not an absolute path: give one such as /srv/plainvm/NAME")]
    RelativeDir(PathBuf),
    #[error("--jail-dir needs --jail UID:GID")]
    DirWithoutJail,
}

/// The user and group a jailed VMM runs as, and the directory it sees as `/` (None: the default
/// `JAIL_BASE/NAME`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JailConfig {
    pub uid: u32,
    pub gid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

impl JailConfig {
    /// A jail for `uid`:`gid` (refused for root).
    pub fn new(uid: u32, gid: u32, dir: Option<PathBuf>) -> Result<Self, JailSettingError> {
        if uid == 0 || gid == 0 {
            return Err(JailSettingError::Root);
        }
        if let Some(d) = &dir {
            if !d.is_absolute() {
                return Err(JailSettingError::RelativeDir(d.clone()));
            }
        }
        Ok(Self { uid, gid, dir })
    }

    /// The jail's directory for VM `name`.
    pub fn dir_for(&self, name: &str) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| Path::new(JAIL_BASE).join(name))
    }
}

/// `UID:GID`.
pub fn parse_ids(s: &str) -> Result<(u32, u32), JailSettingError> {
    let bad = || JailSettingError::Bad(s.to_string());
    let (u, g) = s.split_once(':').ok_or_else(bad)?;
    Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?))
}

/// The flags: `--jail UID:GID` and `--jail-dir DIR`, over the config file's `"jail"`.
pub fn from_flags(
    ids: Option<&str>,
    dir: Option<&Path>,
    file: Option<JailConfig>,
) -> Result<Option<JailConfig>, JailSettingError> {
    match (ids, file) {
        (Some(ids), _) => {
            let (uid, gid) = parse_ids(ids)?;
            JailConfig::new(uid, gid, dir.map(Path::to_path_buf)).map(Some)
        }
        (None, Some(f)) => match dir {
            Some(d) => JailConfig::new(f.uid, f.gid, Some(d.to_path_buf())).map(Some),
            None => Ok(Some(f)),
        },
        (None, None) if dir.is_some() => Err(JailSettingError::DirWithoutJail),
        (None, None) => Ok(None),
    }
}

/// In JSON: `"UID:GID"` or `{"uid": N, "gid": N, "dir": "/path"}`.
impl<'de> Deserialize<'de> for JailConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Object {
            uid: u32,
            gid: u32,
            dir: Option<PathBuf>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Object(Object),
        }
        let (uid, gid, dir) = match Raw::deserialize(d)? {
            Raw::Text(t) => {
                let (u, g) = parse_ids(&t).map_err(serde::de::Error::custom)?;
                (u, g, None)
            }
            Raw::Object(o) => (o.uid, o.gid, o.dir),
        };
        JailConfig::new(uid, gid, dir).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_flags_and_json_are_read_and_root_is_refused() {
        assert_eq!(parse_ids("1000:1001").unwrap(), (1000, 1001));
        for bad in ["1000", "a:b", "1000:", ":5", "1:2:3", "-1:5"] {
            assert!(parse_ids(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            from_flags(Some("0:5"), None, None),
            Err(JailSettingError::Root)
        ));
        assert!(matches!(
            from_flags(Some("5:0"), None, None),
            Err(JailSettingError::Root)
        ));
        assert!(matches!(
            from_flags(Some("5:5"), Some(Path::new("rel")), None),
            Err(JailSettingError::RelativeDir(_))
        ));
        assert!(matches!(
            from_flags(None, Some(Path::new("/j")), None),
            Err(JailSettingError::DirWithoutJail)
        ));
        assert_eq!(from_flags(None, None, None).unwrap(), None);
        let j: JailConfig = serde_json::from_str(r#""7:8""#).unwrap();
        assert_eq!((j.uid, j.gid, j.dir), (7, 8, None));
        let j: JailConfig = serde_json::from_str(r#"{"uid": 7, "gid": 8, "dir": "/j/x"}"#).unwrap();
        assert_eq!(j.dir_for("vm1"), PathBuf::from("/j/x"));
        let flags = from_flags(Some("9:9"), None, Some(j)).unwrap().unwrap();
        assert_eq!(flags.dir_for("vm1"), Path::new(JAIL_BASE).join("vm1"));
        for bad in [
            r#""0:0""#,
            r#"{"uid": 7}"#,
            r#"{"uid":7,"gid":8,"x":1}"#,
            "5",
        ] {
            assert!(serde_json::from_str::<JailConfig>(bad).is_err(), "{bad}");
        }
    }
}
