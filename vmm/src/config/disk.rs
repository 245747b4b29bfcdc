//! A disk as the user writes it: `--disk path=IMG[,readonly=on][,id=NAME]` or the `"disks"` key.

use plainvm_devices::virtio::block::ID_BYTES;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One disk as written: `--disk path=IMG[,readonly=on][,id=NAME]` or
/// `{"path": "IMG", "readonly": true, "id": "NAME"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Set by admission when a saved configuration's image was allowed by `--allow-dir`: it is
    /// then opened only as a regular file reached without symlinks (never saved or sent).
    #[serde(skip)]
    pub admitted_by_dir: bool,
}

/// A disk description that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskConfigError {
    #[error("invalid --disk '{flag}': {detail}; use path=IMG[,readonly=on][,id=NAME]")]
    Syntax { flag: String, detail: String },
    #[error("disk id '{0}' is longer than {ID_BYTES} bytes: give a shorter id=")]
    IdTooLong(String),
    #[error("a disk has an empty id: leave id= out or give a name")]
    EmptyId,
    #[error("a disk has an empty path: give path=IMG")]
    EmptyPath,
}

/// Parses a `--disk` flag.
pub fn parse_disk(s: &str) -> Result<DiskConfig, DiskConfigError> {
    let disk: DiskConfig = super::keyvalue::from_str(s).map_err(|e| DiskConfigError::Syntax {
        flag: s.to_string(),
        detail: e.to_string(),
    })?;
    check(&disk)?;
    Ok(disk)
}

/// Checks a disk description (from the flag or the config file).
pub fn check(disk: &DiskConfig) -> Result<(), DiskConfigError> {
    if disk.path.as_os_str().is_empty() {
        return Err(DiskConfigError::EmptyPath);
    }
    match &disk.id {
        Some(id) if id.is_empty() => Err(DiskConfigError::EmptyId),
        Some(id) if id.len() > ID_BYTES => Err(DiskConfigError::IdTooLong(id.clone())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_forms() {
        let d = parse_disk("path=/x.img").unwrap();
        assert_eq!(
            (d.path.to_str().unwrap(), d.readonly, d.id),
            ("/x.img", false, None)
        );
        let d = parse_disk("path=/x.img,readonly=on,id=root").unwrap();
        assert!(d.readonly);
        assert_eq!(d.id.as_deref(), Some("root"));
        assert!(parse_disk("path=/x.img,readonly=yes").unwrap().readonly);
        for bad in [
            "",
            "/x.img",
            "path=",
            "path=/a,path=/b",
            "path=/a,readonly=maybe",
            "path=/a,colour=red",
            "path=/a,id=",
            "path=/a,id=123456789012345678901",
        ] {
            assert!(parse_disk(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_form() {
        let d: DiskConfig =
            serde_json::from_str(r#"{"path": "/x.img", "readonly": true, "id": "x"}"#).unwrap();
        assert!(d.readonly);
        let d: DiskConfig = serde_json::from_str(r#"{"path": "/x.img"}"#).unwrap();
        assert!(!d.readonly && d.id.is_none());
        assert!(serde_json::from_str::<DiskConfig>(r#"{"path": "/x", "ro": true}"#).is_err());
    }
}
