//! `PUT /migrate` (start a live migration and wait for its end) and `GET /migrate` (progress).

use super::server::{error, Reply};
use crate::migration::sender::{migrate, MigrateOptions};
use crate::vm::controller::VmController;
use serde_json::{json, Value};
use std::time::Duration;
use tiny_http::Method;

/// Route a `/migrate` request.
pub fn route(method: &Method, body: &Value, vm: &VmController) -> Reply {
    match method {
        Method::Get => match &*vm.migration.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(p) => (200, json!(p)),
            None => error(404, "no migration has started"),
        },
        Method::Put => match options(body) {
            Ok(opts) => start(vm, &opts),
            Err(msg) => error(400, msg),
        },
        _ => error(405, format!("{method} is not allowed on /migrate")),
    }
}

fn options(body: &Value) -> Result<MigrateOptions, String> {
    let to = body
        .get("to")
        .and_then(Value::as_str)
        .ok_or(r#"expected {"to": "tcp:HOST:PORT", ...}"#)?;
    let to = crate::migration::parse_tcp(to).map_err(|e| e.to_string())?;
    let ms = |k: &str, d: u64| body.get(k).and_then(Value::as_u64).unwrap_or(d);
    let key = match body.get("key").and_then(Value::as_str) {
        None => None,
        Some(hex) if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) => {
            let mut k = [0u8; 32];
            for (i, b) in k.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
            }
            Some(k)
        }
        Some(_) => return Err("key must be 64 hex digits".into()),
    };
    let force = match body.get("on_timeout").and_then(Value::as_str) {
        None | Some("cancel") => false,
        Some("force") => true,
        Some(other) => return Err(format!("on_timeout must be cancel or force, not {other}")),
    };
    Ok(MigrateOptions {
        to,
        downtime: Duration::from_millis(ms("downtime_ms", 20)),
        timeout: body
            .get("timeout_s")
            .and_then(Value::as_u64)
            .map(Duration::from_secs),
        force,
        key,
    })
}

fn start(vm: &VmController, opts: &MigrateOptions) -> Reply {
    {
        let mut m = vm.migration.lock().unwrap_or_else(|e| e.into_inner());
        if m.as_ref()
            .is_some_and(|p| p.phase != "failed" && p.phase != "done")
        {
            return error(409, "a migration is already in progress");
        }
        *m = Some(Default::default());
    }
    let report = |p: &crate::migration::sender::Progress| {
        *vm.migration.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.clone());
    };
    let result = migrate(vm, opts, &report);
    let mut m = vm.migration.lock().unwrap_or_else(|e| e.into_inner());
    let mut last = m.clone().unwrap_or_default();
    match result {
        Ok(r) => {
            last.phase = "done";
            *m = Some(last);
            (200, json!(r))
        }
        Err(e) => {
            last.phase = "failed";
            *m = Some(last);
            error(500, e)
        }
    }
}
