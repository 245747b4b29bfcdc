//! Which `Vm` method answers which request: method and path to a typed request, its reply or
//! error as JSON with a status. Independent of the HTTP server, so it is tested directly.

use super::types::*;
use crate::migration::sender::{MigrateError, MigrateOptions};
use crate::vm::actions::ActionError;
use crate::vm::control::ControlOpError;
use crate::vm::Vm;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// An answer: status and JSON body.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    /// A 200 with `value`.
    pub fn ok<T: Serialize>(value: &T) -> Self {
        Self {
            status: 200,
            body: serde_json::to_string(value).unwrap_or_else(|_| "{}".into()),
        }
    }

    /// An error with a readable message.
    pub fn error(status: u16, msg: impl std::fmt::Display) -> Self {
        Self {
            status,
            body: serde_json::to_string(&ErrorReply {
                error: msg.to_string(),
            })
            .unwrap_or_else(|_| "{}".into()),
        }
    }
}

/// The body as a `T`, or a 400 that says what was expected.
fn parse<T: DeserializeOwned>(body: &[u8], expected: &str) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => Reply::error(
            400,
            format!("the request body is not JSON ({e}): expected {expected}"),
        ),
        _ => Reply::error(400, format!("expected {expected}: {e}")),
    })
}

/// A request the API understands, parsed and checked (no VM needed: fuzzed on its own).
#[derive(Debug, PartialEq)]
pub enum ApiRequest {
    Info,
    State(StateChange),
    Snapshot(SnapshotCreate),
    Action(ActionRequest),
    Balloon(BalloonChange),
    MigrateProgress,
    Migrate(MigrateRequest),
}

/// Parse `method path` with `body` into a request, or the error reply (400, 404, 405).
pub fn parse_request(method: &str, path: &str, body: &[u8]) -> Result<ApiRequest, Reply> {
    match (method, path) {
        ("GET", "/vm") => Ok(ApiRequest::Info),
        ("PATCH", "/vm") => parse(body, r#"{"state": "Paused"|"Running"}"#).map(ApiRequest::State),
        ("PUT", "/snapshot/create") => {
            parse(body, r#"{"path": DIR, "type": "Full"|"Diff"}"#).map(ApiRequest::Snapshot)
        }
        ("PUT", "/actions") => parse(body, r#"{"action": "stop"|"kill"}"#).map(ApiRequest::Action),
        ("PATCH", "/balloon") => parse(body, r#"{"amount_mib": N}"#).map(ApiRequest::Balloon),
        ("GET", "/migrate") => Ok(ApiRequest::MigrateProgress),
        ("PUT", "/migrate") => {
            parse(body, r#"{"to": "tcp:HOST:PORT", ...}"#).map(ApiRequest::Migrate)
        }
        (_, "/vm" | "/snapshot/create" | "/actions" | "/balloon" | "/migrate") => Err(
            Reply::error(405, format!("{method} is not allowed on {path}")),
        ),
        _ => Err(Reply::error(404, format!("no resource {path}"))),
    }
}

/// Answer `method path` with `body` on `vm`.
pub fn route(method: &str, path: &str, body: &[u8], vm: &Vm) -> Reply {
    match parse_request(method, path, body) {
        Err(reply) => reply,
        Ok(ApiRequest::Info) => Reply::ok(&vm.info()),
        Ok(ApiRequest::State(c)) => state(vm, c),
        Ok(ApiRequest::Snapshot(s)) => snapshot(vm, s),
        Ok(ApiRequest::Action(a)) => action(vm, a),
        Ok(ApiRequest::Balloon(b)) => balloon(vm, b),
        Ok(ApiRequest::MigrateProgress) => match vm.migration_progress() {
            Some(p) => Reply::ok(&p),
            None => Reply::error(404, "no migration has started"),
        },
        Ok(ApiRequest::Migrate(m)) => migrate(vm, m),
    }
}

fn state(vm: &Vm, c: StateChange) -> Reply {
    match c.state {
        RunState::Paused => match vm.pause() {
            Ok(()) => Reply::ok(&vm.info()),
            Err(e) => control_error(e),
        },
        RunState::Running => match vm.resume() {
            Ok(()) => Reply::ok(&vm.info()),
            Err(e) => control_error(e),
        },
    }
}

fn snapshot(vm: &Vm, s: SnapshotCreate) -> Reply {
    match vm.snapshot(&s.path, s.kind == SnapshotKind::Diff) {
        Ok(r) => Reply::ok(&r),
        Err(e) => control_error(e),
    }
}

/// 409 when another operation holds the VM, 400 for a path outside a jailed VM's directory,
/// 500 for the rest.
fn control_error(e: ControlOpError) -> Reply {
    match e {
        e @ ControlOpError::Busy(_) => Reply::error(409, e),
        e @ ControlOpError::Jail(_) => Reply::error(400, e),
        e => Reply::error(500, e),
    }
}

fn action(vm: &Vm, a: ActionRequest) -> Reply {
    match a.action {
        Action::Stop => match vm.stop() {
            Ok(r) => Reply::ok(&ActionDone {
                action: Action::Stop,
                request: Some(r.request),
            }),
            Err(e @ (ActionError::NoAgent | ActionError::Busy(_))) => Reply::error(409, e),
            Err(e) => Reply::error(500, e),
        },
        Action::Kill => {
            vm.kill();
            Reply::ok(&ActionDone {
                action: Action::Kill,
                request: None,
            })
        }
    }
}

fn balloon(vm: &Vm, b: BalloonChange) -> Reply {
    let Some(bytes) = b.amount_mib.checked_mul(1 << 20) else {
        return Reply::error(400, "amount_mib is too large");
    };
    match vm.set_balloon_target(bytes) {
        Ok(t) => Reply::ok(&t),
        Err(e @ (ActionError::NoBalloon | ActionError::Busy(_))) => Reply::error(409, e),
        Err(e) => Reply::error(400, e),
    }
}

/// `MigrateRequest` to the sender's options.
pub fn migrate_options(m: &MigrateRequest) -> Result<MigrateOptions, String> {
    // A filtered thread cannot resolve a host name (files, DNS sockets): addresses only.
    let to = if crate::seccomp::enabled() {
        crate::migration::parse_tcp_address(&m.to)
    } else {
        crate::migration::parse_tcp(&m.to)
    }
    .map_err(|e| e.to_string())?;
    let key = match &m.key {
        None => None,
        Some(hex) => Some(crate::migration::key_from_hex(hex).ok_or("key must be 64 hex digits")?),
    };
    Ok(MigrateOptions {
        to,
        downtime: Duration::from_millis(m.downtime_ms),
        timeout: m.timeout_s.map(Duration::from_secs),
        force: m.on_timeout == OnTimeout::Force,
        key,
    })
}

fn migrate(vm: &Vm, m: MigrateRequest) -> Reply {
    let opts = match migrate_options(&m) {
        Ok(o) => o,
        Err(e) => return Reply::error(400, e),
    };
    match vm.migrate(&opts) {
        Ok(r) => Reply::ok(&r),
        Err(e @ MigrateError::Busy(_)) => Reply::error(409, e),
        Err(e) => Reply::error(500, e),
    }
}
