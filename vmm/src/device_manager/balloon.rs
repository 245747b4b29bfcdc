//! Balloon: the `--balloon [size=..,free-page-reporting=on]` flag and `"balloon"` config key,
//! attaching the virtio-balloon device, and the handle that changes its target at run time.

use crate::device_manager::virtio::{AttachError, EventLoop, VirtioSlots};
use kvm_ioctls::VmFd;
use plainvm_devices::virtio::balloon::{Balloon, BalloonStats};
use plainvm_devices::Bus;
use plainvm_devices::GuestRam;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// The balloon as written: `--balloon size=64M,free-page-reporting=on` or
/// `{"size": "64M", "free_page_reporting": true}`; every key is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    /// Initial target: how much memory the guest should give back (e.g. "64M"; default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Let the guest report free memory, which is returned to the host too.
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// A validated balloon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonSettings {
    pub target_bytes: u64,
    pub free_page_reporting: bool,
}

/// A balloon description that cannot be used, or a target that cannot be set.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    #[error("invalid --balloon '{0}': use [size=SIZE][,free-page-reporting=on|off]")]
    Syntax(String),
    #[error("invalid balloon size '{0}': use a size such as 64M or 1G")]
    BadSize(String),
    #[error(
        "balloon size {target} MiB is more than the guest's {memory} MiB: give a smaller size"
    )]
    TooLarge { target: u64, memory: u64 },
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("cannot create the balloon's eventfds: {0}")]
    EventFd(std::io::Error),
}

/// Parses a `--balloon` flag (an empty value means the defaults).
pub fn parse_balloon(s: &str) -> Result<BalloonConfig, BalloonError> {
    let bad = || BalloonError::Syntax(s.to_string());
    let mut b = BalloonConfig::default();
    let mut seen_fpr = false;
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("size", v)) if b.size.is_none() => b.size = Some(v.to_string()),
            Some(("free-page-reporting" | "free_page_reporting", v)) if !seen_fpr => {
                seen_fpr = true;
                b.free_page_reporting = match v {
                    "on" | "true" | "yes" | "1" => true,
                    "off" | "false" | "no" | "0" => false,
                    _ => return Err(bad()),
                }
            }
            _ => return Err(bad()),
        }
    }
    Ok(b)
}

/// Check a balloon description against the guest's memory size.
pub fn validate(b: &BalloonConfig, memory_bytes: u64) -> Result<BalloonSettings, BalloonError> {
    let target_bytes = match &b.size {
        None => 0,
        Some(s) => {
            crate::config::parse_size(s).map_err(|_| BalloonError::BadSize(s.to_string()))?
        }
    };
    check_target(target_bytes, memory_bytes)?;
    Ok(BalloonSettings {
        target_bytes,
        free_page_reporting: b.free_page_reporting,
    })
}

fn check_target(target: u64, memory: u64) -> Result<(), BalloonError> {
    if target > memory {
        return Err(BalloonError::TooLarge {
            target: target >> 20,
            memory: memory >> 20,
        });
    }
    Ok(())
}

/// Changes a running balloon's target (for the control API); cheap to clone.
#[derive(Clone)]
pub struct BalloonControl {
    device: Arc<Mutex<Balloon>>,
    memory_bytes: u64,
}

impl BalloonControl {
    fn device(&self) -> std::sync::MutexGuard<'_, Balloon> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ask the guest to give back `bytes` in total (0 deflates the balloon completely).
    pub fn set_target(&self, bytes: u64) -> Result<(), BalloonError> {
        check_target(bytes, self.memory_bytes)?;
        self.device().set_target(bytes);
        Ok(())
    }

    /// The current target, in bytes.
    pub fn target(&self) -> u64 {
        self.device().target()
    }

    /// What the guest says it has given back, in bytes.
    pub fn actual(&self) -> u64 {
        self.device().actual()
    }

    /// Pages the device has returned to the host so far.
    pub fn stats(&self) -> BalloonStats {
        self.device().stats()
    }
}

/// Create the device and attach it; the handle changes its target later.
pub fn attach(
    b: &BalloonSettings,
    memory_bytes: u64,
    vm: &VmFd,
    mem: &GuestRam,
    mmio: &mut Bus,
    events: &mut EventLoop,
    slots: &mut VirtioSlots,
) -> Result<BalloonControl, BalloonError> {
    let dev = Balloon::new(b.target_bytes, b.free_page_reporting).map_err(BalloonError::EventFd)?;
    let evts = dev.queue_evts().map_err(BalloonError::EventFd)?;
    let device = slots.attach(vm, mem, mmio, events, dev, evts)?;
    Ok(BalloonControl {
        device,
        memory_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_and_json_forms() {
        let b = parse_balloon("").unwrap();
        assert_eq!(b, BalloonConfig::default());
        let b = parse_balloon("size=64M,free-page-reporting=on").unwrap();
        assert_eq!(b.size.as_deref(), Some("64M"));
        assert!(b.free_page_reporting);
        let s = validate(&b, 256 << 20).unwrap();
        assert_eq!(s.target_bytes, 64 << 20);
        assert!(validate(&b, 32 << 20).is_err(), "target over guest memory");
        for bad in [
            "size",
            "colour=red",
            "free-page-reporting=maybe",
            "size=1M,size=2M",
        ] {
            assert!(parse_balloon(bad).is_err(), "{bad}");
        }
        assert!(validate(&parse_balloon("size=lots").unwrap(), 1 << 30).is_err());
        let j: BalloonConfig =
            serde_json::from_str(r#"{"size": "1G", "free_page_reporting": true}"#).unwrap();
        assert!(j.free_page_reporting);
        assert!(serde_json::from_str::<BalloonConfig>(r#"{"target": "1G"}"#).is_err());
    }
}
