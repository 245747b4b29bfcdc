//! The API's requests and replies, one type each: the server parses requests into them and
//! answers with them; the CLI builds the same requests and reads the same replies.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub use crate::migration::progress::{MigrateResult, Progress};
pub use crate::vm::actions::{BalloonTarget, StopPosted};
pub use crate::vm::control::SnapshotResult;
pub use crate::vm::info::{GuestInfo, RunState, VmInfo};

/// `PATCH /vm`: pause or resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateChange {
    pub state: RunState,
}

/// Full or diff snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotKind {
    #[default]
    Full,
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    /// The snapshot directory to create (absolute: the VMM's working directory is not the
    /// client's).
    pub path: PathBuf,
    #[serde(default, rename = "type")]
    pub kind: SnapshotKind,
}

/// A lifecycle action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Ask the guest agent to power off.
    Stop,
    /// End the VM at once.
    Kill,
}

/// `PUT /actions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    pub action: Action,
}

/// The answer to `PUT /actions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionDone {
    pub action: Action,
    /// The request id the guest agent sees (stop only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<u32>,
}

/// `PATCH /balloon`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonChange {
    pub amount_mib: u64,
}

/// What a migration does when it does not converge in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    /// Give up; the VM keeps running here.
    #[default]
    Cancel,
    /// Switch over with a longer pause.
    Force,
}

fn default_downtime_ms() -> u64 {
    20
}

/// `PUT /migrate`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// tcp:HOST:PORT of `plainvm receive`.
    pub to: String,
    #[serde(default = "default_downtime_ms")]
    pub downtime_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// The migration key as 64 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Every error: a readable message (and a 4xx/5xx status).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_documented_and_refuse_unknown_keys() {
        let s: SnapshotCreate = serde_json::from_str(r#"{"path": "/s", "type": "Diff"}"#).unwrap();
        assert_eq!(s.kind, SnapshotKind::Diff);
        let s: SnapshotCreate = serde_json::from_str(r#"{"path": "/s"}"#).unwrap();
        assert_eq!(s.kind, SnapshotKind::Full);
        let m: MigrateRequest = serde_json::from_str(r#"{"to": "tcp:h:1"}"#).unwrap();
        assert_eq!((m.downtime_ms, m.on_timeout), (20, OnTimeout::Cancel));
        let a: ActionRequest = serde_json::from_str(r#"{"action": "kill"}"#).unwrap();
        assert_eq!(a.action, Action::Kill);
        let c: StateChange = serde_json::from_str(r#"{"state": "Paused"}"#).unwrap();
        assert_eq!(c.state, RunState::Paused);
        for bad in [
            r#"{"state": "Paused", "x": 1}"#,
            r#"{"state": "paused"}"#,
            r#"{}"#,
        ] {
            assert!(serde_json::from_str::<StateChange>(bad).is_err(), "{bad}");
        }
        assert!(
            serde_json::from_str::<SnapshotCreate>(r#"{"path": "/s", "type": "Half"}"#).is_err()
        );
        assert!(serde_json::from_str::<ActionRequest>(r#"{"action": "reboot"}"#).is_err());
    }
}
