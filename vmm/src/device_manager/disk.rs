//! Disks: the `--disk path=IMG[,readonly=on][,id=NAME]` flag and `"disks"` config key, and
//! attaching each disk as a virtio-blk device.

use crate::device_manager::virtio::{AttachError, EventLoop, VirtioSlots};
use kvm_ioctls::VmFd;
use plainvm_devices::virtio::block::{Block, BlockError, ID_BYTES};
use plainvm_devices::Bus;
use plainvm_devices::GuestRam;
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
}

/// A disk description that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskConfigError {
    #[error("invalid --disk '{0}': use path=IMG[,readonly=on][,id=NAME]")]
    Syntax(String),
    #[error("invalid --disk '{0}': readonly= takes on or off")]
    ReadOnlyValue(String),
    #[error("disk id '{0}' is longer than {ID_BYTES} bytes: give a shorter id=")]
    IdTooLong(String),
    #[error("a disk has an empty path: give path=IMG")]
    EmptyPath,
}

/// Why a disk could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Open(#[from] BlockError),
    #[error(transparent)]
    Attach(#[from] AttachError),
}

/// Parses a `--disk` flag.
pub fn parse_disk(s: &str) -> Result<DiskConfig, DiskConfigError> {
    let bad = || DiskConfigError::Syntax(s.to_string());
    let (mut path, mut readonly, mut id) = (None, None, None);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("path", v)) if path.is_none() && !v.is_empty() => path = Some(PathBuf::from(v)),
            Some(("readonly", v)) if readonly.is_none() => {
                readonly = Some(match v {
                    "on" | "true" | "yes" | "1" => true,
                    "off" | "false" | "no" | "0" => false,
                    _ => return Err(DiskConfigError::ReadOnlyValue(s.to_string())),
                })
            }
            Some(("id", v)) if id.is_none() && !v.is_empty() => id = Some(v.to_string()),
            _ => return Err(bad()),
        }
    }
    let disk = DiskConfig {
        path: path.ok_or_else(bad)?,
        readonly: readonly.unwrap_or(false),
        id,
    };
    check(&disk)?;
    Ok(disk)
}

/// Checks a disk description (from the flag or the config file).
pub fn check(disk: &DiskConfig) -> Result<(), DiskConfigError> {
    if disk.path.as_os_str().is_empty() {
        return Err(DiskConfigError::EmptyPath);
    }
    match &disk.id {
        Some(id) if id.len() > ID_BYTES => Err(DiskConfigError::IdTooLong(id.clone())),
        _ => Ok(()),
    }
}

/// Opens every disk and attaches it as a virtio-blk device, in order (the first is /dev/vda).
pub fn attach_all(
    disks: &[DiskConfig],
    vm: &VmFd,
    mem: &GuestRam,
    mmio: &mut Bus,
    events: &mut EventLoop,
    slots: &mut VirtioSlots,
) -> Result<(), DiskError> {
    for d in disks {
        let blk = Block::new(&d.path, d.readonly, d.id.as_deref())?;
        let evts = blk.queue_evts().map_err(BlockError::EventFd)?;
        slots.attach(vm, mem, mmio, events, blk, evts)?;
    }
    Ok(())
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
        for bad in [
            "",
            "/x.img",
            "path=",
            "path=/a,path=/b",
            "path=/a,readonly=maybe",
            "path=/a,colour=red",
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
