//! The balloon as the user writes it: `--balloon [size=..][,free-page-reporting=on]` or the
//! `"balloon"` key, checked against the guest's memory.

use serde::{Deserialize, Serialize};

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

/// A balloon description or target that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BalloonConfigError {
    #[error("invalid --balloon '{flag}': {detail}; use [size=SIZE][,free-page-reporting=on|off]")]
    Syntax { flag: String, detail: String },
    #[error("invalid balloon size '{0}': use a size such as 64M or 1G")]
    BadSize(String),
    #[error(
        "balloon size {target} MiB is more than the guest's {memory} MiB: give a smaller size"
    )]
    TooLarge { target: u64, memory: u64 },
}

/// Parses a `--balloon` flag (an empty value means the defaults).
pub fn parse_balloon(s: &str) -> Result<BalloonConfig, BalloonConfigError> {
    super::keyvalue::from_str(s).map_err(|e| BalloonConfigError::Syntax {
        flag: s.to_string(),
        detail: e.to_string(),
    })
}

/// Check a balloon description against the guest's memory size.
pub fn validate(
    b: &BalloonConfig,
    memory_bytes: u64,
) -> Result<BalloonSettings, BalloonConfigError> {
    let target_bytes = match &b.size {
        None => 0,
        Some(s) => {
            super::size::parse_size(s).map_err(|_| BalloonConfigError::BadSize(s.to_string()))?
        }
    };
    check_target(target_bytes, memory_bytes)?;
    Ok(BalloonSettings {
        target_bytes,
        free_page_reporting: b.free_page_reporting,
    })
}

/// A target must not exceed the guest's memory.
pub fn check_target(target: u64, memory: u64) -> Result<(), BalloonConfigError> {
    if target > memory {
        return Err(BalloonConfigError::TooLarge {
            target: target >> 20,
            memory: memory >> 20,
        });
    }
    Ok(())
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
