//! `plainvm pause|resume|info|snapshot`: one API request to a running VM, its answer printed as
//! JSON.

use super::target::ApiArgs;
use crate::api::client::request;
use crate::api::types::{RunState, SnapshotCreate, SnapshotKind, StateChange};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a control request may take (a snapshot of a big VM writes gigabytes).
const TIMEOUT: Duration = Duration::from_secs(600);

/// Print `v` as pretty JSON (a closed stdout, e.g. piped into `head`, is not an error).
pub fn print_json<T: Serialize>(v: &T) {
    let _ = writeln!(
        std::io::stdout(),
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_default()
    );
}

fn sock(a: &ApiArgs, verb: &'static str) -> Result<PathBuf, String> {
    a.target()
        .resolve(verb)
        .map(|r| r.sock)
        .map_err(|e| e.to_string())
}

fn call<B: Serialize>(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&B>,
) -> Result<i32, String> {
    let v = request(sock, method, path, body, TIMEOUT).map_err(|e| e.to_string())?;
    print_json(&v);
    Ok(0)
}

/// `plainvm pause`.
pub fn pause(a: &ApiArgs) -> Result<i32, String> {
    let body = StateChange {
        state: RunState::Paused,
    };
    call(&sock(a, "pause")?, "PATCH", "/vm", Some(&body))
}

/// `plainvm resume`.
pub fn resume(a: &ApiArgs) -> Result<i32, String> {
    let body = StateChange {
        state: RunState::Running,
    };
    call(&sock(a, "resume")?, "PATCH", "/vm", Some(&body))
}

/// `plainvm info`.
pub fn info(a: &ApiArgs) -> Result<i32, String> {
    call::<()>(&sock(a, "info")?, "GET", "/vm", None)
}

/// `plainvm snapshot --path DIR [--diff]`.
pub fn snapshot(a: &ApiArgs, path: PathBuf, diff: bool) -> Result<i32, String> {
    let body = SnapshotCreate {
        path: std::path::absolute(&path).unwrap_or(path),
        kind: if diff {
            SnapshotKind::Diff
        } else {
            SnapshotKind::Full
        },
    };
    call(
        &sock(a, "snapshot")?,
        "PUT",
        "/snapshot/create",
        Some(&body),
    )
}
